"""A user's own images, one folder per class, read with torchvision's ``ImageFolder``.

Layout::

    data_dir/train/<class>/*.png|jpg|...   required
    data_dir/val/<class>/...               optional; without it a seeded, stratified share of train/ is used
    data_dir/test/<class>/...              optional; without it the test stage uses the validation images

Classes are the folder names under ``train/``; ``val/`` and ``test/`` may hold fewer classes but no others.
Grayscale files give 1-channel inputs, anything else 3 channels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from datamodules.sampling import balanced_sampler

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _load_image(path: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError) as err:
        raise MisconfigurationException(f"cannot read image {path} ({err}). Remove or replace the file.") from None


class _FolderWithClasses(ImageFolder):
    """``ImageFolder`` whose class indices come from ``train/``, so a ``val/`` with fewer classes keeps them."""

    def __init__(self, root: str, classes: tuple[str, ...], loader: Callable, transform: Callable) -> None:
        self._given = classes
        super().__init__(root, transform=transform, loader=loader, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = sorted(set(found) - set(self._given))
        if unknown:
            raise MisconfigurationException(
                f"{directory} has class folder(s) {unknown} that train/ does not have (train/ classes: "
                f"{list(self._given)}). Rename them, or add them to train/."
            )
        return list(self._given), {name: i for i, name in enumerate(self._given)}


class ImageFolderDataModule(LightningDataModule):
    """Image classification on a folder of images, per-sample ``torchvision.transforms.v2`` augmentation.

    Args:
        data_dir: Folder holding ``train/`` (and optionally ``val/`` and ``test/``), one subfolder per class.
        image_size: Images are resized (and cropped) to this square side.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_fraction: Share of ``train/`` held out for validation when there is no ``val/``.
        seed: Seed of the validation split and of the statistics sample.
        balance: Draw training batches with a ``WeightedRandomSampler`` so every class is equally likely.
        augment: Random resized crops and horizontal flips during training.
        crop_scale: Smallest area share kept by ``RandomResizedCrop``.
        stats_samples: Training images read to estimate the per-channel mean and std.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int = 64,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        balance: bool = False,
        augment: bool = True,
        crop_scale: float = 0.35,
        stats_samples: int = 512,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        if image_size < 8 or batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("image_size must be >= 8, batch sizes >= 1 and num_workers >= 0")
        if not 0.0 < val_fraction < 1.0 or not 0.0 < crop_scale <= 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1) and crop_scale in (0, 1], got {val_fraction}, {crop_scale}"
            )
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self._classes: tuple[str, ...] | None = None
        self._mode: str | None = None
        self.splits: dict[str, torch.utils.data.Dataset] = {}
        self.mean: list[float] | None = None
        self.std: list[float] | None = None

    def _root(self, split: str) -> str:
        return os.path.join(self.data_dir, split)

    def _scan(self) -> None:
        if self._classes is not None:
            return
        train = self._root("train")
        if not os.path.isdir(train):
            what = "does not exist" if not os.path.exists(self.data_dir) else "has no train/ folder"
            raise MisconfigurationException(
                f"image folder {self.data_dir} {what}. Pass --data.data_dir=DIR where DIR/train/<class>/ holds each "
                "class's images (and optionally DIR/val/ and DIR/test/ laid out the same)."
            )
        classes = tuple(sorted(e.name for e in os.scandir(train) if e.is_dir()))
        if len(classes) < 2:
            raise MisconfigurationException(
                f"{train} must hold one folder per class and at least two classes; found {list(classes)}."
            )
        # The colour mode is read from the headers of a few files per class (opening is lazy: no decoding).
        modes = set()
        for name in classes:
            files = sorted(f for f in os.listdir(os.path.join(train, name)) if f.lower().endswith(IMG_EXTENSIONS))
            if not files:
                raise MisconfigurationException(f"class folder {os.path.join(train, name)} holds no image files.")
            for file in files[:3]:
                path = os.path.join(train, name, file)
                try:
                    with Image.open(path) as image:
                        modes.add(image.mode)
                except (OSError, SyntaxError) as err:
                    raise MisconfigurationException(
                        f"cannot read image {path} ({err}). Remove or replace the file."
                    ) from None
        self._classes = classes
        self._mode = "L" if modes <= _GRAY_MODES else "RGB"

    @property
    def num_classes(self) -> int:
        self._scan()
        return len(self._classes)

    @property
    def in_channels(self) -> int:
        self._scan()
        return 1 if self._mode == "L" else 3

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        self._scan()
        return self._classes

    def _folder(self, split: str, transform: Callable) -> _FolderWithClasses:
        loader = functools.partial(_load_image, mode=self._mode)
        return _FolderWithClasses(self._root(split), self._classes, loader, transform)

    def _transforms(self, train: bool, normalize: bool = True) -> v2.Compose:
        size = self.hparams.image_size
        steps: list[v2.Transform] = [v2.ToImage()]
        if train and self.hparams.augment:
            steps += [v2.RandomResizedCrop(size, scale=(self.hparams.crop_scale, 1.0)), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(size), v2.CenterCrop(size)]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if normalize:
            steps.append(v2.Normalize(self.mean, self.std))
        return v2.Compose(steps)

    def _statistics(self, plain: _FolderWithClasses, indices: list[int]) -> None:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        picked = torch.tensor(indices)[torch.randperm(len(indices), generator=generator)[: self.hparams.stats_samples]]
        pixels = torch.stack([plain[int(i)][0] for i in picked])  # (S, C, H, W)
        self.mean = pixels.mean(dim=(0, 2, 3)).tolist()
        self.std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        self._scan()
        plain = self._folder("train", self._transforms(train=False, normalize=False))
        if not plain.samples:
            raise MisconfigurationException(f"{self._root('train')} holds no readable image files.")
        targets = torch.tensor(plain.targets)
        has_val = os.path.isdir(self._root("val"))
        if has_val:
            train_idx = list(range(len(targets)))
        else:
            generator = torch.Generator().manual_seed(self.hparams.seed)
            train_idx, val_idx = [], []
            for c in targets.unique():
                members = torch.nonzero(targets == c).flatten()
                members = members[torch.randperm(len(members), generator=generator)].tolist()
                n_val = max(1, round(len(members) * self.hparams.val_fraction)) if len(members) > 1 else 0
                val_idx += members[:n_val]
                train_idx += members[n_val:]
        # Normalisation statistics from the training images only.
        if self.mean is None:
            self._statistics(plain, train_idx)
        train_set = self._folder("train", self._transforms(train=True))
        eval_tf = self._transforms(train=False)
        self.splits["train"] = Subset(train_set, sorted(train_idx))
        self.splits["val"] = (
            self._folder("val", eval_tf) if has_val else Subset(self._folder("train", eval_tf), sorted(val_idx))
        )
        self.splits["test"] = self._folder("test", eval_tf) if os.path.isdir(self._root("test")) else self.splits["val"]

    def _loader(self, split: str) -> DataLoader:
        data = self.splits[split]
        workers = self.hparams.num_workers
        common = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available()}
        drop = len(data) > self.hparams.batch_size  # never drop the only batch of a tiny dataset
        if split != "train":
            return DataLoader(data, batch_size=self.hparams.eval_batch_size, shuffle=False, **common)
        if self.hparams.balance:
            targets = torch.tensor([data.dataset.targets[i] for i in data.indices])
            sampler = balanced_sampler(targets, self.num_classes, self.hparams.seed)
            return DataLoader(data, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=drop, **common)
        return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=True, drop_last=drop, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict) -> None:
        self.mean, self.std = state_dict["mean"], state_dict["std"]

"""A user's own images, one folder per class.

Layout::

    data_dir/train/<class>/*.png|jpg|...   training images: the classes and the normalisation statistics
    data_dir/val/<class>/...               optional; without it a seeded, stratified share of train/ is used
    data_dir/test/<class>/...              what `recipe test` scores (without it the test stage stops)
    data_dir/predict/**/*.png|jpg|...      optional, unlabelled, any depth: what `recipe predict` reads (else test/)

Classes are the folder names under ``train/`` (or ``class_names``); ``val/`` and ``test/`` may hold fewer classes but
no others. Grayscale files give 1-channel inputs, anything else 3 channels.

Images small enough to fit in memory are decoded once into one uint8 tensor and batched and augmented on the
device like the bundled datasets (:mod:`datamodules.in_memory`); larger sets are read from the files each epoch
with per-sample ``torchvision.transforms.v2``. Batches hold pixels in ``[0, 1]``; the model standardises them with
the training split's statistics (:attr:`ImageFolderDataModule.normalization`), which it keeps in its checkpoint.
Checkpoints carry the class names, colour mode and image size, so ``recipe test|predict --ckpt_path`` preprocesses as
in training, without ``train/``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from datamodules import image_files as files
from datamodules.in_memory import TensorBatches, augment, batch_loader, to_float
from datamodules.sampling import EpochSampler, class_weights, processes, shuffle_seed
from datamodules.split_loaders import SplitLoaders

#: Decoded uint8 pixels a split may take to be held in memory when ``in_memory`` is left to decide.
MEMORY_BUDGET = 2 * 1024**3


class ImageFolderDataModule(SplitLoaders, LightningDataModule):
    """Image classification on a folder of images.

    Args:
        data_dir: Folder holding ``train/`` (and optionally ``val/``, ``test/``, ``predict/``).
        image_size: Images are resized (shorter side) and centre-cropped to this square side. ``None``: the files'
            own side when the files sampled from each class share one square size (else an error asks for it).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_fraction: Share of ``train/`` held out for validation when there is no ``val/``.
        seed: Seed of the validation split and of the statistics sample.
        balance: Draw training samples with replacement, weighted so every class is equally likely.
        augment: Random augmentation during training: translation and flips in memory, random resized crops and
            flips from files.
        crop_scale: Smallest area share kept by ``RandomResizedCrop`` (images read from files).
        stats_samples: Training images read to estimate the per-channel mean and std.
        num_workers: DataLoader worker processes (images read from files; decoded images need none).
        in_memory: Decode every image once and keep the split as a uint8 tensor. ``None``: when its pixels fit in
            ``MEMORY_BUDGET`` (2 GiB).
        translate: Random shift of up to this many pixels (mirrored border) for images in memory. ``None``: an
            eighth of the side.
        hflip: Random left-right flips during training (right for photos, wrong for text or digits).
        class_names: The classes in index order. ``None``: the folder names under ``train/``. Needed, or a
            ``train/`` folder, for ``recipe test|predict`` elsewhere (the model's class count is read first).
        shuffle_seed: Seed of the training order; ``None`` follows ``--seed_everything``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        balance: bool = False,
        augment: bool = True,
        crop_scale: float = 0.35,
        stats_samples: int = 512,
        num_workers: int = 2,
        in_memory: bool | None = None,
        translate: int | None = None,
        hflip: bool = True,
        class_names: tuple[str, ...] | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if (image_size is not None and image_size < 8) or batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("image_size must be >= 8, batch sizes >= 1 and num_workers >= 0")
        if not 0.0 < val_fraction < 1.0 or not 0.0 < crop_scale <= 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1) and crop_scale in (0, 1], got {val_fraction}, {crop_scale}"
            )
        if translate is not None and translate < 0:
            raise ValueError(f"translate must be >= 0 pixels, got {translate}")
        if class_names is not None and (len(class_names) < 2 or len(set(class_names)) != len(class_names)):
            raise ValueError(f"class_names must hold at least two distinct names, got {list(class_names)}")
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self._classes = tuple(class_names) if class_names is not None else None
        self._mode: str | None = None
        self._side = image_size
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.splits: dict[str, Dataset] = {}
        self.predict_files: list[str] = []  # the files ``recipe predict`` read, in the order of its predictions
        self._built_with: tuple | None = None

    # ---- what the files say: classes, colour mode, size ----------------------------------------------------------

    def _root(self, split: str) -> str:
        return os.path.join(self.data_dir, split)

    def _has(self, split: str) -> bool:
        return os.path.isdir(self._root(split))

    def _require_train(self, why: str = "") -> None:
        if not self._has("train"):
            what = "does not exist" if not os.path.exists(self.data_dir) else "has no train/ folder"
            raise MisconfigurationException(
                f"image folder {self.data_dir} {what}{why}. Pass --data.data_dir=DIR where DIR/train/<class>/ holds "
                "each class's images (and optionally DIR/val/ and DIR/test/ laid out the same). To test or predict "
                "from a checkpoint without train/, name the classes in index order: --data.init_args.class_names "
                "'[a, b, ...]'."
            )

    def _resolve_classes(self) -> tuple[str, ...]:
        if self._classes is None:
            self._require_train()
            classes = files.class_folders(self._root("train"))
            if len(classes) < 2:
                raise MisconfigurationException(
                    f"{self._root('train')} must hold one folder per class and at least two classes; found "
                    f"{list(classes)}."
                )
            self._classes = classes
        return self._classes

    def _sample_paths(self) -> list[str]:
        """A few files per class of ``train/`` (else of the first other folder there is) to read headers from."""
        if self._has("train"):
            paths = []
            for name in self._resolve_classes():
                folder = os.path.join(self._root("train"), name)
                found = files.image_files(folder)[:3] if os.path.isdir(folder) else []
                if not found:
                    raise MisconfigurationException(f"class folder {folder} holds no image files.")
                paths += found
            return paths
        for split in ("val", "test", "predict"):
            if found := files.image_files(self._root(split))[:30]:
                return found
        self._require_train(" and no other images")
        return []

    def _resolve_format(self) -> None:
        if self._mode is not None and self._side is not None:
            return
        paths = self._sample_paths()
        modes, sizes = files.headers(paths)
        self._mode = self._mode or ("L" if modes <= files.GRAY_MODES else "RGB")
        if self._side is None:
            (width, height), *others = sorted(sizes)
            if others or width != height:
                raise MisconfigurationException(
                    f"images under {os.path.dirname(os.path.dirname(paths[0]))} are not all one square size (found "
                    f"{', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:4])}). Choose the side they are resized and "
                    "centre-cropped to: --data.init_args.image_size=64 (for example)."
                )
            self._side = width

    @property
    def num_classes(self) -> int:
        return len(self._resolve_classes())

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._resolve_classes()

    @property
    def in_channels(self) -> int:
        self._resolve_format()
        return 1 if self._mode == "L" else 3

    @property
    def image_size(self) -> int:
        self._resolve_format()
        return self._side

    # ---- splits ---------------------------------------------------------------------------------------------------

    def _loader_of(self, mode: str) -> Callable:
        return functools.partial(files.load_image, mode=mode)

    def _labelled(self, split: str, transform: Callable | None) -> files.FolderWithClasses:
        return files.FolderWithClasses(self._root(split), self._classes, self._loader_of(self._mode), transform)

    def _fit_size(self) -> v2.Compose:
        return v2.Compose([v2.Resize(self._side), v2.CenterCrop(self._side)])

    def _transforms(self, train: bool) -> v2.Compose:
        size = self._side
        steps: list[v2.Transform] = [v2.ToImage()]
        if train and self.hparams.augment:
            steps.append(v2.RandomResizedCrop(size, scale=(self.hparams.crop_scale, 1.0)))
            steps += [v2.RandomHorizontalFlip()] if self.hparams.hflip else []
        else:
            steps += [v2.Resize(size), v2.CenterCrop(size)]
        steps.append(v2.ToDtype(torch.float32, scale=True))  # [0, 1]: the model standardises
        return v2.Compose(steps)

    def _train_val_indices(self, plain: files.FolderWithClasses) -> tuple[list[int], list[int]]:
        if not plain.samples:
            raise MisconfigurationException(f"{self._root('train')} holds no readable image files.")
        if self._has("val"):
            return list(range(len(plain.samples))), []
        targets = torch.tensor(plain.targets)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        train_idx, val_idx = [], []
        for c in targets.unique():
            members = torch.nonzero(targets == c).flatten()
            members = members[torch.randperm(len(members), generator=generator)].tolist()
            n_val = max(1, round(len(members) * self.hparams.val_fraction)) if len(members) > 1 else 0
            val_idx += members[:n_val]
            train_idx += members[n_val:]
        return sorted(train_idx), sorted(val_idx)

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(mean, std)`` of a seeded sample of the training images only, pixels in ``[0, 1]``."""
        self._statistics()
        return self.mean, self.std

    def _statistics(self) -> None:
        if self.mean is not None:
            return
        self._resolve_classes()
        self._resolve_format()
        self._require_train(": the normalisation statistics come from train/")
        plain = self._labelled("train", self._transforms(train=False))
        train_idx, _ = self._train_val_indices(plain)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        picked = torch.tensor(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        pixels = torch.stack([plain[int(i)][0] for i in picked[: self.hparams.stats_samples]])  # (S, C, H, W)
        self.mean = pixels.mean(dim=(0, 2, 3)).tolist()
        self.std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def _in_memory(self, count: int) -> bool:
        if self.hparams.in_memory is not None:
            return self.hparams.in_memory
        return count * (1 if self._mode == "L" else 3) * self._side**2 <= MEMORY_BUDGET

    def _decoded(self, samples: list[tuple[str, int]]) -> TensorBatches:
        images = files.decode([path for path, _ in samples], self._mode, self._fit_size())  # (N, C, S, S) uint8
        return TensorBatches(images, torch.tensor([target for _, target in samples], dtype=torch.long))

    def _build(self, name: str) -> None:
        self._resolve_classes()
        self._resolve_format()
        eval_tf = self._transforms(train=False)
        translate = self.hparams.translate
        if translate is not None and translate >= self._side:
            raise MisconfigurationException(f"translate={translate} pixels must be below the image side {self._side}.")
        if name == "train" or (name == "val" and not self._has("val")):  # val: a seeded share of train/
            self._require_train()
            plain = self._labelled("train", None)
            idx = self._train_val_indices(plain)[0 if name == "train" else 1]
            if self._in_memory(len(idx)):
                self.splits[name] = self._decoded([plain.samples[i] for i in idx])
            else:
                transform = self._transforms(train=True) if name == "train" else eval_tf
                self.splits[name] = Subset(self._labelled("train", transform), idx)
        elif name == "predict" and self._has("predict"):
            self.predict_files = files.image_files(self._root("predict"))
            if not self.predict_files:
                raise MisconfigurationException(f"{self._root('predict')} holds no image files to predict.")
            if self._in_memory(len(self.predict_files)):
                self.splits[name] = self._decoded([(path, -1) for path in self.predict_files])
            else:
                self.splits[name] = files.UnlabelledFiles(self.predict_files, self._loader_of(self._mode), eval_tf)
        if name not in self.splits:  # val/, test/, or test/ for predict
            folder = self._labelled("test" if name == "predict" else name, eval_tf)
            if name == "predict":
                self.predict_files = [path for path, _ in folder.samples]
            in_memory = self._in_memory(len(folder.samples))
            self.splits[name] = self._decoded(folder.samples) if in_memory else folder
        self._built_with = self._preprocessing()

    def _split(self, name: str) -> Dataset:
        if name not in self.splits:
            self._build(name)
        return self.splits[name]

    def _preprocessing(self) -> tuple:
        return self._classes, self._mode, self._side

    def setup(self, stage: str) -> None:
        # Only fit builds here: Lightning restores a checkpoint's state (load_state_dict) after setup, so the splits
        # of validate, test and predict are built when their loader is first asked for, with the checkpoint's values.
        if stage == "test" and not self._has("test"):
            raise MisconfigurationException(
                f"{self._root('test')} does not exist: the test stage scores DIR/test/<class>/ images, never the "
                "validation ones. Add test/ laid out like train/, or score the validation images with `recipe "
                "validate`."
            )
        if stage == "predict" and not (self._has("predict") or self._has("test")):
            raise MisconfigurationException(
                f"{self.data_dir} has neither predict/ nor test/: `recipe predict` reads the image files under "
                "DIR/predict/ (no class folders needed), else DIR/test/."
            )
        if stage == "fit":
            self._split("train")
            self._split("val")
            self._statistics()  # what the model standardises with; reading train/ here also finds corrupt files

    # ---- loaders and batches --------------------------------------------------------------------------------------

    def _loader(self, split: str) -> DataLoader:
        data, hp = self._split(split), self.hparams
        train = split == "train"
        weights = None
        if train and hp.balance:
            targets = (
                data.labels if isinstance(data, TensorBatches) else torch.tensor(data.dataset.targets)[data.indices]
            )
            weights = class_weights(targets, self.num_classes)
        shuffled = {"shuffle": train, "seed": shuffle_seed(hp.shuffle_seed), "weights": weights}
        batch_size = hp.batch_size if train else hp.eval_batch_size
        pin = torch.cuda.is_available()
        if isinstance(data, TensorBatches):
            drop = train and len(data) > batch_size  # never drop the only batch of a tiny dataset
            sampler = EpochSampler(
                len(data), **processes(self.trainer), **shuffled, batch_size=batch_size, drop_last=drop
            )
            return batch_loader(data, sampler, pin)
        sampler = EpochSampler(len(data), **processes(self.trainer), **shuffled)
        workers = hp.num_workers
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # uint8 batches come from decoded images: scaled and augmented here on the device. Batches read from files
        # (float) were augmented by their transforms.
        if not isinstance(batch, (tuple, list)) or batch[0].dtype != torch.uint8:
            return batch
        images, labels = batch
        x = to_float(images)
        if self.trainer is not None and self.trainer.training and self.hparams.augment:
            translate = self.hparams.translate if self.hparams.translate is not None else self._side // 8
            x = augment(x, translate, "reflect", self.hparams.hflip)
        return x, labels

    def unaugmented_train_dataloader(self) -> DataLoader:
        """The training images in order, without augmentation: what SWA's BatchNorm pass reads."""
        data, hp = self._split("train"), self.hparams
        if isinstance(data, TensorBatches):  # augmented on the device only while the trainer trains
            sampler = EpochSampler(len(data), **processes(self.trainer), shuffle=False, batch_size=hp.eval_batch_size)
            return batch_loader(data, sampler, torch.cuda.is_available())
        plain = Subset(self._labelled("train", self._transforms(train=False)), data.indices)
        sampler = EpochSampler(len(plain), **processes(self.trainer), shuffle=False)
        return DataLoader(plain, batch_size=hp.eval_batch_size, sampler=sampler, num_workers=hp.num_workers)

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        # Everything preprocessing needs travels with the checkpoint, so test and predict see inputs as in training.
        return {
            "class_names": self._classes,
            "mode": self._mode,
            "image_size": self._side,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        classes, given = state_dict.get("class_names"), self.hparams.class_names
        if classes is not None and given is not None and tuple(classes) != tuple(given):
            raise MisconfigurationException(
                f"the checkpoint was trained on the classes {list(classes)}, but class_names gives {list(given)}. "
                "Drop --data.init_args.class_names, or give the checkpoint's classes in its order."
            )
        self._classes = tuple(classes) if classes is not None else self._classes
        self._mode = state_dict.get("mode") or self._mode
        if self.hparams.image_size is None:  # a size given by hand wins
            self._side = state_dict.get("image_size") or self._side
        if self.splits and self._built_with != self._preprocessing():
            self.splits.clear()  # built before the checkpoint was read: built again, its way, when next asked for

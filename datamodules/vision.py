"""Vision DataModules: bundled digits (offline), MNIST, CIFAR-10 and a user's own image folder."""

from __future__ import annotations

import os
import pickle
from typing import Literal

import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.image_folder import ImageFolderDataModule
from datamodules.in_memory import InMemoryImageDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "ImageFolderDataModule", "MNISTDataModule"]


class DigitsDataModule(InMemoryImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): trains offline in seconds.

    The official split does not exist, so a seeded, stratified ``test_fraction`` is held out as the test set and
    ``val_fraction`` of the rest for validation. Pixel values are 0-16 and scaled to [0, 1].

    Args:
        test_fraction: Share of all images held out as the test set.
        **kwargs: See :class:`InMemoryImageDataModule` (``data_dir`` is unused: the data ships with scikit-learn).
    """

    channels, side = 1, 8

    def __init__(
        self,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.2,
        seed: int = 0,
        balance: bool = False,
        translate: int = 1,
        hflip: bool = False,
        pin_memory: bool = False,
        data_dir: str = "data",
        translate_mode: Literal["constant", "reflect"] = "constant",
        shuffle_seed: int | None = None,
        labelled_fraction: float = 1.0,
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        super().__init__(
            data_dir,
            batch_size,
            eval_batch_size,
            val_fraction,
            seed,
            balance,
            translate,
            hflip,
            pin_memory,
            translate_mode,
            shuffle_seed,
            labelled_fraction,
        )
        self.test_fraction = test_fraction

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=self.test_fraction, random_state=self.hparams.seed, stratify=digits.target
        )
        index = torch.from_numpy(train_idx if train else test_idx)
        return images[index], labels[index]


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 official test images of 28x28 digits.

    ``prepare_data`` downloads with torchvision into ``data_dir/MNIST/raw``; ``setup`` reads those files and never
    downloads. Validation is a seeded, stratified ``val_fraction`` of the training images; test is the official set.
    """

    channels, side = 1, 28
    raw_files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def _raw(self) -> str:
        return os.path.join(self.data_dir, "MNIST", "raw")

    def prepare_data(self) -> None:
        from torchvision.datasets import MNIST

        if all(os.path.isfile(os.path.join(self._raw(), name)) for name in self.raw_files):
            return  # present; a corrupt file is reported by ``setup`` with the way to fix it
        try:
            for train in (True, False):
                MNIST(self.data_dir, train=train, download=True)
        except Exception as err:  # no network, a proxy, a full disk: the user needs the path and the way out
            raise MisconfigurationException(
                f"MNIST is not under {os.path.join(self.data_dir, 'MNIST', 'raw')} and downloading it failed ({err}). "
                "Connect to the internet once, or copy the four MNIST idx files there and pass --data.data_dir."
            ) from err

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import MNIST

        raw = self._raw()
        missing = [name for name in self.raw_files if not os.path.isfile(os.path.join(raw, name))]
        if missing:
            raise MisconfigurationException(
                f"MNIST not found under {raw} (missing {', '.join(missing)}). Point --data.data_dir at the folder that "
                "holds MNIST/, or let `recipe fit` download it (prepare_data) on a machine with internet."
            )
        try:
            dataset = MNIST(self.data_dir, train=train, download=False)
        except (RuntimeError, ValueError) as err:
            raise MisconfigurationException(
                f"MNIST files under {raw} are corrupt ({err}). Delete {raw} and run `recipe fit` again to "
                "download them."
            ) from err
        return dataset.data.unsqueeze(1), dataset.targets.long()  # (N, 1, 28, 28) uint8


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test 32x32 colour images in 10 classes.

    ``prepare_data`` downloads and verifies the archive with torchvision. ``setup`` reads the pickled batches of
    ``data_dir/cifar-10-batches-py`` directly into one uint8 tensor, which skips torchvision's per-construction
    MD5 pass over 170 MB and the per-image PIL conversion.
    """

    channels, side = 3, 32
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    folder = "cifar-10-batches-py"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 512,
        eval_batch_size: int = 2000,
        val_fraction: float = 0.1,
        seed: int = 0,
        balance: bool = False,
        translate: int = 2,
        hflip: bool = True,
        pin_memory: bool = False,
        translate_mode: Literal["constant", "reflect"] = "reflect",
        shuffle_seed: int | None = None,
        labelled_fraction: float = 1.0,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            eval_batch_size,
            val_fraction,
            seed,
            balance,
            translate,
            hflip,
            pin_memory,
            translate_mode,
            shuffle_seed,
            labelled_fraction,
        )

    def _files(self, train: bool) -> list[str]:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        return [os.path.join(self.data_dir, self.folder, name) for name in names]

    def prepare_data(self) -> None:
        from torchvision.datasets import CIFAR10

        if all(os.path.isfile(f) for f in self._files(True) + self._files(False)):
            return  # already unpacked; a corrupt file is reported by ``setup`` with the way to fix it
        try:
            CIFAR10(self.data_dir, train=True, download=True)
        except Exception as err:
            raise MisconfigurationException(
                f"CIFAR-10 is not under {os.path.join(self.data_dir, self.folder)} and downloading it failed ({err}). "
                "Connect to the internet once, or unpack cifar-10-python.tar.gz there and pass --data.data_dir."
            ) from err

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        root = os.path.join(self.data_dir, self.folder)
        images, labels = [], []
        for path in self._files(train):
            if not os.path.isfile(path):
                raise MisconfigurationException(
                    f"CIFAR-10 file {path} is missing. Point --data.data_dir at the folder that holds {self.folder}/, "
                    "or let `recipe fit` download it (prepare_data) on a machine with internet."
                )
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, C, H, W)
                labels.extend(entry["labels"])
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
                raise MisconfigurationException(
                    f"CIFAR-10 file {path} is corrupt ({err!r}). Delete {root} and download it again."
                ) from err
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

"""Reading a folder of image files: class folders, unlabelled files, colour mode and size from the headers, decoding
into one tensor. The pieces under :class:`datamodules.image_folder.ImageFolderDataModule`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def load_image(path: str, mode: str) -> Image.Image:
    """Decode ``path`` into PIL ``mode`` (``"L"`` or ``"RGB"``); an unreadable file is one clear error."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError) as err:
        raise MisconfigurationException(f"cannot read image {path} ({err}). Remove or replace the file.") from None


def image_files(root: str) -> list[str]:
    """Paths of the image files under ``root`` at any depth, sorted: the order of ``recipe predict``'s rows."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return sorted(found)


def class_folders(root: str) -> tuple[str, ...]:
    """The class names under ``root``: its subfolder names, sorted."""
    return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))


def headers(paths: Sequence[str]) -> tuple[set[str], set[tuple[int, int]]]:
    """The PIL modes and ``(width, height)`` sizes of ``paths``, read from their headers (opening is lazy)."""
    modes, sizes = set(), set()
    for path in paths:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
                sizes.add(image.size)
        except (OSError, SyntaxError) as err:
            raise MisconfigurationException(f"cannot read image {path} ({err}). Remove or replace the file.") from None
    return modes, sizes


def decode(paths: Sequence[str], mode: str, fit: Callable) -> torch.Tensor:
    """Decode every file once into a uint8 tensor (N, C, H, W); ``fit`` resizes and crops a (C, h, w) image."""
    images = None
    for i, path in enumerate(paths):
        pixels = torch.from_numpy(_array(load_image(path, mode)))  # (h, w, C)
        image = fit(pixels.permute(2, 0, 1))  # (C, H, W)
        if images is None:
            images = torch.empty((len(paths), *image.shape), dtype=torch.uint8)
        images[i] = image
    return images if images is not None else torch.empty((0, 1 if mode == "L" else 3, 1, 1), dtype=torch.uint8)


def _array(image: Image.Image) -> np.ndarray:
    pixels = np.array(image)  # a writable copy, as torch.from_numpy wants
    return pixels[..., None] if pixels.ndim == 2 else pixels  # (h, w, C)


class FolderWithClasses(ImageFolder):
    """``ImageFolder`` whose class indices are given (those of ``train/`` or of a checkpoint), so a ``val/`` or
    ``test/`` with fewer classes keeps them; a class folder outside them is an error."""

    def __init__(self, root: str, classes: tuple[str, ...], loader: Callable, transform: Callable | None) -> None:
        self._given = classes
        super().__init__(root, transform=transform, loader=loader, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        unknown = sorted(set(class_folders(directory)) - set(self._given))
        if unknown:
            raise MisconfigurationException(
                f"{directory} has class folder(s) {unknown} that train/ does not have (train/ classes: "
                f"{list(self._given)}). Rename them, or add them to train/."
            )
        return list(self._given), {name: i for i, name in enumerate(self._given)}


class UnlabelledFiles(Dataset):
    """Image files without classes, as ``(image, -1)`` pairs: the folder ``recipe predict`` reads."""

    def __init__(self, paths: Sequence[str], loader: Callable, transform: Callable) -> None:
        self.paths, self.loader, self.transform = list(paths), loader, transform
        self.samples = [(path, -1) for path in self.paths]
        self.targets = [-1] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.loader(self.paths[index])), -1

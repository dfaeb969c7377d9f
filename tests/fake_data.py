"""Tiny datasets written in each library's own on-disk format, so the real loading code runs offline.

The images are not noise: each class is a bright square at its own position, so a network can learn them and
a test can tell a working pipeline from one that scrambles labels.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(labels: np.ndarray, side: int, channels: int, seed: int = 0) -> np.ndarray:
    """uint8 images (N, side, side, channels): a bright block whose position encodes the label, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), side, side, channels), dtype=np.uint8)
    block = max(2, side // 4)
    per_row = max(1, (side - block) // block + 1)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), per_row)
        y, x = (row * block) % (side - block + 1), (col * block) % (side - block + 1)
        images[i, y : y + block, x : x + block] = 230
    return images


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes).astype(np.uint8)


def write_mnist(root: str | os.PathLike, n_train: int = 240, n_test: int = 60, label_offset: int = 0) -> Path:
    """Write ``root/MNIST/raw/*-ubyte`` idx files as torchvision's ``MNIST`` reads them; return ``root``.

    ``label_offset`` shifts every label (to make labels outside 0-9).
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        labels = _labels(n, 10, seed)
        images = class_images(labels, 28, 1, seed)[..., 0]
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (labels + label_offset).astype(np.uint8).tobytes())
    return Path(root)


def write_cifar10(root: str | os.PathLike, n_per_batch: int = 50, n_test: int = 100) -> Path:
    """Write ``root/cifar-10-batches-py`` pickles as the CIFAR-10 python release lays them out; return ``root``."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_per_batch, "num_vis": 3072}, f)
    batches = [(f"data_batch_{i}", n_per_batch, i) for i in range(1, 6)] + [("test_batch", n_test, 9)]
    for name, n, seed in batches:
        labels = _labels(n, 10, seed)
        images = class_images(labels, 32, 3, seed).transpose(0, 3, 1, 2).reshape(n, 3072)  # rows of R, G, B planes
        entry = {"batch_label": name, "labels": labels.astype(int).tolist(), "data": images, "filenames": []}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return Path(root)


def write_image_folder(
    root: str | os.PathLike,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 8,
    side: int = 24,
    mode: str = "RGB",
    splits: tuple[str, ...] = ("train",),
) -> Path:
    """Write ``root/<split>/<class>/<i>.png`` images; ``mode`` is a PIL mode such as ``"RGB"`` or ``"L"``."""
    channels = 1 if mode == "L" else 3
    for s, split in enumerate(splits):
        labels = np.repeat(np.arange(len(classes)), per_class)
        images = class_images(labels, side, channels, seed=s)
        for i, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = Path(root) / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image[..., 0] if channels == 1 else image
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return Path(root)

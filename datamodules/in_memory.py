"""Image datasets small enough to live in memory as tensors, batched and augmented without per-sample Python.

The loaders yield whole batches by indexing the tensors with a batch of indices, and augmentation runs on the
batch after it reaches the device (``on_after_batch_transfer``), so a training step costs a gather and a few
tensor ops instead of ``batch_size`` calls of Python transforms. torchvision's v2 transforms draw one set of
random parameters per call, which would shift every image of a batch alike, so the per-image random
translation and flip are written here as batched tensor ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import (
    EpochSampler,
    balanced_loss_weights,
    class_weights,
    processes,
    shuffle_seed,
    stratified_split,
)
from datamodules.split_loaders import SplitLoaders


class TensorBatches(Dataset):
    """Index a pair of tensors with a whole batch of indices at once (use with ``batch_size=None``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def random_translate(x: torch.Tensor, padding: int, mode: str = "constant") -> torch.Tensor:
    """Shift each image of ``x`` (B, C, H, W) by its own random offset in ``[-padding, padding]`` pixels."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=mode)  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]  # (B, C, H, W)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image of ``x`` (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


def augment(x: torch.Tensor, translate: int, translate_mode: str, hflip: bool) -> torch.Tensor:
    """Per-image random translation by up to ``translate`` pixels and, with ``hflip``, random flips (B, C, H, W)."""
    if translate:
        x = random_translate(x, translate, translate_mode)
    if hflip:
        x = random_hflip(x)
    return x


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Images as floats: uint8 pixels scaled to [0, 1], anything else as it is."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def batch_loader(data: TensorBatches, sampler: EpochSampler, pin_memory: bool = False) -> DataLoader:
    """A loader of whole batches: ``sampler`` yields lists of indices, ``data`` gathers each list at once."""
    return DataLoader(data, batch_size=None, sampler=sampler, pin_memory=pin_memory)


class InMemoryImageDataModule(SplitLoaders, LightningDataModule):
    """Base for image datasets held as tensors; subclasses implement ``load_split``.

    Args:
        data_dir: Folder the dataset is read from (and downloaded to, where the dataset downloads).
        batch_size: Training batch size; evaluation uses ``eval_batch_size``.
        eval_batch_size: Batch size for validation, test and predict.
        val_fraction: Share of the training split held out for validation (seeded, stratified by class).
        seed: Seed of the validation split (and of any other split a subclass draws, such as digits' test split).
        balance: Draw training batches with a ``WeightedRandomSampler`` so every class is equally likely.
        translate: Random per-image shift of up to this many pixels during training; 0 turns it off.
        translate_mode: What fills the uncovered border: ``constant`` zeros (black, right for digits on a black
            background) or ``reflect`` (mirrored content, the usual choice for photos such as CIFAR-10).
        hflip: Random left-right flips during training (right for photos, wrong for digits).
        pin_memory: Pin batches for faster host-to-GPU copies.
        shuffle_seed: Seed of the training order; ``None`` follows ``--seed_everything``. Epoch ``k`` gets the
            same order whether the run was resumed or not (see :class:`datamodules.sampling.EpochSampler`).
        labelled_fraction: Share of the training split (what validation leaves) that keeps its labels: a seeded,
            stratified draw with at least one image of every class. The rest is the unlabelled pool of
            semi-supervised learning, read by :meth:`unlabelled_dataloader`; the part of it labelled by
            :meth:`set_pseudo_labels` joins the training data. Validation and test never change. 1.0: all labelled.

    Under DDP each process evaluates its own slice of the samples, none twice, so validation and test metrics equal
    one process's; in training every process takes the same number of batches (the last ones padded by repeats).

    Batches reach the model as floats in ``[0, 1]``: standardising belongs to the model, which takes the training
    split's per-channel statistics from :attr:`normalization` and keeps them in its checkpoint, so the model applied
    to raw images outside the trainer sees what it saw in training.
    """

    #: Channels, side and class count of the dataset; subclasses set them.
    channels: int = 1
    side: int = 28
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))

    predict_split = "test"  # ``recipe predict`` reads this split

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        seed: int = 0,
        balance: bool = False,
        translate: int = 0,
        hflip: bool = False,
        pin_memory: bool = False,
        translate_mode: Literal["constant", "reflect"] = "constant",
        shuffle_seed: int | None = None,
        labelled_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if translate < 0:
            raise ValueError(f"translate must be >= 0 pixels, got {translate}")
        if not 0.0 < labelled_fraction <= 1.0:
            raise ValueError(
                f"labelled_fraction must be in (0, 1], got {labelled_fraction}: the share of training images that keep "
                "their labels (0.1 keeps 10%), or 1.0 for fully supervised training"
            )
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.splits: dict[str, TensorBatches] = {}
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        # The unlabelled pool: its images with targets of -1 (unknown); the true labels stay private, for
        # :meth:`pseudo_label_accuracy` only. ``None`` when every training image keeps its label.
        self.unlabelled: TensorBatches | None = None
        self._hidden_labels: torch.Tensor | None = None
        self._pseudo = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))  # (pool indices, labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int:
        return self.side

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images, labels)`` of the official train or test split: images (N, C, H, W) uint8 or float."""
        raise NotImplementedError

    def _check(self, images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
        expected = (self.channels, self.side, self.side)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) != len(labels):
            raise MisconfigurationException(
                f"{type(self).__name__} {split} data has images of shape {tuple(images.shape)} and {len(labels)} "
                f"labels; expected (N, {', '.join(map(str, expected))}) images with one label each."
                " Download the dataset again."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise MisconfigurationException(
                f"{type(self).__name__} {split} labels range from {int(labels.min())} to {int(labels.max())}, outside "
                f"[0, {self.num_classes - 1}]. The files under {self.data_dir} are corrupt: delete and download "
                "them again."
            )

    def setup(self, stage: str) -> None:
        if self.splits:  # idempotent: every stage shares one load
            return
        images, labels = self.load_split(train=True)
        self._check(images, labels, "train")
        hp = self.hparams
        train_idx, val_idx = stratified_split(labels, hp.val_fraction, hp.seed)
        self.splits["val"] = TensorBatches(images[val_idx], labels[val_idx])
        # Normalisation statistics come from the training split only, so nothing leaks from validation or test; its
        # unlabelled images count too (they are training inputs), so they do not change with labelled_fraction.
        train = to_float(images[train_idx])
        if hp.labelled_fraction < 1.0:
            # Drawn from what validation left, so validation and test are the same whatever the fraction.
            pool, kept = stratified_split(labels[train_idx], hp.labelled_fraction, hp.seed, keep_one=True)
            pool_idx, train_idx = train_idx[pool], train_idx[kept]
            self.unlabelled = TensorBatches(images[pool_idx], torch.full((len(pool_idx),), -1, dtype=torch.long))
            self._hidden_labels = labels[pool_idx]
        self.splits["train"] = TensorBatches(images[train_idx], labels[train_idx])
        test_images, test_labels = self.load_split(train=False)
        self._check(test_images, test_labels, "test")
        self.splits["test"] = TensorBatches(test_images, test_labels)
        self.mean = train.mean(dim=(0, 2, 3)).tolist()
        self.std = train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel ``(mean, std)`` of the training split's pixels in ``[0, 1]``; ``None`` before ``setup``."""
        return (self.mean, self.std) if self.mean is not None else None

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split; ``None`` before ``setup``."""
        return balanced_loss_weights(self.splits["train"].labels, self.num_classes) if self.splits else None

    def _loader(self, split: str) -> DataLoader:
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are requested")
        data, hp = self._training_data() if split == "train" else self.splits[split], self.hparams
        train = split == "train"
        sampler = EpochSampler(
            len(data),
            **processes(self.trainer),
            shuffle=train,
            seed=shuffle_seed(hp.shuffle_seed),
            weights=class_weights(data.labels, self.num_classes) if train and hp.balance else None,
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            drop_last=train and len(data) > hp.batch_size,  # never drop the only batch of a tiny dataset
        )
        return batch_loader(data, sampler, hp.pin_memory)

    # Semi-supervised learning: the unlabelled pool and its pseudo-labels ----------------------------------------------

    def _training_data(self) -> TensorBatches:
        """The labelled training images followed by the pseudo-labelled ones of the pool."""
        labelled = self.splits["train"]
        indices, labels = self._pseudo
        if self.unlabelled is None or not len(indices):
            return labelled
        images = torch.cat([labelled.images, self.unlabelled.images[indices]])  # (N + K, C, H, W)
        return TensorBatches(images, torch.cat([labelled.labels, labels]))

    def _require_pool(self, action: str) -> TensorBatches:
        if not self.splits:
            raise MisconfigurationException(f"{type(self).__name__}.setup() must run before it can {action}.")
        if self.unlabelled is None:
            raise MisconfigurationException(
                f"{type(self).__name__} cannot {action}: labelled_fraction is 1.0, so every training image keeps its "
                "label and there is no unlabelled pool. Set labelled_fraction below 1 (e.g. "
                "--data.init_args.labelled_fraction=0.1) to hold labels back for semi-supervised learning."
            )
        return self.unlabelled

    def unlabelled_dataloader(self) -> DataLoader:
        """Batches ``(images, targets)`` of the unlabelled pool, always in the same order, targets all ``-1``.

        Position ``i`` in this order is the index :meth:`set_pseudo_labels` takes. Every process reads the whole pool
        (no DDP sharding), so each can label all of it; batches get this DataModule's ``on_after_batch_transfer``
        (pixels to floats) when moved with ``trainer.strategy.batch_to_device``, without augmentation outside training.
        """
        pool = self._require_pool("serve unlabelled images")
        sampler = EpochSampler(len(pool), batch_size=self.hparams.eval_batch_size)
        return batch_loader(pool, sampler, self.hparams.pin_memory)

    def set_pseudo_labels(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Train on pool images ``indices`` (K,) with class ``labels`` (K,) from the next training loader on.

        They replace any earlier pseudo-labels (empty tensors clear them). Lightning builds the training loader once
        unless ``Trainer(reload_dataloaders_every_n_epochs=1)``, which rebuilds it at every epoch start.
        """
        pool = self._require_pool("take pseudo-labels")
        indices, labels = torch.as_tensor(indices).cpu(), torch.as_tensor(labels).cpu()
        if indices.ndim != 1 or labels.ndim != 1 or len(indices) != len(labels):
            raise MisconfigurationException(
                f"pseudo-labels need 1-D indices and labels of one length, got shapes {tuple(indices.shape)} and "
                f"{tuple(labels.shape)}: pass positions in unlabelled_dataloader()'s order and one class each."
            )
        if indices.is_floating_point() or labels.is_floating_point():
            raise MisconfigurationException(
                f"pseudo-label indices and labels must be integers, got {indices.dtype} and {labels.dtype}: pass class "
                "indices (probabilities.argmax(-1)), not probabilities."
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= len(pool) or len(indices.unique()) < len(indices)):
            raise MisconfigurationException(
                f"pseudo-label indices must be distinct positions in [0, {len(pool) - 1}] of the unlabelled pool, got "
                f"{len(indices)} indices from {int(indices.min())} to {int(indices.max())}"
                f"{' with repeats' if len(indices.unique()) < len(indices) else ''}."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise MisconfigurationException(
                f"pseudo-labels range from {int(labels.min())} to {int(labels.max())}, outside the "
                f"{self.num_classes} classes [0, {self.num_classes - 1}]: the model's output size must match the data."
            )
        self._pseudo = (indices.long().clone(), labels.long().clone())

    @property
    def pseudo_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the current pseudo-labels: pool positions (K,) and classes (K,); empty before any are set."""
        return self._pseudo[0].clone(), self._pseudo[1].clone()

    def pseudo_label_accuracy(self) -> float | None:
        """Share of the current pseudo-labels equal to the labels held back: a diagnostic of the simulated
        semi-supervised split (nothing trains on it); ``None`` without pseudo-labels."""
        indices, labels = self._pseudo
        if self._hidden_labels is None or not len(indices):
            return None
        return (self._hidden_labels[indices] == labels).double().mean().item()

    def state_dict(self) -> dict[str, Any]:
        # The pseudo-labels are part of the training set, so a resumed run trains on the same examples.
        if self.unlabelled is None or not len(self._pseudo[0]):
            return {}
        indices, labels = self.pseudo_labels
        return {"pool_size": len(self.unlabelled), "pseudo_indices": indices, "pseudo_labels": labels}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict or (self.trainer is not None and self.trainer.state.fn != "fit"):
            return  # only training reads pseudo-labels: testing or predicting from a checkpoint takes any data options
        if not self.splits:
            # The recipe command restores data state before setup, for the data values; the pseudo-labels need the
            # pool, and a resumed fit restores this state again after setup (Lightning's own restore).
            return
        pool = self._require_pool("restore pseudo-labels")
        if state_dict["pool_size"] != len(pool):
            raise MisconfigurationException(
                f"the checkpoint's pseudo-labels index an unlabelled pool of {state_dict['pool_size']} images, but "
                f"this {type(self).__name__} holds {len(pool)}: resume with the labelled_fraction, val_fraction and "
                "seed the checkpoint was trained with."
            )
        self.set_pseudo_labels(state_dict["pseudo_indices"], state_dict["pseudo_labels"])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, (tuple, list)):  # the model summary's example input, already a float tensor
            return batch
        images, labels = batch
        x = to_float(images)
        if self.trainer is not None and self.trainer.training:
            x = augment(x, self.hparams.translate, self.hparams.translate_mode, self.hparams.hflip)
        return x, labels

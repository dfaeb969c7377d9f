"""Which samples each process reads, and in which order: the same order for a given seed and epoch, resumed or not,
and evaluation split between processes without scoring any sample twice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DistributedSampler


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights ``1 / count(class)`` (N,): drawn with replacement, every class is equally likely.

    Each epoch then sees every class about equally often (rare classes repeat, common ones are subsampled), the
    sampling counterpart of a class-weighted loss.
    """
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return (1.0 / counts.double())[labels]  # (N,)


def balanced_loss_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class loss weights ``N / (C * count)`` (C,), scikit-learn's ``class_weight="balanced"``: every class adds
    the same total weight to a class-weighted loss, and a balanced split gets weights of 1."""
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    return (len(labels) / (num_classes * counts)).float()  # (C,)


def shuffle_seed(seed: int | None) -> int:
    """``seed`` itself, or when it is ``None`` the run's global seed (``--seed_everything``, 0 without one).

    Lightning's ``seed_everything`` leaves the seed in ``PL_GLOBAL_SEED``, which the processes its DDP launcher starts
    inherit, so every process reads the same value (``torch.initial_seed()`` would differ between unseeded processes).
    """
    return seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


def processes(trainer: Any) -> dict[str, int]:
    """``num_replicas`` and ``rank`` of :class:`EpochSampler` for this process: the trainer's, or one process."""
    if trainer is None:
        return {"num_replicas": 1, "rank": 0}
    return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}


class EpochSampler(DistributedSampler):
    """One process's share of ``size`` samples, as indices or as lists of ``batch_size`` indices.

    Training (``shuffle=True``): every process draws the same order. Epoch ``k``'s order is the ``k``-th draw of a
    generator seeded with ``seed``: a ``torch.randperm`` (with ``weights``: ``torch.multinomial`` with replacement),
    as a ``RandomSampler`` or ``WeightedRandomSampler`` with that generator gives epoch after epoch under Lightning.
    So a run resumed at epoch ``k`` replays exactly the order an uninterrupted run sees (it makes the ``k`` earlier
    draws once, then goes on from there). The order is cut into batches when ``batch_size`` is given
    (the ragged last one dropped with ``drop_last``), and process ``r`` of ``num_replicas`` takes items ``r``,
    ``r + num_replicas``, ..., the list padded with its first items so that every process takes the same number of
    steps.

    Evaluation (``shuffle=False``): process ``r`` takes the ``r``-th of ``num_replicas`` contiguous slices, in order and
    without padding, so every sample is scored exactly once and torchmetrics metrics (which sum their states over
    processes) equal one process's. Slices differ by one sample when ``size`` is not a multiple of ``num_replicas``;
    a ``self.log(..., sync_dist=True)`` mean is then slightly off, as Lightning 2.6 averages the processes' sample
    counts in an integer tensor (180 and 181 count as 180 each).

    It is a ``DistributedSampler`` so that Lightning uses it as it is and calls ``set_epoch`` at every epoch start:
    Lightning only adds a distributed sampler of its own to loaders that lack one, and that one pads evaluation with
    repeated samples (repeated whole batches when the loader batches in its sampler). Iterated again without
    ``set_epoch``, it moves on to the next epoch, as a ``RandomSampler`` reshuffles on every pass.

    Args:
        size: Number of samples.
        num_replicas: Number of processes sharing them (the trainer's ``world_size``).
        rank: This process's index among them (the trainer's ``global_rank``).
        shuffle: Training order (drawn, dealt out, padded) rather than evaluation slices.
        seed: Seed of the training order.
        weights: Per-sample weights to draw ``size`` samples with replacement (class balancing); implies shuffling.
        batch_size: Yield lists of this many indices (for loaders with ``batch_size=None``); ``None`` yields indices.
        drop_last: Drop the ragged last batch of the training order.
    """

    def __init__(
        self,
        size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle or weights is not None)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if weights is not None and len(weights) != size:
            raise ValueError(f"weights holds {len(weights)} values for {size} samples")
        if not self.shuffle and 0 < size < num_replicas:
            # A process without a batch would skip the epoch and the metric sync that the others wait in.
            raise MisconfigurationException(
                f"{size} samples to evaluate on {num_replicas} processes: each process needs at least one. Use fewer "
                "devices for evaluation, or more data."
            )
        self.size, self.seed, self.batch_size, self.drop_last_batch = size, seed, batch_size, drop_last
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self._generator = torch.Generator()
        self._drawn = -1  # orders drawn from the generator since it was seeded; -1: not seeded yet

    def _draw(self) -> torch.Tensor:
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=self._generator)
        return torch.randperm(self.size, generator=self._generator)

    def _order(self, epoch: int) -> list[int]:
        if self._drawn < 0 or self._drawn > epoch:
            self._generator.manual_seed(self.seed)
            self._drawn = 0
        while self._drawn < epoch:  # only after a resume (or a step back): the orders of the epochs before
            self._draw()
            self._drawn += 1
        self._drawn += 1
        return self._draw().tolist()

    def _chunks(self, indices: list[int], drop_last: bool) -> list:
        if self.batch_size is None:
            return indices
        chunks = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        return chunks

    def _items(self, epoch: int) -> list:
        if not self.shuffle:
            start, stop = self.rank * self.size // self.num_replicas, (self.rank + 1) * self.size // self.num_replicas
            return self._chunks(list(range(start, stop)), drop_last=False)
        items = self._chunks(self._order(epoch), self.drop_last_batch)
        if not items:
            return []
        per_rank = -(-len(items) // self.num_replicas)  # ceil
        padded = [items[i % len(items)] for i in range(per_rank * self.num_replicas)]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator:
        # A generator: the epoch is read when the first item is asked for, not when an iterator is merely made.
        epoch = self.epoch
        self.epoch = epoch + 1  # the next pass, unless set_epoch says otherwise
        yield from self._items(epoch)

    def __len__(self) -> int:
        if not self.shuffle:
            share = (self.rank + 1) * self.size // self.num_replicas - self.rank * self.size // self.num_replicas
            return share if self.batch_size is None else -(-share // self.batch_size)
        items = self.size
        if self.batch_size is not None:
            items = self.size // self.batch_size if self.drop_last_batch else -(-self.size // self.batch_size)
        return -(-items // self.num_replicas)


def stratified_split(
    labels: Any, fraction: float, seed: int, keep_one: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(train, held_out)`` positions of ``labels`` (a sequence or tensor of class indices), both sorted:
    ``round(fraction * size)`` of each class held out, or with ``keep_one`` at least one of every class that has
    two or more members (small folders keep every class in validation)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(labels)
    train, held_out = [], []
    for c in targets.unique():
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n = round(len(members) * fraction)
        if keep_one and len(members) > 1:
            n = max(1, n)
        held_out.append(members[:n])
        train.append(members[n:])
    return torch.cat(train).sort().values, torch.cat(held_out).sort().values

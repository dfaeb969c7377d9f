"""Under DDP every sample is evaluated exactly once: each process's loaders hold their own slice of the split.
A real two-process run, whose metrics equal one process's on the same checkpoint, is in
tests/recipes/test_scale_out.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fake_data import write_image_folder
from torch.utils.data import DistributedSampler

from datamodules.image_folder import ImageFolderDataModule
from datamodules.vision import DigitsDataModule


def _per_rank(dm, split: str, world_size: int) -> list[list[torch.Tensor]]:
    """The batches of ``split`` each of ``world_size`` processes would read (labels and pixel sums)."""
    ranks = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, training=False)
        loader = getattr(dm, f"{split}_dataloader")()
        batches = [dm.on_after_batch_transfer(batch, 0) for batch in loader]
        assert len(batches) == len(loader)
        ranks.append(batches)
    dm.trainer = None
    return ranks


def _fingerprints(batches) -> list[tuple[int, float]]:
    return sorted(
        (int(y), round(float(s), 3)) for x, labels in batches for y, s in zip(labels, x.flatten(1).sum(1), strict=True)
    )


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_in_memory_evaluation_slices_cover_the_split_once(world_size):
    dm = DigitsDataModule(eval_batch_size=80)  # 360 test images: 5 batches on one process
    dm.setup("test")
    single = _fingerprints(_per_rank(dm, "test", 1)[0])
    ranks = _per_rank(dm, "test", world_size)
    assert sorted(sum((_fingerprints(r) for r in ranks), [])) == single
    assert sum(len(labels) for r in ranks for _, labels in r) == 360  # no sample twice, none left out
    # Lightning adds its own distributed sampler (which pads with repeated batches) only to loaders without one.
    assert isinstance(dm.test_dataloader().sampler, DistributedSampler)


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_evaluation_slices_cover_the_split_once(tmp_path, in_memory):
    write_image_folder(tmp_path, per_class=7, side=16, splits=("train", "val", "test"))  # 21 images each
    dm = ImageFolderDataModule(str(tmp_path), eval_batch_size=4, num_workers=0, in_memory=in_memory)
    dm.setup("fit")
    dm.setup("test")
    for split in ("val", "test"):
        single = _fingerprints(_per_rank(dm, split, 1)[0])
        ranks = _per_rank(dm, split, 4)
        assert sorted(sum((_fingerprints(r) for r in ranks), [])) == single and len(single) == 21


@pytest.mark.parametrize("balance", [False, True])
def test_training_ranks_take_equal_steps_from_one_shared_order(balance):
    dm = DigitsDataModule(batch_size=100, balance=balance)
    dm.setup("fit")
    n_batches = len(dm.splits["train"]) // 100  # 11: one rank gets a repeated batch
    ranks = [[labels for _, labels in r] for r in _per_rank(dm, "train", 2)]
    assert len(ranks[0]) == len(ranks[1]) == -(-n_batches // 2)
    single = [labels for _, labels in dm.train_dataloader()]
    dealt = [batch for pair in zip(*ranks, strict=True) for batch in pair]  # rank 0, rank 1, rank 0, ...
    # The one-process order dealt out, the last step of rank 1 padded with the first batch.
    assert all(torch.equal(a, b) for a, b in zip(dealt, [*single, single[0]], strict=True))

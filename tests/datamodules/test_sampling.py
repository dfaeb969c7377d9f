"""EpochSampler: evaluation slices without repeats, training shares of equal length, orders fixed by seed and epoch."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.sampling import EpochSampler, class_weights, shuffle_seed


def _shares(world_size: int, **kwargs) -> list[list]:
    return [list(EpochSampler(num_replicas=world_size, rank=r, **kwargs)) for r in range(world_size)]


def _flat(items) -> list[int]:
    return [i for item in items for i in (item if isinstance(item, list) else [item])]


@pytest.mark.parametrize("size", [7, 360, 1025])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [None, 80])
def test_evaluation_takes_every_sample_once_in_order(size, world_size, batch_size):
    shares = _shares(world_size, size=size, batch_size=batch_size)
    assert _flat(sum(shares, [])) == list(range(size))  # contiguous slices, concatenated in rank order
    for rank, share in enumerate(shares):
        assert len(EpochSampler(size, num_replicas=world_size, rank=rank, batch_size=batch_size)) == len(share)
        assert all(len(batch) <= batch_size for batch in share) if batch_size else True


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("batch_size, drop_last", [(None, False), (16, True), (16, False)])
def test_training_shares_are_equal_and_deal_out_one_order(world_size, batch_size, drop_last):
    kwargs = {"size": 100, "shuffle": True, "seed": 3, "batch_size": batch_size, "drop_last": drop_last}
    (single,) = _shares(1, **kwargs)
    shares = _shares(world_size, **kwargs)
    assert len({len(share) for share in shares}) == 1  # every process takes the same number of steps
    assert len(shares[0]) == len(EpochSampler(num_replicas=world_size, rank=0, **kwargs))
    dealt = [item for step in zip(*shares, strict=True) for item in step]
    assert dealt[: len(single)] == single and dealt[len(single) :] == single[: len(dealt) - len(single)]
    if drop_last:
        assert all(len(batch) == 16 for batch in single)


def test_each_epoch_has_its_own_order_fixed_by_seed_and_epoch():
    sampler = EpochSampler(50, shuffle=True, seed=1)
    epochs = [list(sampler) for _ in range(3)]  # each pass moves on to the next epoch
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[1]) == list(range(50))
    fresh = EpochSampler(50, shuffle=True, seed=1)
    fresh.set_epoch(2)  # a resumed run starting at epoch 2
    assert list(fresh) == epochs[2]
    fresh.set_epoch(0)  # and back
    assert list(fresh) == epochs[0]
    assert list(EpochSampler(50, shuffle=True, seed=2)) != epochs[0]


def test_making_an_iterator_does_not_use_up_an_epoch():
    sampler = EpochSampler(20, shuffle=True)
    iter(sampler)  # Lightning and DataLoader make iterators they may not read
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_weights_draw_with_replacement_by_class():
    labels = torch.tensor([0] * 90 + [1] * 10)
    sampler = EpochSampler(100, weights=class_weights(labels, 2), seed=0)
    drawn = labels[torch.tensor([i for _ in range(20) for i in sampler])]
    assert sampler.shuffle and abs(drawn.float().mean().item() - 0.5) < 0.05


def test_fewer_samples_than_processes_cannot_be_evaluated():
    with pytest.raises(MisconfigurationException, match="each process needs at least one"):
        EpochSampler(3, num_replicas=4, rank=0)
    assert len(EpochSampler(3, num_replicas=4, rank=3, shuffle=True)) == 1  # training pads


def test_shuffle_seed_follows_seed_everything_unless_given(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    assert shuffle_seed(None) == 42 and shuffle_seed(7) == 7
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert shuffle_seed(None) == 0

"""Class balancing by sampling: every class equally likely in each training batch."""

from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler


def balanced_sampler(labels: torch.Tensor, num_classes: int, seed: int) -> WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` drawing ``len(labels)`` indices with weights ``1 / count(class)``.

    Each epoch then sees every class about equally often (rare classes repeat, common ones are subsampled), the
    sampling counterpart of a class-weighted loss.
    """
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    weights = (1.0 / counts.double())[labels]  # (N,)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)

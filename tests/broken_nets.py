"""Networks that fail on purpose, for tests of how failures are reported."""

from __future__ import annotations

import torch

from lightning_modules.nets import CompactResNet


class NaNAfter(CompactResNet):
    """A ``CompactResNet`` whose training outputs turn NaN after ``healthy_steps`` forward passes."""

    def __init__(self, healthy_steps: int = 1, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, widths=(16,), stem_width=8)
        self.healthy_steps = healthy_steps
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.healthy_steps:
                return out * float("nan")
        return out

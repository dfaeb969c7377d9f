"""A network with torchvision-style pretrained ``weights``, whose "download" tests can cut off."""

from __future__ import annotations

import torch
from torch import nn

#: Set to False by a test to stand for a machine without network access.
NETWORK = True
#: How many times weights were fetched.
FETCHES = 0


class PretrainedNet(nn.Module):
    """Conv stem, pooling and a 1000-way head like a torchvision classifier; ``weights`` fills them with fixed
    "pretrained" values, which needs the network."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1000)
        if weights is not None:
            global FETCHES
            if not NETWORK:
                raise ConnectionError(f"cannot download the {weights} weights: no network")
            FETCHES += 1
            generator = torch.Generator().manual_seed(1234)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.stem(x))).flatten(1))  # (B, 1000)

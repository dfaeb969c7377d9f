"""A lean plain CNN: conv-BN-ReLU-pool stages and a linear head.

Sized for MNIST-like inputs, it is the network behind the fast MNIST recipe: two 3x3 conv stages of
(32, 64) channels (the recipe's widths) with batch norm, about 20k parameters, reach 99% test accuracy in four epochs.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Plain CNN: each stage is ``convs_per_stage`` x (3x3 conv, BN, ReLU) then 2x2 max-pool.

    Args:
        in_channels: Channels of the input image.
        num_classes: Size of the classification head.
        widths: Channels of each stage.
        convs_per_stage: Convolutions per stage before pooling.
        dropout: Dropout before the head.

    Shapes:
        input ``(B, in_channels, H, W)``, output ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32),
        convs_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not widths or convs_per_stage < 1:
            raise ValueError(
                "ConvNet needs in_channels >= 1, num_classes >= 2, at least one width and convs_per_stage >= 1"
            )
        layers: list[nn.Module] = []
        c_in = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(-2, -1))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

"""A compact ResNet for small images (8x8 to 64x64).

He et al., "Deep Residual Learning for Image Recognition", 2016 (https://arxiv.org/abs/1512.03385).
The layout follows the fast CIFAR-10 "ResNet-9" of Page (2018) and Keller Jordan's airbench: a conv stem,
then one stage per width, each a conv + max-pool that halves the resolution followed by a residual block,
then global max-pooling and a linear head. Pooling is skipped once the feature map is 2x2 or smaller so the
same network serves 8x8 digits and 32x32 CIFAR.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CompactResNet(nn.Module):
    """ResNet-style CNN sized for small images.

    Args:
        in_channels: Channels of the input image (1 for grayscale, 3 for colour).
        num_classes: Size of the classification head.
        widths: Channels of each stage; each stage halves the resolution (down to 2x2) and adds a residual block.
        stem_width: Channels of the first convolution.
        dropout: Dropout before the head.
        head_scale: Logits are multiplied by this; airbench uses 1/8 to keep early logits small.

    Shapes:
        input ``(B, in_channels, H, W)``, output ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, ...] = (64, 128, 256),
        stem_width: int = 32,
        dropout: float = 0.0,
        head_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2:
            raise ValueError(
                f"CompactResNet needs in_channels >= 1 and num_classes >= 2, got {in_channels}, {num_classes}"
            )
        if not widths:
            raise ValueError("CompactResNet needs at least one stage width")
        self.stem = _conv_bn(in_channels, stem_width)
        self.stages = nn.ModuleList()
        c_in = stem_width
        for width in widths:
            self.stages.append(nn.ModuleDict({"conv": _conv_bn(c_in, width), "res": _Residual(width)}))
            c_in = width
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        self.head_scale = head_scale
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage["conv"](x)
            if min(x.shape[-2:]) > 2:
                x = nn.functional.max_pool2d(x, 2)
            x = stage["res"](x)
        return torch.amax(x, dim=(-2, -1))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x))) * self.head_scale

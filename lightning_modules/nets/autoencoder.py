"""Encoders and decoders for autoencoders and VAEs: convolutional for small images, MLP for flat features.

Every network here takes the shape of one example first, ``data_shape``: ``(C, H, W)`` for images or ``(F,)`` for
flat features, so a LightningModule builds it from the data's sizes and a recipe names the class and its own options
only. An encoder maps ``(B, *data_shape) -> (B, out_features)`` (a VAE asks for ``2 * latent_dim``: means and
log-variances); a decoder maps ``(B, latent_dim) -> (B, *data_shape)``, unbounded (logits of a Bernoulli, or means of
a Gaussian, as the module decides).

The convolutional pair follows the usual small-image VAE layout (Kingma & Welling 2014,
https://arxiv.org/abs/1312.6114, with the strided convolutions of Radford et al. 2016): 4x4 stride-2 convolutions
halve the image once per width, a hidden dense layer, then the mirror image with transposed convolutions. No batch
norm: a likelihood evaluated in eval mode should not depend on the statistics of a training batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_image(data_shape: tuple[int, ...], halvings: int, name: str) -> tuple[int, int]:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"{name} takes square images, data_shape (C, H, H), got {tuple(data_shape)}; use an MLP net")
    channels, side = data_shape[0], data_shape[1]
    if side % 2**halvings:
        raise ValueError(
            f"{name} halves the image {halvings} times (one per width), so its side must be divisible by "
            f"{2**halvings}, got {side}; give fewer widths"
        )
    return channels, side // 2**halvings


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Strided-convolution encoder: ``(B, C, H, H) -> (B, out_features)``.

    Args:
        data_shape: ``(C, H, H)`` of one image; filled from the data.
        out_features: Output size (``2 * latent_dim`` for a VAE); set by the LightningModule.
        widths: Channels of each 4x4 stride-2 convolution; each halves the image.
        hidden: Width of the dense layer after the convolutions.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        out_features: int,
        widths: tuple[int, ...] = (32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        channels, side = _check_image(data_shape, len(widths), "ConvEncoder")
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())  # (B, widths[-1] * side * side)
        self.head = _mlp([channels * side * side, hidden, out_features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder: ``(B, latent_dim) -> (B, C, H, H)``.

    Args:
        latent_dim: Size of the code; set by the LightningModule.
        data_shape: ``(C, H, H)`` of one image; filled from the data.
        widths: Channels at each resolution, coarsest first; each 4x4 stride-2 transposed convolution doubles the side,
            the last one to the image's channels.
        hidden: Width of the dense layer before the convolutions.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        widths: tuple[int, ...] = (64, 32),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        channels, side = _check_image(data_shape, len(widths), "ConvDecoder")
        self.start = (widths[0], side, side)
        self.project = nn.Sequential(_mlp([latent_dim, hidden, widths[0] * side * side]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for width, following in zip(widths, [*widths[1:], channels], strict=True):
            layers.append(nn.ConvTranspose2d(width, following, 4, stride=2, padding=1))
            layers.append(nn.ReLU(inplace=True))
        self.upsample = nn.Sequential(*layers[:-1])  # no activation after the last layer: logits or means

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), *self.start)  # (B, widths[0], side, side)
        return self.upsample(h)


class MLPEncoder(nn.Module):
    """MLP over the flattened example: ``(B, *data_shape) -> (B, out_features)``.

    Args:
        data_shape: Shape of one example, ``(C, H, W)`` or ``(F,)``; filled from the data.
        out_features: Output size (``2 * latent_dim`` for a VAE); set by the LightningModule.
        hidden: Widths of the hidden layers (ReLU after each).
    """

    def __init__(self, data_shape: tuple[int, ...], out_features: int, hidden: tuple[int, ...] = (512, 256)) -> None:
        super().__init__()
        self.net = _mlp([math.prod(data_shape), *hidden, out_features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, prod(data_shape)) -> (B, out_features)


class MLPDecoder(nn.Module):
    """MLP from the code to the example: ``(B, latent_dim) -> (B, *data_shape)``.

    Args:
        latent_dim: Size of the code; set by the LightningModule.
        data_shape: Shape of one example, ``(C, H, W)`` or ``(F,)``; filled from the data.
        hidden: Widths of the hidden layers (ReLU after each).
    """

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...], hidden: tuple[int, ...] = (256, 512)) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = _mlp([latent_dim, *hidden, math.prod(data_shape)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.data_shape)  # (B, *data_shape)

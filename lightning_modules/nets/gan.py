"""DCGAN generator and discriminator (Radford et al. 2016, https://arxiv.org/abs/1511.06434) for small images.

Both take the image's channels and side first, so a LightningModule builds them from the data's sizes and a recipe
names the class and its own options only. The side is halved while it stays even and at least 4 (8 -> 4,
28 -> 14 -> 7, 32 -> 16 -> 8 -> 4): that coarsest map is where the generator starts and the discriminator ends, one
4x4 stride-2 (transposed) convolution per halving, channels doubling towards the coarse end as in the paper. As in
the paper: batch norm in both networks except the generator's output and the discriminator's input layer, ReLU in
the generator with tanh at the output (images in ``[-1, 1]``), LeakyReLU(0.2) in the discriminator, weights from
N(0, 0.02). ``extra_layers`` adds 3x3 stride-1 layers at the finest resolution, as the reference DCGAN code of the
WGAN paper (Arjovsky et al. 2017) does; an 8x8 image has one halving only, and gets its depth from them.

Class conditioning, when ``num_classes > 0``: the generator concatenates a learned class embedding to the noise; the
discriminator adds the projection term of Miyato & Koyama 2018 (https://arxiv.org/abs/1802.05637),
``<embed(y), h(x)>``, to its output. For WGAN-GP (Gulrajani et al. 2017) give the critic ``norm="layer"`` or
``"none"``: the gradient penalty is per example, which batch norm would mix.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def halvings(image_size: int) -> int:
    """How many times the side is halved: while it stays even and at least 4 afterwards (at least once)."""
    n, side = 0, image_size
    while side % 2 == 0 and side // 2 >= 4:
        side, n = side // 2, n + 1
    if n == 0:
        raise ValueError(f"DCGAN nets need an even image side of at least 8, got {image_size}")
    return n


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W), per example
    return nn.Identity()


def reset_dcgan(module: nn.Module) -> None:
    """DCGAN's initialisation: convolutions and linear layers from N(0, 0.02), norm scales from N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Noise (and a class) to an image: ``(B, latent_dim), (B,) -> (B, in_channels, image_size, image_size)``.

    Args:
        latent_dim: Size of the noise vector; set by the LightningModule.
        in_channels: Channels of the images made; filled from the data.
        image_size: Side of the images made; filled from the data.
        num_classes: Classes to condition on; 0 for an unconditional generator.
        width: Channels at the finest resolution; doubled at each coarser one.
        extra_layers: 3x3 conv-BN-ReLU layers at the finest resolution before the output layer.
    """

    def __init__(
        self,
        latent_dim: int,
        in_channels: int,
        image_size: int,
        num_classes: int = 0,
        width: int = 64,
        extra_layers: int = 0,
    ) -> None:
        super().__init__()
        n = halvings(image_size)
        self.num_classes = num_classes
        self.start = (width * 2 ** (n - 1), image_size // 2**n, image_size // 2**n)
        c, side, _ = self.start
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim * (2 if num_classes else 1), c * side * side, bias=False),
            nn.Unflatten(1, self.start),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(c, in_channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_dcgan(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass the labels")
            z = torch.cat([z, self.embed(labels)], dim=1)  # (B, 2 * latent_dim)
        return self.body(self.project(z))  # (B, C, H, W) in [-1, 1]


class DCGANDiscriminator(nn.Module):
    """Image (and class) to one unbounded score: ``(B, in_channels, image_size, image_size), (B,) -> (B,)``.

    Args:
        in_channels: Channels of the images judged; filled from the data.
        image_size: Side of the images judged; filled from the data.
        num_classes: Classes for the projection term; 0 for an unconditional discriminator.
        width: Channels of the first layer; doubled at each halving.
        extra_layers: 3x3 conv-norm-LeakyReLU layers after the first layer.
        norm: ``batch`` (DCGAN), ``layer`` or ``none`` (WGAN-GP critics).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int = 0,
        width: int = 64,
        extra_layers: int = 0,
        norm: Literal["batch", "layer", "none"] = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {norm!r}")
        n = halvings(image_size)
        c = width
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(extra_layers):
            layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), _norm(norm, c), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), _norm(norm, 2 * c), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())  # (B, c * side * side)
        self.num_features = c * (image_size // 2**n) ** 2
        self.head = nn.Linear(self.num_features, 1)
        self.embed = nn.Embedding(num_classes, self.num_features) if num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_dcgan(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, F)
        score = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass the labels")
            score = score + (self.embed(labels) * h).sum(1)  # the projection term
        return score

"""Tiny modules for the training styles our callbacks must handle: a GAN with manual optimization, a classifier fed
an endless stream (no epoch end, as reinforcement learning trains), and a backbone + head for ``BackboneFinetuning``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

LATENT = 4


def blobs(n: int = 32, seed: int = 0) -> TensorDataset:
    """Three overlapping Gaussian blobs in 4-D with their class indices: learnable, not perfectly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return TensorDataset(centres[y] + torch.randn(n, 4, generator=g), y)  # (n, 4), (n,)


def blob_loader(n: int = 32, batch_size: int = 8, seed: int = 0, shuffle: bool = False) -> DataLoader:
    return DataLoader(blobs(n, seed), batch_size=batch_size, shuffle=shuffle)


class TinyGAN(LightningModule):
    """A generator with BatchNorm and a discriminator, one optimizer each, stepped in turn by manual optimization.

    ``forward(z)`` is the generator's ``G(z)``: it takes noise, never the training batch of real points.
    """

    def __init__(self, lr: float = 0.02) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.lr = lr
        self.generator = nn.Sequential(nn.Linear(LATENT, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)  # (B, 2)

    def _bce(self, points: torch.Tensor, real: bool) -> torch.Tensor:
        logits = self.discriminator(points)  # (B, 1)
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))

    def training_step(self, batch, batch_idx: int) -> None:
        (real,) = batch  # (B, 2)
        opt_g, opt_d = self.optimizers()
        fake = self(torch.randn(len(real), LATENT, device=real.device))  # (B, 2)
        d_loss = self._bce(real, True) + self._bce(fake.detach(), False)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = self._bce(fake, True)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/fake_mean", self(torch.randn(len(batch[0]), LATENT, device=self.device)).mean())

    def configure_optimizers(self):
        # Momentum, so that pruned weights would move again if anything let them.
        generator = torch.optim.SGD(self.generator.parameters(), lr=self.lr, momentum=0.9)
        discriminator = torch.optim.SGD(self.discriminator.parameters(), lr=self.lr, momentum=0.9)
        return [generator, discriminator]


def real_points(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    """The GAN's data: points of a 2-D Gaussian, tuple batches ``(x,)`` of ``(B, 2)``."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 2, generator=g) * 0.5 + 1.0), batch_size=batch_size)


class Stream(IterableDataset):
    """An endless stream of blob batches ``(x, y)`` with no ``__len__``: the epoch never ends, as in RL."""

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        self.batch_size, self.seed = batch_size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
        while True:
            y = torch.randint(0, 3, (self.batch_size,), generator=g)
            yield centres[y] + torch.randn(self.batch_size, 4, generator=g), y  # (B, 4), (B,)


def stream_loader(batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(Stream(batch_size, seed), batch_size=None)  # the dataset yields whole batches


class BackboneHead(LightningModule):
    """A backbone (``Linear`` + ``BatchNorm``) and a linear head: the layout ``BackboneFinetuning`` expects.

    The optimizer takes the trainable parameters only, the way ``BackboneFinetuning``'s documentation configures it:
    the head as group 0 and the backbone's trainable parameters as a second group at a quarter of the rate.
    ``BackboneFinetuning`` freezes the backbone but its BatchNorm, so ``batch_norm=False`` leaves it wholly frozen.
    """

    def __init__(self, lr: float = 0.1, batch_norm: bool = True) -> None:
        super().__init__()
        self.lr = lr
        norm = nn.BatchNorm1d(16) if batch_norm else nn.Identity()
        self.backbone = nn.Sequential(nn.Linear(4, 16), norm, nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, 3) logits

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        groups = [{"params": list(self.head.parameters()), "lr": self.lr}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr / 4})
        return torch.optim.SGD(groups, momentum=0.9)


class StreamClassifier(BackboneHead):
    """``BackboneHead`` trained on ``Stream``: give the trainer ``max_steps``."""

    def train_dataloader(self) -> DataLoader:
        return stream_loader()

    def val_dataloader(self) -> DataLoader:
        return blob_loader(seed=1, batch_size=32)

"""Tiny modules and state snapshots for the LR finder tests."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


def least_squares_data(n: int = 64, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A fixed float64 regression problem and the largest eigenvalue ``L`` of the Hessian of its mean squared error.

    loss(w) = mean_i (x_i . w - y_i)^2, so the Hessian is 2 X^T X / n; gradient descent is stable for lr < 2 / L.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    hessian = 2 * x.T @ x / n
    return x, y, float(torch.linalg.eigvalsh(hessian).max())


class LeastSquares(LightningModule):
    """Linear regression with plain SGD, full-batch unless ``batches`` > 1; ``shift`` is added to the loss (it does not
    move the minimum)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lr: float, shift: float = 0.0, batches: int = 1) -> None:
        super().__init__()
        self.x, self.y, self.lr, self.shift, self.batches = x, y, lr, shift, batches
        self.linear = nn.Linear(x.shape[1], 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.zero_()
        self.lrs_used: list[float] = []

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.linear(x), y) + self.shift

    def training_step(self, batch, batch_idx):
        self.lrs_used.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        loss = self.loss(*batch)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=len(self.x) // self.batches)


def classification_data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())


class TinyClassifier(LightningModule):
    """Everything a range test could disturb: BatchNorm buffers, dropout (RNG), a frozen eval-mode submodule,
    a torchmetrics metric, two param groups with different LRs, SGD momentum state, an optional one-cycle schedule
    and a shuffled loader."""

    def __init__(self, lr: float = 0.05, one_cycle: bool = False, batch_size: int = 16, num_workers: int = 0) -> None:
        super().__init__()
        self.lr, self.one_cycle, self.batch_size, self.num_workers = lr, one_cycle, batch_size, num_workers
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.frozen = nn.BatchNorm1d(16).eval()
        self.head = nn.Linear(16, 3)
        self.acc = MulticlassAccuracy(3)
        self.lrs_used: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        self.lrs_used.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])
        x, y = batch
        logits = self.head(self.frozen(self.body(x)))
        loss = F.cross_entropy(logits, y)
        self.acc.update(logits.detach(), y)
        self.log("train/loss", loss)
        return loss

    def on_train_epoch_end(self) -> None:
        # Computed but never reset, so the metric state is non-trivial whenever a range test starts.
        self.log("train/acc", self.acc.compute())

    def on_train_end(self) -> None:
        self.eval()  # as a module might before exporting; the range test's own fit loop ends with this hook too

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            [{"params": self.body.parameters()}, {"params": self.head.parameters(), "lr": self.lr / 4}],
            lr=self.lr,
            momentum=0.9,
        )
        if not self.one_cycle:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[self.lr, self.lr / 4], total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(classification_data(), batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)


LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def snapshot(trainer, module) -> dict:
    """Everything the range test must leave as it was, learning rates aside (those it changes on purpose)."""
    optimizer = trainer.optimizers[0].state_dict()
    groups = [{k: v for k, v in g.items() if k not in LR_KEYS} for g in optimizer["param_groups"]]
    schedulers = [
        {k: v for k, v in c.scheduler.state_dict().items() if k not in ("base_lrs", "_last_lr")}
        for c in trainer.lr_scheduler_configs
    ]
    return copy.deepcopy(
        {
            "weights": module.state_dict(),
            "modes": {name: m.training for name, m in module.named_modules()},
            "grads": [None if p.grad is None else p.grad for p in module.parameters()],
            "metric": {name: getattr(module.acc, name) for name in module.acc._defaults}
            if hasattr(module, "acc")
            else {},
            "optimizer_state": optimizer["state"],
            "param_groups": groups,
            "schedulers": schedulers,
            "rng": (torch.get_rng_state(), np.random.get_state()[1], random.getstate()),
            "loops": trainer.fit_loop.state_dict(),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "callbacks": [id(c) for c in trainer.callbacks],
            "loggers": [id(logger) for logger in trainer.loggers],
            "callback_metrics": dict(trainer.callback_metrics),
            "logged_metrics": dict(trainer.logged_metrics),
            "ckpt_path": trainer.ckpt_path,
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "limit_val_batches": trainer.limit_val_batches,
            "restarting": [trainer.fit_loop.restarting, trainer.fit_loop.epoch_loop.restarting],
        }
    )


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        _assert_equal(before[key], after[key], key)


def _assert_equal(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"

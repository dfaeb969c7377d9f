"""No callback waits on the accelerator in a training step: its per-batch hooks never read a tensor back to Python.

On a GPU, ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()`` or ``.cpu()`` block the host until the device has caught
up, every step. The tests run without a GPU, so this one refuses those calls outright inside the hooks that run per
batch or per optimizer step (``LRFinder``'s range-test probe reads the loss per step by design; it runs only during a
range test). Copies between devices (``.to``) are not caught here: ``SWA`` keeps its average beside the weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import SWA, LRFinder, Pruning, SnapshotEnsemble

PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_optimizer_step", "on_before_zero_grad")
READS_BACK = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)  # (B, 3) logits

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16)  # 4 steps an epoch


def guarded(hook: Callable, name: str, calls: Counter, monkeypatch: pytest.MonkeyPatch) -> Callable:
    def refuse(method: str) -> Callable:
        def read_back(*args, **kwargs):
            raise AssertionError(f"{name} calls Tensor.{method}, a host sync on an accelerator, at every step")

        return read_back

    def run(*args, **kwargs):
        calls[name] += 1
        with monkeypatch.context() as patch:
            for method in READS_BACK:
                patch.setattr(torch.Tensor, method, refuse(method))
            return hook(*args, **kwargs)

    return run


def guard(callback: Callback, calls: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap every per-step hook ``callback`` overrides, and the optimizer step hook ``Pruning`` registers."""
    names = [h for h in PER_STEP_HOOKS if getattr(type(callback), h) is not getattr(Callback, h)]
    names += ["_after_step"] if isinstance(callback, Pruning) else []
    for hook in names:
        label = f"{type(callback).__name__}.{hook}"
        setattr(callback, hook, guarded(getattr(callback, hook), label, calls, monkeypatch))


def swa_and_pruning() -> list[Callback]:
    return [SWA(swa_start=1, swa_lr=0.01, mode="ema", update_bn=False), Pruning(sparsity=0.5, end_epoch=1)]


def lr_finder_and_snapshot_ensemble() -> list[Callback]:
    return [LRFinder(min_lr=1e-4, max_lr=1.0, num_training=10), SnapshotEnsemble(cycles=2)]


@pytest.mark.parametrize(
    ("make", "hooks"),
    [
        (swa_and_pruning, ("SWA.on_train_batch_start", "SWA.on_train_batch_end", "Pruning.on_before_optimizer_step")),
        (
            lr_finder_and_snapshot_ensemble,
            ("SnapshotEnsemble.on_train_batch_start", "SnapshotEnsemble.on_train_batch_end"),
        ),
    ],
    ids=["swa-pruning", "lr_finder-snapshot"],
)
def test_per_step_hooks_never_read_a_tensor_back(make, hooks, monkeypatch, tmp_path):
    seed_everything(0)
    callbacks, calls = make(), Counter()
    for callback in callbacks:
        guard(callback, calls, monkeypatch)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=3,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), loader())
    # The guards saw every one of the 12 steps, those that average, prune and take snapshots included.
    assert {name: calls[name] for name in hooks} == dict.fromkeys(hooks, 12), calls
    for callback in callbacks:
        if isinstance(callback, SWA):
            assert callback.n_averaged == 8
        if isinstance(callback, Pruning):
            assert calls["Pruning._after_step"] == 12
        if isinstance(callback, SnapshotEnsemble):
            assert callback.snapshot_cycles == [1, 2]

"""No value is read back to the host at every training step on accelerators, and the bar still shows the loss.

A read (``.item()``, ``float(t)``, ``.tolist()``) of an accelerator tensor waits for the device. Lightning reads
every ``prog_bar=True`` value at every step, so ``train/loss`` reaches the bar through ``RecipeProgressBar`` instead.
On CPU nothing waits, so the test stands for an accelerator by making :func:`core.host_sync.reads_are_costly` true
and counts reads of scalar floating tensors (losses and metrics; index lists are integer tensors).
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from core import host_sync
from recipes.cli import main
from recipes.progress import RecipeProgressBar

READS_BACK = ("item", "tolist", "__float__", "__bool__", "__int__")


def _counting(monkeypatch: pytest.MonkeyPatch, reads: Counter) -> None:
    for name in READS_BACK:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # Adam's step counter stays on the CPU on every device (torch reads it there by design).
            if self.dim() == 0 and self.is_floating_point() and not _optimizer_counter():
                reads["scalar"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)


def _optimizer_counter() -> bool:
    frame = sys._getframe(2)
    return "torch/optim/" in frame.f_code.co_filename.replace("\\", "/")


def _fit(steps: int, eval_batch_size: int = 1024) -> object:
    flags = [f"--trainer.limit_train_batches={steps}", "--trainer.max_epochs=1"]
    eval_batches = [f"--data.init_args.eval_batch_size={eval_batch_size}"]
    return main(["fit", "--config", "vision/digits", *flags, *eval_batches, "--trainer.logger=false"])


def test_training_steps_read_nothing_back_on_accelerators(monkeypatch):
    monkeypatch.setattr(host_sync, "reads_are_costly", lambda device: True)
    counts = []
    for steps, eval_batch_size in ((3, 1024), (15, 32)):  # 1 validation batch, then 9 (288 images)
        reads: Counter = Counter()
        with monkeypatch.context() as patch:
            _counting(patch, reads)
            _fit(steps, eval_batch_size)
        counts.append(reads["scalar"])
    # Twelve more training steps and eight more validation steps, and no more reads: those happen per epoch (after
    # validation, at the checkpoint), never per step.
    assert counts[1] - counts[0] <= 1, f"{counts[1] - counts[0]} more reads for 20 more steps"


def test_the_bar_shows_the_training_loss():
    fit = _fit(3)
    bar = fit.trainer.progress_bar_callback
    assert isinstance(bar, RecipeProgressBar)
    shown = bar.get_metrics(fit.trainer, fit.model)
    for key in ("train/loss", "val/loss", "val/acc"):
        assert shown[key] == pytest.approx(float(fit.trainer.callback_metrics[key]))

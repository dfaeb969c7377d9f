"""The recipes' checkpoint callback: Lightning's ``ModelCheckpoint`` with a ``last.ckpt`` that really is the last."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class RecipeCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that rewrites ``last.ckpt`` at every save point, not only when a top-k checkpoint is saved.

    Lightning 2.6 writes ``last.ckpt`` only at steps where it also wrote a monitored top-k checkpoint, so with
    ``monitor`` set, ``last.ckpt`` is the last *improvement*: resuming from it repeats epochs, and callbacks that keep
    state for resuming (SWA, snapshot ensembles, pruning) would restart from a stale state. Here ``last.ckpt`` follows
    every validation (or training epoch end when there is no validation), after the top-k logic has run. Arguments
    are ``ModelCheckpoint``'s.
    """

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        # Skipped when this step was already saved: Lightning then wrote last.ckpt with the top-k checkpoint.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

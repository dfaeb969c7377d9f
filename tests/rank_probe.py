"""A callback that records, per rank, what each process saw: for proving DDP runs from the outside."""

from __future__ import annotations

import json
import os

from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    """Write ``<default_root_dir>/rank<N>.json`` with the rank's validation batches and its final metrics."""

    def __init__(self) -> None:
        self.val_batches: list[list[int]] = []

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            self.val_batches.append(batch[1][:8].tolist())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "val_batches": self.val_batches,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        with open(os.path.join(trainer.default_root_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)

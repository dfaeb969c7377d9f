"""A callback that records, per rank, what each process saw: for proving DDP runs from the outside."""

from __future__ import annotations

import json
import os

from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    """Write ``<default_root_dir>/rank<N>.json``: the rank's last-epoch validation samples (label and pixel sum of
    each, a fingerprint of the image) and its final metrics."""

    def __init__(self) -> None:
        self.val_samples: list[tuple[int, float]] = []

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            images, labels = batch
            sums = images.flatten(1).double().sum(dim=1)  # (B,)
            self.val_samples += [(int(y), round(float(s), 3)) for y, s in zip(labels, sums, strict=True)]

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "val_samples": self.val_samples,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        with open(os.path.join(trainer.default_root_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)

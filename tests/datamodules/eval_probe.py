"""A callback that records, per rank, which samples a test run scored and its final metrics: for comparing a DDP
run with a single process from the outside."""

from __future__ import annotations

import json
import os

from lightning.pytorch import Callback, LightningModule, Trainer

#: The folder the records go to, set by the test (the run directory of ``recipe`` is chosen by the command).
PROBE_DIR = "EVAL_PROBE_DIR"


class EvalProbe(Callback):
    """Write ``$EVAL_PROBE_DIR/test_rank<N>.json``: each scored sample's label and pixel sum, and the metrics."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx, dataloader_idx=0):
        images, labels = batch
        sums = images.flatten(1).double().sum(dim=1)  # (B,) a fingerprint of each image
        self.samples += [(int(y), round(float(s), 3)) for y, s in zip(labels, sums, strict=True)]

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {
            "world_size": trainer.world_size,
            "samples": self.samples,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        with open(os.path.join(os.environ[PROBE_DIR], f"test_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)

"""Save what ``recipe predict`` returns, which Lightning's CLI would otherwise discard."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Write ``recipe predict`` outputs to ``<run dir>/<filename>`` as one ``torch.save`` file.

    Tensors returned by ``predict_step`` are concatenated along the batch dimension (one file per rank under DDP,
    suffixed with the rank); anything else is saved as the list of per-batch outputs.

    Args:
        filename: File name, written in the trainer's log directory (the run directory without a logger).
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        if not filename or os.sep in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.filename = filename
        self.path: str | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if batches and all(isinstance(b, torch.Tensor) for b in batches):
            batches = torch.cat(batches)  # (N, ...)
        folder = trainer.log_dir or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        name = self.filename if trainer.world_size == 1 else f"rank{trainer.global_rank}-{self.filename}"
        self.path = os.path.join(folder, name)
        torch.save(batches, self.path)

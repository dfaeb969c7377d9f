"""Send a matplotlib figure (and optionally a table) to every logger the trainer has; used by modules and callbacks.

W&B gets an image and a table, TensorBoard an image, and every run also keeps a PNG under the trainer's log
directory so a run with ``--trainer.logger=false`` or a CSV logger still has its pictures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def media_dir(trainer: pl.Trainer) -> str:
    """``<trainer.log_dir>/media``, computed on this rank alone.

    ``trainer.log_dir`` broadcasts from rank zero, so it must be read on every rank; ``log_figure`` runs on rank zero
    only, and reading it there would leave rank zero waiting for the others forever under DDP.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        log_dir = trainer.default_root_dir
    elif isinstance(logger, (TensorBoardLogger, CSVLogger)):
        log_dir = logger.log_dir
    else:
        log_dir = logger.save_dir or trainer.default_root_dir
    return os.path.join(log_dir, "media")


@rank_zero_only
def log_figure(
    trainer: pl.Trainer,
    key: str,
    figure: Any,
    table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
) -> str:
    """Log ``figure`` under ``key`` to every logger and save it as ``<log_dir>/media/<key>.png``.

    Args:
        trainer: The running trainer (its loggers and log directory are used).
        key: Metric-style name such as ``"test/confusion_matrix"``.
        figure: A matplotlib figure; it is closed afterwards.
        table: Optional ``(columns, rows)`` also sent to W&B as a ``wandb.Table``.

    Returns:
        The path of the saved PNG.
    """
    import matplotlib.pyplot as plt

    path = os.path.join(media_dir(trainer), key.replace("/", "_") + ".png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[path], step=step)
            if table is not None:
                columns, rows = table
                logger.log_table(key=key + "_table", columns=list(columns), data=[list(r) for r in rows], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
    plt.close(figure)
    return path

"""Metric collections per stage, and the confusion matrix every classifier reports.

One torchmetrics ``MetricCollection`` per stage with the prefixes ``train/``, ``val/`` and ``test/``: modules log
the collection objects (Lightning computes, syncs across processes and resets them), never ``.compute()`` results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection

from core.media import log_figure


def per_stage(
    evaluation: Mapping[str, Metric], train: Mapping[str, Metric] | None = None
) -> tuple[MetricCollection, MetricCollection, MetricCollection]:
    """``(train, val, test)`` collections: ``evaluation`` for validation and test (cloned), ``train`` for training.

    Training usually tracks a cheaper subset (accuracy, not macro-F1): per-step metric updates cost time on small
    networks. Without ``train`` the training collection is a clone of ``evaluation``.
    """
    val = MetricCollection(dict(evaluation), prefix="val/")
    train_collection = MetricCollection(dict(train), prefix="train/") if train is not None else val.clone("train/")
    return train_collection, val, val.clone(prefix="test/")


def log_confusion_matrix(
    trainer: Any, key: str, matrix: torch.Tensor, class_names: Sequence[str] | None = None
) -> str | None:
    """Log a ``(C, C)`` confusion matrix (rows actual, columns predicted) as an image and an ``actual, predicted,
    count`` table of its non-zero cells, to every logger and as ``<run>/media/<key>.png``; on rank zero only.

    Returns the PNG path on rank zero, ``None`` elsewhere.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    counts = matrix.detach().cpu()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(counts))]
    if len(names) != len(counts):
        raise ValueError(f"{len(names)} class names for a {len(counts)}-class confusion matrix")
    figure, _ = MulticlassConfusionMatrix(len(counts)).plot(counts, labels=names)
    rows = [
        [names[t], names[p], int(counts[t, p])]
        for t in range(len(names))
        for p in range(len(names))
        if counts[t, p] > 0
    ]
    return log_figure(trainer, key, figure, table=(("actual", "predicted", "count"), rows))

"""What a classifier shows of its test run beside the confusion matrix: a table of its first predictions and the
inputs it got wrong, as images, clips, texts or table rows.

A classifier of any domain feeds :class:`ExampleCollector` its test batches (inputs, scores, targets) and calls
:meth:`ExampleCollector.log` when the test epoch ends; :func:`log_misclassified` picks the medium from the inputs
alone, so a new domain whose inputs are images, waveforms, token ids or feature rows gets its media for free:

* ``(N, C, H, W)`` tensors, C 1 or 3: one image grid, each image captioned ``actual → predicted``;
* ``(N, T)`` or ``(N, 1, T)`` floats with a ``sample_rate``: one WAV clip each, captioned likewise;
* ``{"input_ids": (N, T), "attention_mask": (N, T)}`` or ``(N, T)`` integer tensors with a ``decode``, or strings:
  a table of texts;
* ``(N, F)`` floats, or a tuple of such 2-D tensors (numbers, category codes): a table of feature rows.

Collecting stops reading anything from the device once it holds ``limit`` of each, so on an accelerator it costs a
host read on the first few test batches only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from core.media import log_audio, log_images, log_table


def _select(inputs: Any, index: torch.Tensor) -> Any:
    """The examples at ``index`` of a batch's inputs, on the CPU; ``None`` for inputs no medium shows (graphs)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[index.to(inputs.device)].detach().cpu()
    if isinstance(inputs, dict):
        return {k: v[index.to(v.device)].detach().cpu() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(v, torch.Tensor) for v in inputs):
        return tuple(v[index.to(v.device)].detach().cpu() for v in inputs)
    if isinstance(inputs, (list, tuple)) and all(isinstance(v, str) for v in inputs):
        return [inputs[i] for i in index.tolist()]
    return None


def _concat(parts: list[Any]) -> Any:
    """Batches of selected inputs (all of one kind) joined along the first dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(first)))
    return [item for part in parts for item in part]


def _texts(ids: torch.Tensor, mask: torch.Tensor | None, decode: Callable[[list[int]], str] | None) -> list[str]:
    """Each row of token ids (N, T) as text, padding (``mask`` 0) left out; the ids themselves without ``decode``."""
    rows = [row[m.bool()] for row, m in zip(ids, mask, strict=True)] if mask is not None else list(ids)
    return [decode(row.tolist()) if decode is not None else " ".join(map(str, row.tolist())) for row in rows]


@rank_zero_only
def log_misclassified(
    trainer: pl.Trainer,
    key: str,
    inputs: Any,
    predicted: Sequence[int],
    actual: Sequence[int],
    class_names: Sequence[str] | None = None,
    sample_rate: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> str | list[str]:
    """Log wrongly classified inputs under ``key`` in the medium their kind calls for (see the module docstring).

    Args:
        trainer: The running trainer.
        key: Metric-style name such as ``"test/misclassified"``.
        inputs: ``N`` examples: an image, waveform, token-id or feature tensor, a dict of token tensors, a tuple of
            feature tensors, or a list of strings.
        predicted: ``N`` predicted class indices.
        actual: ``N`` true class indices.
        class_names: Names of the classes, in index order; indices when not given.
        sample_rate: Samples per second, which makes a 2-D float tensor waveforms rather than feature rows.
        decode: Token ids to text, for token-id inputs (a DataModule's ``decode``); without it ids are shown.

    Returns:
        The path(s) written under the run's ``media/`` folder (``None`` on other ranks).
    """
    predicted, actual = [int(p) for p in predicted], [int(a) for a in actual]
    if len(predicted) != len(actual) or not predicted:
        raise ValueError(f"predicted and actual need one class per example each, got {len(predicted)}, {len(actual)}")
    name = (lambda i: class_names[i]) if class_names is not None else str
    labels = [[name(a), name(p)] for a, p in zip(actual, predicted, strict=True)]
    if isinstance(inputs, torch.Tensor) and len(inputs) == len(labels):
        captions = [f"{a} → {p}" for a, p in labels]
        if inputs.ndim == 4 and inputs.shape[1] in (1, 3):
            return log_images(trainer, key, inputs, nrow=8, captions=captions)
        if inputs.is_floating_point() and sample_rate is not None and inputs.ndim in (2, 3):
            return log_audio(trainer, key, inputs, sample_rate, captions=captions)
    columns, cells = _as_table(inputs, decode)
    if len(cells) != len(labels):
        raise ValueError(f"inputs hold {len(cells)} examples for {len(labels)} predictions")
    rows = [[*row, *label] for row, label in zip(cells, labels, strict=True)]
    return log_table(trainer, key, [*columns, "actual", "predicted"], rows)


def _as_table(inputs: Any, decode: Callable[[list[int]], str] | None) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of inputs a table shows: texts (token ids or strings) or feature rows."""
    if isinstance(inputs, dict) and "input_ids" in inputs:
        return ["text"], [[t] for t in _texts(inputs["input_ids"], inputs.get("attention_mask"), decode)]
    if isinstance(inputs, list) and all(isinstance(t, str) for t in inputs):
        return ["text"], [[t] for t in inputs]
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 2 and not inputs.is_floating_point():
        return ["text"], [[t] for t in _texts(inputs, None, decode)]
    groups = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    if isinstance(groups, tuple | list) and groups and all(isinstance(g, torch.Tensor) and g.ndim == 2 for g in groups):
        # Feature groups such as (numbers (N, F), category codes (N, K)), one column per feature.
        if len(groups) == 1:
            columns = [f"x{j}" for j in range(groups[0].shape[1])]
        else:  # x<group>_<feature>
            columns = [f"x{i}_{j}" for i, g in enumerate(groups) for j in range(g.shape[1])]
        return columns, torch.cat([g.double() for g in groups], dim=1).tolist()  # (N, sum F)
    shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
    raise ValueError(
        f"cannot show inputs {shape}: give images (N, C, H, W) with C 1 or 3, waveforms (N, T) with a sample_rate, "
        "token ids (N, T) or a dict with input_ids, strings, or feature rows (N, F) (a tuple of them)"
    )


class ExampleCollector:
    """Keep the first ``limit`` test predictions and the first ``limit`` misclassified inputs of this process.

    Args:
        limit: Examples of each kind to keep (the predictions table's rows, the misclassified media); 0 keeps none.
    """

    def __init__(self, limit: int = 16) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 examples, got {limit}")
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        """Forget what was kept (at the start of each test run)."""
        self.predictions: list[list[Any]] = []  # [index, actual, predicted, confidence]
        self._wrong_inputs: list[Any] = []
        self._wrong: list[tuple[int, int]] = []  # (predicted, actual)
        self._showable = True  # False once inputs turn out to be of a kind no medium shows (graphs)
        self._seen = 0

    def update(self, inputs: Any, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``scores`` (B, C) logits or log-probabilities, ``targets`` (B,) class indices, ``inputs``
        the batch's inputs as the model takes them."""
        start, self._seen = self._seen, self._seen + len(targets)
        rows_left = self.limit - len(self.predictions)
        wrong_left = self.limit - len(self._wrong) if self._showable else 0
        if rows_left <= 0 and wrong_left <= 0:
            return
        probs = scores.detach().float().softmax(dim=-1)  # (B, C); log-probabilities give the probabilities back
        confidence, predicted = probs.max(dim=-1)  # (B,), (B,)
        if rows_left > 0:
            picked = [t[:rows_left].tolist() for t in (targets, predicted, confidence)]
            self.predictions += [[start + i, a, p, c] for i, (a, p, c) in enumerate(zip(*picked, strict=True))]
        if wrong_left > 0:
            index = (predicted != targets).nonzero().squeeze(1)[:wrong_left].cpu()  # (n,)
            chosen = _select(inputs, index)
            self._showable = chosen is not None
            if self._showable and len(index):
                self._wrong_inputs.append(chosen)
                self._wrong += list(zip(predicted[index].tolist(), targets[index].tolist(), strict=True))

    def log(
        self,
        trainer: pl.Trainer,
        stage: str,
        class_names: Sequence[str] | None = None,
        sample_rate: int | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        """Log ``<stage>/predictions`` (a table: example index, actual, predicted, confidence) and
        ``<stage>/misclassified`` (:func:`log_misclassified`), then :meth:`reset`."""
        name = (lambda i: class_names[i]) if class_names is not None else str
        if self.predictions:
            rows = [[i, name(a), name(p), round(c, 4)] for i, a, p, c in self.predictions]
            log_table(trainer, f"{stage}/predictions", ["index", "actual", "predicted", "confidence"], rows)
        if self._wrong:
            predicted, actual = zip(*self._wrong, strict=True)
            inputs = _concat(self._wrong_inputs)
            log_misclassified(
                trainer, f"{stage}/misclassified", inputs, predicted, actual, class_names, sample_rate, decode
            )
        self.reset()

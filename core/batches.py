"""The one rule by which shared code (callbacks, media, the task layer) finds a batch's inputs and targets.

``split_batch(batch, module)`` returns ``(inputs, targets)``, where ``inputs`` is what the module's ``forward``
takes as its single argument and ``targets`` is ``None`` when the batch holds none:

* a module that defines ``split_batch(batch)`` decides for itself: this is the one place to override the rule;
* a tuple or list: inputs at index 0, targets at index 1 (``(x, y)``, ``(x,)``);
* a mapping: targets under the first of ``target``, ``targets``, ``labels``, ``label``, ``y`` that is present;
  inputs under ``input`` (or ``inputs``, ``x``) when present, otherwise the mapping without the target key, so a
  tokenizer's ``input_ids`` + ``attention_mask`` + ``labels`` gives ``({"input_ids", "attention_mask"}, labels)``;
* a torch-geometric ``Data`` / ``Batch``: the graph itself as inputs and its ``y`` as targets;
* anything else (a tensor, an RL batch object): the inputs alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

TARGET_KEYS = ("target", "targets", "labels", "label", "y")
INPUT_KEYS = ("input", "inputs", "x")


def _is_graph(batch: Any) -> bool:
    # A PyG object exists only once torch_geometric is imported, so this module never imports it (slow, and not
    # needed by most domains). PyG's Batch classes are made at run time, so the check is isinstance, not a name.
    pyg = sys.modules.get("torch_geometric.data.data")
    return pyg is not None and isinstance(batch, pyg.BaseData)


def default_split(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of ``batch`` by the rule in this module's docstring, ignoring any module override."""
    if isinstance(batch, Mapping):
        target_key = next((k for k in TARGET_KEYS if k in batch), None)
        targets = batch[target_key] if target_key is not None else None
        input_key = next((k for k in INPUT_KEYS if k in batch and k != target_key), None)
        if input_key is not None:
            return batch[input_key], targets
        return {k: v for k, v in batch.items() if k != target_key}, targets
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    if _is_graph(batch):
        return batch, getattr(batch, "y", None)
    return batch, None


def split_batch(batch: Any, module: Any = None) -> tuple[Any, Any]:
    """``(inputs, targets)`` of ``batch``: ``module.split_batch(batch)`` when the module defines it, else the rule."""
    custom = getattr(module, "split_batch", None) if module is not None else None
    if callable(custom):
        return custom(batch)
    return default_split(batch)

"""How callbacks find a batch's inputs and targets without knowing the LightningModule that consumes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities.exceptions import MisconfigurationException


def split_batch(batch: Any, input_key: str, target_key: str | None, owner: str) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; targets are ``None`` when the batch has none (predict).

    A tuple or list holds inputs at index 0 and targets at index 1; a mapping holds them under ``input_key`` and
    ``target_key``; anything else is the inputs alone. ``owner`` names the callback in the error message.
    """
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise MisconfigurationException(
                f"{owner} looks for inputs under input_key={input_key!r}, but the batch has keys {sorted(batch)}. "
                "Set input_key (and target_key) to the batch's keys."
            )
        return batch[input_key], batch.get(target_key) if target_key is not None else None
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None

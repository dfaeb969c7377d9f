"""Load any of our modules from a checkpoint path alone: the class comes from the checkpoint.

Checkpoints written under LightningCLI name their class in ``hyper_parameters["_class_path"]``; Lightning rebuilds it
only once the class's module is imported (it refuses to import code a checkpoint names, to stop arbitrary code
running). :func:`load_module` imports that module first, which is what a user who passes a checkpoint path to a
teacher or an export means to trust.
"""

from __future__ import annotations

import importlib
import os

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule


def checkpoint_class(path: str) -> type[LightningModule]:
    """The LightningModule class a checkpoint was written by; one clear error when it cannot be known."""
    if not os.path.isfile(path):
        raise MisconfigurationException(
            f"no checkpoint file at '{path}'. Give the path of a .ckpt file (a run's checkpoints/ folder holds them)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001  (torch raises several types for a file that is not a checkpoint)
        raise MisconfigurationException(f"'{path}' is not a readable PyTorch checkpoint ({err}).") from None
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path") if isinstance(checkpoint, dict) else None
    if not class_path:
        raise MisconfigurationException(
            f"'{path}' does not name its LightningModule class (it was not written by `recipe fit`). Load it with "
            "YourModule.load_from_checkpoint(path) instead."
        )
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise MisconfigurationException(
            f"the checkpoint '{path}' was written by {class_path}, which cannot be imported here. Install or put on "
            "the path the package that defines it."
        ) from None
    return cls


def load_module(path: str, map_location: str | torch.device = "cpu") -> LightningModule:
    """The module saved at ``path``, rebuilt from its own hyperparameters, in eval mode."""
    return checkpoint_class(path).load_from_checkpoint(path, map_location=map_location).eval()

"""Layer-wise learning-rate decay for fine-tuning a pretrained transformer (Clark et al. 2020, ELECTRA,
https://arxiv.org/abs/2003.10555; Bao et al. 2022, BEiT).

Layer ``l`` of ``L`` transformer blocks (the embeddings are layer 0, the head and pooler layer ``L + 1``) trains at
``lr * decay ** (L + 1 - l)``: the head at the full rate, each block below at ``decay`` times the rate above, so the
general features near the input move least. Blocks are found by their parameter names, the way every Hugging Face
encoder and decoder numbers them (``encoder.layer.3.``, ``transformer.layer.3.``, ``transformer.h.3.``).
Weight decay still falls on matrices only (:func:`core.optim.parameter_groups`' rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from core import optim

#: A numbered block in a parameter name: ``.layer.3.``, ``.layers.3.``, ``.h.3.``, ``.block.3.``, ``.blocks.3.``.
BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDING = re.compile(r"embed|wte|wpe")


def layer_ids(module: nn.Module) -> tuple[dict[str, int], int]:
    """``({parameter name: layer}, L)``: embeddings 0, block ``i`` ``i + 1``, anything else (head) ``L + 1``."""
    names = [name for name, _ in module.named_parameters()]
    blocks = {name: int(m.group(1)) + 1 for name in names if (m := BLOCK.search(name))}
    num_blocks = max(blocks.values(), default=0)
    ids = {}
    for name in names:
        ids[name] = blocks.get(name, 0 if EMBEDDING.search(name) else num_blocks + 1)
    return ids, num_blocks


def parameter_groups(module: nn.Module, decay: float) -> list[dict[str, Any]]:
    """Groups of trainable parameters by layer and by weight decay, each with its ``lr_scale``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    ids, num_blocks = layer_ids(module)
    exempt = set(map(id, optim.exempt_from_decay(module)))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim >= 2 and id(parameter) not in exempt
        layer = ids[name]
        group = groups.setdefault(
            (layer, decays), {"params": [], "lr_scale": decay ** (num_blocks + 1 - layer), "layer": layer}
        )
        if not decays:
            group["weight_decay"] = 0.0
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def configure(
    module: nn.Module,
    optimizer: Callable,
    lr_scheduler: Callable | None,
    trainer: Any,
    interval: Literal["step", "epoch"],
    decay: float,
) -> dict[str, Any]:
    """:func:`core.optim.configure` with each group's rate scaled by its layer's ``decay ** depth``."""
    built = optimizer(parameter_groups(module, decay))
    for group in built.param_groups:
        group["lr"] *= group["lr_scale"]  # before the scheduler, which takes these rates as its base rates
    if lr_scheduler is None:
        return {"optimizer": built}
    scheduler = optim.build_scheduler(lr_scheduler, built, trainer)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

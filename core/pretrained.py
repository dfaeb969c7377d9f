"""Pretrained weights are fetched once, when a run starts from them; a checkpoint already holds them.

A network injected by ``class_path`` with ``weights: IMAGENET1K_V1`` (torchvision), ``weights_backbone`` or
``pretrained: true`` (timm) downloads those weights whenever it is built, which ``load_from_checkpoint`` and
``recipe test|predict --ckpt_path`` do before loading the checkpoint's state over them. Dropping the argument for such
rebuilds gives the same network with the checkpoint's weights and no network access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Constructor arguments that make a network fetch pretrained weights when it is built.
PRETRAINED_ARGS = ("weights", "weights_backbone", "pretrained")


def _off(value: Any) -> Any:
    return False if isinstance(value, bool) else None  # timm's ``pretrained`` is a bool, torchvision's ``weights`` not


def without_pretrained(config: Any) -> Any:
    """A copy of ``config`` (hyperparameters: nested dicts and lists) in which every class config
    (``{"class_path": ..., "init_args": {...}}``) has its pretrained-weights arguments turned off."""
    if isinstance(config, Mapping):
        copied = {key: without_pretrained(value) for key, value in config.items()}
        init_args = copied.get("init_args")
        if "class_path" in copied and isinstance(init_args, dict):
            for name in PRETRAINED_ARGS:
                if init_args.get(name):
                    init_args[name] = _off(init_args[name])
        return copied if isinstance(config, dict) else type(config)(copied)
    if isinstance(config, (list, tuple)):
        return type(config)(without_pretrained(value) for value in config)
    return config


def pretrained_keys(model_items: Mapping[str, Any]) -> list[str]:
    """Of a parsed model config's dotted keys (``init_args.net.init_args.weights``), those that turn on pretrained
    weights of a network given by config inside it (the model's own arguments are not networks' and stay)."""
    return [
        key
        for key, value in model_items.items()
        if key.rsplit(".", 1)[-1] in PRETRAINED_ARGS and key.split(".").count("init_args") >= 2 and value
    ]


def turned_off(value: Any) -> Any:
    """What a pretrained-weights argument becomes when the weights come from a checkpoint."""
    return _off(value)

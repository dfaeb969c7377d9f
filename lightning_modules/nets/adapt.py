"""Fit any classification network to a dataset's channel and class counts.

Recipes inject networks by ``class_path`` (ours or torchvision's) without repeating data-dependent sizes, so
the LightningModule adapts the network once it knows them: the classifier head is replaced when its output
size differs (the usual transfer-learning move), and the first convolution is rebuilt when the input
channels differ. Pretrained stem weights are kept the way timm's ``adapt_input_conv`` keeps them: summed
over RGB for a grayscale input, tiled for more channels.
"""

from __future__ import annotations

import torch
from torch import nn


def _find_last(net: nn.Module, kind: type[nn.Module]) -> tuple[nn.Module, str] | None:
    found = None
    for module in net.modules():
        for child_name, child in module.named_children():
            if isinstance(child, kind):
                found = (module, child_name)
    return found


def _find_first(net: nn.Module, kind: type[nn.Module]) -> tuple[nn.Module, str] | None:
    for module in net.modules():
        for child_name, child in module.named_children():
            if isinstance(child, kind):
                return module, child_name
    return None


def _adapt_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        weight = conv.weight  # (C_out, C_in_old, kH, kW)
        if in_channels == 1:
            new.weight.copy_(weight.sum(dim=1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
            new.weight.copy_(tiled * weight.shape[1] / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def adapt_classifier(net: nn.Module, num_classes: int, in_channels: int) -> nn.Module:
    """Replace ``net``'s last ``nn.Linear`` and first ``nn.Conv2d`` where their sizes do not match.

    Raises:
        ValueError: ``net`` has no linear classifier or no 2D convolution to adapt.
    """
    head = _find_last(net, nn.Linear)
    if head is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier head to size for {num_classes} classes")
    parent, name = head
    linear: nn.Linear = getattr(parent, name)
    if linear.out_features != num_classes:
        setattr(parent, name, nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None))

    stem = _find_first(net, nn.Conv2d)
    if stem is None:
        raise ValueError(f"{type(net).__name__} has no nn.Conv2d stem to take {in_channels}-channel images")
    parent, name = stem
    conv: nn.Conv2d = getattr(parent, name)
    if conv.in_channels != in_channels:
        if conv.groups != 1:
            raise ValueError(
                f"cannot adapt the grouped stem convolution of {type(net).__name__} to {in_channels} channels"
            )
        setattr(parent, name, _adapt_conv(conv, in_channels))
    return net

"""Plain networks: output shapes on tiny inputs, parameter counts, and fitting a network to the data's sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from lightning_modules.nets import CompactResNet, ConvNet, adapt_classifier

SIDES = [8, 28, 32]
CHANNELS = [1, 3]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_compact_resnet_output_shape(channels, side):
    net = CompactResNet(in_channels=channels, num_classes=7, widths=(8, 16, 32), stem_width=8)
    x = torch.randn(2, channels, side, side)
    assert net(x).shape == (2, 7)
    assert net.forward_features(x).shape == (2, net.num_features) and net.num_features == 32


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_convnet_output_shape(channels, side):
    net = ConvNet(in_channels=channels, num_classes=7, widths=(8, 16))
    x = torch.randn(2, channels, side, side)
    assert net(x).shape == (2, 7)
    assert net.forward_features(x).shape == (2, 16)


def test_convnet_parameter_count():
    # conv 1->32 (3x3, no bias) + BN(32) + conv 32->64 (3x3, no bias) + BN(64) + linear 64->10
    expected = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 10 + 10
    assert expected == 19_562
    net = ConvNet(in_channels=1, num_classes=10, widths=(32, 64))
    assert sum(p.numel() for p in net.parameters()) == expected


def test_compact_resnet_head_scale_scales_the_logits():
    torch.manual_seed(0)
    net = CompactResNet(in_channels=1, num_classes=4, widths=(8,), stem_width=4).eval()
    x = torch.randn(3, 1, 8, 8)
    full = net(x)
    net.head_scale = 0.125
    assert torch.allclose(net(x), full * 0.125)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"num_classes": 1}, {"widths": ()}])
def test_networks_reject_impossible_sizes(kwargs):
    with pytest.raises(ValueError):
        CompactResNet(**kwargs)
    with pytest.raises(ValueError):
        ConvNet(**kwargs)


def test_adapt_replaces_the_head_when_the_class_count_differs():
    net = ConvNet(in_channels=1, num_classes=10, widths=(8, 16))
    old = net.fc
    assert adapt_classifier(net, num_classes=5, in_channels=1) is net
    assert net.fc is not old and (net.fc.in_features, net.fc.out_features) == (16, 5)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_adapt_keeps_matching_layers():
    net = resnet18(weights=None)
    head, stem = net.fc, net.conv1
    adapt_classifier(net, num_classes=1000, in_channels=3)
    assert net.fc is head and net.conv1 is stem


def test_adapt_sums_the_stem_over_rgb_for_grayscale():
    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=10)
    old = net.conv1
    adapt_classifier(net, num_classes=4, in_channels=1)
    new = net.conv1
    assert new.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(new.weight, old.weight.sum(dim=1, keepdim=True))
    assert (new.stride, new.padding, new.bias) == (old.stride, old.padding, None)
    # So a grayscale image sees the stem that its grey RGB copy saw before.
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(new(gray), old(gray.expand(-1, 3, -1, -1)), atol=1e-5)
    assert net.eval()(gray).shape == (2, 4)


def test_adapt_tiles_the_stem_for_more_channels():
    net = resnet18(weights=None)
    old = net.conv1.weight.detach().clone()
    adapt_classifier(net, num_classes=1000, in_channels=4)
    new = net.conv1.weight
    assert new.shape == (64, 4, 7, 7)
    assert torch.allclose(new[:, :3], old * 3 / 4) and torch.allclose(new[:, 3], old[:, 0] * 3 / 4)
    assert net.eval()(torch.rand(1, 4, 32, 32)).shape == (1, 1000)


def test_adapt_needs_a_linear_head_and_a_conv_stem():
    with pytest.raises(ValueError, match="nn.Linear"):
        adapt_classifier(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()), num_classes=2, in_channels=3)
    with pytest.raises(ValueError, match="nn.Conv2d"):
        adapt_classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), num_classes=2, in_channels=1)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="grouped"):
        adapt_classifier(grouped, num_classes=2, in_channels=3)


def test_convnet_refuses_images_too_small_for_its_stages():
    net = ConvNet(in_channels=1, widths=(8, 8, 8, 8, 8))  # five halvings need 32x32
    with pytest.raises(ValueError, match="needs at least 32x32 pixels"):
        net(torch.zeros(1, 1, 28, 28))
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 10)

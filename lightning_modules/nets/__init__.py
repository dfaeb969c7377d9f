"""Plain ``nn.Module`` networks: no Lightning, no data code."""

from lightning_modules.nets.adapt import adapt_classifier
from lightning_modules.nets.convnet import ConvNet
from lightning_modules.nets.resnet import CompactResNet

__all__ = ["CompactResNet", "ConvNet", "adapt_classifier"]

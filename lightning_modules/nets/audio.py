"""Audio networks that read the raw waveform.

A network tells :class:`lightning_modules.audio.AudioClassifier` what it reads through a class attribute
``input_kind``: ``"waveform"`` (``(B, 1, num_samples)``, the module skips its log-mel front end) or, when absent,
``"spectrogram"`` (``(B, 1, n_mels, frames)``, any 2-D image network such as
:class:`lightning_modules.nets.ConvNet` or a torchvision ResNet). Networks here follow timm's interface:
``forward_features`` up to the pooled features, and ``reset_classifier(num_classes)`` to replace the head, which the
module calls when the data's class count differs from the network's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn


class M5(nn.Module):
    """M5, the five-layer raw-waveform CNN of Dai et al. 2017, "Very Deep Convolutional Neural Networks for Raw
    Waveforms" (https://arxiv.org/abs/1610.00087).

    A wide first convolution (kernel 80, stride ``stride``) acts as a learned filter bank; three 3-tap convolutions
    follow, each stage with batch norm, ReLU and 4x max-pooling, then a global average over time and a linear head:

    .. math::
        h_0 = \\mathrm{pool}_4(\\mathrm{ReLU}(\\mathrm{BN}(W_{80} *_s x))), \\quad
        h_k = \\mathrm{pool}_4(\\mathrm{ReLU}(\\mathrm{BN}(W_3 * h_{k-1}))), \\quad
        y = A \\, \\mathrm{mean}_t(h_3) + b

    The paper uses widths (128, 128, 256, 512) and stride 4 at 8 kHz; the defaults here are the torchaudio
    tutorial's lighter (32, 32, 64, 64) with stride 16, which trains on CPU in minutes.

    Args:
        num_classes: Size of the classification head.
        width: Channels of the first two stages; the last two have twice as many.
        stride: Stride of the first convolution, in samples.
        dropout: Dropout before the head.

    Shapes:
        input ``(B, 1, num_samples)`` with at least :meth:`min_samples` ``= 80 + 255 * stride`` samples (every
        pool must leave one step: 4,160 at the default stride, half a second at 8 kHz), output ``(B, num_classes)``.
    """

    input_kind: ClassVar[Literal["waveform"]] = "waveform"

    def __init__(self, num_classes: int = 10, width: int = 32, stride: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or stride < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"M5 needs num_classes >= 2, width >= 1, stride >= 1 and dropout in [0, 1), got {num_classes}, "
                f"{width}, {stride}, {dropout}"
            )
        widths = (width, width, 2 * width, 2 * width)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(widths):
            conv = nn.Conv1d(c_in, c_out, 80, stride=stride) if i == 0 else nn.Conv1d(c_in, c_out, 3, padding=1)
            layers += [conv, nn.BatchNorm1d(c_out), nn.ReLU(inplace=True), nn.MaxPool1d(4)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.num_features = c_in
        self.num_classes = num_classes
        self.fc = nn.Linear(c_in, num_classes)
        self.stride = stride

    def min_samples(self) -> int:
        """The shortest input every stage leaves at least one time step of."""
        steps = 4**4  # four 4x pools after the first convolution
        return 80 + self.stride * (steps - 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"M5 takes waveforms (B, 1, num_samples), got {tuple(x.shape)}")
        if x.shape[-1] < self.min_samples():
            raise ValueError(
                f"M5 with stride {self.stride} needs clips of at least {self.min_samples()} samples, got "
                f"{x.shape[-1]}; use longer clips or a smaller stride"
            )
        return self.features(x).mean(dim=-1)  # (B, C): the average over time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))  # (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

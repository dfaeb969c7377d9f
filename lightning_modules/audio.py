"""Audio classification: waveforms in, class logits out, with the log-mel front end inside the model.

Techniques: log-mel spectrograms (``torchaudio.transforms.MelSpectrogram`` and ``AmplitudeToDB``), SpecAugment's
frequency and time masks (Park et al. 2019, https://arxiv.org/abs/1904.08779) in training only, and either a 2-D CNN
on the spectrogram or the raw-waveform M5 (Dai et al. 2017, https://arxiv.org/abs/1610.00087). What is not about
audio (the step, metrics, media, optimizer, errors) lives in :class:`lightning_modules.classifier.Classifier`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchaudio
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.classifier import Classifier
from lightning_modules.distillation import Distillation
from lightning_modules.nets import ConvNet, adapt_classifier

#: Stage widths of the default spectrogram network (see ``net``).
DEFAULT_WIDTHS = (32, 64, 128)
INPUT_KINDS = ("spectrogram", "waveform")


class SpecAugment(nn.Module):
    """Frequency and time masks on ``(B, 1, n_mels, frames)`` spectrograms in training mode; the identity in
    evaluation mode, as dropout is. Each example draws its own masks (``iid_masks``).

    Args:
        freq_mask: Widest frequency mask, in mel bins (SpecAugment's ``F``); 0 turns them off.
        time_mask: Widest time mask, in frames (SpecAugment's ``T``); 0 turns them off.
        masks: Masks of each kind per example.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, masks: int = 2) -> None:
        super().__init__()
        if freq_mask < 0 or time_mask < 0 or masks < 1:
            raise ValueError(
                f"freq_mask and time_mask must be >= 0 and masks >= 1, got {freq_mask}, {time_mask}, {masks}"
            )
        steps: list[nn.Module] = []
        if freq_mask:
            steps += [torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True) for _ in range(masks)]
        if time_mask:
            steps += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True) for _ in range(masks)]
        self.steps = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Masks fill with 0, the mean of the standardised spectrogram, so a masked band carries no information.
        return self.steps(x) if self.training else x


class AudioClassifier(Classifier):
    """Classify fixed-length clips from their waveforms with an injected network.

    Args:
        net: The network. One reading spectrograms ``(B, 1, n_mels, frames) -> (B, num_classes)`` (any 2-D image
            network; its head is resized to ``num_classes``) or, when its class declares ``input_kind =
            "waveform"`` (:class:`lightning_modules.nets.audio.M5`), waveforms ``(B, 1, num_samples)``, for which
            the mel front end is skipped. Default: ``ConvNet`` with widths ``(32, 64, 128)`` and two convolutions per
            stage on the log-mel spectrogram.
        num_classes: Number of classes; filled from the DataModule by the ``recipe`` command.
        sample_rate: Samples per second of the clips; filled from the DataModule.
        num_samples: Samples of one clip; filled from the DataModule, used for the model summary's example input.
        n_mels: Mel bands of the spectrogram.
        window_ms: STFT window length in milliseconds; the FFT size is the next power of two.
        hop_ms: Hop between STFT frames in milliseconds.
        freq_mask: SpecAugment's widest frequency mask in mel bins during training; 0 turns it off.
        time_mask: SpecAugment's widest time mask in frames during training; 0 turns it off.
        masks: SpecAugment masks of each kind per clip.
        optimizer: Optimizer factory; biases and norm parameters get no weight decay.
        lr_scheduler: Optional scheduler factory. A ``total_steps`` left unset (one-cycle) is filled from the trainer.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        label_smoothing: Label smoothing of the cross-entropy, in ``[0, 1)``.
        focal_gamma: Focal loss's exponent for the training loss (2 is usual); 0 keeps cross-entropy.
        class_weighted: Weight the training loss by the DataModule's ``class_weights``, for imbalanced classes.
        distillation: Learn from a teacher checkpoint too (``teacher``, ``temperature``, ``alpha``); see
            :class:`lightning_modules.distillation.Distillation`.
        class_names: Names for the confusion matrix axes; indices are used when not given.

    ``forward`` takes waveforms ``(B, num_samples)`` or ``(B, 1, num_samples)`` as the DataModule yields them and does
    the rest on the model's device: log-mel spectrogram in decibels, then per-clip standardisation (zero mean, unit
    variance over the whole spectrogram, or over the waveform for a waveform network), which makes the model
    indifferent to a recording's loudness. The standardisation is computed from each input alone, so a reloaded
    checkpoint, ``recipe predict`` and a user calling the model on raw waveforms all see what training saw.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        num_classes: int = 10,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        n_mels: int = 64,
        window_ms: float = 25.0,
        hop_ms: float = 10.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        masks: int = 2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        class_weighted: bool = False,
        distillation: Distillation | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_names=class_names,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            class_weighted=class_weighted,
            distillation=distillation,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
        )
        if sample_rate <= 0 or num_samples <= 0:
            raise ValueError(f"sample_rate and num_samples must be positive, got {sample_rate} and {num_samples}")
        if n_mels < 1 or window_ms <= 0 or hop_ms <= 0:
            raise ValueError(f"n_mels must be >= 1 and window_ms, hop_ms > 0, got {n_mels}, {window_ms}, {hop_ms}")
        self.sample_rate = sample_rate  # of the misclassified test clips the Classifier logs
        net = net if net is not None else ConvNet(1, num_classes, widths=DEFAULT_WIDTHS, convs_per_stage=2)
        self.input_kind = getattr(net, "input_kind", "spectrogram")
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"{type(net).__name__}.input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.input_kind == "waveform" and (freq_mask or time_mask):
            raise ValueError(f"SpecAugment masks act on spectrograms; {type(net).__name__} reads waveforms")
        self.net = _sized(net, num_classes)
        self.front_end = None
        if self.input_kind == "spectrogram":
            win_length = max(1, round(sample_rate * window_ms / 1000))
            n_fft = 2 ** math.ceil(math.log2(win_length))
            if n_mels > n_fft // 2 + 1:
                raise ValueError(
                    f"n_mels={n_mels} exceeds the {n_fft // 2 + 1} frequency bins of a {window_ms} ms window"
                )
            # Submodules, so their window and filter bank are buffers: in the checkpoint and on the model's device.
            self.front_end = nn.Sequential(
                torchaudio.transforms.MelSpectrogram(
                    sample_rate,
                    n_fft=n_fft,
                    win_length=win_length,
                    hop_length=max(1, round(sample_rate * hop_ms / 1000)),
                    n_mels=n_mels,
                ),
                torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0),
            )
        self.spec_augment = SpecAugment(freq_mask, time_mask, masks)
        self.example_input_array = torch.zeros(2, num_samples)

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """What the network reads: standardised log-mel spectrograms ``(B, 1, n_mels, frames)`` (masked in training)
        or standardised waveforms ``(B, 1, num_samples)``."""
        x = waveforms.float()
        if x.ndim == 2:
            x = x.unsqueeze(1)  # (B, 1, num_samples)
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"AudioClassifier takes mono waveforms (B, num_samples), got {tuple(waveforms.shape)}")
        if self.front_end is not None:
            x = self.front_end(x)  # (B, 1, n_mels, frames) in dB
        dims = tuple(range(1, x.ndim))
        x = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-5)
        return self.spec_augment(x) if self.front_end is not None else x

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(waveforms))  # (B, num_classes)


def _sized(net: nn.Module, num_classes: int) -> nn.Module:
    """``net`` with a head of ``num_classes`` outputs: through its ``reset_classifier`` where it has one (timm's
    interface), else by replacing its last ``nn.Linear`` (a 2-D image network reading 1-channel spectrograms)."""
    if hasattr(net, "reset_classifier"):
        if getattr(net, "num_classes", None) != num_classes:
            net.reset_classifier(num_classes)
        return net
    return adapt_classifier(net, num_classes=num_classes, in_channels=1)

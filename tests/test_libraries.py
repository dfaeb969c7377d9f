"""The pinned torch / torchvision / torchaudio builds load together and their compiled ops compute correct answers.

torchaudio 2.11 is built against torch 2.11 (see pyproject.toml); a mismatched torch would fail here, when an op
runs, rather than halfway through a recipe.
"""

from __future__ import annotations

import math

import torch
import torchaudio
import torchvision


def test_torchvision_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],  # IoU 81/119 = 0.68 with box 0
            [20.0, 20.0, 30.0, 30.0],  # far away
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with box 0
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert torchvision.ops.nms(boxes, scores, iou_threshold=0.5).tolist() == [3, 2]
    assert torchvision.ops.nms(boxes, scores, iou_threshold=0.95).tolist() == [3, 0, 1, 2]


def _peak_hz(signal: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(signal).abs()
    return torch.argmax(spectrum).item() * sample_rate / len(signal)


def test_torchaudio_resample_keeps_a_tone_at_its_frequency():
    t = torch.arange(16_000) / 16_000  # one second
    tone = torch.sin(2 * math.pi * 440 * t) + 0.5 * torch.sin(2 * math.pi * 6_000 * t)
    resampled = torchaudio.transforms.Resample(16_000, 8_000)(tone)
    assert resampled.shape == (8_000,)
    assert _peak_hz(resampled, 8_000) == 440.0
    # 6 kHz lies above the new Nyquist frequency (4 kHz): the anti-aliasing filter removes it instead of folding
    # it down to 2 kHz.
    spectrum = torch.fft.rfft(resampled).abs()
    assert spectrum[2_000] < 0.01 * spectrum[440]


def test_torchaudio_mel_spectrogram_peaks_in_the_band_of_the_tone():
    sample_rate, n_fft, n_mels = 16_000, 512, 64
    t = torch.arange(sample_rate) / sample_rate
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, n_mels=n_mels)
    fbanks = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)
    centres = fbanks.argmax(dim=0) * sample_rate / n_fft  # (n_mels,) centre frequency of each band in Hz
    peaks = []
    for freq in (300, 3_000):
        power = mel(torch.sin(2 * math.pi * freq * t))  # (n_mels, frames)
        peak = power.mean(dim=-1).argmax().item()
        assert abs(peak - (centres - freq).abs().argmin().item()) <= 1
        peaks.append(peak)
    assert peaks[0] < peaks[1]


def test_torchaudio_amplitude_to_db():
    power = torch.tensor([1.0, 10.0, 100.0])
    db = torchaudio.functional.amplitude_to_DB(power, multiplier=10.0, amin=1e-10, db_multiplier=0.0)
    assert torch.allclose(db, torch.tensor([0.0, 10.0, 20.0]))

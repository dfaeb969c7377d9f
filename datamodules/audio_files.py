"""Reading audio files into fixed-length mono clips at one sample rate: the pieces under :mod:`datamodules.audio`.

torchaudio 2.9 removed its own file I/O (``torchaudio.load`` now needs torchcodec), so files are decoded with
``soundfile`` (libsndfile: WAV, FLAC, OGG) and resampled with torchaudio's windowed-sinc ``Resample``. Every failure
names the file: a file that does not decode, one without samples, one whose declared rate cannot be resampled.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import Dataset

#: File endings read as audio (what libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Decode ``path`` to a mono float32 waveform ``(samples,)`` at ``sample_rate`` (channels averaged)."""
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (frames, channels)
    except (RuntimeError, OSError, ValueError, TypeError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise MisconfigurationException(f"cannot read audio {path} ({err}). Remove or replace the file.") from None
    if data.shape[0] == 0:
        raise MisconfigurationException(f"audio file {path} holds no samples. Remove or replace the file.")
    if rate <= 0:
        raise MisconfigurationException(
            f"audio file {path} declares a sample rate of {rate} Hz, which cannot be resampled to {sample_rate} Hz. "
            "Remove or replace the file."
        )
    wave = torch.from_numpy(data).mean(dim=1)  # (frames,): mono
    return _resampler(rate, sample_rate)(wave) if rate != sample_rate else wave


@functools.lru_cache(maxsize=16)
def _resampler(rate: int, sample_rate: int) -> torchaudio.transforms.Resample:
    # torchaudio.functional.resample with its windowed-sinc kernel built once per pair of rates: building it is
    # ten times the cost of applying it to a one-second clip.
    return torchaudio.transforms.Resample(rate, sample_rate)


def fix_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Centre ``wave`` (samples,) in ``num_samples``: longer clips lose both ends, shorter ones get zeros both sides."""
    excess = wave.shape[-1] - num_samples
    if excess >= 0:
        return wave[excess // 2 : excess // 2 + num_samples]
    return F.pad(wave, (-excess // 2, -excess - (-excess // 2)))


def read_clip(path: str, sample_rate: int, num_samples: int) -> torch.Tensor:
    """``path`` as a mono clip of ``num_samples`` samples at ``sample_rate``."""
    return fix_length(load_audio(path, sample_rate), num_samples)


def audio_files(root: str) -> list[str]:
    """Paths of the audio files directly in ``root``, sorted."""
    return sorted(e.path for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(AUDIO_EXTENSIONS))


def class_folders(root: str) -> tuple[str, ...]:
    """The class names under ``root``: its subfolder names, sorted."""
    return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))


def decode(paths: Sequence[str], sample_rate: int, num_samples: int) -> torch.Tensor:
    """Every file read once into one float32 tensor ``(N, num_samples)``."""
    clips = torch.empty(len(paths), num_samples)
    for i, path in enumerate(paths):
        clips[i] = read_clip(path, sample_rate, num_samples)
    return clips


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each clip of ``x`` (B, N) by its own random offset in ``[-max_shift, max_shift]`` samples, zero-filled."""
    b, n = x.shape
    padded = F.pad(x, (max_shift, max_shift))  # (B, N + 2 * max_shift)
    start = torch.randint(0, 2 * max_shift + 1, (b, 1), device=x.device)
    return padded.gather(1, start + torch.arange(n, device=x.device))  # (B, N)


class AudioFiles(Dataset):
    """Labelled audio files decoded when asked for, as ``(clip (num_samples,), label)``: for datasets too large to
    hold in memory, read by DataLoader workers."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], sample_rate: int, num_samples: int) -> None:
        self.paths, self.labels = list(paths), torch.as_tensor(labels, dtype=torch.long)
        self.sample_rate, self.num_samples = sample_rate, num_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return read_clip(self.paths[index], self.sample_rate, self.num_samples), self.labels[index]

"""Tiny audio datasets in each recipe's on-disk layout: WAV tones whose pitch encodes the class, so a network can
learn them and a test can tell a working pipeline from one that scrambles labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile

FSDD_SPEAKERS = ("alice", "bob")
FSDD_INDICES = 7  # indices 0-4 are the standard test set, 5-6 train
FOLDER_CLASSES = ("high", "low", "mid")
WORDS = ("down", "no", "up", "yes")


def tone(frequency: float, sample_rate: int, seconds: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A sine of ``frequency`` Hz with a little noise, float32 ``(frames,)`` or ``(frames, channels)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi)) + 0.02 * rng.standard_normal(len(t))
    wave = wave.astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def write_fsdd(root: str | os.PathLike, speakers=FSDD_SPEAKERS, indices: int = FSDD_INDICES) -> Path:
    """``root/recordings/{digit}_{speaker}_{index}.wav`` at 8 kHz, digit ``d`` a tone of ``300 + 150 d`` Hz."""
    folder = Path(root) / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        for s, speaker in enumerate(speakers):
            for index in range(indices):
                seconds = 0.3 + 0.05 * ((index + s) % 4)  # lengths differ, as real recordings do
                wave = tone(300 + 150 * digit, 8000, seconds, seed=digit * 100 + s * 10 + index)
                soundfile.write(folder / f"{digit}_{speaker}_{index}.wav", wave, 8000)
    return Path(root)


def write_audio_folder(
    root: str | os.PathLike,
    classes=FOLDER_CLASSES,
    per_class: int = 6,
    sample_rate: int = 22050,
    channels: int = 2,
    splits=("train", "test"),
) -> Path:
    """``root/<split>/<class>/<i>.wav`` tones (stereo at 22.05 kHz by default, to exercise mixing and resampling)."""
    pitch = {"low": 250.0, "mid": 700.0, "high": 1800.0}
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                wave = tone(
                    pitch.get(name, 200.0 * (c + 1)), sample_rate, 0.4, seed=s * 1000 + c * 100 + i, channels=channels
                )
                soundfile.write(folder / f"{i}.wav", wave, sample_rate)
    return Path(root)


def write_speech_commands(root: str | os.PathLike, words=WORDS, per_word: int = 4) -> Path:
    """torchaudio's layout ``root/SpeechCommands/speech_commands_v0.02/<word>/*.wav`` at 16 kHz with the two list files
    (each word's first clip validates, its second tests) and a ``_background_noise_`` folder that must be ignored."""
    base = Path(root) / "SpeechCommands" / "speech_commands_v0.02"
    val, test = [], []
    for w, word in enumerate(words):
        (base / word).mkdir(parents=True, exist_ok=True)
        for i in range(per_word):
            name = f"{i:08x}_nohash_0.wav"
            soundfile.write(base / word / name, tone(400 + 300 * w, 16000, 0.5, seed=w * 10 + i), 16000)
            (val if i == 0 else test if i == 1 else []).append(f"{word}/{name}")
    (base / "_background_noise_").mkdir(exist_ok=True)
    soundfile.write(base / "_background_noise_" / "noise.wav", tone(50, 16000, 0.5), 16000)
    (base / "validation_list.txt").write_text("\n".join(val) + "\n")
    (base / "testing_list.txt").write_text("\n".join(test) + "\n")
    return Path(root)


def write_audio_fakes(root: str | os.PathLike) -> Path:
    """Every audio recipe's layout under ``root``: ``recordings/`` (FSDD), ``audio_folder/`` and ``SpeechCommands/``."""
    write_fsdd(root)
    write_audio_folder(Path(root) / "audio_folder")
    write_speech_commands(root)
    return Path(root)

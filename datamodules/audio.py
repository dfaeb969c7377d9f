"""Audio DataModules: the Free Spoken Digit Dataset and a user's folder of clips (Speech Commands v0.02 is in
:mod:`datamodules.audio_speech_commands`).

Every clip reaches the model as a mono float32 waveform of ``num_samples`` samples at ``sample_rate`` Hz (resampled,
then centre-cropped or zero-padded); the model computes its spectrogram on the device. Datasets that fit in
``MEMORY_BUDGET`` are decoded once and batched from one tensor (:class:`datamodules.in_memory.TensorBatches`); larger
ones (Speech Commands) are read from the files by DataLoader workers. The training order comes from
:class:`datamodules.sampling.EpochSampler`: seeded, the same after a resume, sliced between DDP processes.
"""

from __future__ import annotations

import os
import re

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules import audio_files as files
from datamodules.in_memory import TensorBatches, batch_loader
from datamodules.sampling import EpochSampler, balanced_loss_weights, processes, shuffle_seed, stratified_split
from datamodules.split_loaders import SplitLoaders

__all__ = ["AudioDataModule", "AudioFolderDataModule", "FSDDDataModule"]

#: Decoded float32 samples a split may take to be held in memory when ``in_memory`` is left to decide.
MEMORY_BUDGET = 2 * 1024**3


class AudioDataModule(SplitLoaders, LightningDataModule):
    """Base of the audio DataModules; subclasses name the classes and each split's files.

    Args:
        data_dir: Folder the dataset is read from (and downloaded to, where the dataset downloads).
        sample_rate: Sample rate the clips are resampled to, in Hz.
        duration: Clip length in seconds: longer recordings are centre-cropped, shorter ones zero-padded.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_fraction: Share of the training files held out for validation (seeded, stratified by class) where the
            dataset has no validation split of its own.
        seed: Seed of that validation split.
        time_shift: Random per-clip shift during training of up to this fraction of the clip (zero-filled); 0 turns
            it off.
        num_workers: DataLoader worker processes for clips read from files (decoded clips need none).
        in_memory: Decode every clip once and keep each split as one tensor. ``None``: when a split's samples fit
            in ``MEMORY_BUDGET`` (2 GiB of float32).
        shuffle_seed: Seed of the training order; ``None`` follows ``--seed_everything``.
    """

    predict_split = "test"  # ``recipe predict`` reads this split

    def __init__(
        self,
        data_dir: str = "data",
        sample_rate: int = 16000,
        duration: float = 1.0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        time_shift: float = 0.0,
        num_workers: int = 0,
        in_memory: bool | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        if duration <= 0 or round(sample_rate * duration) < 1:
            raise ValueError(f"duration must give at least one sample at {sample_rate} Hz, got {duration} s")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("batch sizes must be >= 1 and num_workers >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not 0.0 <= time_shift < 0.5:
            raise ValueError(f"time_shift must be in [0, 0.5) of the clip, got {time_shift}")
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.splits: dict[str, Dataset] = {}
        self.split_files: dict[str, list[str]] = {}  # each split's files, in the order of its batches

    @property
    def sample_rate(self) -> int:
        return self.hparams.sample_rate

    @property
    def num_samples(self) -> int:
        return round(self.hparams.sample_rate * self.hparams.duration)

    @property
    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_weights(self) -> torch.Tensor:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split (scikit-learn's "balanced")."""
        return balanced_loss_weights(torch.as_tensor(self.labelled_files("train")[1]), self.num_classes)

    def labelled_files(self, split: str) -> tuple[list[str], list[int]]:
        """The paths and class indices of ``split`` (``train``, ``val`` or ``test``); subclasses implement it."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        # Only fit builds here (its errors surface before training); other stages build their split when its loader
        # is first asked for, after Lightning has restored a checkpoint's state.
        if stage == "fit":
            for split in ("train", "val"):
                self._split(split)

    def _split(self, name: str) -> Dataset:
        if name not in self.splits:
            paths, labels = self.labelled_files(name)
            hp = self.hparams
            in_memory = hp.in_memory if hp.in_memory is not None else len(paths) * self.num_samples * 4 <= MEMORY_BUDGET
            if in_memory:
                clips = files.decode(paths, hp.sample_rate, self.num_samples)  # (N, num_samples)
                self.splits[name] = TensorBatches(clips, torch.as_tensor(labels, dtype=torch.long))
            else:
                self.splits[name] = files.AudioFiles(paths, labels, hp.sample_rate, self.num_samples)
            self.split_files[name] = paths
        return self.splits[name]

    def _loader(self, split: str) -> DataLoader:
        data, hp = self._split(split), self.hparams
        train = split == "train"
        batch_size = hp.batch_size if train else hp.eval_batch_size
        drop_last = train and len(data) > batch_size  # never drop the only batch of a tiny dataset
        batched = isinstance(data, TensorBatches)
        sampler = EpochSampler(
            len(data),
            **processes(self.trainer),
            shuffle=train,
            seed=shuffle_seed(hp.shuffle_seed),
            batch_size=batch_size if batched else None,
            drop_last=drop_last,
        )
        if batched:
            return batch_loader(data, sampler)
        workers = hp.num_workers
        return DataLoader(
            data, batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers, persistent_workers=workers > 0
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, (tuple, list)):  # the model summary's example input
            return batch
        clips, labels = batch
        shift = round(self.hparams.time_shift * clips.shape[-1])
        if shift and self.trainer is not None and self.trainer.training:
            clips = files.random_shift(clips, shift)
        return clips, labels


class FSDDDataModule(AudioDataModule):
    """The Free Spoken Digit Dataset (https://github.com/Jakobovski/free-spoken-digit-dataset): spoken digits 0-9
    recorded at 8 kHz, files ``data_dir/recordings/{digit}_{speaker}_{index}.wav``. Small: decoded once, in memory.

    Its standard split makes the recordings of indices 0-4 (five per speaker and digit) the test set. With
    ``test_speakers``, every recording of those speakers is the test set instead and the others train: digits spoken
    by voices the model never heard, the harder and more useful measure. Validation is a seeded, stratified share of
    the training recordings either way.

    Args:
        data_dir: Folder holding ``recordings/`` (a clone of the dataset's repository).
        test_speakers: Speakers held out whole as the test set (e.g. ``[george]``); ``None``: the standard split.
        sample_rate: Sample rate the clips are resampled to (the recordings' own is 8 kHz).
        duration: Clip length in seconds (the longest recordings, 1.3 s, lose their ends at the default 1 s).
        **kwargs: See :class:`AudioDataModule`.
    """

    classes = tuple(str(d) for d in range(10))
    NAME = re.compile(r"^(\d)_(.+)_(\d+)\.wav$")

    def __init__(
        self,
        data_dir: str = "data/fsdd",
        test_speakers: list[str] | None = None,
        sample_rate: int = 8000,
        duration: float = 1.0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        time_shift: float = 0.0,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            sample_rate=sample_rate,
            duration=duration,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            seed=seed,
            time_shift=time_shift,
            in_memory=True,
            shuffle_seed=shuffle_seed,
        )
        if test_speakers is not None and not test_speakers:
            raise ValueError("test_speakers must name at least one speaker, or be None for the standard split")
        self.test_speakers = tuple(test_speakers) if test_speakers is not None else None
        self._recordings: list[tuple[str, int, str, int]] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speakers of the recordings, sorted."""
        return tuple(sorted({speaker for _, _, speaker, _ in self.recordings()}))

    def recordings(self) -> list[tuple[str, int, str, int]]:
        """``(path, digit, speaker, index)`` of every recording, sorted by path."""
        if self._recordings is None:
            folder = os.path.join(self.data_dir, "recordings")
            if not os.path.isdir(folder):
                raise MisconfigurationException(
                    f"FSDD folder {folder} does not exist. Pass --data.data_dir=DIR where DIR/recordings/ holds the "
                    "Free Spoken Digit Dataset's WAV files (git clone "
                    "https://github.com/Jakobovski/free-spoken-digit-dataset DIR)."
                )
            found = []
            for path in files.audio_files(folder):
                match = self.NAME.match(os.path.basename(path))
                if match is None:
                    raise MisconfigurationException(
                        f"FSDD file {path} is not named {{digit}}_{{speaker}}_{{index}}.wav. Rename or remove it."
                    )
                digit, speaker, index = match.groups()
                found.append((path, int(digit), speaker, int(index)))
            if not found:
                raise MisconfigurationException(f"FSDD folder {folder} holds no WAV files.")
            self._recordings = found
        return self._recordings

    def _is_test(self, speaker: str, index: int) -> bool:
        return speaker in self.test_speakers if self.test_speakers is not None else index < 5

    def labelled_files(self, split: str) -> tuple[list[str], list[int]]:
        recordings = self.recordings()
        if self.test_speakers is not None and (unknown := sorted(set(self.test_speakers) - set(self.speakers))):
            raise MisconfigurationException(
                f"test_speakers {unknown} have no recordings in {self.data_dir}; its speakers are "
                f"{list(self.speakers)}."
            )
        test = [self._is_test(speaker, index) for _, _, speaker, index in recordings]
        if split == "test":
            chosen = [r for r, t in zip(recordings, test, strict=True) if t]
        else:
            pool = [r for r, t in zip(recordings, test, strict=True) if not t]
            if not pool:
                raise MisconfigurationException(f"FSDD in {self.data_dir} leaves no recordings to train on.")
            train, val = (
                part.tolist()
                for part in stratified_split(
                    [digit for _, digit, _, _ in pool], self.hparams.val_fraction, self.hparams.seed, keep_one=True
                )
            )
            chosen = [pool[i] for i in (train if split == "train" else val)]
        if not chosen:
            raise MisconfigurationException(f"FSDD in {self.data_dir} has no recordings for the {split} split.")
        return [path for path, *_ in chosen], [digit for _, digit, _, _ in chosen]


class AudioFolderDataModule(AudioDataModule):
    """A user's own clips, one folder per class.

    Layout, under ``data_dir/folder``::

        train/<class>/*.wav|flac|ogg   training clips: the classes are the folder names
        val/<class>/...                optional; without it a seeded, stratified share of train/ is used
        test/<class>/...               what `recipe test` and `recipe predict` read

    ``val/`` and ``test/`` may hold fewer classes but no others. Files of any rate and channel count are resampled
    to ``sample_rate`` and mixed to mono. Checkpoints carry the class names, so ``recipe test|predict --ckpt_path``
    works without ``train/``.

    Args:
        data_dir: Folder holding ``folder``.
        folder: The dataset's folder inside ``data_dir`` (``.`` for ``data_dir`` itself).
        class_names: The classes in index order. ``None``: the folder names under ``train/``.
        **kwargs: See :class:`AudioDataModule`.
    """

    def __init__(
        self,
        data_dir: str = "data",
        folder: str = "audio_folder",
        class_names: tuple[str, ...] | None = None,
        sample_rate: int = 16000,
        duration: float = 1.0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.2,
        seed: int = 0,
        time_shift: float = 0.0,
        num_workers: int = 0,
        in_memory: bool | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            sample_rate=sample_rate,
            duration=duration,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            seed=seed,
            time_shift=time_shift,
            num_workers=num_workers,
            in_memory=in_memory,
            shuffle_seed=shuffle_seed,
        )
        if class_names is not None and (len(class_names) < 2 or len(set(class_names)) != len(class_names)):
            raise ValueError(f"class_names must hold at least two distinct names, got {list(class_names)}")
        self.root = os.path.join(data_dir, folder)
        self._classes = tuple(class_names) if class_names is not None else None

    def _folder(self, split: str) -> str:
        return os.path.join(self.root, split)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self._classes is None:
            train = self._folder("train")
            if not os.path.isdir(train):
                what = "does not exist" if not os.path.isdir(self.root) else "has no train/ folder"
                raise MisconfigurationException(
                    f"audio folder {self.root} {what}. Pass --data.data_dir=DIR (and --data.folder=NAME, '.' for DIR "
                    "itself) where DIR/NAME/train/<class>/ holds each class's WAV or FLAC files."
                )
            classes = files.class_folders(train)
            if len(classes) < 2:
                raise MisconfigurationException(
                    f"{train} must hold one folder per class and at least two classes; found {list(classes)}."
                )
            self._classes = classes
        return self._classes

    def _scan(self, split: str) -> tuple[list[str], list[int]]:
        root = self._folder(split)
        unknown = sorted(set(files.class_folders(root)) - set(self.class_names))
        if unknown:
            raise MisconfigurationException(
                f"{root} has class folder(s) {unknown} that train/ does not have (train/ classes: "
                f"{list(self.class_names)}). Rename them, or add them to train/."
            )
        paths, labels = [], []
        for label, name in enumerate(self.class_names):
            folder = os.path.join(root, name)
            found = files.audio_files(folder) if os.path.isdir(folder) else []
            if split == "train" and not found:
                raise MisconfigurationException(f"class folder {folder} holds no audio files (.wav, .flac, .ogg).")
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise MisconfigurationException(f"{root} holds no audio files (.wav, .flac, .ogg) in its class folders.")
        return paths, labels

    def labelled_files(self, split: str) -> tuple[list[str], list[int]]:
        if split == "test" and not os.path.isdir(self._folder("test")):
            raise MisconfigurationException(
                f"audio folder {self.root} has no test/ folder: put test clips in test/ laid out like train/ "
                "(use `recipe validate` to score the validation split)."
            )
        if split == "test" or (split == "val" and os.path.isdir(self._folder("val"))):
            return self._scan(split)
        paths, labels = self._scan("train")
        if os.path.isdir(self._folder("val")):  # with val/ present, all of train/ trains
            return paths, labels
        train, val = (
            part.tolist()
            for part in stratified_split(labels, self.hparams.val_fraction, self.hparams.seed, keep_one=True)
        )
        chosen = train if split == "train" else val
        return [paths[i] for i in chosen], [labels[i] for i in chosen]

    def state_dict(self) -> dict:
        return {"class_names": self._classes}

    def load_state_dict(self, state_dict: dict) -> None:
        classes, given = state_dict.get("class_names"), self.hparams.class_names
        if classes is not None and given is not None and tuple(classes) != tuple(given):
            raise MisconfigurationException(
                f"the checkpoint was trained on the classes {list(classes)}, but class_names gives {list(given)}. "
                "Drop --data.init_args.class_names, or give the checkpoint's classes in its order."
            )
        if classes is not None:
            self._classes = tuple(classes)

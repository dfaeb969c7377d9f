"""Speech Commands v0.02 (Warden 2018, https://arxiv.org/abs/1804.03209): one-second clips of 35 words at 16 kHz,
with the official validation and test lists."""

from __future__ import annotations

import os

from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules import audio_files as files
from datamodules.audio import AudioDataModule

#: The 35 words of v0.02, sorted: the class indices.
WORDS = (
    "backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no off on "
    "one right seven sheila six stop three tree two up visual wow yes zero"
).split()


class SpeechCommandsDataModule(AudioDataModule):
    """Speech Commands v0.02, the 35-word task: ``validation_list.txt`` and ``testing_list.txt`` name the validation
    and test clips, every other clip of the 35 word folders trains (``_background_noise_`` is not used).

    The files are read from torchaudio's layout, ``data_dir/SpeechCommands/speech_commands_v0.02/<word>/*.wav``;
    ``prepare_data`` downloads the 2.3 GB archive there with ``torchaudio.datasets.SPEECHCOMMANDS`` when that folder
    is missing (files already in place are used as they are). Decoding is ``soundfile``'s. The 105,829 clips take
    6.8 GB as float32, more than ``MEMORY_BUDGET``: by default they are read from the files by ``num_workers``
    DataLoader workers each epoch.

    Args:
        data_dir: Folder holding (or receiving) ``SpeechCommands/``.
        download: Download the dataset in ``prepare_data`` when it is not in ``data_dir``.
        **kwargs: See :class:`datamodules.audio.AudioDataModule`.
    """

    classes = tuple(WORDS)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        sample_rate: int = 16000,
        duration: float = 1.0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        seed: int = 0,
        time_shift: float = 0.1,
        num_workers: int = 8,
        in_memory: bool | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            sample_rate=sample_rate,
            duration=duration,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            time_shift=time_shift,
            num_workers=num_workers,
            in_memory=in_memory,
            shuffle_seed=shuffle_seed,
        )
        self.download = download
        self.root = os.path.join(data_dir, "SpeechCommands", "speech_commands_v0.02")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes

    def prepare_data(self) -> None:
        if os.path.isdir(self.root) or not self.download:
            return
        from torchaudio.datasets import SPEECHCOMMANDS

        SPEECHCOMMANDS(self.data_dir, url="speech_commands_v0.02", download=True)

    def _listed(self, name: str) -> set[str]:
        path = os.path.join(self.root, name)
        if not os.path.isfile(path):
            raise MisconfigurationException(
                f"Speech Commands list {path} does not exist. Pass --data.data_dir=DIR where "
                "DIR/SpeechCommands/speech_commands_v0.02/ holds the v0.02 release, or let it download there "
                "(--data.download=true)."
            )
        with open(path) as f:
            return {os.path.normpath(line.strip()) for line in f if line.strip()}

    def labelled_files(self, split: str) -> tuple[list[str], list[int]]:
        val, test = self._listed("validation_list.txt"), self._listed("testing_list.txt")
        paths, labels = [], []
        for label, word in enumerate(self.classes):
            folder = os.path.join(self.root, word)
            for path in files.audio_files(folder) if os.path.isdir(folder) else []:
                relative = os.path.join(word, os.path.basename(path))
                in_split = "val" if relative in val else "test" if relative in test else "train"
                if in_split == split:
                    paths.append(path)
                    labels.append(label)
        if not paths:
            raise MisconfigurationException(f"Speech Commands under {self.root} has no clips for the {split} split.")
        return paths, labels

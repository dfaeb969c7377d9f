"""Language modelling on one plain-text file (tiny-shakespeare's ``input.txt``), at character or token level.

As nanoGPT (https://github.com/karpathy/nanoGPT, ``data/shakespeare_char/prepare.py``): the first 90% of the text
trains, the last 10% validates (the text has no test split: ``recipe test`` scores the validation text). Batches are
``(inputs, targets)``, both ``(B, block_size)`` long, the targets the inputs shifted by one token. Training windows
start every ``stride`` tokens of the training text (``stride = block_size``: contiguous blocks; ``1``: every
position, nanoGPT's random windows) and are shuffled by :class:`~datamodules.sampling.EpochSampler`; validation
covers its text once in contiguous blocks.

Character level: the vocabulary is every character of the file, sorted (nanoGPT's; 65 for tiny-shakespeare).
Token level: a pretrained tokenizer by name, or a byte-level BPE trained on the training text. Either travels in
checkpoints through ``state_dict``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules import text_tokenizers
from datamodules.in_memory import batch_loader
from datamodules.sampling import EpochSampler, processes, shuffle_seed
from datamodules.split_loaders import SplitLoaders


class Windows(Dataset):
    """``(inputs, targets)`` windows of a token stream gathered a batch at a time (``batch_size=None``)."""

    def __init__(self, ids: torch.Tensor, starts: torch.Tensor, block_size: int) -> None:
        self.ids, self.starts, self.offsets = ids, starts, torch.arange(block_size + 1)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.ids[self.starts[torch.as_tensor(indices)][:, None] + self.offsets]  # (B, block_size + 1)
        return rows[:, :-1], rows[:, 1:]


class TextDataModule(SplitLoaders, LightningDataModule):
    """Next-token windows of one text file.

    Args:
        path: The text file (UTF-8): as given when it names a file, else relative to ``data_dir``.
        data_dir: Folder of the data.
        level: ``char`` (one token per character) or ``token`` (a tokenizer's tokens).
        tokenizer: Token level: pretrained tokenizer by hub name or folder; ``None`` trains a byte-level BPE of
            ``max_vocab`` tokens on the training text.
        max_vocab: Vocabulary size of a trained tokenizer.
        block_size: Tokens of context per window (the model's ``max_length``).
        stride: Tokens between the starts of training windows; ``None``: ``block_size`` (contiguous blocks).
        val_fraction: Share of the text, at its end, that validates.
        batch_size: Training windows per batch.
        eval_batch_size: Validation and test windows per batch.
        shuffle_seed: Seed of the training order (default: the run's ``--seed_everything``).
    """

    predict_split = "test"

    def __init__(
        self,
        path: str = "tinyshakespeare/input.txt",
        data_dir: str = "data",
        level: Literal["char", "token"] = "char",
        tokenizer: str | None = None,
        max_vocab: int = 4096,
        block_size: int = 256,
        stride: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if level not in ("char", "token"):
            raise ValueError(f"level must be 'char' or 'token', got {level!r}")
        if level == "char" and tokenizer is not None:
            raise ValueError("a tokenizer is for level 'token'; drop it or set level: token")
        if block_size < 1 or (stride is not None and stride < 1):
            raise ValueError(f"block_size and stride must be positive, got {block_size} and {stride}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1 or eval_batch_size < 1 or max_vocab < 257:
            raise ValueError(f"batch sizes must be positive and max_vocab >= 257 (the bytes), got {batch_size}, "
                             f"{eval_batch_size} and {max_vocab}")  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.chars: str | None = None  # character level: the vocabulary, in id order
        self.tokenizer = None  # token level
        self._text: str | None = None
        self._ids: dict[str, torch.Tensor] = {}

    def _source(self) -> str:
        path = self.hparams.path  # as given when it names a file, else under data_dir
        return path if os.path.isabs(path) or os.path.isfile(path) else os.path.join(self.data_dir, path)

    def _read(self) -> str:
        if self._text is None:
            source = self._source()
            if not os.path.isfile(source):
                raise MisconfigurationException(f"text file {source} does not exist. Pass --data.init_args.path=FILE.")
            with open(source, encoding="utf-8") as f:
                self._text = f.read()
            if not self._text:
                raise MisconfigurationException(f"text file {source} is empty. Give a file of plain text.")
        return self._text

    def _parts(self) -> dict[str, str]:
        text = self._read()
        cut = int(len(text) * (1 - self.hparams.val_fraction))
        return {"train": text[:cut], "val": text[cut:]}

    def _fitted(self) -> None:
        """The vocabulary (unless restored from a checkpoint)."""
        hp = self.hparams
        if hp.level == "char" and self.chars is None:
            self.chars = "".join(sorted(set(self._read())))
        elif hp.level == "token" and self.tokenizer is None:
            if hp.tokenizer is not None:
                self.tokenizer = text_tokenizers.pretrained(hp.tokenizer)
            else:
                train = self._parts()["train"]
                lines = [train[i : i + 10_000] for i in range(0, len(train), 10_000)]
                self.tokenizer = text_tokenizers.train_byte_bpe(lines, hp.max_vocab)

    # ---- data values (core.data_values) ----
    @property
    def vocab_size(self) -> int:
        self._fitted()
        return len(self.chars) if self.hparams.level == "char" else len(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self.hparams.block_size

    # ---- tokens ----
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; at character level a character outside the vocabulary stops with its name."""
        self._fitted()
        if self.hparams.level == "token":
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = next((c for c in text if c not in index), None)
        if unknown is not None:
            raise MisconfigurationException(f"character {unknown!r} is not in the vocabulary of {self._source()}")
        return [index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        """The text of token ids."""
        self._fitted()
        if self.hparams.level == "token":
            return self.tokenizer.decode(ids)
        return "".join(self.chars[i] for i in ids)

    # ---- checkpoint ----
    def state_dict(self) -> dict[str, Any]:
        self._fitted()
        if self.hparams.level == "char":
            return {"chars": self.chars}
        return {"tokenizer": text_tokenizers.to_files(self.tokenizer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "chars" in state_dict:
            self.chars = state_dict["chars"]
        else:
            self.tokenizer = text_tokenizers.from_files(state_dict["tokenizer"])
        self._ids = {}

    # ---- loaders ----
    def setup(self, stage: str) -> None:
        for split in ("train", "val") if stage == "fit" else ("val",):
            self._stream(split)  # a missing file or a text too short surfaces here

    def _stream(self, split: str) -> torch.Tensor:
        if split not in self._ids:
            ids = torch.tensor(self.encode(self._parts()[split]), dtype=torch.long)  # (N,)
            if len(ids) <= self.hparams.block_size:
                raise MisconfigurationException(
                    f"the {split} part of {self._source()} holds {len(ids)} tokens, not more than block_size="
                    f"{self.hparams.block_size}. Lower --data.init_args.block_size or give a longer text."
                )
            self._ids[split] = ids
        return self._ids[split]

    def _windows(self, split: str) -> Windows:
        hp = self.hparams
        ids = self._stream("train" if split == "train" else "val")
        step = (hp.stride or hp.block_size) if split == "train" else hp.block_size
        starts = torch.arange(0, len(ids) - hp.block_size, step)  # every window has its block_size + 1 tokens
        return Windows(ids, starts, hp.block_size)

    def _loader(self, split: str) -> DataLoader:
        data, hp = self._windows(split), self.hparams
        train = split == "train"
        sampler = EpochSampler(
            len(data),
            **processes(self.trainer),
            shuffle=train,
            seed=shuffle_seed(hp.shuffle_seed),
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            drop_last=train and len(data) > hp.batch_size,
        )
        return batch_loader(data, sampler)

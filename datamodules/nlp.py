"""Text classification: a Hugging Face dataset (AG News, IMDb, SST-2) or a local CSV / TSV / JSONL file.

Batches are ``{"input_ids": (B, T), "attention_mask": (B, T), "labels": (B,)}`` long tensors, padded to the longest
text of the batch (dynamic padding), with ``T <= max_length``; predict batches have no ``labels``. Training batches
group texts of similar length (:class:`LengthGroupedSampler`) so little of a batch is padding; validation and test
are scored in order of length for the same reason.

The tokenizer is the pretrained one named by ``tokenizer`` or, without one, a WordPiece vocabulary trained on the
training split (:mod:`datamodules.text_tokenizers`). It and the class names travel in checkpoints through
``state_dict``, so ``recipe predict --ckpt_path`` tokenizes new texts exactly as training did, without the training
file.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from datamodules import text_tokenizers
from datamodules.in_memory import batch_loader
from datamodules.sampling import EpochSampler, balanced_loss_weights, processes, shuffle_seed
from datamodules.split_loaders import SplitLoaders

#: name -> (hub id, text column, label column, the split used as test). SST-2's test labels are hidden: its
#: validation split is the test, as in the GLUE papers' dev-set figures.
DATASETS = {
    "ag_news": ("fancyzhx/ag_news", "text", "label", "test"),
    "imdb": ("stanfordnlp/imdb", "text", "label", "test"),
    "sst2": ("stanfordnlp/sst2", "sentence", "label", "validation"),
}


class TokenBatches(Dataset):
    """Token-id lists gathered a whole batch at a time (``batch_size=None``) and padded to the batch's longest."""

    def __init__(self, ids: list[list[int]], labels: torch.Tensor | None, pad_token_id: int) -> None:
        self.ids, self.labels, self.pad_token_id = ids, labels, pad_token_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in indices]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.as_tensor(row)
            attention_mask[i, : len(row)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.labels is not None:
            batch["labels"] = self.labels[torch.as_tensor(indices)]
        return batch


class LengthGroupedSampler(EpochSampler):
    """:class:`~datamodules.sampling.EpochSampler`'s seeded training order, regrouped so each batch holds texts of
    similar length: the epoch's order is cut into windows of ``group_batches`` batches, each window sorted by length
    and cut into batches, and the full batches shuffled (the ragged one last). Every draw depends on the seed and
    the epoch alone, so a resumed run replays the same batches (the grouping of Hugging Face's
    ``LengthGroupedSampler``, made resumable).

    Args:
        lengths: Tokens of each sample.
        batch_size: Samples per batch.
        group_batches: Batches per window sorted together: more groups tighter, fewer keeps batches more random.
        **kwargs: ``num_replicas``, ``rank``, ``seed`` and ``drop_last`` of ``EpochSampler``.
    """

    def __init__(self, lengths: list[int], batch_size: int, group_batches: int = 50, **kwargs: Any) -> None:
        super().__init__(len(lengths), shuffle=True, batch_size=batch_size, **kwargs)
        if group_batches < 1:
            raise ValueError(f"group_batches must be positive, got {group_batches}")
        self.lengths, self.group_batches = list(lengths), group_batches

    def _order(self, epoch: int) -> list[int]:
        order = super()._order(epoch)
        window = self.batch_size * self.group_batches
        grouped = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start : start + window], key=lambda i: -self.lengths[i])
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        ragged = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        shuffle = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist()]
        return [i for batch in batches + ([ragged] if ragged else []) for i in batch]


def read_texts(path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV (``,``), JSONL / JSON or tab-separated file (any other suffix; quotes read as text) as strings; a
    missing or empty file stops with the fix. ``columns`` names the columns of a file without a header."""
    if not os.path.isfile(path):
        raise MisconfigurationException(f"text file {path} does not exist. Pass --data.init_args.path=FILE.")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
            frame = frame.astype(str) if not frame.empty else frame
        else:
            tab = suffix != ".csv"
            frame = pd.read_csv(path, sep="\t" if tab else ",", header=None if columns else "infer", names=columns,
                                quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL, dtype=str,
                                keep_default_na=False)  # fmt: skip
    except (pd.errors.EmptyDataError, ValueError) as err:
        if os.path.getsize(path) and not isinstance(err, pd.errors.EmptyDataError):
            raise MisconfigurationException(f"cannot read {path}: {err}") from None
        frame = pd.DataFrame()
    if frame.empty:
        raise MisconfigurationException(f"text file {path} holds no rows. Give a file with a text and a label column.")
    return frame


class TextClassificationDataModule(SplitLoaders, LightningDataModule):
    """Texts and their classes, tokenized once; splits seeded and stratified when the data has none.

    Args:
        path: Local file of texts and labels (``.csv``, ``.jsonl``, or tab-separated such as the SMS Spam
            Collection): as given when it names a file, else relative to ``data_dir``.
        dataset: A Hugging Face dataset instead: ``ag_news``, ``imdb`` or ``sst2`` (downloaded by ``prepare_data``
            into ``data_dir/huggingface``); its own test split is the test.
        data_dir: Folder of the data.
        text_column: Column holding the text.
        label_column: Column holding the class.
        columns: Names of the columns of a file without a header, in order (``[label, text]`` for SMS spam).
        classes: The class names, in index order; a label outside them stops the run. Default: the sorted labels.
        test_path: File of test texts (same columns); without it a stratified ``test_fraction`` is drawn.
        tokenizer: Pretrained tokenizer by hub name or folder (the model's: ``distilbert-base-uncased``). ``None``:
            a WordPiece vocabulary of ``max_vocab`` tokens is trained on the training split.
        max_vocab: Vocabulary size of a trained tokenizer.
        lowercase: Lower-case texts before a trained tokenizer splits them.
        max_length: Tokens kept per text (longer texts are cut).
        val_fraction: Share of all labelled rows drawn for validation (a Hugging Face dataset's: of its training
            split).
        test_fraction: Share of all rows drawn for test when there is no test split.
        seed: Seed of the splits.
        batch_size: Training batch size.
        eval_batch_size: Validation, test and predict batch size.
        group_by_length: Batch training texts of similar length together.
        shuffle_seed: Seed of the training order (default: the run's ``--seed_everything``).
        predict_path: Texts for ``recipe predict``: a ``.txt`` file of one text a line, or a CSV / JSONL / TSV
            with a header naming ``text_column`` (labels not needed); ``None`` predicts the test split.
    """

    def __init__(
        self,
        path: str | None = None,
        dataset: Literal["ag_news", "imdb", "sst2"] | None = None,
        data_dir: str = "data",
        text_column: str = "text",
        label_column: str = "label",
        columns: list[str] | None = None,
        classes: list[str] | None = None,
        test_path: str | None = None,
        tokenizer: str | None = None,
        max_vocab: int = 8000,
        lowercase: bool = True,
        max_length: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        group_by_length: bool = True,
        shuffle_seed: int | None = None,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        if (path is None) == (dataset is None):
            raise MisconfigurationException("give one text source: --data.init_args.path=FILE or dataset=NAME")
        if dataset is not None and dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if not 0.0 < val_fraction < 1.0 or not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, got "
                             f"{val_fraction} and {test_fraction}")  # fmt: skip
        if max_length < 2 or max_vocab < 16:
            raise ValueError(f"max_length must be >= 2 and max_vocab >= 16, got {max_length} and {max_vocab}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.tokenizer = None
        self.classes: list[str] = list(classes) if classes else []
        self._splits: dict[str, tuple[list[str], np.ndarray]] | None = None  # split -> (texts, class indices)
        self._batches: dict[str, TokenBatches] = {}

    # ---- reading ----
    def resolve(self, path: str) -> str:
        """``path`` as given when it names a file (absolute, or relative to the working directory), else under
        ``data_dir``."""
        return path if os.path.isabs(path) or os.path.isfile(path) else os.path.join(self.data_dir, path)

    def _hub_cache(self) -> str:
        return os.path.join(self.data_dir, "huggingface")

    def prepare_data(self) -> None:
        if self.hparams.dataset is not None:
            import datasets

            datasets.load_dataset(DATASETS[self.hparams.dataset][0], cache_dir=self._hub_cache())

    def _read_file(self, path: str) -> tuple[list[str], list[str]]:
        hp = self.hparams
        frame = read_texts(path, hp.columns)
        for column, flag in ((hp.text_column, "text_column"), (hp.label_column, "label_column")):
            if column not in frame.columns:
                raise MisconfigurationException(
                    f"column '{column}' is not in {path} (its columns: {', '.join(map(str, frame.columns))}). Fix "
                    f"--data.init_args.{flag}, or name the columns of a file without a header with "
                    "--data.init_args.columns."
                )
        return frame[hp.text_column].astype(str).tolist(), frame[hp.label_column].astype(str).str.strip().tolist()

    def _read_predict(self, path: str) -> list[str]:
        """Texts to predict: a ``.txt`` file holds one a line; a CSV / JSONL / TSV has a header naming
        ``text_column``."""
        if path.endswith(".txt") and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                texts = [line.rstrip("\n") for line in f if line.strip()]
            if not texts:
                raise MisconfigurationException(f"text file {path} holds no rows. Give one text a line.")
            return texts
        frame = read_texts(path)
        if self.hparams.text_column not in frame.columns:
            raise MisconfigurationException(
                f"column '{self.hparams.text_column}' is not in {path} (its columns: "
                f"{', '.join(map(str, frame.columns))}). Fix --data.init_args.text_column, or give a .txt file of "
                "one text a line."
            )
        return frame[self.hparams.text_column].astype(str).tolist()

    def _encode_labels(self, labels: list[str], source: str) -> np.ndarray:
        if not self.classes:
            self.classes = sorted(set(labels))
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = next((row for row, label in enumerate(labels) if label not in index), None)
        if unknown is not None:
            raise MisconfigurationException(
                f"label '{labels[unknown]}' in row {unknown + 1} of {source} is not one of the classes "
                f"{', '.join(self.classes)}. Fix the label or --data.init_args.classes."
            )
        if len(self.classes) < 2:
            raise MisconfigurationException(
                f"{source} has one class ({self.classes[0]!r}); classification needs at least two. Check "
                "--data.init_args.label_column."
            )
        return np.array([index[label] for label in labels], dtype=np.int64)

    def _read(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Texts and class indices of every split, drawing the splits the data lacks."""
        hp = self.hparams
        if hp.dataset is not None:
            import datasets

            hub, text, label, test = DATASETS[hp.dataset]
            parts = datasets.load_dataset(hub, cache_dir=self._hub_cache())
            self.classes = self.classes or list(parts["train"].features[label].names)
            train_texts, train_y = list(parts["train"][text]), np.asarray(list(parts["train"][label]), dtype=np.int64)
            fixed_test = (list(parts[test][text]), np.asarray(list(parts[test][label]), dtype=np.int64))
            share = hp.val_fraction
        else:
            source = self.resolve(hp.path)
            texts, labels = self._read_file(source)
            y = self._encode_labels(labels, source)
            fixed_test = None
            if hp.test_path is not None:
                test_source = self.resolve(hp.test_path)
                test_texts, test_labels = self._read_file(test_source)
                fixed_test = (test_texts, self._encode_labels(test_labels, test_source))
            everything = np.arange(len(texts))
            if fixed_test is None:
                rest, test = _split(everything, y, hp.test_fraction, hp.seed)
                fixed_test = ([texts[i] for i in test], y[test])
            else:
                rest = everything
            train_texts, train_y = [texts[i] for i in rest], y[rest]
            share = hp.val_fraction * len(texts) / max(1, len(rest))  # val_fraction is a share of all rows
        train, val = _split(np.arange(len(train_texts)), train_y, min(share, 0.5), hp.seed)
        return {
            "train": ([train_texts[i] for i in train], train_y[train]),
            "val": ([train_texts[i] for i in val], train_y[val]),
            "test": fixed_test,
        }

    def _prepare(self) -> None:
        """Read the data and draw the splits (once); fit the tokenizer on the training texts unless restored."""
        if self._splits is not None:
            return
        self._splits = self._read()
        self._fitted()

    def _fitted(self):
        if self.tokenizer is None:
            hp = self.hparams
            if hp.tokenizer is not None:
                self.tokenizer = text_tokenizers.pretrained(hp.tokenizer)
            else:
                self._prepare()
                self.tokenizer = text_tokenizers.train_wordpiece(self._splits["train"][0], hp.max_vocab, hp.lowercase)
        return self.tokenizer

    # ---- data values (core.data_values) ----
    @property
    def vocab_size(self) -> int:
        return len(self._fitted())

    @property
    def pad_token_id(self) -> int:
        return self._fitted().pad_token_id

    @property
    def max_length(self) -> int:
        return self.hparams.max_length

    @property
    def num_classes(self) -> int:
        if not self.classes:
            self._prepare()
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes) if self.num_classes else ()

    @property
    def class_weights(self) -> torch.Tensor:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split (scikit-learn's "balanced")."""
        self._prepare()
        return balanced_loss_weights(torch.as_tensor(np.asarray(self._splits["train"][1])), self.num_classes)

    # ---- tokens ----
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, cut to ``max_length``."""
        return self._fitted()(list(texts), truncation=True, max_length=self.hparams.max_length)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, special tokens left out."""
        return self._fitted().decode(ids, skip_special_tokens=True)

    # ---- checkpoint ----
    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": text_tokenizers.to_files(self._fitted()), "classes": list(self.classes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokenizer = text_tokenizers.from_files(state_dict["tokenizer"])
        self.classes = list(state_dict["classes"])
        self._batches = {}  # tokenize again with the restored tokenizer

    # ---- loaders ----
    def setup(self, stage: str) -> None:
        if stage == "predict" and self.hparams.predict_path is not None:
            self._fitted()  # new texts only: a restored tokenizer needs no training data
        else:
            self._prepare()  # a data source error surfaces here, before any loop starts

    def _split(self, split: str) -> TokenBatches:
        if split not in self._batches:
            hp = self.hparams
            if split == "predict" and hp.predict_path is not None:
                texts, labels = self._read_predict(self.resolve(hp.predict_path)), None
            else:
                self._prepare()
                texts, y = self._splits["test" if split == "predict" else split]
                labels = None if split == "predict" else torch.from_numpy(np.asarray(y))
            ids = self.encode(texts)
            if split in ("val", "test"):  # scored in order of length: less padding, the same metrics
                order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
                ids, labels = [ids[i] for i in order], labels[torch.as_tensor(order, dtype=torch.long)]
            self._batches[split] = TokenBatches(ids, labels, self.pad_token_id)
        return self._batches[split]

    def _loader(self, split: str) -> DataLoader:
        data, hp = self._split(split), self.hparams
        common = {**processes(self.trainer), "seed": shuffle_seed(hp.shuffle_seed)}
        if split != "train":
            sampler = EpochSampler(len(data), batch_size=hp.eval_batch_size, **common)
        elif hp.group_by_length:
            lengths = [len(ids) for ids in data.ids]
            sampler = LengthGroupedSampler(lengths, hp.batch_size, drop_last=len(data) > hp.batch_size, **common)
        else:
            sampler = EpochSampler(len(data), shuffle=True, batch_size=hp.batch_size,
                                   drop_last=len(data) > hp.batch_size, **common)  # fmt: skip
        return batch_loader(data, sampler)


def _split(indices: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, drawn)``: a seeded ``share`` of ``indices`` drawn, stratified by ``y`` when every class can be."""
    counts = np.unique(y, return_counts=True)[1]
    stratify = y if counts.min() >= 2 and round(share * len(y)) >= len(counts) else None
    try:
        rest, drawn = train_test_split(indices, test_size=share, random_state=seed, stratify=stratify)
    except ValueError:  # too few rows of a class for a stratified draw
        rest, drawn = train_test_split(indices, test_size=share, random_state=seed)
    return np.sort(rest), np.sort(drawn)

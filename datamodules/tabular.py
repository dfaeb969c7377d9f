"""Tables: a CSV or Parquet file, a pandas DataFrame or a bundled scikit-learn dataset, as ``(x_num, x_cat), y``.

Batches are ``((x_num, x_cat), y)``: numbers (B, num_continuous) float32, category indices (B, n_categorical)
int64 and the target, class indices (B,) int64 or regression values (B,) float32 in the target's units (times
``target_scale``); predict batches are ``((x_num, x_cat),)``. The preprocessing (see
:mod:`datamodules.tabular_preprocessing`) is fitted on the training split only and travels in checkpoints through
``state_dict``, so ``recipe predict --ckpt_path`` encodes new rows exactly as training did.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.utils.data import DataLoader, Dataset

from datamodules import sampling
from datamodules.in_memory import batch_loader
from datamodules.sampling import EpochSampler, processes, shuffle_seed
from datamodules.split_loaders import SplitLoaders
from datamodules.tabular_preprocessing import TablePreprocessor

SKLEARN_LOADERS = {"breast_cancer": "load_breast_cancer", "wine": "load_wine", "diabetes": "load_diabetes"}
TARGET = "target"  # the target column's name in a bundled scikit-learn dataset


class TableBatches(Dataset):
    """Index ``x_num``, ``x_cat`` and the targets with a whole batch of indices at once (``batch_size=None``)."""

    def __init__(self, x_num: torch.Tensor, x_cat: torch.Tensor, targets: torch.Tensor | None) -> None:
        self.x_num, self.x_cat, self.targets = x_num, x_cat, targets

    def __len__(self) -> int:
        return len(self.x_num)

    def __getitem__(self, indices: list[int]) -> tuple:
        index = torch.as_tensor(indices)
        inputs = (self.x_num[index], self.x_cat[index])
        return (inputs,) if self.targets is None else (inputs, self.targets[index])


def read_table(path: str) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; a missing or empty file stops with the fix."""
    if not os.path.isfile(path):
        raise MisconfigurationException(f"table file {path} does not exist. Pass --data.init_args.path=FILE.csv.")
    try:
        frame = pd.read_parquet(path) if path.endswith((".parquet", ".pq")) else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    if frame.empty:
        raise MisconfigurationException(f"table file {path} holds no rows. Give a file with a header and data rows.")
    return frame


def numeric(frame: pd.DataFrame, columns: list[str], source: str) -> pd.DataFrame:
    """``frame`` with ``columns`` as floats; a value that is not a number stops naming the column and the row."""
    frame = frame.copy()
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            frame[column] = values.astype("float64")
            continue
        converted = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero(converted.isna().to_numpy() & values.notna().to_numpy())
        if len(bad):
            row = bad[0]
            raise MisconfigurationException(
                f"column '{column}' of {source} is numeric but row {row + 1} (file line {row + 2}) holds "
                f"{values.iloc[row]!r}. Fix the value, or list the column in --data.init_args.categorical."
            )
        frame[column] = converted.astype("float64")
    return frame


class TabularDataModule(SplitLoaders, LightningDataModule):
    """One table split into train, validation and test, preprocessed with statistics of the training rows only.

    Give exactly one source: ``path`` (CSV or Parquet), ``frame`` (a DataFrame, from Python) or ``sklearn`` (a
    bundled dataset). Columns not named are inferred: non-numeric ones categorical, numeric ones continuous.

    Splits are seeded: ``test_fraction`` of the rows form the test split, ``val_fraction`` of them the validation
    split, stratified by class for classification. With ``num_folds`` the test split stays the same and the
    remaining rows are cut into ``num_folds`` folds: fold ``fold`` is the validation split, the others train, so
    ``num_folds`` runs with ``fold = 0 .. num_folds - 1`` cross-validate on one fixed test split.

    Args:
        path: CSV or Parquet file; a relative path is read from ``data_dir``.
        sklearn: A scikit-learn dataset bundled with the library (no download): ``breast_cancer`` (binary),
            ``wine`` (3 classes) or ``diabetes`` (regression).
        frame: A DataFrame (from Python only; a config cannot hold one).
        data_dir: Folder of a relative ``path`` and of downloads.
        target: Target column.
        categorical: Categorical columns; ``None`` infers them (the non-numeric columns).
        continuous: Numeric columns; ``None`` infers them (the numeric columns).
        task: ``classification`` or ``regression``; ``None`` infers it: float targets with more than
            ``max_classes`` values are regression, anything else classification.
        max_classes: Most distinct integer target values still taken as classes when ``task`` is inferred.
        numeric_transform: ``standard`` (training mean and std) or ``quantile`` (scikit-learn's
            ``QuantileTransformer`` to a normal distribution, fitted on the training rows).
        target_scale: Factor applied to a regression target (1e-5 puts house prices in units of $100k); metrics
            and predictions are in these units.
        val_fraction: Share of all rows in the validation split (without ``num_folds``).
        test_fraction: Share of all rows in the test split.
        num_folds: Cross-validation folds of the non-test rows; ``None`` uses ``val_fraction``.
        fold: Which fold is the validation split, ``0 .. num_folds - 1``.
        seed: Seed of the splits and of the quantile transformer.
        balance: Draw training rows with replacement so every class is equally likely (classification).
        batch_size: Training batch size.
        eval_batch_size: Batch size of validation, test and predict.
        shuffle_seed: Seed of the training order; ``None`` follows ``--seed_everything``.
        predict_path: CSV or Parquet file of rows to predict (the target column may be absent); ``None``
            predicts the test split.
    """

    def __init__(
        self,
        path: str | None = None,
        sklearn: Literal["breast_cancer", "wine", "diabetes"] | None = None,
        frame: pd.DataFrame | None = None,
        data_dir: str = "data",
        target: str = TARGET,
        categorical: list[str] | None = None,
        continuous: list[str] | None = None,
        task: Literal["classification", "regression"] | None = None,
        max_classes: int = 20,
        numeric_transform: Literal["standard", "quantile"] = "standard",
        target_scale: float = 1.0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        num_folds: int | None = None,
        fold: int = 0,
        seed: int = 0,
        balance: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 4096,
        shuffle_seed: int | None = None,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        sources = [
            name for name, value in (("path", path), ("sklearn", sklearn), ("frame", frame)) if value is not None
        ]
        if len(sources) > 1:
            raise MisconfigurationException(f"give one table source, got {' and '.join(sources)}")
        if not 0.0 < test_fraction < 1.0 or not 0.0 < val_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, got "
                             f"{val_fraction} and {test_fraction}")  # fmt: skip
        if num_folds is not None and (num_folds < 2 or not 0 <= fold < num_folds):
            raise ValueError(f"num_folds must be at least 2 and fold in [0, num_folds), got {num_folds} and {fold}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if target_scale <= 0:
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        self.save_hyperparameters(ignore=["frame"], logger=False)
        self.frame, self.data_dir = frame, data_dir
        self.preprocessor: TablePreprocessor | None = None
        self.task: str | None = None
        self.classes: list[str] = []
        self.target_mean, self.target_std = 0.0, 1.0
        self._rows: pd.DataFrame | None = None  # every labelled row, the target encoded
        self._split_rows: dict[str, np.ndarray] = {}
        self._tensors: dict[str, TableBatches] = {}

    # ---- reading ----
    def source_name(self) -> str:
        hp = self.hparams
        return hp.path if hp.path is not None else f"sklearn {hp.sklearn}" if hp.sklearn else "the DataFrame"

    def resolve(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.data_dir, path)

    def read(self) -> tuple[pd.DataFrame, np.ndarray | None]:
        """All labelled rows, and a boolean mask of the rows that form the test split when the dataset fixes one
        (``None``: the test split is drawn). Subclasses for datasets of other formats override this."""
        hp = self.hparams
        if self.frame is not None:
            if self.frame.empty:
                raise MisconfigurationException("the DataFrame holds no rows. Give a table with data.")
            return self.frame.reset_index(drop=True), None
        if hp.sklearn is not None:
            import sklearn.datasets

            bunch = getattr(sklearn.datasets, SKLEARN_LOADERS[hp.sklearn])(as_frame=True)
            frame = (
                bunch.frame.rename(columns={bunch.target.name: TARGET}) if bunch.target.name != TARGET else bunch.frame
            )
            if hp.task != "regression" and hasattr(bunch, "target_names") and bunch.target.dtype.kind in "iu":
                frame[TARGET] = pd.Categorical.from_codes(bunch.target, list(bunch.target_names))
            return frame, None
        if hp.path is None:
            raise MisconfigurationException("no table given. Pass --data.init_args.path=FILE.csv (or sklearn=NAME).")
        return read_table(self.resolve(hp.path)), None

    def _columns(self, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
        hp = self.hparams
        named = [hp.target, *(hp.categorical or []), *(hp.continuous or [])]
        for column in named:
            if column not in frame.columns:
                raise MisconfigurationException(
                    f"column '{column}' is not in {self.source_name()} (its columns: "
                    f"{', '.join(map(str, frame.columns))}). Fix the name in "
                    "--data.init_args.target/categorical/continuous."
                )
        rest = [c for c in frame.columns if c != hp.target]
        categorical = hp.categorical
        if categorical is None:
            categorical = [c for c in rest if c not in (hp.continuous or []) and not _is_numeric(frame[c])]
        continuous = hp.continuous
        if continuous is None:
            continuous = [c for c in rest if c not in categorical]
        return list(categorical), list(continuous)

    def _encode_target(self, frame: pd.DataFrame) -> pd.Series:
        hp, values = self.hparams, frame[self.hparams.target]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise MisconfigurationException(
                f"target column '{hp.target}' of {self.source_name()} is empty in row {row + 1}. "
                "Drop the unlabelled rows or predict them with --data.init_args.predict_path."
            )
        task = hp.task or _infer_task(values, hp.max_classes)
        if task == "regression":
            return numeric(frame[[hp.target]], [hp.target], self.source_name())[hp.target] * hp.target_scale
        # Class names come from every labelled row, not only the training ones: a class that is missing from the
        # training split must still encode in validation and test (names are not a fitted statistic).
        if isinstance(values.dtype, pd.CategoricalDtype):
            classes = [str(c) for c in values.cat.categories]
        else:
            classes = [str(c) for c in sorted(values.unique(), key=_sort_key)]
        if len(classes) < 2:
            raise MisconfigurationException(
                f"target column '{hp.target}' of {self.source_name()} has one class ({classes[0]!r}); "
                "classification needs at least two. Check the target column, or set task: regression."
            )
        self.classes = classes
        index = {c: i for i, c in enumerate(classes)}
        return values.astype(str).map(index).astype("int64")

    # ---- fitting ----
    def _prepare(self) -> None:
        """Read the table, draw the splits and fit the preprocessing on the training rows (once)."""
        if self._rows is not None:
            return
        hp = self.hparams
        frame, fixed_test = self.read()
        categorical, continuous = self._columns(frame)
        frame = numeric(frame, continuous, self.source_name())
        y = self._encode_target(frame)
        self.task = hp.task or ("regression" if y.dtype.kind == "f" else "classification")
        rows = frame[[*continuous, *categorical]].assign(**{TARGET + "__y": y.to_numpy()})
        self._split_rows = self._splits(y.to_numpy(), fixed_test)
        train = rows.iloc[self._split_rows["train"]]
        if self.preprocessor is None:  # not restored from a checkpoint: fit on the training rows
            self.preprocessor = TablePreprocessor(continuous, categorical, hp.numeric_transform, hp.seed).fit(train)
            if self.task == "regression":
                target = train[TARGET + "__y"].to_numpy()
                self.target_mean, self.target_std = float(target.mean()), float(max(target.std(), 1e-12))
        self._rows = rows

    def _splits(self, y: np.ndarray, fixed_test: np.ndarray | None) -> dict[str, np.ndarray]:
        hp = self.hparams
        stratify = self.task == "classification"
        everything = np.arange(len(y))
        if fixed_test is not None:
            rest, test = everything[~fixed_test], everything[fixed_test]
        else:
            rest, test = train_test_split(
                everything, test_size=hp.test_fraction, random_state=hp.seed, stratify=y if stratify else None
            )
        if hp.num_folds is not None:
            folds = StratifiedKFold if stratify else KFold
            cut = folds(hp.num_folds, shuffle=True, random_state=hp.seed).split(rest, y[rest] if stratify else None)
            train_idx, val_idx = list(cut)[hp.fold]
            train, val = rest[train_idx], rest[val_idx]
        else:
            share = hp.val_fraction * len(y) / len(rest)  # val_fraction is a share of all rows
            train, val = train_test_split(
                rest, test_size=share, random_state=hp.seed, stratify=y[rest] if stratify else None
            )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    def _fitted(self) -> TablePreprocessor:
        if self.preprocessor is None:  # not restored from a checkpoint (``recipe`` restores it before reading sizes)
            self._prepare()
        return self.preprocessor

    # ---- data values (core.data_values) ----
    @property
    def target_kind(self) -> str:
        self._fitted()
        return self.task

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.target_kind == "classification" else None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return tuple(self.classes) if self.target_kind == "classification" else None

    @property
    def num_continuous(self) -> int:
        return self._fitted().num_continuous

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return self._fitted().cardinalities

    # ---- what a model may take from the training split ----
    @property
    def target_standardization(self) -> tuple[float, float] | None:
        """``(mean, std)`` of the training targets for regression (in target units), ``None`` for classes."""
        return (self.target_mean, self.target_std) if self.target_kind == "regression" else None

    @property
    def train_continuous(self) -> torch.Tensor:
        """The preprocessed numbers of the training rows (N, num_continuous): bins of number embeddings."""
        return self._split("train").x_num

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split; ``None`` for regression."""
        if self.target_kind != "classification":
            return None
        return sampling.balanced_loss_weights(self._split("train").targets, len(self.classes))

    def raw_split(self, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows of ``split`` as read (numbers as floats, categories as given, gaps kept) and their targets
        (class indices, or values in target units): what another learner, such as gradient boosting, is compared on."""
        self._prepare()
        rows = self._rows.iloc[self._split_rows[split]]
        return rows.drop(columns=TARGET + "__y"), rows[TARGET + "__y"].to_numpy()

    # ---- checkpoint ----
    def state_dict(self) -> dict[str, Any]:
        self._fitted()
        return {
            "preprocessor": self.preprocessor.state_dict(),
            "task": self.task,
            "classes": self.classes,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.preprocessor = TablePreprocessor([], [])
        self.preprocessor.load_state_dict(state_dict["preprocessor"])
        self.task, self.classes = state_dict["task"], list(state_dict["classes"])
        self.target_mean, self.target_std = state_dict["target_mean"], state_dict["target_std"]
        self._tensors = {}  # encode again with the restored preprocessing

    # ---- loaders ----
    def setup(self, stage: str) -> None:
        self._fitted()  # a data source error surfaces here, before any loop starts

    def _split(self, split: str) -> TableBatches:
        if split not in self._tensors:
            prep = self._fitted()
            if split == "predict" and self.hparams.predict_path is not None:
                source = self.resolve(self.hparams.predict_path)
                frame = read_table(source)
                missing = [c for c in [*prep.continuous, *prep.categorical] if c not in frame.columns]
                if missing:
                    raise MisconfigurationException(
                        f"{source} lacks the column(s) {', '.join(missing)} the model was trained on. Add them "
                        "(empty values are allowed)."
                    )
                x_num, x_cat = prep.transform(numeric(frame, prep.continuous, source))
                self._tensors[split] = TableBatches(x_num, x_cat, None)
            else:
                self._prepare()
                rows = self._rows.iloc[self._split_rows["test" if split == "predict" else split]]
                x_num, x_cat = prep.transform(rows)
                y = rows[TARGET + "__y"].to_numpy()
                targets = torch.from_numpy(y.astype(np.float32 if self.task == "regression" else np.int64))
                self._tensors[split] = TableBatches(x_num, x_cat, None if split == "predict" else targets)
        return self._tensors[split]

    def _loader(self, split: str) -> DataLoader:
        data, hp = self._split(split), self.hparams
        train = split == "train"
        weights = None
        if train and hp.balance and self.task == "classification":
            weights = sampling.class_weights(data.targets, len(self.classes))
        sampler = EpochSampler(
            len(data),
            **processes(self.trainer),
            shuffle=train,
            seed=shuffle_seed(hp.shuffle_seed),
            weights=weights,
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            drop_last=train and len(data) > hp.batch_size,  # never drop the only batch of a small table
        )
        return batch_loader(data, sampler)


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _infer_task(values: pd.Series, max_classes: int) -> str:
    if not _is_numeric(values):
        return "classification"
    integral = values.dtype.kind in "iu" or bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    return "classification" if integral and values.nunique() <= max_classes else "regression"


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float, np.number)) else (1, 0, str(value))

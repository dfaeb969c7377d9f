"""Preprocessing of table columns, fitted on the training rows and applied to any rows, its state plain data.

Categories become indices ``1..n`` in the order of the sorted training values; index 0 is kept for a value never
seen in training and for a missing one, so new data always encodes. Numbers missing in a column that had missing
values in training are filled with the training median and flagged in an indicator column (1 = was missing);
a column complete in training is filled with its median without an indicator (the network never learned one).
Numbers are then standardised with the training mean and std, or mapped to a normal distribution by scikit-learn's
``QuantileTransformer`` fitted on the training rows (robust to heavy tails and outliers, as in the TabM paper).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import QuantileTransformer


class TablePreprocessor:
    """Encode categorical and continuous columns of a ``DataFrame`` into ``(x_num, x_cat)`` tensors.

    Args:
        continuous: Numeric columns, in order.
        categorical: Categorical columns, in order.
        numeric_transform: ``standard`` (training mean and std) or ``quantile`` (to a normal distribution).
        seed: Seed of the quantile transformer's subsampling (used on more than 100,000 training rows).
    """

    def __init__(
        self,
        continuous: list[str],
        categorical: list[str],
        numeric_transform: Literal["standard", "quantile"] = "standard",
        seed: int = 0,
    ) -> None:
        self.continuous, self.categorical = list(continuous), list(categorical)
        self.numeric_transform, self.seed = numeric_transform, seed
        self.vocabularies: list[list[str]] = []
        self.medians: list[float] = []
        self.flagged: list[str] = []  # continuous columns that get a missing-value indicator
        self.mean: list[float] = []
        self.std: list[float] = []
        self.quantiles: list[list[float]] | None = None  # (n_quantiles, n_continuous) of the fitted transformer
        self.references: list[float] | None = None
        self.fitted = False

    @property
    def num_continuous(self) -> int:
        """Numeric columns of the output: the continuous columns, then one indicator per flagged column."""
        return len(self.continuous) + len(self.flagged)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Indices per categorical column, the unseen/missing index 0 included."""
        return tuple(len(v) + 1 for v in self.vocabularies)

    def fit(self, train: pd.DataFrame) -> TablePreprocessor:
        """Fit every statistic on ``train``, the training rows only."""
        self.vocabularies = [sorted(set(train[c].dropna().astype(str))) for c in self.categorical]
        numbers = train[self.continuous].astype("float64")
        self.medians = [float(v) if np.isfinite(v) else 0.0 for v in numbers.median()]
        self.flagged = [c for c in self.continuous if numbers[c].isna().any()]
        filled = numbers.fillna(dict(zip(self.continuous, self.medians, strict=True))).to_numpy()
        if self.numeric_transform == "quantile" and len(self.continuous):
            transformer = QuantileTransformer(
                output_distribution="normal", n_quantiles=min(1000, len(train)), random_state=self.seed
            ).fit(filled)
            self.quantiles = transformer.quantiles_.tolist()
            self.references = transformer.references_.tolist()
        else:
            std = filled.std(axis=0) if len(filled) else np.ones(len(self.continuous))
            self.mean = filled.mean(axis=0).tolist() if len(filled) else [0.0] * len(self.continuous)
            self.std = np.where(std > 1e-12, std, 1.0).tolist()  # a constant column stays constant, not NaN
        self.fitted = True
        return self

    def _quantile_transformer(self) -> QuantileTransformer:
        # Rebuilt from its fitted arrays: the state holds lists, never a pickled scikit-learn object.
        transformer = QuantileTransformer(output_distribution="normal", n_quantiles=len(self.references))
        transformer.quantiles_ = np.asarray(self.quantiles)
        transformer.references_ = np.asarray(self.references)
        transformer.n_features_in_ = len(self.continuous)
        return transformer

    def transform(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_num`` (N, num_continuous) float32 and ``x_cat`` (N, n_categorical) int64 of ``frame``'s rows."""
        if not self.fitted:
            raise RuntimeError("TablePreprocessor.fit() must run before transform()")
        numbers = frame[self.continuous].astype("float64")
        missing = numbers[self.flagged].isna().to_numpy(dtype=np.float32)  # (N, n_flagged)
        filled = numbers.fillna(dict(zip(self.continuous, self.medians, strict=True))).to_numpy()
        if self.quantiles is not None:
            scaled = self._quantile_transformer().transform(filled)
        else:
            scaled = (filled - np.asarray(self.mean)) / np.asarray(self.std)
        x_num = torch.from_numpy(np.concatenate([scaled.astype(np.float32), missing], axis=1).reshape(len(frame), -1))
        codes = []
        for column, vocabulary in zip(self.categorical, self.vocabularies, strict=True):
            index = {value: i + 1 for i, value in enumerate(vocabulary)}
            values = frame[column]
            encoded = [0 if pd.isna(v) else index.get(str(v), 0) for v in values]  # 0: missing or unseen
            codes.append(np.asarray(encoded, dtype=np.int64))
        x_cat = torch.from_numpy(np.stack(codes, axis=1) if codes else np.zeros((len(frame), 0), dtype=np.int64))
        return x_num, x_cat

    def state_dict(self) -> dict[str, Any]:
        keys = ("continuous", "categorical", "numeric_transform", "seed", "vocabularies", "medians", "flagged")
        state = {key: getattr(self, key) for key in keys}
        return {**state, "mean": self.mean, "std": self.std, "quantiles": self.quantiles, "references": self.references}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self.fitted = True

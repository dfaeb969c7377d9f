"""UCI Adult income: the table the tabular papers report, downloaded by ``prepare_data``."""

from __future__ import annotations

import os
import urllib.request
from typing import Any

import numpy as np
import pandas as pd
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.tabular import TabularDataModule


class AdultDataModule(TabularDataModule):
    """UCI Adult (48,842 people; does income exceed $50k?), downloaded into ``data_dir/adult`` by ``prepare_data``.

    ``adult.data`` gives the training and validation rows, ``adult.test`` the official test split (its first line
    is a note, its labels end with a full stop). ``?`` marks a missing value.

    Args:
        url: Folder the two files are downloaded from.
        target: The target column (the dataset's ``income``).
        categorical: Categorical columns; ``None``: the dataset's eight.
        continuous: Numeric columns; ``None``: the dataset's six.
        **kwargs: Options of :class:`TabularDataModule` (the columns and target are the dataset's).
    """

    COLUMNS = (
        "age workclass fnlwgt education education_num marital_status occupation relationship race sex capital_gain "
        "capital_loss hours_per_week native_country income"
    ).split()
    NUMBERS = ("age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week")
    FILES = ("adult.data", "adult.test")

    def __init__(
        self,
        url: str = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult",
        target: str = "income",
        categorical: list[str] | None = None,
        continuous: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Explicit arguments, not kwargs.setdefault: the CLI passes every base-class default by name.
        if categorical is None:
            categorical = [c for c in self.COLUMNS if c not in self.NUMBERS and c != target]
        continuous = list(self.NUMBERS) if continuous is None else continuous
        super().__init__(target=target, categorical=categorical, continuous=continuous, **kwargs)
        self.url = url

    def folder(self) -> str:
        return os.path.join(self.data_dir, "adult")

    def prepare_data(self) -> None:
        os.makedirs(self.folder(), exist_ok=True)
        for name in self.FILES:
            destination = os.path.join(self.folder(), name)
            if not os.path.isfile(destination):
                try:
                    urllib.request.urlretrieve(f"{self.url}/{name}", destination + ".part")
                except OSError as err:
                    raise MisconfigurationException(
                        f"cannot download {self.url}/{name} ({err}). Download it by hand into {self.folder()}."
                    ) from err
                os.replace(destination + ".part", destination)  # no half-written file is mistaken for a download

    def _read_file(self, name: str) -> pd.DataFrame:
        path = os.path.join(self.folder(), name)
        if not os.path.isfile(path):
            raise MisconfigurationException(f"{path} does not exist. Run `recipe fit` with network access once.")
        frame = pd.read_csv(
            path, header=None, names=self.COLUMNS, skipinitialspace=True, na_values="?", comment="|"
        ).dropna(subset=["income"])
        frame["income"] = frame["income"].str.rstrip(".")  # adult.test writes '>50K.'
        return frame

    def read(self) -> tuple[pd.DataFrame, np.ndarray | None]:
        train, test = (self._read_file(name) for name in self.FILES)
        test_mask = np.r_[np.zeros(len(train), dtype=bool), np.ones(len(test), dtype=bool)]
        return pd.concat([train, test], ignore_index=True), test_mask

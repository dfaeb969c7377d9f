"""Small tables in the real formats, generated offline: a CSV with categories and missing values, UCI Adult's two
files and California housing's ``housing.csv``, at the paths the tabular recipes read under ``data_dir``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_table(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """A learnable table: ``colour`` (with gaps), ``size`` and ``weight`` (with gaps) decide ``label`` (a/b)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], rows).astype(object)
    size = rng.normal(10.0, 3.0, rows)
    weight = rng.normal(50.0, 10.0, rows)
    label = np.where((size > 10.0) ^ (colour == "red"), "a", "b")
    colour[rng.random(rows) < 0.1] = None
    weight[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame({"colour": colour, "size": size, "weight": weight, "label": label})


def write_table(folder: Path, rows: int = 120, name: str = "table.csv") -> Path:
    """Write :func:`make_table` as a CSV into ``folder``; returns its path."""
    path = Path(folder) / name
    make_table(rows).to_csv(path, index=False)
    return path


ADULT_ROW = (
    "{age}, Private, 77516, Bachelors, 13, Never-married, {job}, Not-in-family, White, Male, {gain}, 0, 40, ?, {y}"
)


def write_adult(root: Path, rows: int = 60) -> None:
    """``root/adult/adult.data`` and ``adult.test`` in UCI's format (a note line, ``?`` gaps, ``>50K.`` labels)."""
    folder = Path(root) / "adult"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, suffix, head in (("adult.data", "", ""), ("adult.test", ".", "|1x3 Cross validator\n")):
        lines = []
        for i in range(rows):
            rich = i % 2 == 0
            job = "?" if i % 7 == 0 else rng.choice(["Adm-clerical", "Exec-managerial", "Sales"])
            lines.append(
                ADULT_ROW.format(
                    age=30 + 20 * rich + i % 5, job=job, gain=5000 * rich, y=(">50K" if rich else "<=50K") + suffix
                )
            )
        (folder / name).write_text(head + "\n".join(lines) + "\n")


def write_housing(root: Path, rows: int = 80) -> Path:
    """``root/housing.csv`` with the columns of the California housing file (some ``total_bedrooms`` empty)."""
    rng = np.random.default_rng(0)
    income = rng.uniform(1.0, 10.0, rows)
    frame = pd.DataFrame(
        {
            "longitude": rng.uniform(-124.0, -114.0, rows),
            "latitude": rng.uniform(32.0, 42.0, rows),
            "housing_median_age": rng.integers(1, 52, rows).astype(float),
            "total_rooms": rng.integers(100, 5000, rows).astype(float),
            "total_bedrooms": np.where(rng.random(rows) < 0.1, np.nan, rng.integers(20, 1000, rows)),
            "population": rng.integers(50, 3000, rows).astype(float),
            "households": rng.integers(20, 1000, rows).astype(float),
            "median_income": income,
            "median_house_value": 40000.0 * income + rng.normal(0, 20000, rows),
            "ocean_proximity": rng.choice(["<1H OCEAN", "INLAND", "NEAR BAY", "NEAR OCEAN", "ISLAND"], rows),
        }
    )
    path = Path(root) / "housing.csv"
    frame.to_csv(path, index=False)
    return path


def write_tabular_fakes(root: Path) -> None:
    """Every file the tabular recipes read under ``--data.init_args.data_dir=root``."""
    write_adult(root)
    write_housing(root)

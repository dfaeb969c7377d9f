"""Each tabular recipe against scikit-learn's histogram gradient boosting on the same rows, side by side.

    uv run python benchmarks/tabular_vs_gbdt.py                       # the bundled sets: breast cancer, wine, diabetes
    uv run python benchmarks/tabular_vs_gbdt.py --housing housing.csv # adds California housing (RMSE in $100k)

The recipe trains as ``recipe fit`` would and is tested on its best-validation checkpoint. Gradient boosting
(``HistGradientBoostingClassifier`` / ``Regressor`` with native categories and missing values, default settings,
``random_state=0``) fits the same training rows, unpreprocessed, and is scored on the same test rows with the same
metrics. Both run in this process, one after the other, on the same threads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score, roc_auc_score

from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def boosting(dm, classification: bool) -> tuple[dict[str, float], float]:
    x_train, y_train = dm.raw_split("train")
    x_test, y_test = dm.raw_split("test")
    for frame in (x_train, x_test):
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = frame[column].astype("category")
    categories = {c: x_train[c].cat.categories for c in x_train.select_dtypes("category")}
    for column, known in categories.items():  # the same codes in both splits
        x_test[column] = pd.Categorical(x_test[column], categories=known)
    model = (HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor)(
        categorical_features="from_dtype", random_state=0
    )
    start = time.perf_counter()
    model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    if not classification:
        predicted = model.predict(x_test)
        return {"rmse": mean_squared_error(y_test, predicted) ** 0.5, "r2": r2_score(y_test, predicted)}, seconds
    probs = model.predict_proba(x_test)
    auroc = (
        roc_auc_score(y_test, probs[:, 1]) if probs.shape[1] == 2 else roc_auc_score(y_test, probs, multi_class="ovr")
    )
    predicted = probs.argmax(1)
    return {
        "acc": accuracy_score(y_test, predicted),
        "auroc": auroc,
        "f1": f1_score(y_test, predicted, average="macro"),
    }, seconds


def recipe(name: str, extra: list[str]) -> tuple[dict[str, float], float, object]:
    start = time.perf_counter()
    cli = main(["fit", "--config", f"tabular/{name}", *QUIET, *extra])
    seconds = time.perf_counter() - start
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    keys = ("acc", "auroc", "f1") if cli.datamodule.target_kind == "classification" else ("rmse", "r2")
    return {k: float(result[f"test/{k}"]) for k in keys}, seconds, cli.datamodule


def row(label: str, metrics: dict[str, float], seconds: float) -> str:
    return f"  {label:28s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"  ({seconds:.1f} s)"


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--housing", help="California housing CSV (housing.csv) to add to the comparison")
    args = parser.parse_args()
    jobs = [("breast_cancer", []), ("wine", []), ("diabetes", [])]
    if args.housing:
        jobs.append(("california_housing", [f"--data.init_args.path={args.housing}"]))
    torch.manual_seed(0)
    np.random.seed(0)
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the runs' directories go to a scratch folder
        for name, extra in jobs:
            deep, deep_seconds, dm = recipe(name, extra)
            gbdt, gbdt_seconds = boosting(dm, dm.target_kind == "classification")
            lines += [f"tabular/{name} (test split, {len(dm.raw_split('test')[1])} rows)",
                      row("recipe (fit; the first: + imports)", deep, deep_seconds),
                      row("HistGradientBoosting (fit)", gbdt, gbdt_seconds)]  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    run()

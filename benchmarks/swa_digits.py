"""SWA against the last iterate on digits, over seeds: ``uv run python benchmarks/swa_digits.py [seeds...]``.

For each seed it trains ``vision/digits_swa`` once and evaluates both ends of that run: the SWA model the run
hands back, and the raw last iterate kept in ``last.ckpt`` for resuming. The plain ``vision/digits`` recipe (OneCycle
annealed to zero, no averaging) runs beside it as the baseline the other callback recipes are compared with.
Numbers are validation NLL/accuracy and test accuracy.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

import torch

from callbacks import SWA
from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def evaluate(cli) -> dict[str, float]:
    val = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {"val_nll": val["val/loss"], "val_acc": val["val/acc"], "test_acc": test["test/acc"]}


def run(seed: int) -> dict[str, dict[str, float]]:
    results = {}
    fit = main(["fit", "--config", "vision/digits_swa", f"--seed_everything={seed}", *QUIET])
    swa = next(c for c in fit.trainer.callbacks if isinstance(c, SWA))
    results["swa"] = evaluate(fit)
    last = torch.load(fit.trainer.checkpoint_callback.last_model_path, weights_only=False)
    fit.model.load_state_dict(last["callbacks"][swa.state_key]["live_state_dict"])
    results["last iterate"] = evaluate(fit)
    baseline = main(["fit", "--config", "vision/digits", f"--seed_everything={seed}", *QUIET])
    results["digits.yaml"] = evaluate(baseline)
    return results


def main_(seeds: list[int]) -> None:
    table: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        for seed in seeds:
            for name, numbers in run(seed).items():
                table.setdefault(name, []).append(numbers)
                print(f"seed {seed} {name:13s} " + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items()), flush=True)
    print("\nmean over seeds", seeds)
    for name, rows in table.items():
        means = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(f"{name:13s} " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))


if __name__ == "__main__":
    main_([int(s) for s in sys.argv[1:]] or [0, 1, 2])

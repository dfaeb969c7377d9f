"""SWA against the last iterate on digits, over seeds: ``uv run python benchmarks/swa_digits.py [seeds...]``.

For each seed it trains ``vision/digits_swa`` once and evaluates both ends of that run: the SWA model the run
hands back, and the raw last iterate kept in ``last.ckpt`` for resuming. The plain ``vision/digits`` recipe (OneCycle
annealed to zero, no averaging) runs beside it as the baseline the other callback recipes are compared with.
Numbers are validation NLL/accuracy and test accuracy.
"""

from __future__ import annotations

import torch
from seed_table import print_seed_table, seeds_from_argv

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


if __name__ == "__main__":
    print_seed_table(run, seeds_from_argv(), width=13)

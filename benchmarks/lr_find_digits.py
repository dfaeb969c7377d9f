"""The LR range test against digits.yaml's hand-set LR: ``uv run python benchmarks/lr_find_digits.py [seeds...]``.

For each seed it fits ``vision/digits_lr_find`` once per suggestion method (the range test is the same for all three,
so their picks come from one test; each method then trains with its own pick) and ``vision/digits`` (one-cycle
``max_lr`` 3e-3) as the baseline. Reported: the picked ``max_lr``, the last epoch's ``val/acc`` and the ``test/acc``
of ``recipe test`` on the best checkpoint (``val/acc``-monitored, as both recipes configure it).
"""

from __future__ import annotations

from seed_table import print_seed_table, seeds_from_argv

from callbacks.lr_finder import LRFinder
from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
METHODS = ("valley", "steep", "minimum/10")


def fit_and_test(recipe: str, seed: int, *extra: str) -> dict[str, float]:
    fit = main(["fit", "--config", recipe, f"--seed_everything={seed}", *QUIET, *extra])
    finder = next((c for c in fit.trainer.callbacks if isinstance(c, LRFinder)), None)
    lr = finder.history[0].suggestion if finder else fit.trainer.optimizers[0].param_groups[0]["max_lr"]
    best = fit.trainer.checkpoint_callback.best_model_path
    test = main(["test", "--config", recipe, *QUIET, *extra, "--ckpt_path", best])
    return {
        "max_lr": lr,
        "val_acc": float(fit.trainer.callback_metrics["val/acc"]),
        "test_acc": float(test.trainer.callback_metrics["test/acc"]),
    }


def run(seed: int) -> dict[str, dict[str, float]]:
    results = {}
    for method in METHODS:
        flag = f"--trainer.callbacks.init_args.method={method}"
        results[f"lr_find {method}"] = fit_and_test("vision/digits_lr_find", seed, flag)
    results["digits.yaml"] = fit_and_test("vision/digits", seed)
    return results


if __name__ == "__main__":
    print_seed_table(run, seeds_from_argv(), width=19)

"""Pseudo-labelling against labelled-only training on digits with 10% of the training labels, over seeds:
``uv run python benchmarks/pseudo_label_digits.py [seeds...]``.

Both arms run ``vision/digits_pseudo_label`` (116 labelled training images, the other 1,034 an unlabelled pool; the
validation and test splits of ``vision/digits``; 600 steps): the labelled-only arm with ``start_epoch`` beyond the
run, so the callback never labels and the two differ in the pseudo-labels alone. The seed is
``--seed_everything`` (weights, order, augmentation); the split and the labelled draw are the recipe's (data seed 0),
as in the other digits benchmarks. Numbers: validation and test accuracy of the final weights, test accuracy of the
best-val/acc checkpoint, and the pseudo-labels in use at the end with the share that equal the held-back labels.
"""

from __future__ import annotations

import statistics

from seed_table import print_seed_table, seeds_from_argv

from recipes.cli import main

RECIPE = "vision/digits_pseudo_label"
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
NEVER = ["--trainer.callbacks.init_args.start_epoch=1000000"]  # labelled only: the same run, no pseudo-labels
ARMS = {"pseudo-labelled": [], "labelled only": NEVER}


def run_arm(seed: int, flags: list[str]) -> dict[str, float]:
    fit = main(["fit", "--config", RECIPE, f"--seed_everything={seed}", *QUIET, *flags])
    trainer, dm = fit.trainer, fit.datamodule
    numbers = {"val_acc": float(trainer.callback_metrics["val/acc"])}
    # Read before testing "best": restoring a checkpoint restores the DataModule's pseudo-labels of that epoch too.
    numbers["pseudo"] = len(dm.pseudo_labels[0])
    numbers["pseudo_acc"] = dm.pseudo_label_accuracy() or 0.0
    numbers["test_acc"] = trainer.test(fit.model, datamodule=dm, verbose=False)[0]["test/acc"]
    numbers["test_acc_best"] = trainer.test(fit.model, datamodule=dm, ckpt_path="best", verbose=False)[0]["test/acc"]
    return numbers


def run(seed: int) -> dict[str, dict[str, float]]:
    return {name: run_arm(seed, flags) for name, flags in ARMS.items()}


if __name__ == "__main__":
    seeds = seeds_from_argv()
    rows: dict[str, list[float]] = {name: [] for name in ARMS}

    def recorded(seed: int) -> dict[str, dict[str, float]]:
        results = run(seed)
        for name, numbers in results.items():
            rows[name].append(numbers["test_acc"])
        return results

    print_seed_table(recorded, seeds, width=16)
    mean = {name: statistics.mean(values) for name, values in rows.items()}
    print(
        f"\ndigits, 10% of training labels, test acc (final weights) over seeds {seeds}: pseudo-labelled "
        f"{mean['pseudo-labelled']:.4f} vs labelled only {mean['labelled only']:.4f} "
        f"({100 * (mean['pseudo-labelled'] - mean['labelled only']):+.2f} points); per seed "
        + ", ".join(f"{p:.4f}/{b:.4f}" for p, b in zip(rows["pseudo-labelled"], rows["labelled only"], strict=True))
    )

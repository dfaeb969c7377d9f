"""Pruned against dense digits, over seeds: ``uv run python benchmarks/pruning_digits.py [seeds...]``.

For each seed it trains ``vision/digits_pruned`` (80% of conv/linear weights zeroed) and the dense ``vision/digits``
with the same seed, then runs ``recipe test --ckpt_path`` on each run's checkpoint through the dense recipe, so the
pruned checkpoint is tested without the pruning callback or its state. The pruned run keeps its final weights
(``last.ckpt``, which is also its "best": the recipe does not monitor); the dense run is tested on both its
best-val/acc and its last checkpoint. Sparsity is measured by counting zeros in the tested checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from seed_table import print_seed_table, seeds_from_argv

from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def sparsity(checkpoint: Path) -> float:
    """Zeros among the conv/linear weights (the tensors Pruning takes by default) of a checkpoint."""
    weights = torch.load(checkpoint, weights_only=False)["state_dict"]
    tensors = [w for name, w in weights.items() if name.endswith(".weight") and w.ndim >= 2]
    return sum(int((w == 0).sum()) for w in tensors) / sum(w.numel() for w in tensors)


def test_acc(checkpoint: Path) -> float:
    test = main(["test", "--config", "vision/digits", *QUIET, "--ckpt_path", str(checkpoint)])
    return float(test.trainer.callback_metrics["test/acc"])


def run(recipe: str, seed: int) -> dict[str, float]:
    root = f"runs/{recipe.replace('/', '_')}_seed{seed}"
    fit = main(["fit", "--config", recipe, f"--seed_everything={seed}", f"--trainer.default_root_dir={root}", *QUIET])
    folder = Path(fit.trainer.checkpoint_callback.dirpath)
    last = folder / "last.ckpt"
    numbers = {"val_acc": float(fit.trainer.callback_metrics["val/acc"]), "test_acc": test_acc(last)}
    if fit.trainer.checkpoint_callback.monitor is not None:
        numbers["test_acc_best"] = test_acc(Path(fit.trainer.checkpoint_callback.best_model_path))
    numbers["sparsity"] = sparsity(last)
    return numbers


def run_both(seed: int) -> dict[str, dict[str, float]]:
    return {recipe: run(recipe, seed) for recipe in ("vision/digits_pruned", "vision/digits")}


if __name__ == "__main__":
    print_seed_table(run_both, seeds_from_argv())

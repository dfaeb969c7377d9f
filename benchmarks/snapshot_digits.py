"""The ``vision/digits_snapshot`` recipe over seeds: the snapshot ensemble against its best single member.

Each seed runs ``recipe fit --config vision/digits_snapshot --seed_everything=N --trainer.logger=false`` and reads
the last epoch's ``val/ensemble_*`` and ``val/snapshot_<k>_*`` metrics, then runs ``recipe test --ckpt_path
<last.ckpt>`` on the held-out test split, which evaluates the ensemble stored in the checkpoint. "best" is the best
member on that split (highest accuracy and, separately, lowest NLL), an upper bound on any one member chosen with
hindsight; "last" is the last snapshot, the final weights a single run of the same schedule would keep. Run folders
go to a temporary directory.

    uv run python benchmarks/snapshot_digits.py
    uv run python benchmarks/snapshot_digits.py --seeds 0 1 2 --recipe-arg=--trainer.max_epochs=20

Arguments:
    --seeds        Seeds to run. Default: 0 1 2.
    --recipe       Recipe name or path. Default: vision/digits_snapshot.
    --recipe-arg   Extra argument for both ``recipe fit`` and ``recipe test``; repeatable.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from recipes.cli import main

COLUMNS = (
    "seed",
    "val ens acc",
    "val ens nll",
    "val best acc",
    "val best nll",
    "val last acc",
    "val last nll",
    "test ens acc",
    "test ens nll",
    "test best acc",
    "test best nll",
    "test last acc",
    "test last nll",
    "fit s",
)


def _scores(metrics: dict, stage: str) -> tuple[float, ...]:
    """Ensemble, best member and last member (the run's final weights) accuracy and NLL from logged metrics."""
    cycles = sorted(int(k.split("_")[1]) for k in metrics if k.startswith(f"{stage}/snapshot_") and k.endswith("_acc"))
    accs = [float(metrics[f"{stage}/snapshot_{c}_acc"]) for c in cycles]
    nlls = [float(metrics[f"{stage}/snapshot_{c}_nll"]) for c in cycles]
    ensemble = float(metrics[f"{stage}/ensemble_acc"]), float(metrics[f"{stage}/ensemble_nll"])
    return (*ensemble, max(accs), min(nlls), accs[-1], nlls[-1])


def run_seed(recipe: str, seed: int, root: Path, extra: list[str]) -> tuple[float, ...]:
    common = ["--config", recipe, "--trainer.logger=false", "--trainer.enable_progress_bar=false", *extra]
    run_dir = root / f"seed{seed}"
    start = time.perf_counter()
    fit = main(["fit", *common, f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}"])
    seconds = time.perf_counter() - start
    val = _scores(fit.trainer.callback_metrics, "val")
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    test = main(["test", *common, f"--trainer.default_root_dir={run_dir / 'test'}", "--ckpt_path", str(last)])
    return (seed, *val, *_scores(test.trainer.callback_metrics, "test"), seconds)


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="vision/digits_snapshot")
    parser.add_argument("--recipe-arg", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(args.recipe, seed, Path(tmp), args.recipe_arg) for seed in args.seeds]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print(f"| {row[0]} | " + " | ".join(f"{v:.4f}" for v in row[1:-1]) + f" | {row[-1]:.0f} |")
    means = [statistics.mean(column) for column in list(zip(*rows, strict=True))[1:]]
    print("| mean | " + " | ".join(f"{v:.4f}" for v in means[:-1]) + f" | {means[-1]:.0f} |")


if __name__ == "__main__":
    main_cli()

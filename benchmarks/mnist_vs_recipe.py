"""The ``vision/mnist`` recipe against the lean hand-written loop of ``mnist_lean.py``, back to back.

Each repeat trains the lean loop, then builds the recipe through ``recipes.cli.RecipeCLI`` as
``recipe fit --config vision/mnist --data.data_dir DIR --trainer.logger=false`` does (its own Trainer, callbacks
and checkpoints, progress bar included), fits it and tests the best checkpoint on the official test set, as
``recipe test ... --ckpt_path BEST`` does. fp32 runs the recipe as written and the lean loop in fp32; bf16 adds
``--trainer.precision=bf16-mixed`` to the recipe and ``--bf16`` to the lean loop. Alternating the two sides keeps
a neighbour's load on the shared cores from falling on one side only; the medians and their ratio are printed.

Times (wall clock, Python imports excluded):

* lean: its training epochs (the data is already in memory; no validation, no checkpoints);
* recipe ``fit``: the whole ``Trainer.fit`` call, so also reading the idx files, the sanity check, a validation
  pass per epoch and the checkpoints. The ratio recipe / lean uses this one, which is the recipe's whole cost;
* recipe ``epochs``: ``on_train_start`` to ``on_train_end``, the epochs with their validation and checkpoints.

    uv run python benchmarks/mnist_vs_recipe.py --data-dir ../shared/data
    uv run python benchmarks/mnist_vs_recipe.py --data-dir ../shared/data --precision fp32 --repeats 5
    uv run python benchmarks/mnist_vs_recipe.py --data-dir ../shared/data --recipe-arg=--trainer.max_epochs=5

Arguments:
    --data-dir     Folder holding ``MNIST/raw``. Default: ``data``.
    --precision    ``fp32``, ``bf16`` or ``both``. Default: both.
    --repeats      Lean/recipe pairs per precision. Default: 3.
    --recipe-arg   Extra ``recipe fit`` argument, e.g. ``--recipe-arg=--trainer.max_epochs=5``; repeatable.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import mnist_lean
from lightning.pytorch import Callback, LightningModule, Trainer
from overhead import build_recipe, busy_share
from typing_extensions import override

RECIPE = "vision/mnist"


class TrainTimer(Callback):
    """Wall time from ``on_train_start`` to ``on_train_end``: the epochs, without setup and the sanity check."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start


def run_recipe(data_dir: str, overrides: list[str]) -> tuple[float, float, float]:
    """Fit the recipe and test its best checkpoint; return (fit seconds, epochs seconds, test accuracy)."""
    timer = TrainTimer()
    with tempfile.TemporaryDirectory() as root:
        cli = build_recipe(RECIPE, root, f"--data.data_dir={data_dir}", *overrides)
        cli.trainer.callbacks.append(timer)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_seconds = time.perf_counter() - start
        result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return fit_seconds, timer.seconds, result["test/acc"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "both"),
        default="both",
        help="fp32, bf16 (bf16-mixed recipe vs --bf16 lean loop) or both (default: both)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="lean/recipe pairs per precision (default: 3)")
    parser.add_argument("--recipe-arg", action="append", default=[], help="extra `recipe fit` argument; repeatable")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    busy = busy_share()
    if busy is not None:
        print(f"{busy:.0%} of the CPUs busy with other work at start; a busy machine slows both sides alike")
    data = mnist_lean.load_mnist(args.data_dir)
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    rows = []
    for precision in precisions:
        bf16 = precision == "bf16"
        lean_args = mnist_lean.parse_args(["--data-dir", args.data_dir] + (["--bf16"] if bf16 else []))
        overrides = args.recipe_arg + (["--trainer.precision=bf16-mixed"] if bf16 else [])
        runs = []
        for r in range(args.repeats):
            lean_seconds, lean_acc = mnist_lean.train(lean_args, data, lean_args.seed)
            fit_seconds, epoch_seconds, recipe_acc = run_recipe(args.data_dir, overrides)
            runs.append((lean_seconds, lean_acc, fit_seconds, epoch_seconds, recipe_acc))
            print(
                f"[{precision} {r}] lean {lean_seconds:.1f} s, {lean_acc:.2%} | recipe fit {fit_seconds:.1f} s "
                f"(epochs {epoch_seconds:.1f} s), test {recipe_acc:.2%} | ratio {fit_seconds / lean_seconds:.2f}"
            )
        rows.append((precision, *(statistics.median(column) for column in zip(*runs, strict=True))))

    print(
        f"\n== {RECIPE} vs the lean loop: medians of {args.repeats} back-to-back pairs"
        + (f" (recipe args: {' '.join(args.recipe_arg)})" if args.recipe_arg else "")
    )
    print(
        f"   {'precision':<10}{'lean s':>8}{'lean acc':>10}{'fit s':>8}{'epochs s':>10}{'test acc':>10}{'fit/lean':>10}"
    )
    for precision, lean_s, lean_acc, fit_s, epochs_s, acc in rows:
        print(
            f"   {precision:<10}{lean_s:>8.1f}{lean_acc:>10.2%}{fit_s:>8.1f}{epochs_s:>10.1f}{acc:>10.2%}"
            f"{fit_s / lean_s:>10.2f}"
        )


if __name__ == "__main__":
    main()

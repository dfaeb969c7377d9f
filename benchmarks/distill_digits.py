"""Knowledge distillation on digits: ``uv run python benchmarks/distill_digits.py [seeds...]``.

Trains the teacher once (``vision/digits``, CompactResNet, 491k parameters, seed 0), then over seeds 0, 1, 2 the
student of ``vision/digits_distill`` (ConvNet, 24k parameters) twice: alone on the labels, and distilled from the
teacher. Prints test accuracy per run and, last, the means on one line::

    teacher A, student alone B, distilled C

All three are the final weights' accuracy on digits' held-out test split (360 images; one image is 0.28 points).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_accuracy(cli) -> float:
    return cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]


def parameters(cli) -> int:
    return sum(p.numel() for p in cli.model.net.parameters())


def run(seeds: list[int]) -> tuple[float, float, float]:
    teacher = main(["fit", "--config", "vision/digits", "--seed_everything=0", *QUIET])
    teacher_acc = test_accuracy(teacher)
    path = teacher.trainer.checkpoint_callback.last_model_path
    print(f"teacher: {parameters(teacher)} parameters, test accuracy {teacher_acc:.4f}", flush=True)
    alone, distilled = [], []
    for seed in seeds:
        common = ["fit", "--config", "vision/digits_distill", f"--seed_everything={seed}", *QUIET]
        student = main([*common, "--model.init_args.distillation=null"])
        alone.append(test_accuracy(student))
        pupil = main([*common, f"--model.init_args.distillation.teacher={path}"])
        distilled.append(test_accuracy(pupil))
        print(
            f"seed {seed}: student ({parameters(student)} parameters) alone {alone[-1]:.4f}, distilled "
            f"{distilled[-1]:.4f}",
            flush=True,
        )
    return teacher_acc, statistics.mean(alone), statistics.mean(distilled)


if __name__ == "__main__":
    seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2]
    start = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the runs/ directories stay out of the checkout
        try:
            teacher, alone, distilled = run(seeds)
        finally:
            os.chdir(start)
    print(f"teacher {teacher:.4f}, student alone {alone:.4f}, distilled {distilled:.4f}")

"""Losses for imbalanced classes on digits: ``uv run python benchmarks/imbalance_digits.py [seeds...]``.

Digits with class 0 whole and the nine other classes cut to 10% of their training images (about 115 images of 0 and
11-12 of each other digit in training; validation drawn from the same imbalanced pool), the test split left as it is
(balanced, 360 images). Four ways to train ``vision/digits``'s model on it, over seeds 0, 1, 2:

* plain cross-entropy;
* class-weighted cross-entropy (``--model.init_args.class_weighted=true``: weights ``N / (C * count)``);
* balanced sampling (``--data.init_args.balance=true``: every class equally likely in each batch);
* focal loss (``--model.init_args.focal_gamma=2``, Lin et al. 2017).

The score is macro-F1 on the balanced test split (and accuracy beside it), for the final weights. The runs are 150
epochs of 3 batches (450 optimizer steps; the digits recipe takes 540 on the full data).
"""

from __future__ import annotations

import numpy as np
import torch
from seed_table import print_seed_table, seeds_from_argv

from datamodules.vision import DigitsDataModule
from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
VARIANTS = {
    "plain": [],
    "class-weighted": ["--model.init_args.class_weighted=true"],
    "balanced sampling": ["--data.init_args.balance=true"],
    "focal (gamma 2)": ["--model.init_args.focal_gamma=2"],
}


class ImbalancedDigits(DigitsDataModule):
    """Digits whose training pool keeps ``minority_fraction`` of each class but the first (seeded); test untouched.

    Args:
        minority_fraction: Share of the training images kept for classes 1-9.
        **kwargs: :class:`DigitsDataModule`'s arguments.
    """

    def __init__(self, minority_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.minority_fraction = minority_fraction

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().load_split(train)
        if not train:
            return images, labels
        rng = np.random.default_rng(self.hparams.seed)
        keep = []
        for c in range(10):
            members = np.flatnonzero(labels.numpy() == c)
            n = len(members) if c == 0 else max(2, round(self.minority_fraction * len(members)))
            keep += rng.choice(members, n, replace=False).tolist()
        index = torch.as_tensor(sorted(keep))
        return images[index], labels[index]


def run(seed: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, flags in VARIANTS.items():
        cli = main(
            [
                "fit",
                "--config",
                "vision/digits",
                "--data=imbalance_digits.ImbalancedDigits",
                f"--data.init_args.seed={seed}",
                "--data.init_args.translate=1",
                f"--seed_everything={seed}",
                "--trainer.max_epochs=150",
                *QUIET,
                *flags,
            ]
        )
        test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        results[name] = {"test_f1": test["test/f1"], "test_acc": test["test/acc"]}
    return results


if __name__ == "__main__":
    print_seed_table(run, seeds_from_argv(), width=18)

"""Shared by the digits callback benchmarks: run a comparison per seed in a scratch folder, print rows and means."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable


def seeds_from_argv(default: tuple[int, ...] = (0, 1, 2)) -> list[int]:
    return [int(s) for s in sys.argv[1:]] or list(default)


def print_seed_table(run: Callable[[int], dict[str, dict[str, float]]], seeds: list[int], width: int = 20) -> None:
    """Call ``run(seed)`` for each seed (it returns ``{row name: {column: value}}``) and print per seed, then means.

    Runs happen in a temporary folder, so their ``runs/`` directories do not pile up in the checkout."""
    table: dict[str, list[dict[str, float]]] = {}
    start = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            for seed in seeds:
                for name, numbers in run(seed).items():
                    table.setdefault(name, []).append(numbers)
                    cells = "  ".join(f"{k} {v:.4g}" for k, v in numbers.items())
                    print(f"seed {seed} {name:{width}s} {cells}", flush=True)
        finally:
            os.chdir(start)
    print("\nmean over seeds", seeds)
    for name, rows in table.items():
        means = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(f"{name:{width}s} " + "  ".join(f"{k} {v:.4g}" for k, v in means.items()))

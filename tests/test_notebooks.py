"""The notebooks run top to bottom (their training shortened) and their claims hold."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    matplotlib.use("Agg")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    namespace: dict = {}
    for cell in cells:
        source = "".join(cell["source"]).replace("--trainer.max_epochs=10", "--trainer.max_epochs=3")
        exec(compile(source, f"{path.name}", "exec"), namespace)
    if "probs" in namespace:  # the vision quick start: the reloaded model really classifies the test digits
        accuracy = (namespace["probs"].argmax(-1) == namespace["y"]).float().mean().item()
        assert accuracy > 0.9

"""The notebooks: at least one per domain, stored without outputs, and each runs top to bottom offline.

Each notebook runs in a Jupyter kernel of this environment (nbclient; ``python3`` resolves to the interpreter running
the tests), as ``jupyter nbconvert --to notebook --execute`` runs it, in a working folder of its own and with one
torch thread, so two xdist workers run two notebooks side by side without sharing files or cores. A notebook writes
its runs to a temporary folder itself; its small step counts are set in its first code cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
CELL_TIMEOUT = 600  # seconds per cell: a whole notebook takes 30-90 s on a busy 2-core machine


def test_a_notebook_per_domain():
    assert len(NOTEBOOKS) >= 10, f"expected at least 10 notebooks in notebooks/, found {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_without_outputs(path):
    """Outputs are not kept in git (they would go stale): clear them before committing."""
    notebook = json.loads(path.read_text())
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel is not python3"
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name} is stored with outputs or execution counts in cells {dirty}; clear them with "
        f"`uv run jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_offline_and_shows_figures(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # Read by torch when the kernel starts: one intra-op thread per kernel, as each xdist worker has.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The notebook's temporary run folders land under tmp_path, which pytest cleans up.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    start = tmp_path / "cwd"
    start.mkdir()
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(start)}},  # the kernel's working folder
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert images, f"{path.name} ran but showed no figure or image"
    leftovers = {p.name for p in start.iterdir()}
    assert not leftovers, f"{path.name} wrote {sorted(leftovers)} into its working folder instead of a temporary one"

"""The notebooks run top to bottom in a real Jupyter kernel, in their small setting, and show
what they promise (tables and plots); in git their outputs are stripped."""

import os
from pathlib import Path

import pytest

import nbformat
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# What each notebook must display: (output MIME type, text it must contain or None), at least once.
EXPECTED = {
    "quickstart.ipynb": [("text/markdown", "| COREA"), ("image/png", None)],
    "rlcc_training.ipynb": [("image/png", None), ("text/markdown", "| COREA")],
}


def _outputs(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def test_the_expected_notebooks_exist():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped_in_git(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index}"


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_its_small_setting(path, monkeypatch):
    monkeypatch.setenv("COREA_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel sees this machine's devices as a user's would, not the 8 fake CPU devices
    # conftest makes for the sharding tests: with those the notebook builds a data:8 mesh and
    # replicates each model 8 times in host memory (the quickstart's kernel grew to 19 GB).
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    notebook = nbformat.read(path, as_version=4)
    # A cell that raises fails the test with the cell's source and traceback (CellExecutionError).
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = list(_outputs(notebook))
    assert not [o for o in outputs if o.output_type == "error"]
    for mime, text in EXPECTED[path.name]:
        shown = [o for o in outputs if mime in o.get("data", {})]
        if text is not None:
            shown = [o for o in shown if text in o["data"][mime]]
        assert shown, f"{path.name} displayed no {mime} output" + (f" containing {text!r}" if text else "")

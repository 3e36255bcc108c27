"""Every notebook's code cells run top to bottom (shell `!` lines are the user's setup, skipped)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.real_model  # the quickstart fetches SmolLM2
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    notebook = json.loads(path.read_text())
    namespace: dict = {}
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
        exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)  # noqa: S102
    assert "answer" in namespace and namespace["answer"].num_generated_tokens > 0


def test_there_is_a_notebook():
    assert NOTEBOOKS

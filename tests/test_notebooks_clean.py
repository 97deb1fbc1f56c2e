"""Committed notebooks carry no outputs and start with a papermill parameters cell."""

import json

import pytest

from helpers import paths

NOTEBOOKS = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    dirty = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{notebook.name}: cells {dirty} have outputs; clear them (Edit > Clear All Outputs) and save."


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell(notebook):
    code = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), f"{notebook.name}: tag the first code cell 'parameters'"
    assert "profile_name" in "".join(code[0]["source"])


#: The notebooks whose work runs process pools: the image cache's decoding (01, and 06's twin data) and the
#: metrics' joblib workers (05, 06).
POOL_NOTEBOOKS = ["01_prepare_data.ipynb", "05_compare.ipynb", "06_known_truth.ipynb"]


@pytest.mark.parametrize("name", POOL_NOTEBOOKS)
def test_notebook_with_process_pools_ends_by_releasing_them(name):
    code = [
        cell for cell in json.loads((paths.NOTEBOOKS_DIR / name).read_text())["cells"] if cell["cell_type"] == "code"
    ]
    assert "pools.release_worker_pools()" in "".join(code[-1]["source"]), (
        f"{name}: end with pools.release_worker_pools(), or its kernel waits 2.5 s for the pools' processes at shutdown"
    )

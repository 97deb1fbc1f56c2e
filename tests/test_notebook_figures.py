"""Every figure a notebook cell makes is displayed under Jupyter's inline backend, not only the first one."""

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    "from helpers import figures\nimport matplotlib.pyplot as plt",
    "with figures.paper_style():\n    fig, ax = plt.subplots()\n    ax.plot([0, 1])",
    "with figures.paper_style():\n    fig, ax = plt.subplots()\n    ax.plot([1, 0])",
    "fig = figures.plot_metric_by_pathology(__import__('pandas').DataFrame("
    "{'method': ['gradcam'], 'pathology': ['all'], 'metric': ['hit'], 'mean': [0.5], 'ci_low': [0.4], "
    "'ci_high': [0.6]}), ['hit'], ['gradcam'])",
    "print(len(plt.get_fignums()))",
]


@pytest.mark.slow
def test_every_figure_cell_shows_an_image_and_none_stay_open():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    images = ["image/png" in output.get("data", {}) for cell in notebook.cells[1:4] for output in cell.outputs]
    assert sum(images) == 3, [cell.outputs for cell in notebook.cells[1:4]]
    assert notebook.cells[4].outputs[0]["text"].strip() == "0"  # shown figures are closed, none pile up

"""Every figure a notebook cell makes is displayed under Jupyter's inline backend, not only the first one."""

import base64
import io
from unittest import mock

import matplotlib.pyplot as plt
import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

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


@pytest.mark.slow
def test_a_saved_figure_is_shown_as_its_png_file_once_and_closed(tmp_path):
    """In a kernel, ``show_saved`` displays the exported PNG (its bytes, at the figure's dpi) instead of a second
    rendering by the inline backend; outside one it does nothing."""
    cells = [
        "from helpers import figures\nimport matplotlib.pyplot as plt",
        "with figures.paper_style():\n    fig, ax = plt.subplots(figsize=(2, 1))\n    ax.plot([0, 1])\n"
        f"shown = figures.show_saved(fig, figures.save_figure(fig, 1, 'line', {str(tmp_path)!r})[1])",
        "print(shown, len(plt.get_fignums()))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    shown = [output for output in notebook.cells[1].outputs if "image/png" in output.get("data", {})]
    assert len(shown) == 1, notebook.cells[1].outputs
    png = (tmp_path / "fig1_line.png").read_bytes()
    assert base64.b64decode(shown[0]["data"]["image/png"]) == png
    with Image.open(io.BytesIO(png)) as saved:
        assert shown[0]["metadata"]["image/png"]["width"] == round(saved.width / 3)  # 300 dpi shown at 100
    assert notebook.cells[2].outputs[0]["text"].split() == ["True", "0"]


def test_outside_a_kernel_a_saved_figure_is_left_alone(tmp_path):
    from helpers import figures

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = figures.save_figure(fig, 1, "line", tmp_path)[1]
    assert not figures.show_saved(fig, png)  # the Agg backend
    inline = "module://matplotlib_inline.backend_inline"
    with mock.patch.object(figures.matplotlib, "get_backend", return_value=inline):
        assert not figures.show_saved(fig, png)  # the inline backend, but no kernel: IPython has no shell here
    assert fig.number in plt.get_fignums()
    plt.close(fig)

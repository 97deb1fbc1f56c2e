"""Paper figures: file formats and fonts, and what each plot draws from its inputs."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import figures, labels  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_save_figure_writes_pdf_with_truetype_fonts_and_300_dpi_png(tmp_path):
    fig, ax = plt.subplots(figsize=(figures.ONE_COLUMN, 1))
    ax.set_title("Cardiomegaly")
    pdf, png = figures.save_figure(fig, 3, "example", tmp_path)
    assert (pdf.name, png.name) == ("fig3_example.pdf", "fig3_example.png")
    assert b"/FontFile2" in pdf.read_bytes()  # Type 42: TrueType embedded, not Type 3 outlines
    from PIL import Image

    with Image.open(png) as image:
        assert round(image.info["dpi"][0]) == 300
    first = pdf.read_bytes()
    figures.save_figure(fig, 3, "example", tmp_path)
    assert pdf.read_bytes() == first  # no creation date: same figure, same bytes
    assert not list(tmp_path.glob("*.tmp"))


def test_save_figure_crops_both_files_as_matplotlibs_own_tight_box(tmp_path):
    """One box measured for both files: the PNG never smaller than savefig's own ``bbox_inches="tight"`` (nothing
    cut off) and at most 2% larger on each side (the box comes from a 100-dpi layout, whose text is a little
    wider, savefig's from 300 dpi), with a title and a label sticking out."""
    from PIL import Image

    fig, ax = plt.subplots(figsize=(figures.ONE_COLUMN, 2))
    ax.imshow(np.random.default_rng(0).random((32, 32)))
    ax.set_title("Enlarged Cardiomediastinum, a long title", loc="left")
    ax.set_ylabel("a label left of the axes")
    _, png = figures.save_figure(fig, 1, "crop", tmp_path)
    with figures.paper_style():
        fig.savefig(tmp_path / "tight.png", bbox_inches="tight")
    with Image.open(png) as ours, Image.open(tmp_path / "tight.png") as tight:
        ratio = np.array(ours.size) / np.array(tight.size)
    assert np.all(ratio >= 1) and np.all(ratio <= 1.02), (ours.size, tight.size)
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure

    assert figures._tight_box(fig) != "tight"  # pyplot's figures (all of ours) have an Agg canvas
    bare = Figure()
    FigureCanvasBase(bare)  # a canvas without a renderer: savefig measures each file itself
    assert figures._tight_box(bare) == "tight"


def test_save_figure_embeds_one_font_subset_without_ligatures(tmp_path):
    """matplotlib 3.11 shapes "fl" and "ffl" into ligature glyphs, which the PDF embedded as a second subset of
    the font; a text with its own features keeps them."""
    fig, ax = plt.subplots(figsize=(figures.ONE_COLUMN, 1))
    ax.set_title("lrp_epsilon_plus_flat, shuffled labels")
    kept = ax.set_xlabel("x", fontfeatures=["liga"]) if hasattr(ax.title, "set_fontfeatures") else None
    pdf, _ = figures.save_figure(fig, 1, "ligatures", tmp_path)
    assert pdf.read_bytes().count(b"/FontFile2") == 1
    if kept is not None:
        assert ax.title.get_fontfeatures() == ("-liga",) and kept.get_fontfeatures() == ("liga",)


def test_save_figure_draws_each_file_once_and_writes_the_same_bytes(tmp_path, monkeypatch):
    """``tight_layout`` leaves a placeholder layout engine, with which ``savefig`` drew the figure (resampling
    every image) once more before drawing it into the file: detached while saving, put back after."""
    from matplotlib.image import AxesImage
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    fig, axes = plt.subplots(1, 2, figsize=(figures.ONE_COLUMN, 1.2))
    for ax in axes:
        ax.imshow(np.random.default_rng(0).random((32, 32)))
    fig.tight_layout()
    engine = fig.get_layout_engine()
    assert isinstance(engine, PlaceHolderLayoutEngine)
    with figures.paper_style():
        crop = figures._tight_box(fig)
        plain = {fmt: tmp_path / f"plain.{fmt}" for fmt in ("pdf", "png")}
        for fmt, path in plain.items():
            fig.savefig(path, bbox_inches=crop, **figures.SAVE_OPTIONS[fmt])
    resampled = []
    make_image = AxesImage.make_image
    monkeypatch.setattr(AxesImage, "make_image", lambda self, *a, **k: resampled.append(1) or make_image(self, *a, **k))
    pdf, png = figures.save_figure(fig, 1, "once", tmp_path)
    assert len(resampled) == 2 * 2, "each of the 2 images once per file"
    assert fig.get_layout_engine() is engine
    assert pdf.read_bytes() == plain["pdf"].read_bytes() and png.read_bytes() == plain["png"].read_bytes()


def test_save_table_writes_csv_and_booktabs_latex(tmp_path):
    table = pd.DataFrame({"method": ["gradcam", "lrp_z"], "hit": [0.5, np.nan]})
    csv, tex = figures.save_table(table, tmp_path, "table1_x", caption="A caption")
    assert pd.read_csv(csv).equals(table)
    text = tex.read_text()
    assert "\\toprule" in text and "A caption" in text and "--" in text and "lrp\\_z" in text
    _, tex = figures.save_table(table, tmp_path, "table1_x", caption="Means with 95% CIs & a_b.")
    caption = next(line for line in tex.read_text().splitlines() if line.startswith("\\caption"))
    assert caption == "\\caption{Means with 95\\% CIs \\& a\\_b.}"  # a bare % would comment out the closing brace


def test_cooccurrence_is_conditional_on_the_row():
    positive = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    assert np.allclose(figures.conditional_cooccurrence(positive), [[1, 0.5], [0.5, 1]])


def test_metric_by_pathology_draws_one_series_per_method_with_pooled_last():
    rows = [
        {"pathology": p, "method": m, "metric": "hit", "mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
        for m, v in (("gradcam", 0.4), ("occlusion", 0.7))
        for p in ("Edema", "Cardiomegaly", "all")
    ]
    fig = figures.plot_metric_by_pathology(pd.DataFrame(rows), ["hit"], ["gradcam", "occlusion"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Cardiomegaly", "Edema", "all"]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [figures.method_label("gradcam"), "occlusion (gradient-free reference)"]


def test_randomisation_plot_keeps_stage_order():
    outcome = pd.DataFrame(
        [
            ("gradcam", mode, s, "spearman_abs", v, 0.1)
            for mode in ("cascading", "independent")
            for s, v in (("stem", 0.1), ("classifier", 0.9))
        ],
        columns=["method", "mode", "stage", "similarity", "mean", "std"],
    )
    fig = figures.plot_randomisation(outcome, ["classifier", "stem"], similarities=["spearman_abs"])
    assert len(fig.axes) == 2  # one row per mode
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_ydata()) == [0.9, 0.1]


def test_examples_mark_pathologies_without_positives():
    frame = pd.DataFrame(0.0, index=range(2), columns=list(labels.PATHOLOGIES))
    frame.loc[1, "Edema"] = 1.0
    masks = np.zeros((2, 14, 8, 8), bool)
    fig = figures.plot_examples(np.zeros((2, 8, 8), np.uint8), masks, frame, pathologies=["Edema", "Fracture"])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no positive"]  # Fracture has none; Edema shows its image


def test_paper_style_keeps_the_interactive_mode_a_backend_set_inside_it():
    """The inline backend turns interactive mode on at the first figure; leaving the style must not undo it."""
    was, before = matplotlib.is_interactive(), matplotlib.rcParams["legend.fontsize"]
    try:
        matplotlib.interactive(False)
        with figures.paper_style():
            matplotlib.interactive(True)  # what ipympl / the inline backend do when the first figure is made
        assert matplotlib.is_interactive()
        with figures.paper_style():
            pass
        assert matplotlib.is_interactive()  # and a later context keeps it
        assert matplotlib.rcParams["legend.fontsize"] == before  # the style itself is undone
    finally:
        matplotlib.interactive(was)

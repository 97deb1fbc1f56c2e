"""Paper figures: PDF with embedded TrueType fonts plus 300-dpi PNG, at IEEE column widths."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers import labels
from helpers.io import atomic_path

#: IEEE one- and two-column figure widths, inches.
ONE_COLUMN = 3.5
TWO_COLUMN = 7.16
STYLE = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,  # TrueType fonts embedded: editable text, accepted by IEEE
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
}


#: Readable method names for figures and tables (the paper's rows are zennit analogues of iNNvestigate's analysers).
METHOD_LABELS = {
    "gradcam": "Grad-CAM (head)",
    "gradcam_2x": "Grad-CAM at 2x (transition 3)",
    "gradcam_4x": "Grad-CAM at 4x (transition 2)",
    "lrp_epsilon_plus_flat": "LRP EpsilonPlusFlat",
    "lrp_epsilon_gamma_box": "LRP EpsilonGammaBox",
    "lrp_epsilon_alpha2_beta1_flat": "LRP EpsilonAlpha2Beta1Flat",
    "lrp_z": "zennit analogue of iNNvestigate's LRPZ (LRP-0)",
    "lrp_epsilon": "zennit analogue of iNNvestigate's LRPEpsilon (eps = 1)",
    "lrp_alpha2_beta1": "zennit analogue of iNNvestigate's LRPAlpha2Beta1",
    "lrp_deep_taylor": "zennit analogue of iNNvestigate's DeepTaylor (z+)",
    "occlusion": "occlusion (gradient-free reference)",
    "gradient": "Gradient (saliency)",
    "gradient_x_input": "Gradient x Input",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "prior": "baseline: finding prior",
    "random": "baseline: random map",
    "edge": "baseline: edge map (Sobel)",
}


def method_label(method: str) -> str:
    """The readable name of a method (its registered name when it has none)."""
    return METHOD_LABELS.get(method, method)


@contextlib.contextmanager
def paper_style():
    """Matplotlib settings for every chexplain figure.

    Interactive mode survives the context: Jupyter's inline backend switches it on when the first figure is
    made, inside this context, and ``rc_context`` would switch it off again on exit; pyplot would then never
    display a later figure (the executed notebooks lost every figure after the first).
    """
    interactive = matplotlib.is_interactive()
    try:
        with matplotlib.rc_context(STYLE):
            try:
                yield
            finally:
                interactive = matplotlib.is_interactive()
    finally:
        matplotlib.interactive(interactive)


#: ``savefig``'s options per file: the PDF without a creation date (same figure, same bytes); the PNG at zlib's
#: fastest level, lossless like any other: a 24-panel gallery of 224 px maps encoded in 0.6 s instead of 2.3 s
#: at Pillow's default level 6, the file 10% larger (the 2-core CI machine; plots of lines and bars alike).
SAVE_OPTIONS = {"pdf": {"metadata": {"CreationDate": None}}, "png": {"pil_kwargs": {"compress_level": 1}}}


def save_figure(fig: plt.Figure, number: int, slug: str, folder: str | Path) -> list[Path]:
    """Write ``figN_<slug>.pdf`` and ``.png`` (300 dpi) atomically; returns both paths.

    Both files are cropped to one tight bounding box, measured once: ``savefig``'s own ``bbox_inches="tight"``
    draws the whole figure once more per file only to measure it (a 24-panel gallery saved in 1.9 s instead of
    2.6-3.6 s on the 2-core CI machine), and the layout already made is not made again while saving.
    """
    written = []
    _without_ligatures(fig)
    with paper_style(), _layout_already_made(fig):
        crop = _tight_box(fig)
        for suffix, options in SAVE_OPTIONS.items():
            target = Path(folder) / f"fig{number}_{slug}.{suffix}"
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=suffix, bbox_inches=crop, **options)
            written.append(target)
    return written


def show_saved(fig: plt.Figure, png: str | Path) -> bool:
    """In a Jupyter kernel with the inline backend, show the saved ``png`` in place of ``fig`` and close ``fig``.

    The notebook then shows the exported file itself, at the size the inline backend would (the figure's dpi),
    and the figure is not drawn again for the display (0.3-0.4 s a figure on the 2-core CI machine). Each figure
    appears when it is saved, not at the end of its cell; a figure pyplot does not manage is shown too. Elsewhere
    (a script, another backend) nothing happens. Returns whether the file was shown.
    """
    if "inline" not in matplotlib.get_backend() or not _in_kernel():
        return False
    from IPython.display import Image, display
    from PIL import Image as PILImage

    with PILImage.open(png) as saved:
        width = saved.width
    display(Image(filename=str(png), width=round(width * fig.dpi / STYLE["savefig.dpi"])))
    plt.close(fig)
    return True


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (where ``display`` reaches a notebook)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _without_ligatures(fig: plt.Figure) -> None:
    """Set OpenType ligatures off in every text of ``fig`` that has no font features of its own.

    matplotlib 3.11 shapes text, so "fl" in ``lrp_epsilon_plus_flat`` became a ligature glyph; earlier versions
    never drew one. The PDF then embedded a second subset of the font for those glyphs alone, which fontTools
    makes again from the whole font file: 0.2-0.4 s more per file on the 2-core CI machine. Labels read as
    typed, in both files.
    """
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if hasattr(text, "set_fontfeatures") and text.get_fontfeatures() is None:
            text.set_fontfeatures(["-liga"])


@contextlib.contextmanager
def _layout_already_made(fig: plt.Figure):
    """Detach, while saving, the placeholder layout engine that ``tight_layout`` leaves on a figure.

    With any layout engine ``savefig`` first draws the whole figure without output, so that the engine can lay
    it out, then draws it into the file: the placeholder lays out nothing, and that first draw still resampled
    every image (0.3-0.5 s a file for a 24-panel gallery of 224 px maps on the 2-core CI machine). The files are
    the same bytes. A working engine (constrained layout) is left in place.
    """
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = fig.get_layout_engine()
    if not isinstance(engine, PlaceHolderLayoutEngine):
        yield
        return
    with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)  # with those settings None is no engine, not the one they name
    try:
        yield
    finally:
        fig.set_layout_engine(engine)


def _tight_box(fig: plt.Figure):
    """The figure's tight bounding box with ``savefig.pad_inches`` around it, from its canvas's renderer;
    ``"tight"`` (measured by each save) where the canvas has none."""
    get_renderer = getattr(fig.canvas, "get_renderer", None)
    if get_renderer is None:
        return "tight"
    return fig.get_tightbbox(get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])


def label_rates_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of rows coded positive / uncertain / negative / blank, one row per pathology."""
    codes = {"positive": 1.0, "uncertain": -1.0, "negative": 0.0}
    table = {
        name: {key: float((frame[name] == code).mean()) for key, code in codes.items()} for name in labels.PATHOLOGIES
    }
    rates = pd.DataFrame(table).T
    rates["blank"] = 1.0 - rates.sum(axis=1)
    return rates


def plot_label_rates(frame: pd.DataFrame, reference: dict | None = None) -> plt.Figure:
    """Stacked bars of label codes per pathology; dots mark the real CheXpert positive rate."""
    rates = label_rates_table(frame)
    with paper_style():
        fig, ax = plt.subplots(figsize=(TWO_COLUMN, 2.4))
        colors = {"positive": "#c0392b", "uncertain": "#f39c12", "negative": "#2e86c1", "blank": "#d5d8dc"}
        left = np.zeros(len(rates))
        for key, color in colors.items():
            ax.barh(rates.index, rates[key], left=left, color=color, label=key, height=0.7)
            left += rates[key].to_numpy()
        if reference is not None:
            real = [reference["label_rates"][name]["positive"] for name in rates.index]
            ax.plot(real, rates.index, "k|", markersize=9, label="CheXpert positive rate")
        ax.invert_yaxis()
        ax.set_xlabel("share of images")
        ax.set_xlim(0, 1)
        ax.legend(ncol=5, loc="lower center", bbox_to_anchor=(0.4, 1.0), frameon=False)
        fig.tight_layout()
    return fig


def conditional_cooccurrence(positive: np.ndarray) -> np.ndarray:
    """P(column positive | row positive) from a boolean ``(n, k)`` matrix (NaN for absent rows)."""
    positive = positive.astype(np.float64)
    joint = positive.T @ positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return joint / np.diag(joint)[:, None]


def plot_cooccurrence(frame: pd.DataFrame, reference: dict | None = None) -> plt.Figure:
    """Heatmaps of P(B | A) for positive labels: this dataset, and real CheXpert beside it."""
    panels = {"this dataset": conditional_cooccurrence((frame[list(labels.PATHOLOGIES)] == 1).to_numpy())}
    if reference is not None:
        joint = np.asarray(reference["positive_cooccurrence"]["matrix"])
        panels["CheXpert train.csv"] = joint / np.diag(joint)[:, None]
    import seaborn as sns  # on use, as below: seaborn imports scipy.stats, 1 s of every kernel's start here

    with paper_style():
        fig, axes = plt.subplots(1, len(panels), figsize=(TWO_COLUMN, 3.3), squeeze=False)
        for ax, (title, matrix) in zip(axes[0], panels.items()):
            sns.heatmap(
                matrix,
                ax=ax,
                vmin=0,
                vmax=1,
                cmap="viridis",
                square=True,
                cbar=ax is axes[0, -1],
                xticklabels=labels.PATHOLOGIES,
                yticklabels=labels.PATHOLOGIES if ax is axes[0, 0] else False,
                cbar_kws={"label": "P(column positive | row positive)", "shrink": 0.7},
            )
            ax.set_title(title)
            ax.tick_params(length=0)
        fig.tight_layout()
    return fig


def plot_examples(
    images: np.ndarray,
    masks: np.ndarray,
    frame: pd.DataFrame,
    pathologies: Sequence[str] = labels.LOCALISABLE,
    columns: int = 7,
) -> plt.Figure:
    """One radiograph per pathology (its first positive image) with the ground-truth contour."""
    rows = int(np.ceil(len(pathologies) / columns))
    with paper_style():
        fig, axes = plt.subplots(rows, columns, figsize=(TWO_COLUMN, TWO_COLUMN / columns * rows * 1.12))
        for ax in axes.flat:
            ax.axis("off")
        for ax, name in zip(axes.flat, pathologies):
            positives = np.flatnonzero(frame[name].to_numpy() == 1)
            ax.set_title(name, fontsize=6)
            if len(positives) == 0:
                ax.text(0.5, 0.5, "no positive", ha="center", va="center", transform=ax.transAxes)
                continue
            i, j = positives[0], labels.PATHOLOGIES.index(name)
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            if masks[i, j].any():
                ax.contour(masks[i, j], levels=[0.5], colors="#ff3b30", linewidths=0.6)
        fig.tight_layout(pad=0.3)
    return fig


def plot_history(history: pd.DataFrame) -> plt.Figure:
    """Training loss and validation mean AUROC per epoch (best epoch marked)."""
    with paper_style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(ONE_COLUMN, 1.5))
        left.plot(history["epoch"], history["train_loss"], "o-", color="#34495e", markersize=2)
        left.set(xlabel="epoch", ylabel="training loss (masked BCE)")
        right.plot(history["epoch"], history["val_mean_auroc"], "o-", color="#c0392b", markersize=2)
        best = history["val_mean_auroc"].idxmax()
        right.plot(history.loc[best, "epoch"], history.loc[best, "val_mean_auroc"], "k*", markersize=6, label="best")
        right.set(xlabel="epoch", ylabel="validation mean AUROC")
        right.legend(frameon=False)
        fig.tight_layout()
    return fig


def plot_roc_curves(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, table: pd.DataFrame) -> plt.Figure:
    """One ROC curve per pathology with its AUROC and 95% CI in the title."""
    from sklearn.metrics import roc_curve

    auroc = table[table["metric"] == "AUROC"].set_index("pathology")
    with paper_style():
        fig, axes = plt.subplots(3, 5, figsize=(TWO_COLUMN, 4.6), sharex=True, sharey=True)
        for ax in axes.flat:
            ax.axis("off")
        for j, (ax, name) in enumerate(zip(axes.flat, labels.PATHOLOGIES)):
            ax.axis("on")
            ax.plot([0, 1], [0, 1], color="#bdc3c7", linewidth=0.6)
            keep = mask[:, j] > 0
            row = auroc.loc[name]
            if np.isfinite(row["value"]):
                fpr, tpr, _ = roc_curve(targets[keep, j], probs[keep, j])
                ax.plot(fpr, tpr, color="#c0392b", linewidth=1)
                ax.set_title(f"{name}\n{row['value']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]", fontsize=5.5)
            else:
                ax.set_title(f"{name}\n{row['note']}", fontsize=5.5)
            ax.set_aspect("equal")
        for ax in axes[-1]:
            ax.set_xlabel("false positive rate")
        for ax in axes[:, 0]:
            ax.set_ylabel("true positive rate")
        fig.tight_layout(pad=0.3)
    return fig


def plot_metric_intervals(table: pd.DataFrame, metric: str = "AUROC", references: dict | None = None) -> plt.Figure:
    """Point estimates with 95% CIs per pathology and macro means; dashed lines for published references."""
    rows = table[table["metric"] == metric].reset_index(drop=True)
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN, 3.0))
        y = np.arange(len(rows))
        errors = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]])
        ax.errorbar(
            rows["value"],
            y,
            xerr=np.nan_to_num(errors),
            fmt="o",
            color="#2c3e50",
            markersize=2.5,
            elinewidth=0.8,
            capsize=1.5,
        )
        for k, (name, value) in enumerate((references or {}).items()):
            ax.axvline(value, linestyle="--", linewidth=0.7, color=("#e67e22", "#8e44ad")[k % 2], label=name)
        ax.set_yticks(y, rows["pathology"])
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} (95% bootstrap CI)")
        if references:
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.3, -0.15), fontsize=5)
        fig.tight_layout()
    return fig


def plot_metric_by_pathology(
    summary: pd.DataFrame, metric_names: Sequence[str], methods: Sequence[str], titles: dict | None = None
) -> plt.Figure:
    """One panel per metric: mean and 95% CI per pathology (and pooled, ``all``), one colour per method."""
    import seaborn as sns

    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    with paper_style():
        fig, axes = plt.subplots(len(metric_names), 1, figsize=(TWO_COLUMN, 1.7 * len(metric_names)), squeeze=False)
        for ax, metric in zip(axes[:, 0], metric_names):
            rows = summary[(summary["metric"] == metric) & summary["method"].isin(methods)]
            order = [p for p in labels.PATHOLOGIES if p in set(rows["pathology"])] + ["all"]
            for m, method in enumerate(methods):
                own = rows[rows["method"] == method].set_index("pathology").reindex(order)
                x = np.arange(len(order)) + (m - (len(methods) - 1) / 2) * 0.8 / len(methods)
                _intervals(ax, x, own, palette[method], method_label(method), vertical=True)
            ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
            ax.set_ylabel((titles or {}).get(metric, metric))
            ax.axvline(len(order) - 1.5, color="0.8", linewidth=0.6)
        axes[0, 0].legend(ncol=min(len(methods), 3), frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0))
        fig.tight_layout(pad=0.3)
    return fig


def plot_randomisation(
    outcome: pd.DataFrame,
    stages: Sequence[str],
    similarities: Sequence[str] = ("spearman", "spearman_abs", "ssim_abs", "hog"),
    threshold: float = 0.5,
) -> plt.Figure:
    """Model randomisation per stage: mean similarity to the trained maps (+- one standard deviation over maps),
    one line per method; a row of panels per mode (cascading, independent), a column per similarity.

    ``outcome`` is :func:`helpers.metrics.sanity_outcome`'s table (columns ``method, mode, stage, similarity,
    mean, std``).
    """
    modes = [m for m in ("cascading", "independent") if m in set(outcome["mode"])]
    with paper_style():
        fig, axes = plt.subplots(
            len(modes), len(similarities), figsize=(TWO_COLUMN, 1.7 * len(modes)), sharey=True, squeeze=False
        )
        for row, mode in enumerate(modes):
            for col, similarity in enumerate(similarities):
                ax = axes[row, col]
                chosen = outcome[(outcome["mode"] == mode) & (outcome["similarity"] == similarity)]
                for method, group in chosen.groupby("method", sort=False):
                    group = group.set_index("stage").reindex(list(stages))
                    ax.errorbar(
                        range(len(stages)), group["mean"], yerr=group["std"], marker="o", markersize=2,
                        linewidth=0.8, elinewidth=0.5, capsize=1, label=method_label(method),
                    )  # fmt: skip
                ax.axhline(threshold, linestyle="--", color="0.5", linewidth=0.7)
                ax.set_xticks(range(len(stages)), list(stages), rotation=40, ha="right")
                ax.set_title(f"{mode}: {similarity}")
        for ax in axes[:, 0]:
            ax.set_ylabel("similarity to trained maps")
        fig.tight_layout(pad=0.3)
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    return fig


#: LaTeX's special characters and how text writes them (pandas escapes a table's cells, not its caption).
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_text(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (a caption's "95%" would otherwise comment out its end)."""
    return "".join(_LATEX_SPECIALS.get(character, character) for character in text)


def save_table(table: pd.DataFrame, folder: str | Path, slug: str, caption: str = "") -> list[Path]:
    """Write ``<slug>.csv`` and ``<slug>.tex`` (booktabs; cells and caption escaped) atomically; returns both paths."""
    written = []
    for suffix in ("csv", "tex"):
        target = Path(folder) / f"{slug}.{suffix}"
        with atomic_path(target) as tmp:
            if suffix == "csv":
                table.to_csv(tmp, index=False)
            else:
                Path(tmp).write_text(
                    table.to_latex(
                        index=False, escape=True, caption=latex_text(caption) or None, na_rep="--", float_format="%.3f"
                    )
                )
        written.append(target)
    return written


def plot_method_intervals(
    panels: Sequence[tuple[pd.DataFrame, str]], methods: Sequence[str], group: str | None = None
) -> plt.Figure:
    """One panel per ``(table, title)``: each method's ``mean`` with its 95% CI (``ci_low``, ``ci_high``), one row
    per method; in a table with the column ``group`` (e.g. the model), one colour per value of it, side by side."""
    import seaborn as sns

    with paper_style():
        fig, axes = plt.subplots(1, len(panels), figsize=(TWO_COLUMN, 0.3 + 0.22 * len(methods)), squeeze=False)
        for ax, (table, title) in zip(axes[0], panels):
            levels = list(dict.fromkeys(table[group])) if group in table else [None]
            palette = dict(zip(levels, sns.color_palette("colorblind", len(levels))))
            for g, level in enumerate(levels):
                own = table if level is None else table[table[group] == level]
                own = own.set_index("method").reindex(methods)
                y = np.arange(len(methods)) + (g - (len(levels) - 1) / 2) * 0.25
                _intervals(ax, y, own, palette[level], None if level is None else str(level), vertical=False)
            ax.set_yticks(np.arange(len(methods)), [method_label(m) for m in methods] if ax is axes[0, 0] else [])
            ax.invert_yaxis()
            ax.set_title(title, fontsize=7)
            if group in table:
                ax.legend(frameon=False, fontsize=5, loc="best")
        fig.tight_layout(pad=0.3)
    return fig


def _intervals(ax: plt.Axes, positions: np.ndarray, own: pd.DataFrame, colour, label: str | None, vertical: bool):
    """Points at ``own["mean"]`` with their 95% CIs (``ci_low``, ``ci_high``), placed at ``positions`` along the other
    axis: vertical intervals over x positions, or horizontal ones over y positions."""
    errors = np.nan_to_num(np.vstack([own["mean"] - own["ci_low"], own["ci_high"] - own["mean"]]))
    style = {"fmt": "o", "markersize": 2.5, "elinewidth": 0.8, "capsize": 1.2, "color": colour, "label": label}
    if vertical:
        ax.errorbar(positions, own["mean"], yerr=errors, **style)
    else:
        ax.errorbar(own["mean"], positions, xerr=errors, **style)

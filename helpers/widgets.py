"""Interactive viewers over :class:`HeatmapSet` objects.

Errors inside ipywidgets callbacks are swallowed by the kernel, so the drawing lives in plain render
functions (:func:`render_overlay`) that are unit-tested without a kernel and called once, visibly, by
the notebooks; the widgets only pick their arguments.
"""

from __future__ import annotations

import gc
import io
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from helpers import labels
from helpers.figures import TWO_COLUMN, paper_style
from helpers.heatmaps import HeatmapSet, normalise

#: Perceptually uniform sequential map for non-negative CAMs; diverging map centred on zero for signed LRP.
CAM_CMAP = "inferno"
LRP_CMAP = "RdBu_r"
LABEL_NAMES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}
#: What a panel says over a constant map, which carries no location.
EMPTY_MAP = "empty map\n(every pixel the same)"
#: What a panel says over a map with NaN or inf (e.g. LRP that diverged), drawn without them: not "no relevance".
DIVERGED_MAP = "diverged map\n(NaN or inf: not scored)"
#: Font sizes of the viewers' titles and of the text under and over the panels.
TITLE_PT, TEXT_PT = 8, 7
#: Fixed margins of the viewer frames (room for two-line titles, the colour bar, three-line titles and five lines of
#: scores under the panels), as fractions of the figure.
VIEW_MARGINS = {"left": 0.01, "right": 0.9, "top": 0.88, "bottom": 0.02, "wspace": 0.04}
#: The colour bar's column in :func:`render_view`, as a share of an image panel's width.
COLOUR_BAR_WIDTH = 0.05
COMPARISON_MARGINS = {"left": 0.01, "right": 0.99, "top": 0.82, "bottom": 0.2, "wspace": 0.05}
METRIC_LABELS = {
    "hit": "hit",
    "iou": "IoU",
    "mass_accuracy": "mass accuracy",
    "gini": "Gini",
    "resolution_px": "resolution (px)",
    "near_hit": "near hit",
}


def label_text(code: float) -> str:
    """CheXpert code as a word (blank is "not mentioned")."""
    return "not mentioned" if code is None or np.isnan(code) else LABEL_NAMES[float(code)]


def symmetric_scale(heatmap: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Signed map divided by a high percentile of its finite absolute values and clipped to [-1, 1]; NaN where the
    map is NaN or inf (drawn as nothing: a diverged pixel has no relevance to show, neither zero nor full)."""
    values = np.asarray(heatmap, dtype=np.float64)
    magnitude = np.abs(np.nan_to_num(values, nan=0, posinf=0, neginf=0))
    limit = np.percentile(magnitude, percentile)
    limit = limit if limit > 0 else magnitude.max()
    scaled = np.clip(values / limit, -1, 1) if limit > 0 else np.zeros_like(magnitude)
    return np.where(np.isfinite(values), scaled, np.nan)


def map_note(heatmap: np.ndarray) -> str | None:
    """What a panel of ``heatmap`` must say because its colours cannot (:data:`DIVERGED_MAP`, :data:`EMPTY_MAP`), or
    None: an all-NaN map on a diverging scale would look like a map of zeros, a constant map like a uniform veil."""
    values = np.asarray(heatmap, dtype=np.float64)
    if not np.isfinite(values).all():
        return DIVERGED_MAP
    return None if np.ptp(values) else EMPTY_MAP


def short_name(method: str) -> str:
    """A column title: ``lrp_epsilon_plus_flat`` -> ``LRP epsilon plus flat``, wrapped to fit a narrow column."""
    words = method.replace("lrp_", "LRP ").replace("gradcam", "Grad-CAM").replace("_", " ")
    return "\n".join(textwrap.wrap(words, 12)[:3])


def draw_radiograph(ax: plt.Axes, image: np.ndarray) -> None:
    """The radiograph in gray at its fixed range (:func:`grey_range`), the same in every panel: a panel drawn
    without limits would be contrast-stretched and look unlike the overlays beside it."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=grey_range(image))


def grey_range(image: np.ndarray) -> float:
    """The white of a radiograph: 255 for 8-bit images (and floats above 1), 1 for floats in [0, 1]."""
    return 255.0 if image.dtype == np.uint8 or image.max() > 1 else 1.0


def check_map_shape(image: np.ndarray, heatmap: np.ndarray) -> None:
    """A clear error where a map does not cover its radiograph pixel for pixel (it would be drawn over a corner)."""
    if np.shape(heatmap) != np.shape(image)[:2]:
        raise ValueError(
            f"The map is {np.shape(heatmap)} and the radiograph {np.shape(image)[:2]}: draw maps at the image's size "
            f"(helpers.heatmaps.to_original_size)."
        )


def render_overlay(
    ax: plt.Axes,
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    signed: bool,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    title: str = "",
) -> plt.Axes:
    """Draw a radiograph, its heatmap and the ground-truth contour on ``ax``.

    Signed maps (LRP) use a diverging map with symmetric limits around zero, at the 99.5th percentile
    of ``|relevance|`` (a handful of extreme pixels would otherwise wash the rest out); non-negative
    maps (CAM) are min-max scaled into a perceptually uniform sequential map.
    """
    check_map_shape(image, heatmap)
    draw_radiograph(ax, image)
    if signed:
        shown = ax.imshow(symmetric_scale(heatmap), cmap=LRP_CMAP, vmin=-1, vmax=1, alpha=alpha)
    else:
        scaled = normalise(heatmap, "minmax")
        shown = ax.imshow(scaled, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=alpha)
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="#00e5ff", linewidths=1.0)
    note = map_note(heatmap)
    if note:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=TEXT_PT, color="white")
    ax.set_title(title, fontsize=TITLE_PT)
    ax.axis("off")
    return shown


def render_view(
    images: np.ndarray,
    heatmaps: HeatmapSet,
    image: int,
    pathology: str,
    *,
    codes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    alpha: float = 0.5,
) -> plt.Figure:
    """One viewer frame: radiograph, overlay, probability, label and ground-truth contour.

    Parameters
    ----------
    images : uint8 ``(n, H, W)`` radiographs in the same order as ``heatmaps.image_ids``.
    heatmaps : the method's maps.
    image : row index; pathology : name.
    codes : optional ``(n, 14)`` CheXpert label codes; masks : optional bool ``(n, 14, H, W)``.
    """
    j = heatmaps.pathologies.index(pathology)
    k = labels.PATHOLOGIES.index(pathology)
    signed = heatmaps.signed
    mask = None if masks is None else masks[image, k]
    label = "" if codes is None else f", label: {label_text(codes[image, k])}"
    with paper_style():
        # the colour bar in a column of its own: taken from the right panel it made that image smaller than the left
        fig, (left, right, bar) = plt.subplots(
            1, 3, figsize=(TWO_COLUMN, 3.6), gridspec_kw={"width_ratios": [1, 1, COLOUR_BAR_WIDTH]}
        )
        draw_radiograph(left, images[image])
        left.set_title(heatmaps.image_ids[image], fontsize=TITLE_PT)
        left.axis("off")
        title = f"{heatmaps.method}: {pathology}\np = {heatmaps.probs[image, j]:.3f}{label}"
        shown = render_overlay(
            right, images[image], heatmaps.maps[image, j], signed=signed, mask=mask, alpha=alpha, title=title
        )
        fig.colorbar(
            shown,
            cax=bar,
            label="relevance / 99.5th pct |relevance|" if signed else "min-max scaled",
        )
        fig.subplots_adjust(**VIEW_MARGINS)  # fixed: tight_layout took a third of a slider move's redraw
    return fig


def heatmap_viewer(
    images: np.ndarray,
    heatmap_sets: Mapping[str, HeatmapSet],
    *,
    codes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    start: tuple[int, str] | None = None,
    picker: str = "method",
):
    """Sliders over pathologies and images, a method dropdown and an opacity slider, around :func:`render_view`.

    ``start`` is the (image, pathology) shown first (e.g. the static frame's example; default the first of
    each); ``picker`` labels the dropdown (notebook 03 picks composites).
    """
    import ipywidgets as widgets

    first = next(iter(heatmap_sets.values()))
    pathology, image = _example_sliders(first, start)
    method = widgets.Dropdown(options=list(heatmap_sets), description=picker)
    alpha = widgets.FloatSlider(0.5, min=0.0, max=1.0, step=0.05, description="opacity", continuous_update=False)

    def draw(pathology, image, method, alpha):
        return render_view(images, heatmap_sets[method], image, pathology, codes=codes, masks=masks, alpha=alpha)

    name = _name_label(pathology)  # observed before the redraw: the name changes first
    frame = live_figure(draw, {"pathology": pathology, "image": image, "method": method, "alpha": alpha})
    return widgets.VBox([_row(pathology, name, image), _row(method, alpha), frame])


def _example_sliders(heatmaps: HeatmapSet, start: tuple[int, str] | None) -> tuple:
    """The pathology and image sliders of a viewer, at ``start`` (image, pathology) when given."""
    import ipywidgets as widgets

    image, pathology = start if start is not None else (0, heatmaps.pathologies[0])
    pathology_slider = widgets.SelectionSlider(
        options=heatmaps.pathologies,
        value=pathology,
        description="pathology",
        continuous_update=False,
        readout=False,  # its readout is 72 px wide: "Enlarged Cardiomediastinum" would be clipped; a label shows it
        layout={"width": "400px"},
    )
    image_slider = widgets.IntSlider(
        int(image), 0, len(heatmaps.image_ids) - 1, description="image", continuous_update=False
    )
    return pathology_slider, image_slider


def _name_label(slider) -> object:
    """A label showing ``slider``'s value whole (class ``pathology-name``), kept up to date by the kernel."""
    import ipywidgets as widgets

    label = widgets.Label(str(slider.value), layout={"min_width": "210px"})
    label.add_class("pathology-name")
    slider.observe(lambda change: setattr(label, "value", str(change["new"])), names="value")
    return label


def _row(*controls) -> object:
    """Controls side by side that wrap onto the next line in a narrow window (at 1024 px the image slider was
    squeezed to about 40 px beside the pathology slider)."""
    import ipywidgets as widgets

    return widgets.HBox(list(controls), layout={"flex_flow": "row wrap"})


def live_figure(render, controls: Mapping) -> object:
    """An ``ipywidgets.Image`` showing ``render(**values of controls)`` as PNG, redrawn in place on every change.

    Instead of ``ipywidgets.interactive_output``: its Output widget makes nbclient (papermill, nbmake) send comm
    messages on the kernel's shell channel while it waits for the cell's reply, and batch runs of the notebooks
    intermittently hung there (jupyter/nbclient#312; here twice in notebooks 03 and 04 of the seed runs). A new
    image replaces the old one in the same widget, so a move never shows an empty frame. The figure is closed
    after each draw.
    """
    import ipywidgets as widgets

    frame = widgets.Image(format="png")
    _freeze_heap()

    def redraw(_change=None):
        fig = render(**{name: control.value for name, control in controls.items()})
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=SCREEN_DPI)
        finally:
            plt.close(fig)
        frame.value = buffer.getvalue()

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return frame


def _freeze_heap() -> None:
    """Collect the kernel's garbage once, then keep the objects alive so far (the run's arrays, torch, pandas,
    matplotlib) out of the garbage collector's full passes (:func:`gc.freeze`).

    Each redraw allocates thousands of matplotlib objects, so every few moves Python ran a full collection over
    the whole kernel: 0.3-0.5 s on top of a 0.2 s redraw (`bench_viewer.py`). Objects made later are collected
    as before.
    """
    gc.collect()
    gc.freeze()


#: Resolution of the viewers' frames (the figures' own sizes are in inches, for print).
SCREEN_DPI = 110


def plot_gallery(
    images: np.ndarray,
    heatmap_sets: Mapping[str, HeatmapSet],
    rows: Sequence[tuple[int, str]],
    *,
    masks: np.ndarray | None = None,
    width: float = TWO_COLUMN,
) -> plt.Figure:
    """Grid: one row per (image, pathology), the radiograph then one column per method."""
    columns = 1 + len(heatmap_sets)
    with paper_style():
        fig, axes = plt.subplots(len(rows), columns, figsize=(width, width / columns * len(rows) * 1.15), squeeze=False)
        for r, (i, pathology) in enumerate(rows):
            k = labels.PATHOLOGIES.index(pathology)
            mask = None if masks is None else masks[i, k]
            draw_radiograph(axes[r, 0], images[i])
            if mask is not None and mask.any():
                axes[r, 0].contour(mask, levels=[0.5], colors="#00e5ff", linewidths=0.8)
            # the row's name inside its first panel: a title above it overlapped the row above, and a label beside
            # it made tight_layout shrink every panel
            axes[r, 0].text(
                0.03,
                0.97,
                pathology,
                transform=axes[r, 0].transAxes,
                ha="left",
                va="top",
                fontsize=5,
                color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
            )
            axes[r, 0].axis("off")
            for c, (name, maps) in enumerate(heatmap_sets.items(), start=1):
                signed = maps.signed
                render_overlay(
                    axes[r, c],
                    images[i],
                    maps.map(i, pathology),
                    signed=signed,
                    mask=mask,
                    title=short_name(name) if r == 0 else "",
                )
        fig.tight_layout(pad=0.3)
    return fig


def pick_examples(codes: np.ndarray, probs: np.ndarray, pathologies: Sequence[str], n: int) -> list[tuple[int, str]]:
    """Up to ``n`` (image, pathology) pairs: per image, its positive finding the model is surest of."""
    picks = []
    for i in range(len(codes)):
        positive = [p for p in pathologies if p != "No Finding" and codes[i, labels.PATHOLOGIES.index(p)] == 1]
        if positive:
            picks.append((i, max(positive, key=lambda p: probs[i, list(pathologies).index(p)])))
        if len(picks) == n:
            break
    return picks


#: The scores :func:`render_comparison` writes under each panel by default.
SHOWN_METRICS = ("hit", "iou", "mass_accuracy", "gini", "resolution_px")


def render_comparison(
    images: np.ndarray,
    heatmap_sets: Mapping[str, HeatmapSet],
    methods: Sequence[str],
    image: int,
    pathology: str,
    *,
    scores=None,
    masks: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    shown_metrics: Sequence[str] = SHOWN_METRICS,
) -> plt.Figure:
    """The radiograph with its ground truth, then one overlay per method with that map's metric values.

    ``scores`` is the tidy DataFrame of :func:`helpers.metrics.score` (values shown under each panel).
    """
    k = labels.PATHOLOGIES.index(pathology)
    mask = None if masks is None else masks[image, k]
    with paper_style():
        fig, axes = plt.subplots(1, 1 + len(methods), figsize=(TWO_COLUMN * (1 + len(methods)) / 3, 3.4))
        draw_radiograph(axes[0], images[image])
        if mask is not None and mask.any():
            axes[0].contour(mask, levels=[0.5], colors="#00e5ff", linewidths=1.0)
        label = "" if codes is None else f"\nlabel: {label_text(codes[image, k])}"
        axes[0].set_title(f"{pathology}{label}", fontsize=TITLE_PT)
        axes[0].axis("off")
        for ax, method in zip(axes[1:], methods):
            maps = heatmap_sets[method]
            j = maps.pathologies.index(pathology)
            render_overlay(
                ax,
                images[image],
                maps.maps[image, j],
                signed=maps.signed,
                mask=mask,
                title=f"{short_name(method)}\np = {maps.probs[image, j]:.3f}",
            )
            ax.text(
                0.5,
                -0.04,
                _metric_text(scores, maps, image, pathology, shown_metrics),
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=TEXT_PT,
            )
        fig.subplots_adjust(**COMPARISON_MARGINS)
    return fig


def _metric_text(scores, maps: HeatmapSet, image: int, pathology: str, shown: Sequence[str]) -> str:
    if scores is None:
        return ""
    own = scores[
        (scores["method"] == maps.method)
        & (scores["image"] == maps.image_ids[image])
        & (scores["pathology"] == pathology)
        & scores["metric"].isin(shown)
    ]
    values = dict(zip(own["metric"], own["value"]))
    return (
        "\n".join(f"{METRIC_LABELS.get(name, name)} {values[name]:.2f}" for name in shown if name in values)
        or "no ground truth"
    )


def comparison_viewer(
    images: np.ndarray,
    heatmap_sets: Mapping[str, HeatmapSet],
    *,
    scores=None,
    masks: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    start: tuple[int, str] | None = None,
):
    """Two method pickers sharing one pathology slider and one image slider, around :func:`render_comparison`;
    ``start`` as for :func:`heatmap_viewer`."""
    import ipywidgets as widgets

    names = list(heatmap_sets)
    first = heatmap_sets[names[0]]
    pathology, image = _example_sliders(first, start)
    if scores is not None:  # the rows a frame can show: filtering all of them took ~40 ms a move
        scores = scores[scores["method"].isin(names) & scores["metric"].isin(SHOWN_METRICS)]
    left = widgets.Dropdown(options=names, value=names[0], description="left")
    right = widgets.Dropdown(options=names, value=names[-1], description="right")

    def draw(pathology, image, left, right):
        return render_comparison(
            images, heatmap_sets, [left, right], image, pathology, scores=scores, masks=masks, codes=codes
        )

    name = _name_label(pathology)
    frame = live_figure(draw, {"pathology": pathology, "image": image, "left": left, "right": right})
    return widgets.VBox([_row(pathology, name, image), _row(left, right), frame])


#: Colour of the spurious marker's contour (the ground truth's is cyan).
MARKER_COLOUR = "#ff4fd8"


def render_twins(
    images: np.ndarray,
    maps: Mapping[str, Mapping[str, HeatmapSet]],
    method: str,
    image: int,
    pathology: str,
    *,
    marker_masks: np.ndarray,
    masks: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> plt.Figure:
    """The radiograph, then one method's map of it under each model (``maps[model][method]``, e.g. the clean and
    the shortcut model), with the marker's contour (magenta) and the finding's (cyan) on every panel."""
    k = labels.PATHOLOGIES.index(pathology)
    mask = None if masks is None else masks[image, k]
    marker = marker_masks[image]
    with paper_style():
        fig, axes = plt.subplots(1, 1 + len(maps), figsize=(TWO_COLUMN, 3.0))
        draw_radiograph(axes[0], images[image])
        label = "" if codes is None else f"\nlabel: {label_text(codes[image, k])}"
        axes[0].set_title(f"{maps[next(iter(maps))][method].image_ids[image]}{label}", fontsize=TITLE_PT)
        axes[0].axis("off")
        for ax, (model, sets) in zip(axes[1:], maps.items()):
            heatmaps = sets[method]
            j = heatmaps.pathologies.index(pathology)
            title = f"{short_name(method)}, {model} model\n{pathology}: p = {heatmaps.probs[image, j]:.3f}"
            render_overlay(ax, images[image], heatmaps.maps[image, j], signed=heatmaps.signed, mask=mask, title=title)
        for ax in axes:
            if mask is not None and mask.any() and ax is axes[0]:
                ax.contour(mask, levels=[0.5], colors="#00e5ff", linewidths=1.0)
            if marker.any():
                ax.contour(marker, levels=[0.5], colors=MARKER_COLOUR, linewidths=1.0)
        fig.subplots_adjust(**COMPARISON_MARGINS)
    return fig


def twin_viewer(
    images: np.ndarray,
    maps: Mapping[str, Mapping[str, HeatmapSet]],
    *,
    marker_masks: np.ndarray,
    masks: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    start: tuple[int, str] | None = None,
):
    """Pathology and image sliders and a method picker around :func:`render_twins`; ``start`` as for
    :func:`heatmap_viewer`."""
    import ipywidgets as widgets

    first_model = next(iter(maps.values()))
    pathology, image = _example_sliders(next(iter(first_model.values())), start)
    method = widgets.Dropdown(options=list(first_model), description="method")

    def draw(pathology, image, method):
        return render_twins(images, maps, method, image, pathology, marker_masks=marker_masks, masks=masks, codes=codes)

    name = _name_label(pathology)
    frame = live_figure(draw, {"pathology": pathology, "image": image, "method": method})
    return widgets.VBox([_row(pathology, name, image), method, frame])

"""A run's heatmaps as one self-contained HTML file: a viewer that needs no Python, no kernel and no server.

Every image x pathology x method frame is rendered here once (the radiograph, the map over it in the viewers'
colours and scaling, the ground truth's outline in cyan) and embedded as a base64 JPEG; two sliders (pathology,
image) and a method picker in plain HTML and JavaScript swap the frames. A clinician opens the file from disk in
any browser and browses what a researcher ran.

Written by hand because the notebook viewers need a kernel (ipywidgets) and no library writes a static,
pre-rendered slider viewer; the colours are matplotlib's colour maps and the scaling is the viewers' own
(:func:`helpers.widgets.symmetric_scale`, :func:`helpers.heatmaps.normalise`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image
from skimage.segmentation import find_boundaries

from helpers import labels
from helpers.heatmaps import HeatmapSet, normalise
from helpers.io import atomic_path
from helpers.widgets import CAM_CMAP, LRP_CMAP, check_map_shape, grey_range, label_text, map_note, symmetric_scale

#: The page: ``__TITLE__`` and ``__DATA__`` (the JSON of :func:`viewer_data`) are filled in.
TEMPLATE = Path(__file__).parent / "resources" / "viewer.html"
#: Opacity of the map over the radiograph (the viewers' default).
ALPHA = 0.5
#: Colour of the ground truth's outline (the viewers' cyan).
OUTLINE = np.array([0, 229, 255], np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, signed: bool, mask: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the map over the grey radiograph, scaled as the notebook viewers scale it (signed maps
    symmetric around 0 at the 99.5th percentile of ``|R|`` on a diverging map, others min-max on a sequential map),
    with the mask's outline in cyan. NaN and inf pixels show the radiograph alone, as in the notebook viewers."""
    check_map_shape(image, heatmap)
    if signed:
        colours = colormaps[LRP_CMAP]((symmetric_scale(heatmap) + 1) / 2)[..., :3]
    else:
        colours = colormaps[CAM_CMAP](normalise(np.nan_to_num(heatmap)[None], "minmax")[0])[..., :3]
    grey = np.repeat(image[..., None] / grey_range(image), 3, axis=-1)
    blended = np.where(np.isfinite(heatmap)[..., None], (1 - ALPHA) * grey + ALPHA * colours, grey)
    rgb = np.round(blended * 255).astype(np.uint8)
    if mask is not None and mask.any():
        rgb[find_boundaries(mask, mode="inner")] = OUTLINE
    return rgb


def _jpeg(rgb: np.ndarray, quality: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def viewer_data(
    images: np.ndarray,
    sets: Mapping[str, HeatmapSet],
    *,
    masks: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    quality: int = 85,
) -> dict:
    """The viewer's content: ids, pathologies, methods, per-frame titles and base64 JPEG frames
    ``frames[method][image][pathology]`` (pathologies those every set explains, in CheXpert order), and per frame
    the note its caption carries for a diverged or constant map (:func:`helpers.widgets.map_note`; else "")."""
    first = next(iter(sets.values()))
    pathologies = [p for p in first.pathologies if all(p in s.pathologies for s in sets.values())]
    frames, probs = {}, {}
    for name, heatmaps in sets.items():
        frames[name] = [
            [
                _jpeg(overlay(images[i], heatmaps.map(i, p), heatmaps.signed, _mask(masks, i, p)), quality)
                for p in pathologies
            ]
            for i in range(len(images))
        ]
        probs[name] = [
            [round(float(heatmaps.probs[i, heatmaps.pathologies.index(p)]), 3) for p in pathologies]
            for i in range(len(images))
        ]
    label_names = [
        [label_text(codes[i, labels.PATHOLOGIES.index(p)]) if codes is not None else "" for p in pathologies]
        for i in range(len(images))
    ]
    notes = {
        name: [[(map_note(maps.map(i, p)) or "").replace("\n", " ") for p in pathologies] for i in range(len(images))]
        for name, maps in sets.items()
    }
    return {
        "ids": list(first.image_ids[: len(images)]),
        "pathologies": pathologies,
        "methods": list(sets),
        "frames": frames,
        "probs": probs,
        "labels": label_names,
        "notes": notes,
    }


def _mask(masks: np.ndarray | None, i: int, pathology: str) -> np.ndarray | None:
    return None if masks is None else masks[i, labels.PATHOLOGIES.index(pathology)]


def write_viewer(path: str | Path, data: dict, title: str) -> Path:
    """Write the HTML viewer of :func:`viewer_data` atomically; returns its path."""
    path = Path(path)
    page = (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("__TITLE__", html.escape(title))
        .replace("__DATA__", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))  # no "</script>" inside
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path

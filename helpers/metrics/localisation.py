"""Does the map point at the finding? Localisation scores of one map against its mask, and of a HeatmapSet.

As CheXlocalize defines them, on rows where the ground-truth mask is non-empty, each read from the map's
positive part (:func:`~helpers.metrics.base.positive_part`; CheXlocalize reads the raw map, which is the same
for non-negative CAMs):

- ``hit``: the map's maximum in the mask; tied maxima (a plateau, an upsampled CAM cell) count with the share
  of them that lies in the mask (``ties="share"``), or if any does (``"any"``, Quantus' pointing game, scored
  as ``hit_any``), or by the first in row-major order (``"first"``, CheXlocalize's ``np.argmax``);
- ``distance_px`` from the maximum to the mask and ``near_hit`` (within 1/16 of the width);
- ``iou``: CheXlocalize's exact segmentation (:func:`chexlocalize_segmentation`: min-max -> uint8 -> Otsu ->
  filled contours) against the mask; :func:`otsu_segmentation` is the older float-Otsu variant without filling;
- ``mass_accuracy``, ``rank_accuracy``, ``pixel_auroc``;
- granularity against the ground truth: ``resolution_gap`` (from
  :mod:`~helpers.metrics.granularity`) and ``boundary_f1`` (the segmentation's outline against the mask's).

A constant map carries no location: ``hit``, ``near_hit``, ``iou`` and ``boundary_f1`` are 0, ``distance_px``
and ``resolution_gap`` are NaN and the other scores are at chance (the mask's area share; AUROC 0.5).
:func:`score` scores a HeatmapSet on all of them, plus granularity, class sensitivity and, given the label
codes, :func:`separation_rows` between an image's positive findings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import rankdata
from skimage.filters import threshold_otsu
from skimage.segmentation import find_boundaries

from helpers import labels
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS, positive_part
from helpers.metrics.granularity import PARTS, SINGLE_MAP, class_correlation, resolution_gap, separation

#: How :func:`hit` counts tied maxima.
TIES = ("share", "any", "first")


def hit(heatmap: np.ndarray, mask: np.ndarray, ties: str = "share") -> float:
    """Whether the map's maximum lies in the mask (CheXlocalize's hit, Quantus' pointing game).

    Parameters
    ----------
    ties : {"share", "any", "first"}
        With several pixels at the maximum: the share of them inside the mask (a plateau half in the mask
        scores 0.5); 1 if any is inside (Quantus); or whether the first in row-major order is
        (CheXlocalize's ``np.argmax``, which favours the top-left of the image).

    Returns
    -------
    float
        In [0, 1]; 0 for a constant map, which points nowhere.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
    values = positive_part(heatmap)
    if values.max() == values.min():
        return 0.0
    mask = np.asarray(mask, dtype=bool)
    if ties == "first":
        return float(mask.flat[np.argmax(values)])
    tied = mask[values == values.max()]
    return float(tied.mean() if ties == "share" else tied.any())


def distance_px(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Distance (pixels) from the map's maximum (the tied pixel nearest the mask) to the mask; 0 for a hit."""
    values, mask = positive_part(heatmap), np.asarray(mask, bool)  # ~ of a 0/1 integer mask is not its complement
    if values.max() == values.min():
        return float("nan")
    distance = ndimage.distance_transform_edt(~mask)
    return float(distance[values == values.max()].min())


def near_hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum lies within 1/16 of the image width of the mask (a tolerant hit)."""
    distance = distance_px(heatmap, mask)
    return 0.0 if np.isnan(distance) else float(distance <= mask.shape[-1] / 16)


def otsu_segmentation(heatmap: np.ndarray) -> np.ndarray:
    """Boolean segmentation: the min-max-normalised positive part above its Otsu threshold, on floats.

    The earlier, approximate variant of :func:`chexlocalize_segmentation` (no uint8 quantisation, no filled
    contours, as SHAMSUL describes its IoU); kept to show where the two differ.
    """
    values = positive_part(heatmap)
    if values.max() == values.min():
        return np.zeros(values.shape, dtype=bool)
    scaled = (values - values.min()) / (values.max() - values.min())
    return scaled > threshold_otsu(scaled)


def chexlocalize_uint8(heatmap: np.ndarray) -> np.ndarray:
    """The map as CheXlocalize's Otsu step sees it: positive part, min-max to [0, 1], ``uint8(255 * x)``.

    Computed in float32 like CheXlocalize's torch maps, in its order (subtract the minimum, divide by the
    new maximum, times 255) and truncated as numpy casts, so that equal float32 maps give equal images.
    A constant map gives zeros (CheXlocalize divides 0 by 0 there).
    """
    values = positive_part(heatmap).astype(np.float32)
    shifted = values - values.min()
    if shifted.max() == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return (np.float32(255) * (shifted / shifted.max())).astype(np.uint8)


def chexlocalize_segmentation(heatmap: np.ndarray, positive: bool = True) -> np.ndarray:
    """Boolean segmentation of a map as CheXlocalize's ``heatmap_to_segmentation.py`` makes it.

    1. :func:`chexlocalize_uint8` (on the positive part, the convention of this module);
    2. Otsu's threshold of that uint8 image, foreground strictly above it (cv2's ``THRESH_OTSU`` with
       ``THRESH_BINARY``; skimage's ``threshold_otsu`` on the same histogram gives the same split);
    3. every contour of ``cv2.findContours(RETR_TREE)`` with more than one point drawn as a filled polygon:
       that is each 8-connected component with its holes filled, except that a component of a single pixel
       (a one-point contour) is dropped unless it lies in a filled hole. Done with ``scipy.ndimage`` (label,
       ``binary_fill_holes``); no cv2 at run time.

    Parameters
    ----------
    positive : bool
        Whether the model predicts the finding. CheXlocalize's probability cutoff makes the segmentation of a
        negative prediction empty whatever the map; so does ``positive=False``.

    Notes
    -----
    CheXlocalize first resizes its 320 px map to the original image (bilinear); here maps are at input
    resolution and the masks are resized to them (:func:`helpers.data.mask_stack`).
    """
    grey = chexlocalize_uint8(heatmap)
    if not positive or grey.max() == 0:
        return np.zeros(grey.shape, dtype=bool)
    components, _ = ndimage.label(grey > threshold_otsu(grey), structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())
    kept = (sizes > 1)[components] & (components > 0)
    return ndimage.binary_fill_holes(kept)


def chexlocalize_iou(
    heatmap: np.ndarray, mask: np.ndarray, positive: bool = True, true_positive_only: bool = False
) -> float:
    """IoU of :func:`chexlocalize_segmentation` and the mask, with CheXlocalize's empty cases.

    Parameters
    ----------
    positive : bool
        The model's prediction; a negative one has an empty segmentation (IoU 0 against a finding).
    true_positive_only : bool
        CheXlocalize's ``eval.py --true_pos_only`` (its default ``True``): NaN unless both the segmentation
        and the mask are non-empty. With ``False`` (its full-dataset mode, used with probability cutoffs in
        the paper's Table 3, and the default here) NaN only when both are empty, and 0 when one is.
    """
    return _segmentation_iou(chexlocalize_segmentation(heatmap, positive), mask, true_positive_only)


def _segmentation_iou(segmentation: np.ndarray, mask: np.ndarray, true_positive_only: bool = False) -> float:
    """:func:`chexlocalize_iou` from a segmentation already made."""
    mask = np.asarray(mask, dtype=bool)
    union = np.logical_or(segmentation, mask).sum()
    if not union or (true_positive_only and not (segmentation.any() and mask.any())):
        return float("nan")
    return float(np.logical_and(segmentation, mask).sum() / union)


def iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """CheXlocalize's IoU of the map against the mask (:func:`chexlocalize_iou`, positive prediction)."""
    return chexlocalize_iou(heatmap, mask)


def boundary_f1(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: float = 2) -> float:
    """Boundary F-score (Csurka et al. 2013) of the map's CheXlocalize segmentation against the mask.

    Precision is the share of the segmentation's boundary pixels within ``tolerance_px`` (Euclidean) of the
    mask's boundary, recall the share of the mask's boundary pixels within it of the segmentation's; the score
    is their harmonic mean. Boundaries are the inner ones of ``skimage.segmentation.find_boundaries`` (the
    image edge is no boundary), distances from ``scipy.ndimage.distance_transform_edt``; the F-score itself
    is written by hand, as neither library has one. 1 for the mask itself; 0 when the segmentation is empty
    (a constant map); NaN when neither has a boundary (e.g. a mask covering the image).
    """
    return _segmentation_boundary_f1(chexlocalize_segmentation(heatmap), mask, tolerance_px)


def _segmentation_boundary_f1(segmentation: np.ndarray, mask: np.ndarray, tolerance_px: float = 2) -> float:
    """:func:`boundary_f1` from a segmentation already made."""
    found = find_boundaries(segmentation, mode="inner")
    truth = find_boundaries(np.asarray(mask, dtype=bool), mode="inner")
    if not found.any() or not truth.any():
        return float("nan") if not found.any() and not truth.any() else 0.0
    precision = (ndimage.distance_transform_edt(~truth)[found] <= tolerance_px).mean()
    recall = (ndimage.distance_transform_edt(~found)[truth] <= tolerance_px).mean()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def mass_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance inside the mask (Arras et al. 2022)."""
    values, mask = positive_part(heatmap), np.asarray(mask, bool)  # an integer mask would index, not select
    total = values.sum()
    if not np.isfinite(total):  # a diverged map is no map, not a flat one at chance
        return float("nan")
    return float(values[mask].sum() / total) if total > 0 else float(mask.mean())


def rank_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the ``|mask|`` highest-ranked pixels that lie in the mask (Arras et al. 2022).

    Pixels tied at the cut-off (e.g. the zeros of a positive part) share the remaining places evenly:
    they get the mask's share among them, not an order that would favour the top-left of the image.
    """
    values = positive_part(heatmap).ravel()
    inside = np.asarray(mask, dtype=bool).ravel()
    k = int(inside.sum())
    if not k:
        return float("nan")
    cutoff = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > cutoff, values == cutoff
    credit = inside[above].sum() + (k - above.sum()) * inside[tied].mean()
    return float(credit / k)


def pixel_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of the map's positive part as a detector of mask pixels.

    Computed as the Mann-Whitney U statistic over ``scipy.stats.rankdata``'s average ranks (ties count one
    half), which is sklearn's ``roc_auc_score`` in a fifth of its time on a 224 px map.
    """
    inside = np.asarray(mask, dtype=bool).ravel()
    n_inside = int(inside.sum())
    n_outside = inside.size - n_inside
    if not n_inside or not n_outside:
        return float("nan")
    ranks = rankdata(positive_part(heatmap).ravel())
    return float((ranks[inside].sum() - n_inside * (n_inside + 1) / 2) / (n_inside * n_outside))


#: Localisation scores of one map against its mask, by metric name.
WITH_MASK = {
    "hit": hit,
    "hit_any": partial(hit, ties="any"),
    "near_hit": near_hit,
    "distance_px": distance_px,
    "iou": iou,
    "mass_accuracy": mass_accuracy,
    "rank_accuracy": rank_accuracy,
    "pixel_auroc": pixel_auroc,
    "resolution_gap": resolution_gap,
    "boundary_f1": boundary_f1,
}


def score(
    heatmaps: HeatmapSet,
    masks: np.ndarray | Mapping,
    *,
    codes: np.ndarray | None = None,
    granularity: bool = True,
    class_sensitivity: bool = True,
    separation: bool = True,
) -> pd.DataFrame:
    """Localisation, granularity, class-sensitivity and separation scores of one method's maps.

    Parameters
    ----------
    heatmaps : HeatmapSet
        One method's maps.
    masks : bool array ``(n, 14, H, W)`` or dict
        Ground truth in :data:`helpers.labels.PATHOLOGIES` order, rows aligned with ``heatmaps.image_ids``;
        or the dict of :func:`helpers.data.load_masks` (e.g. CheXlocalize's JSON), matched by image id and
        resized to the maps.
    codes : array ``(n, 14)``, optional
        CheXpert label codes. Granularity is scored on positive findings only when given (all maps otherwise).
    granularity, class_sensitivity : bool
        Whether to add the :data:`~helpers.metrics.granularity.SINGLE_MAP` rows, and the
        ``class_correlation_<part>`` rows (pathology ``"all"``) for each part in ``positive, abs, signed``.
    separation : bool
        With ``codes``, add ``separation`` rows: per image and positive finding, the mean over the image's
        other positive findings of :func:`~helpers.metrics.granularity.separation` (see :func:`separation_rows`
        for one row per pair).

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``; localisation rows (:data:`WITH_MASK`) only where
        the mask is non-empty. A map with inf or NaN (diverged relevance) scores NaN.
    """
    masks = _mask_array(heatmaps, masks)
    rows = []
    for i, image_id in enumerate(heatmaps.image_ids):
        for j, pathology in enumerate(heatmaps.pathologies):
            k = labels.PATHOLOGIES.index(pathology)
            heatmap, mask = heatmaps.maps[i, j], masks[i, k]
            if mask.any():
                rows += _rows(heatmaps, i, pathology, _with_prediction(heatmaps, i, j), heatmap, mask)
            if granularity and (codes is None or codes[i, k] == 1):
                rows += _rows(heatmaps, i, pathology, SINGLE_MAP, heatmap)
        if class_sensitivity:
            rows += [
                (image_id, "all", heatmaps.method, f"class_correlation_{part}", class_correlation(heatmaps, i, part))
                for part in PARTS
            ]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if separation and codes is not None:
        pairs = separation_rows(heatmaps, masks, codes)
        if len(pairs):  # concatenating an empty frame is deprecated in pandas
            table = pd.concat([table, pairs.groupby(COLUMNS[:4], sort=False, as_index=False)["value"].mean()])
    return table.reset_index(drop=True)


def _with_prediction(heatmaps: HeatmapSet, i: int, j: int) -> dict:
    """:data:`WITH_MASK` plus ``iou_gated``: CheXlocalize's IoU with its prediction gate (a probability below
    0.5, a negative prediction, gives an empty segmentation). ``iou`` is the map's own segmentation, ungated, so
    that methods and model-free baselines compare on what their maps show. A set without probabilities counts
    as positive."""
    probability = heatmaps.probs[i, j]
    positive = bool(np.isnan(probability) or probability >= 0.5)
    segmentation = None

    def segmented(heatmap: np.ndarray) -> np.ndarray:  # made once per map: three scores read it
        nonlocal segmentation
        if segmentation is None:
            segmentation = chexlocalize_segmentation(heatmap)
        return segmentation

    return {
        **WITH_MASK,
        "iou": lambda heatmap, mask: _segmentation_iou(segmented(heatmap), mask),
        "boundary_f1": lambda heatmap, mask: _segmentation_boundary_f1(segmented(heatmap), mask),
        "iou_gated": lambda heatmap, mask: _segmentation_iou(segmented(heatmap) & positive, mask),
    }


def _rows(heatmaps: HeatmapSet, i: int, pathology: str, functions: Mapping, *arrays: np.ndarray) -> list[tuple]:
    """Tidy rows of ``functions`` on ``arrays`` (the map first); NaN for a map with inf or NaN (diverged)."""
    finite = bool(np.isfinite(arrays[0]).all())
    image_id, method = heatmaps.image_ids[i], heatmaps.method
    return [(image_id, pathology, method, name, f(*arrays) if finite else np.nan) for name, f in functions.items()]


def separation_rows(heatmaps: HeatmapSet, masks: np.ndarray | Mapping, codes: np.ndarray) -> pd.DataFrame:
    """:func:`~helpers.metrics.granularity.separation` of every ordered pair of an image's positive findings.

    Parameters
    ----------
    heatmaps : HeatmapSet
        Maps of finding A are those scored (A must be among ``heatmaps.pathologies``; B need only a mask).
    masks : bool array ``(n, 14, H, W)`` or dict
        As for :func:`score`.
    codes : array ``(n, 14)``
        CheXpert label codes; a finding is positive where its code is 1 and its mask is non-empty.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value, other``: ``pathology`` is A, ``other`` is B,
        ``metric`` is ``"separation"``; only pairs whose masks differ both ways. NaN for a diverged map.
    """
    masks, codes = _mask_array(heatmaps, masks), np.asarray(codes)
    rows = []
    for i, image_id in enumerate(heatmaps.image_ids):
        for a, b in _finding_pairs(codes[i], masks[i]):
            name = labels.PATHOLOGIES[a]
            if name in heatmaps.pathologies:
                heatmap = heatmaps.map(i, name)
                value = separation(heatmap, masks[i, a], masks[i, b]) if np.isfinite(heatmap).all() else np.nan
                rows.append((image_id, name, heatmaps.method, "separation", value, labels.PATHOLOGIES[b]))
    return pd.DataFrame(rows, columns=[*COLUMNS, "other"])


def _finding_pairs(codes: np.ndarray, masks: np.ndarray) -> list[tuple[int, int]]:
    """Ordered pairs of one image's positive findings (code 1, non-empty mask) whose masks differ both ways."""
    found = [k for k in range(len(codes)) if codes[k] == 1 and masks[k].any()]
    return [
        (a, b) for a in found for b in found if a != b and (masks[a] & ~masks[b]).any() and (masks[b] & ~masks[a]).any()
    ]


def _mask_array(heatmaps: HeatmapSet, masks) -> np.ndarray:
    """Bool ``(n, 14, H, W)`` masks aligned with ``heatmaps``, from an array or a dict by image id."""
    if isinstance(masks, Mapping):
        from helpers.data import mask_stack  # lazily: scoring arrays needs none of the data package

        masks = mask_stack(masks, heatmaps.image_ids, heatmaps.maps.shape[-1])
    masks = np.asarray(masks, dtype=bool)
    expected = (len(heatmaps.image_ids), len(labels.PATHOLOGIES), *heatmaps.maps.shape[-2:])
    if masks.shape != expected:
        raise ValueError(
            f"masks must be bool {expected} (images x all 14 pathologies x map size), aligned "
            f"with the heatmaps' image ids; got {masks.shape}."
        )
    return masks


def multi_finding_rows(
    scores: pd.DataFrame, codes: np.ndarray, image_ids: Sequence[str], metric: str = "hit", minimum: int = 2
) -> pd.DataFrame:
    """``metric`` rows of images with at least ``minimum`` positive findings, renamed ``<metric>_multi``."""
    findings = [labels.PATHOLOGIES.index(p) for p in labels.PATHOLOGIES if p != "No Finding"]
    counts = (np.asarray(codes)[:, findings] == 1).sum(axis=1)
    multi = {str(i) for i, c in zip(image_ids, counts) if c >= minimum}
    chosen = scores[(scores["metric"] == metric) & scores["image"].isin(multi)]
    return chosen.assign(metric=f"{metric}_multi")

"""Does the map point at the finding? Localisation scores of one map against its mask, and of a HeatmapSet.

As CheXlocalize defines them, on rows where the ground-truth mask is non-empty, each read from the map's
positive part (:func:`~helpers.metrics.base.positive_part`). A constant map carries no location: ``hit``,
``near_hit`` and ``iou`` are 0, ``distance_px`` is NaN and the other scores are at chance (the mask's area
share; AUROC 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.filters import threshold_otsu
from sklearn.metrics import roc_auc_score

from helpers import labels
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS, positive_part
from helpers.metrics.granularity import SINGLE_MAP, class_correlation


def hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum (any tied pixel) lies in the mask (CheXlocalize's hit, Quantus' pointing game)."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return 0.0
    return float(np.any(mask[values == values.max()]))


def distance_px(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Distance (pixels) from the map's maximum (the tied pixel nearest the mask) to the mask; 0 for a hit."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return float("nan")
    distance = ndimage.distance_transform_edt(~mask)
    return float(distance[values == values.max()].min())


def near_hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum lies within 1/16 of the image width of the mask (a tolerant hit)."""
    distance = distance_px(heatmap, mask)
    return 0.0 if np.isnan(distance) else float(distance <= mask.shape[-1] / 16)


def otsu_segmentation(heatmap: np.ndarray) -> np.ndarray:
    """Boolean segmentation: the min-max-normalised positive part above its Otsu threshold."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return np.zeros(values.shape, dtype=bool)
    scaled = (values - values.min()) / (values.max() - values.min())
    return scaled > threshold_otsu(scaled)


def iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of the Otsu segmentation and the mask (NaN if both are empty)."""
    segmentation = otsu_segmentation(heatmap)
    union = np.logical_or(segmentation, mask).sum()
    return float(np.logical_and(segmentation, mask).sum() / union) if union else float("nan")


def mass_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance inside the mask (Arras et al. 2022)."""
    values = positive_part(heatmap)
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else float(mask.mean())


def rank_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the ``|mask|`` highest-ranked pixels that lie in the mask (Arras et al. 2022).

    Pixels tied at the cut-off (e.g. the zeros of a positive part) share the remaining places evenly:
    they get the mask's share among them, not an order that would favour the top-left of the image.
    """
    values = positive_part(heatmap).ravel()
    inside = mask.ravel()
    k = int(inside.sum())
    if not k:
        return float("nan")
    cutoff = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > cutoff, values == cutoff
    credit = inside[above].sum() + (k - above.sum()) * inside[tied].mean()
    return float(credit / k)


def pixel_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of the map's positive part as a detector of mask pixels."""
    flat_mask = mask.ravel()
    if flat_mask.all() or not flat_mask.any():
        return float("nan")
    return float(roc_auc_score(flat_mask, positive_part(heatmap).ravel()))


#: Localisation scores of one map against its mask, by metric name.
WITH_MASK = {
    "hit": hit,
    "near_hit": near_hit,
    "distance_px": distance_px,
    "iou": iou,
    "mass_accuracy": mass_accuracy,
    "rank_accuracy": rank_accuracy,
    "pixel_auroc": pixel_auroc,
}


def score(
    heatmaps: HeatmapSet,
    masks: np.ndarray | Mapping,
    *,
    codes: np.ndarray | None = None,
    granularity: bool = True,
    class_sensitivity: bool = True,
) -> pd.DataFrame:
    """Localisation, granularity and class-sensitivity scores of one method's maps.

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
        Whether to add those metrics.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``; localisation rows only where the mask is non-empty.
        A map with inf or NaN (diverged relevance) scores NaN.
    """
    masks = _mask_array(heatmaps, masks)
    rows = []
    for i, image_id in enumerate(heatmaps.image_ids):
        for j, pathology in enumerate(heatmaps.pathologies):
            k = labels.PATHOLOGIES.index(pathology)
            heatmap, mask = heatmaps.maps[i, j], masks[i, k]
            finite = bool(np.isfinite(heatmap).all())  # a diverged map (LRP-z) has no defined score
            if mask.any():
                rows += [
                    (image_id, pathology, heatmaps.method, name, f(heatmap, mask) if finite else np.nan)
                    for name, f in WITH_MASK.items()
                ]
            if granularity and (codes is None or codes[i, k] == 1):
                rows += [
                    (image_id, pathology, heatmaps.method, name, f(heatmap) if finite else np.nan)
                    for name, f in SINGLE_MAP.items()
                ]
        if class_sensitivity:
            rows.append((image_id, "all", heatmaps.method, "class_correlation", class_correlation(heatmaps, i)))
    return pd.DataFrame(rows, columns=COLUMNS)


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

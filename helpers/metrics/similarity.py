"""How alike two maps are: the similarities of the sanity checks (:mod:`helpers.metrics.sanity`), signed and
sign-blind.

numpy, scipy and scikit-image only (no torch), so that the worker processes computing them in parallel start
quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from skimage.feature import hog
from skimage.metrics import structural_similarity

from helpers.heatmaps import normalise

#: HOG parameters of :func:`hog_similarity`: 8 x 8 px cells, 2 x 2 cell blocks (maps of at least 16 px a side;
#: 7 x 7 blocks at 64 px, 15 x 15 at 128 px), 9 unsigned orientation bins, L2-Hys block normalisation.
HOG_PARAMS = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two maps; 0 when either is constant (it has no structure left to share)."""
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first.ravel(), second.ravel()).statistic)


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two signed maps.

    Parameters
    ----------
    first, second : numpy.ndarray
        2-D maps of the same shape.

    Returns
    -------
    float
        In [-1, 1]; a map against its negative gives -1. 0 when either map is constant, NaN when either holds
        inf or NaN.
    """
    if not _finite(first, second):
        return float("nan")
    return rank_correlation(np.asarray(first, np.float64), np.asarray(second, np.float64))


def spearman_abs(first: np.ndarray, second: np.ndarray) -> float:
    """:func:`spearman` of ``|first|`` and ``|second|``: blind to the sign (a map against its negative gives 1)."""
    return spearman(np.abs(first), np.abs(second))


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Structural similarity of the two maps, each min-max scaled to [0, 1] (``data_range=1``).

    scikit-image's :func:`~skimage.metrics.structural_similarity` with its defaults (7 x 7 uniform window).
    Min-max scaling keeps the sign's order, so a map against its negative scores low, as against an unrelated map.

    Parameters
    ----------
    first, second : numpy.ndarray
        2-D maps of the same shape, at least 7 px a side.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical maps. 0 when either map is constant (it has no structure to compare),
        NaN when either holds inf or NaN.
    """
    if not _finite(first, second):
        return float("nan")
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(structural_similarity(_scaled(first), _scaled(second), data_range=1.0))


def ssim_abs(first: np.ndarray, second: np.ndarray) -> float:
    """:func:`ssim` of ``|R|``: blind to a sign flip of the whole map (Adebayo et al. report both)."""
    return ssim(np.abs(first), np.abs(second))


def hog_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of the HOG descriptors of the two maps, each min-max scaled to [0, 1].

    Descriptors from :func:`skimage.feature.hog` with :data:`HOG_PARAMS`. The orientations are unsigned, so
    the descriptor of ``1 - map`` (the scaled negative) equals that of ``map``: HOG is blind to a sign flip.

    Parameters
    ----------
    first, second : numpy.ndarray
        2-D maps of the same shape, at least 16 px a side.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical maps. 0 when either map or either descriptor is constant, NaN when either
        map holds inf or NaN.
    """
    if not _finite(first, second):
        return float("nan")
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    a, b = (hog(_scaled(m), feature_vector=True, **HOG_PARAMS) for m in (first, second))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.pearsonr(a, b).statistic)


#: Every similarity the sanity checks report, by the name used in the ``metric`` column.
SIMILARITIES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman": spearman,
    "spearman_abs": spearman_abs,
    "ssim": ssim,
    "ssim_abs": ssim_abs,
    "hog": hog_similarity,
}


def _finite(*maps: np.ndarray) -> bool:
    return all(np.isfinite(m).all() for m in maps)


def _scaled(heatmap: np.ndarray) -> np.ndarray:
    return normalise(np.asarray(heatmap, np.float64)).astype(np.float64)


def pair_similarities(reference: np.ndarray, others: Sequence[np.ndarray]) -> list[list[float]]:
    """Per map in ``others``, its :data:`SIMILARITIES` with ``reference`` (in that order)."""
    return [[similarity(reference, other) for similarity in SIMILARITIES.values()] for other in others]

"""How alike two maps are: the similarities of the sanity checks (:mod:`helpers.metrics.sanity`), signed and
sign-blind.

Each compares a ``reference`` (the trained model's map) with another. A flat reference has no structure a
randomisation could destroy, so it gives NaN, never a low similarity that would count as "changed" (a method
whose maps are blank would otherwise pass every check); a flat other map against a structured reference is a
change and gives 0.

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


def spearman(reference: np.ndarray, other: np.ndarray) -> float:
    """Spearman rank correlation of two signed maps.

    Parameters
    ----------
    reference, other : numpy.ndarray
        2-D maps of the same shape; ``reference`` is the trained model's.

    Returns
    -------
    float
        In [-1, 1]; a map against its negative gives -1. NaN when ``reference`` is constant or either map holds
        inf or NaN; 0 when only ``other`` is constant.
    """
    if _unjudgeable(reference, other):
        return float("nan")
    return rank_correlation(np.asarray(reference, np.float64), np.asarray(other, np.float64))


def spearman_abs(reference: np.ndarray, other: np.ndarray) -> float:
    """:func:`spearman` of ``|reference|`` and ``|other|``: blind to the sign (a map against its negative gives 1)."""
    return spearman(np.abs(reference), np.abs(other))


def ssim(reference: np.ndarray, other: np.ndarray) -> float:
    """Structural similarity of the two maps, each min-max scaled to [0, 1] (``data_range=1``).

    scikit-image's :func:`~skimage.metrics.structural_similarity` with its defaults (7 x 7 uniform window).
    Min-max scaling keeps the sign's order, so a map against its negative scores low, as against an unrelated map.

    Parameters
    ----------
    reference, other : numpy.ndarray
        2-D maps of the same shape, at least 7 px a side; ``reference`` is the trained model's.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical maps. NaN when ``reference`` is constant or either map holds inf or NaN;
        0 when only ``other`` is constant (it has no structure left to compare).
    """
    if _unjudgeable(reference, other):
        return float("nan")
    if np.ptp(other) == 0:
        return 0.0
    return float(structural_similarity(_scaled(reference), _scaled(other), data_range=1.0))


def ssim_abs(reference: np.ndarray, other: np.ndarray) -> float:
    """:func:`ssim` of ``|R|``: blind to a sign flip of the whole map (Adebayo et al. report both)."""
    return ssim(np.abs(reference), np.abs(other))


def hog_similarity(reference: np.ndarray, other: np.ndarray) -> float:
    """Pearson correlation of the HOG descriptors of the two maps, each min-max scaled to [0, 1].

    Descriptors from :func:`skimage.feature.hog` with :data:`HOG_PARAMS`. The orientations are unsigned, so
    the descriptor of ``1 - map`` (the scaled negative) equals that of ``map``: HOG is blind to a sign flip.

    Parameters
    ----------
    reference, other : numpy.ndarray
        2-D maps of the same shape, at least 16 px a side; ``reference`` is the trained model's.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical maps. NaN when ``reference`` or its descriptor is constant or either map
        holds inf or NaN; 0 when only ``other`` or its descriptor is constant.
    """
    if _unjudgeable(reference, other):
        return float("nan")
    if np.ptp(other) == 0:
        return 0.0
    a, b = (hog(_scaled(m), feature_vector=True, **HOG_PARAMS) for m in (reference, other))
    if np.ptp(a) == 0:
        return float("nan")
    if np.ptp(b) == 0:
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


def _unjudgeable(reference: np.ndarray, other: np.ndarray) -> bool:
    """A flat reference (nothing a randomisation could destroy) or a map with inf or NaN."""
    return not (np.isfinite(reference).all() and np.isfinite(other).all()) or np.ptp(reference) == 0


def _scaled(heatmap: np.ndarray) -> np.ndarray:
    return normalise(np.asarray(heatmap, np.float64)).astype(np.float64)


def pair_similarities(reference: np.ndarray, others: Sequence[np.ndarray]) -> list[list[float]]:
    """Per map in ``others``, its :data:`SIMILARITIES` with ``reference`` (in that order)."""
    return [[similarity(reference, other) for similarity in SIMILARITIES.values()] for other in others]

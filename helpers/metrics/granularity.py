"""How fine and how class-specific a map is, on its own and measured against the ground truth.

On one map (:data:`SINGLE_MAP`): ``gini`` (sparseness), ``entropy`` (complexity) and ``resolution_px`` (width
of the spatial autocorrelation at half height). In absolute pixels these measure the explainer's grid as much as
the method (Grad-CAM at DenseNet's head is a 4x4 grid at 128 px), and a fine map is not a better map when the
finding is broad. So granularity is also measured **relative to the ground truth**, where a coarse map can win:

- :func:`resolution_gap`: how far the map's resolution is from the mask's own (0 = the map is as fine as
  the finding; a fine map of a broad finding scores as badly as a coarse map of a small one);
- :func:`separation`: for an image with two positive findings whose masks differ, whether the map for one
  puts more positive relevance per pixel on its own finding than on the other;
- :func:`~helpers.metrics.localisation.boundary_f1` (in ``localisation``, as it reads the CheXlocalize
  segmentation): whether the outline of the map's segmentation follows the mask's outline.

Class sensitivity, :func:`class_correlation`: the mean Pearson correlation between one image's maps for its
findings with a positive logit, on the positive parts, on ``|R|`` or on the signed maps (the logit's sign flips
whole signed LRP maps, so signed correlations alone mislead).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import positive_part

#: What :func:`class_correlation` correlates: the positive parts, ``|R|`` or the maps as they are.
PARTS = ("positive", "abs", "signed")


def gini(heatmap: np.ndarray) -> float:
    """Gini sparseness of the positive part (Chalasani et al. 2020): 0 uniform, towards 1 for a single pixel.

    NaN where the positive part is all zero (e.g. a Grad-CAM map zeroed by its ReLU): a map with no evidence has
    no spread, and scoring it as uniform would count it as the most diffuse map.
    """
    values = np.sort(positive_part(heatmap).ravel())
    n, total = values.size, values.sum()
    if not 0 < total < np.inf:  # also NaN for a diverged map
        return float("nan")
    return float(((2 * np.arange(1, n + 1) - n - 1) * values).sum() / (n * total))


def entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy (nats) of the positive part as a distribution over pixels (Bhatt et al. 2020).

    NaN where the positive part is all zero, as :func:`gini`.
    """
    values = positive_part(heatmap).ravel()
    total = values.sum()
    if not 0 < total < np.inf:
        return float("nan")
    share = values / total
    return float(-(share * np.log(share + 1e-12)).sum())


def resolution_px(heatmap: np.ndarray) -> float:
    """Width (pixels) at which the map's spatial autocorrelation falls to one half (FWHM of its central peak).

    Written by hand (no library measures it): the mean-subtracted positive part is autocorrelated through
    a zero-padded FFT, averaged over rings of equal lag, and the half-height lag is interpolated. A
    Gaussian blob of standard deviation ``s`` gives about ``2.355 * s * sqrt(2)``; a map that changes
    every pixel gives about 1-2. NaN for a constant map.
    """
    values = positive_part(heatmap)
    if not np.isfinite(values).all():  # the profile would never fall to one half and read as the widest grain
        return float("nan")
    key = (values.shape, hashlib.blake2b(np.ascontiguousarray(values, dtype=np.float64).tobytes()).digest())
    if key not in _RESOLUTIONS:
        if len(_RESOLUTIONS) >= _RESOLUTIONS_KEPT:
            _RESOLUTIONS.pop(next(iter(_RESOLUTIONS)))
        _RESOLUTIONS[key] = _autocorrelation_width(values)
    return _RESOLUTIONS[key]


#: :func:`resolution_px` by the map's bytes: a map is measured for its own row and for ``resolution_gap``, a
#: mask once per method; the oldest entries go first.
_RESOLUTIONS: dict = {}
_RESOLUTIONS_KEPT = 4096


def _autocorrelation_width(values: np.ndarray) -> float:
    """:func:`resolution_px` of a positive part, computed."""
    if values.max() == values.min():
        return float("nan")
    values = values - values.mean()
    height, width = values.shape
    spectrum = np.fft.rfft2(values, s=(2 * height, 2 * width))
    correlation = np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * height, 2 * width))
    correlation = np.fft.fftshift(correlation / correlation[0, 0])
    radius, counts = _rings(height, width)
    limit = min(height, width)
    profile = np.bincount(radius, correlation.ravel())[:limit] / counts[:limit]
    below = np.flatnonzero(profile < 0.5)
    if not len(below):
        return float(2 * limit)
    r = below[0]
    half_lag = r - 1 + (profile[r - 1] - 0.5) / (profile[r - 1] - profile[r])
    return float(2 * half_lag)


@functools.lru_cache(maxsize=8)
def _rings(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ring index (rounded lag) of every cell of the centred ``(2 height, 2 width)`` autocorrelation, and the
    cells per ring; the same for every map of a size, so made once (a third of the time of a 224 px map)."""
    rows, cols = np.indices((2 * height, 2 * width))
    radius = np.hypot(rows - height, cols - width).round().astype(np.intp).ravel()
    radius.setflags(write=False)
    return radius, np.bincount(radius)


#: Granularity scores of one map, by metric name.
SINGLE_MAP = {"gini": gini, "entropy": entropy, "resolution_px": resolution_px}


def resolution_gap(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """``|resolution_px(map) - resolution_px(mask)|``: how far the map's grain is from the finding's (pixels).

    Lower is better, and it can favour either kind of map: a coarse map of a broad finding beats a fine one,
    a fine map of a small finding beats a coarse one. NaN for a constant map or a mask covering the image.
    """
    return abs(resolution_px(heatmap) - resolution_px(np.asarray(mask, dtype=np.float64)))


def separation(heatmap_a: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Contrast ``(dA - dB) / (dA + dB)`` of the map for finding A between A's and B's own regions.

    ``dA`` is the mean positive relevance per pixel inside ``mask_a & ~mask_b``, ``dB`` inside
    ``mask_b & ~mask_a``: 1 when the map for A lies only on A, -1 only on B, 0 when it puts as much per pixel
    on both (or nothing on either). NaN when either region is empty (the masks do not differ).
    """
    mask_a, mask_b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    only_a, only_b = mask_a & ~mask_b, mask_b & ~mask_a
    if not only_a.any() or not only_b.any():
        return float("nan")
    values = positive_part(heatmap_a)
    density_a, density_b = values[only_a].mean(), values[only_b].mean()
    total = density_a + density_b
    return float((density_a - density_b) / total) if total > 0 else 0.0


def class_correlation(heatmaps: HeatmapSet, image: int, part: str = "positive") -> float:
    """Mean Pearson correlation between one image's maps for its findings with a positive logit.

    Parameters
    ----------
    heatmaps : HeatmapSet
        Its ``probs`` (columns in ``heatmaps.pathologies`` order) choose the findings: probability at least
        0.5 (a positive prediction, as in the other scores); ``No Finding`` is left out. A set without
        probabilities (NaN) has none.
    image : int
        Row of the image.
    part : {"positive", "abs", "signed"}
        Correlate the positive parts (the evidence each map shows *for* its finding), ``|R|`` (the pixels each
        map uses, whatever the sign) or the maps as they are.

    Returns
    -------
    float
        Near 1: the method shows the same thing whatever the pathology asked for. NaN with fewer than two
        such findings whose chosen part varies over the image, or when one of their maps diverged (inf or NaN),
        as every score of such a map.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}.")
    probs = heatmaps.probs[image]
    keep = [j for j, name in enumerate(heatmaps.pathologies) if name != "No Finding" and probs[j] >= 0.5]
    if len(keep) < 2:
        return float("nan")
    flat = heatmaps.maps[image, keep].reshape(len(keep), -1).astype(np.float64)
    if not np.isfinite(flat).all():  # checked before the part is taken: max(-inf, 0) would look finite
        return float("nan")
    flat = {"positive": positive_part, "abs": np.abs, "signed": np.asarray}[part](flat)
    varying = flat.std(axis=1) > 0
    if varying.sum() < 2:
        return float("nan")
    matrix = np.corrcoef(flat[varying])
    return float(matrix[np.triu_indices_from(matrix, k=1)].mean())

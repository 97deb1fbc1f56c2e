"""How fine and how class-specific a map is: sparseness, complexity, effective resolution, class correlation."""

from __future__ import annotations

import numpy as np

from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import positive_part


def gini(heatmap: np.ndarray) -> float:
    """Gini sparseness of the positive part (Chalasani et al. 2020): 0 uniform, towards 1 for a single pixel."""
    values = np.sort(positive_part(heatmap).ravel())
    n, total = values.size, values.sum()
    if total == 0:
        return 0.0
    return float(((2 * np.arange(1, n + 1) - n - 1) * values).sum() / (n * total))


def entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy (nats) of the positive part as a distribution over pixels (Bhatt et al. 2020)."""
    values = positive_part(heatmap).ravel()
    total = values.sum()
    if total == 0:
        return float(np.log(values.size))
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
    if values.max() == values.min():
        return float("nan")
    values = values - values.mean()
    height, width = values.shape
    spectrum = np.fft.rfft2(values, s=(2 * height, 2 * width))
    correlation = np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * height, 2 * width))
    correlation = np.fft.fftshift(correlation / correlation[0, 0])
    rows, cols = np.indices(correlation.shape)
    radius = np.hypot(rows - height, cols - width).round().astype(int)
    limit = min(height, width)
    profile = np.bincount(radius.ravel(), correlation.ravel())[:limit] / np.bincount(radius.ravel())[:limit]
    below = np.flatnonzero(profile < 0.5)
    if not len(below):
        return float(2 * limit)
    r = below[0]
    half_lag = r - 1 + (profile[r - 1] - 0.5) / (profile[r - 1] - profile[r])
    return float(2 * half_lag)


#: Granularity scores of one map, by metric name.
SINGLE_MAP = {"gini": gini, "entropy": entropy, "resolution_px": resolution_px}


def class_correlation(heatmaps: HeatmapSet, image: int) -> float:
    """Mean Pearson correlation between one image's maps for different findings (``No Finding`` left out).

    Near 1: the method shows the same thing whatever the pathology asked for.
    """
    keep = [j for j, name in enumerate(heatmaps.pathologies) if name != "No Finding"]
    flat = heatmaps.maps[image, keep].reshape(len(keep), -1).astype(np.float64)
    varying = flat.std(axis=1) > 0
    if varying.sum() < 2:
        return float("nan")
    matrix = np.corrcoef(flat[varying])
    return float(matrix[np.triu_indices_from(matrix, k=1)].mean())

"""Means with bootstrap 95% CIs over images, per method and paired between methods."""

from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaN-free ``values``); NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, pooled: bool = True) -> pd.DataFrame:
    """Mean and bootstrap 95% CI over images per method x pathology x metric.

    With ``pooled``, adds pathology ``"all"`` per method x metric: each image's values are averaged first,
    so the CI still resamples images. NaN values (undefined scores) are left out; ``n`` counts the values used.
    """
    scores = _with_pooled(scores) if pooled else scores.dropna(subset=["value"])
    rows = []
    for (method, pathology, metric), group in scores.groupby(["method", "pathology", "metric"], sort=False):
        low, high = bootstrap_ci(group["value"].to_numpy(), n_boot, seed)
        rows.append(
            {
                "method": method,
                "pathology": pathology,
                "metric": metric,
                "mean": group["value"].mean(),
                "ci_low": low,
                "ci_high": high,
                "n": len(group),
            }
        )
    return pd.DataFrame(rows)


def _with_pooled(scores: pd.DataFrame) -> pd.DataFrame:
    """NaN-free scores plus pathology ``"all"`` rows: each image's per-pathology values averaged."""
    scores = scores.dropna(subset=["value"])
    per_pathology = scores[scores["pathology"] != "all"]
    pooled = per_pathology.groupby(["method", "metric", "image"], as_index=False, sort=False)["value"].mean()
    return pd.concat([scores, pooled.assign(pathology="all")], ignore_index=True)


def paired_differences(
    scores: pd.DataFrame, method_a: str, method_b: str, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Mean of ``a - b`` over images scored by both methods, per pathology x metric, with a bootstrap 95% CI.

    Differences are taken per (image, pathology) first, where both methods have a value; pathology ``"all"``
    then averages each image's differences, so both methods are always compared on the same maps.
    """
    difference = _with_pooled_differences(_per_map_differences(scores, method_a, method_b))
    rows = []
    for (pathology, metric), group in difference.groupby(["pathology", "metric"], sort=False):
        low, high = bootstrap_ci(group["difference"].to_numpy(), n_boot, seed)
        rows.append(
            {
                "pathology": pathology,
                "metric": metric,
                "a": method_a,
                "b": method_b,
                "mean_difference": group["difference"].mean(),
                "ci_low": low,
                "ci_high": high,
                "n": len(group),
            }
        )
    return pd.DataFrame(rows)


def _per_map_differences(scores: pd.DataFrame, method_a: str, method_b: str) -> pd.DataFrame:
    """``pathology, metric, image, difference``: ``a - b`` where both methods scored the same map."""
    scores = scores.dropna(subset=["value"])
    wide = scores.pivot_table(index=["pathology", "metric", "image"], columns="method", values="value")
    if method_a not in wide or method_b not in wide:
        raise ValueError(f"Both methods must be in the scores; have {sorted(scores['method'].unique())}.")
    return (wide[method_a] - wide[method_b]).dropna().rename("difference").reset_index()


def _with_pooled_differences(difference: pd.DataFrame) -> pd.DataFrame:
    """Per-map differences plus pathology ``"all"`` rows: each image's differences averaged."""
    per_pathology = difference[difference["pathology"] != "all"]
    pooled = per_pathology.groupby(["metric", "image"], as_index=False, sort=False)["difference"].mean()
    return pd.concat([difference, pooled.assign(pathology="all")], ignore_index=True)

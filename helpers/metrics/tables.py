"""Tables and structured outcomes from summaries and paired comparisons: numbers only, no sentences.

A notebook or the README states what these return; no conclusion is written here. Published scores on other
data (SHAMSUL, CheXlocalize) are cited in the notebooks' text, not mixed into the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: +1 where a higher value is better, -1 where lower is better; metrics not listed have no better direction.
BETTER = {
    "hit": 1,
    "hit_any": 1,
    "near_hit": 1,
    "hit_multi": 1,
    "distance_px": -1,
    "iou": 1,
    "iou_gated": 1,
    "mass_accuracy": 1,
    "rank_accuracy": 1,
    "pixel_auroc": 1,
    "resolution_gap": -1,
    "boundary_f1": 1,
    "separation": 1,
    "deletion_auc": -1,
    "insertion_auc": 1,
    "cf_deletion_auc": -1,
    "cf_insertion_auc": 1,
}


def results_table(summary: pd.DataFrame, methods: Sequence[str], metric_names: Sequence[str]) -> pd.DataFrame:
    """Pooled means with 95% CIs, ``"0.430 [0.350, 0.510]"``, one row per method that has any of the metrics."""
    pooled = summary[summary["pathology"] == "all"].set_index(["method", "metric"])
    rows = []
    for method in methods:
        row = {"method": method}
        for metric in metric_names:
            if (method, metric) in pooled.index:
                r = pooled.loc[(method, metric)]
                row[metric] = f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", *metric_names])


def outcome(comparison: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Adds ``outcome`` to a :func:`~helpers.metrics.statistics.compare` table: is ``a`` better than ``b``?

    ``+1``: ``a`` is better (Holm-corrected p < ``alpha`` and the CI of the difference excludes 0 in the better
    direction of :data:`BETTER`); ``-1``: ``b`` is better the same way; ``0``: not distinguishable; NaN for a
    metric without a better direction (e.g. ``gini``).
    """
    direction = comparison["metric"].map(BETTER).fillna(0)
    better = direction * comparison["ci_low"].where(direction > 0, comparison["ci_high"]) > 0
    worse = direction * comparison["ci_high"].where(direction > 0, comparison["ci_low"]) < 0
    significant = comparison["p_holm"] < alpha
    result = (better & significant).astype(int) - (worse & significant).astype(int)
    return comparison.assign(outcome=result.where(direction != 0, np.nan))


def against_reference(
    comparison: pd.DataFrame, metric_names: Sequence[str], digits: int = 3, reference: str | None = None
) -> pd.DataFrame:
    """Wide table from an :func:`outcome` table: per method ``a`` and the method ``b`` it is compared with (only
    ``reference`` when given), ``"+0.120 [+0.05, +0.19] p=0.003 (+1)"`` per metric: the difference with its CI,
    Holm p-value and outcome."""
    rows = comparison if reference is None else comparison[comparison["b"] == reference]
    table = {}
    for _, r in rows.iterrows():
        table.setdefault((r["a"], r["b"]), {"method": r["a"], "versus": r["b"]})[r["metric"]] = (
            f"{r['mean_difference']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}] "
            f"p={r['p_holm']:.2g} ({r['outcome']:+.0f})"
        )
    return pd.DataFrame(list(table.values()), columns=["method", "versus", *metric_names])

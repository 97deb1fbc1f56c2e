"""Tables and verdicts from summaries: pooled means with CIs beside published anchors, granularity, hit rate."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from helpers.metrics.statistics import paired_differences

#: Published scores on *other data* (real CheXpert), shown beside ours and labelled as such.
ANCHORS = [
    {"method": "Grad-CAM (SHAMSUL 2023, CheXpert: other data)", "iou": 0.153},
    {"method": "LRP (SHAMSUL 2023, CheXpert: other data)", "iou": 0.104},
    {"method": "Grad-CAM (CheXlocalize 2022, CheXpert test: other data)", "hit": 0.58, "iou": 0.28},
]


def results_table(
    summary: pd.DataFrame, methods: Sequence[str], metric_names: Sequence[str], anchors: Sequence[dict] = ANCHORS
) -> pd.DataFrame:
    """Pooled means with 95% CIs, ``"0.43 [0.35, 0.51]"``, one row per method, then the anchors' rows."""
    pooled = summary[summary["pathology"] == "all"].set_index(["method", "metric"])
    rows = []
    for method in methods:
        row = {"method": method}
        for metric in metric_names:
            if (method, metric) in pooled.index:
                r = pooled.loc[(method, metric)]
                row[metric] = f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        rows.append(row)
    rows += [{"method": a["method"], **{m: f"{a[m]:.3f}" for m in metric_names if m in a}} for a in anchors]
    return pd.DataFrame(rows, columns=["method", *metric_names])


def granularity_verdict(
    scores: pd.DataFrame, lrp_method: str, cam_method: str, n_boot: int = 1000, seed: int = 0
) -> tuple[str, pd.DataFrame]:
    """Is ``lrp_method`` more granular than ``cam_method``? Paired differences of resolution and Gini.

    Granular means a smaller effective resolution (finer detail) and a higher Gini sparseness. The claim
    holds when both paired 95% CIs exclude zero in that direction, fails when either excludes zero the
    other way, and is undecided otherwise.
    """
    differences = paired_differences(scores, lrp_method, cam_method, n_boot, seed)
    pooled = differences[
        (differences["pathology"] == "all") & differences["metric"].isin(["resolution_px", "gini"])
    ].set_index("metric")
    finer = pooled.loc["resolution_px", "ci_high"] < 0 and pooled.loc["gini", "ci_low"] > 0
    coarser = pooled.loc["resolution_px", "ci_low"] > 0 or pooled.loc["gini", "ci_high"] < 0
    verdict = "supported" if finer else "contradicted" if coarser else "undecided"
    text = (
        f"'LRP is more granular than Grad-CAM' is {verdict} for {lrp_method} vs {cam_method}: effective "
        f"resolution differs by {pooled.loc['resolution_px', 'mean_difference']:+.1f} px (95% CI "
        f"{pooled.loc['resolution_px', 'ci_low']:+.1f} to {pooled.loc['resolution_px', 'ci_high']:+.1f}), Gini "
        f"sparseness by {pooled.loc['gini', 'mean_difference']:+.3f} ({pooled.loc['gini', 'ci_low']:+.3f} to "
        f"{pooled.loc['gini', 'ci_high']:+.3f}), over {int(pooled.loc['gini', 'n'])} images."
    )
    return text, pooled.reset_index()


def hit_rate_diagnosis(
    summary: pd.DataFrame, methods: Sequence[str], reference: str = "occlusion", target: float = 0.8
) -> str:
    """Who is at fault when no method reaches a ``target`` hit rate: the methods, the metric, or the model?

    Occlusion of the same model is the reference: it needs no gradients and reads the model's behaviour
    directly. If even its maximum is rarely near the mask, the model (or the data it learnt from) does not
    look at the findings. If its maximum is near the mask (``near_hit``) but not always inside, the strict
    hit is asking for more than the image resolution gives on thin and small masks; methods whose near-hit
    rate stays far below the reference's miss the findings themselves.
    """
    pooled = summary[summary["pathology"] == "all"].set_index(["metric", "method"])

    def text(metric, method):
        r = pooled.loc[(metric, method)]
        return f"{method} {r['mean']:.2f} (95% CI {r['ci_low']:.2f}-{r['ci_high']:.2f})"

    hits = pooled.loc["hit"]["mean"]
    best = hits.loc[list(methods)].idxmax()
    if hits[best] >= target:
        return f"Hit rate: {text('hit', best)} reaches the {target} target."
    if reference not in hits.index:
        return f"No method reaches a hit rate of {target} (best: {text('hit', best)}); run occlusion to find out why."
    near = pooled.loc["near_hit"]["mean"]
    if near[reference] < target:
        return (
            f"No method reaches a hit rate of {target} (best: {text('hit', best)}), and even occlusion's maximum "
            f"is near the finding too rarely ({text('near_hit', reference)} within 1/16 of the width): the model "
            f"does not rely on the findings' locations, so the model or its data is at fault."
        )
    near_best = near.loc[list(methods)].idxmax()
    return (
        f"No method reaches a hit rate of {target} (best: {text('hit', best)}); occlusion of the same model "
        f"reaches {text('hit', reference)}. Its maximum lies within 1/16 of the width of the mask far more often "
        f"({text('near_hit', reference)}), so the model does look at the findings and the phantom's masks are "
        f"where it looks: the strict hit fails on thin and small masks (support devices, pleural thickening, "
        f"fractures) at this resolution. The gradient methods are at fault beyond that: their maxima are that "
        f"near in at most {text('near_hit', near_best)}."
    )

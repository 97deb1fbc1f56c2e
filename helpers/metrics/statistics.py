"""Means with bootstrap 95% CIs clustered by patient, paired comparisons with Holm-corrected p-values, seeds.

Images of one patient share anatomy (the phantom's patients do, real ones too), so they are not independent:
every bootstrap here resamples **patients** (clusters) when it is given an image -> patient map, and images
otherwise. Paired comparisons take the per-map difference of two methods, average it per patient, and test the
patient means with the Wilcoxon signed-rank test (scipy); p-values of a family of comparisons are Holm-corrected
(statsmodels). :func:`across_seeds` puts the seed-to-seed spread beside each number of repeated studies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import stats
from statsmodels.stats.multitest import multipletests

from helpers.metrics.tables import BETTER

KEYS = ["method", "pathology", "metric"]


def bootstrap_ci(
    values: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of NaN-free ``values``; NaN for fewer than two clusters.

    With ``clusters`` (one label per value, e.g. the patient) whole clusters are resampled and the mean of a
    resample is its values' sum over its values' count (every value weighs the same, as in the point estimate).
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.arange(len(values)) if clusters is None else pd.factorize(np.asarray(clusters))[0]
    sums = np.bincount(labels, weights=values)
    counts = np.bincount(labels).astype(np.float64)
    if len(sums) < 2:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(sums), (n_boot, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(
    scores: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    pooled: bool = True,
    patients: Mapping[str, str] | None = None,
    by: Sequence[str] = (),
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Mean and bootstrap 95% CI per method x pathology x metric (and the ``by`` columns of ``scores``).

    With ``pooled``, adds pathology ``"all"`` per method x metric: each image's values are averaged first.
    With ``patients`` (image id -> patient id) the CI resamples patients, else images. NaN values (undefined
    scores) are left out; ``n`` counts the values used and ``n_patients`` their patients. The methods are
    summarised on ``n_jobs`` processes (joblib; -1: every core); the rows come in the order their keys first
    appear in ``scores``, whatever ``n_jobs``.
    """
    keys = [*KEYS, *by]
    scores = _with_pooled(scores, list(by)) if pooled else scores.dropna(subset=["value"])
    per_method = Parallel(n_jobs=n_jobs)(
        delayed(_summary_rows)(group, keys, n_boot, seed, patients) for _, group in scores.groupby("method", sort=False)
    )
    order = scores[keys].drop_duplicates()
    return order.merge(pd.DataFrame([row for rows in per_method for row in rows], columns=[*keys, *SUMMARY]), on=keys)


#: The columns :func:`summarise` adds to its keys.
SUMMARY = ["mean", "ci_low", "ci_high", "n", "n_patients"]


def _summary_rows(scores: pd.DataFrame, keys: list[str], n_boot: int, seed: int, patients) -> list[tuple]:
    """:func:`summarise`'s rows of ``scores`` (one method's), as tuples of ``keys`` and :data:`SUMMARY`."""
    rows = []
    for key, group in scores.groupby(keys, sort=False):
        clusters = patient_clusters(group["image"], patients)
        low, high = bootstrap_ci(group["value"].to_numpy(), n_boot, seed, clusters=clusters)
        rows.append((*key, group["value"].mean(), low, high, len(group), len(set(clusters))))
    return rows


def patient_clusters(images: pd.Series, patients: Mapping[str, str] | None) -> list:
    """The patient of each image (the image itself without a map).

    Raises
    ------
    ValueError
        If ``patients`` lacks an image: it would leave every resample, or raise deep inside the bootstrap.
    """
    images = images.astype(str).tolist()
    if not patients:
        return images
    unknown = sorted({image for image in images if image not in patients})
    if unknown:
        raise ValueError(
            f"patients has no entry for {len(unknown)} scored images (e.g. {unknown[:3]}): give the patient of every "
            f"image, e.g. dict(zip(batch.image_ids, batch.patients))."
        )
    return [patients[image] for image in images]


def _with_pooled(scores: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """NaN-free scores plus pathology ``"all"`` rows: each image's per-pathology values averaged."""
    scores = scores.dropna(subset=["value"])
    per_pathology = scores[scores["pathology"] != "all"]
    pooled = per_pathology.groupby(["method", "metric", "image", *by], as_index=False, sort=False)["value"].mean()
    return pd.concat([scores, pooled.assign(pathology="all")], ignore_index=True)


def paired_differences(
    scores: pd.DataFrame,
    method_a: str,
    method_b: str,
    n_boot: int = 1000,
    seed: int = 0,
    patients: Mapping[str, str] | None = None,
    pathologies: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean of ``a - b`` over the maps both methods scored, per pathology x metric, with CI and p-value.

    Differences are taken per (image, pathology) first, where both methods have a value; pathology ``"all"``
    then averages each image's differences, so both methods are always compared on the same maps. The CI
    resamples patients (with ``patients``) or images; ``p_value`` is the Wilcoxon signed-rank test of the
    per-patient (or per-image) mean differences, two-sided toward the mean difference (:func:`_signed_rank_p`),
    uncorrected (see :func:`compare`). ``pathologies`` limits
    the rows (e.g. ``["all"]``; default every pathology and ``"all"``).
    """
    return _paired_rows(_wide_scores(scores), method_a, method_b, n_boot, seed, patients, pathologies)


#: The columns of a :func:`compare` table (before :func:`helpers.metrics.outcome` adds its own).
PAIRED_COLUMNS = ["pathology", "metric", "a", "b", "mean_difference", "ci_low", "ci_high", "n", "n_patients", "p_value"]


def _paired_rows(wide, method_a, method_b, n_boot, seed, patients, pathologies) -> pd.DataFrame:
    """:func:`paired_differences` from the scores already pivoted to one column per method."""
    difference = _with_pooled_differences(_per_map_differences(wide, method_a, method_b))
    if pathologies is not None:
        difference = difference[difference["pathology"].isin(pathologies)]
    rows = []
    for (pathology, metric), group in difference.groupby(["pathology", "metric"], sort=False):
        clusters = patient_clusters(group["image"], patients)
        low, high = bootstrap_ci(group["difference"].to_numpy(), n_boot, seed, clusters=clusters)
        cluster_means = group.groupby(np.asarray(clusters))["difference"].mean().to_numpy()
        mean = group["difference"].mean()
        rows.append(
            {
                "pathology": pathology,
                "metric": metric,
                "a": method_a,
                "b": method_b,
                "mean_difference": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(group),
                "n_patients": len(cluster_means),
                "p_value": _signed_rank_p(cluster_means, toward=np.sign(mean)),
            }
        )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _signed_rank_p(differences: np.ndarray, toward: float = 0.0) -> float:
    """Wilcoxon signed-rank p-value, two-sided in the direction of the estimate; 1 when every difference is zero,
    NaN for fewer than two.

    ``toward`` is the sign of the mean difference, the estimate whose CI gives a verdict its direction. The ranks
    test where the differences are centred, which can lie on the other side of the mean (most patients a little
    worse, a few much better): the p-value is then twice the one-sided p-value toward the mean, at most 1. Where
    ranks and mean agree this is the usual two-sided p-value; where they disagree it is near 1, so no verdict
    rests on a test that points the other way. ``toward=0``: the plain two-sided test.
    """
    if len(differences) < 2:
        return float("nan")
    if not np.any(differences):
        return 1.0
    if toward == 0:
        return float(stats.wilcoxon(differences, zero_method="zsplit").pvalue)
    one_sided = stats.wilcoxon(differences, zero_method="zsplit", alternative="greater" if toward > 0 else "less")
    return float(min(1.0, 2.0 * one_sided.pvalue))


def _wide_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """NaN-free scores with one column per method, indexed by ``pathology, metric, image``."""
    scores = scores.dropna(subset=["value"])
    keys = ["pathology", "metric", "image", "method"]
    repeated = scores[scores.duplicated(keys, keep=False)]
    if len(repeated):  # pivot_table would average them into one score without a word
        example = repeated.iloc[0][keys].tolist()
        raise ValueError(f"{len(repeated)} score rows share their {keys} with another, e.g. {example}: score once.")
    return scores.pivot(index=["pathology", "metric", "image"], columns="method", values="value")


def _per_map_differences(wide: pd.DataFrame, method_a: str, method_b: str) -> pd.DataFrame:
    """``pathology, metric, image, difference``: ``a - b`` where both methods scored the same map."""
    if method_a not in wide or method_b not in wide:
        raise ValueError(f"Both methods must be in the scores; have {sorted(wide.columns)}.")
    return (wide[method_a] - wide[method_b]).dropna().rename("difference").reset_index()


def _with_pooled_differences(difference: pd.DataFrame) -> pd.DataFrame:
    """Per-map differences plus pathology ``"all"`` rows: each image's differences averaged."""
    per_pathology = difference[difference["pathology"] != "all"]
    pooled = per_pathology.groupby(["metric", "image"], as_index=False, sort=False)["difference"].mean()
    return pd.concat([difference, pooled.assign(pathology="all")], ignore_index=True)


def compare(
    scores: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metric_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    patients: Mapping[str, str] | None = None,
    pathology: str = "all",
) -> pd.DataFrame:
    """Paired differences ``a - b`` for every (a, b) in ``pairs`` and metric, with Holm-corrected p-values.

    The family corrected together is every row returned (all pairs x metrics at ``pathology``) whose metric can
    give a verdict (it has a better direction in :data:`~helpers.metrics.tables.BETTER`); the rows of metrics
    without one (``gini``, ``resolution_px``: descriptive) are corrected as a family of their own, so that they
    cannot weaken a verdict's correction. ``p_holm`` is the corrected p-value. NaN p-values (too few patients) stay
    NaN and are left out of the family. No pairs: an empty table.
    """
    wide = _wide_scores(scores[scores["metric"].isin(metric_names)])  # bootstrap only what the table reports
    tables = [_paired_rows(wide, a, b, n_boot, seed, patients, [pathology]) for a, b in pairs]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PAIRED_COLUMNS)
    p_values, decisive = table["p_value"].to_numpy(dtype=np.float64), table["metric"].isin(BETTER).to_numpy()
    p_holm = np.full_like(p_values, np.nan)
    p_holm[decisive], p_holm[~decisive] = holm(p_values[decisive]), holm(p_values[~decisive])
    return table.assign(p_holm=p_holm)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-corrected p-values (statsmodels' ``multipletests``); NaN entries stay NaN and are not counted."""
    p_values = np.asarray(p_values, dtype=np.float64)
    corrected = np.full_like(p_values, np.nan)
    finite = np.isfinite(p_values)
    if finite.any():
        corrected[finite] = multipletests(p_values[finite], method="holm")[1]
    return corrected


def across_seeds(tables: Mapping[int, pd.DataFrame], keys: Sequence[str], value: str = "mean") -> pd.DataFrame:
    """One row per ``keys``: the mean of ``value`` over seeds, its standard deviation, min, max and each seed's.

    ``tables`` maps a training seed to that seed's table (e.g. :func:`summarise` or :func:`compare` output).
    """
    stacked = _stacked_once_per_seed(tables, keys)
    grouped = stacked.groupby(list(keys), sort=False)[value]
    spread = grouped.agg(seed_mean="mean", seed_sd="std", seed_min="min", seed_max="max", n_seeds="count")
    per_seed = stacked.pivot_table(index=list(keys), columns="seed", values=value, sort=False)
    per_seed.columns = [f"seed_{s}" for s in per_seed.columns]
    return spread.join(per_seed).reset_index()


def _stacked_once_per_seed(tables: Mapping[int, pd.DataFrame], keys: Sequence[str]) -> pd.DataFrame:
    """The tables stacked with a ``seed`` column; a clear error where a seed has two rows for the same ``keys``
    (e.g. a pathology column left out of them), which would be counted as two seeds."""
    stacked = pd.concat([t.assign(seed=s) for s, t in tables.items()], ignore_index=True)
    repeated = stacked[stacked.duplicated([*keys, "seed"], keep=False)]
    if len(repeated):
        example = repeated.iloc[0][[*keys, "seed"]].astype(str).tolist()
        raise ValueError(
            f"{len(repeated)} rows share their {list(keys)} within one seed, e.g. {example}: add the column that "
            f"tells them apart to the keys, or filter the tables first."
        )
    return stacked


def holds_across_seeds(comparisons: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Per (a, b, metric, pathology): does the outcome hold in every seed?

    ``comparisons`` maps a seed to its :func:`compare` table with :func:`~helpers.metrics.tables.outcome` added.
    ``holds`` is the outcome (+1: ``a`` better, -1: ``a`` worse) where every seed has the comparison and all
    agree on it, else 0; beside it the seed mean and spread of the difference and the largest Holm p-value.
    Compare the seeds over one family (the same methods and metrics), or their Holm corrections differ.
    """
    keys = ["a", "b", "metric", "pathology"]
    stacked = _stacked_once_per_seed(comparisons, keys)
    rows = []
    for key, group in stacked.groupby(keys, sort=False):
        outcomes = set(group["outcome"])
        agree = group["seed"].nunique() == len(comparisons) and len(outcomes) == 1
        rows.append(
            {
                **dict(zip(keys, key)),
                "seed_mean_difference": group["mean_difference"].mean(),
                "seed_sd_difference": group["mean_difference"].std(),
                "max_p_holm": group["p_holm"].max(),
                "n_seeds": len(group),
                "holds": int(outcomes.pop()) if agree and np.isfinite(group["outcome"].iloc[0]) else 0,
            }
        )
    return pd.DataFrame(rows)


def strata(
    image_ids: Sequence[str], probs: np.ndarray, masks: np.ndarray, codes: np.ndarray, pathologies: Sequence[str]
) -> pd.DataFrame:
    """Per positive (image, pathology) with a mask: the model's verdict and the mask's size class.

    ``prediction`` is ``"true positive"`` where the probability is at least 0.5 and ``"false negative"``
    otherwise; ``mask_size`` is the tercile (``"small"``, ``"medium"``, ``"large"``) of the mask's area among all
    the positive pairs, equal areas in the same one (NaN with fewer than three pairs: no terciles, so no such
    stratum). Merge with a score table on ``image, pathology`` and pass ``by=[...]`` to :func:`summarise`.

    Parameters
    ----------
    image_ids : sequence of str
    probs : array ``(n, len(pathologies))``
        The model's probabilities (any :class:`~helpers.heatmaps.HeatmapSet`'s ``probs``).
    masks : bool array ``(n, 14, H, W)``
    codes : array ``(n, 14)``
    pathologies : sequence of str
        The columns of ``probs``.
    """
    from helpers import labels  # the class-axis order of masks and codes

    rows = []
    for i, image_id in enumerate(image_ids):
        for j, pathology in enumerate(pathologies):
            k = labels.PATHOLOGIES.index(pathology)
            if codes[i, k] == 1 and masks[i, k].any():
                rows.append((str(image_id), pathology, probs[i, j] >= 0.5, masks[i, k].mean()))
    table = pd.DataFrame(rows, columns=["image", "pathology", "predicted", "area"])
    sizes = _area_terciles(table["area"]) if len(table) >= 3 else pd.Series(np.nan, index=table.index, dtype=object)
    return table.assign(prediction=np.where(table.pop("predicted"), "true positive", "false negative"), mask_size=sizes)


def _area_terciles(areas: pd.Series) -> pd.Series:
    """``"small"``, ``"medium"`` or ``"large"`` per area; equal areas share a tercile.

    The edges are cut on distinct ranks, so that a run of equal areas (a finding drawn the same size twice) cannot
    collapse them; each run then goes whole to the tercile of its average rank, not split by row order.
    """
    _, edges = pd.qcut(areas.rank(method="first"), 3, retbins=True)
    tercile = pd.cut(areas.rank(method="average"), edges, labels=["small", "medium", "large"], include_lowest=True)
    return tercile.astype(str)


def sample_table(codes: np.ndarray, masks: np.ndarray, patients: Sequence[str]) -> pd.DataFrame:
    """What the explained sample holds: per localisable finding, its positive images (code 1 with a mask) and
    their patients; pathology ``"all"``: every image, patient and positive pair.

    Columns ``pathology, images, patients, positives``.
    """
    from helpers import labels  # the class-axis order of masks and codes

    codes, patients = np.asarray(codes), np.asarray(patients)
    present = (codes == 1) & np.asarray(masks).reshape(*codes.shape, -1).any(axis=-1)
    rows = [
        {
            "pathology": name,
            "images": int(present[:, k].sum()),
            "patients": len(set(patients[present[:, k]])),
            "positives": int(present[:, k].sum()),
        }
        for k, name in enumerate(labels.PATHOLOGIES)
        if name in labels.LOCALISABLE
    ]
    total = {"pathology": "all", "images": len(codes), "patients": len(set(patients)), "positives": int(present.sum())}
    return pd.DataFrame([*rows, total])

"""Scores against ground truth of what the model uses (notebook 06): the phantom's counterfactual renders say how
much each finding moves the model's logits, and a spurious marker says whether a model took a shortcut.

- :func:`logit_changes`: the model's logits on each image and on its counterfactual (a finding, or the marker,
  rendered out): per removal, the change of every pathology's logit. This is the truth the maps are held to.
- :func:`region_scores`: how much of a map lies in a region (the removal's footprint, the marker, the finding):
  mass, whether the maximum lies there, and the share of its top-ranked pixels there.
- :func:`use_correlation`: across pairs, does a method's mass in the footprint rank the findings the way their
  logit changes do (Spearman, with a bootstrap CI over patients)?
- :func:`map_shift`: how far a map for pathology A moves when only finding B is removed.
- :func:`detection_auroc`: can a score of the maps alone tell the shortcut model's maps from the clean model's?

Written by hand where no library scores maps against counterfactual ground truth; the statistics are scipy's
(Spearman) and scikit-learn's (AUROC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from torch import nn

from helpers import labels
from helpers.explainers import frozen_eval, model_device
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS
from helpers.metrics.localisation import hit, mass_accuracy, rank_accuracy
from helpers.metrics.similarity import spearman_abs
from helpers.metrics.statistics import patient_clusters
from helpers.tensors import to_numpy


def excess_mass(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance inside the mask minus the mask's share of the image: 0 for a flat map or one
    blind to the region, so that a large region does not score by its size alone."""
    return mass_accuracy(heatmap, mask) - float(np.mean(mask))


#: Scores of a map against a region, by the suffix of their metric name (``<region>_<suffix>``).
REGION_SCORES = {"mass": mass_accuracy, "excess": excess_mass, "max": hit, "rank": rank_accuracy}


def logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Float64 ``(n, 14)`` logits of ``inputs`` (moved to the model's device in batches)."""
    device = model_device(model)
    with frozen_eval(model), torch.no_grad():  # the caller's mode back afterwards
        out = [model(inputs[s : s + batch_size].to(device)) for s in range(0, len(inputs), batch_size)]
    return to_numpy(torch.cat(out)).astype(np.float64)


def logit_changes(
    model: nn.Module,
    inputs: torch.Tensor,
    counterfactual_inputs: torch.Tensor,
    pairs: Sequence[tuple[int, str]],
    image_ids: Sequence[str],
) -> pd.DataFrame:
    """The change of every pathology's logit when each pair's finding is rendered out.

    Parameters
    ----------
    model : nn.Module
    inputs : tensor ``(n, 3, H, W)``
        The images as written.
    counterfactual_inputs : tensor ``(len(pairs), 3, H, W)``
        Pair ``p``'s image without its finding (or marker).
    pairs : sequence of (image index, removed name)
    image_ids : sequence of str
        Ids of ``inputs``' rows.

    Returns
    -------
    DataFrame
        One row per pair and pathology: ``image, removed, pathology, delta`` with
        ``delta = logit(image) - logit(counterfactual)``: positive where the removed thing raised the logit.
    """
    rows = [i for i, _ in pairs]
    delta = logits(model, inputs[rows]) - logits(model, counterfactual_inputs)
    return pd.DataFrame(
        {
            "image": np.repeat([image_ids[i] for i in rows], len(labels.PATHOLOGIES)),
            "removed": np.repeat([name for _, name in pairs], len(labels.PATHOLOGIES)),
            "pathology": np.tile(labels.PATHOLOGIES, len(pairs)),
            "delta": delta.ravel(),
        }
    )


def region_scores(
    heatmaps: HeatmapSet, targets: Sequence[tuple[int, str]], regions: np.ndarray, region: str
) -> pd.DataFrame:
    """Each target map's mass in its region, whether its maximum lies there, and the share of its top pixels there.

    Parameters
    ----------
    heatmaps : HeatmapSet
    targets : sequence of (image index, pathology)
        The maps scored, one per region.
    regions : bool ``(len(targets), H, W)``
    region : str
        Name of the region, the metrics' prefix: ``<region>_mass`` (share of the positive relevance inside,
        Arras et al. 2022), ``<region>_excess`` (that share minus the region's share of the image: a random or flat
        map scores 0 whatever the region's size), ``<region>_max`` (the maximum inside; tied maxima count with
        their share inside) and ``<region>_rank`` (share of the ``|region|`` top-ranked pixels inside: the kind of
        measure Sun et al. 2023 call confounder sensitivity). Empty regions and maps with inf or NaN score NaN.

    Returns
    -------
    DataFrame
        ``image, pathology, method, metric, value``.
    """
    out = []
    for (i, pathology), mask in zip(targets, regions):
        heatmap = heatmaps.map(i, pathology)
        usable = mask.any() and np.isfinite(heatmap).all()
        for suffix, function in REGION_SCORES.items():
            value = function(heatmap, mask) if usable else np.nan
            out.append((heatmaps.image_ids[i], pathology, heatmaps.method, f"{region}_{suffix}", value))
    return pd.DataFrame(out, columns=COLUMNS)


def use_correlation(
    scores: pd.DataFrame,
    truth: pd.DataFrame,
    metric: str = "footprint_excess",
    n_boot: int = 1000,
    patients: Mapping[str, str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method, Spearman's rank correlation across pairs between a map score and the model's logit change.

    Parameters
    ----------
    scores : DataFrame
        Tidy ``image, pathology, method, metric, value`` (e.g. :func:`region_scores` of the footprints). A size-free
        score (``footprint_excess``) is the default: the logit change grows with the finding's size, and so does
        any map's plain mass in it, a random map's included (measured on the default run: rho 0.43 for random).
    truth : DataFrame
        ``image, pathology, delta`` per pair (the pair's own logit change, from :func:`logit_changes`).
    metric : str
        The score correlated.
    n_boot, patients, seed
        The percentile bootstrap CI resamples patients (images without ``patients``).

    Returns
    -------
    DataFrame
        ``method, metric, rho, ci_low, ci_high, n``: rho near 1 where a method puts more of its map on the findings
        the model leans on more; near 0 for a method blind to how much the model uses a finding.
    """
    merged = scores[scores["metric"] == metric].merge(truth[["image", "pathology", "delta"]], on=["image", "pathology"])
    merged = merged.dropna(subset=["value", "delta"])
    out = []
    for method, group in merged.groupby("method", sort=False):
        x, y = group["value"].to_numpy(), group["delta"].to_numpy()
        low, high = _cluster_bootstrap(_spearman, _clusters(group, patients), n_boot, seed, x, y)
        rho = _spearman(x, y)
        out.append({"method": method, "metric": metric, "rho": rho, "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(out, columns=["method", "metric", "rho", "ci_low", "ci_high", "n"])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho; NaN for fewer than 3 values or a constant side."""
    if len(x) < 3 or not np.ptp(x) or not np.ptp(y):
        return np.nan
    return float(stats.spearmanr(x, y).statistic)


def _auroc(truth: np.ndarray, values: np.ndarray) -> float:
    """scikit-learn's AUROC; NaN where only one class is present."""
    return float(roc_auc_score(truth, values)) if 0 < truth.sum() < len(truth) else np.nan


def _cluster_bootstrap(statistic, clusters: pd.Series, n_boot: int, seed: int, *arrays: np.ndarray) -> tuple:
    """Percentile 95% CI of ``statistic(*arrays)`` over resamples of whole clusters (NaN-valued resamples left out;
    NaN with fewer than 2 clusters)."""
    codes, unique = pd.factorize(clusters)
    if len(unique) < 2:
        return np.nan, np.nan
    members = [np.flatnonzero(codes == c) for c in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = np.concatenate([members[c] for c in rng.integers(0, len(unique), len(unique))])
        value = statistic(*(array[rows] for array in arrays))
        if np.isfinite(value):
            values.append(value)
    return tuple(float(v) for v in np.percentile(values, [2.5, 97.5])) if values else (np.nan, np.nan)


def map_shift(before: HeatmapSet, after: HeatmapSet, targets: Sequence[tuple[int, int, str]]) -> pd.DataFrame:
    """How far the map of pathology A moves when something else (finding B) is removed from its image.

    Parameters
    ----------
    before : HeatmapSet
        Maps of the images as written.
    after : HeatmapSet
        Maps of the counterfactual images, one row per target.
    targets : sequence of (row in before, row in after, pathology A)

    Returns
    -------
    DataFrame
        ``image, pathology, method, metric, value`` with metric ``map_shift`` = 1 - Spearman of ``|R|`` (0: the
        map did not move, 1: unrelated); sign-blind, so a map whose sign flips with its logit is not counted as
        moving. NaN where the map before is flat (nothing to move).
    """
    out = [
        (
            before.image_ids[i],
            pathology,
            before.method,
            "map_shift",
            1 - spearman_abs(before.map(i, pathology), after.map(p, pathology)),
        )
        for i, p, pathology in targets
    ]
    return pd.DataFrame(out, columns=COLUMNS)


def detection_auroc(
    scores: pd.DataFrame,
    metric: str = "marker_mass",
    n_boot: int = 1000,
    patients: Mapping[str, str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method, the AUROC of telling the shortcut model's maps from the clean model's by one map score.

    Parameters
    ----------
    scores : DataFrame
        Tidy scores with a ``model`` column, ``"shortcut"`` or ``"clean"`` (the same images under both models).
    metric : str
        The score that decides (e.g. the map's mass on the marker): higher should mean "shortcut".
    n_boot, patients, seed
        The percentile bootstrap CI resamples patients (both models' maps of a patient's images together).

    Returns
    -------
    DataFrame
        ``method, metric, auroc, ci_low, ci_high, n_images``: 1 where every shortcut map scores above every clean
        map, 0.5 for a method whose maps do not depend on the model (ties count one half).
    """
    chosen = scores[(scores["metric"] == metric) & scores["model"].isin(["shortcut", "clean"])].dropna(subset=["value"])
    out = []
    for method, group in chosen.groupby("method", sort=False):
        truth = (group["model"] == "shortcut").to_numpy()
        values = group["value"].to_numpy()
        low, high = _cluster_bootstrap(_auroc, _clusters(group, patients), n_boot, seed, truth, values)
        auroc = _auroc(truth, values)
        n_images = group["image"].nunique()
        out.append(
            {"method": method, "metric": metric, "auroc": auroc, "ci_low": low, "ci_high": high, "n_images": n_images}
        )
    return pd.DataFrame(out, columns=["method", "metric", "auroc", "ci_low", "ci_high", "n_images"])


def _clusters(group: pd.DataFrame, patients: Mapping[str, str] | None) -> pd.Series:
    """The patient of each row's image (the image itself without ``patients``); an image without one is an error."""
    return pd.Series(patient_clusters(group["image"], patients), index=group.index)


def auroc_with_ci(
    truth: np.ndarray, scores: np.ndarray, clusters: Sequence, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC of ``scores`` for the binary ``truth`` and its percentile 95% CI over resampled clusters (patients)."""
    truth, scores = np.asarray(truth, bool), np.asarray(scores, np.float64)
    low, high = _cluster_bootstrap(_auroc, pd.Series(list(clusters)), n_boot, seed, truth, scores)
    return _auroc(truth, scores), low, high

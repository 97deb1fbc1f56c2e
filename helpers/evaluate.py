"""Evaluate a trained classifier: predictions, AUROC and average precision with bootstrap CIs, tables.

Independent of how the model was fitted (:mod:`helpers.train`); every result is CPU numpy or pandas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from helpers import labels
from helpers.data import batch_inputs
from helpers.io import atomic_path
from helpers.tensors import to_numpy

__all__ = [
    "REFERENCE_AUROC",
    "bootstrap_metric_matrix",
    "evaluate",
    "per_class_auroc",
    "predict",
    "save_predictions",
    "summary_table",
]


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 64, device: torch.device | None = None) -> np.ndarray:
    """Sigmoid probabilities ``(n, n_classes)`` for a dataset of items with an ``image`` (or raw ``pixels``) key.

    Batches go to ``device`` (default: where the model's parameters are); a :class:`~helpers.data.ChestXrayDataset`
    sends uint8 pixels, normalised there (:func:`helpers.data.batch_inputs`). Probabilities come back on the CPU.
    """
    device = device or next(model.parameters()).device
    raw = dataset.as_raw() if hasattr(dataset, "as_raw") else dataset
    normalisation = (getattr(dataset, "mean", None), getattr(dataset, "std", None))
    loader = DataLoader(raw, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        outputs = [
            to_numpy(torch.sigmoid(model(batch_inputs(batch, device, *normalisation))).float()) for batch in loader
        ]
    finally:
        model.train(was_training)  # the caller's mode (training validates mid-run)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(labels.PATHOLOGIES)), np.float32)


def save_predictions(path: str | os.PathLike, image_ids: Sequence[str], probs: np.ndarray) -> Path:
    """Write probabilities as CSV (``image_id`` + one column per pathology), atomically."""
    frame = pd.DataFrame(probs, columns=list(labels.PATHOLOGIES))
    frame.insert(0, "image_id", list(image_ids))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def per_class_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """AUROC per class (NaN where a class lacks positives or negatives among unmasked rows)."""
    # on use: scikit-learn's import (with scipy.stats, about 1 s here) would slow every kernel that loads a Run
    from sklearn.metrics import roc_auc_score

    mask = np.ones_like(targets) if mask is None else mask
    scores = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        keep = mask[:, j] > 0
        y = targets[keep, j]
        if 0 < y.sum() < len(y):
            scores[j] = roc_auc_score(y, probs[keep, j])
    return scores


def evaluate(
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    pathologies: Sequence[str] = labels.PATHOLOGIES,
    n_boot: int = 1000,
    seed: int = 0,
    patients: Sequence | None = None,
) -> pd.DataFrame:
    """Per-pathology AUROC and average precision with bootstrap 95% CIs, plus macro means.

    Returns a tidy DataFrame: ``pathology, metric, value, ci_low, ci_high, n_pos, n_neg, note``. The
    bootstrap resamples ``patients`` (one id per row: a patient's images are drawn together, since they are not
    independent), or images where none are given; the same resample for every pathology, so macro means get CIs too.
    Macro rows: ``macro (14)`` over every pathology with both classes present and ``macro (competition)``
    over the five CheXpert competition pathologies (those of them with both). A macro's CI comes from the
    resamples that hold both classes of every pathology it averages, as a pathology's own CI from the resamples
    that hold both of its. A pathology without positives (or negatives) is reported with a NaN value and a note,
    never an error.
    """
    mask = np.ones_like(targets) if mask is None else mask
    _check_evaluated(probs, targets, mask, pathologies)
    point = _metric_matrix(probs, targets, mask)
    boots = bootstrap_metric_matrix(probs, targets, mask, n_boot, seed, patients) if n_boot else None
    rows = []
    for m, metric in enumerate(("AUROC", "AP")):
        for j, name in enumerate(pathologies):
            keep = mask[:, j] > 0
            n_pos, n_neg = int(targets[keep, j].sum()), int((1 - targets[keep, j]).sum())
            note = "" if n_pos and n_neg else ("missing: no positives" if not n_pos else "missing: no negatives")
            rows.append(_row(name, metric, point[m, j], None if boots is None else boots[:, m, j], n_pos, n_neg, note))
        for macro, members in (("macro (14)", pathologies), ("macro (competition)", labels.COMPETITION)):
            index = [list(pathologies).index(p) for p in members if p in pathologies]
            defined = [j for j in index if np.isfinite(point[m, j])]  # the classes the value averages
            value = point[m, defined].mean() if defined else np.nan
            # each resample averages the same classes (NaN where it lacks one): the CI is the value's
            spread = None if boots is None or not defined else boots[:, m, defined].mean(axis=1)
            left_out = [pathologies[j] for j in index if j not in defined]
            note = f"mean of {len(defined)} of {len(index)}; without {', '.join(left_out)}" if left_out else ""
            rows.append(_row(macro, metric, value, spread, None, None, note))
    return pd.DataFrame(rows)


def _check_evaluated(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, pathologies: Sequence[str]) -> None:
    """Clear errors for inputs that would score silently wrong: columns that are not ``pathologies``, or targets
    that are raw CheXpert codes (-1, blank) rather than 0/1 where the mask counts them."""
    expected = (len(targets), len(pathologies))
    if np.shape(probs) != expected or np.shape(targets) != expected or np.shape(mask) != expected:
        raise ValueError(
            f"probs {np.shape(probs)}, targets {np.shape(targets)} and mask {np.shape(mask)} must all be (images, "
            f"{len(pathologies)}): one column per pathology named, in that order."
        )
    counted = np.asarray(targets)[np.asarray(mask) > 0]
    other = counted[~np.isin(counted, (0, 1))]
    if len(other):
        raise ValueError(
            f"targets must be 0 or 1 where the mask counts them; found {sorted(set(other.tolist()))[:3]}: turn "
            f"CheXpert codes into targets and a mask first (helpers.data.apply_policy)."
        )


def _metric_matrix(probs, targets, mask) -> np.ndarray:
    from sklearn.metrics import average_precision_score

    auroc = per_class_auroc(probs, targets, mask)
    ap = np.full_like(auroc, np.nan)
    for j in np.flatnonzero(np.isfinite(auroc)):
        keep = mask[:, j] > 0
        ap[j] = average_precision_score(targets[keep, j], probs[keep, j])
    return np.stack([auroc, ap])


def bootstrap_metric_matrix(
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    n_boot: int,
    seed: int = 0,
    patients: Sequence | None = None,
) -> np.ndarray:
    """AUROC and AP of every class on ``n_boot`` bootstrap resamples: ``(n_boot, 2, n_classes)``.

    A resample draws ``patients`` (one id per row) with replacement, each with all its images, or the images
    themselves where ``patients`` is None. The same numbers as sklearn's ``roc_auc_score`` and
    ``average_precision_score`` on each resample (NaN where a resample lacks a class's positives or negatives),
    computed for all resamples at once: a resample is the count of draws of each image, and both metrics are sums
    over tied-score groups weighted by those counts. Written by hand because sklearn scores one resample per call
    (1,000 x 14 x 2 calls: half a minute for 150 images).

    Raises
    ------
    ValueError
        If ``patients`` does not hold one id (not missing) per row.
    """
    rng = np.random.default_rng(seed)
    clusters = _cluster_codes(patients, len(probs))
    n = int(clusters.max()) + 1 if len(clusters) else 0
    draws = [np.bincount(rng.integers(0, n, n), minlength=n)[clusters] for _ in range(n_boot)]
    counts = np.stack(draws).astype(np.float64)
    out = np.full((n_boot, 2, targets.shape[1]), np.nan)
    for j in range(targets.shape[1]):
        keep = mask[:, j] > 0
        out[:, :, j] = _weighted_auroc_ap(probs[keep, j], targets[keep, j], counts[:, keep])
    return out


def _cluster_codes(patients: Sequence | None, n_rows: int) -> np.ndarray:
    """Row -> cluster number: each row its own without ``patients`` (the images are resampled), else its patient's."""
    if patients is None:
        return np.arange(n_rows)
    ids = pd.Series(list(patients))
    if len(ids) != n_rows or ids.isna().any():
        missing = int(ids.isna().sum())
        raise ValueError(f"patients must give one id per row: got {len(ids)} ids ({missing} missing), {n_rows} rows.")
    return pd.factorize(ids)[0]


def _weighted_auroc_ap(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(n_weightings, 2)``: AUROC and AP of ``scores`` for the labels ``positive`` under each row of ``weights``."""
    if not len(scores):  # every row of the class masked out
        return np.full((len(weights), 2), np.nan)
    order = np.argsort(-scores, kind="stable")  # descending: the thresholds of the precision-recall curve
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # one group per distinct score
    is_positive = positive[order] > 0
    pos = np.add.reduceat(weights[:, order] * is_positive, starts, axis=1)
    neg = np.add.reduceat(weights[:, order] * ~is_positive, starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (total_pos > 0) & (total_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        neg_above = np.cumsum(neg, axis=1) - neg  # negatives scored strictly higher than the group
        auroc = (pos * (total_neg[:, None] - neg_above - 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        true_pos, false_pos = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        precision = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), 0.0)
        ap = (pos / total_pos[:, None] * precision).sum(axis=1)  # recall steps times precision
    return np.where(defined[:, None], np.stack([auroc, ap], axis=1), np.nan)


def _row(name, metric, value, boots, n_pos, n_neg, note) -> dict:
    low = high = np.nan
    if boots is not None and np.isfinite(value) and np.isfinite(boots).sum() >= 10:
        low, high = np.nanpercentile(boots, [2.5, 97.5])
    return {
        "pathology": name,
        "metric": metric,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "note": note,
    }


#: Published numbers shown beside ours as context. They are on real CheXpert, not on the phantom.
REFERENCE_AUROC = {
    "Alam et al. 2022 (CBMS), weighted AUROC, real CheXpert": 0.76,
    "Irvin et al. 2019, DenseNet-121, mean AUROC of the 5 competition tasks, real CheXpert": 0.91,
}


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per-pathology AUROC with CI (one row each), macro rows last, and the published references below."""
    auroc = table[table["metric"] == "AUROC"].set_index("pathology")
    ours = pd.DataFrame(
        {
            "AUROC": auroc["value"],
            "95% CI": [_ci_text(r) for _, r in auroc.iterrows()],
            "AP": table[table["metric"] == "AP"].set_index("pathology")["value"],
            "positives": auroc["n_pos"],
            "note": auroc["note"],
            "data": "this run",
        }
    )
    references = pd.DataFrame(
        {
            "AUROC": list(REFERENCE_AUROC.values()),
            "95% CI": "",
            "AP": np.nan,
            "positives": np.nan,  # float, as ours (NaN on the macro rows): an all-NA object column warns in concat
            "note": "",
            "data": "other data (published)",
        },
        index=list(REFERENCE_AUROC),
    )
    return pd.concat([ours, references])


def _ci_text(row) -> str:
    return "" if not np.isfinite(row["ci_low"]) else f"{row['ci_low']:.3f}-{row['ci_high']:.3f}"

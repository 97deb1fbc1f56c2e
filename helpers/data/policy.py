"""Uncertainty policies: CheXpert label codes -> training targets and a loss mask."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from helpers import labels

POLICIES = ("u-ignore", "u-zeros", "u-ones")


def apply_policy(labels_array, policy: str | Mapping[str, str] = "u-ignore") -> tuple[np.ndarray, np.ndarray]:
    """Turn CheXpert label codes into training targets and a loss mask.

    Parameters
    ----------
    labels_array : array-like or DataFrame, shape (n, 14)
        Codes 1, 0, -1 or NaN in :data:`helpers.labels.PATHOLOGIES` order (a DataFrame is indexed by
        those column names).
    policy : str or dict
        ``"u-ignore"`` (uncertain rows masked out of the loss), ``"u-zeros"`` (uncertain = negative,
        the paper's choice), ``"u-ones"`` (uncertain = positive), or a dict ``{pathology: policy}``;
        pathologies the dict leaves out use ``"u-zeros"``.

    Returns
    -------
    targets, loss_mask : numpy.ndarray of float32, shape (n, 14)
        Blank ("not mentioned") is always a negative with weight 1, as CheXpert defines it.
    """
    codes = _label_matrix(labels_array)
    per_class = _policy_per_class(policy)
    uncertain = codes == -1
    targets = (codes == 1).astype(np.float32)
    mask = np.ones_like(targets)
    for index, name in enumerate(per_class):
        if name == "u-ones":
            targets[uncertain[:, index], index] = 1.0
        elif name == "u-ignore":
            mask[uncertain[:, index], index] = 0.0
    return targets, mask


def _label_matrix(labels_array) -> np.ndarray:
    if isinstance(labels_array, pd.DataFrame):
        labels_array = labels_array[list(labels.PATHOLOGIES)].to_numpy()
    codes = np.asarray(labels_array, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(labels.PATHOLOGIES):
        raise ValueError(f"Labels must have shape (n, {len(labels.PATHOLOGIES)}), got {codes.shape}.")
    valid = np.isnan(codes) | np.isin(codes, labels.LABEL_CODES)
    if not valid.all():
        raise ValueError(f"Label codes must be 1, 0, -1 or NaN; found {np.unique(codes[~valid])[:5]}.")
    return codes


def _policy_per_class(policy: str | Mapping[str, str]) -> list[str]:
    if isinstance(policy, str):
        chosen = {name: policy for name in labels.PATHOLOGIES}
    else:
        labels.pathology_indices(list(policy))  # raises on unknown pathology names
        chosen = {name: policy.get(name, "u-zeros") for name in labels.PATHOLOGIES}
    unknown = sorted({p for p in chosen.values() if p not in POLICIES})
    if unknown:
        raise ValueError(f"Unknown uncertainty policy {unknown}; choose from {POLICIES} or a dict of them.")
    return [chosen[name] for name in labels.PATHOLOGIES]

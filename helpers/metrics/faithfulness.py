"""Does the model need what the map shows? Deletion and insertion curves against a blurred baseline.

Tensors made here take their device from the inputs (the model's device); model outputs leave for numpy
only through :func:`helpers.tensors.to_numpy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers import labels
from helpers.explainers import blurred_baseline, model_device
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS
from helpers.tensors import to_numpy

_CURVES = ("deletion_auc", "insertion_auc")


def perturbation_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    heatmaps: HeatmapSet,
    pairs: Sequence[tuple[int, str]],
    steps: int = 10,
    batch_size: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """Deletion and insertion curves (areas under each) with a blurred-image baseline.

    Pixels are taken in the order of the map (most relevant first; ties in a seeded random order, so that
    the zeros of a map are not taken from the top-left first). Deletion replaces the top fraction
    by the blurred image (a faithful map makes the probability fall fast: low area); insertion starts
    from the blurred image and restores the top fraction (high area is good). Areas are over the
    fraction 0..1 of the probability of the explained pathology. A map with inf or NaN scores NaN.

    Parameters
    ----------
    model : nn.Module
        The explained model, on any device.
    inputs : tensor ``(n, C, H, W)``
        The explained images, rows aligned with ``heatmaps.image_ids``; moved to the model's device.
    heatmaps : HeatmapSet
        One method's maps of ``inputs``.
    pairs : sequence of (image index, pathology)
        The maps to score.
    steps : int
        Points on each curve beyond the first (fractions ``0, 1/steps, ..., 1``).
    batch_size : int
        Perturbed images per forward pass.
    seed : int
        Seed of the order among tied pixels.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``; metrics ``deletion_auc`` and ``insertion_auc``.
    """
    inputs = inputs.to(model_device(model))
    baseline = blurred_baseline(inputs)
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0, 1, steps + 1)
    rows = []
    model.eval()
    for i, pathology in pairs:
        j, k = heatmaps.pathologies.index(pathology), labels.PATHOLOGIES.index(pathology)
        values = heatmaps.maps[i, j].ravel()
        if not np.isfinite(values).all():
            rows += [(heatmaps.image_ids[i], pathology, heatmaps.method, name, np.nan) for name in _CURVES]
            continue
        order = np.lexsort((rng.random(values.size), -values))
        revealed = _top_fraction_masks(order, fractions, inputs.shape[-2:], inputs.device)
        deleted = torch.where(revealed, baseline[i], inputs[i])
        inserted = torch.where(revealed, inputs[i], baseline[i])
        probs = _probabilities(model, torch.cat([deleted, inserted]), k, batch_size)
        for name, curve in zip(_CURVES, (probs[: len(fractions)], probs[len(fractions) :])):
            area = float(np.trapezoid(curve, fractions))
            rows.append((heatmaps.image_ids[i], pathology, heatmaps.method, name, area))
    return pd.DataFrame(rows, columns=COLUMNS)


def _top_fraction_masks(order: np.ndarray, fractions: np.ndarray, shape, device: torch.device) -> torch.Tensor:
    """Bool ``(len(fractions), 1, H, W)`` on ``device``: True on the top ``fraction`` of pixels in ``order``."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    counts = np.round(fractions * order.size).astype(int)
    masks = torch.from_numpy(rank[None, :] < counts[:, None]).view(len(fractions), 1, *shape)
    return masks.to(device)  # torch.where with the inputs needs both on one device


def _probabilities(model: nn.Module, batch: torch.Tensor, k: int, batch_size: int) -> np.ndarray:
    """Sigmoid of logit ``k`` for every image of ``batch``, float64 numpy, ``batch_size`` images at a time."""
    with torch.no_grad():
        logits = torch.cat([model(batch[s : s + batch_size]) for s in range(0, len(batch), batch_size)])
    return to_numpy(torch.sigmoid(logits[:, k])).astype(np.float64)

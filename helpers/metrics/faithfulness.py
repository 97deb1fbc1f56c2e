"""Does the model need what the map shows? Deletion and insertion curves against a blurred baseline, and
against the counterfactual image (the phantom rendered without the explained finding).

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
from helpers.explainers import blurred_baseline, frozen_eval, model_device
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS
from helpers.tensors import to_numpy

_CURVES = ("deletion_auc", "insertion_auc")
_CF_CURVES = ("cf_deletion_auc", "cf_insertion_auc")
_CF_RANDOM = ("cf_deletion_random_auc", "cf_insertion_random_auc")
_CF_ENDPOINTS = ("cf_prob_factual", "cf_prob_counterfactual")
#: First fraction after 0 of a log-spaced curve: 1 pixel in 1000 (4 pixels at 64 px, 50 at 224 px).
LOG_FIRST_FRACTION = 1e-3
#: Fewest linear steps: at 10 steps the first one already removes 10% of the image, the whole of most findings.
MIN_LINEAR_STEPS = 50


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
        Seed of the order among tied pixels, drawn per (image, pathology): a map's scores do not depend on the
        other pairs.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``; metrics ``deletion_auc`` and ``insertion_auc``.
    """
    _check_maps_of(inputs, [heatmaps])
    inputs = inputs.to(model_device(model))
    baseline = blurred_baseline(inputs)
    fractions = np.linspace(0, 1, steps + 1)
    rows = []
    with frozen_eval(model):  # the caller's mode and gradients back afterwards
        for i, pathology in pairs:
            j, k = heatmaps.pathologies.index(pathology), labels.PATHOLOGIES.index(pathology)
            values = heatmaps.maps[i, j].ravel()
            if not np.isfinite(values).all():
                rows += [(heatmaps.image_ids[i], pathology, heatmaps.method, name, np.nan) for name in _CURVES]
                continue
            rng = np.random.default_rng((seed, i, k))  # a map's tie order whatever pairs come before it
            (curves,) = _curves(model, inputs[i], baseline[i], [_map_order(values, rng)], fractions, k, batch_size)
            for name, curve in zip(_CURVES, curves):
                area = float(np.trapezoid(curve, fractions))
                rows.append((heatmaps.image_ids[i], pathology, heatmaps.method, name, area))
    return pd.DataFrame(rows, columns=COLUMNS)


def counterfactual_perturbation_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    counterfactual_inputs: torch.Tensor,
    heatmaps: HeatmapSet | Sequence[HeatmapSet],
    pairs: Sequence[tuple[int, str]],
    steps: int = 50,
    spacing: str = "log",
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Deletion and insertion curves that replace pixels by the image without the explained finding.

    A blurred or constant baseline puts images the model never saw into the curve, so a map can score by
    where it makes artefacts rather than by what the model uses. On the phantom the replacement can be the
    counterfactual: the same radiograph rendered without the finding
    (:func:`helpers.phantom.render_without`). Deleting a pixel then removes only the finding's share of it,
    and pixels the finding does not touch change nothing. Deletion replaces the map's top pixels (most
    relevant first; ties in a seeded random order) by the counterfactual's (a faithful map makes the
    probability fall fast: low area); insertion starts from the counterfactual and restores the top pixels
    (high area is good).

    Parameters
    ----------
    model : nn.Module
        The explained model, on any device.
    inputs : tensor ``(n, C, H, W)``
        The explained images, rows aligned with ``heatmaps.image_ids``; moved to the model's device.
    counterfactual_inputs : tensor ``(len(pairs), C, H, W)``
        One row per pair: that pair's image without its pathology's finding, normalised like ``inputs``.
    heatmaps : HeatmapSet or sequence of HeatmapSet
        One method's maps of ``inputs``, or several methods' (each pair's random reference and endpoints are then
        computed once and all its curves share forward passes; the rows are the same as one call per method).
    pairs : sequence of (image index, pathology)
        The maps to score.
    steps : int
        Points on each curve beyond the fraction 0.
    spacing : {"log", "linear"}
        ``"log"``: fractions 0, then ``steps`` log-spaced from :data:`LOG_FIRST_FRACTION` to 1, dense where a
        small finding (1% of the image or less) is removed. ``"linear"``: ``0, 1/steps, ..., 1``, which
        needs ``steps >= MIN_LINEAR_STEPS`` to resolve such findings at all.
    seed : int
        With the pair's image index and pathology, seeds its random order and tie order. The random
        reference of a pair is therefore the same for every method scored on it.
    batch_size : int
        Perturbed images per forward pass.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``, method by method in the order given; per pair the
        metrics ``cf_deletion_auc``,
        ``cf_insertion_auc`` (the map's order; NaN for a map with inf or NaN), ``cf_deletion_random_auc``,
        ``cf_insertion_random_auc`` (a seeded random pixel order: the reference a map must beat) and
        ``cf_prob_factual``, ``cf_prob_counterfactual`` (the probability with and without the finding,
        where every curve starts and ends: a pair where they are close carries no signal).

    Raises
    ------
    ValueError
        If ``counterfactual_inputs`` does not hold one image of ``inputs``' shape per pair, or the spacing
        is unknown or too coarse.

    Notes
    -----
    Areas are over the fraction axis 0..1 (trapezoids between the sampled fractions) of the pathology's
    probability, whatever the spacing: log spacing samples the same integral more densely near 0, so
    areas are comparable across spacings and with the random reference. A map beats random when its
    deletion area is below ``cf_deletion_random_auc`` and its insertion area above ``cf_insertion_random_auc``.
    """
    device = model_device(model)
    inputs, counterfactual_inputs = inputs.to(device), counterfactual_inputs.to(device)
    _check_counterfactuals(inputs, counterfactual_inputs, pairs)
    fractions = _fractions(steps, spacing)
    sets = [heatmaps] if isinstance(heatmaps, HeatmapSet) else list(heatmaps)
    _check_maps_of(inputs, sets)
    rows = {m: [] for m in range(len(sets))}
    with frozen_eval(model):  # the caller's mode and gradients back afterwards
        for p, (i, pathology) in enumerate(pairs):
            cf = counterfactual_inputs[p]
            per_set = _cf_areas(model, inputs[i], cf, sets, i, pathology, fractions, seed, batch_size)
            for m, areas in enumerate(per_set):
                rows[m] += [(sets[m].image_ids[i], pathology, sets[m].method, k, v) for k, v in areas.items()]
    return pd.DataFrame([row for m in rows for row in rows[m]], columns=COLUMNS)


def _check_maps_of(inputs: torch.Tensor, sets: Sequence[HeatmapSet]) -> None:
    """A clear error where a set's maps are not one per image of ``inputs`` at its size (e.g. maps made of another
    batch, or at the network's feature resolution), rather than wrong rows scored or a reshape error."""
    for heatmaps in sets:
        n, size = heatmaps.maps.shape[0], tuple(heatmaps.maps.shape[-2:])
        if n != len(inputs) or size != tuple(inputs.shape[-2:]):
            raise ValueError(
                f"{heatmaps.method}'s maps are {n} of {size[0]} x {size[1]} px, the inputs {len(inputs)} images of "
                f"{inputs.shape[-2]} x {inputs.shape[-1]} px: score the maps made of these inputs, at their size."
            )


def _check_counterfactuals(inputs: torch.Tensor, counterfactual_inputs: torch.Tensor, pairs: Sequence) -> None:
    if counterfactual_inputs.shape != (len(pairs), *inputs.shape[1:]):
        raise ValueError(
            f"counterfactual_inputs must hold one image per pair, shaped like inputs' images: "
            f"({len(pairs)}, {', '.join(map(str, inputs.shape[1:]))}); got {tuple(counterfactual_inputs.shape)}."
        )


def _fractions(steps: int, spacing: str) -> np.ndarray:
    """Fractions of pixels replaced along a curve, 0 first and 1 last (:func:`counterfactual_perturbation_scores`)."""
    if spacing == "log" and steps >= 2:  # the first log step and the whole image, at least
        return np.concatenate([[0.0], np.geomspace(LOG_FIRST_FRACTION, 1.0, steps)])
    if spacing == "linear" and steps >= MIN_LINEAR_STEPS:
        return np.linspace(0.0, 1.0, steps + 1)
    raise ValueError(
        f"spacing must be 'log' with steps >= 2 or 'linear' with steps >= {MIN_LINEAR_STEPS}; got {spacing!r}, {steps}."
    )


def _cf_areas(model, image, counterfactual, sets, i, pathology, fractions, seed, batch_size) -> list[dict[str, float]]:
    """One pair's metrics of :func:`counterfactual_perturbation_scores` for each set, by name.

    The random order and every map's order go through the model in shared forward passes; each map's tie order
    draws from the pair's generator after the random permutation, as if the pair were scored for that map alone.
    """
    k = labels.PATHOLOGIES.index(pathology)
    size = image[0].numel()
    orders, finite = [np.random.default_rng((seed, i, k)).permutation(size)], []
    for heatmaps in sets:
        values = heatmaps.maps[i, heatmaps.pathologies.index(pathology)].ravel()
        finite.append(bool(np.isfinite(values).all()))
        if finite[-1]:
            rng = np.random.default_rng((seed, i, k))
            rng.permutation(size)  # the state a single-map call leaves for the tie order
            orders.append(_map_order(values, rng))
    curves = iter(_curves(model, image, counterfactual, orders, fractions, k, batch_size))
    random = next(curves)
    random_areas = [float(np.trapezoid(curve, fractions)) for curve in random]
    endpoints = [float(random[0][0]), float(random[0][-1])]  # deletion from the image to the counterfactual
    per_set = []
    for ok in finite:
        mapped = [float(np.trapezoid(curve, fractions)) for curve in next(curves)] if ok else [np.nan, np.nan]
        per_set.append(dict(zip((*_CF_CURVES, *_CF_RANDOM, *_CF_ENDPOINTS), mapped + random_areas + endpoints)))
    return per_set


def _map_order(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, most relevant first; ties in a random order from ``rng`` (not top-left first)."""
    return np.lexsort((rng.random(values.size), -values))


def _curves(model, image, replacement, orders, fractions, k: int, batch_size: int) -> list[tuple[np.ndarray, ...]]:
    """Deletion and insertion curves of one image for each pixel order in ``orders``: the probability of class
    ``k`` at each fraction, every curve's images through the model in shared batches.

    Deletion puts ``replacement`` on the top fraction of pixels; insertion puts ``image`` there on ``replacement``.
    """
    perturbed = []
    for order in orders:
        revealed = _top_fraction_masks(order, fractions, image.shape[-2:], image.device)
        perturbed += [torch.where(revealed, replacement, image), torch.where(revealed, image, replacement)]
    probs = _probabilities(model, torch.cat(perturbed), k, batch_size).reshape(len(orders), 2, len(fractions))
    return [(deletion, insertion) for deletion, insertion in probs]


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

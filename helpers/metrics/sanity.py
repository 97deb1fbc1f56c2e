"""Does the map depend on the model? Cascading randomisation (Adebayo et al. 2018) and map rank correlation."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from helpers.explainers import Explainer
from helpers.metrics.base import COLUMNS


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two maps; 0 when either is constant (it has no structure left to share)."""
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first.ravel(), second.ravel()).statistic)


def cascading_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    explainer: Explainer,
    pairs: Sequence[tuple[int, str]],
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
    *,
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> pd.DataFrame:
    """Adebayo et al. (2018): re-initialise layers from the top, cumulatively, and compare maps.

    Parameters
    ----------
    model : nn.Module
        The trained model. It is not modified: a deep copy is randomised.
    inputs : tensor
        The explained images.
    explainer : Explainer
        Explains ``inputs`` with the trained and with each randomised model.
    pairs : sequence of (image index, pathology)
        The maps to compare.
    image_ids : sequence of str, optional
        Ids of ``inputs``, reported in the ``image`` column.
    seed : int
        Stage ``s`` re-initialises under ``torch.manual_seed(seed + s)``.
    stages : sequence of (stage name, module names), optional
        Module groups from the output down, randomised cumulatively in this order (names as in
        ``model.named_modules()``); the last should complete full randomisation. Default
        the model's own ``randomisation_stages()``.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``: per stage, metric ``randomised_<stage>`` and
        value the Spearman rank correlation (:func:`rank_correlation`) between the trained model's map and
        the randomised model's map.
    """
    stages = model.randomisation_stages() if stages is None else stages
    known = dict(model.named_modules())
    unknown = [name for _, names in stages for name in names if name not in known]
    if unknown:
        raise ValueError(f"Randomisation stages name modules that {type(model).__name__} does not have: {unknown}.")
    trained = explainer.explain(model, inputs, image_ids=image_ids)
    randomised = copy.deepcopy(model).eval()
    modules = dict(randomised.named_modules())
    rows = []
    for s, (stage, names) in enumerate(stages):
        torch.manual_seed(seed + s)
        for name in names:
            _reset_parameters(modules[name])
        maps = explainer.explain(randomised, inputs, image_ids=image_ids)
        for i, pathology in pairs:
            j = trained.pathologies.index(pathology)
            rows.append(
                (
                    trained.image_ids[i],
                    pathology,
                    trained.method,
                    f"randomised_{stage}",
                    rank_correlation(trained.maps[i, j], maps.maps[i, j]),
                )
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that can be; BatchNorm layers keep their trained parameters and statistics."""
    for submodule in module.modules():
        if hasattr(submodule, "reset_parameters") and not isinstance(submodule, nn.BatchNorm2d):
            submodule.reset_parameters()

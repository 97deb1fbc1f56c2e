"""Heatmaps x ground-truth masks -> one tidy DataFrame: ``image, pathology, method, metric, value``.

Every localisation and granularity score reads the map's **positive part** (for signed LRP maps, the
evidence *for* the pathology; CAMs are non-negative already), so LRP and Grad-CAM are scored on the same
footing. Correlations between maps (class sensitivity, randomisation) and the pixel order of deletion /
insertion use the maps as they are. A map with inf or NaN (diverged relevance) scores NaN.

One job per module, every public name re-exported here:

- :mod:`~helpers.metrics.base`: the tidy :data:`COLUMNS` and :func:`positive_part`.
- :mod:`~helpers.metrics.localisation`: as CheXlocalize defines it (rows where the mask is non-empty):
  ``hit`` (the map's maximum in the mask; tied maxima count with the share of them inside), ``distance_px``
  and ``near_hit`` (within 1/16 of the width), ``iou`` (CheXlocalize's exact segmentation: min-max -> uint8 ->
  Otsu -> filled contours), ``mass_accuracy``, ``rank_accuracy``, ``pixel_auroc``, and against the ground
  truth's own grain ``resolution_gap`` and ``boundary_f1``; :func:`score` scores a HeatmapSet on all of them
  plus granularity, class sensitivity and ``separation`` of an image's findings.
- :mod:`~helpers.metrics.granularity`: ``gini``, ``entropy``, ``resolution_px`` (absolute: they favour a fine
  map whatever the finding), ``resolution_gap``, ``separation``, and ``class_correlation`` on positive parts,
  ``|R|`` and signed maps, between findings with a positive logit.
- :mod:`~helpers.metrics.faithfulness`: deletion / insertion toward a blurred image
  (:func:`perturbation_scores`) or toward the counterfactual image without the finding
  (:func:`counterfactual_perturbation_scores`, with a random-order reference); needs the model.
- :mod:`~helpers.metrics.sanity`: model randomisation (cascading and independent) and data randomisation
  (Adebayo et al. 2018) with signed and sign-blind similarities; :func:`sanity_outcome`.
- :mod:`~helpers.metrics.statistics`: :func:`summarise`, :func:`paired_differences` and :func:`compare`:
  bootstrap 95% CIs clustered by patient, Wilcoxon signed-rank p-values, Holm correction; :func:`across_seeds`.
- :mod:`~helpers.metrics.known_truth`: scores against what the model is known to use (notebook 06): logit changes
  when a finding or a marker is rendered out, map mass in a region, rank correlation with the logit change, map
  shift, and the AUROC of telling a shortcut model's maps from a clean model's.
- :mod:`~helpers.metrics.tables`: results tables and structured outcomes (:func:`outcome`); no prose.
"""

import importlib

from helpers.metrics.base import COLUMNS, positive_part
from helpers.metrics.granularity import (
    PARTS,
    SINGLE_MAP,
    class_correlation,
    entropy,
    gini,
    resolution_gap,
    resolution_px,
    separation,
)
from helpers.metrics.localisation import (
    TIES,
    WITH_MASK,
    boundary_f1,
    chexlocalize_iou,
    chexlocalize_segmentation,
    chexlocalize_uint8,
    distance_px,
    hit,
    iou,
    mass_accuracy,
    multi_finding_rows,
    near_hit,
    otsu_segmentation,
    pixel_auroc,
    rank_accuracy,
    score,
    separation_rows,
)
from helpers.metrics.similarity import SIMILARITIES, rank_correlation
from helpers.metrics.statistics import (
    across_seeds,
    bootstrap_ci,
    compare,
    holds_across_seeds,
    holm,
    paired_differences,
    sample_table,
    strata,
    summarise,
)
from helpers.metrics.tables import BETTER, against_reference, outcome, results_table

#: The names from the modules that need torch and the explainers (faithfulness, sanity, known truth), imported on
#: first use (PEP 562): the processes that score maps and summarise tables in parallel import this package, and
#: started in about 8 s with them (torch, zennit, pytorch-grad-cam) instead of about 2 s.
_LAZY = {
    **{
        name: ("faithfulness", name)
        for name in ("blurred_baseline", "counterfactual_perturbation_scores", "perturbation_scores")
    },
    **{
        name: ("known_truth", name)
        for name in (
            "auroc_with_ci",
            "detection_auroc",
            "logit_changes",
            "logits",
            "map_shift",
            "region_scores",
            "use_correlation",
        )
    },
    **{
        name: ("sanity", name)
        for name in (
            "SHUFFLED_LABELS",
            "cascading_randomisation",
            "data_randomisation",
            "model_randomisation",
            "randomised_maps",
            "sanity_outcome",
            "similarity_table",
        )
    },
    "RANDOMISATION_MODES": ("sanity", "MODES"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "separation_rows",
    "chexlocalize_uint8",
    "chexlocalize_segmentation",
    "chexlocalize_iou",
    "boundary_f1",
    "TIES",
    "separation",
    "resolution_gap",
    "PARTS",
    "sample_table",
    "strata",
    "SIMILARITIES",
    "outcome",
    "holm",
    "holds_across_seeds",
    "compare",
    "against_reference",
    "across_seeds",
    "BETTER",
    "COLUMNS",
    "SINGLE_MAP",
    "WITH_MASK",
    "bootstrap_ci",
    "class_correlation",
    "distance_px",
    "entropy",
    "gini",
    "hit",
    "iou",
    "mass_accuracy",
    "multi_finding_rows",
    "near_hit",
    "otsu_segmentation",
    "paired_differences",
    "pixel_auroc",
    "positive_part",
    "rank_accuracy",
    "rank_correlation",
    "resolution_px",
    "results_table",
    "score",
    "summarise",
    *_LAZY,
]

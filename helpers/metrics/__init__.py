"""Heatmaps x ground-truth masks -> one tidy DataFrame: ``image, pathology, method, metric, value``.

Every localisation and granularity score reads the map's **positive part** (for signed LRP maps, the
evidence *for* the pathology; CAMs are non-negative already), so LRP and Grad-CAM are scored on the same
footing. Correlations between maps (class sensitivity, randomisation) and the pixel order of deletion /
insertion use the maps as they are. A map with inf or NaN (diverged relevance) scores NaN.

One job per module, every public name re-exported here:

- :mod:`~helpers.metrics.base`: the tidy :data:`COLUMNS` and :func:`positive_part`.
- :mod:`~helpers.metrics.localisation`: as CheXlocalize defines it (rows where the mask is non-empty):
  ``hit`` (the map's maximum in the mask; ties count if any tied pixel does, as Quantus' pointing game),
  ``distance_px`` from the maximum to the mask and ``near_hit`` (within 1/16 of the width), ``iou`` (Otsu
  threshold of the min-max-normalised map), ``mass_accuracy``, ``rank_accuracy``, ``pixel_auroc``; and
  :func:`score`, which scores a HeatmapSet on all of them plus granularity and class sensitivity.
- :mod:`~helpers.metrics.granularity`: ``gini`` (sparseness), ``entropy`` (complexity), ``resolution_px``
  (width of the spatial autocorrelation at half height), ``class_correlation`` (pathology ``"all"``).
- :mod:`~helpers.metrics.faithfulness`: deletion / insertion (:func:`perturbation_scores`), needs the model.
- :mod:`~helpers.metrics.sanity`: :func:`cascading_randomisation`, needs the model.
- :mod:`~helpers.metrics.statistics`: :func:`summarise` and :func:`paired_differences`, bootstrap 95% CIs over
  images.
- :mod:`~helpers.metrics.tables`: results tables and verdicts from those summaries.
"""

from helpers.metrics.base import COLUMNS, positive_part
from helpers.metrics.faithfulness import blurred_baseline, perturbation_scores
from helpers.metrics.granularity import SINGLE_MAP, class_correlation, entropy, gini, resolution_px
from helpers.metrics.localisation import (
    WITH_MASK,
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
)
from helpers.metrics.sanity import cascading_randomisation, rank_correlation
from helpers.metrics.statistics import bootstrap_ci, paired_differences, summarise
from helpers.metrics.tables import ANCHORS, granularity_verdict, hit_rate_diagnosis, results_table

__all__ = [
    "ANCHORS",
    "COLUMNS",
    "SINGLE_MAP",
    "WITH_MASK",
    "blurred_baseline",
    "bootstrap_ci",
    "cascading_randomisation",
    "class_correlation",
    "distance_px",
    "entropy",
    "gini",
    "granularity_verdict",
    "hit",
    "hit_rate_diagnosis",
    "iou",
    "mass_accuracy",
    "multi_finding_rows",
    "near_hit",
    "otsu_segmentation",
    "paired_differences",
    "perturbation_scores",
    "pixel_auroc",
    "positive_part",
    "rank_accuracy",
    "rank_correlation",
    "resolution_px",
    "results_table",
    "score",
    "summarise",
]

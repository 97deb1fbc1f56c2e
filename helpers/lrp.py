"""LRP's public names where DESIGN.md lists them: the explainer lives in :mod:`helpers.explainers.lrp`,
the DenseNet canonizers in :mod:`helpers.canonizers`."""

from helpers.canonizers import (
    LEVELS,
    SUPPORTED,
    BatchNormCanonizer,
    ExplicitHeadCanonizer,
    canonizers_for,
    densenet_canonizers,
)
from helpers.explainers.lrp import (
    COMPOSITES,
    LRP,
    MODERN_COMPOSITES,
    PAPER_COMPOSITES,
    conservation,
    conservation_table,
    explain_lrp,
    explain_lrp_separately,
    make_composite,
    pixel_bounds,
    relevance_maps,
)

__all__ = [
    "BatchNormCanonizer",
    "COMPOSITES",
    "ExplicitHeadCanonizer",
    "LEVELS",
    "LRP",
    "MODERN_COMPOSITES",
    "PAPER_COMPOSITES",
    "SUPPORTED",
    "canonizers_for",
    "conservation",
    "conservation_table",
    "densenet_canonizers",
    "explain_lrp",
    "explain_lrp_separately",
    "make_composite",
    "pixel_bounds",
    "relevance_maps",
]

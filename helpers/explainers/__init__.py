"""Explanation methods as one type: an :class:`Explainer` per method, registered by name.

``create(name, **overrides)`` builds one (``available()`` lists the names): ``lrp_<composite>`` for every
zennit composite, one name per pytorch-grad-cam method (``gradcam``, ``gradcam++``, ...), ``occlusion``,
the gradient baselines ``gradient``, ``gradient_x_input``, ``smoothgrad``, ``integrated_gradients``, and the
model-free baselines ``prior``, ``random``, ``edge``.
Every ``explain(model, images, pathologies=None, image_ids=None)`` returns a
:class:`~helpers.heatmaps.HeatmapSet` named after the explainer, with CPU numpy maps.
"""

from helpers.explainers.base import (
    Explainer,
    available,
    batch_size_for,
    create,
    frozen_eval,
    model_device,
    register,
)
from helpers.explainers.baselines import BASELINES, EdgeMap, PriorMap, RandomMap
from helpers.explainers.cam import CAM, explain_cam
from helpers.explainers.cam import METHODS as CAM_METHODS
from helpers.explainers.gradient import GradientFamily
from helpers.explainers.lrp import COMPOSITES, LRP, explain_lrp
from helpers.explainers.occlusion import Occlusion, blurred_baseline

__all__ = [
    "BASELINES",
    "CAM",
    "CAM_METHODS",
    "COMPOSITES",
    "EdgeMap",
    "Explainer",
    "GradientFamily",
    "LRP",
    "Occlusion",
    "PriorMap",
    "RandomMap",
    "available",
    "batch_size_for",
    "blurred_baseline",
    "create",
    "explain_cam",
    "explain_lrp",
    "frozen_eval",
    "model_device",
    "register",
]

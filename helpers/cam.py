"""Grad-CAM's public names where DESIGN.md lists them; the explainer lives in :mod:`helpers.explainers.cam`."""

from helpers.explainers.cam import (
    CAM,
    FAST_METHODS,
    METHODS,
    SLOW_METHODS,
    cam_layer,
    explain_cam,
    fast_cam,
    fast_cam_rows,
    library_cam,
    library_class,
)

__all__ = [
    "CAM",
    "FAST_METHODS",
    "METHODS",
    "SLOW_METHODS",
    "cam_layer",
    "explain_cam",
    "fast_cam",
    "fast_cam_rows",
    "library_cam",
    "library_class",
]

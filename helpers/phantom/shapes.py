"""Soft shape primitives on patient-frame coordinates, and the per-image broadcasting they use.

Every shape is 1 inside, 0 outside and a linear ramp across its rim, with compact support (a finding's
mask is where its change is non-zero). Coordinates come as a row term ``(k, 1, W)`` and a column term
``(k, H, 1)``, so most shapes touch the full image in one or two passes.
"""

from __future__ import annotations

import numpy as np


def per_image(scene: dict[str, np.ndarray], key: str, idx) -> np.ndarray:
    """Parameter ``key`` of ``scene`` for images ``idx``, shaped to broadcast over ``(k, H, W)``."""
    return scene[key][idx][:, None, None]


def smooth_inside(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """1 well inside (negative distance), 0 outside, a linear ramp of width ``edge``; compact support.

    Edges are softened further by the detector blur, so a linear ramp (three array passes, in place)
    looks as smooth as a smoothstep at a third of the cost.
    """
    t = np.multiply(signed_distance, -1.0 / edge, dtype=np.float32)
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def ramp(x_part: np.ndarray, y_part: np.ndarray) -> np.ndarray:
    """``clip(x_part + y_part, 0, 1)`` of a row term and a column term: the one full-image pass of a shape."""
    t = x_part + y_part
    return np.clip(t, 0.0, 1.0, out=t)


def ellipse(X, Y, x0, y0, a, b, edge=0.02):
    """Soft ellipse centred at ``(x0, y0)`` with half-axes ``a`` (across) and ``b`` (down).

    The distance to the rim is taken as ``(r^2 - 1) / 2`` (equal to ``r - 1`` at the rim), which splits
    into a row and a column term, so only two passes touch the full image.
    """
    slope = -0.5 * np.minimum(a, b) / edge
    return ramp(((X - x0) / a) ** 2 * slope + (0.5 - slope), ((Y - y0) / b) ** 2 * slope)


def below(Y, curve, edge):
    """Soft indicator of ``Y < curve(X)`` (1 above the curve in the image), from a row and a column term."""
    return ramp(0.5 + curve / edge, Y * (-1.0 / edge))


def band(distance, half_width, edge=0.01):
    """Soft band of ``half_width`` around the zero set of ``distance``."""
    return smooth_inside(np.abs(distance) - half_width, edge)

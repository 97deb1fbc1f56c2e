"""Rendering a scene: normal chest plus findings, their masks, and the detector's exposure.

Everything is vectorised over a batch of images (numpy).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from helpers.phantom.anatomy import Geometry, normal_chest
from helpers.phantom.findings import REGISTRY
from helpers.phantom.marker import burn_in
from helpers.phantom.shapes import per_image

#: A pixel belongs to a finding's mask where the finding changes attenuation by more than this share
#: of its own peak change in that image.
MASK_THRESHOLD = 0.02
#: Detector point-spread function: binomial kernel, a Gaussian of sigma 1 pixel in five taps; mixed in
#: per image by the scene's ``blur``.
DETECTOR_PSF = np.array([1, 4, 6, 4, 1], np.float32) / 16


def render(scene: dict[str, np.ndarray], strength: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a batch: float images in [0, 1] ``(n, size, size)`` and masks ``(n, 13, size, size)``.

    Parameters
    ----------
    scene : dict of numpy.ndarray
        Per-image parameters (:func:`helpers.phantom.sample_scene` or :func:`helpers.phantom.study_scenes`).
    strength : numpy.ndarray
        ``(n, 13)`` drawing strength per finding (:func:`helpers.phantom.drawing_strength`), 0 = absent.
    size : int
        Side of the square images, in pixels.

    Notes
    -----
    The texture and noise come from the scene's ``batch_seed`` and the findings draw no random numbers,
    so the same scene rendered with other strengths (e.g. one finding's column set to 0) differs only by
    the findings: with and without each finding is a pair of calls.
    """
    rng = np.random.default_rng(int(scene["batch_seed"][0]))
    geo = Geometry(scene, size)
    attenuation = normal_chest(geo, rng)
    masks = np.zeros((len(strength), len(REGISTRY), size, size), dtype=bool)
    for j, finding in enumerate(REGISTRY):
        idx = np.flatnonzero(strength[:, j] > 0)
        if len(idx) == 0:
            continue
        change = finding.draw(geo, idx) * strength[idx, j][:, None, None]
        attenuation[idx] += change
        masks[idx, j] = support(np.abs(change))
    # uniform noise of unit variance: looks the same as Gaussian here and costs a third to draw
    noise = rng.random(attenuation.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(np.sqrt(12.0))
    # a burned-in marker (scenes of phantoms written with one) is drawn over the exposure, as text is
    return burn_in(expose(attenuation, scene, noise), scene), masks


def support(change: np.ndarray) -> np.ndarray:
    """Where a finding's change ``(n, H, W)`` (absolute values) shows in the image: its mask.

    The pixels the finding changes by more than :data:`MASK_THRESHOLD` of its own peak, widened by one
    pixel for the detector blur (its 5-tap kernel moves 1/4 of a pixel's signal one pixel away and only
    1/16 two pixels away), so thin lines (tubes, rib breaks) keep the first ring of their blurred rim inside the
    mask without inflating small findings. The faint second ring stays outside: for a support device about a fifth
    of the pixels it changes by 2 grey levels or more (``tests/test_counterfactual.py``). A boolean dilation costs
    a fraction of blurring the change itself.
    """
    peak = change.max(axis=(1, 2), keepdims=True)
    return dilate(change > MASK_THRESHOLD * np.maximum(peak, 1e-6), radius=1)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``(n, H, W)`` masks by a square of side ``2 * radius + 1`` (separable ORs)."""
    for axis in (1, 2):
        grown = mask.copy()
        for step in range(1, radius + 1):
            ahead = [slice(None)] * 3
            behind = [slice(None)] * 3
            ahead[axis], behind[axis] = slice(step, None), slice(None, -step)
            grown[tuple(ahead)] |= mask[tuple(behind)]
            grown[tuple(behind)] |= mask[tuple(ahead)]
        mask = grown
    return mask


def expose(attenuation: np.ndarray, scene: dict, noise: np.ndarray) -> np.ndarray:
    """Detector response: exponential attenuation, gamma, blur and noise, per image."""
    idx = np.arange(len(attenuation))
    image = 1.0 - np.exp(-per_image(scene, "gain", idx) * np.clip(attenuation, 0, None))
    image = gamma_correct(image, scene["gamma"])
    blurred = point_spread(image)
    mix = per_image(scene, "blur", idx)
    image = (1 - mix) * image + mix * blurred + per_image(scene, "noise", idx) * noise
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def point_spread(images: np.ndarray) -> np.ndarray:
    """Blur a batch ``(n, H, W)`` with the detector's point-spread function (separable)."""
    return ndimage.correlate1d(ndimage.correlate1d(images, DETECTOR_PSF, axis=1), DETECTOR_PSF, axis=2)


def gamma_correct(image: np.ndarray, gamma: np.ndarray, levels: int = 1024) -> np.ndarray:
    """``image ** gamma`` per image through a lookup table of ``levels`` steps (finer than the 8-bit
    output, and a gather instead of a power per pixel)."""
    table = np.linspace(0.0, 1.0, levels + 1, dtype=np.float32)[None, :] ** gamma[:, None].astype(np.float32)
    index = np.rint(image.reshape(len(image), -1) * levels).astype(np.intp)
    return np.take_along_axis(table, index, axis=1).reshape(image.shape)

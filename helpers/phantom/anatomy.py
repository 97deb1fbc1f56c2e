"""The normal chest: patient-frame geometry of a batch and the attenuation of its anatomy.

A radiograph is an attenuation map (air dark, bone and fluid bright): body, lungs with vessel markings,
heart, mediastinum and trachea, spine, ribs, clavicles and diaphragm domes. The findings
(:mod:`helpers.phantom.findings`) draw on the same :class:`Geometry`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from helpers.phantom.shapes import band, below, ellipse, per_image, ramp, smooth_inside

#: Vertical spacing of the posterior ribs, in patient-frame units.
RIB_SPACING = 0.062


class Geometry:
    """Patient-frame coordinates of a batch: X right-left across the chest, Y head to feet, both ~[-0.5, 0.5].

    X has shape ``(n, 1, W)`` and Y ``(n, H, 1)``: pose is a shift and an anisotropic scale (patient
    rotation about the body axis is drawn as lung asymmetry instead of an in-plane turn), so every
    coordinate term is a cheap 1-D array and only the combined shape is a full image.

    Parameters
    ----------
    scene : dict of numpy.ndarray
        Per-image parameters (:func:`helpers.phantom.sample_scene`); an optional ``"patient"`` entry
        groups rows that share one anatomy.
    size : int
        Side of the square images, in pixels.

    Attributes
    ----------
    first, rows : numpy.ndarray
        Each patient's first row, and each row's patient position: per-patient arrays drawn at ``first``
        are indexed by ``rows``.
    lung_fields, markings : tuple of numpy.ndarray or numpy.ndarray or None
        Per-patient left and right lung fields and vessel markings, set by :func:`normal_chest` and
        reused by the findings (None before it ran).
    """

    def __init__(self, scene: dict, size: int):
        patient = scene.get("patient", np.arange(len(scene["cx"])))
        _, self.first, self.rows = np.unique(patient, return_index=True, return_inverse=True)
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        every = slice(None)
        sx = per_image(scene, "scale", every) * per_image(scene, "aspect", every)
        sy = per_image(scene, "scale", every) / per_image(scene, "aspect", every)
        self.X = ((grid[None, None, :] - per_image(scene, "cx", every)) / sx).astype(np.float32)
        self.Y = ((grid[None, :, None] - per_image(scene, "cy", every)) / sy).astype(np.float32)
        self.size = size
        self.scene = scene
        self.lung_fields: tuple[np.ndarray, np.ndarray] | None = None
        self.markings: np.ndarray | None = None

    def at(self, idx):
        """Row and column coordinates ``(X, Y)`` of images ``idx``."""
        return self.X[idx], self.Y[idx]

    def param(self, key: str, idx) -> np.ndarray:
        """Scene parameter ``key`` of images ``idx``, shaped to broadcast over ``(k, H, W)``."""
        return per_image(self.scene, key, idx)

    def lung(self, idx, side, dome_shift=0.0):
        """Soft lung field on ``side`` (-1 image-left = patient's right, +1 image-right).

        ``dome_shift`` raises (positive) or lowers the diaphragm dome; the unshifted fields are taken
        from the per-patient cache once :func:`normal_chest` has filled it.
        """
        if dome_shift == 0.0 and self.lung_fields is not None:
            left, right = self.lung_fields
            return np.where(np.asarray(side) > 0, right[self.rows[idx]], left[self.rows[idx]])
        X, Y = self.at(idx)
        T = self.param("thorax", idx)
        T = T * (1.0 + side * self.param("rotation", idx))  # a rotated patient shows one lung wider
        x0 = side * 0.5 * T
        h = self.param("lung_height", idx)
        field = ellipse(X, Y, x0, -0.06, 0.47 * T, h, edge=0.03)
        dome = self.param("dome", idx) - dome_shift - 1.8 * (X - x0) ** 2
        return field * below(Y, dome, 0.03)

    def lungs(self, idx):
        """Both lung fields of images ``idx`` (from the per-patient cache)."""
        left, right = self.lung_fields
        return left[self.rows[idx]] + right[self.rows[idx]]

    def heart(self, idx, ctr):
        """Soft heart of cardiothoracic ratio ``ctr``; AP films magnify it."""
        X, Y = self.at(idx)
        T = self.param("thorax", idx)
        magnify = 1.0 + 0.1 * self.param("ap", idx)
        half_width = ctr * T * magnify
        return ellipse(X, Y, 0.3 * half_width, 0.12, half_width, 0.11 * magnify, edge=0.02)

    def mediastinum(self, idx, width):
        """Soft mediastinal band of half-width ``width``."""
        X, Y = self.at(idx)
        return band(X, width, 0.015) * smooth_inside(Y - 0.05, 0.05) * smooth_inside(-0.45 - Y, 0.05)

    def rib_distance(self, idx, y_shift=0.0):
        """Distance to the nearest posterior rib and that rib's number (periodic, no loop over ribs)."""
        X, Y = self.at(idx)
        phase = (Y - y_shift - rib_curve(X) - self.param("rib_phase", idx)) / RIB_SPACING
        number = np.round(phase)
        return (phase - number) * RIB_SPACING, number

    def rib_y(self, idx, x, rib):
        """Height of posterior rib number ``rib`` at ``x``."""
        return rib * RIB_SPACING + rib_curve(x) + self.param("rib_phase", idx)


def rib_curve(X):
    """Posterior ribs rise from the spine, then curve down laterally."""
    return -0.4 - 0.3 * np.abs(X) + 1.6 * X**2


def normal_chest(geo: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Attenuation of the normal chest, ``(n, H, W)``: one anatomy per patient, the heart per image.

    Everything but the heart is drawn once per patient (at ``geo.first``); the heart is drawn per image
    because AP films magnify it. Fills ``geo.lung_fields`` and ``geo.markings`` for the findings.
    """
    idx = geo.first
    X, Y = geo.at(idx)
    T = geo.param("thorax", idx)
    geo.lung_fields = (geo.lung(idx, -1.0), geo.lung(idx, 1.0))
    lungs = geo.lung_fields[0] + geo.lung_fields[1]
    # squarish trunk |x|^4 + |y|^4 < 1, rim distance taken as (s^4 - 1) / 4 like `ellipse`
    body = ramp(3.0 - 2.5 * (X / (T + 0.07)) ** 4, -2.5 * ((Y - 0.1) / 0.66) ** 4) * geo.param("tissue", idx)
    vertebrae = np.abs((Y / 0.055) % 1.0 - 0.5)  # triangle wave: vertebral bodies and discs
    spine = band(X, 0.035, 0.01) * (0.1 + 0.08 * vertebrae)
    trachea = band(X, 0.016, 0.008) * smooth_inside(Y + 0.14, 0.03)
    rib_d, rib_n = geo.rib_distance(idx)
    ribs = (
        band(rib_d, 0.009, 0.008)
        * ((rib_n >= 0) & (rib_n <= 9))
        * band(np.abs(X) - (T + 0.03) / 2 - 0.03, (T + 0.03) / 2, 0.02)
    )
    clavicle_d = Y + 0.40 + 0.12 * (np.abs(X) - 0.05)
    clavicles = band(clavicle_d, 0.012) * band(np.abs(X) - 0.2, 0.15, 0.03)
    markings = lung_markings(X, Y, geo.size, rng) * lungs * geo.param("markings", idx)
    geo.markings = markings  # a pneumothorax removes them
    chest = (
        body
        - 0.32 * lungs
        + 0.12 * geo.mediastinum(idx, geo.param("mediastinum", idx))
        - 0.12 * trachea
        + spine
        + 0.14 * ribs
        + 0.16 * clavicles
        + markings
    )
    every = slice(None)
    heart = geo.heart(every, geo.param("ctr", every))  # covers the lung it overlaps and adds its own density
    return (chest[geo.rows] + heart * (0.32 * lungs[geo.rows] + 0.12)).astype(np.float32)


def lung_markings(X: np.ndarray, Y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Vessel-like texture, denser towards the hila: band-limited noise."""
    n = X.shape[0]
    half = (size + 1) // 2  # drawn at half resolution: a quarter of the filtering work
    sigma = 0.004 * size  # same anatomical scale at every resolution
    noise = ndimage.gaussian_filter(rng.standard_normal((n, half, half), dtype=np.float32), sigma=(0, sigma, sigma))
    noise = noise.repeat(2, axis=1).repeat(2, axis=2)[:, :size, :size]
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-6
    hilum = np.exp(-((np.abs(X) - 0.1) ** 2) / 0.05) * np.exp(-(Y**2) / 0.05)  # separable
    return np.clip(noise, 0, None) * (0.4 + hilum)

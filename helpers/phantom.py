"""Procedural chest radiographs in CheXpert's layout, with pixel ground truth (CheXlocalize JSON).

A radiograph is rendered as an attenuation map (air dark, bone and fluid bright): body, lungs with
vessel markings, heart, mediastinum and trachea, spine, ribs, clavicles and diaphragm domes. Pose, scale,
habitus and patient rotation vary per patient (a patient's studies share them, as follow-up films do);
exposure, contrast, blur and noise vary per image, and AP views magnify the heart. Each of the 13
findings adds its own attenuation change, drawn where a radiologist would look, and its mask is the
support of that change widened by the reach of the detector blur. Labels follow the real CheXpert ``train.csv``: per-label rates of
1 / 0 / -1 / blank and a Gaussian copula fitted to the pairwise co-occurrence of positives
(``scripts/derive_label_stats.py``). Uncertain (-1) findings are drawn faint.

Everything is vectorised over a batch of images (numpy); written by hand because no library draws
chest phantoms with per-finding masks.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, stats

from helpers import labels, paths
from pycocotools import mask as coco_mask

FINDINGS = labels.LOCALISABLE
#: Findings that make "No Finding" false when positive or uncertain (CheXpert excludes Support Devices).
PATHOLOGIC = tuple(name for name in FINDINGS if name != "Support Devices")
#: Drawing strength of uncertain findings relative to positive ones: faint, genuinely ambiguous.
UNCERTAIN_STRENGTH = (0.25, 0.5)
POSITIVE_STRENGTH = (0.8, 1.1)
#: A pixel belongs to a finding's mask where the finding changes attenuation by more than this share
#: of its own peak change in that image.
MASK_THRESHOLD = 0.02
#: Detector point-spread function: binomial kernel, a Gaussian of sigma 1 pixel in five taps; mixed in
#: per image by the scene's ``blur``.
DETECTOR_PSF = np.array([1, 4, 6, 4, 1], np.float32) / 16
MANIFEST = "phantom.json"


# --------------------------------------------------------------------------- label sampling


@lru_cache(maxsize=1)
def chexpert_stats() -> dict:
    """Statistics of the real CheXpert ``train.csv`` shipped with the package."""
    return json.loads(paths.CHEXPERT_STATS_JSON.read_text())


def sample_labels(n: int, rng: np.random.Generator, min_prevalence: float = 0.0,
                  allow_uncertain: bool = True) -> np.ndarray:
    """Draw ``(n, 14)`` CheXpert label codes (1, 0, -1, NaN) with CheXpert's correlations.

    A latent Gaussian vector with the fitted copula correlation is cut, per label, at the real rates:
    lowest quantile positive, then uncertain, then negative, then blank. ``min_prevalence`` raises rare
    positives (taken from blank and negative mass) so a small phantom has enough of each finding;
    ``allow_uncertain=False`` turns uncertain into negative (CheXpert's ``valid.csv`` has no -1).
    "No Finding" is 1 exactly when no pathology other than Support Devices is positive or uncertain,
    as in CheXpert, and blank otherwise.
    """
    stats_ = chexpert_stats()
    correlation = np.asarray(stats_["latent_correlation"]["matrix"])
    latent = rng.standard_normal((n, len(FINDINGS))) @ np.linalg.cholesky(correlation).T
    uniform = stats.norm.cdf(latent)
    codes = np.full((n, len(labels.PATHOLOGIES)), np.nan)
    for j, name in enumerate(FINDINGS):
        rates = stats_["label_rates"][name]
        positive = max(rates["positive"], min_prevalence)
        rest = 1.0 - rates["positive"]
        shrink = (1.0 - positive) / rest if rest > 0 else 0.0
        uncertain = rates["uncertain"] * shrink
        negative = rates["negative"] * shrink
        column = np.full(n, np.nan)
        column[uniform[:, j] < positive + uncertain + negative] = 0.0
        column[uniform[:, j] < positive + uncertain] = -1.0 if allow_uncertain else 0.0
        column[uniform[:, j] < positive] = 1.0
        codes[:, labels.PATHOLOGIES.index(name)] = column
    pathologic = codes[:, labels.pathology_indices(PATHOLOGIC)]
    no_finding = ~np.isin(pathologic, (1.0, -1.0)).any(axis=1)
    codes[:, 0] = np.where(no_finding, 1.0, np.nan)
    return codes


def drawing_strength(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n, 13)`` strength of each finding: 0 absent, faint if uncertain, full if positive."""
    findings = codes[:, 1:]
    strength = np.zeros(findings.shape, dtype=np.float32)
    positive, uncertain = findings == 1, findings == -1
    strength[positive] = rng.uniform(*POSITIVE_STRENGTH, positive.sum())
    strength[uncertain] = rng.uniform(*UNCERTAIN_STRENGTH, uncertain.sum())
    return strength


# --------------------------------------------------------------------------- scene parameters


def sample_scene(n: int, rng: np.random.Generator, ap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-image anatomy, pose, exposure and finding-placement parameters, each an ``(n,)`` array.

    Finding placements are drawn for every image whether or not the finding is present, so switching
    a finding on or off changes nothing else in the image.
    """
    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    side = lambda: rng.choice(np.array([-1.0, 1.0], np.float32), n)  # noqa: E731
    ap = rng.random(n) < 0.85 if ap is None else np.asarray(ap, bool)
    return {
        "ap": ap.astype(np.float32),
        # pose and body habitus
        # positioning varies as on real films, so no finding sits at one fixed pixel position (a linear
        # model on raw pixels must not solve the phantom: benchmarks/bench_linear_probe.py)
        "cx": 0.5 + rng.normal(0, 0.04, n).astype(np.float32), "cy": 0.5 + rng.normal(0, 0.035, n).astype(np.float32),
        "scale": u(0.85, 1.1), "aspect": u(0.95, 1.05), "rotation": rng.normal(0, 0.04, n).astype(np.float32),
        "thorax": u(0.35, 0.41), "lung_height": u(0.3, 0.35), "dome": u(0.17, 0.25),
        "ctr": u(0.40, 0.48), "mediastinum": u(0.045, 0.06), "rib_phase": u(-0.02, 0.02),
        # exposure
        "gain": u(1.4, 2.2), "gamma": u(0.8, 1.25), "blur": u(0.0, 0.8), "noise": u(0.008, 0.03),
        "tissue": u(0.3, 0.45), "markings": u(0.03, 0.06),
        # finding placement (always drawn; used only where the finding is present)
        "ecm_width": u(1.35, 1.7), "ctr_big": u(0.55, 0.66),
        "opacity_side": side(), "opacity_y": u(-0.15, 0.12), "opacity_r": u(0.06, 0.1),
        "lesion_side": side(), "lesion_x": u(0.35, 0.8), "lesion_y": u(-0.2, 0.12), "lesion_r": u(0.03, 0.055),
        "edema_spread": u(0.9, 1.2),
        "consol_side": side(), "consol_top": u(0.0, 0.1),
        "pneu_side": side(), "pneu_y": u(-0.05, 0.12),
        "pneu_offsets": rng.normal(0, 0.045, (n, 4, 2)).astype(np.float32),  # the foci of a patchy pneumonia
        "atel_side": side(), "atel_y": u(0.06, 0.13), "atel_len": u(0.1, 0.16),
        "ptx_side": side(), "ptx_depth": u(0.05, 0.09),
        "eff_side": side(), "eff_height": u(0.08, 0.16), "eff_both": (rng.random(n) < 0.4).astype(np.float32),
        "pleural_side": side(), "pleural_t": u(0.018, 0.03),
        "fracture_side": side(), "fracture_rib": rng.integers(2, 7, n).astype(np.float32), "fracture_x": u(0.55, 0.8),
        "device_kind": rng.integers(1, 8, n).astype(np.float32),  # bit mask: tube, line, pacemaker
        "device_x": u(-0.02, 0.02),
        "batch_seed": rng.integers(0, 2**31, n).astype(np.float64),
    }


# --------------------------------------------------------------------------- shape primitives


def _smooth_inside(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """1 well inside (negative distance), 0 outside, a linear ramp of width ``edge``; compact support.

    Edges are softened further by the detector blur, so a linear ramp (three array passes, in place)
    looks as smooth as a smoothstep at a third of the cost.
    """
    t = np.multiply(signed_distance, -1.0 / edge, dtype=np.float32)
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def _ramp(x_part: np.ndarray, y_part: np.ndarray) -> np.ndarray:
    """``clip(x_part + y_part, 0, 1)`` of a row term and a column term: the one full-image pass of a shape."""
    t = x_part + y_part
    return np.clip(t, 0.0, 1.0, out=t)


def _ellipse(X, Y, x0, y0, a, b, edge=0.02):
    """Soft ellipse; the distance to the rim is taken as ``(r^2 - 1) / 2`` (equal to ``r - 1`` at the rim),
    which splits into a row and a column term, so only two passes touch the full image."""
    slope = -0.5 * np.minimum(a, b) / edge
    return _ramp(((X - x0) / a) ** 2 * slope + (0.5 - slope), ((Y - y0) / b) ** 2 * slope)


def _below(Y, curve, edge):
    """Soft indicator of ``Y < curve(X)`` (1 above the curve in the image), from a row and a column term."""
    return _ramp(0.5 + curve / edge, Y * (-1.0 / edge))


def _band(distance, half_width, edge=0.01):
    return _smooth_inside(np.abs(distance) - half_width, edge)


def _p(scene, key, idx):
    """Parameter ``key`` for images ``idx`` shaped to broadcast over ``(k, H, W)``."""
    return scene[key][idx][:, None, None]


class _Geometry:
    """Patient-frame coordinates of a batch: X right-left across the chest, Y head to feet, both ~[-0.5, 0.5].

    X has shape ``(n, 1, W)`` and Y ``(n, H, 1)``: pose is a shift and an anisotropic scale (patient
    rotation about the body axis is drawn as lung asymmetry instead of an in-plane turn), so every
    coordinate term is a cheap 1-D array and only the combined shape is a full image.
    """

    def __init__(self, scene: dict, size: int):
        # rows of one patient share one anatomy: drawn once (at the patient's first row), indexed by `rows`
        patient = scene.get("patient", np.arange(len(scene["cx"])))
        _, self.first, self.rows = np.unique(patient, return_index=True, return_inverse=True)
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        every = slice(None)
        sx = _p(scene, "scale", every) * _p(scene, "aspect", every)
        sy = _p(scene, "scale", every) / _p(scene, "aspect", every)
        self.X = ((grid[None, None, :] - _p(scene, "cx", every)) / sx).astype(np.float32)
        self.Y = ((grid[None, :, None] - _p(scene, "cy", every)) / sy).astype(np.float32)
        self.size = size
        self.scene = scene

    def at(self, idx):
        return self.X[idx], self.Y[idx]

    def lung(self, idx, side, dome_shift=0.0):
        """Soft lung field on ``side`` (-1 image-left = patient's right, +1 image-right)."""
        if dome_shift == 0.0 and hasattr(self, "lung_fields"):
            left, right = self.lung_fields
            return np.where(np.asarray(side) > 0, right[self.rows[idx]], left[self.rows[idx]])
        X, Y = self.at(idx)
        T = _p(self.scene, "thorax", idx)
        T = T * (1.0 + side * _p(self.scene, "rotation", idx))  # a rotated patient shows one lung wider
        x0 = side * 0.5 * T
        h = _p(self.scene, "lung_height", idx)
        ellipse = _ellipse(X, Y, x0, -0.06, 0.47 * T, h, edge=0.03)
        dome = _p(self.scene, "dome", idx) - dome_shift - 1.8 * (X - x0) ** 2
        return ellipse * _below(Y, dome, 0.03)

    def lungs(self, idx):
        left, right = self.lung_fields
        return left[self.rows[idx]] + right[self.rows[idx]]

    def heart(self, idx, ctr):
        X, Y = self.at(idx)
        T = _p(self.scene, "thorax", idx)
        magnify = 1.0 + 0.1 * _p(self.scene, "ap", idx)  # AP films magnify the heart
        half_width = ctr * T * magnify
        return _ellipse(X, Y, 0.3 * half_width, 0.12, half_width, 0.11 * magnify, edge=0.02)

    def mediastinum(self, idx, width):
        X, Y = self.at(idx)
        return _band(X, width, 0.015) * _smooth_inside(Y - 0.05, 0.05) * _smooth_inside(-0.45 - Y, 0.05)

    def rib_distance(self, idx, y_shift=0.0):
        """Distance to the nearest posterior rib and that rib's number (periodic, no loop over ribs)."""
        X, Y = self.at(idx)
        phase = (Y - y_shift - _rib_curve(X) - _p(self.scene, "rib_phase", idx)) / 0.062
        number = np.round(phase)
        return (phase - number) * 0.062, number


# --------------------------------------------------------------------------- anatomy


def _anatomy(geo: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Attenuation of the normal chest, ``(n, H, W)``: one anatomy per patient, the heart per image.

    Everything but the heart is drawn once per patient (at ``geo.first``); the heart is drawn per image
    because AP films magnify it.
    """
    scene, idx = geo.scene, geo.first
    X, Y = geo.at(idx)
    T = _p(scene, "thorax", idx)
    geo.lung_fields = (geo.lung(idx, -1.0), geo.lung(idx, 1.0))  # per patient, reused by every finding
    lungs = geo.lung_fields[0] + geo.lung_fields[1]
    # squarish trunk |x|^4 + |y|^4 < 1, rim distance taken as (s^4 - 1) / 4 like _ellipse
    body = _ramp(3.0 - 2.5 * (X / (T + 0.07)) ** 4, -2.5 * ((Y - 0.1) / 0.66) ** 4) * _p(scene, "tissue", idx)
    vertebrae = np.abs((Y / 0.055) % 1.0 - 0.5)  # triangle wave: vertebral bodies and discs
    spine = _band(X, 0.035, 0.01) * (0.1 + 0.08 * vertebrae)
    trachea = _band(X, 0.016, 0.008) * _smooth_inside(Y + 0.14, 0.03)
    rib_d, rib_n = geo.rib_distance(idx)
    ribs = _band(rib_d, 0.009, 0.008) * ((rib_n >= 0) & (rib_n <= 9)) * _band(np.abs(X) - (T + 0.03) / 2 - 0.03, (T + 0.03) / 2, 0.02)
    clavicle_d = Y + 0.40 + 0.12 * (np.abs(X) - 0.05)
    clavicles = _band(clavicle_d, 0.012) * _band(np.abs(X) - 0.2, 0.15, 0.03)
    markings = _lung_markings(X, Y, geo.size, rng) * lungs * _p(scene, "markings", idx)
    geo.markings = markings  # a pneumothorax removes them
    chest = (body - 0.32 * lungs + 0.12 * geo.mediastinum(idx, _p(scene, "mediastinum", idx))
             - 0.12 * trachea + spine + 0.14 * ribs + 0.16 * clavicles + markings)
    every = slice(None)
    heart = geo.heart(every, _p(scene, "ctr", every))  # covers the lung it overlaps and adds its own density
    return (chest[geo.rows] + heart * (0.32 * lungs[geo.rows] + 0.12)).astype(np.float32)


def _lung_markings(X: np.ndarray, Y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Vessel-like texture, denser towards the hila: band-limited noise."""
    n = X.shape[0]
    half = (size + 1) // 2  # drawn at half resolution: a quarter of the filtering work
    sigma = 0.004 * size  # same anatomical scale at every resolution
    noise = ndimage.gaussian_filter(rng.standard_normal((n, half, half), dtype=np.float32), sigma=(0, sigma, sigma))
    noise = noise.repeat(2, axis=1).repeat(2, axis=2)[:, :size, :size]
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-6
    hilum = np.exp(-((np.abs(X) - 0.1) ** 2) / 0.05) * np.exp(-(Y ** 2) / 0.05)  # separable
    return np.clip(noise, 0, None) * (0.4 + hilum)


# --------------------------------------------------------------------------- findings


def _enlarged_cardiomediastinum(geo, idx, rng):
    width = _p(geo.scene, "mediastinum", idx)
    wide = geo.mediastinum(idx, width * _p(geo.scene, "ecm_width", idx))
    _, Y = geo.at(idx)
    upper = _smooth_inside(Y + 0.02, 0.05)  # widening of the upper mediastinum only
    return (0.12 + 0.32 * geo.lungs(idx)) * (wide - geo.mediastinum(idx, width)) * upper


def _cardiomegaly(geo, idx, rng):
    heart_gain = 0.12 + 0.32 * geo.lungs(idx)  # the enlarged heart covers lung and adds its own density
    return heart_gain * (geo.heart(idx, _p(geo.scene, "ctr_big", idx)) - geo.heart(idx, _p(geo.scene, "ctr", idx)))


def _lung_opacity(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "opacity_side", idx), _p(geo.scene, "thorax", idx)
    r = _p(geo.scene, "opacity_r", idx)
    patch = _ellipse(X, Y, side * 0.55 * T, _p(geo.scene, "opacity_y", idx), r, 1.3 * r, edge=0.06)
    return 0.16 * patch * geo.lung(idx, side)


def _lung_lesion(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "lesion_side", idx), _p(geo.scene, "thorax", idx)
    r = _p(geo.scene, "lesion_r", idx)
    nodule = _ellipse(X, Y, side * _p(geo.scene, "lesion_x", idx) * T, _p(geo.scene, "lesion_y", idx), r, r, edge=0.012)
    return 0.34 * nodule * (geo.lungs(idx) > 0.5)


def _edema(geo, idx, rng):
    X, Y = geo.at(idx)
    spread = _p(geo.scene, "edema_spread", idx)
    haze = np.exp(-(((np.abs(X) - 0.1) / (0.14 * spread)) ** 2 + (Y / (0.18 * spread)) ** 2))  # bat wings
    return 0.1 * haze * geo.lungs(idx) * (haze > 0.1)


def _consolidation(geo, idx, rng):
    X, Y = geo.at(idx)
    side = _p(geo.scene, "consol_side", idx)
    lobe = geo.lung(idx, side) * _smooth_inside(_p(geo.scene, "consol_top", idx) - Y, 0.008)  # sharp fissure
    bronchi = _band(np.sin(22 * (X - side * 0.15) + 9 * Y) * 0.04, 0.004, 0.004)  # air bronchograms
    return lobe * (0.3 - 0.12 * bronchi)


def _pneumonia(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "pneu_side", idx), _p(geo.scene, "thorax", idx)
    offsets = geo.scene["pneu_offsets"][idx]
    blobs = np.zeros((len(X), geo.size, geo.size), np.float32)
    for k in range(offsets.shape[1]):  # multifocal patchy air-space opacity around one zone
        x0 = side * 0.5 * T + offsets[:, k, 0, None, None]
        y0 = _p(geo.scene, "pneu_y", idx) + offsets[:, k, 1, None, None]
        np.maximum(blobs, _ellipse(X, Y, x0, y0, 0.035, 0.03, edge=0.03), out=blobs)
    return 0.24 * blobs * geo.lung(idx, side)


def _atelectasis(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "atel_side", idx), _p(geo.scene, "thorax", idx)
    y0 = _p(geo.scene, "atel_y", idx) + 0.15 * (X - side * 0.45 * T)
    plate = _band(Y - y0, 0.011, 0.008) * _band(X - side * 0.45 * T, _p(geo.scene, "atel_len", idx) / 2, 0.02)
    volume_loss = geo.lung(idx, side) - geo.lung(idx, side, dome_shift=0.045)  # raised hemidiaphragm
    return 0.34 * plate * geo.lung(idx, side) + 0.32 * volume_loss


def _pneumothorax(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "ptx_side", idx), _p(geo.scene, "thorax", idx)
    lung = geo.lung(idx, side)
    collapsed = _ellipse(X, Y, side * 0.42 * T, 0.0, 0.46 * T - _p(geo.scene, "ptx_depth", idx),
                         _p(geo.scene, "lung_height", idx) - _p(geo.scene, "ptx_depth", idx), edge=0.006)
    apex = _smooth_inside(Y + 0.02, 0.06)  # upright film: air rises to the apex
    pleural_air = lung * (1 - collapsed) * apex
    markings = geo.markings[geo.rows[idx]]
    pleural_line = _band(collapsed - 0.5, 0.2, 0.1) * lung * apex
    return -pleural_air * (0.14 + markings) + 0.12 * pleural_line


def _pleural_effusion(geo, idx, rng):
    X, Y = geo.at(idx)
    fluid = np.zeros_like(X)
    for side, weight in ((_p(geo.scene, "eff_side", idx), 1.0), (-_p(geo.scene, "eff_side", idx), _p(geo.scene, "eff_both", idx))):
        T = _p(geo.scene, "thorax", idx)
        level = _p(geo.scene, "dome", idx) - _p(geo.scene, "eff_height", idx) - 0.5 * ((X - side * 0.47 * T) * side).clip(0) ** 1.0 * 0.6
        basal = _smooth_inside(level - Y, 0.03)  # meniscus: climbs the lateral wall, blunts the angle
        fluid = fluid + weight * basal * geo.lung(idx, side, dome_shift=-0.04)
    return 0.28 * fluid


def _pleural_other(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "pleural_side", idx), _p(geo.scene, "thorax", idx)
    lung = geo.lung(idx, side)
    inner = _ellipse(X, Y, side * 0.47 * T - side * _p(geo.scene, "pleural_t", idx), -0.02, 0.46 * T, _p(geo.scene, "lung_height", idx), edge=0.01)
    lateral = side * X > 0.25 * T
    return 0.26 * lung * (1 - inner) * lateral * _smooth_inside(Y - 0.1, 0.05)


def _fracture(geo, idx, rng):
    X, Y = geo.at(idx)
    side, T = _p(geo.scene, "fracture_side", idx), _p(geo.scene, "thorax", idx)
    rib = _p(geo.scene, "fracture_rib", idx)
    x_break = side * _p(geo.scene, "fracture_x", idx) * T
    window = _band(X - x_break - side * 0.03, 0.03, 0.006)
    d, n = geo.rib_distance(idx)
    d_shift, n_shift = geo.rib_distance(idx, y_shift=0.02)  # displaced fragment
    original = _band(d, 0.009, 0.008) * (n == rib)
    displaced = _band(d_shift, 0.009, 0.008) * (n_shift == rib)
    gap = _band(X - x_break, 0.01, 0.004) * original
    callus = _ellipse(X, Y, x_break, _rib_y(geo, idx, x_break, rib), 0.04, 0.03, edge=0.012)  # healing callus
    return 0.14 * ((displaced - original) * window - gap) + 0.26 * callus


def _rib_curve(X):
    """Posterior ribs rise from the spine, then curve down laterally."""
    return -0.4 - 0.3 * np.abs(X) + 1.6 * X ** 2


def _rib_y(geo, idx, x, rib):
    return rib * 0.062 + _rib_curve(x) + _p(geo.scene, "rib_phase", idx)


def _support_devices(geo, idx, rng):
    X, Y = geo.at(idx)
    kind = geo.scene["device_kind"][idx].astype(int)[:, None, None]
    thin = max(0.006, 0.8 / geo.size)  # at least a pixel wide at any resolution
    tube = _band(X - _p(geo.scene, "device_x", idx), thin, 0.004) * _smooth_inside(Y + 0.12, 0.01) * ((kind & 1) > 0)
    curve = Y - (-0.12 - 1.6 * (X + 0.12) ** 2)
    line = _band(curve, thin, 0.004) * _band(X + 0.2, 0.17, 0.01) * ((kind & 2) > 0)
    box = _band(X - 0.24, 0.04, 0.008) * _band(Y + 0.3, 0.025, 0.008)
    lead = _band(Y + 0.3 - 1.2 * (X - 0.24), 0.004, 0.004) * _band(X - 0.14, 0.1, 0.01)
    pacemaker = np.maximum(box, lead) * ((kind & 4) > 0)
    return 0.85 * np.maximum(np.maximum(tube, line), pacemaker)


DRAW = {
    "Enlarged Cardiomediastinum": _enlarged_cardiomediastinum, "Cardiomegaly": _cardiomegaly,
    "Lung Opacity": _lung_opacity, "Lung Lesion": _lung_lesion, "Edema": _edema,
    "Consolidation": _consolidation, "Pneumonia": _pneumonia, "Atelectasis": _atelectasis,
    "Pneumothorax": _pneumothorax, "Pleural Effusion": _pleural_effusion, "Pleural Other": _pleural_other,
    "Fracture": _fracture, "Support Devices": _support_devices,
}


# --------------------------------------------------------------------------- rendering


def render(scene: dict[str, np.ndarray], strength: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a batch: float images in [0, 1] ``(n, size, size)`` and masks ``(n, 13, size, size)``.

    ``strength`` is ``(n, 13)`` (see :func:`drawing_strength`); the texture and noise come from the
    scene's ``batch_seed``, so the same scene rendered with other strengths differs only by the findings.
    """
    rng = np.random.default_rng(int(scene["batch_seed"][0]))
    geo = _Geometry(scene, size)
    attenuation = _anatomy(geo, rng)
    masks = np.zeros((len(strength), len(FINDINGS), size, size), dtype=bool)
    for j, name in enumerate(FINDINGS):
        idx = np.flatnonzero(strength[:, j] > 0)
        if len(idx) == 0:
            continue
        change = DRAW[name](geo, idx, rng) * strength[idx, j][:, None, None]
        attenuation[idx] += change
        masks[idx, j] = _support(np.abs(change))
    # uniform noise of unit variance: looks the same as Gaussian here and costs a third to draw
    noise = rng.random(attenuation.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(np.sqrt(12.0))
    return _expose(attenuation, scene, noise), masks


def _point_spread(images: np.ndarray) -> np.ndarray:
    """Blur a batch ``(n, H, W)`` with the detector's point-spread function (separable)."""
    return ndimage.correlate1d(ndimage.correlate1d(images, DETECTOR_PSF, axis=1), DETECTOR_PSF, axis=2)


def _support(change: np.ndarray) -> np.ndarray:
    """Where a finding's change shows in the image: its mask.

    The pixels the finding changes by more than :data:`MASK_THRESHOLD` of its own peak, widened by one
    pixel for the detector blur (its 5-tap kernel moves 1/4 of a pixel's signal one pixel away and only
    1/16 two pixels away), so thin lines (tubes, rib breaks) keep their blurred rim inside the mask without
    inflating small findings. A boolean dilation costs a fraction of blurring the change itself.
    """
    peak = change.max(axis=(1, 2), keepdims=True)
    return _dilate(change > MASK_THRESHOLD * np.maximum(peak, 1e-6), radius=1)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
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


def _expose(attenuation: np.ndarray, scene: dict, noise: np.ndarray) -> np.ndarray:
    """Detector response: exponential attenuation, gamma, blur and noise, per image."""
    idx = np.arange(len(attenuation))
    image = 1.0 - np.exp(-_p(scene, "gain", idx) * np.clip(attenuation, 0, None))
    image = _gamma(image, scene["gamma"])
    blurred = _point_spread(image)
    mix = _p(scene, "blur", idx)
    image = (1 - mix) * image + mix * blurred + _p(scene, "noise", idx) * noise
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _gamma(image: np.ndarray, gamma: np.ndarray, levels: int = 1024) -> np.ndarray:
    """``image ** gamma`` per image through a lookup table of ``levels`` steps (finer than the 8-bit
    output, and a gather instead of a power per pixel)."""
    table = np.linspace(0.0, 1.0, levels + 1, dtype=np.float32)[None, :] ** gamma[:, None].astype(np.float32)
    index = np.rint(image.reshape(len(image), -1) * levels).astype(np.intp)
    return np.take_along_axis(table, index, axis=1).reshape(image.shape)


# --------------------------------------------------------------------------- dataset folder

#: Anatomy and pose that belong to the patient: drawn once, shared by the patient's studies (which
#: differ in exposure, contrast, blur, noise, AP/PA heart magnification and findings).
PATIENT_KEYS = ("cx", "cy", "scale", "aspect", "rotation", "thorax", "lung_height", "dome", "ctr",
                "mediastinum", "tissue", "markings", "rib_phase")
BATCH = 16


def generate(root: str | Path, n_images: int, image_size: int, seed: int = 0, *, n_valid: int | None = None,
             min_prevalence: float = 0.0, jpeg_quality: int = 95, progress: bool = False) -> Path:
    """Write a phantom dataset in the CheXpert-v1.0-small layout and return its folder.

    Parameters
    ----------
    root : path-like
        Folder to create: ``train.csv``, ``valid.csv``, ``train/patientNNNNN/studyK/view1_frontal.jpg``,
        ``valid/...``, ``gt_segmentations.json`` (CheXlocalize format, every image, all 13 findings) and
        ``phantom.json`` (the parameters). An existing phantom with the same parameters is reused; one
        with other parameters is replaced; a folder that is not a phantom is never touched.
    n_images : int
        Rows of ``train.csv`` (frontal views; patients have several studies).
    image_size : int
        Side of the square images, in pixels.
    seed : int
        Everything (labels, anatomy, noise) follows from it.
    n_valid : int, optional
        Rows of ``valid.csv`` (default ``max(n_images // 5, 1)``); like CheXpert's, it has no -1 labels.
    min_prevalence : float
        Floor on each finding's positive rate (0 keeps CheXpert's rates).

    Notes
    -----
    Writing happens in a temporary sibling folder that is renamed into place when complete, so an
    interrupted run leaves nothing half-written.
    """
    root = Path(root)
    n_valid = max(n_images // 5, 1) if n_valid is None else n_valid
    if n_images < 1 or n_valid < 1 or image_size < 32:
        raise ValueError(f"Need n_images >= 1, n_valid >= 1 and image_size >= 32; got {n_images}, {n_valid}, {image_size}.")
    manifest = {"n_images": n_images, "n_valid": n_valid, "image_size": image_size, "seed": seed,
                "min_prevalence": min_prevalence, "jpeg_quality": jpeg_quality, "version": 8}
    if _existing_manifest(root) == manifest:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        masks: dict[str, dict] = {}
        train = _write_split(tmp, "train", n_images, 1, image_size, rng, min_prevalence, jpeg_quality, masks, progress)
        first_valid_patient = int(train["Path"].str.extract(r"patient(\d+)", expand=False).astype(int).max()) + 1
        valid = _write_split(tmp, "valid", n_valid, first_valid_patient, image_size, rng, min_prevalence,
                             jpeg_quality, masks, progress)
        train.to_csv(tmp / "train.csv", index=False)
        valid.to_csv(tmp / "valid.csv", index=False)
        (tmp / "gt_segmentations.json").write_text(json.dumps(masks))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _replace_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _existing_manifest(root: Path) -> dict | None:
    if not root.exists():
        return None
    try:
        return json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise FileExistsError(f"{root} exists and is not a complete phantom (no readable {MANIFEST}); "
                              f"refusing to overwrite it. Remove it or choose another folder.") from None


def _replace_folder(new: Path, root: Path) -> None:
    if root.exists():
        old = root.with_name(f".{root.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
        new.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(root)


def _write_split(folder: Path, split: str, n: int, first_patient: int, size: int, rng: np.random.Generator,
                 min_prevalence: float, quality: int, masks: dict, progress: bool) -> pd.DataFrame:
    patient, study = patients(n, rng)
    frame = _metadata(split, patient + first_patient, study, rng)
    codes = sample_labels(n, rng, min_prevalence, allow_uncertain=split == "train")
    frame[list(labels.PATHOLOGIES)] = codes
    scene = study_scenes(patient, rng, ap=frame["AP/PA"].to_numpy() == "AP")
    strength = drawing_strength(codes, rng)
    ids = [_image_id(path) for path in frame["Path"]]
    batches = patient_batches(patient)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc=f"phantom {split}", unit="batch")
    for start, stop in batches:
        rows = slice(start, stop)
        images, drawn = render({k: v[rows] for k, v in scene.items()}, strength[rows], size)
        for offset, (image, image_masks) in enumerate(zip(images, drawn)):
            row = start + offset
            first_study = row == 0 or patient[row] != patient[row - 1]
            _save_jpeg(folder / Path(frame["Path"].iat[row]).relative_to("CheXpert-v1.0-small"), image, quality,
                       first_study)
            masks[ids[row]] = dict(zip(FINDINGS, _encode_stack(image_masks)))
    return frame


def study_scenes(patient: np.ndarray, rng: np.random.Generator, ap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`sample_scene` for rows of patients: anatomy and pose (:data:`PATIENT_KEYS`) drawn per patient."""
    scene = sample_scene(len(patient), rng, ap=ap)
    patient_scene = sample_scene(patient.max() + 1, rng)
    for key in PATIENT_KEYS:
        scene[key] = patient_scene[key][patient]
    scene["patient"] = patient
    return scene


def patient_batches(patient: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about :data:`BATCH` rows that never split a patient's studies."""
    bounds, start = [], 0
    while start < len(patient):
        stop = min(start + BATCH, len(patient))
        while stop < len(patient) and patient[stop] == patient[stop - 1]:
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def patients(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patient index and study number per row: CheXpert has about 3.5 images per patient."""
    per_patient = 1 + rng.poisson(chexpert_stats()["views"]["images_per_patient"] - 1, n)
    patient = np.repeat(np.arange(n), per_patient)[:n]
    study = np.concatenate([np.arange(1, k + 1) for k in per_patient])[:n]
    return patient, study


def _metadata(split: str, patient: np.ndarray, study: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    views = chexpert_stats()["views"]
    n = len(patient)
    path = [f"CheXpert-v1.0-small/{split}/patient{p:05d}/study{s}/view1_frontal.jpg" for p, s in zip(patient, study)]
    sex_of_patient = np.where(rng.random(patient.max() + 1) < views["male"], "Male", "Female")
    age_of_patient = rng.normal(views["age_mean"], views["age_std"], patient.max() + 1).clip(18, 90)
    return pd.DataFrame({
        "Path": path,
        "Sex": sex_of_patient[patient],
        "Age": np.round(age_of_patient[patient]).astype(int),
        "Frontal/Lateral": "Frontal",
        "AP/PA": np.where(rng.random(n) < views["ap_among_frontal"], "AP", "PA"),
    })


def _image_id(path: str) -> str:
    return "_".join(Path(path).with_suffix("").parts[-3:])


def _save_jpeg(path: Path, image: np.ndarray, quality: int, first_study: bool) -> None:
    if first_study:  # one mkdir per study and one per patient: metadata calls are slow on some disks
        path.parent.parent.mkdir(parents=True)
    path.parent.mkdir()
    Image.fromarray((image * 255.0 + 0.5).astype(np.uint8)).save(path, quality=quality)


def _encode_stack(image_masks: np.ndarray) -> list[dict]:
    """COCO RLE of each of an image's masks, in one pycocotools call (one call per mask is 5x slower)."""
    encoded = coco_mask.encode(np.asfortranarray(image_masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]

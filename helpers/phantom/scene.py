"""Scene parameters: per-image anatomy, pose, exposure and finding placement, each an ``(n,)`` array.

Pose, scale, habitus and patient rotation vary per patient (a patient's studies share them, as follow-up
films do); exposure, contrast, blur and noise vary per image, and AP views magnify the heart. Each finding
samples its own placement (:meth:`helpers.phantom.findings.Finding.sample`).
"""

from __future__ import annotations

import numpy as np

from helpers.phantom.findings import REGISTRY

#: Anatomy and pose that belong to the patient: drawn once, shared by the patient's studies (which
#: differ in exposure, contrast, blur, noise, AP/PA heart magnification and findings).
PATIENT_KEYS = (
    "cx",
    "cy",
    "scale",
    "aspect",
    "rotation",
    "thorax",
    "lung_height",
    "dome",
    "ctr",
    "mediastinum",
    "tissue",
    "markings",
    "rib_phase",
)
#: Share of AP films when the caller does not fix the views.
AP_RATE = 0.85


class SceneDraws:
    """Draws of ``n`` per-image parameters from one generator, as float32 arrays (float64 for seeds).

    Parameters
    ----------
    n : int
        Images in the scene.
    rng : numpy.random.Generator
        Consumed in call order: the order of calls is part of the phantom's reproducibility.
    """

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng

    def uniform(self, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, self.n).astype(np.float32)

    def normal(self, sd: float, shape: tuple[int, ...] = ()) -> np.ndarray:
        """Zero-mean normal draws of shape ``(n, *shape)``."""
        return self.rng.normal(0, sd, (self.n, *shape)).astype(np.float32)

    def side(self) -> np.ndarray:
        """-1 (image-left, the patient's right) or +1, equally likely."""
        return self.rng.choice(np.array([-1.0, 1.0], np.float32), self.n)

    def integers(self, low: int, high: int) -> np.ndarray:
        """Integers in ``[low, high)``, stored as float32 like every other parameter."""
        return self.rng.integers(low, high, self.n).astype(np.float32)

    def chance(self, probability: float) -> np.ndarray:
        """1.0 with ``probability``, else 0.0."""
        return (self.rng.random(self.n) < probability).astype(np.float32)


def sample_scene(n: int, rng: np.random.Generator, ap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-image anatomy, pose, exposure and finding-placement parameters, each an ``(n,)`` array.

    Parameters
    ----------
    n : int
        Images.
    rng : numpy.random.Generator
        Source of every draw.
    ap : array of bool, optional
        Which films are AP (default: drawn, :data:`AP_RATE` of them).

    Returns
    -------
    dict of numpy.ndarray
        Finding placements are drawn for every image whether or not the finding is present, so switching
        a finding on or off changes nothing else in the image. ``batch_seed`` seeds the texture and noise
        of :func:`helpers.phantom.render`.
    """
    draw = SceneDraws(n, rng)
    ap = rng.random(n) < AP_RATE if ap is None else np.asarray(ap, bool)
    scene = {
        "ap": ap.astype(np.float32),
        # pose and body habitus
        # positioning varies as on real films, so no finding sits at one fixed pixel position (a linear
        # model on raw pixels must not solve the phantom: benchmarks/bench_linear_probe.py)
        "cx": 0.5 + draw.normal(0.04),
        "cy": 0.5 + draw.normal(0.035),
        "scale": draw.uniform(0.85, 1.1),
        "aspect": draw.uniform(0.95, 1.05),
        "rotation": draw.normal(0.04),
        "thorax": draw.uniform(0.35, 0.41),
        "lung_height": draw.uniform(0.3, 0.35),
        "dome": draw.uniform(0.17, 0.25),
        "ctr": draw.uniform(0.40, 0.48),
        "mediastinum": draw.uniform(0.045, 0.06),
        "rib_phase": draw.uniform(-0.02, 0.02),
        # exposure
        "gain": draw.uniform(1.4, 2.2),
        "gamma": draw.uniform(0.8, 1.25),
        "blur": draw.uniform(0.0, 0.8),
        "noise": draw.uniform(0.008, 0.03),
        "tissue": draw.uniform(0.3, 0.45),
        "markings": draw.uniform(0.03, 0.06),
    }
    for finding in REGISTRY:  # always drawn, in LOCALISABLE order; used only where the finding is present
        scene.update(finding.sample(draw))
    scene["batch_seed"] = rng.integers(0, 2**31, n).astype(np.float64)
    return scene


def study_scenes(patient: np.ndarray, rng: np.random.Generator, ap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`sample_scene` for rows of patients: anatomy and pose (:data:`PATIENT_KEYS`) drawn per patient.

    ``patient`` holds each row's patient index (0-based, as from :func:`helpers.phantom.patients`); the
    result carries it as ``scene["patient"]``.
    """
    scene = sample_scene(len(patient), rng, ap=ap)
    patient_scene = sample_scene(patient.max() + 1, rng)
    for key in PATIENT_KEYS:
        scene[key] = patient_scene[key][patient]
    scene["patient"] = patient
    return scene

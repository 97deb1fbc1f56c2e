"""Procedural chest radiographs in CheXpert's layout, with pixel ground truth (CheXlocalize JSON).

One job per module, in the order a dataset is made:

- :mod:`~helpers.phantom.labels`: CheXpert-like labels, drawing strengths, patients and studies.
- :mod:`~helpers.phantom.scene`: per-image scene parameters (pose, habitus, exposure, finding placement).
- :mod:`~helpers.phantom.shapes`: soft shape primitives.
- :mod:`~helpers.phantom.anatomy`: the patient-frame :class:`Geometry` and the normal chest.
- :mod:`~helpers.phantom.findings`: one :class:`Finding` class per localisable finding, its parameters
  and its drawing; :data:`FINDINGS_BY_NAME`.
- :mod:`~helpers.phantom.render`: a scene and strengths to images and masks (findings, exposure, blur).
- :mod:`~helpers.phantom.marker`: an optional spurious burned-in marker that follows one pathology's label.
- :mod:`~helpers.phantom.writer`: :func:`generate`, the CheXpert-format folder.

Written by hand because no library draws chest phantoms with per-finding masks. Rendering the same scene
with one finding's strength set to 0 gives the image without that finding and nothing else changed.
"""

from helpers.phantom.anatomy import Geometry
from helpers.phantom.counterfactual import (
    MARKER,
    Counterfactual,
    PhantomReplay,
    ReplayedImage,
    ReplayError,
    render_without,
    replay,
)
from helpers.phantom.findings import FINDINGS_BY_NAME, REGISTRY, Finding
from helpers.phantom.labels import (
    FINDINGS,
    PATHOLOGIC,
    POSITIVE_STRENGTH,
    UNCERTAIN_STRENGTH,
    chexpert_stats,
    drawing_strength,
    patients,
    sample_labels,
)
from helpers.phantom.marker import Marker
from helpers.phantom.render import DETECTOR_PSF, MASK_THRESHOLD, render
from helpers.phantom.scene import PATIENT_KEYS, sample_scene, study_scenes
from helpers.phantom.writer import BATCH, MANIFEST, generate, patient_batches

__all__ = [
    "BATCH",
    "Counterfactual",
    "DETECTOR_PSF",
    "FINDINGS",
    "FINDINGS_BY_NAME",
    "Finding",
    "Geometry",
    "MANIFEST",
    "MARKER",
    "Marker",
    "MASK_THRESHOLD",
    "PATHOLOGIC",
    "PATIENT_KEYS",
    "PhantomReplay",
    "POSITIVE_STRENGTH",
    "REGISTRY",
    "ReplayError",
    "ReplayedImage",
    "UNCERTAIN_STRENGTH",
    "chexpert_stats",
    "drawing_strength",
    "generate",
    "patient_batches",
    "patients",
    "render",
    "render_without",
    "replay",
    "sample_labels",
    "sample_scene",
    "study_scenes",
]

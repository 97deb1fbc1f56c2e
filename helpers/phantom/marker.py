"""A spurious marker: a burned-in text token whose presence predicts one pathology (a Clever-Hans shortcut).

Real radiographs carry such confounds: CheXpert's pneumothorax films often show the chest drain that treats
it, and portable films carry burned-in text. The phantom can draw a bright text token ("PORT") in the image's
upper image-left corner, present in a set share of the positives and of the negatives of one
pathology in ``train.csv`` (training and validation) and independent of the label in ``valid.csv`` (the test
split). A model trained on it can learn the token instead of the finding; which it does is measured, not
assumed (notebook 06).

The marker's draws come from their own random stream (seeded by the phantom's seed and :data:`STREAM`), after
every other draw, so a phantom with the marker has exactly the images of the phantom without it, plus the
token; a phantom without it (the default) writes the same files as before the option existed.

Written by hand because no library draws burned-in annotations into these phantoms; the glyphs are a 3 x 5
bitmap font, so the token is the same on every machine (a font file's rendering is not).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from helpers.labels import PATHOLOGIES
from helpers.phantom.labels import FINDINGS

#: The token's letters, 3 x 5 pixels each (1 = burned in), one pixel between letters.
GLYPHS = {
    "P": ("111", "101", "111", "100", "100"),
    "O": ("111", "101", "101", "101", "111"),
    "R": ("110", "101", "110", "101", "101"),
    "T": ("111", "010", "010", "010", "010"),
}
TOKEN = "PORT"
#: Seed offset of the marker's own random stream (combined with the phantom's seed).
STREAM = 7717
#: Grey level of the burned-in pixels (text is written over the exposure, near white).
BRIGHTNESS = 0.97
#: Where the token's top-left corner may sit, as fractions of the image side: the upper image-left corner, moved
#: per image so that it is not one fixed pixel. It can lie over the apex of an image-left pneumothorax (in about
#: half of the marked images with one, at 64 and 128 px), as a drain or text can on a film: the shortcut scores
#: leave its pixels out of the finding's region (:func:`helpers.known_truth.shortcut_scores`).
X_RANGE, Y_RANGE = (0.03, 0.12), (0.03, 0.09)


@dataclass(frozen=True)
class Marker:
    """How the spurious marker is drawn.

    Attributes
    ----------
    pathology : str
        The finding whose label the marker follows in ``train.csv`` (one of :data:`helpers.phantom.FINDINGS`).
    positive_rate, negative_rate : float
        Share of that finding's positive images, and of the other images, that carry the marker in ``train.csv``
        (training and validation images).
    test_rate : float
        Share of ``valid.csv`` images (the test split) with the marker, whatever their label: there the marker is
        independent of the pathology, so a model that relies on it loses accuracy.
    """

    pathology: str = "Pneumothorax"
    positive_rate: float = 0.9
    negative_rate: float = 0.05
    test_rate: float = 0.5

    def __post_init__(self):
        if self.pathology not in FINDINGS:
            raise ValueError(f"The marker must follow a phantom finding {list(FINDINGS)}; got {self.pathology!r}.")
        rates = (self.positive_rate, self.negative_rate, self.test_rate)
        if not all(0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError(f"Marker rates must lie in [0, 1]; got {rates}.")

    def to_dict(self) -> dict:
        """Plain types, for the phantom's manifest."""
        return asdict(self)


def token_bitmap() -> np.ndarray:
    """Bool ``(5, 4 * len(TOKEN) - 1)``: the token at one pixel per font pixel."""
    letters = [np.array([[c == "1" for c in row] for row in GLYPHS[letter]]) for letter in TOKEN]
    gap = np.zeros((5, 1), bool)
    return np.hstack([part for letter in letters for part in (letter, gap)][:-1])


def sample_marker(codes: np.ndarray, train: bool, marker: Marker, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scene keys of the marker for one split's rows: ``marker`` (1.0 where drawn), ``marker_x``, ``marker_y``.

    Parameters
    ----------
    codes : numpy.ndarray
        ``(n, 14)`` CheXpert label codes of the split's rows.
    train : bool
        ``train.csv`` rows (the marker follows the label) or ``valid.csv`` rows (it does not).
    marker : Marker
    rng : numpy.random.Generator
        The marker's own stream (:data:`STREAM`).
    """
    n = len(codes)
    positive = codes[:, PATHOLOGIES.index(marker.pathology)] == 1
    rate = np.where(positive, marker.positive_rate, marker.negative_rate) if train else np.full(n, marker.test_rate)
    return {
        "marker": (rng.random(n) < rate).astype(np.float32),
        "marker_x": rng.uniform(*X_RANGE, n).astype(np.float32),
        "marker_y": rng.uniform(*Y_RANGE, n).astype(np.float32),
    }


def marker_masks(scene: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Bool ``(n, size, size)``: the token's pixels in each image of a square render (empty without a marker).

    The font is scaled by ``max(1, round(size / 64))`` (5 pixels high at 64 px, 10 at 128 px).
    """
    n = len(scene["batch_seed"])
    masks = np.zeros((n, size, size), bool)
    if "marker" not in scene:
        return masks
    scale = max(1, round(size / 64))
    token = np.kron(token_bitmap(), np.ones((scale, scale), bool))
    height, width = token.shape
    for i in np.flatnonzero(scene["marker"] > 0):
        top = min(int(scene["marker_y"][i] * size), size - height)
        left = min(int(scene["marker_x"][i] * size), size - width)
        masks[i, top : top + height, left : left + width] = token
    return masks


def burn_in(images: np.ndarray, scene: dict[str, np.ndarray]) -> np.ndarray:
    """``images`` ``(n, size, size)`` with the marker's pixels set to :data:`BRIGHTNESS` (a copy where drawn)."""
    masks = marker_masks(scene, images.shape[-1])
    return np.where(masks, np.float32(BRIGHTNESS), images) if masks.any() else images

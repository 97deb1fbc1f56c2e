"""``HeatmapSet``: the one type every explanation method returns and every consumer reads.

Maps are float32 ``(n_images, n_pathologies, H, W)`` at input resolution, stored raw: LRP maps stay
signed, CAM maps are non-negative. Normalisation for display or scoring is a function applied at use
(:func:`normalise`), never baked into the stored maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import labels
from helpers.io import atomic_path


@dataclass
class HeatmapSet:
    """Heatmaps of one method for a batch of images and a list of pathologies.

    Attributes
    ----------
    maps : numpy.ndarray
        float32 ``(n_images, n_pathologies, H, W)``.
    image_ids : list of str
        One per image (CheXlocalize ids where known).
    pathologies : list of str
        One per map channel, in :data:`helpers.labels.PATHOLOGIES` order.
    method : str
        E.g. ``"lrp"`` or ``"gradcam"``.
    params : dict
        The method's parameters (composite, canonization, target layer...), plain JSON types.
    probs : numpy.ndarray
        float32 ``(n_images, n_pathologies)``: the model's probabilities for those pathologies.
    signed : bool
        Whether the maps carry signed relevance (LRP, Gradient x Input: diverging display, positive part
        scored) rather than non-negative scores (CAM). Recorded by the explainer, never guessed.
    """

    maps: np.ndarray
    image_ids: list[str]
    pathologies: list[str]
    method: str
    params: dict = field(default_factory=dict)
    probs: np.ndarray | None = None
    signed: bool = False

    def __post_init__(self):
        self.maps = np.asarray(self.maps, dtype=np.float32)
        self.image_ids = [str(i) for i in self.image_ids]
        self.pathologies = list(self.pathologies)
        labels.pathology_indices(self.pathologies)
        n, p = self.maps.shape[:2] if self.maps.ndim == 4 else (None, None)
        if self.maps.ndim != 4 or n != len(self.image_ids) or p != len(self.pathologies):
            raise ValueError(
                f"maps must be (n_images, n_pathologies, H, W) = ({len(self.image_ids)}, "
                f"{len(self.pathologies)}, H, W); got {self.maps.shape}."
            )
        self.probs = (
            np.full((n, p), np.nan, np.float32)
            if self.probs is None
            else np.asarray(self.probs, dtype=np.float32).reshape(n, p)
        )

    def map(self, image: int | str, pathology: str) -> np.ndarray:
        """One ``(H, W)`` map by image index or id and pathology name."""
        row = self.image_ids.index(image) if isinstance(image, str) else image
        return self.maps[row, self.pathologies.index(pathology)]

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically (maps, probabilities and JSON metadata).

        Uncompressed: relevance and noise maps do not compress (zlib keeps 69 of 78 MB of the default run's LRP
        maps) and compressing them took 3.2 s a set, seconds on every explainer of notebooks 03-05.
        """
        meta = {
            "image_ids": self.image_ids,
            "pathologies": self.pathologies,
            "method": self.method,
            "params": self.params,
            "signed": self.signed,
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, maps=self.maps, probs=self.probs, meta=np.array(json.dumps(meta)))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeatmapSet:
        """Read a file written by :meth:`save`; names the notebook to run when it is missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No heatmaps at {path}: run the notebook that explains with this method "
                f"first (03 for LRP, 04 for Grad-CAM, 05 for the gradient family, the baselines and occlusion)."
            )
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            return cls(
                archive["maps"],
                meta["image_ids"],
                meta["pathologies"],
                meta["method"],
                meta["params"],
                archive["probs"],
                bool(meta.get("signed", False)),
            )


def normalise(maps: np.ndarray, mode: str = "minmax", positive_only: bool = False) -> np.ndarray:
    """Scale maps per 2-D map, at use time.

    Parameters
    ----------
    mode : {"minmax", "absmax"}
        ``minmax`` to [0, 1] (CheXlocalize's step before Otsu); ``absmax`` to [-1, 1] keeping zero at
        zero (signed LRP display with symmetric limits).
    positive_only : bool
        Clip negative relevance to 0 first (how signed LRP maps are scored against masks).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if positive_only:
        maps = np.clip(maps, 0, None)
    axes = (-2, -1)
    if mode == "absmax":
        scale = np.abs(maps).max(axis=axes, keepdims=True)
        return np.divide(maps, scale, out=np.zeros_like(maps), where=scale > 0)
    if mode != "minmax":
        raise ValueError(f"mode must be 'minmax' or 'absmax', got {mode!r}.")
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def to_original_size(heatmap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A map resized to the original image's ``(h, w)`` as CheXlocalize resizes its maps before it segments or
    points: bilinear with half-pixel centres in float32 (``torch.nn.functional.interpolate``,
    ``align_corners=False``), so that scores at the original resolution are CheXlocalize's own (tested on its
    public sample). The map covers the whole image, stretched as the network's input was.
    """
    import torch  # here only: the processes that score maps import this module and need no torch

    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(int(v) for v in shape), mode="bilinear")
    return resized[0, 0].numpy()


def stack_pathologies(names: Sequence[str] | None) -> list[str]:
    """Validated pathology list (all 14 when ``None``), in :data:`helpers.labels.PATHOLOGIES` order."""
    return list(labels.PATHOLOGIES if names is None else labels.subset(names))


def load_sets(folder: str | os.PathLike, methods: Sequence[str]) -> dict[str, HeatmapSet]:
    """HeatmapSets saved as ``<folder>/<method>.npz``, keyed by method; all must explain the same images."""
    sets = {method: HeatmapSet.load(Path(folder) / f"{method}.npz") for method in methods}
    reference = next(iter(sets.values()), None)
    for method, heatmaps in sets.items():
        if heatmaps.image_ids != reference.image_ids:
            raise ValueError(
                f"{method} explains other images than {reference.method}; rerun notebooks 03 and 04 "
                f"with the same profile so that both explain the same test images."
            )
    return sets

"""Ground-truth masks in CheXlocalize's format: COCO RLE JSON -> boolean arrays aligned with the images."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from helpers import labels
from helpers.data.chexpert import DatasetError


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask, JSON-ready (``{"size": [h, w], "counts": str}``), as CheXlocalize stores."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping) -> np.ndarray:
    """Boolean mask of a COCO RLE dict (``counts`` as str or bytes)."""
    return coco_mask.decode({"size": list(rle["size"]), "counts": rle["counts"]}).astype(bool)


def load_masks(json_path: str | os.PathLike, image_ids=None) -> dict[str, dict[str, np.ndarray]]:
    """Read CheXlocalize ground-truth JSON into boolean masks.

    Parameters
    ----------
    json_path : path-like
        ``{image_id: {pathology: {"size": [h, w], "counts": ...}}}`` (CheXlocalize's
        ``gt_segmentations_*.json``, or the phantom's ``gt_segmentations.json``).
    image_ids : iterable of str, optional
        Decode only these images (default: all); ids absent from the file are skipped.

    Returns
    -------
    dict
        ``{image_id: {pathology: bool array (h, w)}}``.

    Raises
    ------
    DatasetError
        If the file is missing, not JSON, or an entry is not a valid RLE; names the file and entry.
    """
    json_path = Path(json_path)
    try:
        raw = json.loads(json_path.read_text())
    except FileNotFoundError as error:
        raise DatasetError(
            f"Masks file not found: {json_path}. For real CheXpert, download "
            f"CheXlocalize's gt_segmentations_*.json; for the phantom, rerun notebook 01."
        ) from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"Masks file {json_path} is not valid JSON ({error}); re-download or regenerate it."
        ) from error
    if not isinstance(raw, dict):
        raise DatasetError(f"Masks file {json_path} must hold an object {{image_id: {{pathology: RLE}}}}.")
    wanted = raw.keys() if image_ids is None else set(raw).intersection(image_ids)
    return {image_id: _decode_entry(json_path, image_id, raw[image_id]) for image_id in wanted}


def _decode_entry(json_path: Path, image_id: str, entry) -> dict[str, np.ndarray]:
    decoded = {}
    for pathology, rle in entry.items() if isinstance(entry, dict) else [("?", entry)]:
        try:
            decoded[pathology] = decode_mask(rle)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DatasetError(
                f"Masks file {json_path}: entry {image_id!r} / {pathology!r} is not a COCO "
                f"RLE {{'size': [h, w], 'counts': ...}} ({error})."
            ) from error
    return decoded


def mask_stack(
    masks: Mapping[str, Mapping[str, np.ndarray]],
    ids: Sequence[str],
    size: int,
    pathologies: Sequence[str] = labels.PATHOLOGIES,
) -> np.ndarray:
    """Ground truth aligned with cached images: bool ``(n, len(pathologies), size, size)``.

    Masks are resized exactly like the images (straight to a square, nearest neighbour); an image or
    pathology without a mask gets an empty one.
    """
    stack = np.zeros((len(ids), len(pathologies), size, size), dtype=bool)
    for i, image_id in enumerate(ids):
        for j, name in enumerate(pathologies):
            mask = masks.get(image_id, {}).get(name)
            if mask is not None and mask.any():
                resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
                stack[i, j] = np.asarray(resized) > 127
    return stack


def mask_files(root: str | os.PathLike) -> list[Path]:
    """Ground-truth JSON files in a dataset folder (the phantom's, or CheXlocalize's copied beside it)."""
    return sorted(Path(root).glob("gt_segmentations*.json"))

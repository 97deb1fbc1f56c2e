"""Ground-truth masks in CheXlocalize's format: COCO RLE JSON -> boolean arrays aligned with the network input.

CheXlocalize (Saporta et al., 2022) stores radiologist masks at the ORIGINAL image resolution (e.g. 2320 x 2828),
while the network sees a resized copy; every mask is mapped through :func:`helpers.data.images.input_geometry`,
the transform :func:`~helpers.data.images.load_image` applies, so masks and images cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as coco_mask

from helpers import labels
from helpers.data.chexpert import DatasetError
from helpers.data.images import input_geometry

logger = logging.getLogger(__name__)

#: CheXlocalize's names that differ from CheXpert's CSV columns (:data:`helpers.labels.PATHOLOGIES`) -> ours.
#: CheXlocalize renamed "Lung Opacity" to "Airspace Opacity" (its ``eval_constants.LOCALIZATION_TASKS``); its raw
#: annotation files say "Support Device" for CheXpert's "Support Devices".
CHEXLOCALIZE_NAMES: dict[str, str] = {"Airspace Opacity": "Lung Opacity", "Support Device": "Support Devices"}

#: Every pathology name a masks file may use: CheXpert's 14, plus CheXlocalize's spellings.
ACCEPTED_NAMES: tuple[str, ...] = (*labels.PATHOLOGIES, *CHEXLOCALIZE_NAMES)

#: Key of an entry (or of one RLE) giving the original image's ``[h, w]``, as CheXlocalize's annotation files do.
IMG_SIZE_KEY = "img_size"


class MaskSet(dict):
    """``{image_id: {pathology: bool array}}`` read from one masks file, with the ids it left out.

    Attributes
    ----------
    source : Path
        The masks file.
    ignored : tuple of str
        Ids in the file that were not asked for (an audited skip, not an error: CheXlocalize's files cover
        CheXpert's validation and test sets, a split is one of them).
    """

    def __init__(self, masks: Mapping, source: Path, ignored: Sequence[str] = ()):
        super().__init__(masks)
        self.source = source
        self.ignored = tuple(ignored)


def pathology_name(name: str) -> str:
    """Our name (:data:`helpers.labels.PATHOLOGIES`) of a masks file's pathology name (CheXpert's or CheXlocalize's).

    Raises
    ------
    KeyError
        If the name is neither; :func:`load_masks` turns it into a :class:`DatasetError` naming the file.
    """
    if name in labels.PATHOLOGIES:
        return name
    return CHEXLOCALIZE_NAMES[name]


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask, JSON-ready (``{"size": [h, w], "counts": str}``), as CheXlocalize stores."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping) -> np.ndarray:
    """Boolean mask of a COCO RLE dict (``counts`` as compressed str or bytes, or a list of run lengths).

    Raises
    ------
    ValueError
        If ``size`` is not two positive integers, a run is not a whole number >= 0, or the runs do not cover
        ``h * w`` pixels exactly (pycocotools itself would return uninitialised memory for too few runs).
    """
    height, width = _size_pair(rle["size"])
    counts = rle["counts"]
    runs = counts if isinstance(counts, list) else _compressed_runs(counts)
    odd = next((run for run in runs if isinstance(run, bool) or not isinstance(run, int) or run < 0), None)
    if odd is not None:
        raise ValueError(f"it has a run of {odd!r}, not a whole number >= 0: the RLE is corrupt")
    if sum(runs) != height * width:
        raise ValueError(f"its runs cover {sum(runs)} pixels, not h * w = {height * width}: the RLE is corrupt")
    compressed = coco_mask.frPyObjects(rle, height, width) if isinstance(counts, list) else rle
    return coco_mask.decode({"size": [height, width], "counts": compressed["counts"]}).astype(bool)


def map_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask drawn on an image (at any resolution of it) in the network input's ``(size, size)`` frame.

    The mask goes through :func:`helpers.data.images.input_geometry`, the transform that made the input,
    with nearest-neighbour sampling so it stays binary.
    """
    mask = np.asarray(mask, dtype=bool)  # first: a 0/255 mask times 255 would wrap to 1 in uint8
    if mask.shape == (size, size):
        return mask
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(input_geometry(mask.shape, size).apply(picture, Image.Resampling.NEAREST)) > 127


def load_masks(
    json_path: str | os.PathLike,
    image_ids=None,
    *,
    size: int | None = None,
    image_sizes: Mapping[str, Sequence[int]] | None = None,
) -> MaskSet:
    """Read CheXlocalize ground-truth JSON into boolean masks under CheXpert's pathology names.

    Parameters
    ----------
    json_path : path-like
        ``{image_id: {pathology: {"size": [h, w], "counts": ...}}}`` (CheXlocalize's
        ``gt_segmentations_*.json``, or the phantom's ``gt_segmentations.json``). An entry may also hold
        ``"img_size": [h, w]`` (the original image's size), at its top level or inside an RLE.
    image_ids : iterable of str, optional
        Decode only these images (default: all). Ids absent from the file are skipped; ids in the file but
        not asked for are an audited skip, listed in the result's ``ignored`` and logged.
    size : int, optional
        Map every mask to the ``(size, size)`` network input right away (see :func:`map_mask`), so a split at
        CheXlocalize's original resolution is never held in memory (10 masks of 2320 x 2828 per image).
    image_sizes : mapping, optional
        ``{image_id: (h, w)}`` of the image files, where known. A mask must cover the same field of view: the
        same size, or a resized copy's (as CheXpert-small's images are of CheXlocalize's originals).

    Returns
    -------
    MaskSet
        ``{image_id: {pathology: bool array (h, w), or (size, size) when size is given}}``, names as in
        :data:`helpers.labels.PATHOLOGIES` (CheXlocalize's "Airspace Opacity" becomes "Lung Opacity").

    Raises
    ------
    DatasetError
        If the file is missing or not JSON; or, naming the file and entry: an unknown pathology name (listing
        :data:`ACCEPTED_NAMES`), a name given twice, a corrupt RLE, or an RLE size disagreeing with
        ``img_size`` or with the image file's size (both sizes named).
    """
    json_path = Path(json_path)
    raw = _read_json(json_path)
    asked = None if image_ids is None else set(image_ids)
    ignored = [] if asked is None else sorted(set(raw) - asked)
    if ignored:
        logger.info("%s: %d image id(s) not asked for are ignored, e.g. %s", json_path, len(ignored), ignored[:3])
    image_sizes = image_sizes or {}
    masks = {
        image_id: _decode_entry(json_path, image_id, entry, size, image_sizes.get(image_id))
        for image_id, entry in raw.items()
        if asked is None or image_id in asked
    }
    return MaskSet(masks, json_path, ignored)


def _read_json(json_path: Path) -> dict:
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
    return raw


def _decode_entry(json_path: Path, image_id: str, entry, size: int | None, image_size) -> dict[str, np.ndarray]:
    """One image's masks under our names, each checked against the entry's ``img_size`` and the image file."""
    if not isinstance(entry, dict):
        raise DatasetError(f"Masks file {json_path}: entry {image_id!r} must be {{pathology: RLE}}, got {entry!r:.80}.")
    decoded = {}
    for key, rle in entry.items():
        if key == IMG_SIZE_KEY:
            continue
        where = f"Masks file {json_path}: entry {image_id!r} / {key!r}"
        name = _known_name(where, key)
        if name in decoded:
            raise DatasetError(f"{where}: a second mask for {name!r} (the file names it twice); keep one.")
        mask = _decode_checked(where, rle, _img_size(where, rle, entry), image_size)
        decoded[name] = mask if size is None else map_mask(mask, size)
    return decoded


def _known_name(where: str, key: str) -> str:
    try:
        return pathology_name(key)
    except KeyError:
        raise DatasetError(
            f"{where}: unknown pathology name {key!r}. Accepted: {list(ACCEPTED_NAMES)} "
            f"(CheXlocalize's spellings map as {CHEXLOCALIZE_NAMES})."
        ) from None


def _img_size(where: str, rle, entry: dict):
    """The original image's ``[h, w]`` the RLE or its entry states (the RLE's own wins), or ``None``."""
    stated = rle.get(IMG_SIZE_KEY) if isinstance(rle, dict) else None
    stated = entry.get(IMG_SIZE_KEY) if stated is None else stated
    if stated is None:
        return None
    try:
        return _size_pair(stated)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{where}: {IMG_SIZE_KEY} must be [h, w], positive integers ({error}).") from error


def _decode_checked(where: str, rle, img_size: tuple[int, int] | None, image_size) -> np.ndarray:
    """Decode one RLE; a clear error if it is corrupt, or its size disagrees with ``img_size`` or the image file."""
    try:
        rle_size = _size_pair(rle["size"])
        mask = decode_mask(rle)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DatasetError(
            f"{where} is not a valid COCO RLE {{'size': [h, w], 'counts': ...}} ({error}); re-download the file."
        ) from error
    if img_size is not None and rle_size != img_size:
        raise _size_error(where, rle_size, IMG_SIZE_KEY, img_size)
    if image_size is not None and not _same_field_of_view(rle_size, image_size):
        raise _size_error(where, rle_size, "the image file", image_size)
    return mask


def _size_error(where: str, rle_size: tuple[int, int], other: str, other_size) -> DatasetError:
    return DatasetError(
        f"{where}: the mask is {list(rle_size)} (h, w) but {other} is {[int(side) for side in other_size]}; the mask "
        f"belongs to another image or the file is damaged. Check the ids, or re-download the masks."
    )


def _same_field_of_view(mask_size: tuple[int, int], image_size) -> bool:
    """Equal sizes, or one a resized copy of the other: aspect ratios agree within a pixel's rounding per side."""
    image_size = tuple(int(side) for side in image_size)
    smaller = min(mask_size, image_size, key=lambda hw: hw[0] * hw[1])
    tolerance = 1 / smaller[0] + 1 / smaller[1]
    ratio = (mask_size[0] / mask_size[1]) / (image_size[0] / image_size[1])
    return abs(ratio - 1) <= tolerance


def _size_pair(size) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(side, int | np.integer) and side > 0 for side in size):
        raise ValueError(f"size must be [h, w], positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _compressed_runs(counts: str | bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the LEB128-like code of pycocotools' ``rleFrString``).

    Parsed here only to check the runs, which pycocotools does not do for too few runs.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data) or not 48 <= data[position] < 48 + 64:
                raise ValueError("its counts hold a character outside COCO's alphabet or end mid-number")
            chunk = data[position] - 48
            value |= (chunk & 0x1F) << shift
            more, position, shift = bool(chunk & 0x20), position + 1, shift + 5
            if not more and chunk & 0x10:
                value -= 1 << shift  # the last chunk's sign bit: a negative delta
        runs.append(value + runs[-2] if len(runs) > 2 else value)  # runs after the third are deltas
    return runs


def mask_stack(
    masks: Mapping[str, Mapping[str, np.ndarray]],
    ids: Sequence[str],
    size: int,
    pathologies: Sequence[str] = labels.PATHOLOGIES,
) -> np.ndarray:
    """Ground truth aligned with cached images: bool ``(n, len(pathologies), size, size)``.

    Each mask goes through the transform that made the network input (:func:`map_mask`, at any source
    resolution); an image or pathology without a mask gets an empty one. Keys may use CheXlocalize's names.

    Raises
    ------
    DatasetError
        If a mask's pathology name is unknown (instead of silently dropping it).
    """
    stack = np.zeros((len(ids), len(pathologies), size, size), dtype=bool)
    for i, j, mask in _placed_masks(masks, ids, size, pathologies):
        stack[i, j] = mask
    return stack


def mask_mean(
    masks: Mapping[str, Mapping[str, np.ndarray]],
    ids: Sequence[str],
    size: int,
    pathologies: Sequence[str] = labels.PATHOLOGIES,
) -> np.ndarray | None:
    """``mask_stack(masks, ids, size, pathologies).mean(axis=0)`` as float32, without the stack (its memory
    grows with the images, this with the masks); None where no image has a mask."""
    counts = np.zeros((len(pathologies), size, size), dtype=np.int64)
    for _, j, mask in _placed_masks(masks, ids, size, pathologies):
        counts[j] += mask
    return (counts / len(ids)).astype(np.float32) if counts.any() else None


def _placed_masks(masks, ids, size, pathologies):
    """``(image row, pathology row, mask mapped to size)`` of every non-empty mask of ``ids``."""
    rows = {name: j for j, name in enumerate(pathologies)}
    for i, image_id in enumerate(ids):
        for key, mask in masks.get(image_id, {}).items():
            name = _known_name(f"masks[{image_id!r}]", key)
            if name in rows and mask.any():
                yield i, rows[name], map_mask(mask, size)


def mask_audit(files: Sequence[str | os.PathLike], image_ids: Sequence[str]) -> pd.DataFrame:
    """Which entries of each masks file belong to the images ``image_ids`` (a split), and which are skipped.

    One row per file, in the order they are read: ``entries`` in it, ``in_split`` (scored), ``replacing`` (of
    those, images an earlier file also has: this file's masks are used), ``skipped`` (images of other splits,
    left out by :func:`load_masks`) with the first few ids; and a last row ``(no file)`` counting the split's
    images no file has an entry for (their masks are empty). Reads the JSON, decodes no mask.
    """
    wanted, covered, rows = set(image_ids), set(), []
    for file in files:
        entries = set(_read_json(Path(file)))
        used, skipped = entries & wanted, sorted(entries - wanted)
        rows.append((Path(file).name, len(entries), len(used), len(used & covered), len(skipped), _first(skipped)))
        covered |= used
    missing = sorted(wanted - covered)
    rows.append(("(no file)", 0, 0, 0, len(missing), _first(missing)))
    return pd.DataFrame(rows, columns=["file", "entries", "in_split", "replacing", "skipped", "e.g."])


def _first(ids: Sequence[str], n: int = 3) -> str:
    """The first ``n`` ids, comma-separated, and "..." when there are more."""
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def mask_files(root: str | os.PathLike) -> list[Path]:
    """Ground-truth JSON files in a dataset folder (the phantom's, or CheXlocalize's copied beside it)."""
    return sorted(Path(root).glob("gt_segmentations*.json"))

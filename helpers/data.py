"""Read, validate and serve CheXpert-format data (real CheXpert or the phantom, same layout).

The flow is: :func:`read_chexpert_csv` (validated labels) -> :func:`frontal_only` ->
:func:`split_by_patient` -> :func:`build_image_cache` (every image decoded once, in the main process)
-> :class:`ChestXrayDataset` (pure array indexing, so no DataLoader worker ever decodes a file).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as coco_mask

from helpers import labels

POLICIES = ("u-ignore", "u-zeros", "u-ones")
#: Folder names CheXpert's ``Path`` column starts with; stripped to resolve paths against the root.
CHEXPERT_PREFIXES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"(patient\d+)")


class DatasetError(ValueError):
    """A dataset file is missing, malformed or unreadable; the message names the file and the fix."""


# --------------------------------------------------------------------------- CSV


def chexpert_csv_from_torchxrayvision() -> Path:
    """Path of the real CheXpert ``train.csv`` (gzipped) shipped inside ``torchxrayvision``."""
    try:
        import torchxrayvision
    except ImportError as error:  # pragma: no cover - dev dependency missing
        raise DatasetError(
            "The real CheXpert train.csv comes from the torchxrayvision package; install the dev "
            "extras: `pip install -e .[dev]`."
        ) from error
    return Path(torchxrayvision.__file__).parent / "data" / "chexpert_train.csv.gz"


def read_chexpert_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a CheXpert-format CSV.

    Parameters
    ----------
    path : path-like
        ``train.csv`` or ``valid.csv`` (optionally gzipped) of real CheXpert or the phantom.

    Returns
    -------
    pandas.DataFrame
        The CSV with the 14 label columns as float: 1.0, 0.0, -1.0 or NaN (blank, "not mentioned").

    Raises
    ------
    DatasetError
        If the file is missing or unreadable, a required column is missing, a ``Path`` is blank, or a
        label holds a value other than 1, 0, -1 or blank. The message names the file, column and rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV not found: {path}. Point the profile at a CheXpert-format folder "
                           f"holding train.csv and valid.csv (or regenerate the phantom with notebook 01).")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise DatasetError(f"Cannot parse {path} as CSV ({error}); re-export or re-download it.") from error
    missing = [c for c in (*labels.META_COLUMNS, *labels.PATHOLOGIES) if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path} lacks required column(s) {missing}; a CheXpert CSV has "
                           f"{list(labels.META_COLUMNS) + list(labels.PATHOLOGIES)}.")
    if frame["Path"].isna().any():
        rows = (frame.index[frame["Path"].isna()] + 2).tolist()[:5]
        raise DatasetError(f"{path}: blank Path on line(s) {rows}; every row needs an image path.")
    for name in labels.PATHOLOGIES:
        frame[name] = _validated_label_column(frame[name], name, path)
    return frame


def _validated_label_column(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = (values.isna() & column.notna()) | ~(values.isin(labels.LABEL_CODES) | values.isna())
    if bad.any():
        lines = (column.index[bad] + 2).tolist()[:5]  # +2: header line and 1-based numbering
        found = sorted(map(str, column[bad].unique()))[:5]
        raise DatasetError(f"{path}: column {name!r} holds {found} on line(s) {lines}; allowed are "
                           f"1, 0, -1 and blank. Fix or drop those rows.")
    return values.astype("float64")


def patient_ids(frame: pd.DataFrame) -> pd.Series:
    """Patient identifier (``patient00001``) of every row, taken from its ``Path``."""
    ids = frame["Path"].str.extract(_PATIENT, expand=False)
    if ids.isna().any():
        example = frame.loc[ids.isna(), "Path"].iloc[0]
        raise DatasetError(f"Path {example!r} has no 'patientNNNNN' folder; CheXpert paths look like "
                           f"CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg.")
    return ids


def image_ids(frame: pd.DataFrame) -> pd.Series:
    """CheXlocalize image id of every row: ``patient64541_study1_view1_frontal``."""
    def one(path: str) -> str:
        parts = Path(path).with_suffix("").parts
        return "_".join(parts[-3:])
    return frame["Path"].map(one)


def frontal_only(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of frontal views (the paper used frontal images only)."""
    return frame[frame["Frontal/Lateral"] == "Frontal"]


def split_by_patient(frame: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.0,
                     seed: int = 0) -> pd.Series:
    """Assign every row to ``train``, ``val`` or ``test`` so that no patient is in two splits.

    Patients (not images) are shuffled with ``seed`` and cut by the fractions.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction + test_fraction}.")
    patients = patient_ids(frame)
    unique = np.sort(patients.unique())
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val, n_test = round(val_fraction * len(unique)), round(test_fraction * len(unique))
    split = np.full(len(unique), "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val:n_val + n_test]] = "test"
    return patients.map(dict(zip(unique, split))).rename("split")


# --------------------------------------------------------------------------- labels


def apply_policy(labels_array, policy: str | Mapping[str, str] = "u-ignore") -> tuple[np.ndarray, np.ndarray]:
    """Turn CheXpert label codes into training targets and a loss mask.

    Parameters
    ----------
    labels_array : array-like or DataFrame, shape (n, 14)
        Codes 1, 0, -1 or NaN in :data:`helpers.labels.PATHOLOGIES` order (a DataFrame is indexed by
        those column names).
    policy : str or dict
        ``"u-ignore"`` (uncertain rows masked out of the loss), ``"u-zeros"`` (uncertain = negative,
        the paper's choice), ``"u-ones"`` (uncertain = positive), or a dict ``{pathology: policy}``;
        pathologies the dict leaves out use ``"u-zeros"``.

    Returns
    -------
    targets, loss_mask : numpy.ndarray of float32, shape (n, 14)
        Blank ("not mentioned") is always a negative with weight 1, as CheXpert defines it.
    """
    codes = _label_matrix(labels_array)
    per_class = _policy_per_class(policy)
    uncertain = codes == -1
    targets = (codes == 1).astype(np.float32)
    mask = np.ones_like(targets)
    for index, name in enumerate(per_class):
        if name == "u-ones":
            targets[uncertain[:, index], index] = 1.0
        elif name == "u-ignore":
            mask[uncertain[:, index], index] = 0.0
    return targets, mask


def _label_matrix(labels_array) -> np.ndarray:
    if isinstance(labels_array, pd.DataFrame):
        labels_array = labels_array[list(labels.PATHOLOGIES)].to_numpy()
    codes = np.asarray(labels_array, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(labels.PATHOLOGIES):
        raise ValueError(f"Labels must have shape (n, {len(labels.PATHOLOGIES)}), got {codes.shape}.")
    valid = np.isnan(codes) | np.isin(codes, labels.LABEL_CODES)
    if not valid.all():
        raise ValueError(f"Label codes must be 1, 0, -1 or NaN; found {np.unique(codes[~valid])[:5]}.")
    return codes


def _policy_per_class(policy: str | Mapping[str, str]) -> list[str]:
    if isinstance(policy, str):
        chosen = {name: policy for name in labels.PATHOLOGIES}
    else:
        labels.pathology_indices(list(policy))  # raises on unknown pathology names
        chosen = {name: policy.get(name, "u-zeros") for name in labels.PATHOLOGIES}
    unknown = sorted({p for p in chosen.values() if p not in POLICIES})
    if unknown:
        raise ValueError(f"Unknown uncertainty policy {unknown}; choose from {POLICIES} or a dict of them.")
    return [chosen[name] for name in labels.PATHOLOGIES]


# --------------------------------------------------------------------------- images


def resolve_image_path(root: str | os.PathLike, csv_path: str) -> Path:
    """File of a CSV ``Path`` under ``root`` (the folder holding ``train.csv``).

    CheXpert's paths start with the dataset folder's own name (``CheXpert-v1.0-small/train/...``);
    that prefix is dropped so the data can live in a folder of any name.
    """
    parts = Path(csv_path).parts
    if parts and parts[0] in CHEXPERT_PREFIXES:
        parts = parts[1:]
    return Path(root).joinpath(*parts)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one radiograph to a ``(size, size)`` uint8 grayscale array.

    Grayscale, RGB(A) and 16-bit (``I;16`` / ``I``) files are accepted; 16-bit ones are scaled by
    their type's range. The image is resized to a square, as the network input is square.

    Raises
    ------
    DatasetError
        If the file is missing, truncated or not an image; the message names the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at reduced scale, much faster
            gray = _to_gray_uint8(image)
    except FileNotFoundError as error:
        raise DatasetError(f"Image file missing: {path}. Restore it, or drop its row "
                           f"(build_image_cache(..., on_bad='skip') does that and lists it).") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"Corrupt or truncated image: {path} ({error}). Re-download it, or drop its "
                           f"row (build_image_cache(..., on_bad='skip') does that and lists it).") from error
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_gray_uint8(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        return Image.fromarray(((array - array.min()) / span * 255.0 + 0.5).astype(np.uint8))
    return image.convert("L")


def audit_images(frame: pd.DataFrame, root: str | os.PathLike, size: int = 32) -> pd.DataFrame:
    """Try to decode every image; one row per problem (``Path``, ``file``, ``problem``)."""
    problems = []
    for csv_path in frame["Path"]:
        file = resolve_image_path(root, csv_path)
        try:
            load_image(file, size)
        except DatasetError as error:
            problems.append({"Path": csv_path, "file": str(file), "problem": str(error).split(":")[0]})
    return pd.DataFrame(problems, columns=["Path", "file", "problem"])


def build_image_cache(frame: pd.DataFrame, root: str | os.PathLike, size: int,
                      cache_file: str | os.PathLike | None = None,
                      on_bad: str = "raise") -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Decode every image once into a ``(n, size, size)`` uint8 array (optionally cached as ``.npy``).

    Parameters
    ----------
    frame : DataFrame
        Rows to load (a validated CheXpert CSV, possibly filtered).
    root : path-like
        Dataset folder holding ``train.csv``.
    size : int
        Side of the square images.
    cache_file : path-like, optional
        ``.npy`` file; written atomically, and read back instead of decoding when it exists and
        matches ``frame``: same paths, same size, and the same files (size and modification time of
        every image, fingerprinted in the sidecar ``.paths.txt``), so regenerated data is re-decoded.
    on_bad : {"raise", "skip"}
        What a missing or corrupt image does: raise :class:`DatasetError`, or drop the row and list it
        in the returned audit table (an audited skip).

    Returns
    -------
    images : numpy.ndarray, uint8, shape (n_kept, size, size)
    kept : DataFrame
        The rows that were loaded, in order.
    skipped : DataFrame
        One row per dropped image with the reason (empty unless ``on_bad="skip"``).
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}.")
    fingerprint = _source_fingerprint(frame, root)
    cached = _read_cache(cache_file, frame, size, fingerprint)
    if cached is not None:
        return cached
    images, keep, skipped = [], [], []
    for position, csv_path in enumerate(frame["Path"]):
        try:
            images.append(load_image(resolve_image_path(root, csv_path), size))
            keep.append(position)
        except DatasetError as error:
            if on_bad == "raise":
                raise
            skipped.append({"Path": csv_path, "problem": str(error)})
    stack = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    kept = frame.iloc[keep]
    skipped_frame = pd.DataFrame(skipped, columns=["Path", "problem"])
    if cache_file is not None:
        _write_cache(cache_file, stack, kept, skipped_frame, fingerprint)
    return stack, kept, skipped_frame


def _cache_sidecars(cache_file: Path) -> tuple[Path, Path]:
    return cache_file.with_suffix(".paths.txt"), cache_file.with_suffix(".skipped.csv")


def _source_fingerprint(frame: pd.DataFrame, root) -> str:
    """Hash of every image file's path, size and modification time (a stat per file, no reading)."""
    digest = hashlib.sha1()
    for csv_path in frame["Path"]:
        try:
            info = resolve_image_path(root, csv_path).stat()
            digest.update(f"{csv_path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{csv_path}:missing\n".encode())
    return digest.hexdigest()


def _read_cache(cache_file, frame: pd.DataFrame, size: int, fingerprint: str):
    if cache_file is None or not Path(cache_file).is_file():
        return None
    cache_file = Path(cache_file)
    paths_file, skipped_file = _cache_sidecars(cache_file)
    if not (paths_file.is_file() and skipped_file.is_file()):
        return None
    header, *cached_paths = paths_file.read_text().splitlines()
    if header != f"# source {fingerprint}":
        return None
    skipped = pd.read_csv(skipped_file)
    if sorted(cached_paths + skipped["Path"].tolist()) != sorted(frame["Path"].tolist()):
        return None
    images = np.load(cache_file, mmap_mode="r")
    if images.shape[1:] != (size, size):
        return None
    kept = frame.set_index("Path", drop=False).loc[cached_paths].reset_index(drop=True)
    return images, kept, skipped


def _write_cache(cache_file, images: np.ndarray, kept: pd.DataFrame, skipped: pd.DataFrame, fingerprint: str) -> None:
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    paths_file, skipped_file = _cache_sidecars(cache_file)
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, images)
    with atomic_path(skipped_file) as tmp:
        skipped.to_csv(tmp, index=False)
    with atomic_path(paths_file) as tmp:  # written last: its presence marks a complete cache
        Path(tmp).write_text("\n".join([f"# source {fingerprint}", *kept["Path"]]) + "\n")


class atomic_path:
    """Context manager yielding a temporary path that is renamed onto ``target`` on success.

    Nothing half-written is ever visible under ``target``; on an exception the temporary file is removed.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        os.close(handle)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- masks


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
        raise DatasetError(f"Masks file not found: {json_path}. For real CheXpert, download "
                           f"CheXlocalize's gt_segmentations_*.json; for the phantom, rerun notebook 01.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"Masks file {json_path} is not valid JSON ({error}); re-download or regenerate it.") from error
    if not isinstance(raw, dict):
        raise DatasetError(f"Masks file {json_path} must hold an object {{image_id: {{pathology: RLE}}}}.")
    wanted = raw.keys() if image_ids is None else set(raw).intersection(image_ids)
    return {image_id: _decode_entry(json_path, image_id, raw[image_id]) for image_id in wanted}


def _decode_entry(json_path: Path, image_id: str, entry) -> dict[str, np.ndarray]:
    decoded = {}
    for pathology, rle in (entry.items() if isinstance(entry, dict) else [("?", entry)]):
        try:
            decoded[pathology] = decode_mask(rle)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DatasetError(f"Masks file {json_path}: entry {image_id!r} / {pathology!r} is not a COCO "
                               f"RLE {{'size': [h, w], 'counts': ...}} ({error}).") from error
    return decoded


def mask_stack(masks: Mapping[str, Mapping[str, np.ndarray]], ids: Sequence[str], size: int,
               pathologies: Sequence[str] = labels.PATHOLOGIES) -> np.ndarray:
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


# --------------------------------------------------------------------------- torch


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 grayscale ``(n, h, w)`` -> normalised float ``(n, 3, h, w)``.

    The single channel is replicated to three (what ImageNet-shaped networks take) and normalised
    per channel; every code path that feeds the network goes through here.
    """
    scaled = images.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (scaled - mean_t) / std_t


@dataclass
class ChestXrayDataset(torch.utils.data.Dataset):
    """Cached radiographs with targets, loss mask and (optionally) ground-truth masks.

    Items are dicts: ``image`` (3, h, w) normalised float32, ``target`` and ``loss_mask`` (14,)
    float32, ``index`` (row in the split) and, when ``masks`` is given, ``masks`` (14, h, w) bool.
    """

    images: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    mean: Sequence[float]
    std: Sequence[float]
    masks: np.ndarray | None = None

    def __post_init__(self):
        if not len(self.images) == len(self.targets) == len(self.loss_mask):
            raise ValueError(f"images ({len(self.images)}), targets ({len(self.targets)}) and loss_mask "
                             f"({len(self.loss_mask)}) must have the same length.")
        # every uint8 value's normalised 3-channel form, made by to_model_input itself: one lookup per
        # item instead of five array passes, with identical numbers
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
        self._lookup = to_model_input(levels, self.mean, self.std)[0, :, 0, :].contiguous()  # (3, 256)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        pixels = torch.from_numpy(np.asarray(self.images[index], dtype=np.int64))
        item = {
            "image": self._lookup[:, pixels],
            "target": torch.from_numpy(self.targets[index]),
            "loss_mask": torch.from_numpy(self.loss_mask[index]),
            "index": index,
        }
        if self.masks is not None:
            item["masks"] = torch.from_numpy(self.masks[index])
        return item


# --------------------------------------------------------------------------- a profile's prepared splits

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """A run's data after notebook 01: rows per split, decoded images, what was skipped.

    Attributes
    ----------
    index : DataFrame
        Every kept row with ``split`` (train / val / test), ``image_id`` and the 14 label columns.
    images : dict
        ``{split: uint8 array (n, size, size)}`` in ``index`` order within the split.
    skipped : DataFrame
        Rows dropped by an audited skip (``Path``, ``problem``).
    root : Path
        The dataset folder.
    """

    index: pd.DataFrame
    images: dict[str, np.ndarray]
    skipped: pd.DataFrame
    root: Path

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, in the order of ``images[name]``."""
        return self.index[self.index["split"] == name].reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Images and patients per split, and images dropped by an audited skip."""
        table = self.index.assign(patient=patient_ids(self.index)).groupby("split").agg(
            images=("Path", "size"), patients=("patient", "nunique"))
        table = table.reindex(list(SPLITS)).fillna(0).astype(int)
        skipped = self.skipped.groupby("split").size() if len(self.skipped) else pd.Series(dtype=int)
        table["skipped"] = skipped.reindex(list(SPLITS)).fillna(0).astype(int).to_numpy()
        return table

    def rows_with_findings(self, name: str, n: int) -> list[int]:
        """The first ``n`` rows of a split with at least one positive localisable finding (for explaining)."""
        positive = (self.split(name)[list(labels.LOCALISABLE)] == 1).any(axis=1).to_numpy()
        return np.flatnonzero(positive)[:n].tolist()

    def inputs(self, name: str, rows: Sequence[int], mean, std) -> torch.Tensor:
        """Network inputs ``(len(rows), 3, H, W)`` for rows of a split, normalised as in training."""
        return to_model_input(torch.from_numpy(np.asarray(self.images[name][list(rows)])), mean, std)

    def dataset(self, name: str, policy, mean, std) -> ChestXrayDataset:
        """A :class:`ChestXrayDataset` over one split with the given uncertainty policy."""
        targets, loss_mask = apply_policy(self.split(name), policy)
        return ChestXrayDataset(self.images[name], targets, loss_mask, mean, std)

    def masks(self, name: str, size: int | None = None) -> np.ndarray:
        """Ground-truth masks of one split, bool ``(n, 14, size, size)`` (empty where none)."""
        ids = self.split(name)["image_id"].tolist()
        merged: dict = {}
        for file in mask_files(self.root):
            merged.update(load_masks(file, ids))  # decode this split's masks only
        return mask_stack(merged, ids, size or self.images[name].shape[-1])


def mask_files(root: str | os.PathLike) -> list[Path]:
    """Ground-truth JSON files in a dataset folder (the phantom's, or CheXlocalize's copied beside it)."""
    return sorted(Path(root).glob("gt_segmentations*.json"))


def prepare(root: str | os.PathLike, cache_dir: str | os.PathLike, size: int, *, val_fraction: float = 0.1,
            frontal: bool = True, seed: int = 0, on_bad: str = "raise") -> PreparedData:
    """Validate a CheXpert-format folder, split it by patient and decode every image once.

    ``train.csv`` is split by patient into train and val; ``valid.csv`` (radiologist-labelled in real
    CheXpert) is the test split. Images are cached under ``cache_dir`` as ``<split>_<size>.npy``,
    and the index as ``index.csv``; :func:`load_prepared` reads them back.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder not found: {root}. Set CHEXPERT_ROOT to the folder holding "
                           f"train.csv and valid.csv, or use the phantom (CHEXPLAIN_PROFILE=default).")
    train = read_chexpert_csv(root / "train.csv")
    test = read_chexpert_csv(root / "valid.csv")
    if frontal:
        train, test = frontal_only(train), frontal_only(test)
    train = train.assign(split=split_by_patient(train, val_fraction, seed=seed).to_numpy())
    frame = pd.concat([train, test.assign(split="test")], ignore_index=True)
    frame["image_id"] = image_ids(frame)
    images, kept, skipped = {}, [], []
    for name in SPLITS:
        rows = frame[frame["split"] == name]
        images[name], kept_rows, skipped_rows = build_image_cache(
            rows, root, size, Path(cache_dir) / f"{name}_{size}.npy", on_bad=on_bad)
        kept.append(kept_rows)
        skipped.append(skipped_rows.assign(split=name))
    index = pd.concat(kept, ignore_index=True)
    with atomic_path(Path(cache_dir) / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    (Path(cache_dir) / "root.txt").write_text(str(root))
    return PreparedData(index, images, pd.concat(skipped, ignore_index=True), root)


def load_prepared(cache_dir: str | os.PathLike, size: int) -> PreparedData:
    """Read what :func:`prepare` wrote; a clear error names notebook 01 when it is missing."""
    cache_dir = Path(cache_dir)
    index_file = cache_dir / "index.csv"
    if not index_file.is_file():
        raise FileNotFoundError(f"No prepared data in {cache_dir}: run notebooks/01_prepare_data.ipynb "
                                f"first (same CHEXPLAIN_PROFILE).")
    index = pd.read_csv(index_file)
    images = {name: np.load(cache_dir / f"{name}_{size}.npy", mmap_mode="r") for name in SPLITS}
    skipped = pd.concat([pd.read_csv(cache_dir / f"{name}_{size}.skipped.csv").assign(split=name) for name in SPLITS],
                        ignore_index=True)
    return PreparedData(index, images, skipped, Path((cache_dir / "root.txt").read_text()))


def prepare_profile(profile, on_bad: str = "raise", progress: bool = True) -> PreparedData:
    """:func:`prepare` with a profile's settings, generating the phantom first when the profile uses it."""
    if profile.data_source == "phantom":
        from helpers import phantom
        phantom.generate(profile.data_root, profile.n_train, profile.image_size, seed=profile.seed,
                         n_valid=profile.n_valid, min_prevalence=profile.min_prevalence, progress=progress)
    return prepare(profile.data_root, profile.run_dir / "cache", profile.image_size,
                   val_fraction=profile.val_fraction, frontal=profile.frontal_only, seed=profile.seed,
                   on_bad=on_bad)


def load_profile_data(profile) -> PreparedData:
    """The data notebook 01 prepared for ``profile``."""
    return load_prepared(profile.run_dir / "cache", profile.image_size)

"""A profile's data prepared once (validated, split by patient, decoded) and read back by later notebooks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import UnidentifiedImageError

from helpers import labels
from helpers.data.cache import build_image_cache
from helpers.data.chexpert import (
    DatasetError,
    frontal_only,
    image_ids,
    patient_ids,
    read_chexpert_csv,
    split_by_patient,
)
from helpers.data.datasets import ChestXrayDataset, to_model_input
from helpers.data.images import image_size, resolve_image_path
from helpers.data.masks import load_masks, mask_audit, mask_files, mask_mean, mask_stack
from helpers.data.policy import apply_policy
from helpers.io import atomic_path

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
    fingerprint : str or None
        What a model trained on these data depends on, hashed (:func:`data_fingerprint`; None for data not read
        from a cache folder); checkpoints record it.
    """

    index: pd.DataFrame
    images: dict[str, np.ndarray]
    skipped: pd.DataFrame
    root: Path
    fingerprint: str | None = None

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, in the order of ``images[name]``."""
        return self.index[self.index["split"] == name].reset_index(drop=True)

    def patients(self, name: str) -> pd.Series:
        """The patient of every row of one split, in the order of ``images[name]`` (for patient-level bootstraps)."""
        return patient_ids(self.split(name))

    def summary(self) -> pd.DataFrame:
        """Images and patients per split, and images dropped by an audited skip."""
        table = (
            self.index.assign(patient=patient_ids(self.index))
            .groupby("split")
            .agg(images=("Path", "size"), patients=("patient", "nunique"))
        )
        table = table.reindex(list(SPLITS)).fillna(0).astype(int)
        skipped = self.skipped.groupby("split").size() if len(self.skipped) else pd.Series(dtype=int)
        table["skipped"] = skipped.reindex(list(SPLITS)).fillna(0).astype(int).to_numpy()
        return table

    def rows_with_findings(self, name: str, n: int) -> list[int]:
        """The first ``n`` rows of a split with at least one positive localisable finding (for explaining)."""
        return np.flatnonzero(_has_localisable_finding(self.split(name)))[:n].tolist()

    def sample_rows(self, name: str, n: int, seed: int = 0, min_positives: int = 0) -> list[int]:
        """At least ``n`` rows of a split with a positive localisable finding, spread across patients.

        Patients are visited round-robin in an order shuffled with ``seed``: every patient gives one
        image (its first in the split) before any patient gives a second, so a few patients with many
        images cannot fill the sample. After the first ``n``, rows further down the same order are added
        while some localisable finding has fewer than ``min_positives`` positive images: each time the row
        positive for the most such findings (a finding with fewer positives in the split keeps all it has).

        Parameters
        ----------
        name : str
            The split (one of :data:`SPLITS`).
        n : int
            How many rows at least; all qualifying rows when fewer exist.
        seed : int
            Seed of the patient order; the same seed gives the same rows.
        min_positives : int
            Positive images wanted of every localisable finding.

        Returns
        -------
        list of int
            Row positions within the split, sorted.
        """
        rows = self.split(name)
        candidates = np.flatnonzero(_has_localisable_finding(rows))
        patients = patient_ids(rows).iloc[candidates].to_numpy()
        unique = np.sort(np.unique(patients))
        shuffled = dict(zip(unique, np.random.default_rng(seed).permutation(len(unique))))
        patient_rank = np.array([shuffled[p] for p in patients], dtype=int)
        turn = pd.Series(patients).groupby(patients).cumcount().to_numpy()  # 0 for a patient's first image
        order = candidates[np.lexsort((patient_rank, turn))]  # by turn, then by the shuffled patient order
        positive = rows[list(labels.LOCALISABLE)].to_numpy() == 1
        chosen, rest = list(order[:n]), list(order[n:])
        wanted = np.maximum(min_positives - positive[chosen].sum(axis=0), 0)
        while wanted.any() and rest:
            # greedy: the row that serves the most findings still short of positives (earliest in the order on ties)
            gains = (positive[rest] & (wanted > 0)).sum(axis=1)
            if not gains.max():
                break
            row = rest.pop(int(np.argmax(gains)))
            chosen.append(row)
            wanted = np.maximum(wanted - positive[row], 0)
        return sorted(int(row) for row in chosen)

    def inputs(self, name: str, rows: Sequence[int], mean, std) -> torch.Tensor:
        """Network inputs ``(len(rows), 3, H, W)`` for rows of a split, normalised as in training."""
        return to_model_input(torch.from_numpy(np.asarray(self.images[name][list(rows)])), mean, std)

    def dataset(self, name: str, policy, mean, std) -> ChestXrayDataset:
        """A :class:`ChestXrayDataset` over one split with the given uncertainty policy."""
        targets, loss_mask = apply_policy(self.split(name), policy)
        return ChestXrayDataset(self.images[name], targets, loss_mask, mean, std)

    def masks(self, name: str, size: int | None = None) -> np.ndarray:
        """Ground-truth masks of one split, bool ``(n, 14, size, size)`` (empty where none).

        Masks at any resolution (CheXlocalize's are at the original images') go through the transform that
        made the cached images, and are checked against their image file's size where it can be read. Ids
        of a masks file that are not in this split are an audited skip, and an image with entries in two files
        takes the later file's (files in name order): :meth:`mask_audit` counts both.
        """
        ids, masks, size = self._split_masks(name, size)
        return mask_stack(masks, ids, size)

    def mask_mean(self, name: str, size: int | None = None) -> np.ndarray | None:
        """The mean of :meth:`masks` over a split's images, float32 ``(14, size, size)``, made without their
        stack (CheXpert's training split would need 113 GiB of it at 224 px); None where no image has a mask."""
        ids, masks, size = self._split_masks(name, size)
        return mask_mean(masks, ids, size)

    def _split_masks(self, name: str, size: int | None) -> tuple[list[str], dict, int]:
        """A split's image ids, the masks of those that have some (mapped to ``size``), and ``size``."""
        if not self.root.is_dir():  # masks would silently be empty: the folder the cache was made from is gone
            raise FileNotFoundError(
                f"The data folder these images were prepared from is gone: {self.root}. Its masks are read from there; "
                f"run notebooks/01_prepare_data.ipynb again (same CHEXPLAIN_PROFILE), or set CHEXPERT_ROOT back."
            )
        rows = self.split(name)
        ids = rows["image_id"].tolist()
        size = size or self.images[name].shape[-1]
        image_sizes = _ImageFileSizes(self.root, dict(zip(ids, rows["Path"])))
        merged: dict = {}
        for file in mask_files(self.root):
            merged.update(load_masks(file, ids, size=size, image_sizes=image_sizes))  # mapped at once: bounded memory
        return ids, merged, size

    def mask_audit(self, name: str) -> pd.DataFrame:
        """Per masks file in the data folder: its entries for this split's images and those skipped
        (:func:`helpers.data.mask_audit`)."""
        return mask_audit(mask_files(self.root), self.split(name)["image_id"].tolist())


class _ImageFileSizes(Mapping):
    """``{image_id: (h, w)}`` of a split's image files, read lazily from their headers (no decoding).

    A file whose header cannot be read (missing, corrupt) has no known size: the mask check is then skipped, and
    the image cache's own audit reports the file. DICOM files are read by their ``Rows`` and ``Columns``.
    """

    def __init__(self, root: Path, paths: dict[str, str]):
        self.root, self.paths = root, paths

    def __getitem__(self, image_id: str) -> tuple[int, int]:
        try:
            return image_size(resolve_image_path(self.root, self.paths[image_id]))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, KeyError) as error:
            raise KeyError(image_id) from error

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def _has_localisable_finding(rows: pd.DataFrame) -> np.ndarray:
    """Bool per row: at least one localisable pathology is positive (uncertain does not count)."""
    return (rows[list(labels.LOCALISABLE)] == 1).any(axis=1).to_numpy()


def _check_no_shared_patients(root: Path, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """Refuse a ``valid.csv`` (the test split) with patients of ``train.csv``: their images are not independent of the
    training images, so test scores would be inflated (CheXpert's own two files share none)."""
    shared = sorted(set(patient_ids(train)) & set(patient_ids(test)))
    if shared:
        raise DatasetError(
            f"{len(shared)} patient(s) have images in both {root / 'train.csv'} and {root / 'valid.csv'} (e.g. "
            f"{shared[0]}): the test split must hold other patients. Move their rows into one of the two files."
        )


def prepare(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    size: int,
    *,
    val_fraction: float = 0.1,
    frontal: bool = True,
    seed: int = 0,
    on_bad: str = "raise",
) -> PreparedData:
    """Validate a CheXpert-format folder, split it by patient and decode every image once.

    ``train.csv`` is split by patient into train and val; ``valid.csv`` (radiologist-labelled in real
    CheXpert) is the test split. Images are cached under ``cache_dir`` as ``<split>_<size>.npy``,
    and the index as ``index.csv``; :func:`load_prepared` reads them back.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder not found: {root}. Set CHEXPERT_ROOT to the folder holding "
            f"train.csv and valid.csv, or use the phantom (CHEXPLAIN_PROFILE=default)."
        )
    train = read_chexpert_csv(root / "train.csv")
    test = read_chexpert_csv(root / "valid.csv")
    if frontal:
        train, test = frontal_only(train), frontal_only(test)
    _check_no_shared_patients(root, train, test)
    train = train.assign(split=split_by_patient(train, val_fraction, seed=seed).to_numpy())
    frame = pd.concat([train, test.assign(split="test")], ignore_index=True)
    frame["image_id"] = image_ids(frame)
    # The index goes first: until a complete run writes it again, the caches below are not read back beside the
    # rows of an earlier preparation (load_prepared names notebook 01 instead).
    (Path(cache_dir) / "index.csv").unlink(missing_ok=True)
    images, kept, skipped = {}, [], []
    for name in SPLITS:
        rows = frame[frame["split"] == name]
        images[name], kept_rows, skipped_rows = build_image_cache(
            rows, root, size, Path(cache_dir) / f"{name}_{size}.npy", on_bad=on_bad
        )
        if len(rows) and not len(kept_rows):  # a layout or format problem, not bad images: stop before training
            first = skipped_rows.iloc[0]
            raise DatasetError(
                f"Every image of the {name} split was skipped ({len(rows)} rows), e.g. {first['Path']}: "
                f"{first['problem']} Check that the CSV's paths lead into {root}."
            )
        kept.append(kept_rows)
        skipped.append(skipped_rows.assign(split=name))
    index = pd.concat(kept, ignore_index=True)
    with atomic_path(Path(cache_dir) / "root.txt") as tmp:  # before the index, which marks the folder complete
        tmp.write_text(_recorded_root(root, Path(cache_dir)))
    with atomic_path(Path(cache_dir) / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    fingerprint = data_fingerprint(cache_dir, size)
    return PreparedData(index, images, pd.concat(skipped, ignore_index=True), root, fingerprint)


def data_fingerprint(cache_dir: str | os.PathLike, size: int) -> str:
    """A short hash of what :func:`prepare` wrote: the rows (``index.csv``: paths, splits, labels) and, per split, the
    image files the cache was decoded from (paths, sizes and modification times, from its ``.paths.txt``).

    The same data prepared again give the same fingerprint; other rows, labels or image files give another.
    """
    cache_dir = Path(cache_dir)
    digest = hashlib.sha1((cache_dir / "index.csv").read_bytes())
    for name in SPLITS:
        sidecar = cache_dir / f"{name}_{size}.paths.txt"
        digest.update(sidecar.read_text().partition("\n")[0].encode() if sidecar.is_file() else b"none")
    return digest.hexdigest()[:16]


def _recorded_root(root: Path, cache_dir: Path) -> str:
    """The data folder as ``root.txt`` records it: relative to the cache where both sit in one run folder (a phantom
    beside its cache), so that the run folder can be moved or copied whole; absolute otherwise (real CheXpert)."""
    root, run_folder = Path(root).resolve(), Path(cache_dir).resolve().parent
    return os.path.relpath(root, cache_dir.resolve()) if root.is_relative_to(run_folder) else str(root)


def _load_images(npy: Path) -> np.ndarray:
    """A split's cached images, memory-mapped; a file cut short (an interrupted copy of the run folder) is a clear
    error that names it."""
    try:
        return np.load(npy, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise DatasetError(
            f"Cannot read the prepared images {npy} ({error}): run notebooks/01_prepare_data.ipynb again, which "
            f"rebuilds it."
        ) from None


def load_prepared(cache_dir: str | os.PathLike, size: int) -> PreparedData:
    """Read what :func:`prepare` wrote; a clear error names notebook 01 when any of it is missing, or when a split's
    rows in ``index.csv`` are not the images of its cache, in order."""
    cache_dir = Path(cache_dir)
    files = [cache_dir / "index.csv", cache_dir / "root.txt"] + [
        cache_dir / f"{name}_{size}{suffix}" for name in SPLITS for suffix in (".npy", ".paths.txt", ".skipped.csv")
    ]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(
            f"No prepared data at {size} px in {cache_dir} ({', '.join(missing)} missing): run "
            f"notebooks/01_prepare_data.ipynb first (same CHEXPLAIN_PROFILE and settings)."
        )
    index = pd.read_csv(cache_dir / "index.csv")
    for name in SPLITS:
        cached_paths = (cache_dir / f"{name}_{size}.paths.txt").read_text().splitlines()[1:]
        if index.loc[index["split"] == name, "Path"].tolist() != cached_paths:
            raise ValueError(
                f"{cache_dir / 'index.csv'} does not list the images of {name}_{size}.npy in their order (an "
                f"interrupted preparation?): run notebooks/01_prepare_data.ipynb again."
            )
    images = {name: _load_images(cache_dir / f"{name}_{size}.npy") for name in SPLITS}
    skipped = pd.concat(
        [pd.read_csv(cache_dir / f"{name}_{size}.skipped.csv").assign(split=name) for name in SPLITS], ignore_index=True
    )
    root = (cache_dir / (cache_dir / "root.txt").read_text().strip()).resolve()
    return PreparedData(index, images, skipped, root, data_fingerprint(cache_dir, size))

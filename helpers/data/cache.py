"""Decode every image of a table once into one uint8 array, cached as ``.npy`` with sidecars.

The sidecars make a cache self-checking: ``<name>.paths.txt`` holds a fingerprint of the source files
(path, size and modification time of each) and the kept paths, ``<name>.skipped.csv`` the rows an
audited skip dropped. A cache is reused only when both match the rows asked for.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.data.chexpert import DatasetError
from helpers.data.images import load_image, resolve_image_path
from helpers.io import atomic_path


def build_image_cache(
    frame: pd.DataFrame,
    root: str | os.PathLike,
    size: int,
    cache_file: str | os.PathLike | None = None,
    on_bad: str = "raise",
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
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

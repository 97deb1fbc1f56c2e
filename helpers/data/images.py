"""Find and decode radiographs (grayscale, RGB, 16-bit) into square uint8 arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from helpers.data.chexpert import DatasetError

#: Folder names CheXpert's ``Path`` column starts with; stripped to resolve paths against the root.
CHEXPERT_PREFIXES = ("CheXpert-v1.0-small", "CheXpert-v1.0")


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
        raise DatasetError(
            f"Image file missing: {path}. Restore it, or drop its row "
            f"(build_image_cache(..., on_bad='skip') does that and lists it)."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"Corrupt or truncated image: {path} ({error}). Re-download it, or drop its "
            f"row (build_image_cache(..., on_bad='skip') does that and lists it)."
        ) from error
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

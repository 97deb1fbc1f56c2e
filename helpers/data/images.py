"""Find and decode radiographs (grayscale, RGB, 16-bit) into square uint8 arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class InputGeometry:
    """The geometry of :func:`load_image`'s transform from a source image to the network input, stated once.

    The whole source is stretched to the output: no crop and no padding, so a non-square radiograph changes
    its aspect ratio. Because the transform covers the whole field of view, it is the same at every resolution
    of one picture (a JPEG decoded in draft mode, CheXpert-small, or the original CheXlocalize's masks were
    drawn on): anything drawn on the source (a mask, a box) is mapped with the same geometry.

    Attributes
    ----------
    source : tuple of int
        ``(h, w)`` of the array the transform is applied to.
    output : tuple of int
        ``(h, w)`` of the network input.
    """

    source: tuple[int, int]
    output: tuple[int, int]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Region of the source that fills the output, as PIL's ``(left, upper, right, lower)``: all of it."""
        return (0.0, 0.0, float(self.source[1]), float(self.source[0]))

    @property
    def scale(self) -> tuple[float, float]:
        """Output pixels per source pixel, ``(rows, columns)``; they differ on a non-square source."""
        return (self.output[0] / self.source[0], self.output[1] / self.source[1])

    def apply(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        """Resize a PIL image of the source's size onto the output (bilinear for pixels, nearest for masks).

        Raises
        ------
        ValueError
            If ``image`` is not ``source`` in size (its geometry would be another one).
        """
        if image.size != (self.source[1], self.source[0]):
            raise ValueError(f"Image is {image.size[::-1]} (h, w), but this geometry maps a {self.source} source.")
        return image.resize((self.output[1], self.output[0]), resample, box=self.box)


def input_geometry(source: tuple[int, int], size: int) -> InputGeometry:
    """The transform :func:`load_image` applies to a ``source`` ``(h, w)`` image: the whole of it to ``(size, size)``.

    Parameters
    ----------
    source : tuple of int
        ``(h, w)`` of the image (or of a mask drawn on it, at any resolution).
    size : int
        Side of the square network input.

    Raises
    ------
    ValueError
        If a side is not a positive integer.
    """
    sides = (*source, size)
    if len(sides) != 3 or not all(isinstance(side, int | np.integer) and side > 0 for side in sides):
        raise ValueError(f"input_geometry needs a (h, w) source and a size, positive integers; got {source}, {size}.")
    return InputGeometry((int(source[0]), int(source[1])), (int(size), int(size)))

"""Find and decode radiographs (grayscale, RGB, 16-bit pictures and DICOM) into square uint8 arrays."""

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
#: How a user gets past a bad image without repairing it; ends every image error message.
_DROP_ROW_HINT = "drop its row (build_image_cache(..., on_bad='skip') does that and lists it)"
#: Name endings that mark a file as DICOM even without the 128-byte preamble and ``DICM`` prefix.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
#: Where the ``DICM`` prefix sits: after the 128-byte preamble of a DICOM Part 10 file.
_DICOM_PREFIX_OFFSET = 128
_DICOM_PREFIX = b"DICM"
#: Photometric interpretations :func:`load_image` renders (pydicom hands YBR data over as RGB).
_DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_PIXEL_DATA_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Uncompressed transfer syntax UIDs by pydicom's ``original_encoding`` (implicit VR, little endian).
_NATIVE_SYNTAX_BY_ENCODING = {
    (True, True): "1.2.840.10008.1.2",  # Implicit VR Little Endian
    (False, True): "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    (False, False): "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
}


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

    Grayscale, RGB(A) and 16-bit (``I;16`` / ``I``) pictures are accepted; 16-bit ones are scaled by
    their type's range. DICOM files (see :func:`is_dicom`) are read with pydicom and rendered as a viewer
    shows them (see Notes). The image is resized to a square, as the network input is square.

    Raises
    ------
    DatasetError
        If the file is missing, truncated, not an image, or DICOM that cannot be decoded here; the
        message names the file (and, for compressed DICOM, the package that would decode it).

    Notes
    -----
    A monochrome DICOM image goes through pydicom's display pipeline at full resolution: the modality LUT
    (or rescale slope and intercept), then the VOI LUT, else the first window centre and width (its
    LINEAR / LINEAR_EXACT / SIGMOID function included), else nothing. The output range of that VOI step
    (the window's or LUT's black and white; the image's own minimum and maximum when there is no VOI)
    is scaled to 0-255, and MONOCHROME1 (where low values are white) is inverted, so bone is always
    bright. A Presentation LUT is not applied. RGB and YBR images are converted to luminance. Only
    single-frame images are read.
    """
    path = Path(path)
    try:
        gray = _read_dicom(path) if is_dicom(path) else _read_picture(path, size)
    except FileNotFoundError as error:
        raise DatasetError(f"Image file missing: {path}. Restore it, or {_DROP_ROW_HINT}.") from error
    except OSError as error:  # a folder, or a file this user may not read: nothing to decode
        raise DatasetError(f"Unreadable image file: {path} ({error}). Fix it, or {_DROP_ROW_HINT}.") from error
    return _to_input_size(gray, size)


def resize_to_input(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(n, h, w)`` pictures (e.g. phantom renders) to ``(n, size, size)`` as :func:`load_image` resizes a
    decoded file; unchanged when already that size.

    Equal to :func:`load_image` of the same pixels saved as a JPEG only while the picture is less than twice
    ``size`` on a side: from there on PIL decodes JPEGs at a reduced scale first (``draft``).
    """
    images = np.asarray(images, dtype=np.uint8)
    if images.shape[1:] == (size, size):
        return images
    return np.stack([_to_input_size(Image.fromarray(image), size) for image in images])


def _to_input_size(gray: Image.Image, size: int) -> np.ndarray:
    # through the one stated geometry, the one masks are mapped with (helpers.data.masks.map_mask)
    geometry = input_geometry((gray.height, gray.width), size)
    return np.asarray(geometry.apply(gray, Image.Resampling.BILINEAR), dtype=np.uint8)


def _read_picture(path: Path, size: int) -> Image.Image:
    """A JPEG, PNG or any other picture PIL reads, as an ``L`` image (JPEGs at a reduced scale near ``size``)."""
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at reduced scale, much faster
            return _to_gray_uint8(image)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"Corrupt or truncated image: {path} ({error}). Re-download it, or {_DROP_ROW_HINT}."
        ) from error


def _to_gray_uint8(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(_scale_to_uint8(array, 0.0, top))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(_scale_to_uint8(array, array.min(), array.max()))
    return image.convert("L")


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` to 0 and ``high`` to 255 linearly (rounded, values beyond them clipped) as uint8.

    ``high < low`` maps the range reversed (pydicom's window output with a negative rescale slope: its black is the
    larger value). A flat range (``high == low``) is not divided by: ``low`` becomes black and anything above it
    white.
    """
    span = float(high) - float(low)
    span = span if abs(span) > 1e-12 else 1e-12
    return np.clip((np.asarray(values, dtype=np.float64) - low) / span * 255.0 + 0.5, 0, 255).astype(np.uint8)


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether :func:`load_image` reads ``path`` as DICOM.

    It does when the file starts like DICOM Part 10 (a 128-byte preamble, then ``DICM``), or when its name
    ends in one of :data:`DICOM_SUFFIXES` (for files written without that header).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    """
    return _has_dicom_prefix(path) or Path(path).suffix.lower() in DICOM_SUFFIXES


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file (JPEG, PNG, DICOM, ...) from its header, without decoding the pixels.

    Raises
    ------
    OSError, ValueError
        If the file is missing or its header unreadable (PIL's errors; for DICOM, no ``Rows`` / ``Columns``).
    """
    if is_dicom(path):
        import pydicom  # here, not at the top: see _read_dataset

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=not _has_dicom_prefix(path))
            return int(header.Rows), int(header.Columns)
        except Exception as error:  # pydicom signals a broken header with many types, as in _read_dataset
            raise ValueError(f"{path}: no readable DICOM Rows / Columns ({_error_text(error)})") from error
    with Image.open(path) as picture:
        return picture.size[1], picture.size[0]


def _has_dicom_prefix(path: str | os.PathLike) -> bool:
    with open(path, "rb") as file:
        header = file.read(_DICOM_PREFIX_OFFSET + len(_DICOM_PREFIX))
    return header[_DICOM_PREFIX_OFFSET:] == _DICOM_PREFIX


def _read_dicom(path: Path) -> Image.Image:
    """A DICOM file's image rendered for display (see :func:`load_image`), as an ``L`` image at full size."""
    dataset = _read_dataset(path)
    syntax = _check_decodable(dataset, path)
    try:
        pixels = dataset.pixel_array
    except MemoryError:
        raise  # a large image on a small machine is not a corrupt file
    except Exception as error:  # pydicom signals bad pixel data with many types (ValueError, KeyError, ...)
        raise DatasetError(
            f"{_decoding_failure(syntax)}: {path} ({_error_text(error)}).{_other_decoders(syntax)} "
            f"Re-export or re-download it, or {_DROP_ROW_HINT}."
        ) from error
    try:
        gray = _render_gray(pixels, dataset)
    except MemoryError:
        raise
    except Exception as error:  # a modality or VOI LUT the file describes wrongly
        raise DatasetError(
            f"DICOM whose pixels cannot be shown as stated: {path} ({_error_text(error)}). Check its rescale, "
            f"LUT and window elements, or {_DROP_ROW_HINT}."
        ) from error
    return Image.fromarray(gray)


def _decoding_failure(syntax) -> str:
    """The headline of a pixel-data error: compressed data may be sound and beyond the installed decoders."""
    if syntax is None or not syntax.is_compressed:
        return "Corrupt or truncated DICOM"
    return f"Could not decode the {syntax.name} pixel data (a variant no installed decoder reads, or a corrupt file)"


def _read_dataset(path: Path):
    """The file's ``pydicom.Dataset``, read whether or not it has the DICOM Part 10 header.

    A file without the ``DICM`` prefix got here because its name says DICOM, so pydicom is forced past the
    missing header; a file that is not DICOM after all then fails :func:`_check_decodable` with a clear error.
    """
    # Imported here, not at the top: importing pydicom takes most of a second, which JPEG-only datasets
    # (and every decoding worker) would otherwise pay.
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=not _has_dicom_prefix(path))
    except Exception as error:  # pydicom signals a broken header with many types (EOFError, struct.error, ...)
        raise DatasetError(
            f"Corrupt or truncated DICOM header: {path} ({_error_text(error)}). Re-export or re-download it, "
            f"or {_DROP_ROW_HINT}."
        ) from error
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A bare dataset (no file meta) can only hold uncompressed pixels, encoded as pydicom just read them.
        dataset.file_meta.TransferSyntaxUID = _NATIVE_SYNTAX_BY_ENCODING.get(dataset.original_encoding)
    return dataset


def _check_decodable(dataset, path: Path):
    """Refuse, with the fix, what pydicom cannot decode here; the transfer syntax (None when not stated).

    Raises
    ------
    DatasetError
        No pixel data, several frames, an unsupported photometric interpretation, a transfer syntax with
        no pydicom decoder, or one whose decoder plugin is not installed (naming the packages that provide it).
    """
    from pydicom.pixels import get_decoder

    if not any(name in dataset for name in _PIXEL_DATA_ELEMENTS):
        raise DatasetError(
            f"DICOM without pixel data: {path} holds no image (a report, a presentation state, a file cut "
            f"short, or not DICOM at all). Point the CSV at the image itself, or {_DROP_ROW_HINT}."
        )
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    except Exception as error:  # a malformed value (e.g. NumberOfFrames '1A'), raised as pydicom converts it
        raise DatasetError(
            f"Corrupt DICOM header: {path} has an unreadable NumberOfFrames or PhotometricInterpretation "
            f"({_error_text(error)}). Re-export or re-download it, or {_DROP_ROW_HINT}."
        ) from error
    if frames > 1 or photometric not in _DICOM_GRAY + _DICOM_COLOUR:
        raise DatasetError(
            f"Unsupported DICOM image: {path} has {frames} frame(s) in {photometric or 'no'} photometric "
            f"interpretation; load_image reads single-frame {', '.join(_DICOM_GRAY + _DICOM_COLOUR)}. "
            f"Export the radiograph as such, or {_DROP_ROW_HINT}."
        )
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return None  # decoding reports the missing transfer syntax as corruption
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise DatasetError(
            f"Unsupported DICOM transfer syntax: {path} is stored as {_syntax_label(syntax)}, which pydicom "
            f"cannot decode. Convert it to uncompressed DICOM (e.g. `gdcmconv --raw`), "
            f"or {_DROP_ROW_HINT}."
        ) from error
    if not decoder.is_available:
        raise DatasetError(
            f"DICOM decoder missing: {path} holds {_syntax_label(syntax)} pixel data, and no installed "
            f"package decodes it. Install one of: {_decoder_packages(decoder)}; or convert the file to "
            f"uncompressed DICOM, or {_DROP_ROW_HINT}."
        )
    return syntax


def _syntax_label(syntax) -> str:
    """``JPEG Lossless ... (1.2.840.10008.1.2.4.70)``; pydicom names an unknown UID by the UID itself."""
    return f"{syntax.name} ({syntax})" if syntax.name != syntax else f"the unknown transfer syntax {syntax}"


def _decoder_packages(decoder) -> str:
    """pydicom's own list of the plugins it lacks for ``decoder`` and the packages each needs, on one line."""
    packages = "; ".join(decoder.missing_dependencies)
    # pydicom names gdcm by its import name; pip knows it as python-gdcm.
    return packages + (" (pip install python-gdcm for gdcm)" if "gdcm" in packages else "")


def _other_decoders(syntax) -> str:
    """For compressed data that failed to decode: the decoders not installed, which may succeed."""
    from pydicom.pixels import get_decoder

    if syntax is None or not syntax.is_compressed:
        return ""
    decoder = get_decoder(syntax)
    if not decoder.missing_dependencies:
        return ""
    return f" If the file is sound, another decoder may read it: {_decoder_packages(decoder)}."


def _render_gray(pixels: np.ndarray, dataset) -> np.ndarray:
    """Stored pixel values as the uint8 gray levels a viewer shows (see :func:`load_image`)."""
    from pydicom.pixels import apply_modality_lut

    if dataset.PhotometricInterpretation in _DICOM_COLOUR:
        if pixels.dtype != np.uint8:  # 16-bit colour: Pillow converts 8-bit RGB only
            top = 2 ** int(dataset.get("BitsStored") or 8 * pixels.itemsize) - 1
            pixels = np.round(pixels.astype(np.float64) * (255 / top)).clip(0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(pixels).convert("L"))
    shown, black, white = _apply_voi(apply_modality_lut(pixels, dataset), dataset)
    gray = _scale_to_uint8(shown, black, white)
    return 255 - gray if dataset.PhotometricInterpretation == "MONOCHROME1" else gray


def _apply_voi(values: np.ndarray, dataset) -> tuple[np.ndarray, float, float]:
    """The VOI step as pydicom applies it (the LUT, else the first window) and the values it shows as black and white.

    Black and white are the LUT's smallest and largest entry, the window's output range, or without either
    the image's own range.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    # An element present but empty (anonymisers leave them) reads as None and counts as absent, as in pydicom.
    lut = dataset.VOILUTSequence[0] if dataset.get("VOILUTSequence") else None
    if lut is not None and None not in (lut.get("LUTDescriptor"), lut.get("LUTData")):
        entries, first, bits = lut.LUTDescriptor
        # pydicom 3.0 looks an 8-bit LUT up with uint8 indices, which wrap past entry 255 (a 12-bit image's
        # 4096-entry LUT becomes stripes). Its entries are read as 16-bit words either way, so read them as 16 bits.
        if bits == 8:
            lut.LUTDescriptor = [entries, first, 16]
        try:
            outputs = apply_voi(np.arange(first, first + (entries or 2**16)), dataset)  # every entry of the LUT
            # The modality step may give floats; the LUT is indexed by integers.
            return apply_voi(np.rint(values).astype(np.int64), dataset), outputs.min(), outputs.max()
        finally:
            lut.LUTDescriptor = [entries, first, bits]
    if None not in (dataset.get("WindowCenter"), dataset.get("WindowWidth")):
        # The window sends everything below it to its black and above it to its white (SIGMOID: in the limit).
        black, white = apply_windowing(np.array([-np.inf, np.inf]), dataset)
        return apply_windowing(values, dataset), black, white
    return values, values.min(), values.max()


def _error_text(error: Exception) -> str:
    """An exception's message on one line, for an error that quotes it: its first line, and the lines after it
    where the first announces them (pydicom's "exceptions were raised by all available plugins:")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return " ".join(lines) if lines[0].endswith(":") else lines[0]


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

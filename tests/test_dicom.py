"""DICOM input: a real PA chest radiograph, small files written here, bad files, and the cache path."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from helpers import data, labels
from helpers.data import DatasetError, load_image
from helpers.data.images import image_size, is_dicom

#: Side of the small test images: load_image's resize to the same size is the identity, so every pixel
#: can be checked against the DICOM standard's formulas.
SIZE = 16
#: Anatomy of RG1_UNCR.dcm (PA chest) as (row, column) fractions of the image, chosen on the decoded
#: image: the mediastinum and spine between the lungs, and the upper-mid lung fields clear of the hila.
MEDIASTINUM = ((0.20, 0.60), (0.44, 0.56))
RIGHT_LUNG = ((0.20, 0.45), (0.15, 0.35))  # the patient's right, on the image's left (PA view)
LEFT_LUNG = ((0.20, 0.45), (0.62, 0.82))


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, syntax=ExplicitVRLittleEndian, **elements):
    """Write ``pixels`` (2-D unsigned integers) as a single-frame DX DICOM Part 10 file; ``elements`` are added.

    ``pixels=None`` writes the image attributes without any pixel data.
    """
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "DX"
    dtype = np.dtype(np.uint16) if pixels is None else pixels.dtype
    dataset.Rows, dataset.Columns = (SIZE, SIZE) if pixels is None else pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    if pixels is not None:
        dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return Path(path)


def write_compressed(path, syntax) -> Path:
    """A 12-bit DICOM file whose pixel data are one encapsulated fragment in ``syntax`` (bytes no decoder reads)."""
    file = write_dicom(path, None, bits_stored=12, syntax=syntax)
    dataset = pydicom.dcmread(file)
    dataset.PixelData = encapsulate([b"\xff\xd8 not a real compressed stream \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(file)
    return file


def gradient(high, dtype=np.uint16) -> np.ndarray:
    """``SIZE x SIZE`` distinct stored values rising row by row from 0 to ``high``."""
    return np.round(np.linspace(0, high, SIZE * SIZE)).astype(dtype).reshape(SIZE, SIZE)


def linear_window(values, center, width) -> np.ndarray:
    """Gray levels of the DICOM standard's LINEAR window (PS3.3 C.11.2.1.2.1) on ``values``, 0-255."""
    fraction = np.clip((np.asarray(values, dtype=np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.floor(fraction * 255.0 + 0.5)


def region_mean(image, region) -> float:
    (top, bottom), (left, right) = region
    rows, columns = image.shape
    return float(image[int(top * rows) : int(bottom * rows), int(left * columns) : int(right * columns)].mean())


@pytest.fixture(scope="module")
def radiograph_path() -> Path:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    assert path is not None, "RG1_UNCR.dcm ships in pydicom-data, a dev dependency: pip install pydicom-data"
    return Path(path)


# ------------------------------------------------------------------ the real radiograph


def test_real_pa_radiograph_has_dark_lungs_and_a_bright_mediastinum(radiograph_path):
    image = load_image(radiograph_path, 256)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    mediastinum = region_mean(image, MEDIASTINUM)
    # Measured: mediastinum 219, lungs 150 and 142. Without the MONOCHROME1 inversion the lungs would be
    # the bright ones, so this fails if it is lost.
    assert mediastinum - region_mean(image, RIGHT_LUNG) > 40
    assert mediastinum - region_mean(image, LEFT_LUNG) > 40
    assert int(image.max()) - int(image.min()) > 150  # the window spreads the image over the gray range


def test_real_radiograph_is_its_window_inverted_then_resized(radiograph_path):
    dataset = pydicom.dcmread(radiograph_path)
    assert (dataset.PhotometricInterpretation, dataset.BitsStored) == ("MONOCHROME1", 15)
    assert (dataset.Rows, dataset.Columns) == (1955, 1841)
    shown = 255 - linear_window(dataset.pixel_array, float(dataset.WindowCenter), float(dataset.WindowWidth))
    expected = np.asarray(Image.fromarray(shown.astype(np.uint8)).resize((128, 128), Image.Resampling.BILINEAR))
    difference = np.abs(load_image(radiograph_path, 128).astype(int) - expected.astype(int))
    assert difference.max() <= 1


# ------------------------------------------------------------------ small files written here


def test_monochrome1_is_the_exact_inverse_of_monochrome2(tmp_path):
    pixels = gradient(65535)
    plain = load_image(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2"), SIZE)
    inverted = load_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1"), SIZE)
    # Without a window the 16-bit range in the file spans black to white.
    assert plain.ravel()[0] == 0 and plain.ravel()[-1] == 255
    assert np.all(np.diff(plain.ravel().astype(int)) >= 0)
    np.testing.assert_array_equal(inverted, 255 - plain)


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    stored = gradient(4095)
    window = {"WindowCenter": 0, "WindowWidth": 2000}
    raw = load_image(write_dicom(tmp_path / "raw.dcm", stored, bits_stored=12, **window), SIZE)
    rescaled_file = write_dicom(
        tmp_path / "rescaled.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-4096, **window
    )
    rescaled = load_image(rescaled_file, SIZE)
    assert np.abs(raw - linear_window(stored, 0, 2000)).max() <= 1
    assert np.abs(rescaled - linear_window(stored * 2.0 - 4096, 0, 2000)).max() <= 1
    assert (raw != rescaled).mean() > 0.5


def test_a_negative_rescale_slope_keeps_the_window_a_ramp(tmp_path):
    """Slope -1: stored 4095 is modality value -2048, the low end of the window, so it shows black."""
    stored = gradient(4095)
    window = {"WindowCenter": 0, "WindowWidth": 2000, "RescaleSlope": -1, "RescaleIntercept": 2047}
    image = load_image(write_dicom(tmp_path / "negative.dcm", stored, bits_stored=12, **window), SIZE)
    assert np.abs(image - linear_window(2047.0 - stored, 0, 2000)).max() <= 1
    assert image.ravel()[0] == 255 and image.ravel()[-1] == 0 and len(np.unique(image)) > 100


def test_a_blank_window_counts_as_no_window(tmp_path):
    """Anonymisers often empty Window Center/Width rather than remove them; the image's own range is shown."""
    stored = gradient(4095)
    plain = load_image(write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12), SIZE)
    blank = load_image(
        write_dicom(tmp_path / "blank.dcm", stored, bits_stored=12, WindowCenter=None, WindowWidth=None), SIZE
    )
    np.testing.assert_array_equal(blank, plain)


def test_window_clips_outside_and_is_linear_inside(tmp_path):
    stored = gradient(4095)
    file = write_dicom(tmp_path / "window.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    image = load_image(file, SIZE)
    assert (image[stored < 1536] == 0).all() and (image[stored > 2560] == 255).all()
    inside = (stored > 1600) & (stored < 2500)
    assert len(np.unique(image[inside])) > 50  # a ramp inside the window, not a threshold
    assert np.abs(image - linear_window(stored, 2048, 1024)).max() <= 1


def test_voi_lut_takes_precedence_over_the_window(tmp_path):
    stored = gradient(4095)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
    lut.add_new(0x00283006, "US", [(4095 - value) // 2 for value in range(4096)])  # LUT Data: a falling ramp
    file = write_dicom(
        tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=Sequence([lut]), WindowCenter=10, WindowWidth=4
    )
    # The LUT's own range (0..2047) is black to white; the window alone would make nearly all pixels white.
    expected = np.floor((4095 - stored) // 2 / 2047 * 255 + 0.5)
    assert np.abs(load_image(file, SIZE) - expected).max() <= 1


@pytest.mark.parametrize("data_vr", ["US", "OW"])
def test_an_8_bit_voi_lut_on_12_bit_data_is_looked_up_past_entry_255(tmp_path, data_vr):
    stored = gradient(4095)
    table = [value // 16 for value in range(4096)]  # 12 bits to 8: a rising ramp
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor: 8 bits per entry
    lut.add_new(0x00283006, data_vr, table if data_vr == "US" else np.asarray(table, "<u2").tobytes())
    file = write_dicom(tmp_path / "lut8.dcm", stored, bits_stored=12, VOILUTSequence=Sequence([lut]))
    expected = np.floor(stored // 16 / 255 * 255 + 0.5)  # the LUT's own range, 0..255, is black to white
    assert np.abs(load_image(file, SIZE) - expected).max() <= 1


def test_dicom_is_recognised_by_content_or_by_suffix(tmp_path):
    pixels = gradient(4095)
    reference = load_image(write_dicom(tmp_path / "image.dcm", pixels, bits_stored=12), SIZE)
    unnamed = shutil.copy(tmp_path / "image.dcm", tmp_path / "image")  # a Part 10 file without a suffix
    bare = pydicom.dcmread(tmp_path / "image.dcm")
    del bare.file_meta  # no preamble, no "DICM", no file meta: only its name says DICOM
    bare.preamble = None
    bare.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True, enforce_file_format=False)
    Image.fromarray(reference).save(tmp_path / "picture.png")
    assert is_dicom(unnamed) and is_dicom(tmp_path / "bare.dcm") and not is_dicom(tmp_path / "picture.png")
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_image(unnamed, SIZE), reference)
    np.testing.assert_array_equal(load_image(tmp_path / "bare.dcm", SIZE), reference)


def test_image_size_reads_dicom_rows_and_columns_from_the_header(tmp_path, radiograph_path):
    assert image_size(write_dicom(tmp_path / "wide.dcm", np.zeros((40, 70), np.uint16))) == (40, 70)
    with pydicom.dcmread(radiograph_path) as real:
        assert image_size(radiograph_path) == (real.Rows, real.Columns) == real.pixel_array.shape
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "picture.png")
    assert image_size(tmp_path / "picture.png") == (30, 50)
    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file at all " * 40)
    with pytest.raises(ValueError, match="junk.dcm: no readable DICOM Rows / Columns"):
        image_size(tmp_path / "junk.dcm")


def test_masks_are_checked_against_a_dicom_files_size(tmp_path):
    from helpers.data.prepared import _ImageFileSizes

    write_dicom(tmp_path / "a.dcm", np.zeros((40, 70), np.uint16))
    sizes = _ImageFileSizes(tmp_path, {"a": "CheXpert-v1.0-small/a.dcm", "gone": "CheXpert-v1.0-small/gone.dcm"})
    assert sizes["a"] == (40, 70)  # was unknown (PIL cannot open DICOM), so the mask check was skipped
    with pytest.raises(KeyError):
        sizes["gone"]


# ------------------------------------------------------------------ bad files


def test_truncated_dicom_names_the_file(tmp_path):
    whole = write_dicom(tmp_path / "whole.dcm", gradient(4095), bits_stored=12).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) - 100])  # the last 50 pixels are missing
    with pytest.raises(DatasetError, match=rf"Corrupt or truncated DICOM: {re.escape(str(cut))}"):
        load_image(cut, SIZE)


def test_dicom_without_pixel_data_names_the_file(tmp_path):
    file = write_dicom(tmp_path / "no_pixels.dcm", None)
    with pytest.raises(DatasetError, match=rf"DICOM without pixel data: {re.escape(str(file))}"):
        load_image(file, SIZE)


def test_compressed_dicom_without_its_decoder_names_the_file_and_the_packages(tmp_path):
    assert not get_decoder(JPEGLosslessSV1).is_available, "this test needs an environment without JPEG Lossless plugins"
    file = write_compressed(tmp_path / "lossless.dcm", JPEGLosslessSV1)
    with pytest.raises(DatasetError) as caught:
        load_image(file, SIZE)
    message = str(caught.value)
    assert message.startswith(f"DICOM decoder missing: {file}")
    assert "pylibjpeg-libjpeg" in message and "gdcm" in message and "JPEG Lossless" in message


def test_transfer_syntax_pydicom_cannot_decode_names_the_file_and_the_syntax(tmp_path):
    file = write_compressed(tmp_path / "jpip.dcm", "1.2.840.10008.1.2.4.94")  # JPIP Referenced
    with pytest.raises(DatasetError, match=rf"Unsupported DICOM transfer syntax: {re.escape(str(file))}.*JPIP"):
        load_image(file, SIZE)


def test_a_compressed_variant_the_installed_decoder_cannot_read_says_so_and_why():
    """pydicom's 12-bit JPEG Extended file: Pillow decodes JPEG Extended but not at 12 bits. The file is sound,
    so the message must not call it corrupt, and it keeps the plugin's reason (on the lines after the first)."""
    file = get_testdata_file("JPEG-lossy.dcm", download=False)
    with pytest.raises(DatasetError) as caught:
        load_image(file, SIZE)
    message = str(caught.value)
    assert message.startswith("Could not decode the JPEG Extended (Process 2 and 4) pixel data (a variant no ")
    assert f": {file} (" in message and "Corrupt" not in message
    assert "Pillow does not support 'JPEG Extended' for samples with 12-bit precision" in message
    assert "pylibjpeg-libjpeg" in message


def test_a_malformed_header_value_is_a_dataset_error_naming_the_file():
    file = get_testdata_file("badVR.dcm", download=False)  # NumberOfFrames '1A'
    with pytest.warns(UserWarning, match="Invalid value for VR IS"):  # pydicom's own, as it reads the value
        with pytest.raises(DatasetError, match=rf"Corrupt DICOM header: {re.escape(file)} .*'1A'"):
            load_image(file, SIZE)


def test_16_bit_colour_renders_as_its_8_bit_copy():
    """pydicom's RGB test image stored with 16 and with 8 bits per sample: the same gray image."""
    sixteen = np.asarray(load_image(get_testdata_file("SC_rgb_rle_16bit.dcm", download=False), SIZE))
    eight = np.asarray(load_image(get_testdata_file("SC_rgb_rle.dcm", download=False), SIZE))
    assert sixteen.std() > 10 and np.array_equal(sixteen, eight)


def test_a_dcm_file_that_is_not_dicom_or_is_missing_names_the_file(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file at all " * 40)
    with pytest.raises(DatasetError, match=re.escape(str(junk))):
        load_image(junk, SIZE)
    with pytest.raises(DatasetError, match=rf"Image file missing: {re.escape(str(tmp_path / 'gone.dcm'))}"):
        load_image(tmp_path / "gone.dcm", SIZE)


# ------------------------------------------------------------------ a CSV pointing at DICOM files


def test_csv_rows_pointing_at_dicom_decode_through_the_cache_like_pictures(tmp_path, radiograph_path):
    root = tmp_path / "CheXpert-v1.0-small"
    files = {f"patient0000{number}": root / "train" / f"patient0000{number}" / "study1" for number in range(1, 5)}
    for folder in files.values():
        folder.mkdir(parents=True)
    pixels = gradient(255, np.uint8)  # all 256 gray levels once: a DICOM without a window keeps them as they are
    Image.fromarray(pixels).save(files["patient00001"] / "view1_frontal.png")
    write_dicom(files["patient00002"] / "view1_frontal.dcm", pixels)
    shutil.copy(radiograph_path, files["patient00003"] / "view1_frontal.dcm")
    write_dicom(files["patient00004"] / "view1_frontal.dcm", None)
    suffixes = [".png", ".dcm", ".dcm", ".dcm"]
    rows = [
        {"Path": f"CheXpert-v1.0-small/train/{patient}/study1/view1_frontal{suffix}", "Sex": "Female", "Age": 50}
        | {"Frontal/Lateral": "Frontal", "AP/PA": "PA", "No Finding": 1.0}
        for patient, suffix in zip(files, suffixes)
    ]
    pd.DataFrame(rows, columns=[*labels.META_COLUMNS, *labels.PATHOLOGIES]).to_csv(root / "train.csv", index=False)
    frame = data.read_chexpert_csv(root / "train.csv")

    images, kept, skipped = data.build_image_cache(
        frame, root, SIZE, cache_file=tmp_path / "cache.npy", on_bad="skip", workers=1
    )

    assert kept["Path"].tolist() == frame["Path"].tolist()[:3]
    assert skipped["Path"].tolist() == [frame["Path"].iat[3]]
    assert skipped["problem"].iat[0].startswith("DICOM without pixel data")
    np.testing.assert_array_equal(images[0], pixels)
    np.testing.assert_array_equal(images[1], images[0])
    np.testing.assert_array_equal(images[2], load_image(radiograph_path, SIZE))

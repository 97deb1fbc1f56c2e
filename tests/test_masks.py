"""CheXlocalize ground truth: its pathology names, masks at the original resolution, and bad masks files."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import data, labels
from helpers.data import images, masks

ID = "patient64541_study1_view1_frontal"
OTHER = "patient64542_study1_view1_frontal"
LUNG_OPACITY = labels.PATHOLOGIES.index("Lung Opacity")

#: The non-square test radiograph: 390 high x 300 wide (like CheXpert-small's), a bright off-centre rectangle.
HEIGHT, WIDTH = 390, 300
ROWS, COLS = slice(200, 350), slice(150, 270)


def write_json(path, content):
    path.write_text(json.dumps(content))
    return path


def rectangle_mask(scale: int = 1) -> np.ndarray:
    """The rectangle, drawn at ``scale`` times the image file's resolution (CheXlocalize draws on the original)."""
    mask = np.zeros((HEIGHT * scale, WIDTH * scale), bool)
    mask[ROWS.start * scale : ROWS.stop * scale, COLS.start * scale : COLS.stop * scale] = True
    return mask


def write_radiograph(path, suffix=".jpg"):
    pixels = np.full((HEIGHT, WIDTH), 40, np.uint8)
    pixels[ROWS, COLS] = 220
    file = path.with_suffix(suffix)
    Image.fromarray(pixels).save(file, **({"quality": 95} if suffix == ".jpg" else {}))
    return file


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------ names


def test_chexlocalize_names_map_to_chexpert_names(tmp_path):
    mask = rectangle_mask()
    file = write_json(tmp_path / "gt.json", {ID: {"Airspace Opacity": masks.encode_mask(mask)}})
    loaded = data.load_masks(file)
    assert set(loaded[ID]) == {"Lung Opacity"}
    stack = data.mask_stack(loaded, [ID], 32)
    assert stack[0, LUNG_OPACITY].any() and stack[0].any(axis=(1, 2)).sum() == 1
    raw = {ID: {"Airspace Opacity": mask}}  # a dict built by hand, with CheXlocalize's key, is not dropped either
    assert np.array_equal(data.mask_stack(raw, [ID], 32), stack)


def test_unknown_pathology_name_names_file_entry_and_accepted_names(tmp_path):
    file = write_json(tmp_path / "gt.json", {ID: {"Lung Opacities": masks.encode_mask(rectangle_mask())}})
    with pytest.raises(data.DatasetError) as caught:
        data.load_masks(file)
    message = str(caught.value)
    assert str(file) in message and repr(ID) in message and "'Lung Opacities'" in message
    assert all(name in message for name in masks.ACCEPTED_NAMES)
    with pytest.raises(data.DatasetError, match="'Lung Opacities'"):
        data.mask_stack({ID: {"Lung Opacities": rectangle_mask()}}, [ID], 32)


def test_a_pathology_given_under_both_names_is_an_error(tmp_path):
    rle = masks.encode_mask(rectangle_mask())
    file = write_json(tmp_path / "gt.json", {ID: {"Lung Opacity": rle, "Airspace Opacity": rle}})
    with pytest.raises(data.DatasetError, match="second mask for 'Lung Opacity'"):
        data.load_masks(file)


# ------------------------------------------------------------------ geometry


def test_input_geometry_is_load_images_transform(tmp_path):
    file = write_radiograph(tmp_path / "image", ".png")  # PNG: no JPEG draft, so the pixels must agree exactly
    geometry = images.input_geometry((HEIGHT, WIDTH), 64)
    assert geometry.box == (0.0, 0.0, WIDTH, HEIGHT) and geometry.scale == (64 / HEIGHT, 64 / WIDTH)
    with Image.open(file) as picture:
        expected = np.asarray(geometry.apply(picture.convert("L"), Image.Resampling.BILINEAR))
    assert np.array_equal(data.load_image(file, 64), expected)
    with pytest.raises(ValueError, match="390, 300"):
        images.input_geometry((WIDTH, HEIGHT), 64).apply(Image.open(file), Image.Resampling.BILINEAR)
    with pytest.raises(ValueError, match="positive integers"):
        images.input_geometry((0, WIDTH), 64)


@pytest.mark.parametrize("scale", [1, 3])  # the image file's resolution, and a CheXlocalize-like original 3x larger
def test_mask_and_non_square_image_stay_aligned(tmp_path, scale):
    size = 128
    image = data.load_image(write_radiograph(tmp_path / "image"), size)
    bright = image > 130
    file = write_json(tmp_path / "gt.json", {ID: {"Edema": masks.encode_mask(rectangle_mask(scale))}})
    mapped = data.mask_stack(data.load_masks(file, image_sizes={ID: (HEIGHT, WIDTH)}), [ID], size)[0]
    edema = mapped[labels.PATHOLOGIES.index("Edema")]
    assert iou(edema, bright) > 0.9
    assert np.array_equal(data.load_masks(file, size=size)[ID]["Edema"], edema)  # mapped at load time: the same
    # the check can fail: a mask padded to a square before resizing (a transform the image did not get) misses
    padded = np.pad(rectangle_mask(), ((0, 0), ((HEIGHT - WIDTH) // 2,) * 2))
    assert iou(masks.map_mask(padded, size), bright) < 0.9


def test_a_0_255_mask_maps_like_a_boolean_one():
    mask = rectangle_mask()
    as_picture = mask.astype(np.uint8) * 255  # what a PNG or OpenCV mask holds
    assert np.array_equal(masks.map_mask(as_picture, 32), masks.map_mask(mask, 32)) and masks.map_mask(mask, 32).any()
    square = as_picture[:WIDTH]  # already the input's size: kept as it is
    assert np.array_equal(masks.map_mask(square, WIDTH), mask[:WIDTH])


# ------------------------------------------------------------------ bad inputs


def test_ids_not_in_the_split_are_an_audited_skip(tmp_path, caplog):
    rle = masks.encode_mask(rectangle_mask())
    file = write_json(tmp_path / "gt.json", {ID: {"Edema": rle}, OTHER: {"Edema": rle}})
    with caplog.at_level(logging.INFO, logger="helpers.data.masks"):
        loaded = data.load_masks(file, [ID, "patient1_study1_view1_frontal"])
    assert set(loaded) == {ID} and loaded.ignored == (OTHER,) and loaded.source == file
    assert OTHER in caplog.text and "1 image id(s)" in caplog.text
    assert data.load_masks(file).ignored == ()


@pytest.mark.parametrize("where", ["entry", "rle"])  # CheXlocalize's annotation files state it per entry
def test_img_size_must_match_the_rle(tmp_path, where):
    def content(img_size):
        rle = masks.encode_mask(rectangle_mask())
        if where == "entry":
            return {ID: {"img_size": img_size, "Edema": rle}}
        return {ID: {"Edema": {**rle, "img_size": img_size}}}

    good = write_json(tmp_path / "good.json", content([HEIGHT, WIDTH]))
    assert data.load_masks(good)[ID]["Edema"].shape == (HEIGHT, WIDTH)
    with pytest.raises(data.DatasetError) as caught:
        data.load_masks(write_json(tmp_path / "bad.json", content([WIDTH, HEIGHT])))
    message = str(caught.value)
    assert f"{ID!r} / 'Edema'" in message and f"[{HEIGHT}, {WIDTH}]" in message
    assert f"img_size is [{WIDTH}, {HEIGHT}]" in message


def test_rle_must_match_the_image_files_field_of_view(tmp_path):
    file = write_json(tmp_path / "gt.json", {ID: {"Edema": masks.encode_mask(rectangle_mask(3))}})
    data.load_masks(file, image_sizes={ID: (HEIGHT, WIDTH)})  # a resized copy (CheXpert-small's) is fine
    data.load_masks(file, image_sizes={OTHER: (WIDTH, HEIGHT)})  # another image's size is not this entry's
    with pytest.raises(data.DatasetError) as caught:
        data.load_masks(file, image_sizes={ID: (WIDTH, HEIGHT)})
    message = str(caught.value)
    assert f"{ID!r} / 'Edema'" in message and f"[{HEIGHT * 3}, {WIDTH * 3}]" in message
    assert f"the image file is [{WIDTH}, {HEIGHT}]" in message


@pytest.mark.parametrize(
    "counts",
    ["0", "", "0d1", "PVWX6", "ab c", [5, 3], [25], [-5, 25], [2.5, 17.5], ["3", 17], [True, 19]],
    ids=[
        "too-few-runs",
        "empty",
        "too-many-pixels",
        "overflow",
        "bad-character",
        "short-list",
        "long-list",
        "negative",
        "fractional",
        "text-run",
        "boolean-run",
    ],
)
def test_corrupt_rle_names_the_entry(tmp_path, counts):
    file = write_json(tmp_path / "gt.json", {ID: {"Atelectasis": {"size": [4, 5], "counts": counts}}})
    with pytest.raises(data.DatasetError, match=f"{ID!r} / 'Atelectasis' is not a valid COCO RLE"):
        data.load_masks(file)


@pytest.mark.parametrize(
    "counts, reason", [([-5, 25], "a run of -5"), ([2.5, 17.5], "a run of 2.5"), ([5, 3], "cover 8")]
)
def test_a_corrupt_rle_says_what_is_wrong_with_its_runs(counts, reason):
    with pytest.raises(ValueError, match=reason):
        masks.decode_mask({"size": [4, 5], "counts": counts})


def test_uncompressed_rle_counts_decode():
    mask = masks.decode_mask({"size": [4, 5], "counts": [3, 17]})
    assert mask.sum() == 17 and not mask.ravel(order="F")[:3].any()


# ------------------------------------------------------------------ a prepared split


def test_prepared_masks_read_chexlocalize_files_beside_the_phantom(small_phantom, tmp_path):
    root = shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")
    prepared = data.prepare(root, tmp_path / "cache", 32)
    test = prepared.split("test")
    image_id = test["image_id"].iloc[0]
    with Image.open(data.resolve_image_path(root, test["Path"].iloc[0])) as picture:
        height, width = picture.size[1], picture.size[0]
    original = np.zeros((height * 4, width * 4), bool)  # the original resolution CheXlocalize drew on
    original[8:100, 120:200] = True
    content = {image_id: {"Airspace Opacity": masks.encode_mask(original)}, "patient99999_study1_view1_frontal": {}}
    write_json(root / "gt_segmentations_chexlocalize.json", content)  # read after the phantom's own file
    stack = prepared.masks("test")
    assert stack.shape == (len(test), 14, 32, 32)
    assert np.array_equal(stack[0, LUNG_OPACITY], masks.map_mask(original, 32)) and stack[0, LUNG_OPACITY].any()
    stretched = np.zeros((height * 4, width * 2), bool)  # not this image's field of view
    write_json(root / "gt_segmentations_chexlocalize.json", {image_id: {"Edema": masks.encode_mask(stretched)}})
    with pytest.raises(data.DatasetError, match=f"{image_id!r} / 'Edema'.*the image file is \\[{height}, {width}\\]"):
        prepared.masks("test")


def test_mask_mean_is_the_stacks_mean_without_the_stack(small_phantom, tmp_path, monkeypatch):
    """The prior baseline's mean over a split: on CheXpert's training split the stack would be 113 GiB."""
    root = shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")
    prepared = data.prepare(root, tmp_path / "cache", 32)
    expected = prepared.masks("train").mean(axis=0, dtype=np.float64)
    assert expected.any()

    def no_stack(*args, **kwargs):
        raise AssertionError("mask_mean built the stack")

    monkeypatch.setattr(data.prepared, "mask_stack", no_stack)
    mean = prepared.mask_mean("train")
    assert mean.dtype == np.float32 and mean.shape == (14, 32, 32)
    np.testing.assert_allclose(mean, expected, rtol=1e-7)
    for file in data.mask_files(root):  # no masks at all: real CheXpert's training split with CheXlocalize's files
        file.unlink()
    assert prepared.mask_mean("train") is None


def test_mask_audit_counts_each_files_entries_in_the_split_replaced_and_skipped(small_phantom, tmp_path):
    root = shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")
    prepared = data.prepare(root, tmp_path / "cache", 32)
    test_ids = prepared.split("test")["image_id"].tolist()
    rle = masks.encode_mask(np.zeros((64, 64), bool))
    write_json(root / "gt_segmentations_x.json", {test_ids[0]: {"Edema": rle}, OTHER: {"Edema": rle}})
    audit = prepared.mask_audit("test").set_index("file")
    own = audit.loc["gt_segmentations.json"]  # the phantom's: every image of every split
    assert (own["entries"], own["in_split"], own["replacing"]) == (80, len(test_ids), 0)
    assert own["skipped"] == 80 - len(test_ids) and own["e.g."].endswith(", ...")
    extra = audit.loc["gt_segmentations_x.json"]
    assert (extra["entries"], extra["in_split"], extra["replacing"], extra["skipped"]) == (2, 1, 1, 1)
    assert extra["e.g."] == OTHER and audit.loc["(no file)", "skipped"] == 0
    (root / "gt_segmentations.json").unlink()
    audit = prepared.mask_audit("test").set_index("file")
    assert audit.loc["(no file)", "skipped"] == len(test_ids) - 1  # their masks are empty

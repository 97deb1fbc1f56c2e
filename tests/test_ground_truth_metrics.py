"""Scores measured against the ground truth that can come out either way.

CheXlocalize's segmentation is checked against its own pipeline rebuilt from cv2 and PIL (the dev references:
``cv2.threshold`` with Otsu, ``cv2.findContours`` + filled drawing), on hand-made and random maps.
"""

import warnings

import cv2
import numpy as np
import pytest
import quantus
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.transform import resize

from helpers import heatmaps, labels, metrics
from helpers.metrics.granularity import PARTS, class_correlation, resolution_gap, separation
from helpers.metrics.localisation import (
    boundary_f1,
    chexlocalize_iou,
    chexlocalize_segmentation,
    chexlocalize_uint8,
    separation_rows,
)

SIZE = 64


def _disc(row, col, radius, size=SIZE):
    rows, cols = np.indices((size, size))
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def _peak(row, col, width, size=SIZE):
    rows, cols = np.indices((size, size))
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width**2))


# ---- references rebuilt with cv2 (tests only; production code has no cv2) ----


def _torch_uint8(heatmap):
    """CheXlocalize's normalisation in torch, float32: subtract the minimum, divide by the maximum, uint8(255 x)."""
    cam = torch.from_numpy(np.maximum(np.asarray(heatmap, np.float32), 0))
    shifted = cam - cam.min()
    return np.uint8(255 * shifted.div(shifted.max()).numpy())


def _cv2_filled_external(heatmap):
    """uint8 -> cv2 Otsu (THRESH_BINARY) -> external contours drawn filled."""
    grey = chexlocalize_uint8(heatmap)
    _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(grey)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _chexlocalize_pipeline(heatmap):
    """As heatmap_to_segmentation.py: RETR_TREE contours with more than one point, filled PIL polygons."""
    grey = _torch_uint8(heatmap)
    binary = cv2.threshold(grey, 0, int(grey.max()), cv2.THRESH_OTSU)[1]
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    image = Image.new("1", (grey.shape[1], grey.shape[0]))
    for contour in (c for c in contours if len(c) > 1):
        ImageDraw.Draw(image).polygon([tuple(map(int, p[0])) for p in contour], outline=1, fill=1)
    return np.array(image, dtype=bool)


def _blob_with_hole():
    blob = _peak(30, 28, 9)
    blob[26:31, 24:29] = 0.0
    return blob


def _plateau():
    return np.minimum(_peak(20, 40, 8), 0.6) + 0.2 * _peak(45, 15, 4)


def _cam_grid():
    grid = np.random.default_rng(1).random((4, 4)) ** 2
    return np.kron(grid, np.ones((16, 16)))  # nearest-upsampled 4x4 CAM: plateaus and ties


HAND_MADE = {
    "blob_with_hole": _blob_with_hole(),
    "two_blobs": _peak(18, 18, 5) + 0.8 * _peak(44, 46, 6),
    "ring": np.exp(-((np.hypot(*(np.indices((SIZE, SIZE)) - 32)) - 14) ** 2) / 8),
    "constant": np.full((SIZE, SIZE), 0.3),
    "plateau": _plateau(),
    "cam_grid": _cam_grid(),
    "signed": _peak(20, 20, 6) - 2 * _peak(40, 40, 6),
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_segmentation_equals_cv2_on_hand_made_maps(name):
    heatmap = HAND_MADE[name].astype(np.float32)
    ours = chexlocalize_segmentation(heatmap)
    assert np.array_equal(ours, _cv2_filled_external(heatmap))
    assert np.array_equal(ours, _chexlocalize_pipeline(heatmap))
    assert not chexlocalize_segmentation(heatmap, positive=False).any()
    if name == "constant":
        assert not ours.any()
    if name in ("blob_with_hole", "ring"):  # the hole is filled
        assert ours[28, 26] and ours[32, 32]


def test_segmentation_equals_chexlocalize_on_random_maps():
    rng = np.random.default_rng(0)
    for k in range(90):
        if k % 3 == 0:
            heatmap = rng.random((40, 40)) ** 3
        elif k % 3 == 1:
            heatmap = ndimage.gaussian_filter(rng.normal(size=(48, 48)), rng.uniform(0.7, 3))
        else:
            heatmap = (rng.random((32, 32)) < 0.15) * rng.random((32, 32))
        heatmap = heatmap.astype(np.float32)
        assert np.array_equal(chexlocalize_uint8(heatmap), _torch_uint8(heatmap))
        ours = chexlocalize_segmentation(heatmap)
        assert np.array_equal(ours, _chexlocalize_pipeline(heatmap))
        extra = _cv2_filled_external(heatmap) & ~ours  # cv2 draws one-point contours, CheXlocalize skips them
        assert not (ours & ~_cv2_filled_external(heatmap)).any()
        assert (ndimage.label(extra, np.ones((3, 3)))[0].max() == extra.sum()) and not (
            ndimage.binary_dilation(extra, np.ones((3, 3))) & ours
        ).any()


def test_an_isolated_pixel_is_dropped_as_chexlocalize_does():
    heatmap = _peak(20, 20, 5).astype(np.float32)
    heatmap[50, 50] = 1.0
    ours = chexlocalize_segmentation(heatmap)
    assert not ours[50, 50] and ours[20, 20]
    assert _cv2_filled_external(heatmap)[50, 50] and not _chexlocalize_pipeline(heatmap)[50, 50]


def test_exact_iou_differs_from_float_otsu_where_it_fills_holes():
    ring, disc = HAND_MADE["ring"], _disc(32, 32, 16)
    filled, unfilled = chexlocalize_segmentation(ring), metrics.otsu_segmentation(ring)
    assert filled[32, 32] and not unfilled[32, 32]  # the hole is filled
    assert 0 < (unfilled & ~filled).sum() < 20  # and the uint8 threshold is not the float one: a few ring pixels
    assert metrics.iou(ring, disc) == chexlocalize_iou(ring, disc) > 0.8
    assert (unfilled & disc).sum() / (unfilled | disc).sum() < 0.5


def test_iou_empty_cases_as_chexlocalize():
    empty, mask = np.zeros((SIZE, SIZE), bool), _disc(32, 32, 5)
    peak = _peak(32, 32, 3)
    assert np.isnan(chexlocalize_iou(peak, empty, positive=False))  # both empty
    assert chexlocalize_iou(peak, mask, positive=False) == 0.0  # a missed finding
    assert np.isnan(chexlocalize_iou(peak, mask, positive=False, true_positive_only=True))
    assert chexlocalize_iou(peak, empty) == 0.0 and np.isnan(chexlocalize_iou(peak, empty, true_positive_only=True))


def test_hit_shares_tied_maxima():
    plateau, mask = np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE), bool)
    plateau[10:20, 10:30] = 1.0
    mask[:, 20:] = True  # the right half of the plateau
    assert metrics.hit(plateau, mask) == 0.5 and metrics.hit(plateau, mask, ties="share") == 0.5
    assert metrics.hit(plateau, mask, ties="any") == 1.0 and metrics.hit(plateau, mask, ties="first") == 0.0
    with pytest.raises(ValueError, match="ties"):
        metrics.hit(plateau, mask, ties="all")


# ---- granularity against the ground truth ----


def _coarse(mask, cells=4):
    """A CAM-like map: the mask's share of each cell of a ``cells`` grid, upsampled bilinearly."""
    grid = mask.reshape(cells, SIZE // cells, cells, SIZE // cells).mean(axis=(1, 3))
    return resize(grid, (SIZE, SIZE), order=1, mode="edge", anti_aliasing=False)


def _fine(mask, spots=6, seed=0):
    """A fine-grained map: a few one-pixel-wide spots at random places inside the mask."""
    inside = np.argwhere(mask)
    chosen = inside[np.random.default_rng(seed).choice(len(inside), spots, replace=False)]
    return sum(_peak(row, col, 1.0) for row, col in chosen)


def test_the_verdict_on_coarse_against_fine_follows_the_size_of_the_finding():
    large, small = _disc(32, 32, 20), _disc(24, 40, 3)  # about 31% and 0.7% of the image
    assert 0.25 < large.mean() < 0.35
    for mask, winner, loser in ((large, _coarse, _fine), (small, _fine, _coarse)):
        good, bad = winner(mask), loser(mask)
        assert resolution_gap(good, mask) + 5 < resolution_gap(bad, mask)
        assert boundary_f1(good, mask) > boundary_f1(bad, mask) + 0.5
    assert metrics.resolution_px(_coarse(small)) > 3 * metrics.resolution_px(_fine(small))  # coarse stays coarse


def test_boundary_f1_limits():
    mask = _disc(24, 24, 8)
    assert boundary_f1(mask.astype(float), mask) == 1.0
    assert boundary_f1(_peak(54, 54, 4), mask) == 0.0
    assert boundary_f1(np.ones((SIZE, SIZE)), mask) == 0.0  # a constant map has no segmentation
    assert boundary_f1(_peak(24, 27, 5), mask, tolerance_px=2) < boundary_f1(_peak(24, 27, 5), mask, tolerance_px=4)
    outline = (ndimage.binary_dilation(mask) & ~mask).astype(float)  # a closed edge map is filled: it scores high
    assert boundary_f1(outline, mask) > 0.9


def test_separation_contrasts_the_two_findings():
    a, b = _disc(20, 20, 8), _disc(20, 44, 8)
    assert separation(_peak(20, 20, 3), a, b) == pytest.approx(1.0, abs=1e-3)
    assert separation(_peak(20, 44, 3), a, b) == pytest.approx(-1.0, abs=1e-3)
    assert separation(np.full((SIZE, SIZE), 0.5), a, b) == 0.0 == separation(-_peak(20, 20, 3), a, b)
    assert np.isnan(separation(_peak(20, 20, 3), a, a))
    wide = _disc(20, 36, 14)  # overlapping masks: only the parts that differ count
    assert (wide & a).any() and separation(_peak(20, 44, 3), wide, a) > 0.9


def _set(maps, probs=None):
    ids = [f"img{i}" for i in range(len(maps))]
    return heatmaps.HeatmapSet(maps, ids, labels.PATHOLOGIES, "m", probs=probs)


def test_separation_rows_cover_ordered_pairs_of_positive_findings():
    cardio, effusion, edema = (labels.PATHOLOGIES.index(p) for p in ("Cardiomegaly", "Pleural Effusion", "Edema"))
    masks, codes = np.zeros((3, 14, SIZE, SIZE), bool), np.zeros((3, 14))
    maps = np.zeros((3, 14, SIZE, SIZE))
    masks[:, cardio], masks[:, effusion], masks[:, edema] = _disc(20, 20, 8), _disc(44, 44, 8), _disc(20, 20, 8)
    codes[0, [cardio, effusion]] = 1  # two findings, masks differ: two ordered pairs
    codes[1, [cardio, edema]] = 1  # identical masks: no pair
    codes[2, cardio] = 1  # one finding
    maps[:, cardio], maps[:, effusion] = _peak(20, 20, 3), _peak(20, 20, 3)  # both maps on the heart
    rows = separation_rows(_set(maps), masks, codes)
    assert sorted(zip(rows["image"], rows["pathology"], rows["other"])) == [
        ("img0", "Cardiomegaly", "Pleural Effusion"),
        ("img0", "Pleural Effusion", "Cardiomegaly"),
    ]
    by_pair = rows.set_index("pathology")["value"]
    assert by_pair["Cardiomegaly"] > 0.99 and by_pair["Pleural Effusion"] < -0.99
    scores = metrics.score(_set(maps), masks, codes=codes, granularity=False, class_sensitivity=False)
    assert scores[scores["metric"] == "separation"].set_index("pathology")["value"].equals(by_pair.rename("value"))


# ---- class sensitivity ----


def _probs(positive):
    probs = np.full((1, 14), 0.1, np.float32)
    probs[0, positive] = 0.9
    return probs


def test_class_correlation_parts_on_hand_made_maps():
    signed = _peak(20, 20, 5) - _peak(44, 40, 7)
    same = np.repeat(signed[None, None], 14, axis=1)
    for part in PARTS:
        assert class_correlation(_set(same, _probs([2, 5, 7])), 0, part) == pytest.approx(1.0)
    flipped = same.copy()
    flipped[0, 5] = -signed
    flipped[0, 9] = np.random.default_rng(0).normal(size=(SIZE, SIZE))  # negative logit: left out
    probs = _probs([2, 5])
    positive_r = np.corrcoef(np.maximum(signed, 0).ravel(), np.maximum(-signed, 0).ravel())[0, 1]
    assert class_correlation(_set(flipped, probs), 0, "signed") == pytest.approx(-1.0)
    assert class_correlation(_set(flipped, probs), 0, "abs") == pytest.approx(1.0)
    assert class_correlation(_set(flipped, probs), 0, "positive") == pytest.approx(positive_r) and positive_r < 0
    assert np.isnan(class_correlation(_set(flipped, _probs([2])), 0, "abs"))  # fewer than two positive logits
    assert np.isnan(class_correlation(_set(flipped), 0, "abs"))  # no probabilities, no positive logits
    diverged = same.copy()
    diverged[0, 7, 0, 0] = -np.inf  # one finding's map diverged: its positive part alone would look fine
    for part in PARTS:
        assert class_correlation(_set(same, _probs([2, 5, 7])), 0, part) == pytest.approx(1.0)
        assert np.isnan(class_correlation(_set(diverged, _probs([2, 5, 7])), 0, part))
    with pytest.raises(ValueError, match="part"):
        class_correlation(_set(flipped, probs), 0, "negative")


@pytest.mark.parametrize("part", ["positive", "abs", "signed"])
def test_class_correlation_equals_quantus_random_logit_over_pairs(part):
    """Quantus' RandomLogit (Pearson similarity) correlates a map with one random other class's map; with two
    classes the other class is fixed, so its mean over every pair of positive findings is our definition."""
    rng = np.random.default_rng(3)
    maps = ndimage.gaussian_filter(rng.normal(size=(1, 14, 32, 32)), (0, 0, 2, 2)).astype(np.float32)
    positive = [1, 4, 8, 10]
    prepared = np.maximum(maps, 0) if part == "positive" else maps  # Quantus has abs, but no positive part
    pairs = [(a, b) for i, a in enumerate(positive) for b in positive[i + 1 :]]
    pair_maps = np.stack([prepared[0, [a, b]] for a, b in pairs]).astype(np.float64)  # (pairs, 2, H, W)

    def explain(model, inputs, targets, **kwargs):
        return pair_maps[np.arange(len(targets)), targets][:, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = quantus.RandomLogit(
            num_classes=2,
            similarity_func=quantus.similarity_func.correlation_pearson,
            abs=part == "abs",
            normalise=False,
            disable_warnings=True,
        )(
            model=None,
            x_batch=np.zeros((len(pairs), 1, 32, 32)),
            y_batch=np.zeros(len(pairs), int),
            a_batch=(np.abs(pair_maps[:, :1]) if part == "abs" else pair_maps[:, :1]).copy(),
            explain_func=explain,
        )
    ours = class_correlation(heatmaps.HeatmapSet(maps, ["a"], labels.PATHOLOGIES, "m", probs=_probs(positive)), 0, part)
    assert ours == pytest.approx(np.mean(reference), rel=1e-9)


def test_score_emits_the_ground_truth_metrics():
    maps = np.random.default_rng(0).random((2, 14, SIZE, SIZE))
    masks, codes = np.zeros((2, 14, SIZE, SIZE), bool), np.zeros((2, 14))
    masks[0, 2], masks[0, 10] = _disc(20, 20, 6), _disc(44, 44, 6)
    codes[0, [2, 10]] = 1
    scores = metrics.score(_set(maps, np.full((2, 14), 0.9)), masks, codes=codes)
    emitted = set(scores["metric"])
    assert {"resolution_gap", "boundary_f1", "separation"} <= emitted
    assert {f"class_correlation_{part}" for part in ("positive", "abs", "signed")} <= emitted
    assert "class_correlation" not in emitted
    iou_rows = scores[scores["metric"] == "iou"].set_index("pathology")["value"]
    assert iou_rows["Cardiomegaly"] == chexlocalize_iou(maps[0, 2], masks[0, 2])


def test_score_gives_a_negative_prediction_an_empty_segmentation():
    """CheXlocalize's IoU: the same perfect map scores 1 where the model says positive, 0 where it says negative."""
    mask = np.zeros((1, 14, 32, 32), bool)
    k = labels.PATHOLOGIES.index("Edema")
    mask[0, k, 8:20, 8:20] = True
    maps = mask[:, [k]].astype(np.float32)
    for probability, expected in ((0.9, 1.0), (0.2, 0.0)):
        explained = heatmaps.HeatmapSet(maps, ["a"], ["Edema"], "m", probs=np.array([[probability]]))
        scores = metrics.score(explained, mask, granularity=False, class_sensitivity=False)
        assert scores.set_index("metric").loc["iou_gated", "value"] == expected
        assert scores.set_index("metric").loc["iou", "value"] == 1.0  # the map's own segmentation, ungated

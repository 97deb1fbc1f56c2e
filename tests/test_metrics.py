import warnings

import numpy as np
import pandas as pd
import pytest
import quantus
import torch
from torch import nn

from helpers import explainers, heatmaps, labels, metrics
from helpers.explainers import occlusion

SIZE = 32


def _mask(top=8, left=8, size=8):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _peak(row, col, width=2.0):
    rows, cols = np.indices((SIZE, SIZE))
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width**2))


def test_map_peaked_inside_the_mask_scores_well_outside_badly():
    mask = _mask()
    inside, outside = _peak(11, 11), _peak(26, 26)
    assert metrics.hit(inside, mask) == 1.0 and metrics.hit(outside, mask) == 0.0
    assert metrics.iou(inside, mask) > 0.2 and metrics.iou(outside, mask) == 0.0
    assert metrics.mass_accuracy(inside, mask) > 0.9 > 0.01 > metrics.mass_accuracy(outside, mask)
    assert metrics.pixel_auroc(inside, mask) > 0.95 and metrics.pixel_auroc(outside, mask) < 0.5
    assert metrics.iou(mask.astype(float), mask) == 1.0 and metrics.rank_accuracy(mask.astype(float), mask) == 1.0


def test_uniform_map_has_no_location_and_chance_scores():
    mask, uniform = _mask(), np.full((SIZE, SIZE), 0.3)
    assert metrics.hit(uniform, mask) == 0.0 and metrics.iou(uniform, mask) == 0.0
    assert metrics.mass_accuracy(uniform, mask) == pytest.approx(mask.mean())
    assert metrics.rank_accuracy(uniform, mask) == pytest.approx(mask.mean())
    assert metrics.gini(uniform) == pytest.approx(0.0)
    assert metrics.entropy(uniform) == pytest.approx(np.log(SIZE * SIZE))
    assert np.isnan(metrics.resolution_px(uniform))


@pytest.mark.parametrize("fill", [0.0, -0.7])
def test_a_map_without_positive_evidence_has_no_sparseness(fill):
    # all zero (Grad-CAM after its ReLU) or all negative: no evidence, not the most diffuse evidence
    empty = np.full((SIZE, SIZE), fill)
    empty[5, 5] = fill * 2
    assert np.isnan(metrics.gini(empty)) and np.isnan(metrics.entropy(empty))
    assert np.isnan(metrics.resolution_px(empty))


def test_single_map_scores_of_a_diverged_map_are_nan_when_called_directly():
    mask = _mask()
    for bad in (np.nan, np.inf):
        diverged = _peak(11, 11)
        diverged[0, 0] = bad
        for name, function in metrics.SINGLE_MAP.items():
            assert np.isnan(function(diverged)), name
        assert np.isnan(metrics.mass_accuracy(diverged, mask))


def test_signed_maps_are_scored_by_their_positive_part():
    mask = _mask()
    signed = -5 * _peak(11, 11) + _peak(26, 26)  # strong negative evidence inside, weak positive outside
    assert metrics.hit(signed, mask) == 0.0
    assert metrics.mass_accuracy(signed, mask) < 0.01


def test_single_pixel_is_maximally_sparse_and_concentrated():
    spike = np.zeros((SIZE, SIZE))
    spike[3, 4] = 2.0
    assert metrics.gini(spike) == pytest.approx((SIZE * SIZE - 1) / (SIZE * SIZE))
    assert metrics.entropy(spike) == pytest.approx(0.0, abs=1e-9)


def test_resolution_grows_with_blob_width_and_is_small_for_pixel_noise():
    widths = [metrics.resolution_px(_peak(16, 16, w)) for w in (1.0, 2.0, 4.0)]
    assert widths[0] < widths[1] < widths[2]
    assert widths[1] == pytest.approx(2.355 * 2.0 * np.sqrt(2), rel=0.25)  # FWHM of the autocorrelation
    noise = np.random.default_rng(0).random((SIZE, SIZE))
    assert metrics.resolution_px(noise) < 2.5


@pytest.mark.parametrize(
    "name, quantus_metric",
    [
        ("hit", quantus.PointingGame),
        ("mass_accuracy", quantus.RelevanceMassAccuracy),
        ("rank_accuracy", quantus.RelevanceRankAccuracy),
        ("gini", quantus.Sparseness),
        ("entropy", quantus.Complexity),
    ],
)
def test_equal_to_quantus_on_random_inputs(name, quantus_metric):
    rng = np.random.default_rng(4)
    maps = rng.random((12, 1, SIZE, SIZE)) ** 3
    masks = np.zeros((12, 1, SIZE, SIZE))
    for i in range(12):
        top, left, size = rng.integers(0, 20), rng.integers(0, 20), rng.integers(3, 12)
        masks[i, 0, top : top + size, left : left + size] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = quantus_metric(abs=False, normalise=False, disable_warnings=True)(
            model=None, x_batch=maps.copy(), y_batch=np.zeros(12, int), a_batch=maps.copy(), s_batch=masks.copy()
        )
    function = metrics.WITH_MASK.get(name) or metrics.SINGLE_MAP[name]
    ours = [
        function(maps[i, 0], masks[i, 0].astype(bool)) if name in metrics.WITH_MASK else function(maps[i, 0])
        for i in range(12)
    ]
    assert np.allclose(ours, np.asarray(reference, dtype=float), rtol=1e-6, atol=1e-9)


def _heatmap_set(maps, method="m"):
    return heatmaps.HeatmapSet(maps, [f"img{i}" for i in range(len(maps))], labels.PATHOLOGIES, method)


def test_score_rows_only_where_masks_exist_and_masks_are_checked():
    maps = np.random.default_rng(0).random((3, 14, SIZE, SIZE))
    masks = np.zeros((3, 14, SIZE, SIZE), bool)
    masks[0, 2] = _mask()
    masks[2, 10] = _mask(20, 4)
    codes = np.zeros((3, 14))
    codes[0, 2] = codes[2, 10] = 1
    scores = metrics.score(_heatmap_set(maps), masks, codes=codes)
    assert list(scores.columns) == metrics.COLUMNS
    hits = scores[scores["metric"] == "hit"]
    assert sorted(zip(hits["image"], hits["pathology"])) == [("img0", "Cardiomegaly"), ("img2", "Pleural Effusion")]
    assert (scores["metric"] == "gini").sum() == 2 and (scores["metric"] == "class_correlation_abs").sum() == 3
    by_id = {"img0": {"Cardiomegaly": _mask()}}
    from_dict = metrics.score(_heatmap_set(maps), by_id, granularity=False, class_sensitivity=False)
    assert len(from_dict) == len(metrics.WITH_MASK) + 1  # and CheXlocalize's gated IoU
    with pytest.raises(ValueError, match="aligned"):
        metrics.score(_heatmap_set(maps), masks[:, :13])


def test_class_correlation_is_one_when_maps_ignore_the_pathology():
    positive = np.full((1, 14), 0.9)  # every logit positive: every finding takes part
    same = _heatmap_set(np.repeat(_peak(10, 20)[None, None], 14, axis=1))
    same.probs[:] = positive
    assert metrics.class_correlation(same, 0) == pytest.approx(1.0)
    different = _heatmap_set(np.random.default_rng(0).random((1, 14, SIZE, SIZE)))
    different.probs[:] = positive
    assert abs(metrics.class_correlation(different, 0, part="signed")) < 0.1


def test_multi_finding_rows_keep_images_with_two_positives():
    scores = pd.DataFrame(
        {"image": ["a", "b"], "pathology": ["Edema", "Edema"], "method": "m", "metric": "hit", "value": [1.0, 0.0]}
    )
    codes = np.zeros((2, 14))
    codes[0, [2, 5]] = 1
    codes[1, 5] = 1
    multi = metrics.multi_finding_rows(scores, codes, ["a", "b"])
    assert multi["image"].tolist() == ["a"] and multi["metric"].tolist() == ["hit_multi"]


def test_bootstrap_ci():
    assert metrics.bootstrap_ci(np.full(20, 0.4)) == (pytest.approx(0.4), pytest.approx(0.4))
    values = np.random.default_rng(0).normal(1.0, 1.0, 400)
    low, high = metrics.bootstrap_ci(values, n_boot=2000)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)
    assert np.isnan(metrics.bootstrap_ci([1.0])[0])


def test_summarise_and_paired_differences():
    rows = [
        (f"i{i}", p, m, "iou", v)
        for i in range(10)
        for p, base in (("Edema", 0.2), ("Fracture", 0.6))
        for m, v in (("a", base + 0.1), ("b", base))
    ]
    scores = pd.DataFrame(rows, columns=metrics.COLUMNS)
    summary = metrics.summarise(scores, n_boot=100).set_index(["method", "pathology"])
    assert summary.loc[("a", "Edema"), "mean"] == pytest.approx(0.3)
    assert summary.loc[("a", "all"), "mean"] == pytest.approx(0.5) and summary.loc[("a", "all"), "n"] == 10
    differences = metrics.paired_differences(scores, "a", "b", n_boot=100).set_index("pathology")
    assert differences.loc["all", "mean_difference"] == pytest.approx(0.1)
    assert differences.loc["Edema", "ci_low"] == pytest.approx(0.1) == differences.loc["Edema", "ci_high"]
    with pytest.raises(ValueError, match="Both methods"):
        metrics.paired_differences(scores, "a", "gradcam")


class RegionModel(nn.Module):
    """Logit of every class = 10 x (mean of the top-left quarter) - 5: only that region matters."""

    def forward(self, x):
        region = x[:, :, : x.shape[-2] // 2, : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return (10 * region - 5)[:, None].expand(-1, len(labels.PATHOLOGIES))


def test_deletion_and_insertion_reward_the_map_on_the_region_that_matters():
    images = torch.zeros(1, 3, SIZE, SIZE)
    images[:, :, :16, :16] = 1.0
    images[:, :, 4:8, 4:8] = 3.0
    right, wrong = np.zeros((1, 14, SIZE, SIZE)), np.zeros((1, 14, SIZE, SIZE))
    right[:, :, :16, :16] = 1.0
    wrong[:, :, 16:, 16:] = 1.0
    pairs = [(0, "Edema")]
    good = metrics.perturbation_scores(RegionModel(), images, _heatmap_set(right, "right"), pairs).set_index("metric")
    bad = metrics.perturbation_scores(RegionModel(), images, _heatmap_set(wrong, "wrong"), pairs).set_index("metric")
    assert good.loc["deletion_auc", "value"] < bad.loc["deletion_auc", "value"]
    assert good.loc["insertion_auc", "value"] > bad.loc["insertion_auc", "value"]


def test_perturbation_scores_of_a_map_do_not_depend_on_the_pairs_before_it():
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    maps = np.zeros((1, 14, SIZE, SIZE))
    maps[0, :, :8, :8] = 1.0  # mostly ties: their order decides the curve
    maps[0, 2, 0, 0] = np.nan  # a diverged map, scored NaN without a draw
    alone = metrics.perturbation_scores(RegionModel(), images, _heatmap_set(maps), [(0, "Edema")], steps=20)
    after = metrics.perturbation_scores(
        RegionModel(), images, _heatmap_set(maps), [(0, "Cardiomegaly"), (0, "Atelectasis"), (0, "Edema")], steps=20
    )
    assert after.iloc[:2]["value"].isna().all()
    assert np.array_equal(after[after["pathology"] == "Edema"]["value"].to_numpy(), alone["value"].to_numpy())
    training = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), RegionModel()).train()  # a model mid-training
    metrics.perturbation_scores(training, images, _heatmap_set(maps), [(0, "Edema")], steps=4)
    assert training.training and all(p.requires_grad for p in training.parameters())  # left as it came


def test_perturbation_refuses_maps_of_other_inputs_by_name():
    """Maps at another size, or of another batch, give a clear error naming the method, not a reshape trace or
    another image's map scored."""
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    small = _heatmap_set(np.ones((2, 14, SIZE // 2, SIZE // 2)), "coarse")
    with pytest.raises(ValueError, match=rf"coarse's maps are 2 of {SIZE // 2} x {SIZE // 2} px"):
        metrics.perturbation_scores(RegionModel(), images, small, [(0, "Edema")], steps=4)
    one_image = _heatmap_set(np.ones((1, 14, SIZE, SIZE)), "other")
    with pytest.raises(ValueError, match="the inputs 2 images"):
        metrics.perturbation_scores(RegionModel(), images, one_image, [(0, "Edema")], steps=4)
    with pytest.raises(ValueError, match="coarse's maps"):
        metrics.counterfactual_perturbation_scores(RegionModel(), images, images[:1], small, [(0, "Edema")], steps=4)


def test_occlusion_finds_the_region_that_matters():
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    result = explainers.create("occlusion").explain(RegionModel(), images, image_ids=["a", "b"])
    assert result.maps.shape == (2, 14, SIZE, SIZE)
    window, stride = result.params["window"], result.params["stride"]
    far = np.ones((SIZE, SIZE), bool)
    far[: 16 + window // 2 + stride, : 16 + window // 2 + stride] = False  # windows centred here miss the region
    assert (result.maps[:, :, far] == 0).all() and (np.abs(result.maps[:, :, :16, :16]) > 0).all()
    grid = torch.arange(6.0).view(1, 1, 2, 3)
    image = occlusion._centre_grid_to_image(grid, 4, 2, (8, 12))
    assert image[0, 0, 2, 2] == 0 and image[0, 0, 6, 10] == 5 and image[0, 0, 2, 4] == 0.5  # on the centres
    assert image[0, 0, 0, 0] == 0 and image[0, 0, 7, 11] == 5  # held beyond


def test_a_diverged_map_scores_nan():
    maps = np.random.default_rng(0).random((1, 14, SIZE, SIZE))
    maps[0, 2, 0, 0] = np.inf
    masks = np.zeros((1, 14, SIZE, SIZE), bool)
    masks[0, 2] = masks[0, 5] = _mask()
    scores = metrics.score(_heatmap_set(maps), masks, class_sensitivity=False)
    assert scores[scores["pathology"] == "Cardiomegaly"]["value"].isna().all()
    assert scores[scores["pathology"] == "Edema"]["value"].notna().all()


def test_distance_and_near_hit():
    mask = _mask()  # rows and columns 8..15
    assert metrics.distance_px(_peak(11, 11), mask) == 0.0
    assert metrics.distance_px(_peak(11, 18), mask) == pytest.approx(3.0)
    assert metrics.near_hit(_peak(11, 17), mask) == 1.0 and metrics.near_hit(_peak(11, 19), mask) == 0.0  # 32/16 = 2 px
    assert np.isnan(metrics.distance_px(np.zeros((SIZE, SIZE)), mask))


def test_rank_accuracy_shares_tied_places_evenly():
    spike = np.zeros((SIZE, SIZE))
    spike[20, 20] = 1.0  # one positive pixel, the rest tied at zero
    top, bottom = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
    top[:8], bottom[-8:] = True, True
    assert metrics.rank_accuracy(spike, top) == pytest.approx(metrics.rank_accuracy(spike, bottom))
    assert metrics.rank_accuracy(spike, top) == pytest.approx((255 * 256 / 1023) / 256)
    assert metrics.rank_accuracy(spike, top.astype(np.uint8) * 255) == metrics.rank_accuracy(spike, top)  # a 0/255 mask


def test_paired_differences_compare_the_same_maps_when_one_method_has_gaps():
    rows = [
        (f"i{i}", p, m, "gini", v) for i in range(6) for p, v in (("Edema", 0.2), ("Fracture", 0.8)) for m in ("a", "b")
    ]
    rows = [r for r in rows if not (r[2] == "a" and r[1] == "Fracture")]  # a undefined on Fracture
    scores = pd.DataFrame(rows, columns=metrics.COLUMNS)
    pooled = metrics.paired_differences(scores, "a", "b", n_boot=50).set_index("pathology").loc["all"]
    assert pooled["mean_difference"] == pytest.approx(0.0) and pooled["n"] == 6


def test_pixel_auroc_equals_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    mask = np.zeros((40, 40), bool)
    mask[5:20, 10:30] = True
    for heatmap in (rng.normal(size=(40, 40)).round(1), np.kron(rng.random((4, 4)), np.ones((10, 10))) - 0.3):
        expected = roc_auc_score(mask.ravel(), metrics.positive_part(heatmap).ravel())
        assert metrics.pixel_auroc(heatmap, mask) == pytest.approx(expected, abs=1e-12)


def test_resolution_is_measured_once_per_map_and_the_same_again(monkeypatch):
    from helpers.metrics import granularity

    measured = []
    compute = granularity._autocorrelation_width
    monkeypatch.setattr(granularity, "_autocorrelation_width", lambda values: measured.append(1) or compute(values))
    peak = _peak(32, 31, 3.5)
    first = metrics.resolution_px(peak)
    assert metrics.resolution_px(peak.copy()) == first and len(measured) == 1  # an equal map: looked up
    assert metrics.resolution_px(_peak(32, 31, 7.0)) > first and len(measured) == 2  # another map: measured


@pytest.mark.parametrize(
    "name",
    ["hit", "distance_px", "near_hit", "iou", "boundary_f1", "mass_accuracy", "rank_accuracy", "pixel_auroc"],
)
def test_a_0_1_integer_mask_scores_as_the_same_boolean_mask(name):
    heatmap = _peak(10, 11, width=3.0) + 0.3 * _peak(20, 5)  # the maximum near but outside the mask's corner
    mask = _mask(top=12, left=12)
    function = getattr(metrics, name)
    as_bool = function(heatmap, mask)
    for dtype in (np.uint8, np.int64, np.float32):
        assert function(heatmap, mask.astype(dtype)) == pytest.approx(as_bool, nan_ok=True), dtype

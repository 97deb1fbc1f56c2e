"""Counterfactual renders of a written phantom (replay, render_without) and faithfulness measured with them."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import data, heatmaps, labels, phantom
from helpers.metrics.faithfulness import counterfactual_perturbation_scores
from helpers.phantom.render import dilate

JPEG_BLOCK = 8


@pytest.fixture(scope="module")
def frame(small_phantom):
    both = [data.read_chexpert_csv(small_phantom / f"{split}.csv") for split in ("train", "valid")]
    return pd.concat(both, ignore_index=True).assign(image_id=lambda f: list(data.image_ids(f)))


@pytest.fixture(scope="module")
def replayed(small_phantom):
    return phantom.replay(small_phantom)


@pytest.fixture(scope="module")
def positives(small_phantom, frame, replayed):
    """Every (image, finding) with a positive label, its mask, and its renders without the finding."""
    pairs = [(row.image_id, name) for name in phantom.FINDINGS for row in frame[frame[name] == 1].itertuples()]
    ids, names = zip(*pairs)
    masks = data.load_masks(small_phantom / "gt_segmentations.json")
    return {
        "pairs": pairs,
        "masks": np.stack([masks[image_id][name] for image_id, name in pairs]),
        "raw": phantom.render_without(replayed, ids, names, jpeg=False),
        "jpeg": phantom.render_without(replayed, ids, names),
    }


def _stored(root, frame, image_ids):
    paths = frame.set_index("image_id").loc[list(image_ids), "Path"]
    return [data.resolve_image_path(root, path) for path in paths]


def test_replay_maps_every_written_image_to_its_scene(small_phantom, frame, replayed):
    assert list(replayed) == list(frame["image_id"]) and len(replayed) == 80
    first_valid = frame["image_id"].iat[60]
    image = replayed[first_valid]
    assert (image.split, image.row) == ("valid", 0) and image.batch[0] == 0
    assert image.strength.shape == (13,) and all(len(v) == 1 for v in image.scene.values())
    codes = frame.loc[60, list(phantom.FINDINGS)].to_numpy(float)
    assert ((image.strength > 0) == np.isin(codes, (1.0, -1.0))).all(), "strengths follow the written labels"
    assert "80" in repr(replayed) and replayed == replayed


def test_factual_is_the_stored_jpeg_in_both_splits(small_phantom, frame, replayed):
    ids = list(frame["image_id"].iloc[[0, 1, 17, 33, 59, 60, 61, 79]])
    result = phantom.render_without(replayed, ids, "all")
    stored = np.stack([data.load_image(path, 64) for path in _stored(small_phantom, frame, ids)])
    assert result.factual.dtype == np.uint8 and result.factual.shape == (8, 64, 64)
    assert np.array_equal(result.factual, stored), "measured: identical (max |difference| 0)"


def test_batches_rendered_side_by_side_equal_one_thread(frame, replayed):
    ids = list(frame["image_id"].iloc[[0, 1, 17, 33, 59, 60, 61, 79, 17]])  # 5 batches, one id twice
    remove = ["all", "Edema", "Cardiomegaly", "all", "Pneumothorax", "all", "Edema", "all", "Pleural Effusion"]
    one = phantom.render_without(replayed, ids, remove, threads=1)
    several = phantom.render_without(replayed, ids, remove, threads=4)
    assert all(np.array_equal(a, b) for a, b in zip(one, several))
    assert not np.array_equal(one.factual, one.counterfactual)


def test_non_square_phantom_replays_at_its_shape(tmp_path):
    root = phantom.generate(tmp_path / "p", 10, 48, seed=2, n_valid=3, height=60)
    frame = pd.concat([data.read_chexpert_csv(root / f"{s}.csv") for s in ("train", "valid")], ignore_index=True)
    frame["image_id"] = list(data.image_ids(frame))
    result = phantom.render_without(root, frame["image_id"], "all")
    stored = np.stack([np.asarray(Image.open(path).convert("L")) for path in _stored(root, frame, frame["image_id"])])
    assert result.factual.shape == (13, 60, 48) and np.array_equal(result.factual, stored)


def test_removal_changes_the_finding_inside_its_mask(positives):
    """Before JPEG: the change lies in the finding's ground-truth mask (measured per finding below)."""
    raw, masks = positives["raw"], positives["masks"]
    difference = np.abs(raw.factual.astype(int) - raw.counterfactual)
    changed = difference >= 2
    assert (changed <= dilate(masks, 1)).all(), "every change of >= 2 grey levels lies within 1 px of the mask"
    mass_inside = (difference * masks).sum(axis=(1, 2)) / difference.sum(axis=(1, 2))
    assert mass_inside.min() >= 0.9, f"worst image: {mass_inside.min():.3f} of the change inside (measured 0.95)"
    coverage = (changed & masks).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
    assert coverage.min() >= 0.2, f"worst image: {coverage.min():.2f} of its mask changed (measured 0.32)"
    inside = (changed & masks).sum() / changed.sum()
    assert inside >= 0.9, f"{inside:.3f} of the pixels changed by >= 2 grey levels lie inside the masks"
    names = np.array([name for _, name in positives["pairs"]])
    for name in phantom.FINDINGS:
        rows = names == name
        share = (changed[rows] & masks[rows]).sum() / changed[rows].sum()
        # Measured at 64 px: Support Devices 0.80, Enlarged Cardiomediastinum 0.89, Lung Lesion 0.93, the rest
        # >= 0.96. A bright line's blur (the detector PSF's second tap, 1/16 of its change: several grey levels)
        # lands 2 px from it, outside its mask's 1-px dilation; hence the 1-px check above.
        assert share >= 0.75, f"{name}: {share:.3f} of its changed pixels inside its mask"


def test_jpeg_spreads_the_change_only_over_the_blocks_it_touches(positives):
    raw, written = positives["raw"], positives["jpeg"]
    assert np.array_equal(raw.changed, written.changed) and np.array_equal(
        raw.changed, raw.factual != raw.counterfactual
    )
    n, height, width = raw.changed.shape
    blocks = raw.changed.reshape(n, height // JPEG_BLOCK, JPEG_BLOCK, width // JPEG_BLOCK, JPEG_BLOCK).any(axis=(2, 4))
    blocks = blocks.repeat(JPEG_BLOCK, axis=1).repeat(JPEG_BLOCK, axis=2)
    assert ((written.factual != written.counterfactual) <= blocks).all()
    assert (written.factual != written.counterfactual).any(axis=(1, 2)).all()


def test_removing_an_absent_finding_changes_nothing(frame, replayed):
    """Absent findings, removed in the same batches as present ones: no difference at all (measured bound 0)."""
    rows = frame.iloc[:20]
    present = [next(n for n in phantom.FINDINGS if row[n] in (1.0, -1.0)) for _, row in rows.iterrows()]
    absent = [[n for n in phantom.FINDINGS if row[n] not in (1.0, -1.0)] for _, row in rows.iterrows()]
    ids = [*rows["image_id"], *rows["image_id"]]
    result = phantom.render_without(replayed, ids, [*present, *absent])
    assert (result.factual[:20] != result.counterfactual[:20]).any(axis=(1, 2)).all()
    assert np.array_equal(result.factual[20:], result.counterfactual[20:]) and not result.changed[20:].any()
    assert np.array_equal(result.factual[:20], result.factual[20:])


def test_deterministic_and_order_free(replayed, frame):
    ids = list(frame["image_id"].iloc[[3, 70, 10]])
    first = phantom.render_without(replayed, ids, ["Edema", "all", ["Fracture", "Support Devices"]])
    again = phantom.render_without(replayed, ids[::-1], [["Fracture", "Support Devices"], "all", "Edema"])
    for a, b in zip(first, again):
        assert np.array_equal(a, b[::-1])


def test_bad_folders_and_arguments(tmp_path, small_phantom, replayed, frame):
    with pytest.raises(phantom.ReplayError, match=f"{tmp_path}.*not a phantom"):
        phantom.replay(tmp_path)
    root = phantom.generate(tmp_path / "old", 6, 48, seed=1, n_valid=2)
    manifest = json.loads((root / phantom.MANIFEST).read_text())
    (root / phantom.MANIFEST).write_text(json.dumps({**manifest, "version": manifest["version"] - 1}))
    with pytest.raises(phantom.ReplayError, match=f"{root} was written by phantom version"):
        phantom.render_without(root, [], "all")
    (root / phantom.MANIFEST).write_text(json.dumps({**manifest, "seed": 2}))
    with pytest.raises(phantom.ReplayError, match="differs from the rows"):
        phantom.replay(root)
    (root / phantom.MANIFEST).write_text(json.dumps(manifest))
    pd.read_csv(root / "train.csv").drop(columns=["Edema"]).to_csv(root / "train.csv", index=False)
    with pytest.raises(phantom.ReplayError, match="train.csv has no column 'Edema'"):
        phantom.replay(root)
    (root / phantom.MANIFEST).write_text("[1, 2]")
    with pytest.raises(phantom.ReplayError, match="not a phantom: its phantom.json is not a phantom's"):
        phantom.replay(root)
    one = [frame["image_id"].iat[0]]
    with pytest.raises(ValueError, match="Cannot remove.*No Finding"):
        phantom.render_without(replayed, one, "No Finding")
    with pytest.raises(ValueError, match="Not images of the phantom"):
        phantom.render_without(replayed, ["patient99999_study1_view1_frontal"], "all")
    with pytest.raises(ValueError, match="one per image"):
        phantom.render_without(replayed, one, ["Edema", "Fracture"])
    with pytest.raises(ValueError, match="remove must be a finding's name or a sequence of names; got None"):
        phantom.render_without(replayed, one, None)
    with pytest.raises(ValueError, match=r"remove\[0\] must be a finding's name .*got 3"):
        phantom.render_without(replayed, one, [3])


class SquareModel(nn.Module):
    """Logit of every class = 4 x (mean of the square rows and columns 8..23) - 2: only that square matters."""

    def forward(self, x):
        square = x[:, :, 8:24, 8:24].mean(dim=(1, 2, 3))
        return (4 * square - 2)[:, None].expand(-1, len(labels.PATHOLOGIES))


def _square_case(n=2):
    """Noisy images with a bright 'finding' on the square; counterfactuals are the same images without it."""
    background = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    finding = torch.zeros(1, 3, 64, 64)
    finding[:, :, 8:24, 8:24] = 1.0
    return background + finding, background


def _maps(region, n=2):
    maps = np.zeros((n, 14, 64, 64), np.float32)
    maps[:, :, region[0], region[1]] = 1.0
    return heatmaps.HeatmapSet(maps, [f"img{i}" for i in range(n)], labels.PATHOLOGIES, "m")


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_cf_curves_reward_the_map_on_what_the_model_uses(spacing):
    inputs, without = _square_case()
    pairs = [(0, "Edema"), (1, "Edema"), (1, "Fracture")]
    counterfactuals = without[[i for i, _ in pairs]]
    right = _maps((slice(8, 24), slice(8, 24)))
    wrong = _maps((slice(40, 56), slice(40, 56)))
    scores = {
        name: counterfactual_perturbation_scores(
            SquareModel(), inputs, counterfactuals, maps, pairs, spacing=spacing
        ).pivot_table(index=["image", "pathology"], columns="metric", values="value")
        for name, maps in (("right", right), ("wrong", wrong))
    }
    good, bad = scores["right"], scores["wrong"]
    assert (good["cf_deletion_auc"] < good["cf_deletion_random_auc"] - 0.1).all()
    assert (good["cf_insertion_auc"] > good["cf_insertion_random_auc"] + 0.1).all()
    assert (good["cf_deletion_auc"] < bad["cf_deletion_auc"] - 0.1).all()
    assert (good["cf_insertion_auc"] > bad["cf_insertion_auc"] + 0.1).all()
    random = ["cf_deletion_random_auc", "cf_insertion_random_auc", "cf_prob_factual", "cf_prob_counterfactual"]
    assert np.array_equal(good[random].to_numpy(), bad[random].to_numpy()), "a pair's random reference is per pair"
    assert (good["cf_prob_factual"] > good["cf_prob_counterfactual"] + 0.4).all()


def test_cf_curves_of_several_maps_at_once_equal_one_call_per_map():
    """Scored together, the methods share each pair's random reference and forward passes, not its numbers."""
    inputs, without = _square_case()
    pairs = [(0, "Edema"), (1, "Fracture")]
    sets = [_maps((slice(8, 24), slice(8, 24))), _maps((slice(40, 56), slice(0, 64)))]
    sets[1].maps[1, labels.PATHOLOGIES.index("Fracture"), 0, 0] = np.nan
    model, counterfactuals = SquareModel(), without[[i for i, _ in pairs]]
    together = counterfactual_perturbation_scores(model, inputs, counterfactuals, sets, pairs, steps=12)
    separate = [counterfactual_perturbation_scores(model, inputs, counterfactuals, s, pairs, steps=12) for s in sets]
    pd.testing.assert_frame_equal(together, pd.concat(separate, ignore_index=True), rtol=1e-12)


def test_cf_curves_are_flat_when_nothing_is_removed_and_nan_for_broken_maps():
    """The case that must come out the other way: a counterfactual equal to the image gives no signal."""
    inputs, _ = _square_case()
    maps = _maps((slice(8, 24), slice(8, 24)))
    maps.maps[1, labels.PATHOLOGIES.index("Edema"), 0, 0] = np.nan
    pairs = [(0, "Edema"), (1, "Edema")]
    scores = counterfactual_perturbation_scores(SquareModel(), inputs, inputs, maps, pairs, steps=20)
    values = scores.pivot_table(index="image", columns="metric", values="value", dropna=False)
    probability = values.loc["img0", "cf_prob_factual"]
    assert values.loc["img0"].to_numpy() == pytest.approx(probability)
    assert np.isnan(values.loc["img1", ["cf_deletion_auc", "cf_insertion_auc"]].to_numpy(float)).all()
    assert values.loc["img1", "cf_deletion_random_auc"] == pytest.approx(values.loc["img1", "cf_prob_factual"])


def test_cf_arguments_are_checked():
    inputs, without = _square_case()
    maps, pairs = _maps((slice(8, 24), slice(8, 24))), [(0, "Edema"), (1, "Edema")]
    with pytest.raises(ValueError, match=r"one image per pair.*\(2, 3, 64, 64\); got \(1, 3, 64, 64\)"):
        counterfactual_perturbation_scores(SquareModel(), inputs, without[:1], maps, pairs)
    with pytest.raises(ValueError, match="steps >= 50"):
        counterfactual_perturbation_scores(SquareModel(), inputs, without, maps, pairs, steps=10, spacing="linear")
    with pytest.raises(ValueError, match="'log' with steps >= 2"):  # one log step would stop at 0.1% replaced
        counterfactual_perturbation_scores(SquareModel(), inputs, without, maps, pairs, steps=1, spacing="log")


class MaskModel(nn.Module):
    """Logit of every class = 20 x (mean input over a fixed mask): reads one finding's pixels and nothing else."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32))

    def forward(self, x):
        inside = (x.mean(dim=1) * self.mask).sum(dim=(1, 2)) / self.mask.sum()
        return (20 * inside)[:, None].expand(-1, len(labels.PATHOLOGIES))


def test_phantom_counterfactuals_feed_the_metric(small_phantom, frame, replayed):
    """End to end: a positive finding rendered away, normalised as the model's inputs, scored on its own mask."""
    row = frame[frame["Pleural Effusion"] == 1].iloc[0]
    mask = data.load_masks(small_phantom / "gt_segmentations.json")[row.image_id]["Pleural Effusion"]
    pair = phantom.render_without(replayed, [row.image_id], "Pleural Effusion")
    inputs, without = (data.to_model_input(torch.from_numpy(a), [0.5] * 3, [0.25] * 3) for a in pair[:2])
    maps = np.zeros((1, 14, 64, 64), np.float32)
    maps[0, :, mask] = 1.0
    right = heatmaps.HeatmapSet(maps, [row.image_id], labels.PATHOLOGIES, "mask")
    wrong = heatmaps.HeatmapSet(np.roll(maps, 32, axis=-1), [row.image_id], labels.PATHOLOGIES, "elsewhere")
    pairs = [(0, "Pleural Effusion")]
    model = MaskModel(mask)
    good, bad = (
        counterfactual_perturbation_scores(model, inputs, without, maps, pairs).set_index("metric")["value"]
        for maps in (right, wrong)
    )
    assert good["cf_prob_factual"] > good["cf_prob_counterfactual"] + 0.05, "removing the effusion lowers the logit"
    assert good["cf_deletion_auc"] < min(good["cf_deletion_random_auc"], bad["cf_deletion_auc"])
    assert good["cf_insertion_auc"] > max(good["cf_insertion_random_auc"], bad["cf_insertion_auc"])

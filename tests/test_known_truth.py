"""Known truth (issue 11): the phantom's spurious marker, scores against what a model is known to use, and the
verdicts that must flip: a model that reads only the marker, a model that reads elsewhere, a method that ignores
the model."""

import dataclasses
import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import config, data, explainers, known_truth, labels, metrics, phantom
from helpers.heatmaps import HeatmapSet
from helpers.run import ExplainedBatch, Run

TARGET = "Pneumothorax"


@pytest.fixture(scope="module")
def marked_phantom(tmp_path_factory):
    """The conftest phantom's twin with a marker on every train positive and no train negative."""
    root = tmp_path_factory.mktemp("marked") / "CheXpert-v1.0-small"
    marker = phantom.Marker(TARGET, positive_rate=1.0, negative_rate=0.0, test_rate=0.5)
    return phantom.generate(root, 60, 64, seed=3, n_valid=20, min_prevalence=0.1, marker=marker)


@pytest.fixture(scope="module")
def replayed(marked_phantom):
    return phantom.replay(marked_phantom)


def _frame(root):
    frames = [data.read_chexpert_csv(root / f"{split}.csv") for split in ("train", "valid")]
    return pd.concat(frames, ignore_index=True).assign(image_id=lambda f: list(data.image_ids(f)))


def test_marker_is_off_by_default(small_phantom):
    manifest = json.loads((small_phantom / phantom.MANIFEST).read_text())
    assert "marker" not in manifest
    replayed = phantom.replay(small_phantom)
    assert not replayed.has_marker and not replayed.marker_present(list(replayed)).any()
    with pytest.raises(ValueError, match="without one"):
        phantom.render_without(replayed, list(replayed)[:2], phantom.MARKER)


def test_marker_follows_the_label_in_train_and_not_in_test(marked_phantom, replayed):
    frame = _frame(marked_phantom)
    present = replayed.marker_present(frame["image_id"].tolist())
    positive = frame[TARGET].to_numpy() == 1
    train = np.arange(len(frame)) < 60
    assert np.array_equal(present[train], positive[train]), "rates 1 and 0: marked exactly where positive"
    assert positive[train].any() and 0 < present[~train].sum() < (~train).sum(), "test: some marked, not all"


def test_marker_is_deterministic_and_changes_nothing_else(small_phantom, marked_phantom, replayed, tmp_path):
    frame = _frame(marked_phantom)
    ids = frame["image_id"].tolist()
    again = phantom.generate(
        tmp_path / "again", 60, 64, seed=3, n_valid=20, min_prevalence=0.1, marker=phantom.Marker(TARGET, 1.0, 0.0, 0.5)
    )
    paths = [data.resolve_image_path(marked_phantom, p) for p in frame["Path"]]
    assert all(path.read_bytes() == (again / path.relative_to(marked_phantom)).read_bytes() for path in paths)
    assert pd.read_csv(marked_phantom / "train.csv").equals(pd.read_csv(small_phantom / "train.csv"))
    with_marker = phantom.render_without(replayed, ids, "all", jpeg=False).factual
    clean = phantom.render_without(small_phantom, ids, "all", jpeg=False).factual
    present = replayed.marker_present(ids)
    masks = replayed.marker_masks(ids)
    assert np.array_equal(with_marker[~present], clean[~present]), "unmarked images: the clean phantom's pixels"
    assert np.array_equal(with_marker[~masks], clean[~masks]), "marked images differ only on the marker"
    assert (masks[present].sum(axis=(1, 2)) > 20).all() and not masks[~present].any()


def test_rendering_out_the_marker_changes_only_the_marker(replayed, marked_phantom):
    ids = [i for i, m in zip(replayed, replayed.marker_present(list(replayed))) if m]
    raw = phantom.render_without(replayed, ids, phantom.MARKER, jpeg=False)
    masks = replayed.marker_masks(ids)
    difference = np.abs(raw.factual.astype(int) - raw.counterfactual)
    assert ((difference * masks).sum() / difference.sum()) >= 0.9, "the phantom's contract: >= 90% inside"
    assert np.array_equal(raw.changed, masks & (difference > 0))
    clean = phantom.render_without(replayed, ids, [[phantom.MARKER]] * len(ids), jpeg=False).counterfactual
    assert np.array_equal(clean, raw.counterfactual)


def test_rendering_out_a_finding_keeps_the_marker(replayed, marked_phantom):
    frame = _frame(marked_phantom)
    rows = frame[(frame[TARGET] == 1) & replayed.marker_present(frame["image_id"].tolist())]
    ids = rows["image_id"].tolist()
    raw = phantom.render_without(replayed, ids, TARGET, jpeg=False)
    masks = replayed.marker_masks(ids)
    finding = np.stack([data.load_masks(marked_phantom / "gt_segmentations.json")[i][TARGET] for i in ids])
    difference = np.abs(raw.factual.astype(int) - raw.counterfactual)
    assert not difference[masks & ~finding].any(), "the marker is burned in over the exposure: untouched"
    assert (difference * finding).sum() / difference.sum() >= 0.9


def test_marker_settings_are_checked():
    with pytest.raises(ValueError, match="Cardiac Arrest"):
        phantom.Marker("Cardiac Arrest")
    with pytest.raises(ValueError, match="rates"):
        phantom.Marker(TARGET, positive_rate=1.5)
    assert phantom.Marker(**config.load_profile("default").shortcut.marker()) == phantom.Marker()


class RegionModel(nn.Module):
    """A hand-built classifier whose logit for one pathology sums the input inside a region (every other logit 0):
    it provably uses that region and nothing else. With ``threshold``, it sums only the part of each input value
    above it (a ReLU), so it reads only what is brighter than that there."""

    def __init__(self, region: np.ndarray, pathology: str = TARGET, threshold: float | None = None):
        super().__init__()
        weight = torch.zeros(len(labels.PATHOLOGIES), 3, *region.shape)
        weight[labels.PATHOLOGIES.index(pathology), :, torch.from_numpy(region)] = 1.0
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.threshold = threshold

    def forward(self, x):
        read = x if self.threshold is None else torch.relu(x - self.threshold)
        return torch.einsum("nchw,kchw->nk", read, self.weight)


@pytest.fixture(scope="module")
def marked_inputs(replayed):
    ids = [i for i, m in zip(replayed, replayed.marker_present(list(replayed))) if m][:6]
    factual = phantom.render_without(replayed, ids, phantom.MARKER)
    inputs = data.to_model_input(torch.from_numpy(factual.factual), config.IMAGENET_MEAN, config.IMAGENET_STD)
    return ids, inputs, replayed.marker_masks(ids)


def _marker_model(masks):
    """Reads what is near white (the burned-in grey level 0.97, normalised about 2.1) where the marker may sit."""
    size = masks.shape[-1]
    corner = np.zeros_like(masks[0])
    corner[: int(0.2 * size), : int(0.4 * size)] = True  # every placement of the token (helpers.phantom.marker)
    assert (masks <= corner).all()
    return RegionModel(corner, threshold=1.5).eval()


def _elsewhere_model(masks):
    region = np.zeros_like(masks[0])
    region[40:56, 30:50] = True  # inside the thorax, away from the upper-left corner
    assert not (region & masks.any(axis=0)).any()
    return RegionModel(region).eval()


@pytest.mark.parametrize("method", ["gradient_x_input", "integrated_gradients"])
def test_a_faithful_method_puts_the_marker_models_mass_on_the_marker(marked_inputs, method):
    ids, inputs, masks = marked_inputs
    explainer = explainers.create(method)
    targets = [(i, TARGET) for i in range(len(ids))]
    on_marker = explainer.explain(_marker_model(masks), inputs, [TARGET], image_ids=ids)
    scores = metrics.region_scores(on_marker, targets, masks, "marker").pivot(index="image", columns="metric")["value"]
    assert scores["marker_mass"].min() >= 0.9, scores
    assert scores["marker_max"].min() == 1.0
    elsewhere = explainer.explain(_elsewhere_model(masks), inputs, [TARGET], image_ids=ids)
    flipped = metrics.region_scores(elsewhere, targets, masks, "marker")
    assert flipped[flipped["metric"] == "marker_mass"]["value"].max() <= 0.05, "a model reading elsewhere: none"


def _detection_scores(marked_inputs, method):
    ids, inputs, masks = marked_inputs
    explainer = explainers.create(method)
    targets = [(i, TARGET) for i in range(len(ids))]
    tables = []
    for kind, model in (("shortcut", _marker_model(masks)), ("clean", _elsewhere_model(masks))):
        maps = explainer.explain(model, inputs, [TARGET], image_ids=ids)
        tables.append(metrics.region_scores(maps, targets, masks, "marker").assign(model=kind))
    return pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("method", ["random", "edge"])
def test_detection_auroc_of_a_method_that_ignores_the_model_is_one_half(marked_inputs, method):
    detection = metrics.detection_auroc(_detection_scores(marked_inputs, method), n_boot=100)
    assert detection["auroc"].item() == pytest.approx(0.5), "the same map under both models: every pair a tie"
    assert detection["ci_low"].item() == pytest.approx(0.5) and detection["n_images"].item() == 6


def test_detection_auroc_of_a_faithful_method_separates_the_models(marked_inputs):
    detection = metrics.detection_auroc(_detection_scores(marked_inputs, "gradient_x_input"), n_boot=100)
    assert detection["auroc"].item() == 1.0


def test_logit_changes_are_the_models_own(marked_inputs, replayed):
    ids, inputs, masks = marked_inputs
    without = phantom.render_without(replayed, ids, phantom.MARKER)
    cf = data.to_model_input(torch.from_numpy(without.counterfactual), config.IMAGENET_MEAN, config.IMAGENET_STD)
    model = _marker_model(masks)
    pairs = [(i, phantom.MARKER) for i in range(len(ids))]
    truth = metrics.logit_changes(model, inputs, cf, pairs, ids)
    assert len(truth) == 14 * len(ids) and set(truth["removed"]) == {phantom.MARKER}
    own = truth[truth["pathology"] == TARGET]["delta"].to_numpy()
    expected = (model(inputs) - model(cf))[:, labels.PATHOLOGIES.index(TARGET)].numpy()
    assert np.allclose(own, expected) and (own > 0).all(), "the bright marker raised the logit"
    assert (truth[truth["pathology"] != TARGET]["delta"] == 0).all()
    unaffected = metrics.logit_changes(_elsewhere_model(masks), inputs, cf, pairs, ids)
    assert np.abs(unaffected["delta"]).max() < 1e-3, "removing the marker does not move a model that ignores it"


def test_use_correlation_ranks_a_faithful_score_first():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=40)
    truth = pd.DataFrame({"image": [f"i{k}" for k in range(40)], "pathology": "Edema", "delta": delta})

    def scores(method, values):
        return truth.assign(method=method, metric="footprint_mass", value=values)[metrics.COLUMNS]

    table = pd.concat([scores("faithful", delta * 2 + 1), scores("blind", rng.permutation(delta))])
    patients = {f"i{k}": f"p{k // 2}" for k in range(40)}
    use = metrics.use_correlation(table, truth, "footprint_mass", n_boot=200, patients=patients).set_index("method")
    assert use.at["faithful", "rho"] == pytest.approx(1.0) and use.at["faithful", "ci_low"] == pytest.approx(1.0)
    assert abs(use.at["blind", "rho"]) < 0.4 and use.at["blind", "ci_low"] < 0 < use.at["blind", "ci_high"]
    assert metrics.use_correlation(table, truth).empty, "the default score (footprint_excess) is not in the table"


def test_map_shift_is_sign_blind():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    before = HeatmapSet(maps, ["a", "b"], ["Edema"], "lrp_z", {}, np.zeros((2, 1)))
    after = HeatmapSet(
        np.stack([-maps[0], rng.normal(size=(1, 16, 16))]).astype(np.float32),
        ["a", "b"],
        ["Edema"],
        "lrp_z",
        {},
        np.zeros((2, 1)),
    )
    shift = metrics.map_shift(before, after, [(0, 0, "Edema"), (1, 1, "Edema")])["value"].to_numpy()
    assert shift[0] == pytest.approx(0.0) and shift[1] > 0.7


def test_twins_share_the_data_and_differ_only_by_the_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    run = Run("smoke", device="cpu")
    clean, shortcut = run.twin(shortcut=False), run.twin(shortcut=True)
    assert clean.data_root == run.data_root and clean.cache_dir == run.cache_dir
    assert shortcut.data_root != run.data_root and shortcut.root == run.root / "known_truth" / "shortcut"
    assert (clean.profile.marker, shortcut.profile.marker) == (False, True)
    assert clean.profile.train.max_epochs == run.profile.shortcut.max_epochs == shortcut.profile.train.max_epochs
    same = dataclasses.replace(shortcut.profile, marker=False, name=clean.profile.name)
    assert same == clean.profile, "the twins differ by the marker alone"
    assert "marker" in config.resume_fields(shortcut.profile) and "marker" not in config.resume_fields(clean.profile)


def test_leakage_targets_pick_two_findings_of_one_image():
    codes = np.full((4, 14), np.nan)
    for i, names in enumerate([["Edema", "Pleural Effusion"], ["Edema"], ["Cardiomegaly", "Atelectasis", "Edema"], []]):
        codes[i, [labels.PATHOLOGIES.index(n) for n in names]] = 1
    batch = ExplainedBatch(list(range(4)), list("abcd"), list("abcd"), None, None, codes, None)
    triples = known_truth.leakage_targets(batch, 5, seed=0)
    assert sorted(i for i, _, _ in triples) == [0, 2]
    assert all(
        a != b and codes[i, labels.PATHOLOGIES.index(a)] == codes[i, labels.PATHOLOGIES.index(b)] == 1
        for i, a, b in triples
    )


def test_relevance_on_the_marker_never_counts_for_the_finding_it_covers():
    """An apical pneumothorax under the token: a map with all its mass on the token puts none on the finding."""
    size, k = 16, labels.PATHOLOGIES.index(TARGET)
    marker = np.zeros((2, size, size), bool)
    marker[:, 1:3, 1:6] = True
    masks = np.zeros((2, 14, size, size), bool)
    masks[0, k, :8, :8] = True  # the finding covers the token and more
    maps = np.zeros((2, 14, size, size), np.float32)
    maps[:, k] = marker  # every map's mass on the token
    batch = ExplainedBatch([0, 1], ["a", "b"], ["p", "q"], None, None, None, masks)
    sets = {"shortcut": {"m": HeatmapSet(maps, ["a", "b"], labels.PATHOLOGIES, "m")}}
    scores = known_truth.shortcut_scores(sets, batch, marker, TARGET).set_index("metric")["value"]
    assert scores["marker_mass"].tolist() == [1.0, 1.0]
    assert scores["finding_mass"] == 0.0  # image a only: b has no finding
    assert scores["finding_excess"] == pytest.approx(-(64 - 10) / 256)


def test_class_leakage_without_an_image_of_two_findings_says_so():
    codes = np.full((2, 14), np.nan)
    codes[0, labels.PATHOLOGIES.index("Edema")] = 1
    batch = ExplainedBatch([0, 1], ["a", "b"], ["a", "b"], None, None, codes, None)
    run = types.SimpleNamespace(explained=lambda: batch, profile=types.SimpleNamespace(seed=0))
    with pytest.raises(ValueError, match=r"No explained image has two positive findings.*2 now"):
        known_truth.class_leakage(run, None, {}, ["gradcam"], 4)


def test_twin_frame_draws_both_models_and_the_marker(marked_inputs):
    import matplotlib.pyplot as plt

    from helpers import widgets

    ids, inputs, masks = marked_inputs
    explainer = explainers.create("gradient_x_input")
    maps = {
        kind: {"gradient_x_input": explainer.explain(model, inputs, [TARGET], image_ids=ids)}
        for kind, model in (("clean", _elsewhere_model(masks)), ("shortcut", _marker_model(masks)))
    }
    images = (inputs[:, 0].numpy() * 50 + 120).clip(0, 255).astype(np.uint8)
    fig = widgets.render_twins(images, maps, "gradient_x_input", 1, TARGET, marker_masks=masks)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3 and "clean model" in titles[1] and "shortcut model" in titles[2]
    assert all(ax.collections for ax in fig.axes), "the marker's contour on every panel"
    plt.close(fig)
    viewer = widgets.twin_viewer(images, maps, marker_masks=masks, start=(2, TARGET))
    frame = viewer.children[-1]
    first = frame.value
    viewer.children[0].children[2].value = 3  # the image slider
    assert frame.value and frame.value != first and not plt.get_fignums()


def test_localisation_by_use_is_reported_per_pathology_and_pooled():
    rng = np.random.default_rng(0)
    rows, own = [], []
    for i in range(12):
        for pathology in ("Edema", "Pneumothorax"):
            rows.append((f"i{i}", pathology, "gradcam", "hit", float(rng.random() < 0.5)))
            own.append((f"i{i}", pathology, float(i % 3)))
    scores = pd.DataFrame(rows, columns=metrics.COLUMNS)
    own = pd.DataFrame(own, columns=["image", "pathology", "delta"]).assign(used=lambda t: t["delta"] >= 1)
    patients = {f"i{i}": f"p{i}" for i in range(12)}
    by_use = known_truth.localisation_by_use(scores, own, ["hit"], 20, patients)
    assert set(by_use["pathology"]) == {"Edema", "Pneumothorax", "all"}
    assert set(by_use["used"]) == {True, False}


def test_twins_aurocs_score_the_labels_their_policy_scores(monkeypatch):
    """Under u-ignore an uncertain label is left out of a twin's AUROC, as notebook 02 scores a model: two
    uncertain images ranked above every positive leave the AUROC at 1 instead of lowering it."""
    codes = [1, 1, 1, 0, 0, 0, -1, -1]
    probs = np.array([0.8, 0.9, 0.7, 0.1, 0.2, 0.3, 0.95, 0.99])
    frame = pd.DataFrame(
        {
            "Path": [f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(8)],
            "image_id": [f"patient{i:05d}_study1_view1_frontal" for i in range(8)],
            **{name: np.where(name == TARGET, codes, 0).astype(float) for name in labels.PATHOLOGIES},
        }
    )
    prepared = types.SimpleNamespace(
        split=lambda split: frame,
        dataset=lambda split, policy, mean, std: types.SimpleNamespace(
            **dict(zip(["targets", "loss_mask"], data.apply_policy(frame, policy)))
        ),
    )
    marked_run = types.SimpleNamespace(
        replay=lambda: types.SimpleNamespace(marker_present=lambda ids: np.arange(len(ids)) % 2 == 0)
    )
    scores = np.zeros((8, len(labels.PATHOLOGIES)))
    scores[:, labels.PATHOLOGIES.index(TARGET)] = probs
    monkeypatch.setattr(known_truth.evaluate, "predict", lambda model, dataset: scores)
    rows = {
        policy: pd.DataFrame(
            known_truth._split_aurocs(None, meta, prepared, "test", "test", TARGET, marked_run, 50, "clean")
        ).set_index("metric")
        for policy, meta in ((p, {"policy": p, "mean": 0, "std": 1}) for p in ("u-ignore", "u-zeros"))
    }
    assert rows["u-ignore"].at["auroc_test", "value"] == 1.0 and rows["u-ignore"].at["auroc_test", "n"] == 6
    assert rows["u-ignore"]["n"].to_dict() == {"auroc_test": 6, "auroc_test_marked": 3, "auroc_test_unmarked": 3}
    assert rows["u-zeros"].at["auroc_test", "value"] < 0.7 and rows["u-zeros"].at["auroc_test", "n"] == 8

"""Sanity checks (Adebayo et al. 2018): model and data randomisation, similarities, and the sign-aware verdict."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import explainers, heatmaps, labels
from helpers.metrics import sanity
from helpers.metrics.base import COLUMNS

SIZE = 32


def _pattern(size=64):
    """A signed map with structure: a positive and a negative blob on a ramp."""
    rows, cols = np.indices((size, size)) / (size - 1)
    blob = lambda r, c, w: np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / w)  # noqa: E731
    return blob(0.3, 0.6, 0.02) - 0.7 * blob(0.7, 0.3, 0.01) + 0.1 * cols


class SignTimesInput(explainers.Explainer):
    """``sign(logit) * first input channel``: the map changes under randomisation only by the logit's sign."""

    signed = True

    def attribute(self, net, batch, classes):
        with torch.no_grad():
            sign = torch.sign(net(batch)[:, classes])
        return sign[:, :, None, None] * batch[:, :1]


class FreshNoise(explainers.Explainer):
    """New Gaussian noise on every call: it ignores the model, yet every map differs from the last."""

    def __init__(self, name="fresh_noise"):
        super().__init__(name)
        self.generator = torch.Generator().manual_seed(0)

    def attribute(self, net, batch, classes):
        noise = torch.randn((len(batch), len(classes), *batch.shape[-2:]), generator=self.generator)
        return noise.to(batch)


class Blank(explainers.Explainer):
    """Zero maps whatever the model: an explainer that shows nothing, so no check may call it sensitive."""

    def __init__(self, name="blank"):
        super().__init__(name)

    def attribute(self, net, batch, classes):
        return torch.zeros((len(batch), len(classes), *batch.shape[-2:])).to(batch)


class ThreeConvs(nn.Module):
    """14 logits: the pooled output of three convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.Sequential(*(nn.Conv2d(3, 3 if i < 2 else 1, 3, padding=1) for i in range(3)))

    def forward(self, x):
        return self.convs(x).mean(dim=(-2, -1)).expand(-1, len(labels.PATHOLOGIES))


class LastLayerSpy(explainers.Explainer):
    """The last convolution's output for every pathology; records the parameters of every model it explains."""

    def __init__(self, name="last_layer"):
        super().__init__(name)
        self.seen = []

    def attribute(self, net, batch, classes):
        self.seen.append({key: value.clone() for key, value in net.state_dict().items()})
        return net.convs(batch).expand(-1, len(classes), -1, -1)


THREE_STAGES = [("top", ["convs.2"]), ("middle", ["convs.1"]), ("bottom", ["convs.0"])]


def _changed(state, reference):
    return {key for key, value in state.items() if not torch.equal(value, reference[key])}


def _outcome_row(outcome, stage, similarity):
    return outcome[(outcome["stage"] == stage) & (outcome["similarity"] == similarity)].squeeze()


# ----------------------------------------------------------------------------- similarities


def test_similarities_of_hand_made_maps():
    pattern, rng = _pattern(), np.random.default_rng(0)
    for name, similarity in sanity.SIMILARITIES.items():
        assert similarity(pattern, pattern) == pytest.approx(1.0), name
        noise = [similarity(rng.standard_normal((64, 64)), rng.standard_normal((64, 64))) for _ in range(3)]
        assert np.abs(noise).max() < 0.15, name
        # a flat trained map has nothing a randomisation could destroy: not judged; a flat randomised one changed
        flat = np.ones((64, 64))
        assert np.isnan(similarity(flat, pattern)) and np.isnan(similarity(flat, flat)), name
        assert similarity(pattern, np.ones((64, 64))) == 0.0, name
        assert np.isnan(similarity(pattern, np.where(pattern > 0.5, np.nan, pattern))), name
    assert sanity.spearman(pattern, -pattern) == pytest.approx(-1.0)
    assert sanity.spearman_abs(pattern, -pattern) == pytest.approx(1.0)
    assert sanity.hog_similarity(pattern, -pattern) > 0.99  # unsigned orientations: blind to the sign
    assert sanity.ssim(pattern, -pattern) < 0.5  # min-max scaling keeps the sign's order
    assert sanity.ssim_abs(pattern, -pattern) == pytest.approx(1.0)  # which is why ssim_abs decides
    big = _pattern(128)
    assert sanity.hog_similarity(big, big) == pytest.approx(1.0) and sanity.hog_similarity(big, -big.T) < 0.9


# ----------------------------------------------------------------------------- model randomisation


def test_model_randomisation_leaves_the_trained_model_alone_in_both_modes(model, images):
    before = {key: value.clone() for key, value in model.state_dict().items()}
    stages = [name for name, _ in model.randomisation_stages()]
    for mode in sanity.MODES:
        rows = sanity.model_randomisation(model, images[:1], SignTimesInput("sign"), [(0, "Edema")], mode=mode)
        expected = [f"{mode}:{stage}:{similarity}" for stage in stages for similarity in sanity.SIMILARITIES]
        assert rows["metric"].tolist() == expected and list(rows.columns) == list(COLUMNS)
        assert model.state_dict().keys() == before.keys()
        assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
        assert not model.training and all(p.requires_grad for p in model.parameters())


def test_cascading_randomisation_decorrelates_gradcam(model, images):
    gradcam = explainers.create("gradcam")
    trained = gradcam.explain(model, images)
    # pathologies whose maps vary in every image: a flat map (every similarity 0 by definition) checks nothing
    varying = [p for j, p in enumerate(trained.pathologies) if (np.ptp(trained.maps[:, j], axis=(-2, -1)) > 0).all()]
    assert len(varying) >= 3
    pairs = [(i, varying[i]) for i in range(3)]
    rows = sanity.cascading_randomisation(model, images, gradcam, pairs, image_ids=["a", "b", "c"])
    assert rows["value"].between(-1, 1).all() and set(rows["image"]) == {"a", "b", "c"}
    last = model.randomisation_stages()[-1][0]
    assert rows.loc[rows["metric"] == f"cascading:{last}:spearman_abs", "value"].mean() < 0.5
    outcome = sanity.sanity_outcome(rows)
    assert outcome.loc[outcome["stage"] == last, "passes"].all()


def test_independent_randomisation_resets_only_its_stage():
    model, images = ThreeConvs().eval(), torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    stage_keys = [{f"{name}.weight", f"{name}.bias"} for _, (name,) in THREE_STAGES]
    results = {}
    for mode in sanity.MODES:
        spy = LastLayerSpy()
        results[mode] = sanity.model_randomisation(model, images, spy, [(0, "Edema")], mode=mode, stages=THREE_STAGES)
        trained, *randomised = spy.seen
        changed = [_changed(state, trained) for state in randomised]
        cumulative = [set().union(*stage_keys[: s + 1]) for s in range(len(stage_keys))]
        assert changed == (stage_keys if mode == "independent" else cumulative)
        spearman = results[mode][results[mode]["metric"].str.endswith(":spearman_abs")]
        assert (spearman["value"] < 0.9).all()
    first = [frame[frame["metric"].str.contains(":top:")]["value"].to_numpy() for frame in results.values()]
    np.testing.assert_array_equal(*first)  # same seed, same single stage: the two modes agree
    assert not np.array_equal(*(frame["value"].to_numpy() for frame in results.values()))


def test_randomised_weights_come_from_the_seed_on_the_cpu_and_leave_the_global_generator_alone():
    """The same seed, the same weights on every device: drawn on the CPU as a hand re-initialisation would be; the
    caller's random state is not consumed (it was reseeded by every stage)."""
    model = ThreeConvs().eval()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    (stage, randomised), *_ = sanity._randomised_models(model, THREE_STAGES[:1], "cascading", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    by_hand = copy.deepcopy(model.get_submodule(THREE_STAGES[0][1][0]))
    torch.manual_seed(7)
    by_hand.reset_parameters()
    for name, value in by_hand.state_dict().items():
        torch.testing.assert_close(randomised.get_submodule(THREE_STAGES[0][1][0]).state_dict()[name], value)


def test_model_randomisation_rejects_unknown_stages_and_modes():
    model, images = ThreeConvs().eval(), torch.randn(1, 3, SIZE, SIZE)
    for mode in sanity.MODES:
        with pytest.raises(ValueError, match=r"does not have: \['head'\]"):
            sanity.model_randomisation(
                model, images, LastLayerSpy(), [(0, "Edema")], mode=mode, stages=[("x", ["head"])]
            )
    with pytest.raises(ValueError, match="mode must be one of"):
        sanity.model_randomisation(model, images, LastLayerSpy(), [(0, "Edema")], mode="layerwise")


def test_a_map_that_only_flips_sign_fails_and_fresh_noise_passes(model, images):
    pairs = [(i, pathology) for i in range(2) for pathology in labels.PATHOLOGIES]
    stages = model.randomisation_stages()[:3]
    flipping = sanity.cascading_randomisation(model, images, SignTimesInput("sign"), pairs, stages=stages)
    signed = flipping[flipping["metric"].str.endswith(":spearman")]
    assert (signed["value"] == -1).any() and (signed["value"] == 1).any()  # the logit's sign flips for some pairs
    outcome = sanity.sanity_outcome(flipping)
    for stage, _ in stages:
        assert _outcome_row(outcome, stage, "spearman")["mean"] < 0.5  # the signed mean alone would pass
        assert _outcome_row(outcome, stage, "spearman_abs")["mean"] == pytest.approx(1.0)
        for similarity in ("spearman", "spearman_abs", "ssim", "ssim_abs", "hog"):
            row = _outcome_row(outcome, stage, similarity)
            assert not row["passes"] and row["n"] == len(pairs), (stage, similarity)
    noise = sanity.cascading_randomisation(model, images, FreshNoise(), pairs, stages=stages)
    assert sanity.sanity_outcome(noise)["passes"].all()


def test_a_blank_explainer_fails_every_check_instead_of_passing_as_changed(model, images):
    pairs, stages = [(i, "Edema") for i in range(2)], model.randomisation_stages()[:2]
    rows = pd.concat(
        [sanity.model_randomisation(model, images, Blank(), pairs, mode=mode, stages=stages) for mode in sanity.MODES]
    )
    blank = _heatmap_set(np.zeros((2, 2, SIZE, SIZE)))
    rows = pd.concat([rows, sanity.data_randomisation(blank, blank, [(0, "Edema"), (1, "Pneumonia")])])
    assert rows["value"].isna().all()  # with 0 for "no structure", every similarity would be below 0.5: "passes"
    outcome = sanity.sanity_outcome(rows)
    assert len(outcome) == (2 * 2 + 1) * 5 and not outcome["passes"].any() and (outcome["n"] == 0).all()


# ----------------------------------------------------------------------------- data randomisation and outcome


def _heatmap_set(maps, ids=("a", "b"), pathologies=("Edema", "Pneumonia")):
    return heatmaps.HeatmapSet(maps, list(ids), list(pathologies), "lrp", signed=True)


def test_data_randomisation_compares_matching_sets_and_rejects_others():
    maps = np.stack([np.stack([_pattern(SIZE), _pattern(SIZE).T])] * 2)
    trained, pairs = _heatmap_set(maps), [(0, "Edema"), (1, "Pneumonia")]
    rows = sanity.data_randomisation(trained, _heatmap_set(-maps), pairs)
    assert rows["metric"].tolist() == [f"data:shuffled_labels:{name}" for name in sanity.SIMILARITIES] * 2
    values = rows.set_index(["image", "metric"])["value"]
    assert values["a", "data:shuffled_labels:spearman"] == pytest.approx(-1.0)
    assert values["b", "data:shuffled_labels:spearman_abs"] == pytest.approx(1.0)
    outcome = sanity.sanity_outcome(rows)
    assert set(outcome["mode"]) == {"data"} and not _outcome_row(outcome, "shuffled_labels", "spearman")["passes"]
    with pytest.raises(ValueError, match=r"image_ids: \['a', 'b'\] vs \['a', 'c'\]"):
        sanity.data_randomisation(trained, _heatmap_set(maps, ids=("a", "c")), pairs)
    with pytest.raises(ValueError, match="pathologies"):
        sanity.data_randomisation(trained, _heatmap_set(maps, pathologies=("Edema", "Fracture")), pairs)
    with pytest.raises(ValueError, match="map size"):
        sanity.data_randomisation(trained, _heatmap_set(maps[..., :16, :16]), pairs)


def test_sanity_outcome_summarises_per_stage_and_decides_on_the_sign_blind_similarity():
    rows = [
        ("a", "Edema", "m", "cascading:top:spearman", -0.9),
        ("b", "Edema", "m", "cascading:top:spearman", -0.7),
        ("a", "Edema", "m", "cascading:top:spearman_abs", 0.9),
        ("b", "Edema", "m", "cascading:top:spearman_abs", np.nan),
        ("a", "Edema", "m", "independent:top:ssim", 0.2),
        ("a", "Edema", "m", "independent:top:ssim_abs", 0.3),
        ("a", "Edema", "m", "hit", 1.0),
    ]
    outcome = sanity.sanity_outcome(pd.DataFrame(rows, columns=COLUMNS), threshold=0.5)
    assert outcome[["mode", "stage", "similarity"]].values.tolist() == [
        ["cascading", "top", "spearman"],
        ["cascading", "top", "spearman_abs"],
        ["independent", "top", "ssim"],
        ["independent", "top", "ssim_abs"],
    ]
    assert outcome["mean"].tolist() == pytest.approx([-0.8, 0.9, 0.2, 0.3])
    assert outcome["std"].iloc[0] == pytest.approx(np.std([-0.9, -0.7], ddof=1))
    assert outcome["n"].tolist() == [2, 1, 1, 1]
    assert outcome["decided_by"].tolist() == ["spearman_abs", "spearman_abs", "ssim_abs", "ssim_abs"]
    assert outcome["passes"].tolist() == [False, False, True, True]


def test_similarities_on_several_processes_equal_one_process(model, images):
    explainer = explainers.create("gradient_x_input")
    pairs = [(0, "Edema"), (1, "Cardiomegaly"), (2, "Edema")]
    one, two = (
        sanity.model_randomisation(model, images, explainer, pairs, mode="independent", n_jobs=n) for n in (1, 2)
    )
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == len(pairs) * len(model.randomisation_stages()) * len(sanity.SIMILARITIES)


def test_one_similarity_table_of_several_comparisons_equals_the_separate_checks(model, images):
    """The rows study.sanity_checks gets from one parallel call are those of the per-mode and data checks."""
    explainer = explainers.create("gradient_x_input")
    pairs = [(0, "Edema"), (2, "Cardiomegaly")]
    pathologies = ["Cardiomegaly", "Edema"]
    trained = explainer.explain(model, images, pathologies)
    other = heatmaps.HeatmapSet(-trained.maps, trained.image_ids, trained.pathologies, trained.method)
    separate = [
        sanity.model_randomisation(model, images, explainer, pairs, mode=mode, trained=trained) for mode in sanity.MODES
    ] + [sanity.data_randomisation(trained, other, pairs)]
    compared, first_stage = {}, None
    for mode in sanity.MODES:  # as study.sanity_checks: the first stage explained once, for both modes
        (stages,) = sanity.randomised_maps(model, images, [explainer], pairs, mode=mode, first_stage=first_stage)
        compared.update(stages)
        first_stage = first_stage or [next(iter(stages.values()))]
    compared[sanity.SHUFFLED_LABELS] = other
    together = sanity.similarity_table([(trained, compared), (other, {"self": other})], pairs, n_jobs=2)
    expected = pd.concat(separate, ignore_index=True)
    pd.testing.assert_frame_equal(together.iloc[: len(expected)], expected)
    assert (together.iloc[len(expected) :]["method"] == other.method).all()
    assert together.iloc[len(expected) :].query("metric == 'self:spearman'")["value"].tolist() == [1.0, 1.0]


def test_randomised_models_made_once_for_several_explainers_give_each_its_own_maps():
    model, images = ThreeConvs().eval(), torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pairs = [(0, "Edema"), (1, "Fracture")]
    for mode in sanity.MODES:
        together = sanity.randomised_maps(
            model, images, [LastLayerSpy(), SignTimesInput("sign")], pairs, mode=mode, stages=THREE_STAGES
        )
        alone = [
            sanity.randomised_maps(model, images, [e], pairs, mode=mode, stages=THREE_STAGES)[0]
            for e in (LastLayerSpy(), SignTimesInput("sign"))
        ]
        assert [list(maps) for maps in together] == [[f"{mode}:{s}" for s, _ in THREE_STAGES]] * 2
        for joint, single in zip(together, alone):
            for key in joint:
                np.testing.assert_array_equal(joint[key].maps, single[key].maps)
        assert not np.array_equal(together[0][f"{mode}:top"].maps, together[1][f"{mode}:top"].maps, equal_nan=True)


def test_the_first_stage_is_one_model_in_both_modes_and_is_explained_once_when_passed_on():
    model, images = ThreeConvs().eval(), torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pairs = [(0, "Edema"), (1, "Fracture")]
    (cascading,) = sanity.randomised_maps(model, images, [LastLayerSpy()], pairs, mode="cascading", stages=THREE_STAGES)
    spy = LastLayerSpy()
    (independent,) = sanity.randomised_maps(model, images, [spy], pairs, mode="independent", stages=THREE_STAGES)
    np.testing.assert_array_equal(cascading["cascading:top"].maps, independent["independent:top"].maps)
    passed_on, first = LastLayerSpy(), [cascading["cascading:top"]]
    (reused,) = sanity.randomised_maps(
        model, images, [passed_on], pairs, mode="independent", stages=THREE_STAGES, first_stage=first
    )
    assert list(reused) == list(independent) and reused["independent:top"] is cascading["cascading:top"]
    for key in ("independent:middle", "independent:bottom"):
        np.testing.assert_array_equal(reused[key].maps, independent[key].maps)
    # two models explained instead of three (the spy sees each model once per distinct pathology of the pairs)
    assert (len(spy.seen), len(passed_on.seen)) == (3 * 2, 2 * 2)
    with pytest.raises(ValueError, match="2 sets of maps for 1 explainers"):
        sanity.randomised_maps(model, images, [spy], pairs, stages=THREE_STAGES, first_stage=first * 2)

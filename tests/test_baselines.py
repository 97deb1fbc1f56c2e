"""Model-free baselines: the finding prior, a random map and an edge map, explained and scored like methods."""

import numpy as np
import pytest
import torch

from helpers import explainers, labels, metrics


def test_baselines_are_registered_and_unsigned():
    for name in ("prior", "random", "edge"):
        explainer = explainers.create(name)
        assert explainer.name == name and not explainer.signed


def test_prior_map_is_the_same_for_every_image(model, images):
    prior = np.random.default_rng(0).random((14, 64, 64)).astype(np.float32)
    result = explainers.create("prior", prior=prior).explain(model, images, ["Edema", "Fracture"])
    assert result.maps.shape == (3, 2, 64, 64)
    for i in range(3):
        assert np.array_equal(result.maps[i, 0], prior[labels.PATHOLOGIES.index("Edema")])
        assert np.array_equal(result.maps[i, 1], prior[labels.PATHOLOGIES.index("Fracture")])


def test_prior_map_needs_a_prior_of_the_input_size(model, images):
    with pytest.raises(ValueError, match="Run.explainer\\('prior'\\)"):
        explainers.create("prior").explain(model, images)
    with pytest.raises(ValueError, match="expected \\(14, 64, 64\\)"):
        explainers.create("prior", prior=np.zeros((14, 32, 32))).explain(model, images)


def test_random_map_is_seeded_per_image_not_per_batch(model, images):
    whole = explainers.create("random", batch_size=3).explain(model, images).maps
    one_by_one = explainers.create("random", batch_size=1).explain(model, images).maps
    assert np.array_equal(whole, one_by_one)
    other_seed = explainers.create("random", seed=1).explain(model, images).maps
    assert not np.array_equal(whole, other_seed)
    assert not np.array_equal(whole[0, 0], whole[0, 1])  # a fresh draw per pathology


def test_random_map_of_a_pathology_does_not_depend_on_the_others_asked_for(model, images):
    """A check that explains a few (image, pathology) pairs (the sanity checks) sees the maps ``explain`` made."""
    explainer = explainers.create("random")
    every = explainer.explain(model, images)
    two = explainer.explain(model, images, ["Fracture", "Edema"])
    pairs = explainer.explain_pairs(model, images, [(0, "Edema"), (0, "Fracture"), (2, "Edema")])
    for i, pathology in [(0, "Edema"), (0, "Fracture"), (2, "Edema")]:
        expected = every.maps[i, labels.PATHOLOGIES.index(pathology)]
        assert np.array_equal(two.maps[i, two.pathologies.index(pathology)], expected)
        assert np.array_equal(pairs.maps[i, pairs.pathologies.index(pathology)], expected)


def test_edge_map_lies_on_the_image_edges(model):
    step = torch.zeros(1, 3, 64, 64)
    step[..., 32:] = 1.0  # a vertical edge between columns 31 and 32
    maps = explainers.create("edge").explain(model, step, ["Edema"]).maps[0, 0]
    assert set(np.unique(np.argmax(maps, axis=1))) <= {31, 32}
    assert maps[:, :28].max() == 0 and maps[:, 36:].max() == 0


def test_prior_beats_random_on_a_mask_it_has_seen(model, images):
    """The prior of a finding always drawn at one place localises it; uniform noise does not."""
    masks = np.zeros((3, 14, 64, 64), bool)
    k = labels.PATHOLOGIES.index("Edema")
    masks[:, k, 10:30, 10:30] = True
    prior = masks.mean(axis=0).astype(np.float32)
    maps = {
        name: explainers.create(name, **({"prior": prior} if name == "prior" else {})).explain(model, images, ["Edema"])
        for name in ("prior", "random")
    }
    scores = {name: metrics.score(m, masks, granularity=False, class_sensitivity=False) for name, m in maps.items()}
    mass = {name: s[s["metric"] == "mass_accuracy"]["value"].mean() for name, s in scores.items()}
    assert mass["prior"] == pytest.approx(1.0) and mass["random"] < 0.2

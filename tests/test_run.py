"""``Run``: every artifact path under runs/<profile>/, each stage loaded through it, clear errors for missing stages."""

import re

import numpy as np
import pytest

from helpers import config, data, explainers, heatmaps, labels
from helpers.run import ExplainedBatch, Run


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    return tmp_path


def test_paths_live_under_the_run_folder(runs):
    run = Run("smoke", device="cpu")
    assert run.root == runs / "smoke"
    for path in (
        run.data_root,
        run.figures_dir,
        run.model_dir,
        run.predictions_path,
        run.heatmap_path("gradcam"),
        run.table_path("scores"),
    ):
        assert runs / "smoke" in path.parents
    assert run.heatmap_path("lrp_epsilon_plus_flat").name == "lrp_epsilon_plus_flat.npz"


def test_missing_stages_name_the_notebook_to_run(runs):
    run = Run("smoke", device="cpu")
    with pytest.raises(FileNotFoundError, match="01_prepare_data"):
        run.data()
    with pytest.raises(FileNotFoundError, match="02_train"):
        run.model()
    with pytest.raises(FileNotFoundError, match="notebook 05"):
        run.table("scores")


def test_real_data_needs_its_root(runs, monkeypatch):
    monkeypatch.delenv(config.CHEXPERT_ROOT_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="CHEXPERT_ROOT"):
        _ = Run("paper", device="cpu").data_root


@pytest.mark.slow
def test_a_tiny_run_end_to_end(runs):
    """Prepare, train one epoch, explain: the batch spans patients, files carry the explainer's name."""
    profile = config.load_profile("smoke", n_train=80, n_valid=40, n_explain=6)
    run = Run(profile, device="cpu")
    run._loaded["explained"] = "loaded from data written before"
    run.prepare(progress=False)
    assert "explained" not in run._loaded  # the data may have been written again: nothing stale stays
    model, meta, _ = run.train(progress=False)
    batch = run.explained()
    assert len(batch) == 6 and len(set(batch.patients)) >= 4  # sampled across patients, not the first rows
    assert all(batch.codes[i, labels.PATHOLOGIES.index(p)] == 1 for i, p in batch.pairs())
    assert batch.masks.shape == (6, 14, 64, 64) and batch.inputs.shape == (6, 3, 64, 64)
    result = run.explain("gradcam")
    assert run.heatmap_path("gradcam").is_file() and result.method == "gradcam"
    again = Run(profile, device="cpu")  # a fresh Run finds everything the first one wrote
    assert again.explained().image_ids == batch.image_ids
    assert np.array_equal(again.heatmaps(["gradcam"])["gradcam"].maps, result.maps)
    with pytest.raises(FileNotFoundError, match="03 for LRP"):
        again.heatmaps(["lrp_epsilon_plus_flat"])
    with pytest.MonkeyPatch.context() as patch:  # the prior baseline: mean training masks, cached
        patch.setattr(data.prepared, "mask_stack", lambda *a: pytest.fail("a stack of the training split's masks"))
        prior = run.finding_prior()
    assert prior.shape == (14, 64, 64) and prior.max() <= 1 and prior[labels.PATHOLOGIES.index("No Finding")].max() == 0
    assert np.array_equal(Run(profile, device="cpu").explainer("prior").prior, prior)
    scales = []  # the batch on a GPU is sized for the explainer's own memory needs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(explainers, "batch_size_for", lambda *args, scale: scales.append(scale) or args[2])
        assert [run.explainer(name).batch_size for name in ("gradcam++", "gradcam")] == [8, 8]
    assert scales == [1.6, 1.0]
    pairs = batch.pairs()[:3]
    counterfactual = run.counterfactuals(pairs)  # each image again without its finding, normalised like the inputs
    assert counterfactual.shape == (3, 3, 64, 64)
    changed = (counterfactual - batch.inputs[[i for i, _ in pairs]]).abs().amax(dim=(1, 2, 3))
    assert (changed > 0).all()
    # a model trained again since (another checkpoint) does not inherit the saved maps of the first
    retrained = Run(profile, device="cpu")
    retrained._loaded["model"] = (model, {**meta, "epoch": meta["epoch"] + 1, "val_mean_auroc": 0.5})
    with pytest.raises(ValueError, match="made by another model"):
        retrained.heatmaps(["gradcam"])
    remade = retrained.explain("gradcam", reuse=True)
    assert remade.params["model"] != result.params["model"] and retrained.heatmaps(["gradcam"])
    # maps saved with other settings under the same name are not reused as the default explainer's
    default = run.explain("random")
    assert np.array_equal(run.explain("random", reuse=True).maps, default.maps)
    other = run.explain("random", seed=5)
    assert not np.array_equal(other.maps, default.maps)
    with pytest.raises(ValueError, match=r"random\.npz holds maps made with settings other than 'random'.*'seed': 5"):
        run.heatmaps(["random"])  # 05 and 06 would explain again with the defaults: two methods under one name
    assert np.array_equal(run.explain("random", reuse=True).maps, default.maps)
    assert run.heatmaps(["random"])
    run.explain("random", seed=run.explainer("random").params["seed"])  # the default, restated
    assert run.heatmaps(["random"])
    # maps made before a default changed (here: the seed, in the saved file) are another method's as well
    saved = heatmaps.HeatmapSet.load(run.heatmap_path("random"))
    saved.params["seed"] += 1
    saved.save(run.heatmap_path("random"))
    with pytest.raises(ValueError, match=re.escape("other than 'random''s present defaults ({'seed': (1, 0)})")):
        run.heatmaps(["random"])
    assert np.array_equal(run.explain("random", reuse=True).maps, default.maps)  # remade, not reused
    assert run.heatmaps(["random"])


def test_balanced_pairs_take_the_findings_in_turns_one_pair_per_image():
    """Support Devices on every image must not fill the sample: each finding gets its turn, images are not reused."""
    n = 12
    codes = np.zeros((n, 14))
    codes[:, labels.PATHOLOGIES.index("Support Devices")] = 1
    codes[:4, labels.PATHOLOGIES.index("Edema")] = 1
    codes[4:6, labels.PATHOLOGIES.index("Fracture")] = 1
    ids, patients = [f"i{k}" for k in range(n)], [f"p{k}" for k in range(n)]
    batch = ExplainedBatch(list(range(n)), ids, patients, None, None, codes, None)
    chosen = batch.balanced_pairs(6, seed=0)
    findings = [p for _, p in chosen]
    assert len(chosen) == 6 and len({i for i, _ in chosen}) == 6
    assert findings.count("Edema") == 2 and findings.count("Fracture") == 2 and findings.count("Support Devices") == 2
    assert batch.balanced_pairs(6, seed=0) == chosen
    assert len(batch.balanced_pairs(100, seed=0)) == n  # one per image at most


def test_overrides_replace_settings_of_the_named_profile_in_its_own_folder(runs):
    run = Run("smoke", device="cpu", overrides={"n_explain": 3, "deterministic": False})
    assert (run.profile.n_explain, run.profile.train.deterministic) == (3, False)
    assert run.root == runs / "smoke" and run.profile.name == "smoke"
    assert Run("smoke", device="cpu", overrides={}).profile == config.load_profile("smoke")
    with pytest.raises(ValueError, match="max_epoch.*max_epochs"):  # named as load_profile names it
        Run("smoke", device="cpu", overrides={"max_epoch": 2})
    with pytest.raises(ValueError, match="Profile object"):
        Run(config.load_profile("smoke"), device="cpu", overrides={"n_explain": 3})


def test_a_missing_artifact_names_the_notebook_that_makes_it(runs):
    run = Run("smoke", device="cpu")
    with pytest.raises(FileNotFoundError, match="run notebook 05"):
        run.table("scores")
    with pytest.raises(FileNotFoundError, match="run notebook 06"):
        run.table("known_truth_use")
    made_by = {
        name: Run._explaining_notebook(name) for name in ("lrp_z", "gradcam_4x", "eigencam", "smoothgrad", "edge")
    }
    assert made_by == {
        "lrp_z": "notebook 03",
        "gradcam_4x": "notebook 04",
        "eigencam": "notebook 04",
        "smoothgrad": "notebook 05",
        "edge": "notebook 05",
    }
    assert Run._explaining_notebook("my_method") == "the notebook that explains with it"

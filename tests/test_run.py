"""``Run``: every artifact path under runs/<profile>/, each stage loaded through it, clear errors for missing stages."""

import numpy as np
import pytest

from helpers import config, labels
from helpers.run import Run


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
    run.prepare(progress=False)
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

"""``helpers.study``, notebook 05's steps: the same scores in parallel, and real data without the phantom's extras."""

import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import config, metrics, phantom, study
from helpers.run import Run


def _paper_like_run(root, runs, monkeypatch) -> Run:
    """The paper profile (real-data layout from ``CHEXPERT_ROOT``), shrunk to a compact net at 64 px."""
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(runs))
    monkeypatch.setenv(config.CHEXPERT_ROOT_ENV, str(root))
    profile = config.load_profile(
        "paper",
        arch="densenet_compact",
        image_size=64,
        weights=None,
        n_explain=5,
        min_positives=0,
        max_epochs=1,
        num_workers=0,
        n_boot=20,
    )
    run = Run(profile, device="cpu")
    run.prepare(progress=False)
    run.train(progress=False)
    return run


@pytest.fixture(scope="module")
def non_square_phantom(tmp_path_factory):
    """CheXpert-small's shape in miniature: 64 wide, 80 high."""
    root = tmp_path_factory.mktemp("tall") / "CheXpert-v1.0-small"
    return phantom.generate(root, 60, 64, seed=5, n_valid=30, min_prevalence=0.2, height=80)


@pytest.mark.slow
def test_a_phantom_read_as_real_data_renders_counterfactuals_at_the_input_size(
    non_square_phantom, tmp_path, monkeypatch
):
    run = _paper_like_run(non_square_phantom, tmp_path, monkeypatch)
    assert run.has_counterfactuals()
    batch = run.explained()
    pairs = batch.balanced_pairs(3)
    counterfactual = run.counterfactuals(pairs)  # raises if the factual render differs from the decoded file
    assert counterfactual.shape == (3, 3, 64, 64)
    sets = {name: run.explain(name) for name in ("gradcam", "prior", "random")}
    assert study.available_baselines(run, ["prior", "random"]) == ["prior", "random"]
    rows = study.counterfactual_faithfulness(run, run.model()[0], sets, ["gradcam", "random"], 3, 5)
    assert set(rows["method"]) == {"gradcam", "random"} and rows["metric"].str.startswith("cf_").all()


@pytest.mark.slow
def test_real_data_without_training_masks_or_manifest_drops_the_prior_and_the_counterfactual(
    non_square_phantom, tmp_path, monkeypatch, capsys
):
    real = tmp_path / "real" / "CheXpert-v1.0-small"
    shutil.copytree(non_square_phantom, real)
    (real / phantom.MANIFEST).unlink()  # no scenes to replay: radiographs
    (real / "gt_segmentations.json").unlink()  # no masks of training images (CheXlocalize has test masks only)
    run = _paper_like_run(real, tmp_path / "runs", monkeypatch)
    assert not run.has_counterfactuals()
    assert study.available_baselines(run, ["prior", "random", "edge"]) == ["random", "edge"]
    assert "'prior' left out" in capsys.readouterr().out
    sets = {"gradcam": run.explain("gradcam")}
    rows = study.counterfactual_faithfulness(run, run.model()[0], sets, ["gradcam"], 3, 5)
    assert rows.empty and "not a chexplain phantom" in capsys.readouterr().out
    assert study.reference_method(["gradcam", "random"]) == "random"
    assert study.reference_method(["gradcam", "prior", "random"]) == "prior"
    # no masks (CheXpert without CheXlocalize): nothing to compare on localisation, granularity's spread still
    batch = run.explained()
    patients = dict(zip(batch.image_ids, batch.patients))
    sets["random"] = run.explain("random")
    scores = study.score_methods(sets, batch, n_jobs=1)
    versus = study.compare_methods(scores, [("gradcam", "random")], study.LOCALISATION_METRICS, 20, patients)
    assert versus.empty and "no such scores for gradcam, random" in capsys.readouterr().out
    assert metrics.against_reference(versus, study.LOCALISATION_METRICS, reference="random").empty
    spread = study.compare_methods(scores, [("random", "gradcam")], ["gini"], 20, patients)
    assert spread["metric"].tolist() == ["gini"] and spread["outcome"].isna().all()  # gini: no better direction


def test_scores_in_parallel_equal_the_scores_one_after_the_other(model, images):
    from helpers import explainers
    from helpers.run import ExplainedBatch

    rng = np.random.default_rng(0)
    codes = (rng.random((3, 14)) < 0.4).astype(float)
    masks = np.zeros((3, 14, 64, 64), bool)
    masks[:, :, 10:30, 20:50] = codes[:, :, None, None] == 1
    batch = ExplainedBatch([0, 1, 2], ["a", "b", "c"], ["p1", "p2", "p3"], images, None, codes, masks)
    sets = {n: explainers.create(n).explain(model, images, image_ids=batch.image_ids) for n in ("gradcam", "edge")}
    parallel = study.score_methods(sets, batch, n_jobs=2)
    serial = pd.concat([metrics.score(s, masks, codes=codes) for s in sets.values()], ignore_index=True)
    serial = pd.concat([serial, metrics.multi_finding_rows(serial, codes, batch.image_ids)], ignore_index=True)
    pd.testing.assert_frame_equal(parallel, serial)
    assert set(parallel["method"]) == {"gradcam", "edge"} and (parallel["metric"] == "hit_multi").any()

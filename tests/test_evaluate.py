import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers import evaluate, labels, train


def _scores(seed=0, n=200):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 14)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # a pathology with no positives
    probs = np.clip(targets * 0.3 + rng.random((n, 14)) * 0.7, 0, 1)
    return probs, targets


@pytest.mark.slow
def test_evaluate_matches_scikit_learn_and_reports_missing():
    probs, targets = _scores()
    table = evaluate.evaluate(probs, targets, n_boot=200, seed=1)
    auroc = table[table["metric"] == "AUROC"].set_index("pathology")
    ap = table[table["metric"] == "AP"].set_index("pathology")
    for j, name in enumerate(labels.PATHOLOGIES):
        if j == 5:
            assert np.isnan(auroc.loc[name, "value"]) and auroc.loc[name, "note"] == "missing: no positives"
            continue
        assert auroc.loc[name, "value"] == pytest.approx(roc_auc_score(targets[:, j], probs[:, j]))
        assert ap.loc[name, "value"] == pytest.approx(average_precision_score(targets[:, j], probs[:, j]))
        assert auroc.loc[name, "ci_low"] < auroc.loc[name, "value"] < auroc.loc[name, "ci_high"]
    defined = [auroc.loc[n, "value"] for n in labels.PATHOLOGIES if n != labels.PATHOLOGIES[5]]
    assert auroc.loc["macro (14)", "value"] == pytest.approx(np.mean(defined))
    competition = [auroc.loc[n, "value"] for n in labels.COMPETITION]  # Edema (no positives) is NaN
    assert auroc.loc["macro (competition)", "value"] == pytest.approx(np.nanmean(competition))
    again = evaluate.evaluate(probs, targets, n_boot=200, seed=1)
    assert again.equals(table)


def test_a_macro_says_which_pathologies_it_leaves_out_and_bad_targets_are_refused():
    probs, targets = _scores()
    table = evaluate.evaluate(probs, targets, n_boot=0).set_index(["metric", "pathology"])
    edema = labels.PATHOLOGIES[5]
    assert table.loc[("AUROC", "macro (14)"), "note"] == f"mean of 13 of 14; without {edema}"
    assert table.loc[("AP", "macro (competition)"), "note"] == f"mean of 4 of 5; without {edema}"
    full = targets.copy()
    full[:10, 5] = 1
    assert (evaluate.evaluate(probs, full, n_boot=0).query("pathology.str.startswith('macro')")["note"] == "").all()
    codes = targets.copy()
    codes[:5, 0] = -1  # raw CheXpert codes: -1 would count as a negative "positive" sum, or an sklearn error
    with pytest.raises(ValueError, match=r"targets must be 0 or 1 where the mask counts them; found \[-1.0\]"):
        evaluate.evaluate(probs, codes, n_boot=0)
    masked = np.ones_like(codes)
    masked[:5, 0] = 0
    assert len(evaluate.evaluate(probs, codes, masked, n_boot=0))  # -1 where the mask leaves it out is fine
    with pytest.raises(ValueError, match="one column per pathology named"):
        evaluate.evaluate(probs, targets, pathologies=labels.COMPETITION, n_boot=0)


def test_a_macro_ci_averages_the_same_pathologies_as_its_value():
    """A rare pathology (1 positive in 100, AUROC 1) is absent from about a third of the resamples; averaging the
    others alone there would drag the interval far below the value, which always includes it."""
    rng = np.random.default_rng(0)
    n, edema, effusion = 100, labels.PATHOLOGIES.index("Edema"), labels.PATHOLOGIES.index("Pleural Effusion")
    targets, probs = np.zeros((n, 14)), rng.random((n, 14))
    targets[0, edema], probs[:, edema] = 1, np.linspace(1, 0, n)  # the one positive ranks first: AUROC 1
    targets[:, effusion] = rng.random(n) < 0.5
    table = evaluate.evaluate(probs, targets, n_boot=400, seed=3)
    auroc = table[table["metric"] == "AUROC"].set_index("pathology")
    macro = auroc.loc["macro (14)"]
    assert macro["value"] == pytest.approx((1 + auroc.loc["Pleural Effusion", "value"]) / 2)
    boots = evaluate.bootstrap_metric_matrix(probs, targets, np.ones_like(targets), 400, seed=3)[:, 0]
    both = boots[:, [edema, effusion]].mean(axis=1)
    assert np.isnan(both).mean() > 0.2  # the rare one is missing from many resamples
    assert [macro["ci_low"], macro["ci_high"]] == pytest.approx(np.nanpercentile(both, [2.5, 97.5]))
    assert macro["ci_low"] > (1 + auroc.loc["Pleural Effusion", "ci_low"]) / 2 - 0.05


def test_bootstrap_matrix_equals_scikit_learn_on_every_resample():
    rng = np.random.default_rng(4)
    n = 60
    probs = rng.random((n, 14)).round(1)  # many tied scores
    targets = (rng.random((n, 14)) < 0.15).astype(float)  # rare: some resamples lack positives
    targets[:, 3] = 0
    mask = (rng.random((n, 14)) < 0.8).astype(float)
    fast = evaluate.bootstrap_metric_matrix(probs, targets, mask, 50, seed=7)
    draws = np.random.default_rng(7)  # the same resamples, drawn as the function draws them
    for b in range(50):
        rows = draws.integers(0, n, n)
        for j in range(14):
            keep = mask[rows, j] > 0
            y, p = targets[rows][keep, j], probs[rows][keep, j]
            if 0 < y.sum() < len(y):
                assert fast[b, 0, j] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
                assert fast[b, 1, j] == pytest.approx(average_precision_score(y, p), abs=1e-12)
            else:
                assert np.isnan(fast[b]).all(axis=0)[j]
    assert np.isnan(fast[:, :, 3]).all() and np.isfinite(fast).any(axis=(0, 1)).sum() == 13


def test_the_bootstrap_draws_patients_with_all_their_images():
    """Each image twice under one patient: drawing patients gives the CIs of the single images, where drawing
    images treats the copies as independent evidence and narrows them."""
    probs, targets = _scores(seed=2, n=80)
    single = evaluate.evaluate(probs, targets, n_boot=300, seed=3)
    twice = np.repeat(probs, 2, axis=0), np.repeat(targets, 2, axis=0)
    patients = np.repeat([f"patient{i:05d}" for i in range(80)], 2)
    by_patient = evaluate.evaluate(*twice, n_boot=300, seed=3, patients=patients)
    by_image = evaluate.evaluate(*twice, n_boot=300, seed=3)
    columns = ["value", "ci_low", "ci_high"]
    assert np.allclose(by_patient[columns], single[columns], atol=1e-12, equal_nan=True)
    defined = single["value"].notna()
    width = lambda table: (table["ci_high"] - table["ci_low"])[defined].mean()  # noqa: E731
    assert width(by_image) < 0.8 * width(by_patient)
    unique = evaluate.evaluate(probs, targets, n_boot=300, seed=3, patients=[f"p{i}" for i in range(80)])
    assert unique.equals(single)  # one image per patient: the images' own bootstrap
    with pytest.raises(ValueError, match="one id per row: got 79 ids"):
        evaluate.evaluate(probs, targets, n_boot=10, patients=patients[:79:2].tolist() + ["x"] * 39)


def test_a_class_with_every_row_masked_out_is_missing_not_an_error():
    probs, targets = _scores(seed=3, n=40)
    mask = np.ones_like(targets)
    mask[:, 7] = 0
    table = evaluate.evaluate(probs, targets, mask, n_boot=20)
    row = table[(table["metric"] == "AUROC") & (table["pathology"] == labels.PATHOLOGIES[7])].iloc[0]
    assert np.isnan(row["value"]) and np.isnan(row["ci_low"]) and row["note"] == "missing: no positives"


def test_per_class_auroc_uses_only_unmasked_rows():
    probs, targets = _scores(seed=2)
    mask = np.ones_like(targets)
    mask[:100] = 0
    scores = evaluate.per_class_auroc(probs, targets, mask)
    assert scores[0] == pytest.approx(roc_auc_score(targets[100:, 0], probs[100:, 0]))
    assert np.isnan(scores[5])


class _Recorder(torch.nn.Module):
    """Logits = mean pixel per class; remembers the devices its inputs came on."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(14))
        self.devices = []

    def forward(self, x):
        self.devices.append(x.device)
        return x.mean(dim=(1, 2, 3))[:, None] * self.scale


def _dataset(n=10):
    images = torch.linspace(-2, 2, n)[:, None, None, None].expand(n, 3, 4, 4)
    return [{"image": image} for image in images]


def test_predict_returns_cpu_numpy_probabilities():
    model = _Recorder()
    probs = evaluate.predict(model, _dataset(), batch_size=4)
    assert isinstance(probs, np.ndarray) and probs.shape == (10, 14)
    assert len(model.devices) == 3
    np.testing.assert_allclose(probs[:, 0], torch.sigmoid(torch.linspace(-2, 2, 10)).numpy(), rtol=1e-5)


def test_predict_runs_in_eval_mode_and_leaves_the_callers_mode():
    model, modes = _Recorder(), []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    for training in (True, False):
        model.train(training)
        evaluate.predict(model, _dataset(), batch_size=4)
        assert model.training == training
    assert modes == [False] * 6


def test_predict_feeds_the_model_on_its_device(monkeypatch):
    """On the ``meta`` device (no GPU needed) every batch must reach the model there, and only the one exit to
    numpy may leave it (patched: meta tensors hold no data)."""
    received = []

    def to_numpy(tensor):
        received.append(tensor.device.type)
        return np.zeros(tuple(tensor.shape), np.float32)

    monkeypatch.setattr(evaluate, "to_numpy", to_numpy)
    model = _Recorder().to("meta")
    probs = evaluate.predict(model, _dataset(), batch_size=4)
    assert {d.type for d in model.devices} == {"meta"} and received == ["meta"] * 3 and probs.shape == (10, 14)


def test_save_predictions_and_summary_table(tmp_path):
    probs, targets = _scores(seed=3, n=40)
    path = evaluate.save_predictions(tmp_path / "p.csv", [f"img{i}" for i in range(40)], probs)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["image_id", *labels.PATHOLOGIES] and frame["image_id"][3] == "img3"
    np.testing.assert_allclose(frame[labels.PATHOLOGIES[2]].to_numpy(), probs[:, 2])
    summary = evaluate.summary_table(evaluate.evaluate(probs, targets, n_boot=20))
    assert list(summary.index[-2:]) == list(evaluate.REFERENCE_AUROC)
    assert (summary.loc[list(evaluate.REFERENCE_AUROC), "data"] == "other data (published)").all()
    assert summary.loc["macro (14)", "data"] == "this run"


def test_train_still_exports_the_evaluation_names():
    for name in ("predict", "save_predictions", "evaluate", "summary_table", "REFERENCE_AUROC", "per_class_auroc"):
        assert getattr(train, name) is getattr(evaluate, name)

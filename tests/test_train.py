import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers import config, data, labels, models, train


def _tiny_sets(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    codes = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, 14), p=[0.4, 0.3, 0.1, 0.2])
    targets, mask = data.apply_policy(codes, "u-ignore")
    make = lambda rows: data.ChestXrayDataset(images[rows], targets[rows], mask[rows], (0.5,) * 3, (0.25,) * 3)  # noqa: E731
    return make(slice(0, n - 8)), make(slice(n - 8, n))


def _config(**overrides):
    settings = {"image_size": 32, "batch_size": 8, "max_epochs": 2, "patience": 5, "learning_rate": 1e-3}
    return train.TrainConfig(**{**settings, **overrides})


def _fresh_model(seed=0):
    train.seed_everything(seed)
    return models.build_model("densenet_compact")


def test_masked_bce_ignores_masked_entries():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0, 1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2])
    assert torch.isclose(train.masked_bce(logits, target, weight), expected)


def test_evaluate_matches_scikit_learn_and_reports_missing():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 14)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # a pathology with no positives
    probs = np.clip(targets * 0.3 + rng.random((200, 14)) * 0.7, 0, 1)
    table = train.evaluate(probs, targets, n_boot=200, seed=1)
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
    again = train.evaluate(probs, targets, n_boot=200, seed=1)
    assert again.equals(table)


def test_resume_gives_the_same_weights_and_metrics(tmp_path):
    train_set, val_set = _tiny_sets()
    straight = train.fit(_fresh_model(), train_set, val_set, _config(), tmp_path / "a", progress=False)
    model_a = models.load_checkpoint(tmp_path / "a" / train.LAST)[0]
    first = train.fit(_fresh_model(), train_set, val_set, _config(), tmp_path / "b", progress=False, stop_after_epoch=1)
    assert len(first) == 1
    resumed = train.fit(_fresh_model(seed=123), train_set, val_set, _config(), tmp_path / "b", progress=False)
    model_b = models.load_checkpoint(tmp_path / "b" / train.LAST)[0]
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed["val_mean_auroc"].tolist() == straight["val_mean_auroc"].tolist()
    assert resumed["train_loss"].tolist() == straight["train_loss"].tolist()


def test_resume_with_other_settings_is_refused(tmp_path):
    train_set, val_set = _tiny_sets()
    train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False)
    with pytest.raises(models.CheckpointError, match="learning_rate"):
        train.fit(_fresh_model(), train_set, val_set, _config(learning_rate=0.5), tmp_path, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train_set, val_set = _tiny_sets()
    train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False)
    good = (tmp_path / train.LAST).read_bytes()
    monkeypatch.setattr(train, "masked_bce", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(train.TrainingError, match="nan at epoch 2, step 0.*last.pt"):
        train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=2), tmp_path, progress=False)
    assert (tmp_path / train.LAST).read_bytes() == good
    assert models.read_checkpoint(tmp_path / train.LAST)["meta"]["epoch"] == 1


def test_select_device_on_this_machine():
    assert train.select_device().type in {"cuda", "mps", "cpu"}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Smoke-profile data prepared in a private runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    previous = os.environ.get("CHEXPLAIN_RUNS_DIR")
    os.environ["CHEXPLAIN_RUNS_DIR"] = str(runs)
    try:
        data.prepare_profile(config.load_profile("smoke"), progress=False)
    finally:
        if previous is None:
            os.environ.pop("CHEXPLAIN_RUNS_DIR")
        else:
            os.environ["CHEXPLAIN_RUNS_DIR"] = previous
    return runs


def test_two_process_ddp_on_gloo(smoke_runs):
    env = {**os.environ, "CHEXPLAIN_RUNS_DIR": str(smoke_runs), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "helpers.train", "--profile", "smoke", "--max-epochs", "1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = smoke_runs / "smoke" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    meta = models.read_checkpoint(model_dir / train.LAST)["meta"]
    assert meta["epoch"] == 1 and meta["profile"] == "smoke"


def test_train_or_load_reuses_a_finished_run(smoke_runs, monkeypatch):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(smoke_runs))
    profile = config.load_profile("smoke", max_epochs=1)
    prepared = data.load_profile_data(profile)
    model, meta, history = train.train_or_load(profile, prepared, progress=False)
    stamp = (profile.run_dir / "model" / train.BEST).stat().st_mtime_ns
    again, _, _ = train.train_or_load(profile, prepared, progress=False)
    assert (profile.run_dir / "model" / train.BEST).stat().st_mtime_ns == stamp
    assert meta["arch"] == "densenet_compact" and len(history) == 1

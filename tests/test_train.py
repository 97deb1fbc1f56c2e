import os
import re
import socket
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import config, data, labels, models, train
from helpers.run import Run


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Training here runs on the CPU, also on a GPU machine: exact resumption and equal runs are promised there
    (CUDA adds AMP and non-deterministic kernels), and torchrun's ranks then use gloo."""
    monkeypatch.setenv(train.DEVICE_ENV, "cpu")


def _tiny_sets(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    codes = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, 14), p=[0.4, 0.3, 0.1, 0.2])
    targets, mask = data.apply_policy(codes, "u-ignore")
    mean, std = config.load_profile("smoke").mean, config.load_profile("smoke").std  # what _config's checkpoints record
    make = lambda rows: data.ChestXrayDataset(images[rows], targets[rows], mask[rows], mean, std)  # noqa: E731
    return make(slice(0, n - 8)), make(slice(n - 8, n))


def _config(**overrides):
    """The smoke profile with tiny-training settings (``_tiny_sets`` makes the data)."""
    settings = {"image_size": 32, "batch_size": 8, "max_epochs": 2, "patience": 5, "learning_rate": 1e-3}
    return config.load_profile("smoke", **{**settings, **overrides})


def _fresh_model(seed=0):
    train.seed_everything(seed)
    return models.build_model("densenet_compact")


def test_masked_bce_ignores_masked_entries():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0, 1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2])
    assert torch.isclose(train.masked_bce(logits, target, weight), expected)


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


def test_cosine_schedule_falls_to_zero_and_resumes_exactly(tmp_path):
    train_set, val_set = _tiny_sets()
    cosine = _config(schedule="cosine", max_epochs=3, learning_rate=0.01)
    straight = train.fit(_fresh_model(), train_set, val_set, cosine, tmp_path / "a", progress=False)
    # the rate epoch e trained with: 0.01 * (1 + cos(pi * (e - 1) / 3)) / 2, whatever the validation AUROC did
    assert np.allclose(straight["learning_rate"], [0.01, 0.0075, 0.0025], atol=1e-12)
    train.fit(_fresh_model(), train_set, val_set, cosine, tmp_path / "b", progress=False, stop_after_epoch=1)
    resumed = train.fit(_fresh_model(seed=5), train_set, val_set, cosine, tmp_path / "b", progress=False)
    assert resumed["learning_rate"].tolist() == straight["learning_rate"].tolist()
    assert resumed["train_loss"].tolist() == straight["train_loss"].tolist()
    with pytest.raises(ValueError, match="schedule 'linear'"):
        train.fit(_fresh_model(), train_set, val_set, _config(schedule="linear"), tmp_path / "c", progress=False)


def test_resume_with_other_settings_is_refused(tmp_path):
    train_set, val_set = _tiny_sets()
    train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False)
    with pytest.raises(models.CheckpointError, match="learning_rate"):
        train.fit(_fresh_model(), train_set, val_set, _config(learning_rate=0.5), tmp_path, progress=False)


def test_a_cosine_run_or_another_process_count_is_not_continued_with_the_restored_schedule(tmp_path, monkeypatch):
    train_set, val_set = _tiny_sets()
    cosine = _config(schedule="cosine", max_epochs=2)
    train.fit(_fresh_model(), train_set, val_set, cosine, tmp_path / "a", progress=False, stop_after_epoch=1)
    # the restored scheduler would keep T_max = 2 and the rate would climb again over epochs 3 and 4
    with pytest.raises(models.CheckpointError, match="max_epochs: checkpoint has 2, expected 4"):
        train.fit(_fresh_model(), train_set, val_set, _config(schedule="cosine", max_epochs=4), tmp_path / "a")
    plateau = _config(max_epochs=1)
    train.fit(_fresh_model(), train_set, val_set, plateau, tmp_path / "b", progress=False)
    longer = train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=2), tmp_path / "b", progress=False)
    assert len(longer) == 2  # a plateau schedule carries no length: the run may go on
    monkeypatch.setattr(train, "_world_size", lambda: 2)  # a global batch twice as large
    with pytest.raises(models.CheckpointError, match="processes: checkpoint has 1, expected 2"):
        train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=3), tmp_path / "b", progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train_set, val_set = _tiny_sets()
    train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False)
    good = (tmp_path / train.LAST).read_bytes()
    monkeypatch.setattr(train, "masked_bce", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(train.TrainingError, match="nan at epoch 2, step 0.*last.pt"):
        train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=2), tmp_path, progress=False)
    assert (tmp_path / train.LAST).read_bytes() == good
    assert models.read_checkpoint(tmp_path / train.LAST)["meta"]["epoch"] == 1


def test_select_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv(train.DEVICE_ENV, "cpu")
    assert train.select_device() == torch.device("cpu")
    monkeypatch.setenv(train.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="CHEXPLAIN_DEVICE='tpu'.*cpu"):
        train.select_device()
    missing = next((d for d in ("cuda", "mps") if not train._DEVICE_AVAILABLE[d]()), None)
    if missing:  # a device this machine lacks is an error, not a silent fall-back
        monkeypatch.setenv(train.DEVICE_ENV, missing)
        with pytest.raises(RuntimeError, match=f"no {missing} device"):
            train.select_device()
    monkeypatch.delenv(train.DEVICE_ENV)
    expected = "cuda" if torch.cuda.is_available() else "mps" if train._DEVICE_AVAILABLE["mps"]() else "cpu"
    assert train.select_device().type == expected


def test_checkpoint_metadata_records_the_settings(tmp_path):
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=1)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False)
    meta = models.read_checkpoint(tmp_path / train.BEST)["meta"]
    assert {k: meta[k] for k in config.resume_fields(profile)} == config.resume_fields(profile)
    assert meta["learning_rate"] == 1e-3 and meta["image_size"] == 32 and meta["labels"] == list(labels.PATHOLOGIES)
    assert meta["profile"] == "smoke" and meta["max_epochs"] == 1 and meta["epoch"] == 1


def test_load_trained_checks_the_profile_and_places_the_model(tmp_path, monkeypatch):
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=1)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False)
    monkeypatch.setenv(train.DEVICE_ENV, "cpu")
    model, meta = train.load_trained(profile, tmp_path)
    assert not model.training and next(model.parameters()).device.type == "cpu" and meta["epoch"] == 1
    with pytest.raises(models.CheckpointError, match="batch_size: checkpoint has 8, expected 4"):
        train.load_trained(_config(batch_size=4), tmp_path)
    with pytest.raises(FileNotFoundError, match="02_train"):
        train.load_trained(profile, tmp_path / "elsewhere")


def test_an_interrupted_or_shorter_run_is_not_loaded_as_the_trained_model(tmp_path):
    """Notebooks 03-06 load best.pt: after notebook 02 was killed at epoch 1 of 3, or a shorter run from the command
    line, that is a model of another run, refused with what to do; once the run has ended it loads."""
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=3, patience=5)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False, stop_after_epoch=1)
    with pytest.raises(models.CheckpointError, match="stopped after epoch 1 of 3.*02_train"):
        train.load_trained(profile, tmp_path, "cpu")
    with pytest.raises(models.CheckpointError, match="max_epochs=3, the profile has 5"):
        train.load_trained(_config(max_epochs=5, patience=5), tmp_path, "cpu")
    assert not train._finished_with(tmp_path / train.LAST, profile)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False)  # resumes to the end
    assert train.load_trained(profile, tmp_path, "cpu")[1]["max_epochs"] == 3
    assert train._finished_with(tmp_path / train.LAST, profile)


def test_a_run_stopped_early_by_patience_has_ended():
    profile = _config(max_epochs=6, patience=2)
    last = lambda epoch, stale: {"meta": {"max_epochs": 6}, "state": {"epoch": epoch, "stale": stale}}  # noqa: E731
    assert train._not_ended(last(3, 2), profile) is None  # patience ran out at epoch 3
    assert train._not_ended(last(6, 0), profile) is None
    assert "stopped after epoch 3 of 6" in train._not_ended(last(3, 1), profile)


def test_a_run_that_cannot_be_continued_says_how_to_train_again(tmp_path):
    """Notebook 02 is what continues a run: "retrain (notebook 02)" from inside it would send the user in a circle."""
    train_set, val_set = _tiny_sets()
    train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False)
    with pytest.raises(models.CheckpointError, match=rf"batch_size: .*delete {re.escape(str(tmp_path))} to train"):
        train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=2, batch_size=4), tmp_path, progress=False)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Smoke-profile data prepared in a private runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    previous = os.environ.get("CHEXPLAIN_RUNS_DIR")
    os.environ["CHEXPLAIN_RUNS_DIR"] = str(runs)
    try:
        Run("smoke").prepare(progress=False)
    finally:
        if previous is None:
            os.environ.pop("CHEXPLAIN_RUNS_DIR")
        else:
            os.environ["CHEXPLAIN_RUNS_DIR"] = previous
    return runs


@pytest.mark.slow
def test_two_process_ddp_on_gloo(smoke_runs):
    env = {**os.environ, "CHEXPLAIN_RUNS_DIR": str(smoke_runs), "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a port free now (a fixed one collides with parallel runs)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "helpers.train",
        "--profile",
        "smoke",
        "--max-epochs",
        "1",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = smoke_runs / "smoke" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    meta = models.read_checkpoint(model_dir / train.LAST)["meta"]
    assert meta["epoch"] == 1 and meta["profile"] == "smoke"


@pytest.mark.slow
def test_train_or_load_reuses_a_finished_run(smoke_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(smoke_runs))
    profile = config.load_profile("smoke", max_epochs=1)
    prepared = Run(profile).data()
    model, meta, history = train.train_or_load(profile, prepared, tmp_path, progress=False)
    stamp = (tmp_path / train.BEST).stat().st_mtime_ns
    again, _, _ = train.train_or_load(profile, prepared, tmp_path, progress=False)
    assert (tmp_path / train.BEST).stat().st_mtime_ns == stamp
    assert meta["arch"] == "densenet_compact" and len(history) == 1 and not again.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    longer = config.load_profile("smoke", max_epochs=2)  # not finished for 2 epochs: resumes at epoch 2
    _, _, history = train.train_or_load(longer, prepared, tmp_path, progress=False)
    assert history["epoch"].tolist() == [1, 2]


def test_epoch_sampler_draws_what_a_seeded_random_sampler_draws():
    """One DataLoader serves every epoch, yet each epoch's order is the one a fresh seeded RandomSampler gives."""
    sampler = train.EpochSampler(50, seed=3)
    for epoch in (1, 2, 7):
        sampler.set_epoch(epoch)
        reference = torch.utils.data.RandomSampler(range(50), generator=torch.Generator().manual_seed(3000 + epoch))
        assert list(sampler) == list(reference)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first and sorted(list(sampler)) == list(range(50))


def test_raw_pixels_normalised_on_the_device_equal_the_dataset_images():
    """uint8 items normalised per batch by batch_inputs give the very numbers of the per-item lookup."""
    train_set, _ = _tiny_sets()
    loader = torch.utils.data.DataLoader(train_set, batch_size=5)
    raw_loader = torch.utils.data.DataLoader(train_set.as_raw(), batch_size=5)
    for ready, raw in zip(loader, raw_loader):
        assert raw["pixels"].dtype == torch.uint8
        inputs = data.batch_inputs(raw, torch.device("cpu"), train_set.mean, train_set.std)
        assert torch.equal(inputs, data.batch_inputs(ready, torch.device("cpu"), train_set.mean, train_set.std))


def test_sampled_splits_draw_a_seeded_subset_and_the_same_share_of_validation(monkeypatch):
    train_set, val_set = _tiny_sets(n=40)  # 32 training, 8 validation images
    assert len(train.sampled_splits(train_set, val_set, 12, seed=5)[1]) == 8  # at least 64, or all there are
    monkeypatch.setattr(train, "MIN_VALIDATION_IMAGES", 2)
    small_train, small_val = train.sampled_splits(train_set, val_set, 12, seed=5)
    assert (len(small_train), len(small_val)) == (12, 3)  # ceil(8 * 12 / 32)
    rows = small_train.images.rows
    assert list(rows) == sorted(set(rows)) and rows.max() < 32
    item = small_train[4]
    np.testing.assert_array_equal(item["image"], train_set[int(rows[4])]["image"])
    np.testing.assert_array_equal(item["target"], train_set[int(rows[4])]["target"])
    again, _ = train.sampled_splits(train_set, val_set, 12, seed=5)
    other, _ = train.sampled_splits(train_set, val_set, 12, seed=6)
    assert list(again.images.rows) == list(rows) and list(other.images.rows) != list(rows)
    assert train.sampled_splits(train_set, val_set, 32, seed=5) == (train_set, val_set)  # already that small


def test_a_checkpoint_recording_a_setting_the_profile_leaves_at_its_default_does_not_match():
    expected = config.resume_fields(_config())
    assert models.meta_mismatches({**expected, "train_images": 40}, **expected) == [
        "train_images: checkpoint has 40, expected None"
    ]
    assert models.meta_mismatches({**expected, "schedule": "cosine"}, **expected) == [
        "schedule: checkpoint has 'cosine', expected 'plateau'"
    ]
    assert models.meta_mismatches({**expected, "schedule": "plateau"}, **expected) == []


def test_train_images_is_a_resume_field_only_when_set():
    assert "train_images" not in config.resume_fields(_config())
    assert config.resume_fields(_config(train_images=100))["train_images"] == 100
    with pytest.raises(ValueError, match="train_images must be a positive number of images or None, not 0"):
        _config(train_images=0)


@pytest.mark.slow
def test_shuffled_label_model_trains_on_at_most_the_images_asked_for(smoke_runs, monkeypatch, capsys):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(smoke_runs))
    run, fitted = Run("smoke"), []
    fit = train.fit
    monkeypatch.setattr(
        train,
        "fit",
        lambda model, train_set, val_set, *a, **k: (
            fitted.append((len(train_set), len(val_set))) or fit(model, train_set, val_set, *a, **k)
        ),
    )
    _, meta = run.shuffled_label_model(1, images=40, progress=False)
    assert fitted == [(40, 25)]  # of 215 and 25: the share (5) is below the floor of 64, so all 25
    history = pd.read_csv(run.folder("model_shuffled") / "history.csv")
    assert meta["train_images"] == 40 and meta["processes"] == 1 and history["epoch"].tolist() == [1]
    stamp = (run.folder("model_shuffled") / train.BEST).stat().st_mtime_ns
    run.shuffled_label_model(1, images=40, progress=False)  # the same settings: loaded, not trained again
    assert (run.folder("model_shuffled") / train.BEST).stat().st_mtime_ns == stamp
    _, meta = run.shuffled_label_model(1, images=10_000, progress=False)  # more than the split: every image
    assert "train_images" not in meta and meta["epoch"] == 1  # trained again, not the 40-image model
    assert "train_images: checkpoint has 40, expected None): training it again" in capsys.readouterr().out


def test_learning_rate_follows_the_linear_rule_only_where_the_profile_states_it():
    assert _config(batch_size=8).train.effective_learning_rate() == pytest.approx(1e-3)  # no rule: as given
    paper, large = config.load_profile("paper").train, config.load_profile("paper-batch64").train
    assert paper.effective_learning_rate() == pytest.approx(1e-4)
    assert large.batch_size == 64 and large.effective_learning_rate() == pytest.approx(4e-4)
    assert large.effective_learning_rate(processes=2) == pytest.approx(8e-4)  # 2 x 64 images a step
    assert "lr_reference_batch" not in config.resume_fields(config.load_profile("paper"))  # its checkpoints stay valid
    assert config.resume_fields(config.load_profile("paper-batch64"))["lr_reference_batch"] == 16
    with pytest.raises(ValueError, match="lr_reference_batch must be a positive number"):
        _config(lr_reference_batch=0)


def test_training_starts_at_the_rules_learning_rate(tmp_path):
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=1, lr_reference_batch=4)  # batch 8: twice the reference
    history = train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False)
    assert history["learning_rate"].iloc[0] == pytest.approx(2e-3)


def test_training_runs_where_it_is_told_without_asking_for_the_best_device(tmp_path, monkeypatch):
    def refuse():
        raise AssertionError("select_device was consulted although a device was given")

    monkeypatch.setattr(train, "select_device", refuse)
    train_set, val_set = _tiny_sets()
    history = train.fit(
        _fresh_model(), train_set, val_set, _config(max_epochs=1), tmp_path, progress=False, device="cpu"
    )
    assert len(history) == 1
    model, _ = train.load_trained(_config(max_epochs=1), tmp_path, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_a_model_trained_on_other_data_is_neither_continued_nor_loaded_nor_counted_as_finished(tmp_path):
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=1)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False, data="a" * 16)
    meta = models.read_checkpoint(tmp_path / train.LAST)["meta"]
    assert meta["data"] == "a" * 16
    assert train.load_trained(profile, tmp_path, "cpu", data="a" * 16)[1]["data"] == "a" * 16
    assert train._finished_with(tmp_path / train.LAST, profile, "a" * 16)
    assert not train._finished_with(tmp_path / train.LAST, profile, "b" * 16)  # prepared again since
    with pytest.raises(models.CheckpointError, match="trained on other data"):
        train.load_trained(profile, tmp_path, "cpu", data="b" * 16)
    with pytest.raises(models.CheckpointError, match="data: checkpoint has 'aaaa"):
        train.fit(_fresh_model(), train_set, val_set, _config(max_epochs=2), tmp_path, progress=False, data="b" * 16)
    assert train.load_trained(profile, tmp_path, "cpu")[0] is not None  # no fingerprint given: nothing to compare
    assert train.discard_other_settings(tmp_path, profile, "b" * 16) and not (tmp_path / train.LAST).exists()


def test_last_checkpoint_carries_the_amp_loss_scale_and_a_resume_restores_it(tmp_path):
    train_set, val_set = _tiny_sets()
    profile = _config(max_epochs=1)
    train.fit(_fresh_model(), train_set, val_set, profile, tmp_path, progress=False)
    payload = models.read_checkpoint(tmp_path / train.LAST)
    assert payload["scaler"] == {}  # AMP is off on the CPU: nothing to carry
    payload["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    torch.save(payload, tmp_path / train.LAST)  # as a CUDA run saves it

    class Scaler:
        loaded = None

        def load_state_dict(self, state):
            Scaler.loaded = state

    model = _fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=profile.train.learning_rate)
    stateful = (optimizer, train._scheduler(optimizer, profile.train), Scaler())
    train._restore(tmp_path / train.LAST, model, stateful, profile, 1, None)
    assert Scaler.loaded["scale"] == 1024.0


def test_sets_normalised_otherwise_than_the_checkpoint_records_are_refused(tmp_path):
    train_set, val_set = _tiny_sets()
    other = data.ChestXrayDataset(val_set.images, val_set.targets, val_set.loss_mask, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match=r"val_set normalises with mean \[0.5, 0.5, 0.5\]"):
        train.fit(_fresh_model(), train_set, other, _config(max_epochs=1), tmp_path, progress=False)
    assert not (tmp_path / train.LAST).exists()


def test_a_validation_split_without_a_defined_auroc_is_refused_before_training(tmp_path):
    train_set, val_set = _tiny_sets()
    blank = data.ChestXrayDataset(
        val_set.images, np.zeros_like(val_set.targets), np.ones_like(val_set.loss_mask), val_set.mean, val_set.std
    )
    with pytest.raises(train.TrainingError, match=r"validation split \(8 images\) has no pathology with both"):
        train.fit(_fresh_model(), train_set, blank, _config(max_epochs=1), tmp_path, progress=False)
    assert not (tmp_path / train.LAST).exists()


def test_deterministic_kernels_are_a_speed_setting_the_training_applies(tmp_path, monkeypatch):
    """On the CPU the weights are the same with and without deterministic kernels (so the setting is no resume
    field); a checkpoint records it, and training switches torch to it before building the model."""
    train_set, val_set = _tiny_sets()
    weights = []
    for deterministic in (True, False):
        profile = _config(max_epochs=1, deterministic=deterministic)
        train.seed_everything(0, deterministic)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        model = models.build_model("densenet_compact")
        train.fit(model, train_set, val_set, profile, tmp_path / str(deterministic), progress=False)
        payload = models.read_checkpoint(tmp_path / str(deterministic) / train.LAST)
        assert payload["meta"]["deterministic"] is deterministic
        weights.append(payload["state_dict"])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    assert config.resume_fields(_config(deterministic=False)) == config.resume_fields(_config())

    seen = []

    def record_and_stop(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", record_and_stop)
    splits = dict(zip(("train", "val"), _tiny_sets()))
    prepared = types.SimpleNamespace(dataset=lambda name, *_: splits[name], fingerprint=None)
    for deterministic in (False, True):
        with pytest.raises(KeyboardInterrupt):
            train._train(_config(deterministic=deterministic), prepared, tmp_path, tmp_path / "h.csv", False)
    assert seen == [False, True]  # and the process is left with deterministic kernels, as the other tests expect

from pathlib import Path

import pytest

from helpers import config, labels, paths


def test_pathologies_are_chexpert_csv_columns_in_order(real_frame):
    assert list(real_frame.columns[5:]) == list(labels.PATHOLOGIES)
    assert list(real_frame.columns[:5]) == list(labels.META_COLUMNS)
    assert set(labels.COMPETITION) <= set(labels.PATHOLOGIES) and len(labels.COMPETITION) == 5


def test_pathology_indices_and_unknown_name():
    assert labels.pathology_indices(["Cardiomegaly", "No Finding"]) == [2, 0]
    assert labels.pathology_indices(None) == list(range(14))
    assert labels.pathology_indices(name for name in ["Edema", "Atelectasis"]) == [5, 8]  # a generator, read once
    with pytest.raises(ValueError, match="Cardiomegally"):
        labels.pathology_indices(["Cardiomegally"])


def test_profile_from_argument_environment_and_default(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    assert config.load_profile().name == "default"
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.load_profile().name == "smoke"
    assert config.load_profile("paper").name == "paper"
    assert config.load_profile("smoke", image_size=32).image_size == 32


def test_unknown_profile_or_field_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        config.load_profile("fast")
    with pytest.raises(ValueError, match="imagesize"):
        config.load_profile("smoke", imagesize=3)


def test_paper_profile_reads_chexpert_root(monkeypatch, tmp_path):
    from helpers.run import Run

    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv(config.CHEXPERT_ROOT_ENV, str(tmp_path))
    assert Run("paper", device="cpu").data_root == tmp_path.resolve()


def test_paths_come_from_the_package_and_runs_dir_is_per_profile(monkeypatch, tmp_path):
    assert paths.PROJECT_ROOT == Path(paths.__file__).resolve().parent.parent
    assert (paths.NOTEBOOKS_DIR / "01_prepare_data.ipynb").is_file()
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    assert paths.run_dir("smoke") == tmp_path / "smoke"
    assert paths.FIGURES_DIR == paths.PROJECT_ROOT / "figures"


@pytest.mark.parametrize("value", ["", "~/chexplain-runs", "elsewhere/runs"], ids=["empty", "home", "relative"])
def test_runs_dir_does_not_depend_on_the_working_directory(monkeypatch, tmp_path, value):
    """papermill runs the notebooks in notebooks/, the Makefile and scripts in the repository: one folder for all."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", value)
    expected = {
        "": paths.PROJECT_ROOT / "runs",
        "~/chexplain-runs": tmp_path / "chexplain-runs",
        "elsewhere/runs": paths.PROJECT_ROOT / "elsewhere" / "runs",
    }[value]
    seen = set()
    for folder in (paths.PROJECT_ROOT, paths.NOTEBOOKS_DIR, tmp_path):
        monkeypatch.chdir(folder)
        seen.add(paths.runs_root())
    assert seen == {expected.resolve()}


def test_profiles_keep_their_settings():
    smoke, default, paper = (config.PROFILES[name] for name in ("smoke", "default", "paper"))
    assert (smoke.image_size, smoke.n_train, smoke.n_valid, smoke.n_explain, smoke.n_boot) == (64, 240, 80, 4, 50)
    assert smoke.train == config.TrainSettings(max_epochs=1, batch_size=16, learning_rate=1e-3)
    assert (default.image_size, default.n_train, default.n_explain, default.min_prevalence) == (96, 3000, 32, 0.1)
    assert (default.min_positives, smoke.min_positives) == (20, 0)
    assert default.train == config.TrainSettings(
        learning_rate=3e-3, batch_size=32, max_epochs=12, patience=12, schedule="cosine"
    )
    assert (paper.data_source, paper.image_size, paper.n_explain) == ("chexpert", 224, 32)
    assert paper.train == config.TrainSettings(
        arch="densenet121",
        weights="imagenet",
        policy="u-zeros",
        batch_size=16,
        learning_rate=1e-4,
        max_epochs=5,
        patience=3,
        lr_patience=1,
        lr_factor=0.1,
        num_workers=4,
    )
    assert config.TrainSettings() == config.TrainSettings(
        arch="densenet_compact",
        weights=None,
        policy="u-ignore",
        batch_size=16,
        learning_rate=1e-4,
        max_epochs=10,
        patience=3,
        schedule="plateau",
        lr_patience=1,
        lr_factor=0.1,
        num_workers=0,
    )
    assert paper.to_dict()["train"]["arch"] == "densenet121"  # plain nested data


def test_flat_overrides_reach_the_training_settings():
    profile = config.load_profile("smoke", max_epochs=2, learning_rate=0.5, image_size=32, seed=7)
    assert (profile.train.max_epochs, profile.train.learning_rate) == (2, 0.5)
    assert (profile.image_size, profile.seed) == (32, 7)
    assert profile.train.batch_size == 16 and config.PROFILES["smoke"].train.max_epochs == 1  # nothing else moved
    assert profile.train.seed is None and config.training_seed(profile) == 7  # training follows the profile's seed
    seeded = config.load_profile("smoke-seed1", seed=5)
    assert (seeded.seed, seeded.train.seed) == (5, 1)  # the profile's training seed is kept
    assert config.load_profile("smoke", train_seed=3).train.seed == 3
    nested = config.load_profile("smoke", train=config.TrainSettings(arch="resnet50"))
    assert nested.train.arch == "resnet50"
    with pytest.raises(ValueError, match="max_epoch.*max_epochs"):
        config.load_profile("smoke", max_epoch=2)


def test_resume_fields_hold_what_changes_the_weights():
    smoke = config.load_profile("smoke")
    fields = config.resume_fields(smoke)
    assert fields["labels"] == list(labels.PATHOLOGIES) and fields["mean"] == list(smoke.mean)
    assert (
        config.resume_fields(config.load_profile("smoke", max_epochs=9, num_workers=3, deterministic=False)) == fields
    )
    for change in (
        {"learning_rate": 0.5},
        {"seed": 1},
        {"image_size": 32},
        {"policy": "u-ones"},
        {"arch": "resnet50"},
        {"std": (1.0, 1.0, 1.0)},
        {"lr_factor": 0.5},
        {"schedule": "cosine"},
    ):
        assert config.resume_fields(config.load_profile("smoke", **change)) != fields, change


def test_seed_profiles_vary_training_alone():
    default, seeded = config.PROFILES["default"], config.PROFILES["default-seed1"]
    assert (seeded.seed, seeded.image_size, seeded.n_train, seeded.n_explain) == (
        default.seed,
        default.image_size,
        default.n_train,
        default.n_explain,
    )
    assert config.training_seed(default) == default.seed and config.training_seed(seeded) == 1
    assert "train_seed" not in config.resume_fields(default)  # older checkpoints stay loadable
    assert config.resume_fields(seeded)["train_seed"] == 1  # a seeded checkpoint is not taken for the default's

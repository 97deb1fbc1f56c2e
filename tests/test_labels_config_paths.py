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


def test_paper_profile_needs_chexpert_root(monkeypatch, tmp_path):
    profile = config.load_profile("paper")
    monkeypatch.delenv(config.CHEXPERT_ROOT_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="CHEXPERT_ROOT"):
        profile.data_root
    monkeypatch.setenv(config.CHEXPERT_ROOT_ENV, str(tmp_path))
    assert profile.data_root == tmp_path.resolve()


def test_paths_come_from_the_package_and_runs_dir_is_per_profile(monkeypatch, tmp_path):
    assert paths.PROJECT_ROOT == Path(paths.__file__).resolve().parent.parent
    assert (paths.NOTEBOOKS_DIR / "01_prepare_data.ipynb").is_file()
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    assert paths.run_dir("smoke") == tmp_path / "smoke"
    assert paths.figures_dir("smoke") == tmp_path / "smoke" / "figures"
    assert paths.figures_dir("default") == paths.FIGURES_DIR


def test_profile_settings_are_plain_data():
    for profile in config.PROFILES.values():
        assert profile.to_dict()["name"] == profile.name
    assert config.PROFILES["smoke"].image_size < config.PROFILES["default"].image_size

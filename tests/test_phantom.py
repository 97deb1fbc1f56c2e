import filecmp
import json
import time

import numpy as np
import pandas as pd
import pytest

from helpers import data, labels, phantom


def test_layout_is_chexpert_small(small_phantom):
    train = data.read_chexpert_csv(small_phantom / "train.csv")
    valid = data.read_chexpert_csv(small_phantom / "valid.csv")
    assert list(train.columns) == [*labels.META_COLUMNS, *labels.PATHOLOGIES]
    assert (len(train), len(valid)) == (60, 20)
    assert train["Path"].str.match(r"^CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view1_frontal\.jpg$").all()
    assert valid["Path"].str.startswith("CheXpert-v1.0-small/valid/").all()
    assert not set(data.patient_ids(train)) & set(data.patient_ids(valid))
    assert (valid[list(labels.PATHOLOGIES)] != -1).all().all(), "valid.csv has no uncertain labels, like CheXpert's"
    for path in pd.concat([train, valid])["Path"]:
        assert data.resolve_image_path(small_phantom, path).is_file()


def test_masks_json_is_chexlocalize_format_and_matches_labels(small_phantom):
    raw = json.loads((small_phantom / "gt_segmentations.json").read_text())
    frame = pd.concat([data.read_chexpert_csv(small_phantom / f) for f in ("train.csv", "valid.csv")])
    ids = data.image_ids(frame)
    assert set(raw) == set(ids)
    masks = data.load_masks(small_phantom / "gt_segmentations.json")
    for image_id, (_, row) in zip(ids, frame.iterrows()):
        assert set(raw[image_id]) == set(labels.LOCALISABLE)
        for name in labels.LOCALISABLE:
            assert raw[image_id][name]["size"] == [64, 64]
            assert isinstance(raw[image_id][name]["counts"], str)
            drawn = masks[image_id][name].any()
            assert drawn == (row[name] in (1.0, -1.0)), (image_id, name)


def test_no_finding_follows_chexpert_rule(small_phantom):
    frame = data.read_chexpert_csv(small_phantom / "train.csv")
    pathologic = frame[list(phantom.PATHOLOGIC)].isin([1.0, -1.0]).any(axis=1)
    assert ((frame["No Finding"] == 1) == ~pathologic).all()
    assert frame["No Finding"].isin([1.0]).sum() + frame["No Finding"].isna().sum() == len(frame)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    first = phantom.generate(tmp_path / "a", 12, 48, seed=5, n_valid=3)
    second = phantom.generate(tmp_path / "b", 12, 48, seed=5, n_valid=3)
    other = phantom.generate(tmp_path / "c", 12, 48, seed=6, n_valid=3)
    comparison = filecmp.dircmp(first, second)
    files = [p.relative_to(first) for p in first.rglob("*") if p.is_file()]
    assert len(files) == 12 + 3 + 4
    assert all(filecmp.cmp(first / f, second / f, shallow=False) for f in files)
    assert not comparison.left_only and not comparison.right_only
    assert (first / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


def test_batches_written_side_by_side_give_the_files_one_thread_writes(tmp_path):
    several = phantom.generate(tmp_path / "several", 50, 40, seed=5, n_valid=20, threads=4)  # 4 + 2 batches
    one = phantom.generate(tmp_path / "one", 50, 40, seed=5, n_valid=20, threads=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(several) for p in several.rglob("*") if p.is_file())
    assert all(filecmp.cmp(one / f, several / f, shallow=False) for f in files)  # the masks JSON's order included


@pytest.mark.parametrize("name", labels.LOCALISABLE)
def test_mask_covers_what_was_drawn(name):
    """Rendering with and without a finding: >= 90% of the absolute difference lies inside its mask."""
    rng = np.random.default_rng(labels.PATHOLOGIES.index(name))
    scene = phantom.sample_scene(16, rng)
    j = labels.LOCALISABLE.index(name)
    strength = np.zeros((16, len(labels.LOCALISABLE)), np.float32)
    strength[:, j] = rng.uniform(*phantom.POSITIVE_STRENGTH, 16)
    with_finding, masks = phantom.render(scene, strength, 128)
    without, _ = phantom.render(scene, np.zeros_like(strength), 128)
    difference = np.abs(with_finding - without)
    inside = (difference * masks[:, j]).sum(axis=(1, 2)) / difference.sum(axis=(1, 2))
    assert masks[:, j].any(axis=(1, 2)).all()
    assert inside.min() >= 0.9, f"{name}: worst image has {inside.min():.3f} of the change inside its mask"


def test_each_finding_owns_its_parameters_in_label_order():
    """The registry follows LOCALISABLE; each finding's parameters are its own and end up in the scene."""
    assert tuple(phantom.FINDINGS_BY_NAME) == labels.LOCALISABLE == phantom.FINDINGS
    scene = phantom.sample_scene(5, np.random.default_rng(0))
    owned = [
        set(finding.sample(phantom.scene.SceneDraws(5, np.random.default_rng(0))))
        for finding in phantom.FINDINGS_BY_NAME.values()
    ]
    for name, keys in zip(labels.LOCALISABLE, owned):
        assert keys, f"{name} samples no parameters"
        assert keys <= set(scene), name
        assert all(len(scene[key]) == 5 for key in keys), name
    assert sum(map(len, owned)) == len(set().union(*owned)), "two findings share a parameter name"
    assert not set().union(*owned) & set(phantom.PATIENT_KEYS)


def test_findings_are_subtle_and_anatomy_varies():
    rng = np.random.default_rng(0)
    scene = phantom.sample_scene(32, rng)
    normal, _ = phantom.render(scene, np.zeros((32, 13), np.float32), 64)
    assert normal.std(axis=0).mean() > 0.05, "anatomy, pose and exposure vary between images"
    assert 0.0 <= normal.min() and normal.max() <= 1.0


def test_label_statistics_follow_chexpert():
    codes = phantom.sample_labels(40_000, np.random.default_rng(0))
    stats = phantom.chexpert_stats()
    for j, name in enumerate(labels.PATHOLOGIES):
        if name == "No Finding":
            continue
        real = stats["label_rates"][name]
        assert abs((codes[:, j] == 1).mean() - real["positive"]) < 0.01, name
        assert abs((codes[:, j] == -1).mean() - real["uncertain"]) < 0.01, name
        assert abs(np.isnan(codes[:, j]).mean() - real["blank"]) < 0.015, name
    joint = (codes == 1).astype(float)
    joint = joint.T @ joint / len(codes)
    real_joint = np.asarray(stats["positive_cooccurrence"]["matrix"])
    findings = slice(1, None)
    assert np.abs(joint[findings, findings] - real_joint[findings, findings]).max() < 0.02


def test_min_prevalence_raises_rare_findings():
    codes = phantom.sample_labels(20_000, np.random.default_rng(1), min_prevalence=0.1)
    for j, name in enumerate(labels.LOCALISABLE, start=1):
        assert (codes[:, j] == 1).mean() > 0.09, name


def test_existing_phantom_is_reused_and_foreign_folder_untouched(tmp_path):
    root = phantom.generate(tmp_path / "p", 6, 48, seed=1, n_valid=2)
    stamp = (root / "train.csv").stat().st_mtime_ns
    phantom.generate(root, 6, 48, seed=1, n_valid=2)
    assert (root / "train.csv").stat().st_mtime_ns == stamp
    phantom.generate(root, 8, 48, seed=1, n_valid=2)
    assert len(pd.read_csv(root / "train.csv")) == 8
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        phantom.generate(foreign, 6, 48)
    assert (foreign / "notes.txt").read_text() == "keep"
    for other_tools_json in ("{}", "[1, 2]"):  # another tool's phantom.json: not a phantom, so not replaced
        (foreign / phantom.MANIFEST).write_text(other_tools_json)
        with pytest.raises(FileExistsError, match="not a phantom's"):
            phantom.generate(foreign, 6, 48)
        assert (foreign / "notes.txt").read_text() == "keep"
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    with pytest.raises(FileExistsError, match="a_file exists and is not a complete phantom"):
        phantom.generate(a_file, 6, 48)
    numpy_numbers = phantom.generate(tmp_path / "np", np.int64(6), np.int64(48), seed=np.int64(1), n_valid=np.int64(2))
    plain = phantom.generate(tmp_path / "plain", 6, 48, seed=1, n_valid=2)
    assert filecmp.cmp(numpy_numbers / phantom.MANIFEST, plain / phantom.MANIFEST, shallow=False)
    assert filecmp.cmp(numpy_numbers / "train.csv", plain / "train.csv", shallow=False)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = phantom.render

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(phantom.writer, "BATCH", 4)
    monkeypatch.setattr(phantom.writer, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        phantom.generate(tmp_path / "p", 12, 48)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_images"):
        phantom.generate("/nonexistent/never", 0, 64)


def test_studies_of_a_patient_share_anatomy_and_batches_keep_patients_whole():
    rng = np.random.default_rng(0)
    patient, study = phantom.patients(200, rng)
    assert (study[patient == patient[0]] == np.arange(1, (patient == patient[0]).sum() + 1)).all()
    for _start, stop in phantom.patient_batches(patient):
        assert stop == len(patient) or patient[stop] != patient[stop - 1]
    scene = phantom.study_scenes(patient, rng)
    same = patient == patient[0]
    for key in phantom.PATIENT_KEYS:
        assert np.unique(scene[key][same]).size == 1, key
    first_two = {k: v[:2] for k, v in scene.items()}
    first_two["ap"] = np.array([0.0, 0.0], np.float32)
    first_two["gain"] = first_two["gain"][:1].repeat(2)
    first_two["gamma"] = first_two["gamma"][:1].repeat(2)
    first_two["blur"] = first_two["blur"][:1].repeat(2)
    first_two["noise"] = np.zeros(2, np.float32)
    if patient[0] == patient[1]:
        images, _ = phantom.render(first_two, np.zeros((2, 13), np.float32), 64)
        assert np.allclose(images[0], images[1])


def test_only_images_larger_than_128_px_square_are_rendered_on_several_threads(monkeypatch):
    monkeypatch.setattr(phantom.writer.joblib, "cpu_count", lambda: 8)
    assert phantom.writer.default_threads((96, 96)) == phantom.writer.default_threads((128, 128)) == 1
    assert phantom.writer.default_threads((390, 320)) == 8


def test_threaded_map_keeps_order_and_stops_starting_tasks_after_an_error():
    assert list(phantom.writer.threaded_map(lambda x: x * x, range(20), threads=4)) == [x * x for x in range(20)]
    started = []

    def fail_first(item):
        started.append(item)
        if item == 0:
            raise ValueError("batch 0 failed")
        time.sleep(0.01)  # 100 of them take a second; the cancel comes within milliseconds
        return item

    with pytest.raises(ValueError, match="batch 0 failed"):
        list(phantom.writer.threaded_map(fail_first, range(100), threads=1))
    assert len(started) < 100  # the tasks not yet started were cancelled

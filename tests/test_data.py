import gzip
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import data, labels


def _write_csv(path, frame):
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def phantom_copy(small_phantom, tmp_path):
    """A writable copy of the session phantom, for tests that break it."""
    return shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")


# ------------------------------------------------------------------ CSV validation


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(data.DatasetError, match="train.csv"):
        data.read_chexpert_csv(tmp_path / "train.csv")


def test_missing_column_is_named(small_phantom, tmp_path):
    frame = pd.read_csv(small_phantom / "train.csv").drop(columns=["Edema"])
    path = _write_csv(tmp_path / "train.csv", frame)
    with pytest.raises(data.DatasetError, match=r"lacks required column\(s\) \['Edema'\]"):
        data.read_chexpert_csv(path)


def test_label_outside_allowed_codes_names_column_value_and_line(small_phantom, tmp_path):
    frame = pd.read_csv(small_phantom / "train.csv").astype({"Cardiomegaly": object})
    frame.loc[3, "Cardiomegaly"] = "2.0"
    frame.loc[5, "Cardiomegaly"] = "yes"
    path = _write_csv(tmp_path / "train.csv", frame)
    with pytest.raises(data.DatasetError, match=r"'Cardiomegaly' holds \['2.0', 'yes'\] on line\(s\) \[5, 7\]"):
        data.read_chexpert_csv(path)


def test_a_view_spelled_otherwise_names_column_value_and_line(small_phantom, tmp_path):
    """Another spelling would leave no frontal image, and an empty split, without a word."""
    frame = pd.read_csv(small_phantom / "train.csv")
    frame.loc[2, "Frontal/Lateral"] = "FRONTAL"
    path = _write_csv(tmp_path / "train.csv", frame)
    with pytest.raises(data.DatasetError, match=r"'Frontal/Lateral' holds \['FRONTAL'\] on line\(s\) \[4\]"):
        data.read_chexpert_csv(path)


def test_labels_keep_their_four_codes(small_phantom):
    frame = data.read_chexpert_csv(small_phantom / "train.csv")
    values = frame[list(labels.PATHOLOGIES)].to_numpy()
    assert set(np.unique(values[~np.isnan(values)])) <= {1.0, 0.0, -1.0}
    assert np.isnan(values).any()


def test_unparseable_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x00")
    with pytest.raises(data.DatasetError, match="train.csv"):
        data.read_chexpert_csv(path)


def test_a_gzipped_csv_cut_short_or_corrupted_names_the_file(small_phantom, tmp_path):
    """pandas decompresses by suffix: a download cut short raised a bare EOFError, corrupt bytes a zlib.error."""
    packed = gzip.compress((small_phantom / "train.csv").read_bytes())
    cut, corrupt = tmp_path / "cut.csv.gz", tmp_path / "corrupt.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    corrupt.write_bytes(packed[:20] + bytes(b ^ 0x5A for b in packed[20:200]) + packed[200:])
    for path in (cut, corrupt):
        with pytest.raises(data.DatasetError, match=f"Cannot parse {path}"):
            data.read_chexpert_csv(path)


def test_a_test_split_sharing_patients_with_training_is_refused(phantom_copy, tmp_path):
    train = pd.read_csv(phantom_copy / "train.csv")
    test = pd.read_csv(phantom_copy / "valid.csv")
    leaked = test.iloc[[0]].assign(Path=train["Path"].iat[0].replace("view1", "view9"))  # a training patient
    pd.concat([test, leaked]).to_csv(phantom_copy / "valid.csv", index=False)
    patient = train["Path"].iat[0].split("/")[2]
    expected = rf"1 patient\(s\) have images in both .*train.csv .*\(e.g. {patient}\)"
    with pytest.raises(data.DatasetError, match=expected):
        data.prepare(phantom_copy, tmp_path / "cache", 32)
    assert not (tmp_path / "cache" / "index.csv").exists()


# ------------------------------------------------------------------ policies

CODES = np.array([[1.0, 0.0, -1.0, np.nan] + [np.nan] * 10])


@pytest.mark.parametrize(
    "policy, target, mask",
    [
        ("u-ignore", [1, 0, 0, 0], [1, 1, 0, 1]),
        ("u-zeros", [1, 0, 0, 0], [1, 1, 1, 1]),
        ("u-ones", [1, 0, 1, 0], [1, 1, 1, 1]),
    ],
)
def test_policy(policy, target, mask):
    targets, loss_mask = data.apply_policy(CODES, policy)
    assert targets[0, :4].tolist() == target and loss_mask[0, :4].tolist() == mask
    assert targets.dtype == np.float32 and loss_mask.dtype == np.float32


def test_mixed_policy_per_pathology():
    codes = np.full((1, 14), -1.0)
    targets, mask = data.apply_policy(codes, {"Atelectasis": "u-ones", "Edema": "u-ignore"})
    assert targets[0, labels.PATHOLOGIES.index("Atelectasis")] == 1
    assert mask[0, labels.PATHOLOGIES.index("Edema")] == 0
    assert targets[0, labels.PATHOLOGIES.index("Cardiomegaly")] == 0  # unlisted: u-zeros
    assert mask[0, labels.PATHOLOGIES.index("Cardiomegaly")] == 1


def test_bad_policy_and_bad_codes():
    with pytest.raises(ValueError, match="u-twos"):
        data.apply_policy(CODES, "u-twos")
    with pytest.raises(ValueError, match="Cardio"):
        data.apply_policy(CODES, {"Cardio": "u-ones"})
    with pytest.raises(ValueError, match="shape"):
        data.apply_policy(np.zeros((2, 5)), "u-zeros")
    with pytest.raises(ValueError, match="2."):
        data.apply_policy(np.full((1, 14), 2.0), "u-zeros")


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("mode, dtype, top", [("L", np.uint8, 255), ("RGB", np.uint8, 255), ("I;16", np.uint16, 65535)])
def test_grayscale_rgb_and_16_bit(tmp_path, mode, dtype, top):
    ramp = (np.linspace(0, 1, 40)[None, :] * np.ones((30, 1)) * top).astype(dtype)
    image = Image.fromarray(np.stack([ramp] * 3, -1) if mode == "RGB" else ramp)
    assert image.mode == mode
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    image.save(path)
    loaded = data.load_image(path, 20)
    assert loaded.shape == (20, 20) and loaded.dtype == np.uint8
    assert loaded[:, 0].mean() < 20 and loaded[:, -1].mean() > 235


def test_truncated_jpeg_names_the_file(phantom_copy):
    file = next(phantom_copy.rglob("*.jpg"))
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(data.DatasetError, match=f"Corrupt or truncated image: {file}"):
        data.load_image(file, 32)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(data.DatasetError, match="Image file missing: .*nothing.jpg"):
        data.load_image(tmp_path / "nothing.jpg", 32)


def test_chexpert_prefix_resolves_under_any_root(tmp_path):
    path = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert data.resolve_image_path(tmp_path, path) == tmp_path / "train/patient00001/study1/view1_frontal.jpg"


def test_cache_raises_or_skips_with_an_audit(phantom_copy, tmp_path):
    frame = data.read_chexpert_csv(phantom_copy / "train.csv")
    files = [data.resolve_image_path(phantom_copy, p) for p in frame["Path"]]
    files[2].unlink()
    files[4].write_bytes(b"not a jpeg")
    with pytest.raises(data.DatasetError, match="missing"):
        data.build_image_cache(frame, phantom_copy, 32)
    images, kept, skipped = data.build_image_cache(frame, phantom_copy, 32, tmp_path / "c.npy", on_bad="skip")
    assert images.shape == (len(frame) - 2, 32, 32)
    assert skipped["Path"].tolist() == [frame["Path"].iat[2], frame["Path"].iat[4]]
    assert "missing" in skipped["problem"].iat[0] and "Corrupt" in skipped["problem"].iat[1]
    audit = data.audit_images(frame, phantom_copy)
    assert audit["Path"].tolist() == skipped["Path"].tolist()
    again, kept_again, skipped_again = data.build_image_cache(
        frame, phantom_copy, 32, tmp_path / "c.npy", on_bad="skip"
    )
    assert np.array_equal(images, again) and kept["Path"].tolist() == kept_again["Path"].tolist()


def test_cache_is_rebuilt_when_rows_change(small_phantom, tmp_path):
    frame = data.read_chexpert_csv(small_phantom / "train.csv")
    first, _, _ = data.build_image_cache(frame.iloc[:5], small_phantom, 32, tmp_path / "c.npy")
    second, _, _ = data.build_image_cache(frame.iloc[:7], small_phantom, 32, tmp_path / "c.npy")
    assert len(first) == 5 and len(second) == 7


# ------------------------------------------------------------------ masks


def test_masks_round_trip_and_align(small_phantom):
    masks = data.load_masks(small_phantom / "gt_segmentations.json")
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:45] = True
    assert np.array_equal(data.decode_mask(data.encode_mask(mask)), mask)
    frame = data.read_chexpert_csv(small_phantom / "valid.csv")
    ids = data.image_ids(frame).tolist()
    stack = data.mask_stack(masks, ids, 32)
    assert stack.shape == (len(ids), 14, 32, 32)
    assert not stack[:, 0].any(), "No Finding has no mask"
    drawn = frame[list(labels.PATHOLOGIES)].isin([1.0, -1.0]).to_numpy()
    assert np.array_equal(stack.any(axis=(2, 3))[:, 1:], drawn[:, 1:])


def test_unreadable_masks_json(tmp_path):
    with pytest.raises(data.DatasetError, match="not found"):
        data.load_masks(tmp_path / "gt.json")
    (tmp_path / "gt.json").write_text("{not json")
    with pytest.raises(data.DatasetError, match="not valid JSON"):
        data.load_masks(tmp_path / "gt.json")
    (tmp_path / "gt.json").write_text(json.dumps({"patient1_study1_view1_frontal": {"Edema": {"size": [4]}}}))
    with pytest.raises(data.DatasetError, match="'patient1_study1_view1_frontal' / 'Edema'"):
        data.load_masks(tmp_path / "gt.json")


# ------------------------------------------------------------------ prepared splits and torch


def test_prepare_splits_by_patient_and_reloads(small_phantom, tmp_path):
    prepared = data.prepare(small_phantom, tmp_path / "cache", 32, val_fraction=0.2, seed=0)
    summary = prepared.summary()
    assert summary["images"].sum() == 80 and summary.loc["test", "images"] == 20
    patients = {s: set(data.patient_ids(prepared.split(s))) for s in data.SPLITS}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    reloaded = data.load_prepared(tmp_path / "cache", 32)
    assert reloaded.index.equals(prepared.index)
    assert all(np.array_equal(reloaded.images[s], prepared.images[s]) for s in data.SPLITS)
    masks = prepared.masks("test")
    assert masks.shape == (20, 14, 32, 32) and masks.any()


def test_the_data_fingerprint_is_the_same_for_the_same_data_and_changes_with_rows_labels_or_files(
    small_phantom, tmp_path
):
    root = shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")
    first = data.prepare(root, tmp_path / "cache", 32, seed=0)
    assert len(first.fingerprint) == 16 and data.load_prepared(tmp_path / "cache", 32).fingerprint == first.fingerprint
    assert data.prepare(root, tmp_path / "cache", 32, seed=0).fingerprint == first.fingerprint  # the cache, reused
    assert data.prepare(root, tmp_path / "cache", 32, seed=1).fingerprint != first.fingerprint  # other split rows
    table = pd.read_csv(root / "train.csv")
    table.loc[0, "Edema"] = 1.0 - (table.loc[0, "Edema"] == 1.0)  # one label changed
    table.to_csv(root / "train.csv", index=False)
    relabelled = data.prepare(root, tmp_path / "cache", 32, seed=0).fingerprint
    assert relabelled != first.fingerprint
    image = data.resolve_image_path(root, table.loc[3, "Path"])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the file written again
    assert data.prepare(root, tmp_path / "cache", 32, seed=0).fingerprint not in (first.fingerprint, relabelled)


def test_load_prepared_names_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_prepare_data"):
        data.load_prepared(tmp_path, 32)


def test_load_prepared_at_another_size_names_the_missing_cache(small_phantom, tmp_path):
    data.prepare(small_phantom, tmp_path / "cache", 32, seed=0)
    with pytest.raises(FileNotFoundError, match=r"at 48 px .*train_48\.npy.* missing.*01_prepare_data"):
        data.load_prepared(tmp_path / "cache", 48)


def test_a_split_whose_every_image_is_skipped_stops_the_preparation(phantom_copy, tmp_path):
    """on_bad='skip' drops bad images; a split with none left is a layout problem (paths leading elsewhere)."""
    for path in pd.read_csv(phantom_copy / "valid.csv")["Path"]:
        data.resolve_image_path(phantom_copy, path).unlink()
    with pytest.raises(data.DatasetError, match=r"Every image of the test split was skipped \(\d+ rows\), e\.g\. .*"):
        data.prepare(phantom_copy, tmp_path / "cache", 32, on_bad="skip")


def test_an_interrupted_preparation_is_not_read_beside_the_earlier_index(small_phantom, tmp_path, monkeypatch):
    """Prepared with seed 0, then again with seed 1 until the test split fails: the train cache holds seed 1's
    images, the index (were it kept) seed 0's rows; the labels must never be paired with the wrong images."""
    data.prepare(small_phantom, tmp_path / "cache", 32, seed=0)
    build = data.prepared.build_image_cache

    def fail_on_the_test_split(rows, root, size, cache_file, on_bad):
        if cache_file.name.startswith("test_"):
            raise KeyboardInterrupt
        return build(rows, root, size, cache_file, on_bad=on_bad)

    monkeypatch.setattr(data.prepared, "build_image_cache", fail_on_the_test_split)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(small_phantom, tmp_path / "cache", 32, seed=1)
    with pytest.raises(FileNotFoundError, match=r"index\.csv missing.*01_prepare_data"):
        data.load_prepared(tmp_path / "cache", 32)


def test_an_index_out_of_step_with_a_cache_is_refused(small_phantom, tmp_path):
    prepared = data.prepare(small_phantom, tmp_path / "cache", 32, seed=0)
    train = prepared.index[prepared.index["split"] == "train"]
    swapped = prepared.index.copy()
    swapped.loc[train.index[:2], "Path"] = train["Path"].iloc[[1, 0]].to_numpy()  # two rows' images swapped
    swapped.to_csv(tmp_path / "cache" / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"does not list the images of train_32\.npy.*01_prepare_data"):
        data.load_prepared(tmp_path / "cache", 32)


def test_missing_dataset_root(tmp_path):
    with pytest.raises(data.DatasetError, match="CHEXPERT_ROOT"):
        data.prepare(tmp_path / "absent", tmp_path / "cache", 32)


def test_dataset_items_and_workers(small_phantom, tmp_path):
    prepared = data.prepare(small_phantom, tmp_path / "cache", 32)
    dataset = prepared.dataset("train", "u-ignore", mean=(0.5,) * 3, std=(0.25,) * 3)
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    expected = (torch.from_numpy(np.array(prepared.images["train"][0])).float() / 255 - 0.5) / 0.25
    assert torch.allclose(item["image"][1], expected)
    direct = data.to_model_input(torch.from_numpy(np.array(prepared.images["train"][0]))[None], (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(item["image"], direct[0])
    scaled = torch.full((1, 4, 4), 0.5)  # already in [0, 1]: dividing by 255 again would make it near-constant
    with pytest.raises(TypeError, match="takes uint8 images.*float32"):
        data.to_model_input(scaled, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(scaled, torch.full((1, 4, 4), 0.5))  # and the caller's tensor is left as it was
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2)
    batches = list(loader)
    assert sum(len(b["target"]) for b in batches) == len(dataset)
    assert batches[0]["loss_mask"].shape == (8, 14)


def test_cache_is_rebuilt_when_files_change(phantom_copy, tmp_path):
    frame = data.read_chexpert_csv(phantom_copy / "train.csv").iloc[:4]
    first, _, _ = data.build_image_cache(frame, phantom_copy, 32, tmp_path / "c.npy")
    file = data.resolve_image_path(phantom_copy, frame["Path"].iat[0])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(file)
    second, _, _ = data.build_image_cache(frame, phantom_copy, 32, tmp_path / "c.npy")
    assert first[0].max() > 0 and second[0].max() == 0
    assert np.array_equal(first[1:], second[1:])


def test_to_model_input_stays_on_the_input_device():
    # meta tensors raise when an op mixes them with a CPU tensor: a CPU-made constant would fail here
    images = torch.empty((2, 8, 8), dtype=torch.uint8, device="meta")
    inputs = data.to_model_input(images, (0.5,) * 3, (0.25,) * 3)
    assert inputs.device.type == "meta"
    assert inputs.shape == (2, 3, 8, 8) and inputs.dtype == torch.float32


# ------------------------------------------------------------------ choosing rows to explain


def _prepared_from_rows(findings_per_patient, tmp_path):
    """A PreparedData whose test split has, per patient, images with the given label row each.

    ``findings_per_patient`` maps a patient number to a list of ``{pathology: code}`` (one per image).
    """
    rows = []
    for patient, images in findings_per_patient.items():
        for study, codes in enumerate(images, start=1):
            row = {
                "Path": f"CheXpert-v1.0-small/valid/patient{patient:05d}/study{study}/view1_frontal.jpg",
                "split": "test",
                **{name: np.nan for name in labels.PATHOLOGIES},
            }
            rows.append({**row, **codes})
    index = pd.DataFrame(rows)
    index["image_id"] = data.image_ids(index)
    return data.PreparedData(index, {}, pd.DataFrame(columns=["Path", "problem", "split"]), tmp_path)


EDEMA, UNCERTAIN, NO_FINDING = {"Edema": 1.0}, {"Edema": -1.0}, {"No Finding": 1.0}


def test_sample_rows_spreads_over_patients(tmp_path):
    # patient 1 holds the first five positive rows: taking the first rows would show one patient only
    prepared = _prepared_from_rows(
        {1: [EDEMA] * 5, 2: [EDEMA], 3: [NO_FINDING, EDEMA, EDEMA], 4: [UNCERTAIN]}, tmp_path
    )
    patients = data.patient_ids(prepared.split("test"))
    assert patients.iloc[prepared.rows_with_findings("test", 3)].nunique() == 1
    three = prepared.sample_rows("test", 3, seed=0)
    assert patients.iloc[three].nunique() == 3 and three == sorted(three)
    five = prepared.sample_rows("test", 5, seed=0)
    assert patients.iloc[five].value_counts().sort_index().tolist() == [2, 1, 2]  # one each, then seconds


def test_sample_rows_is_deterministic_and_keeps_only_positive_localisable_findings(tmp_path):
    per_patient = {p: [EDEMA, NO_FINDING, UNCERTAIN, {"Cardiomegaly": 1.0}][: 1 + p % 4] for p in range(1, 13)}
    prepared = _prepared_from_rows(per_patient, tmp_path)
    rows = prepared.split("test")
    positive = (rows[list(labels.LOCALISABLE)] == 1).any(axis=1)
    samples = {seed: prepared.sample_rows("test", 4, seed=seed) for seed in range(6)}
    assert all(prepared.sample_rows("test", 4, seed=seed) == chosen for seed, chosen in samples.items())
    assert len({tuple(chosen) for chosen in samples.values()}) > 1, "the seed picks the patients"
    for chosen in samples.values():
        assert len(chosen) == 4 and positive.iloc[chosen].all()
        assert data.patient_ids(rows).iloc[chosen].nunique() == 4
    everything = prepared.sample_rows("test", 1000, seed=1)
    assert everything == np.flatnonzero(positive).tolist() == prepared.rows_with_findings("test", 1000)


def test_sample_rows_adds_images_until_every_finding_has_enough_positives(tmp_path):
    fracture, both = {"Fracture": 1.0}, {"Fracture": 1.0, "Edema": 1.0}
    per_patient = {p: [EDEMA] for p in range(1, 9)} | {p: [fracture, both] for p in range(9, 12)}
    prepared = _prepared_from_rows(per_patient, tmp_path)
    rows = prepared.split("test")
    plain = prepared.sample_rows("test", 2, seed=0)
    enough = prepared.sample_rows("test", 2, seed=0, min_positives=3)
    counts = (rows.iloc[enough][["Edema", "Fracture"]] == 1).sum()
    assert set(plain) <= set(enough) and counts.min() >= 3
    assert len(enough) <= len(plain) + 3  # the greedy pick takes images with both findings first
    short = prepared.sample_rows("test", 2, seed=0, min_positives=50)  # more than the split has: all of them
    assert (rows.iloc[short]["Fracture"] == 1).sum() == 6

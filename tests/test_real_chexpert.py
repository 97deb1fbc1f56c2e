"""The loader on the real CheXpert train.csv shipped in torchxrayvision."""

import csv
import gzip
import json
from collections import Counter

import numpy as np

from helpers import data, labels, paths


def test_row_patient_and_frontal_counts(real_frame):
    assert len(real_frame) == 223_414
    assert data.patient_ids(real_frame).nunique() == 64_540
    assert len(data.frontal_only(real_frame)) == 191_027


def test_label_counts_equal_the_files_own(real_frame, real_csv_path):
    """Counts of 1 / 0 / -1 / blank per label, against an independent parse with the csv module."""
    with gzip.open(real_csv_path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for name in labels.PATHOLOGIES:
        raw = Counter(row[name] for row in rows)
        ours = real_frame[name]
        assert (ours == 1).sum() == raw["1.0"]
        assert (ours == 0).sum() == raw["0.0"]
        assert (ours == -1).sum() == raw["-1.0"]
        assert ours.isna().sum() == raw[""]
        assert set(raw) <= {"1.0", "0.0", "-1.0", ""}


def test_patient_split_is_disjoint_and_covers_everything(real_frame):
    split = data.split_by_patient(real_frame, val_fraction=0.1, test_fraction=0.1, seed=0)
    patients = data.patient_ids(real_frame)
    assert split.notna().all()
    per_patient = split.groupby(patients).nunique()
    assert (per_patient == 1).all()
    shares = split.value_counts(normalize=True)
    assert abs(shares["val"] - 0.1) < 0.01 and abs(shares["test"] - 0.1) < 0.01
    again = data.split_by_patient(real_frame, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert split.equals(again)


def test_policies_on_the_real_labels(real_frame):
    uncertain = real_frame[list(labels.PATHOLOGIES)].to_numpy() == -1
    zeros_t, zeros_m = data.apply_policy(real_frame, "u-zeros")
    ones_t, _ = data.apply_policy(real_frame, "u-ones")
    _, ignore_m = data.apply_policy(real_frame, "u-ignore")
    assert zeros_m.all() and not zeros_t[uncertain].any()
    assert ones_t[uncertain].all()
    assert (ignore_m == 0).sum() == uncertain.sum()


def test_shipped_statistics_match_the_real_csv(real_frame):
    stats = json.loads(paths.CHEXPERT_STATS_JSON.read_text())
    assert stats["n_rows"] == len(real_frame)
    for name in labels.PATHOLOGIES:
        column = real_frame[name]
        assert np.isclose(stats["label_rates"][name]["positive"], (column == 1).mean())
        assert np.isclose(stats["label_rates"][name]["uncertain"], (column == -1).mean())
    correlation = np.asarray(stats["latent_correlation"]["matrix"])
    assert np.allclose(correlation, correlation.T) and np.linalg.eigvalsh(correlation).min() > 0

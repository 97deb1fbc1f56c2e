"""Shared fixtures: the real CheXpert CSV (from torchxrayvision) and a small phantom."""
from __future__ import annotations

import pytest

from helpers import data, phantom


@pytest.fixture(scope="session")
def real_csv_path():
    return data.chexpert_csv_from_torchxrayvision()


@pytest.fixture(scope="session")
def real_frame(real_csv_path):
    return data.read_chexpert_csv(real_csv_path)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A 60 + 20 image phantom at 64 px (session-wide: it is read, never modified)."""
    root = tmp_path_factory.mktemp("phantom") / "CheXpert-v1.0-small"
    return phantom.generate(root, 60, 64, seed=3, n_valid=20, min_prevalence=0.1)

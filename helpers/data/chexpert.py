"""Read and validate CheXpert-format CSVs, and split their rows by patient."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import labels

_PATIENT = re.compile(r"(patient\d+)")
#: The values of the "Frontal/Lateral" column.
VIEWS = ("Frontal", "Lateral")


class DatasetError(ValueError):
    """A dataset file is missing, malformed or unreadable; the message names the file and the fix."""


def chexpert_csv_from_torchxrayvision() -> Path:
    """Path of the real CheXpert ``train.csv`` (gzipped) shipped inside ``torchxrayvision``."""
    try:
        import torchxrayvision
    except ImportError as error:  # pragma: no cover - dev dependency missing
        raise DatasetError(
            "The real CheXpert train.csv comes from the torchxrayvision package; install the dev "
            "extras: `pip install -e .[dev]`."
        ) from error
    return Path(torchxrayvision.__file__).parent / "data" / "chexpert_train.csv.gz"


def read_chexpert_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a CheXpert-format CSV.

    Parameters
    ----------
    path : path-like
        ``train.csv`` or ``valid.csv`` (optionally gzipped) of real CheXpert or the phantom.

    Returns
    -------
    pandas.DataFrame
        The CSV with the 14 label columns as float: 1.0, 0.0, -1.0 or NaN (blank, "not mentioned").

    Raises
    ------
    DatasetError
        If the file is missing or unreadable, a required column is missing, a ``Path`` is blank, or a
        label holds a value other than 1, 0, -1 or blank. The message names the file, column and rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"CSV not found: {path}. Point the profile at a CheXpert-format folder "
            f"holding train.csv and valid.csv (or regenerate the phantom with notebook 01)."
        )
    try:
        frame = pd.read_csv(path)
    # EOFError, zlib.error: a .csv.gz cut short or corrupted (pandas decompresses it by its suffix)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"Cannot parse {path} as CSV ({e}); re-export or re-download it.") from e
    missing = [c for c in (*labels.META_COLUMNS, *labels.PATHOLOGIES) if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks required column(s) {missing}; a CheXpert CSV has "
            f"{list(labels.META_COLUMNS) + list(labels.PATHOLOGIES)}."
        )
    if frame["Path"].isna().any():
        rows = (frame.index[frame["Path"].isna()] + 2).tolist()[:5]
        raise DatasetError(f"{path}: blank Path on line(s) {rows}; every row needs an image path.")
    views = frame["Frontal/Lateral"]
    bad_view = ~views.isin(VIEWS)
    if bad_view.any():  # another spelling would silently leave no frontal image (frontal_only)
        lines = (frame.index[bad_view] + 2).tolist()[:5]
        found = sorted(map(str, views[bad_view].unique()))[:5]
        raise DatasetError(
            f"{path}: column 'Frontal/Lateral' holds {found} on line(s) {lines}; allowed are {list(VIEWS)} "
            f"(CheXpert's spelling). Fix or drop those rows."
        )
    for name in labels.PATHOLOGIES:
        frame[name] = _validated_label_column(frame[name], name, path)
    return frame


def _validated_label_column(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = (values.isna() & column.notna()) | ~(values.isin(labels.LABEL_CODES) | values.isna())
    if bad.any():
        lines = (column.index[bad] + 2).tolist()[:5]  # +2: header line and 1-based numbering
        found = sorted(map(str, column[bad].unique()))[:5]
        raise DatasetError(
            f"{path}: column {name!r} holds {found} on line(s) {lines}; allowed are "
            f"1, 0, -1 and blank. Fix or drop those rows."
        )
    return values.astype("float64")


def patient_ids(frame: pd.DataFrame) -> pd.Series:
    """Patient identifier (``patient00001``) of every row, taken from its ``Path``."""
    ids = frame["Path"].str.extract(_PATIENT, expand=False)
    if ids.isna().any():
        example = frame.loc[ids.isna(), "Path"].iloc[0]
        raise DatasetError(
            f"Path {example!r} has no 'patientNNNNN' folder; CheXpert paths look like "
            f"CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg."
        )
    return ids


def image_ids(frame: pd.DataFrame) -> pd.Series:
    """CheXlocalize image id of every row: ``patient64541_study1_view1_frontal``."""

    def one(path: str) -> str:
        parts = Path(path).with_suffix("").parts
        return "_".join(parts[-3:])

    return frame["Path"].map(one)


def frontal_only(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of frontal views (the paper used frontal images only)."""
    return frame[frame["Frontal/Lateral"] == "Frontal"]


def split_by_patient(
    frame: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0
) -> pd.Series:
    """Assign every row to ``train``, ``val`` or ``test`` so that no patient is in two splits.

    Patients (not images) are shuffled with ``seed`` and cut by the fractions.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction + test_fraction}.")
    patients = patient_ids(frame)
    unique = np.sort(patients.unique())
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val, n_test = round(val_fraction * len(unique)), round(test_fraction * len(unique))
    split = np.full(len(unique), "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    return patients.map(dict(zip(unique, split))).rename("split")

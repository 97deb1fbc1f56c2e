"""Every path the project uses, derived from this package's own location.

Notebooks run from ``notebooks/`` (nbmake), from the caller's folder (papermill) or anywhere else;
deriving paths from ``__file__`` makes them all agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from helpers.config import Profile

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
#: The committed figures (``make publish`` copies the default run's here; runs never write here).
FIGURES_DIR = PROJECT_ROOT / "figures"
BENCHMARKS_DIR = PROJECT_ROOT / "benchmarks"

#: Label and view statistics of the real CheXpert train.csv, written by ``scripts/derive_label_stats.py``.
CHEXPERT_STATS_JSON = RESOURCES_DIR / "chexpert_stats.json"


def runs_root() -> Path:
    """Folder holding one run folder per profile (``CHEXPLAIN_RUNS_DIR`` overrides ``<repo>/runs``).

    ``~`` is expanded and a relative value is taken from the repository (as the Makefile does), not from each
    process's working directory: papermill runs the notebooks in ``notebooks/``. An empty value counts as unset.
    """
    chosen = os.environ.get("CHEXPLAIN_RUNS_DIR") or PROJECT_ROOT / "runs"
    return (PROJECT_ROOT / Path(chosen).expanduser()).resolve()


def run_dir(profile: Profile | str) -> Path:
    """``runs/<profile>/``: everything a run makes (data, cache, checkpoint, heatmaps, notebooks)."""
    name = profile if isinstance(profile, str) else profile.name
    path = runs_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

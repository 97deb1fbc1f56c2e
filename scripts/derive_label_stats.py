"""Derive the phantom's label statistics from the real CheXpert ``train.csv``.

The CSV ships inside the ``torchxrayvision`` package (a dev dependency); it is read, never copied. The
output, ``helpers/resources/chexpert_stats.json``, holds per-label rates of 1 / 0 / -1 / blank, the
pairwise co-occurrence of positives, the latent correlation of a Gaussian copula fitted to that
co-occurrence (how :mod:`helpers.phantom` samples correlated labels), and view / patient statistics.

Run: ``python scripts/derive_label_stats.py [path/to/train.csv]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from helpers import labels, paths
from helpers.data import chexpert_csv_from_torchxrayvision, patient_ids, read_chexpert_csv

STATS_JSON = paths.CHEXPERT_STATS_JSON


def label_rates(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Share of rows coded 1, 0, -1 and blank, per pathology."""
    rates = {}
    for name in labels.PATHOLOGIES:
        column = frame[name]
        rates[name] = {
            "positive": float((column == 1).mean()),
            "negative": float((column == 0).mean()),
            "uncertain": float((column == -1).mean()),
            "blank": float(column.isna().mean()),
        }
    return rates


def positive_cooccurrence(frame: pd.DataFrame) -> np.ndarray:
    """P(both positive) for every pair of pathologies (diagonal: prevalence)."""
    positive = (frame[list(labels.PATHOLOGIES)] == 1).to_numpy(dtype=np.float64)
    return positive.T @ positive / len(positive)


def latent_correlation(prevalence: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """Correlation of a Gaussian copula whose thresholded margins reproduce ``joint``.

    Label i is positive when latent ``z_i < Phi^-1(prevalence_i)``; each pair's latent correlation is
    solved so that the bivariate normal CDF equals the observed joint rate, and the matrix is then
    projected to the nearest positive-definite correlation matrix (eigenvalue clipping).
    Written by hand: neither scipy nor scikit-learn fits a copula to pairwise joint probabilities.
    """
    thresholds = stats.norm.ppf(prevalence)
    n = len(prevalence)
    rho = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):

            def gap(r, i=i, j=j):
                cov = [[1.0, r], [r, 1.0]]
                return stats.multivariate_normal(cov=cov).cdf([thresholds[i], thresholds[j]]) - joint[i, j]

            rho[i, j] = rho[j, i] = optimize.brentq(gap, -0.95, 0.95, xtol=1e-5)
    values, vectors = np.linalg.eigh(rho)
    rho = vectors @ np.diag(np.clip(values, 1e-3, None)) @ vectors.T
    scale = np.sqrt(np.diag(rho))
    return rho / np.outer(scale, scale)


def view_stats(frame: pd.DataFrame) -> dict[str, float]:
    """Frontal share, AP share among frontal views, sex, age and images per patient."""
    frontal = frame["Frontal/Lateral"] == "Frontal"
    return {
        "frontal": float(frontal.mean()),
        "ap_among_frontal": float((frame.loc[frontal, "AP/PA"] == "AP").mean()),
        "male": float((frame["Sex"] == "Male").mean()),
        "age_mean": float(frame["Age"].mean()),
        "age_std": float(frame["Age"].std()),
        "images_per_patient": float(len(frame) / patient_ids(frame).nunique()),
    }


def derive(csv_path: Path) -> dict:
    """All statistics of one CheXpert CSV as a JSON-ready dictionary."""
    frame = read_chexpert_csv(csv_path)
    rates = label_rates(frame)
    joint = positive_cooccurrence(frame)
    findings = list(labels.LOCALISABLE)
    index = [labels.PATHOLOGIES.index(name) for name in findings]
    prevalence = np.array([rates[name]["positive"] for name in findings])
    rho = latent_correlation(prevalence, joint[np.ix_(index, index)])
    return {
        "source": "CheXpert-v1.0 train.csv as shipped in torchxrayvision (data/chexpert_train.csv.gz)",
        "n_rows": len(frame),
        "n_patients": int(patient_ids(frame).nunique()),
        "label_rates": rates,
        "positive_cooccurrence": {"labels": list(labels.PATHOLOGIES), "matrix": np.round(joint, 6).tolist()},
        "latent_correlation": {"labels": findings, "matrix": np.round(rho, 6).tolist()},
        "views": view_stats(frame),
    }


def main(argv: list[str]) -> None:
    csv_path = Path(argv[0]) if argv else chexpert_csv_from_torchxrayvision()
    result = derive(csv_path)
    tmp = STATS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(STATS_JSON)
    print(f"wrote {STATS_JSON} from {csv_path} ({result['n_rows']} rows)")


if __name__ == "__main__":
    main(sys.argv[1:])

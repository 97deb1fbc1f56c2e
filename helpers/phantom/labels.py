"""Labels and cohort of the phantom: CheXpert's label rates and correlations, patients and their studies.

Labels follow the real CheXpert ``train.csv``: per-label rates of 1 / 0 / -1 / blank and a Gaussian
copula fitted to the pairwise co-occurrence of positives (``scripts/derive_label_stats.py``). Uncertain
(-1) findings are drawn faint.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from scipy import stats

from helpers import paths
from helpers.labels import LOCALISABLE, PATHOLOGIES, pathology_indices

#: The 13 drawn findings, in :data:`helpers.labels.LOCALISABLE` order (the masks' and strengths' axis).
FINDINGS = LOCALISABLE
#: Findings that make "No Finding" false when positive or uncertain (CheXpert excludes Support Devices).
PATHOLOGIC = tuple(name for name in FINDINGS if name != "Support Devices")
#: Drawing strength of uncertain findings relative to positive ones: faint, genuinely ambiguous.
UNCERTAIN_STRENGTH = (0.25, 0.5)
POSITIVE_STRENGTH = (0.8, 1.1)


@lru_cache(maxsize=1)
def chexpert_stats() -> dict:
    """Statistics of the real CheXpert ``train.csv`` shipped with the package."""
    return json.loads(paths.CHEXPERT_STATS_JSON.read_text())


def sample_labels(
    n: int, rng: np.random.Generator, min_prevalence: float = 0.0, allow_uncertain: bool = True
) -> np.ndarray:
    """Draw ``(n, 14)`` CheXpert label codes (1, 0, -1, NaN) with CheXpert's correlations.

    A latent Gaussian vector with the fitted copula correlation is cut, per label, at the real rates:
    lowest quantile positive, then uncertain, then negative, then blank.

    Parameters
    ----------
    n : int
        Rows to draw.
    rng : numpy.random.Generator
        Source of the latent vectors.
    min_prevalence : float
        Floor on each finding's positive rate, taken from blank and negative mass, so a small phantom
        has enough of each finding.
    allow_uncertain : bool
        ``False`` turns uncertain into negative (CheXpert's ``valid.csv`` has no -1).

    Returns
    -------
    numpy.ndarray
        Codes in :data:`helpers.labels.PATHOLOGIES` order. "No Finding" is 1 exactly when no pathology
        other than Support Devices is positive or uncertain, as in CheXpert, and blank otherwise.
    """
    stats_ = chexpert_stats()
    correlation = np.asarray(stats_["latent_correlation"]["matrix"])
    latent = rng.standard_normal((n, len(FINDINGS))) @ np.linalg.cholesky(correlation).T
    uniform = stats.norm.cdf(latent)
    codes = np.full((n, len(PATHOLOGIES)), np.nan)
    for j, name in enumerate(FINDINGS):
        codes[:, PATHOLOGIES.index(name)] = _cut(
            uniform[:, j], stats_["label_rates"][name], min_prevalence, allow_uncertain
        )
    pathologic = codes[:, pathology_indices(PATHOLOGIC)]
    no_finding = ~np.isin(pathologic, (1.0, -1.0)).any(axis=1)
    codes[:, 0] = np.where(no_finding, 1.0, np.nan)
    return codes


def _cut(uniform: np.ndarray, rates: dict, min_prevalence: float, allow_uncertain: bool) -> np.ndarray:
    """One label's codes from its uniform quantiles: positive, uncertain, negative, blank, lowest first."""
    positive = max(rates["positive"], min_prevalence)
    rest = 1.0 - rates["positive"]
    shrink = (1.0 - positive) / rest if rest > 0 else 0.0  # the floor's mass comes from the other codes
    uncertain = rates["uncertain"] * shrink
    negative = rates["negative"] * shrink
    column = np.full(len(uniform), np.nan)
    column[uniform < positive + uncertain + negative] = 0.0
    column[uniform < positive + uncertain] = -1.0 if allow_uncertain else 0.0
    column[uniform < positive] = 1.0
    return column


def drawing_strength(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n, 13)`` strength of each finding: 0 absent, faint if uncertain, full if positive.

    A column set to 0 renders the same scene without that finding (see :func:`helpers.phantom.render`).
    """
    findings = codes[:, 1:]
    strength = np.zeros(findings.shape, dtype=np.float32)
    positive, uncertain = findings == 1, findings == -1
    strength[positive] = rng.uniform(*POSITIVE_STRENGTH, positive.sum())
    strength[uncertain] = rng.uniform(*UNCERTAIN_STRENGTH, uncertain.sum())
    return strength


def patients(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patient index and study number per row: CheXpert has about 3.5 images per patient."""
    per_patient = 1 + rng.poisson(chexpert_stats()["views"]["images_per_patient"] - 1, n)
    patient = np.repeat(np.arange(n), per_patient)[:n]
    study = np.concatenate([np.arange(1, k + 1) for k in per_patient])[:n]
    return patient, study

"""CheXpert label names and the order every class axis follows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: The 14 CheXpert observations, in the column order of CheXpert's ``train.csv``.
PATHOLOGIES: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The five pathologies of the CheXpert competition (Irvin et al., 2019).
COMPETITION: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

#: The 13 observations that can be localised in an image (all but "No Finding").
LOCALISABLE: tuple[str, ...] = PATHOLOGIES[1:]

#: Non-label columns every CheXpert-format CSV carries.
META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")

#: Allowed label codes: positive, negative, uncertain (blank = not mentioned is NaN).
LABEL_CODES: tuple[float, ...] = (1.0, 0.0, -1.0)


def pathology_indices(names: Iterable[str] | None = None) -> list[int]:
    """Indices into :data:`PATHOLOGIES` of ``names`` (all 14 when ``None``).

    Raises
    ------
    ValueError
        If a name is not a CheXpert pathology; the message lists the valid names.
    """
    if names is None:
        return list(range(len(PATHOLOGIES)))
    names = [names] if isinstance(names, str) else list(names)  # a generator would be spent by the check
    unknown = [name for name in names if name not in PATHOLOGIES]
    if unknown:
        raise ValueError(
            f"Unknown pathology name(s) {unknown}; use names from helpers.labels.PATHOLOGIES: {list(PATHOLOGIES)}"
        )
    return [PATHOLOGIES.index(name) for name in names]


def slug(name: str) -> str:
    """File-name friendly form of a pathology name ("Pleural Effusion" -> "pleural_effusion")."""
    return name.lower().replace(" ", "_").replace("/", "_")


def subset(names: Sequence[str]) -> tuple[str, ...]:
    """Validated tuple of pathology names, kept in :data:`PATHOLOGIES` order."""
    return tuple(PATHOLOGIES[i] for i in sorted(pathology_indices(names)))

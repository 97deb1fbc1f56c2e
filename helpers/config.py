"""Run profiles: ``smoke`` (tests, CI), ``default`` (phantom study on a laptop CPU), ``paper`` (real data).

Pick one with the environment variable ``CHEXPLAIN_PROFILE``; the real CheXpert folder (the one holding
``train.csv``) comes from ``CHEXPERT_ROOT``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from helpers import paths

PROFILE_ENV = "CHEXPLAIN_PROFILE"
CHEXPERT_ROOT_ENV = "CHEXPERT_ROOT"
#: ImageNet statistics: what torchvision's pretrained DenseNet-121 expects, kept for every profile so
#: that a phantom-trained and an ImageNet-initialised model see inputs the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Profile:
    """Every setting a run depends on; notebooks read nothing else.

    Attributes
    ----------
    name : str
        ``smoke``, ``default`` or ``paper``; also the run folder's name.
    data_source : str
        ``"phantom"`` (generated into the run folder) or ``"chexpert"`` (read from ``CHEXPERT_ROOT``).
    image_size : int
        Side of the square network input, in pixels.
    n_train, n_valid : int
        Phantom only: rows of ``train.csv`` and ``valid.csv``.
    min_prevalence : float
        Phantom only: floor on each pathology's positive rate (0 keeps CheXpert's own rates).
    policy : str
        Uncertainty policy for training (see :func:`helpers.data.apply_policy`).
    frontal_only : bool
        Keep frontal views only, as the paper did.
    val_fraction : float
        Share of ``train.csv`` patients held out for validation; ``valid.csv`` is the test split.
    """

    name: str
    data_source: str = "phantom"
    image_size: int = 128
    n_train: int = 3000
    n_valid: int = 600
    min_prevalence: float = 0.0
    seed: int = 0
    policy: str = "u-ignore"
    frontal_only: bool = True
    val_fraction: float = 0.1
    arch: str = "densenet_compact"
    weights: str | None = None
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_epochs: int = 10
    patience: int = 3
    num_workers: int = 0
    n_explain: int = 16
    n_boot: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = field(default="", compare=False)

    @property
    def run_dir(self) -> Path:
        """This profile's run folder (created on first use)."""
        return paths.run_dir(self)

    @property
    def figures_dir(self) -> Path:
        """Where this profile's figures go."""
        return paths.figures_dir(self)

    @property
    def data_root(self) -> Path:
        """The CheXpert-format folder holding ``train.csv`` and ``valid.csv``."""
        if self.data_source == "phantom":
            return self.run_dir / "CheXpert-v1.0-small"
        value = os.environ.get(CHEXPERT_ROOT_ENV)
        if not value:
            raise FileNotFoundError(
                f"Profile {self.name!r} reads real CheXpert, but {CHEXPERT_ROOT_ENV} is not set. "
                f"Set it to the CheXpert-v1.0-small folder that holds train.csv, e.g. "
                f"`export {CHEXPERT_ROOT_ENV}=/data/CheXpert-v1.0-small`, or run another profile "
                f"(`{PROFILE_ENV}=default`)."
            )
        return Path(value).expanduser().resolve()

    def to_dict(self) -> dict:
        """Plain-type dictionary (for checkpoints and executed-notebook metadata)."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", image_size=64, n_train=240, n_valid=80, min_prevalence=0.1, max_epochs=1,
        batch_size=16, learning_rate=1e-3, n_explain=4, n_boot=50, notes="Tiny everything: exercises every code path in minutes.",
    ),
    "default": Profile(
        # From scratch on 2 CPU cores: lr 1e-3 and batch 32 converge in the 10-minute budget; the paper's
        # 1e-4 / 16 are for fine-tuning ImageNet weights (see README, "Training choices").
        name="default", image_size=128, n_train=3000, n_valid=600, min_prevalence=0.1,
        learning_rate=1e-3, batch_size=32, max_epochs=16, patience=4, n_explain=48,
        notes="The embedded phantom study on a laptop CPU.",
    ),
    "paper": Profile(
        name="paper", data_source="chexpert", image_size=224, policy="u-zeros", arch="densenet121",
        weights="imagenet", batch_size=16, learning_rate=1e-4, max_epochs=5, num_workers=4,
        n_explain=32, notes="Real CheXpert with the paper's settings; needs a GPU and the dataset.",
    ),
}


def load_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile, else ``$CHEXPLAIN_PROFILE``, else ``default``; ``overrides`` replace fields.

    Raises
    ------
    ValueError
        For an unknown profile name or field.
    """
    name = name or os.environ.get(PROFILE_ENV) or "default"
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from the argument or ${PROFILE_ENV}); choose one of {sorted(PROFILES)}."
        )
    profile = PROFILES[name]
    unknown = set(overrides) - set(profile.to_dict())
    if unknown:
        raise ValueError(f"Unknown profile field(s) {sorted(unknown)}; fields are {sorted(profile.to_dict())}.")
    return replace(profile, **overrides)

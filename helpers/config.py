"""Run profiles: ``smoke`` (tests, CI), ``default`` (phantom study on a laptop CPU), ``paper`` (real data).

Pick one with the environment variable ``CHEXPLAIN_PROFILE``; the real CheXpert folder (the one holding
``train.csv``) comes from ``CHEXPERT_ROOT``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from helpers import labels

PROFILE_ENV = "CHEXPLAIN_PROFILE"
CHEXPERT_ROOT_ENV = "CHEXPERT_ROOT"
#: ImageNet statistics: what torchvision's pretrained DenseNet-121 expects, kept for every profile so
#: that a phantom-trained and an ImageNet-initialised model see inputs the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainSettings:
    """How the classifier is fitted (:mod:`helpers.train`); nested in :class:`Profile` as ``profile.train``.

    Attributes
    ----------
    arch : str
        Architecture for :func:`helpers.models.build_model`.
    weights : str or None
        ``None`` (from scratch) or ``"imagenet"``.
    policy : str
        Uncertainty policy for training (see :func:`helpers.data.apply_policy`).
    batch_size : int
    learning_rate : float
        Adam's initial learning rate.
    max_epochs : int
        Upper bound on epochs; early stopping may end sooner.
    patience : int
        Epochs without a validation improvement before stopping.
    schedule : {"plateau", "cosine"}
        ``"plateau"``: the learning rate is multiplied by ``lr_factor`` after ``lr_patience`` epochs without
        improvement. ``"cosine"``: it falls from ``learning_rate`` to 0 over ``max_epochs`` (a fixed budget
        reaches a better model in fewer epochs; set ``patience`` to ``max_epochs`` to use all of them).
    lr_patience, lr_factor : int, float
        The plateau schedule's settings.
    num_workers : int
        DataLoader worker processes (changes speed, never the batches: they are drawn by a seeded generator).
    seed : int or None
        Seed of the initial weights and the batch order; ``None`` uses the profile's seed (which also makes the
        data). Set, it varies training alone: the ``default-seed<k>`` profiles repeat the study over seeds.
    lr_reference_batch : int or None
        The batch size ``learning_rate`` is meant for. Set, the learning rate follows the linear scaling rule
        (Goyal et al. 2017): ``learning_rate * batch_size / lr_reference_batch`` (:meth:`effective_learning_rate`),
        so a profile can raise the batch size for a GPU's throughput and keep its optimisation. ``None``:
        ``learning_rate`` as given.
    train_images : int or None
        Train on a random subset of this many training images (drawn with the profile's seed) and validate on
        the same share of the validation split; ``None`` (the default) uses every image. Bounds a training that
        needs no more data at CheXpert's scale, as the shuffled-label model of the data randomisation test.
    deterministic : bool
        Deterministic kernels where torch has them (``torch.use_deterministic_algorithms``; the default). Speed
        only, like ``num_workers``: on the CPU our networks' kernels are deterministic either way; on CUDA they
        cost DenseNet-121 about 0.7x its training throughput (an H200's synthetic steps: 668 against 926
        images/s at 64, 172 against 254 at 16; README, "The paper profile on a GPU") and still do not make two
        runs identical there (adaptive pooling's backward has no deterministic CUDA kernel). ``False`` lets
        cuDNN pick its fastest kernels.
    """

    arch: str = "densenet_compact"
    weights: str | None = None
    policy: str = "u-ignore"
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_epochs: int = 10
    patience: int = 3
    schedule: str = "plateau"
    lr_patience: int = 1
    lr_factor: float = 0.1
    num_workers: int = 0
    seed: int | None = None
    lr_reference_batch: int | None = None
    train_images: int | None = None
    deterministic: bool = True

    def __post_init__(self):
        for name in ("lr_reference_batch", "train_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of images or None, not {value!r}.")

    def effective_learning_rate(self, processes: int = 1) -> float:
        """Adam's initial learning rate for ``processes`` data-parallel processes of ``batch_size`` images each:
        by the linear rule over the whole step's batch where ``lr_reference_batch`` is set."""
        if self.lr_reference_batch is None:
            return self.learning_rate
        return self.learning_rate * self.batch_size * processes / self.lr_reference_batch


@dataclass(frozen=True)
class ShortcutSettings:
    """Notebook 06's Clever-Hans experiment; nested in :class:`Profile` as ``profile.shortcut``.

    Two models are trained with the profile's settings except ``max_epochs``, on the profile's phantom without
    and with a spurious marker (:class:`helpers.phantom.Marker`: the other fields, passed on as they are).

    Attributes
    ----------
    pathology : str
        The finding the marker follows in ``train.csv``.
    positive_rate, negative_rate : float
        Share of that finding's positive and negative ``train.csv`` images with the marker.
    test_rate : float
        Share of test images (``valid.csv``) with the marker, independent of the label.
    max_epochs : int
        Epochs of both models (shorter than the main model's: the experiment measures reliance, and states it).
    """

    pathology: str = "Pneumothorax"
    positive_rate: float = 0.9
    negative_rate: float = 0.05
    test_rate: float = 0.5
    max_epochs: int = 4

    def marker(self) -> dict:
        """The :class:`helpers.phantom.Marker` fields."""
        settings = asdict(self)
        del settings["max_epochs"]
        return settings


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
        Side of the square network input, in pixels (the data cache and the model share it).
    n_train, n_valid : int
        Phantom only: rows of ``train.csv`` and ``valid.csv``.
    min_prevalence : float
        Phantom only: floor on each pathology's positive rate (0 keeps CheXpert's own rates).
    seed : int
        Seeds the phantom, the patient split, the initial weights and the batch order.
    frontal_only : bool
        Keep frontal views only, as the paper did.
    val_fraction : float
        Share of ``train.csv`` patients held out for validation; ``valid.csv`` is the test split.
    n_explain, n_boot : int
        Images explained per method (at least); bootstrap resamples for confidence intervals.
    min_positives : int
        More test images are explained until every localisable finding has this many positives (or all the
        test split has), so that per-pathology scores rest on enough cases.
    mean, std : tuple of float
        Input normalisation per channel (the data pipeline applies it, the model expects it).
    train : TrainSettings
        How the classifier is fitted.
    shortcut : ShortcutSettings
        Notebook 06's shortcut experiment.
    marker : bool
        Phantom only: draw the shortcut's spurious marker (the shortcut model's data; see :meth:`Run.twin`).
    """

    name: str
    data_source: str = "phantom"
    image_size: int = 128
    n_train: int = 3000
    n_valid: int = 600
    min_prevalence: float = 0.0
    seed: int = 0
    frontal_only: bool = True
    val_fraction: float = 0.1
    n_explain: int = 16
    min_positives: int = 0
    n_boot: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train: TrainSettings = TrainSettings()
    shortcut: ShortcutSettings = ShortcutSettings()
    marker: bool = False
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        """Plain-type dictionary (for checkpoints and executed-notebook metadata)."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        image_size=64,
        n_train=240,
        n_valid=80,
        min_prevalence=0.1,
        n_explain=4,
        n_boot=50,
        train=TrainSettings(max_epochs=1, batch_size=16, learning_rate=1e-3),
        shortcut=ShortcutSettings(max_epochs=1),
        notes="Tiny everything: exercises every code path in minutes.",
    ),
    "default": Profile(
        name="default",
        image_size=96,
        n_train=3000,
        n_valid=600,
        min_prevalence=0.1,
        n_explain=32,
        min_positives=20,
        # From scratch on 2 CPU cores within `make run`'s 20 minutes: a cosine schedule from 3e-3 over a fixed
        # 12 epochs, batch 32; the paper's 1e-4 / 16 are for fine-tuning ImageNet weights (README, "Training choices").
        train=TrainSettings(learning_rate=3e-3, batch_size=32, max_epochs=12, patience=12, schedule="cosine"),
        notes="The embedded phantom study on a laptop CPU.",
    ),
    "paper": Profile(
        name="paper",
        data_source="chexpert",
        image_size=224,
        n_explain=32,
        min_positives=20,
        train=TrainSettings(
            policy="u-zeros",
            arch="densenet121",
            weights="imagenet",
            batch_size=16,
            learning_rate=1e-4,
            max_epochs=5,
            num_workers=4,
        ),
        notes="Real CheXpert with the paper's settings; needs a GPU and the dataset.",
    ),
}
#: The paper's training at batch 64 (on an H200, a DataLoader-fed epoch ran 658 images/s against 201 at 16), the
#: learning rate by the linear rule from the paper's 1e-4 at 16: 4e-4.
PROFILES["paper-batch64"] = replace(
    PROFILES["paper"],
    name="paper-batch64",
    train=replace(PROFILES["paper"].train, batch_size=64, lr_reference_batch=16),
    notes="The paper profile at batch 64, learning rate by the linear scaling rule (4e-4).",
)

#: The study repeated over training seeds (same data, split and explained images; other initial weights and
#: batch order): ``make seeds`` runs these beside ``default`` (training seed 0).
for _seed in (1, 2):
    PROFILES[f"default-seed{_seed}"] = replace(
        PROFILES["default"],
        name=f"default-seed{_seed}",
        train=replace(PROFILES["default"].train, seed=_seed),
        notes=f"The default study with training seed {_seed}.",
    )
    PROFILES[f"smoke-seed{_seed}"] = replace(
        PROFILES["smoke"], name=f"smoke-seed{_seed}", train=replace(PROFILES["smoke"].train, seed=_seed)
    )


def training_seed(profile: Profile) -> int:
    """The seed of the initial weights and batch order: ``profile.train.seed``, else the profile's seed."""
    return profile.seed if profile.train.seed is None else profile.train.seed


_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainSettings))
_PROFILE_FIELDS = frozenset(f.name for f in fields(Profile))


def load_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile, else ``$CHEXPLAIN_PROFILE``, else ``default``; ``overrides`` replace settings.

    An override may name a :class:`Profile` field (``image_size=32``, or ``train=TrainSettings(...)``) or a
    :class:`TrainSettings` field (``max_epochs=2``), which lands in ``profile.train``. Both have a ``seed``:
    ``seed`` is the profile's (data, split, explained images; training too unless it has its own), ``train_seed``
    training's alone (as :func:`resume_fields` names it).

    Raises
    ------
    ValueError
        For an unknown profile name or setting.
    """
    name = name or os.environ.get(PROFILE_ENV) or "default"
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from the argument or ${PROFILE_ENV}); choose one of {sorted(PROFILES)}."
        )
    train_fields = (_TRAIN_FIELDS - _PROFILE_FIELDS) | {"train_seed"}
    unknown = set(overrides) - _PROFILE_FIELDS - train_fields
    if unknown:
        raise ValueError(
            f"Unknown profile setting(s) {sorted(unknown)}; settings are "
            f"{sorted(_PROFILE_FIELDS - {'train'})} and, for training, {sorted(train_fields)}."
        )
    profile = replace(PROFILES[name], **{k: v for k, v in overrides.items() if k in _PROFILE_FIELDS})
    train = {("seed" if k == "train_seed" else k): v for k, v in overrides.items() if k in train_fields}
    return replace(profile, train=replace(profile.train, **train)) if train else profile


#: Settings :func:`resume_fields` leaves out at these values (each was added after checkpoints existed, which
#: stay valid); a checkpoint that records one must hold this value to match a profile that leaves it out
#: (:func:`helpers.models.meta_mismatches`).
RESUME_DEFAULTS = {
    "train_seed": None,
    "schedule": "plateau",
    "lr_reference_batch": None,
    "train_images": None,
    "marker": None,
}


def resume_fields(profile: Profile) -> dict:
    """The settings a checkpoint must share with ``profile`` to be resumed or used as its model.

    Every setting that changes the trained weights, as plain types (the checkpoint's metadata holds the
    same keys). Left out: ``max_epochs`` (a run may be resumed to train longer; whether a run is finished
    is a separate question), ``num_workers`` and ``deterministic`` (speed only) and :data:`RESUME_DEFAULTS` at
    their defaults.
    """
    settings = asdict(profile.train)
    del settings["max_epochs"], settings["num_workers"], settings["deterministic"]
    settings = {("train_seed" if key == "seed" else key): value for key, value in settings.items()}
    settings["marker"] = profile.shortcut.marker() if profile.marker else None
    settings = {
        key: value for key, value in settings.items() if key not in RESUME_DEFAULTS or value != RESUME_DEFAULTS[key]
    }
    return {
        **settings,
        "image_size": profile.image_size,
        "labels": list(labels.PATHOLOGIES),
        "mean": list(profile.mean),
        "std": list(profile.std),
        "seed": profile.seed,
    }

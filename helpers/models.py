"""Classifiers whose last layers are explicit modules, and their checkpoints.

torchvision's DenseNet ends with a functional ``F.relu(inplace=True)`` and ``F.adaptive_avg_pool2d``.
Neither LRP (zennit hooks modules) nor Grad-CAM on CPU (the in-place ReLU overwrites the stored
activation of ``features[-1]``) can work on that, so every model here ends
``features -> ReLU -> AdaptiveAvgPool2d(1) -> Flatten -> Linear`` as modules. The parameter-free head
modules add no ``state_dict`` keys: torchvision checkpoints and ImageNet weights load unchanged.
"""

from __future__ import annotations

import os
import pickle
import platform
import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from helpers import config, labels
from helpers.io import atomic_path

#: Architectures :func:`build_model` knows; ``densenet_compact`` is a small DenseNet from the same
#: torchvision class (same layer types and module names) that trains in minutes on a CPU.
ARCHITECTURES = ("densenet121", "densenet_compact", "resnet50")
#: 16 dense layers, 145k parameters: 7 ms per 128-px training image on 2 CPU cores, 2.4x faster than the
#: 32-layer (4, 8, 12, 8) version it replaced (681k), so that ``make run`` fits its 20 minutes.
COMPACT_DENSENET = {"growth_rate": 12, "block_config": (2, 4, 6, 4), "num_init_features": 24, "bn_size": 4}
#: torchvision's ImageNet weights each architecture loads (torch.hub caches them under the URL's file name).
IMAGENET_WEIGHTS = {
    "densenet121": torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}
#: The file name torch.hub caches each architecture's ImageNet weights under.
IMAGENET_FILES = {arch: Path(weights.url).name for arch, weights in IMAGENET_WEIGHTS.items()}
#: DenseNet files published before torchvision 0.3 name a dense layer's modules ``norm.1`` where the class has
#: ``norm1`` (the ImageNet DenseNet-121 file still does, and has no ``num_batches_tracked``: BatchNorm fills it in).
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, or was made for another architecture, label list or image size."""


class ExplicitHeadModel(nn.Module):
    """A classifier that says where its explainable parts are, so no caller guesses from attribute names.

    Every model :func:`build_model` returns is one. Subclasses set :attr:`target_layer_name`,
    :attr:`head_names` and :attr:`cam_layer_names` (module names as in ``named_modules()``) and define
    :meth:`randomisation_stages`. The model's logits are ``head(target_layer output)``.
    """

    #: The module whose output CAMs read; its output feeds :attr:`head`.
    target_layer_name: str
    #: The modules after the target layer, in forward order.
    head_names: tuple[str, ...]
    #: Layers for matched-resolution CAMs: key (``"head"``, ``"2x"``, ``"4x"``: the map's resolution relative to
    #: the target layer's) -> module name. The same keys for every architecture.
    cam_layer_names: dict[str, str]

    @property
    def target_layer(self) -> nn.Module:
        """The module CAMs read (its output is the last spatial feature map)."""
        return self.get_submodule(self.target_layer_name)

    @property
    def head(self) -> nn.Sequential:
        """The modules after :attr:`target_layer` (the model's own, not copies): logits = head(target output)."""
        return nn.Sequential(*(self.get_submodule(name) for name in self.head_names))

    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers for CAMs at several depths: ``"head"`` (the target layer), ``"2x"`` and ``"4x"`` its resolution.

        The module names behind the keys are in :attr:`cam_layer_names`.
        """
        return {key: self.get_submodule(name) for key, name in self.cam_layer_names.items()}

    def randomisation_stages(self) -> list[tuple[str, list[str]]]:
        """(stage name, module names) from the output down, for cascading randomisation (cumulative in order).

        Together the stages hold every parameter of the model exactly once.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its randomisation stages.")


class ExplicitHeadDenseNet(ExplicitHeadModel):
    """A torchvision DenseNet with ``features -> ReLU -> AdaptiveAvgPool2d -> Flatten -> Linear`` as modules.

    CAM layers and their strides (input side / map side): ``"head"`` = ``head_relu`` 32, ``"2x"`` =
    ``features.transition3.relu`` 16 and ``"4x"`` = ``features.transition2.relu`` 8 (maps of 3, 6 and 12 px
    at 96 px). The transitions' ReLUs are taken rather than the transitions themselves because each
    transition ends in a stride-2 average pooling: ``features.transition3``'s output is already at stride
    32. Like ``head_relu``, they are BatchNorm + ReLU of a dense block's output.

    Parameters
    ----------
    densenet : torchvision.models.DenseNet
        Its ``features`` and ``classifier`` are reused as they are (same names, same state_dict keys).
    """

    target_layer_name = "head_relu"
    head_names = ("pool", "flatten", "classifier")
    cam_layer_names = {"head": "head_relu", "2x": "features.transition3.relu", "4x": "features.transition2.relu"}

    def __init__(self, densenet: torchvision.models.DenseNet):
        super().__init__()
        self.features = densenet.features
        self.head_relu = nn.ReLU(inplace=False)  # explicit: hookable, and not in place
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.head_relu(self.features(x)))))

    def randomisation_stages(self) -> list[tuple[str, list[str]]]:
        """``classifier``, each dense block with the transition (or final norm) after it, top down, ``stem``."""
        feature_names = [name for name, _ in self.features.named_children()]
        stages = [("classifier", ["classifier"])]
        for block in [name for name in feature_names if name.startswith("denseblock")][::-1]:
            transition = f"transition{block.removeprefix('denseblock')}"
            after = f"features.{transition}" if transition in feature_names else "features.norm5"
            stages.append((block, [f"features.{block}", after]))
        return stages + [("stem", ["features.conv0", "features.norm0"])]


class ExplicitHeadResNet(ExplicitHeadModel):
    """A torchvision ResNet whose flatten is a module too (its ReLUs and pooling already are).

    CAM layers and their strides: ``"head"`` = ``layer4`` 32, ``"2x"`` = ``layer3`` 16, ``"4x"`` = ``layer2`` 8.
    """

    target_layer_name = "layer4"
    head_names = ("avgpool", "flatten", "fc")
    cam_layer_names = {"head": "layer4", "2x": "layer3", "4x": "layer2"}

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
            setattr(self, name, getattr(resnet, name))
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def randomisation_stages(self) -> list[tuple[str, list[str]]]:
        """``fc``, ``layer4`` down to ``layer1``, then ``stem`` (``conv1``, ``bn1``)."""
        return [("fc", ["fc"])] + [(f"layer{n}", [f"layer{n}"]) for n in (4, 3, 2, 1)] + [("stem", ["conv1", "bn1"])]


def build_model(
    arch: str = "densenet121", num_classes: int = len(labels.PATHOLOGIES), weights: str | os.PathLike | None = None
) -> ExplicitHeadModel:
    """A classifier with an explicit head (an :class:`ExplicitHeadModel`).

    Parameters
    ----------
    arch : str
        ``"densenet121"`` (exactly torchvision's DenseNet-121), ``"densenet_compact"`` or ``"resnet50"``.
    num_classes : int
        Outputs (logits); 14 for CheXpert.
    weights : None, "imagenet" or path
        ``None`` trains from scratch. ``"imagenet"`` loads torchvision's ImageNet weights (from the
        torch.hub cache, downloading only when online). A path loads an ImageNet ``state_dict`` file.
        The classifier is replaced by a fresh one with ``num_classes`` outputs.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; supported are {ARCHITECTURES}.")
    if arch == "densenet_compact":
        if weights is not None:
            raise ValueError("densenet_compact has no pretrained weights; use weights=None.")
        return ExplicitHeadDenseNet(torchvision.models.DenseNet(num_classes=num_classes, **COMPACT_DENSENET))
    factory = getattr(torchvision.models, arch)
    base = factory(weights=None)
    if weights is not None:
        _load_imagenet_weights(base, arch, weights)
    if arch == "densenet121":
        base.classifier = nn.Linear(base.classifier.in_features, num_classes)
        return ExplicitHeadDenseNet(base)
    base.fc = nn.Linear(base.fc.in_features, num_classes)
    return ExplicitHeadResNet(base)


def _load_imagenet_weights(base: nn.Module, arch: str, weights) -> None:
    """Load ImageNet weights into torchvision's ``base``; a file that does not fit it is a clear error naming it."""
    state = _renamed_dense_layer_keys(_imagenet_state_dict(arch, weights))
    try:
        found = base.load_state_dict(state, strict=False)
    except RuntimeError:  # a tensor of another shape
        problem = "tensors of other shapes"
    else:
        if not found.missing_keys and not found.unexpected_keys:
            return
        problem = ", ".join(
            f"{len(keys)} {kind} keys (e.g. {keys[0]})"
            for kind, keys in (("missing", found.missing_keys), ("unexpected", found.unexpected_keys))
            if keys
        )
    source = weights if weights != "imagenet" else IMAGENET_FILES[arch]
    raise ValueError(
        f"The weights in {source} do not fit torchvision's {arch} ({problem}). Pass the ImageNet state_dict of "
        f"{arch}: {IMAGENET_WEIGHTS[arch].url}."
    )


def _renamed_dense_layer_keys(state: dict) -> dict:
    """``state`` with old-style dense-layer keys (``...denselayer1.norm.1.weight``) renamed as the class names them
    (``...denselayer1.norm1.weight``); torchvision does the same in a private loader that a plain
    ``load_state_dict`` skips. Other keys are unchanged."""
    return {_OLD_DENSE_LAYER_KEY.sub(r"\1\2", key): value for key, value in state.items()}


def _imagenet_state_dict(arch: str, weights) -> dict:
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"Weights file not found: {path}.")
        return _read_weights_file(path, arch)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[arch]
    if cached.is_file():  # what torchvision would read; a broken one is a broken file, not a network problem
        return _read_weights_file(cached, arch)
    try:  # torch.hub's public function, looked up at the call (torchvision's copy is bound at its import)
        return torch.hub.load_state_dict_from_url(IMAGENET_WEIGHTS[arch].url, progress=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError: offline
        raise RuntimeError(
            f"Could not load ImageNet weights for {arch} ({error}). This machine seems offline. Download "
            f"{IMAGENET_WEIGHTS[arch].url} elsewhere and either put it at {cached} or pass its path: "
            f"build_model({arch!r}, weights='/path/to/{IMAGENET_FILES[arch]}')."
        ) from error


def _read_weights_file(path: Path, arch: str) -> dict:
    """A state dict file's tensors; a file torch cannot read (cut short, not a checkpoint) is an error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"Corrupt or unreadable weights file {path} ({reason}). Delete it and download "
            f"{IMAGENET_WEIGHTS[arch].url} again."
        ) from error


# --------------------------------------------------------------------------- checkpoints


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    import numpy

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }
    return {name: str(version) for name, version in versions.items()}  # TorchVersion is not weights_only-safe


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict, **extra) -> Path:
    """Write ``{"state_dict", "meta", **extra}`` atomically (temp file + rename).

    ``meta`` must hold plain types (str, numbers, lists, dicts) so that the file loads with
    ``torch.load(weights_only=True)``; it should name ``arch``, ``labels`` and ``image_size``.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {"state_dict": model.state_dict(), "meta": {**meta, "versions": library_versions()}, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw payload of a checkpoint; a clear :class:`CheckpointError` if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}. Run notebooks/02_train.ipynb first.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip / pickle
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or not a chexplain checkpoint ({type(error).__name__}: "
            f"{error}). Delete it and train again (notebook 02)."
        ) from error
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise CheckpointError(f"Checkpoint {path} lacks 'state_dict' or 'meta'; it was not written by chexplain.")
    return payload


def load_checkpoint(path: str | os.PathLike, **expected) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint; ``expected`` (e.g. ``arch=``, ``labels=``, ``image_size=``) must match.

    Raises
    ------
    CheckpointError
        If the file is corrupt, or a field differs from ``expected`` (the message names each mismatch).
    """
    payload = read_checkpoint(path)
    meta = payload["meta"]
    check_meta(meta, path, **expected)
    model = build_model(meta["arch"], num_classes=len(meta["labels"]))
    load_weights(model, payload["state_dict"], path)
    return model.eval(), meta


def load_weights(model: nn.Module, state_dict: dict, path: str | os.PathLike) -> None:
    """``model.load_state_dict`` of a checkpoint's weights; weights of another network (a run folder made by an
    earlier version, whose ``densenet_compact`` had other layers) raise :class:`CheckpointError` naming the file."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"Checkpoint {path} holds the weights of another network than this version builds ({first}): it was made "
            f"by an earlier chexplain. Remove its run folder (or `make clean`) and train again (notebook 02)."
        ) from None


def meta_mismatches(meta: dict, **expected) -> list[str]:
    """One line per field where ``meta`` differs from ``expected`` (tuples compare equal to lists).

    A setting of :data:`helpers.config.RESUME_DEFAULTS` that ``meta`` records but ``expected`` leaves out is
    expected at its default: a checkpoint trained with it set does not pass for one trained without it.
    """
    recorded = config.RESUME_DEFAULTS.keys() & meta.keys()
    expected = {**{key: config.RESUME_DEFAULTS[key] for key in recorded}, **expected}
    normalise = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return [
        f"{key}: checkpoint has {meta.get(key)!r}, expected {value!r}"
        for key, value in expected.items()
        if normalise(meta.get(key)) != normalise(value)
    ]


def check_meta(
    meta: dict, path, advice: str = "Retrain (notebook 02) or choose the matching profile.", **expected
) -> None:
    """Raise :class:`CheckpointError` naming every field where ``meta`` differs from ``expected``, then ``advice``."""
    mismatches = meta_mismatches(meta, **expected)
    if mismatches:
        raise CheckpointError(f"Checkpoint {path} does not match this run: " + "; ".join(mismatches) + f". {advice}")

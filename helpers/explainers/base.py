"""The one type every explanation method is: :class:`Explainer`, and the registry that names them.

An explainer owns what every method shares: eval mode with frozen parameters (restored afterwards),
batching over images, device placement (inputs follow the model's device; every tensor a method makes
takes device and dtype from its inputs), image ids, the model's probabilities, and the assembly of one
:class:`~helpers.heatmaps.HeatmapSet` whose ``method`` is the explainer's registered name. A subclass
writes only :meth:`Explainer.attribute`: maps for a batch that is already on the model's device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from helpers import labels
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.heatmaps import HeatmapSet, stack_pathologies
from helpers.tensors import to_numpy

_REGISTRY: dict[str, Callable[..., Explainer]] = {}
#: Peak GPU memory per input pixel of the reference explainer: LRP (EpsilonPlusFlat) for all 14 pathologies on
#: DenseNet-121 took 8.8 GB for 8 images at 224 px on an H200 (issue 13's measurement), about 22 kB per pixel.
#: An explainer's :attr:`Explainer.memory_scale` says how much more (or less) it needs.
PEAK_BYTES_PER_PIXEL = 22_000


class Explainer:
    """Base class: subclasses set :attr:`signed`, fill :attr:`params` and implement :meth:`attribute`.

    Attributes
    ----------
    name : str
        The registered name; also the ``HeatmapSet.method`` and the saved file's stem.
    signed : bool
        Whether maps carry signed relevance (LRP, Gradient x Input) rather than non-negative scores (CAM).
    params : dict
        Plain-JSON parameters, stored in every :class:`HeatmapSet` it makes.
    batch_size : int
        Images per call of :meth:`attribute`.
    normalisation : tuple of (mean, std)
        How the inputs were normalised (per channel), for methods that need pixel values (LRP's box bounds,
        Integrated Gradients' black baseline); ImageNet's by default, a :class:`~helpers.run.Run` sets the model's.
    memory_scale : float
        Peak memory per image as a multiple of :data:`PEAK_BYTES_PER_PIXEL`'s reference (at least the measured
        ratio: ``benchmarks/bench_explainer_memory.py``), for :func:`batch_size_for` on a GPU.
    """

    signed: bool = False
    memory_scale: float = 1.0

    def __init__(self, name: str, batch_size: int = 8, **params):
        self.name = name
        self.batch_size = batch_size
        self.params = dict(params)
        self.normalisation = (IMAGENET_MEAN, IMAGENET_STD)

    def attribute(self, model: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Maps ``(n, len(classes), H, W)`` for ``images`` (on the model's device). Subclasses implement it."""
        raise NotImplementedError

    def attribute_rows(self, model: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Maps ``(n, H, W)``: row ``r``'s map for class ``classes[r]`` (on the model's device).

        Here :meth:`attribute` once per distinct class, on that class's rows; methods whose maps come from one
        backward pass (LRP, the gradient family, Grad-CAM's fast path) override it with one pass over all rows.
        """
        maps: list = [None] * len(images)
        for c in dict.fromkeys(classes):
            rows = [r for r, k in enumerate(classes) if k == c]
            for r, heatmap in zip(rows, self.attribute(model, images[rows], [c])[:, 0]):
                maps[r] = heatmap
        return torch.stack(maps)

    def explain(
        self,
        model: nn.Module,
        images: torch.Tensor,
        pathologies: Sequence[str] | None = None,
        image_ids: Sequence[str] | None = None,
    ) -> HeatmapSet:
        """Explain every image for every pathology (default all 14).

        Parameters
        ----------
        model : nn.Module
            A classifier from :func:`helpers.models.build_model`; left in the mode it was in.
        images : Tensor
            Normalised inputs ``(n, 3, H, W)`` on any device; batches are moved to the model's device.
        pathologies : list of str, optional
            In :data:`helpers.labels.PATHOLOGIES` order (default all 14).
        image_ids : list of str, optional
            Stored in the result (default ``"0", "1", ...``).
        """
        names = stack_pathologies(pathologies)
        classes = labels.pathology_indices(names)
        device = model_device(model)
        maps, probs = [], []
        with frozen_eval(model):
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size].to(device)
                maps.append(to_numpy(self.attribute(model, batch, classes).float()))
                probs.append(_probabilities(model, batch, classes))
        return self._heatmap_set(np.concatenate(maps), images, image_ids, names, np.concatenate(probs))

    def explain_pairs(
        self,
        model: nn.Module,
        images: torch.Tensor,
        pairs: Sequence[tuple[int, str]],
        image_ids: Sequence[str] | None = None,
    ) -> HeatmapSet:
        """The maps of ``pairs`` (image index, pathology) only, in a set over the pairs' pathologies whose other
        maps are NaN: a check that compares a few maps per image (the sanity checks) explains just those.

        The pairs' images go through :meth:`attribute_rows` ``batch_size`` rows at a time; the probabilities are
        those of every image for the set's pathologies, as in :meth:`explain`.
        """
        if not pairs:
            raise ValueError(f"{self.name}: explain_pairs needs at least one (image index, pathology) pair.")
        names = stack_pathologies(list(dict.fromkeys(pathology for _, pathology in pairs)))
        rows, classes = [i for i, _ in pairs], [labels.PATHOLOGIES.index(p) for _, p in pairs]
        device = model_device(model)
        maps = None
        with frozen_eval(model):
            for start in range(0, len(pairs), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                found = to_numpy(self.attribute_rows(model, images[rows[chunk]].to(device), classes[chunk]).float())
                if maps is None:
                    maps = np.full((len(images), len(names), *found.shape[1:]), np.nan, np.float32)
                for (i, pathology), heatmap in zip(pairs[chunk], found):
                    maps[i, names.index(pathology)] = heatmap
            indices = labels.pathology_indices(names)
            probs = [
                _probabilities(model, images[start : start + self.batch_size].to(device), indices)
                for start in range(0, len(images), self.batch_size)
            ]
        return self._heatmap_set(maps, images, image_ids, names, np.concatenate(probs))

    def _heatmap_set(self, maps, images, image_ids, names, probs) -> HeatmapSet:
        ids = [str(i) for i in range(len(images))] if image_ids is None else [str(i) for i in image_ids]
        return HeatmapSet(maps, ids, names, self.name, dict(self.params), probs, signed=self.signed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.params})"


def _probabilities(model: nn.Module, batch: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    with torch.no_grad():
        return to_numpy(torch.sigmoid(model(batch)[:, classes].float()))


def batch_size_for(device: torch.device, image_size: int, default: int, most: int = 64, scale: float = 1.0) -> int:
    """Images per explanation batch: ``default`` on the CPU; on CUDA and MPS as many as half the free memory holds.

    Sized by :data:`PEAK_BYTES_PER_PIXEL` times ``scale`` (the explainer's :attr:`Explainer.memory_scale`), a
    measured peak on DenseNet-121, so smaller networks get a safe margin. Memory torch's caching allocator holds
    but no tensor uses (after training in the same process, say) counts as free.
    """
    free = _free_memory(device)
    if free is None:
        return default
    return int(max(1, min(most, free // 2 // (scale * PEAK_BYTES_PER_PIXEL * image_size**2))))


def _free_memory(device: torch.device) -> int | None:
    """Bytes the device can still give tensors (``None`` on the CPU, or on an MPS torch that cannot tell)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return max(0, torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    return None


def image_seed(seed: int, image: np.ndarray | torch.Tensor) -> np.random.SeedSequence:
    """The seed of random draws that belong to one image: ``seed`` and a checksum of the image's pixels.

    Draws made from it depend neither on the batch the image is explained in nor on its place there (nor on the
    device's batch size), so an image's map is the same explained alone or among others.

    Parameters
    ----------
    seed : int
        The explainer's seed.
    image : numpy.ndarray or torch.Tensor
        One image, on any device; checksummed as float64.
    """
    pixels = to_numpy(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.random.SeedSequence([seed, zlib.crc32(np.ascontiguousarray(pixels, dtype=np.float64).tobytes())])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


class frozen_eval:
    """Context: the model in eval mode with parameter gradients off; both restored on exit, also on errors."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.training = self.model.training
        self.requires_grad = [p.requires_grad for p in self.model.parameters()]
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> bool:
        self.model.train(self.training)
        for p, flag in zip(self.model.parameters(), self.requires_grad):
            p.requires_grad_(flag)
        return False


def register(name: str, factory: Callable[..., Explainer]) -> None:
    """Make ``create(name, **overrides)`` build ``factory(name=name, **overrides)``."""
    if name in _REGISTRY:
        raise ValueError(f"An explainer named {name!r} is already registered.")
    _REGISTRY[name] = factory


def create(name: str, **overrides) -> Explainer:
    """The explainer registered as ``name`` (see :func:`available`), with keyword overrides of its defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown explainer {name!r}; registered are {available()}.")
    return _REGISTRY[name](name=name, **overrides)


def available() -> list[str]:
    """Every registered explainer name, sorted."""
    return sorted(_REGISTRY)

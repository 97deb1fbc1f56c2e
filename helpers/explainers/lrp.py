"""Layer-wise Relevance Propagation through zennit: the :class:`LRP` explainer, its composites and checks.

The DenseNet canonizers live in :mod:`helpers.canonizers`. Relevance enters as the explained logit (a
one-hot mask times the logit), so a map sums to the logit when relevance is conserved and
:func:`conservation` is the sum over the logit. All pathologies share one forward pass and each rule's
modified forward: the backward is batched over pathologies with ``torch.autograd.grad(...,
is_grads_batched=True)`` (written here because zennit's attributors run one backward per output).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.composites import (
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.core import Composite
from zennit.rules import AlphaBeta, Epsilon, Pass, ZPlus
from zennit.types import AvgPool, BatchNorm, Convolution

from helpers import labels
from helpers.canonizers import canonizers_for, folded_away, level_number
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.explainers.base import Explainer, frozen_eval, model_device, register
from helpers.heatmaps import HeatmapSet, stack_pathologies
from helpers.tensors import to_numpy

#: LRP-0's stabiliser: small enough that LRP-0 equals Gradient x Input to 1e-9 relative in float64 (at 1e-6 the
#: two differ by 3e-3 on DenseNet-121), large enough to keep a zero pre-activation finite.
Z_EPSILON = 1e-12


def _all_layers(rule, affine_too: bool = False, stabilizer: float = 1e-6) -> Callable[..., Composite]:
    """A composite applying ``rule`` to every convolution and linear layer (iNNvestigate's convention).

    With ``affine_too`` the rule also decomposes BatchNorm and average pooling, as iNNvestigate (>= 2) does
    for LRP-Z and LRP-Epsilon (``bn_layer_rule``). zennit's base map gives BatchNorm the Pass rule instead:
    then LRP-0 divides post-BatchNorm relevance by pre-BatchNorm values and diverges on a deep DenseNet.
    A BatchNorm that canonization folded into its neighbour gets zennit's Pass rule (:class:`_UnfoldedLayerMap`).
    ``stabilizer`` is the base map's for sums (ResNet's residual additions) and, without ``affine_too``, pooling.
    """
    affine = [(BatchNorm, rule()), (AvgPool, rule())] if affine_too else []

    def build(canonizers=None, **_bounds):
        # zennit takes the first matching entry: the affine rules must precede the base map's Pass and Norm
        layers = affine + layer_map_base(stabilizer) + [(Convolution, rule()), (nn.Linear, rule())]
        return _UnfoldedLayerMap(layers, canonizers=canonizers)

    return build


class _UnfoldedLayerMap(LayerMapComposite):
    """zennit's layer map, with the Pass rule on the BatchNorms that canonization folded away (written here: zennit
    maps by type, and a folded BatchNorm still is one).

    Such a BatchNorm's layer now lives in the convolution it was folded into, which the rule decomposes already.
    The rule on it as well would take relevance again (epsilon = 1 keeps ``x / (x + 1)`` of it at each of
    DenseNet-121's folded BatchNorms: 59 at level 2, all 121 at level 3). Pass hands relevance on unchanged: for
    ours, whose forward is the identity, that is the gradient; zennit's merged BatchNorm still scales by
    ``1 / sqrt(1 + eps)``, which a gradient would apply to relevance and Pass does not.
    """

    def mapping(self, ctx, name, module):
        # register() applies the canonizers into self.handles before it maps the hooks, so they are seen here
        return Pass() if folded_away(module, self.handles) else super().mapping(ctx, name, module)


#: Composite factories ``(canonizers, low, high) -> Composite``. The first three are zennit's modern
#: composites; the last four are zennit analogues of the paper's iNNvestigate analysers (LRPZ, LRPEpsilon,
#: LRPAlpha2Beta1, DeepTaylor), not the analysers themselves. ``z`` is a consistent LRP-0 (z-rule on every
#: affine layer, BatchNorm included): it equals Gradient x Input. ``epsilon`` uses epsilon = 1; iNNvestigate's
#: LRPEpsilon defaults to 1e-7, at which it is LRP-0 (``z``) to within float precision.
COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon_plus_flat": lambda canonizers=None, **_: EpsilonPlusFlat(canonizers=canonizers),
    "epsilon_gamma_box": lambda canonizers=None, low=None, high=None: EpsilonGammaBox(
        low=low, high=high, canonizers=canonizers
    ),
    "epsilon_alpha2_beta1_flat": lambda canonizers=None, **_: EpsilonAlpha2Beta1Flat(canonizers=canonizers),
    "z": _all_layers(lambda: Epsilon(epsilon=Z_EPSILON), affine_too=True, stabilizer=Z_EPSILON),
    "epsilon": _all_layers(lambda: Epsilon(epsilon=1.0), affine_too=True),
    "alpha2_beta1": _all_layers(lambda: AlphaBeta(alpha=2.0, beta=1.0)),
    "deep_taylor": _all_layers(ZPlus),
}
#: Registered explainers' canonization where it is not "full": LRP-0 equals Gradient x Input only while every
#: activation is a plain ReLU; the threshold ReLUs of full canonization break that (its maps diverge there).
DEFAULT_CANONIZATION = {"z": "merge"}

MODERN_COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
#: The paper's LRP-z, LRP-epsilon (epsilon = 1), LRP-alpha2-beta1 and deep Taylor (z+).
PAPER_COMPOSITES = ("z", "epsilon", "alpha2_beta1", "deep_taylor")


def pixel_bounds(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, like: torch.Tensor | None = None
):
    """The normalised inputs' lowest and highest values (pixels 0 and 1), ``(1, 3, 1, 1)`` each, for ZBox.

    Made on the device and in the dtype of ``like`` (default: CPU float64).
    """
    options = {"dtype": torch.float64} if like is None else {"dtype": like.dtype, "device": like.device}
    mean_t = torch.as_tensor(mean, **options).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, **options).view(1, 3, 1, 1)
    return (0 - mean_t) / std_t, (1 - mean_t) / std_t


def make_composite(
    name: str,
    canonizers: Sequence[Canonizer] = (),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    like: torch.Tensor | None = None,
):
    """A fresh zennit composite by name (see :data:`COMPOSITES`), with ``canonizers`` registered first."""
    if name not in COMPOSITES:
        raise ValueError(f"Unknown composite {name!r}; choose from {sorted(COMPOSITES)}.")
    low, high = pixel_bounds(mean, std, like)
    return COMPOSITES[name](canonizers=list(canonizers), low=low, high=high)


class LRP(Explainer):
    """Signed LRP maps through a zennit composite and a canonization level, summed over colour channels.

    Parameters
    ----------
    composite : str
        One of :data:`COMPOSITES` (default ``"epsilon_plus_flat"``).
    canonization : int or str, optional
        1 ``"explicit_head"``, 2 ``"merge"`` or 3 ``"full"``; default the composite's own level
        (:data:`DEFAULT_CANONIZATION`: ``"merge"`` for LRP-0, ``"full"`` otherwise).
    mean, std : sequence of float
        The input normalisation, for the pixel bounds of ``"epsilon_gamma_box"``.
    """

    signed = True
    #: The heaviest composite's peak over EpsilonPlusFlat's, with a margin: 1.38 measured for LRP-0 and LRP-epsilon
    #: (measured while both put their rule on every BatchNorm, folded ones included: an upper bound now), at most
    #: 1.17 for the others, on DenseNet-121 at 224 px (``benchmarks/bench_explainer_memory.py``).
    memory_scale = 1.5

    def __init__(
        self,
        name: str | None = None,
        composite: str = "epsilon_plus_flat",
        canonization: int | str | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_size: int = 4,
    ):
        if composite not in COMPOSITES:
            raise ValueError(f"Unknown composite {composite!r}; choose from {sorted(COMPOSITES)}.")
        canonization = DEFAULT_CANONIZATION.get(composite, "full") if canonization is None else canonization
        super().__init__(
            name or f"lrp_{composite}",
            batch_size,
            composite=composite,
            canonization=level_number(canonization),
            explained="logit",
            output_relevance="one-hot x logit",
            channels="sum",
            # recorded so that maps saved before folded BatchNorms got the Pass rule are not reused as these
            folded_batchnorms="pass",
        )
        self.normalisation = (tuple(mean), tuple(std))

    def attribute(self, model, images, classes):
        return relevance_maps(model, self._composite(model, images), images, classes)[0]

    def attribute_rows(self, model, images, classes):
        return relevance_rows(model, self._composite(model, images), images, classes)

    def _composite(self, model, images) -> Composite:
        canonizers = canonizers_for(model, self.params["canonization"])
        return make_composite(self.params["composite"], canonizers, *self.normalisation, like=images)

    def explain(self, model, images, pathologies=None, image_ids=None) -> HeatmapSet:
        result = super().explain(model, images, pathologies, image_ids)
        _warn_if_diverged(result)
        return result


for _composite in COMPOSITES:
    register(
        f"lrp_{_composite}",
        functools.partial(LRP, composite=_composite),
    )


def explain_lrp(
    model: nn.Module,
    images: torch.Tensor,
    pathologies: Sequence[str] | None = None,
    composite: str = "epsilon_plus_flat",
    canonization: int | str | None = None,
    image_ids: Sequence[str] | None = None,
    batch_size: int = 4,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> HeatmapSet:
    """Signed LRP maps of every image for every pathology: :class:`LRP` in one call (see its parameters)."""
    explainer = LRP(composite=composite, canonization=canonization, mean=mean, std=std, batch_size=batch_size)
    return explainer.explain(model, images, pathologies, image_ids)


def _warn_if_diverged(result: HeatmapSet) -> None:
    """Rules without stabilisation (LRP-z) can overflow on deep networks: say so instead of hiding it."""
    diverged = int((~np.isfinite(result.maps)).any(axis=(-2, -1)).sum())
    if diverged:
        warnings.warn(
            f"{result.method} at canonization level {result.params['canonization']}: relevance diverged "
            f"(inf or NaN) in {diverged} of {result.maps.shape[0] * result.maps.shape[1]} maps. "
            f"Use a stabilised composite (e.g. epsilon_plus_flat), or LRP-0 at canonization 'merge'.",
            RuntimeWarning,
            stacklevel=3,
        )


def relevance_maps(model: nn.Module, composite: Composite, images: torch.Tensor, classes: Sequence[int]):
    """Maps ``(n, k, H, W)`` in the input's dtype and the logits ``(n, 14)``, from one forward pass.

    The backward is batched over ``classes`` (``is_grads_batched``): the forward pass and every rule's
    modified forward are computed once, only the relevance backward runs per class. The composite's
    hooks and canonizers are removed on exit, also on errors.
    """
    with composite.context(model) as hooked:
        inputs = images.detach().clone().requires_grad_(True)
        logits = hooked(inputs)
        relevance = _output_relevance(logits.detach(), classes)
        (attribution,) = torch.autograd.grad(logits, inputs, grad_outputs=relevance, is_grads_batched=True)
    return attribution.sum(dim=2).transpose(0, 1).detach(), logits.detach()


def relevance_rows(model: nn.Module, composite: Composite, images: torch.Tensor, classes: Sequence[int]):
    """Maps ``(n, H, W)`` in the input's dtype: row ``r``'s relevance for class ``classes[r]``, from one forward and
    one backward pass (no batching over classes: each row explains one logit). Hooks removed on exit."""
    with composite.context(model) as hooked:
        inputs = images.detach().clone().requires_grad_(True)
        logits = hooked(inputs)
        rows, columns = torch.arange(len(classes), device=logits.device), torch.as_tensor(classes, device=logits.device)
        relevance = torch.zeros_like(logits)
        relevance[rows, columns] = logits.detach()[rows, columns]
        (attribution,) = torch.autograd.grad(logits, inputs, grad_outputs=relevance)
    return attribution.sum(dim=1).detach()


def _output_relevance(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """``(k, n, n_outputs)``: for pathology ``j``, the logit of class ``classes[j]`` and zero elsewhere."""
    one_hot = torch.zeros(len(classes), *logits.shape, dtype=logits.dtype, device=logits.device)
    for j, c in enumerate(classes):
        one_hot[j, :, c] = logits[:, c]
    return one_hot


def conservation(heatmaps: HeatmapSet, logits: np.ndarray) -> np.ndarray:
    """Sum of each map over the explained logit, ``(n, k)``: 1 where relevance is conserved.

    ``logits`` are the model's ``(n, 14)`` outputs; the columns of the explained pathologies are used.
    """
    totals = heatmaps.maps.astype(np.float64).sum(axis=(-2, -1))
    explained = np.asarray(logits, dtype=np.float64)[:, labels.pathology_indices(heatmaps.pathologies)]
    return totals / explained


def conservation_table(
    model: nn.Module,
    images: torch.Tensor,
    composites: Sequence[str] = tuple(COMPOSITES),
    levels: Sequence[int] = (1, 2, 3),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    known: Iterable[HeatmapSet] = (),
) -> pd.DataFrame:
    """Relevance conservation (map sum / explained logit) for every composite x canonization level.

    Returns a DataFrame with one row per (composite, level): the median and quartiles over every
    image x pathology with a finite map, and the share of maps whose relevance diverged. Medians,
    because a logit near zero makes its ratio arbitrarily large.

    ``known`` are LRP maps already made whose first ``len(images)`` rows explain ``images`` (notebook 03's, of the
    explained batch): each stands in for the explanation at its own composite and level (its ``params``), so the
    table of notebook 03's 5 composites makes 10 passes instead of 15. A pass of 4 images is bound by kernel
    launches on a GPU (about 0.5 s on an H200: 8.4 s for this table and 3 more passes); on the CPU, where those
    images were one batch too, the maps are the same.
    """
    images = images.to(model_device(model))
    with torch.no_grad(), frozen_eval(model):
        logits = to_numpy(model(images)).astype(np.float64)  # on the CPU: MPS has no float64
    made = {  # like the maps made here: every pathology, at least these images
        (s.params.get("composite"), s.params.get("canonization")): s
        for s in known
        if s.pathologies == list(labels.PATHOLOGIES) and len(s.maps) >= len(images)
    }
    rows = []
    for composite in composites:
        for level in levels:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # divergence is reported in the table
                heatmaps = made.get((composite, level_number(level)))
                if heatmaps is None:
                    heatmaps = explain_lrp(model, images, composite=composite, canonization=level, mean=mean, std=std)
                ratio = conservation(_first_rows(heatmaps, len(images)), logits)
            finite = np.isfinite(ratio)
            q25, median, q75 = np.percentile(ratio[finite], [25, 50, 75]) if finite.any() else [np.nan] * 3
            rows.append(
                {
                    "composite": composite,
                    "canonization": level,
                    "median": median,
                    "q25": q25,
                    "q75": q75,
                    "diverged": 1 - finite.mean(),
                }
            )
    return pd.DataFrame(rows)


def _first_rows(heatmaps: HeatmapSet, n: int) -> HeatmapSet:
    """The maps of the first ``n`` images."""
    probs = None if heatmaps.probs is None else heatmaps.probs[:n]
    return dataclasses.replace(heatmaps, maps=heatmaps.maps[:n], image_ids=heatmaps.image_ids[:n], probs=probs)


def explain_lrp_separately(
    model: nn.Module,
    images: torch.Tensor,
    pathologies: Sequence[str] | None = None,
    composite: str = "epsilon_plus_flat",
    canonization: int | str = "full",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> torch.Tensor:
    """The reference: zennit's own ``Gradient`` attributor, once per pathology. ``(n, k, H, W)``, input dtype, on
    the model's device.

    Used by tests and the benchmark to check and time :class:`LRP`.
    """
    from zennit.attribution import Gradient

    classes = labels.pathology_indices(stack_pathologies(pathologies))
    images = images.to(model_device(model))
    zennit_composite = make_composite(composite, canonizers_for(model, canonization), mean, std, like=images)
    maps = []
    with frozen_eval(model), Gradient(model, zennit_composite) as attributor:
        for c in classes:

            def relevance(logits, c=c):
                mask = torch.zeros_like(logits)
                mask[:, c] = 1
                return mask * logits.detach()

            _, attribution = attributor(images.detach().clone(), relevance)
            maps.append(attribution.sum(dim=1))
    return torch.stack(maps, dim=1).detach()

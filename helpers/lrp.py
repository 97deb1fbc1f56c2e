"""Layer-wise Relevance Propagation through zennit, for every image x pathology, as a :class:`HeatmapSet`.

zennit has no DenseNet canonizer (its issue 165), so this module writes the three levels by hand:

1. **explicit head**: ReLU and pooling after ``features`` are modules zennit can hook. Models from
   :func:`helpers.models.build_model` already have them; a plain torchvision ``DenseNet`` gets them for the
   duration of the context (:class:`ExplicitHeadCanonizer`).
2. **merge**: every BatchNorm that directly follows a convolution (``conv0 -> norm0`` and each dense
   layer's ``conv1 -> norm2``) is folded into that convolution, by module name.
3. **full**: the BatchNorm -> ReLU -> linear blocks (each dense layer's ``norm1``, the transitions'
   ``norm``, ``norm5`` before the head) are rewritten with the threshold-ReLU construction of Pahde et al.
   (CVPR-W 2023): for a BatchNorm ``y = a x + b`` with ``a > 0``, ``relu(a x + b) = a max(x, t) + b`` with
   the threshold ``t = -b / a`` (``min`` for ``a < 0``). The activation becomes a threshold ReLU, the scale
   ``a`` and the shift ``b`` move into the following linear layer's weight and bias, and the BatchNorm
   becomes the identity. Where that layer is a zero-padded convolution the shift would wrongly reach the
   padded border, so its bias becomes a map: the convolution of the shift with the same padding (the
   border correction).

Each level is one zennit :class:`~zennit.canonizers.Canonizer` whose single instance snapshots every
parameter it touches and restores exactly those tensors on removal (zennit's own mergers restore in
registration order, which corrupts weights touched twice, and set the BatchNorm variance to 1 instead
of ``1 - eps``). ResNets use zennit's ``ResNetCanonizer`` as it is: each BatchNorm there is merged once,
and the variance shortcut moves outputs by about 1e-4 relative.

Relevance enters as the explained logit (a one-hot mask times the logit), so a map sums to the logit
when relevance is conserved and :func:`conservation` is the sum over the logit. All pathologies share
one forward pass and each rule's modified forward: the backward is batched over pathologies with
``torch.autograd.grad(..., is_grads_batched=True)`` (written here because zennit's attributors run
one backward per output).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.densenet import _DenseLayer, _Transition
from zennit.canonizers import AttributeCanonizer, Canonizer
from zennit.composites import (EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite,
                               layer_map_base)
from zennit.core import Composite
from zennit.rules import AlphaBeta, Epsilon, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

from helpers import labels
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.heatmaps import HeatmapSet, stack_pathologies
from helpers.models import ExplicitHeadDenseNet, ExplicitHeadResNet

#: Canonization levels, by name and number.
LEVELS = {"explicit_head": 1, "merge": 2, "full": 3}
SUPPORTED = ("DenseNet (helpers.models 'densenet121' / 'densenet_compact', or torchvision.models.DenseNet) "
             "and ResNet (helpers.models 'resnet50', or torchvision.models.ResNet)")


# --------------------------------------------------------------------------- composites


def _all_layers(rule) -> Callable[..., Composite]:
    """A composite applying ``rule`` to every convolution and linear layer (iNNvestigate's convention)."""
    def build(canonizers=None, **_bounds):
        return LayerMapComposite(layer_map_base() + [(Convolution, rule()), (nn.Linear, rule())],
                                 canonizers=canonizers)
    return build


#: Composite factories ``(canonizers, low, high) -> Composite``. The first three are zennit's modern
#: composites; the last four are the paper's iNNvestigate analysers expressed in zennit.
COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon_plus_flat": lambda canonizers=None, **_: EpsilonPlusFlat(canonizers=canonizers),
    "epsilon_gamma_box": lambda canonizers=None, low=None, high=None: EpsilonGammaBox(
        low=low, high=high, canonizers=canonizers),
    "epsilon_alpha2_beta1_flat": lambda canonizers=None, **_: EpsilonAlpha2Beta1Flat(canonizers=canonizers),
    "z": _all_layers(lambda: Epsilon(epsilon=1e-6)),
    "epsilon": _all_layers(lambda: Epsilon(epsilon=1.0)),
    "alpha2_beta1": _all_layers(lambda: AlphaBeta(alpha=2.0, beta=1.0)),
    "deep_taylor": _all_layers(ZPlus),
}
MODERN_COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
#: The paper's LRP-z, LRP-epsilon (epsilon = 1), LRP-alpha2-beta1 and deep Taylor (z+).
PAPER_COMPOSITES = ("z", "epsilon", "alpha2_beta1", "deep_taylor")


def pixel_bounds(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """The normalised inputs' lowest and highest values (pixels 0 and 1), ``(1, 3, 1, 1)`` each, for ZBox."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (0 - mean_t) / std_t, (1 - mean_t) / std_t


def make_composite(name: str, canonizers: Sequence[Canonizer] = (), mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """A fresh zennit composite by name (see :data:`COMPOSITES`), with ``canonizers`` registered first."""
    if name not in COMPOSITES:
        raise ValueError(f"Unknown composite {name!r}; choose from {sorted(COMPOSITES)}.")
    low, high = pixel_bounds(mean, std)
    return COMPOSITES[name](canonizers=list(canonizers), low=low, high=high)


# --------------------------------------------------------------------------- canonizers


class ExplicitHeadCanonizer(AttributeCanonizer):
    """Level 1: give a plain torchvision ``DenseNet`` an explicit ``head_relu -> pool -> flatten`` head.

    Models from :func:`helpers.models.build_model` have it already (the canonizer leaves them alone).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        if type(module) is not torchvision.models.DenseNet:
            return None
        head = ExplicitHeadDenseNet.forward
        return {"head_relu": nn.ReLU(), "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(1),
                "forward": head.__get__(module)}

    def copy(self):
        return ExplicitHeadCanonizer()


class BatchNormCanonizer(Canonizer):
    """Fold BatchNorms into neighbouring linear layers, by module name; undone exactly on removal.

    Parameters
    ----------
    name_map : callable
        ``root -> (merges, thresholds)``: ``merges`` lists ``(linear, batchnorm)`` names where the
        BatchNorm directly follows the linear layer; ``thresholds`` lists ``(batchnorm, relu, linear)``
        names of BatchNorm -> ReLU -> linear blocks (anything linear and constant-preserving, such as a
        global average pool, may sit between the ReLU and the linear layer).

    Written by hand: zennit has the merge (with ``running_var = 1``, off by ``eps``) but not the
    threshold-ReLU construction, and its per-pair instances restore shared weights in the wrong order.
    """

    def __init__(self, name_map: Callable[[nn.Module], tuple[list, list]]):
        self.name_map = name_map
        self._saved: list[tuple[nn.Module, str, object]] = []
        self._patched_forwards: list[nn.Module] = []

    def copy(self):
        return BatchNormCanonizer(self.name_map)

    def apply(self, root_module):
        instance = self.copy()
        instance.register(root_module)
        return [instance]

    def register(self, root_module):
        modules = dict(root_module.named_modules())
        merges, thresholds = self.name_map(root_module)
        try:
            for bn, relu, linear in thresholds:  # before the merges: both may rewrite the same convolution
                self._threshold(modules[bn], modules[relu], modules[linear])
            for linear, bn in merges:
                self._merge(modules[linear], modules[bn])
        except Exception:
            self.remove()
            raise

    def remove(self):
        for module in reversed(self._patched_forwards):
            module.__dict__.pop("forward", None)
        for module, name, value in reversed(self._saved):
            if isinstance(value, torch.Tensor):
                getattr(module, name).data = value
            else:  # the attribute was added (e.g. a bias where there was none)
                setattr(module, name, value)
        self._saved.clear()
        self._patched_forwards.clear()

    # -- the two rewrites ------------------------------------------------------------------------------

    def _merge(self, linear: nn.Module, bn: nn.BatchNorm2d):
        """``bn(linear(x)) = linear'(x)``; the BatchNorm then computes the identity."""
        scale, shift = _affine(bn)
        bias = linear.bias.data if linear.bias is not None else 0.0
        self._set(linear, "weight", linear.weight.data * _per_output(scale, linear))
        self._set(linear, "bias", bias * scale + shift)
        self._patch_forward(bn, _identity)

    def _threshold(self, bn: nn.BatchNorm2d, relu: nn.Module, linear: nn.Module):
        """``linear(relu(bn(x))) = linear'(threshold_relu(x))`` (Pahde et al. 2023)."""
        a, b = _affine(bn)
        nonzero = a != 0
        threshold = torch.where(nonzero, -b / torch.where(nonzero, a, 1), torch.zeros_like(b))
        shift = torch.where(nonzero, b, b.clamp(min=0))  # a == 0: the activation is the constant relu(b)
        self._patch_forward(bn, _identity)
        self._patch_forward(relu, _threshold_relu(a, threshold))
        weight = linear.weight.data
        self._set(linear, "weight", weight * _per_input(a, linear))
        bias = linear.bias.data if linear.bias is not None else torch.zeros_like(weight[:, 0].flatten(1)[:, 0])
        if isinstance(linear, nn.Conv2d) and _is_padded(linear):
            self._set(linear, "bias", torch.zeros(1, dtype=weight.dtype))  # sized at the first forward
            self._patch_forward(linear, _border_corrected_conv(linear, weight, shift, bias))
        else:
            self._set(linear, "bias", bias + _apply_to_constant(linear, weight, shift))

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _set(self, module: nn.Module, name: str, value: torch.Tensor):
        current = getattr(module, name)
        self._saved.append((module, name, current.data if current is not None else None))
        if current is None:
            setattr(module, name, nn.Parameter(value, requires_grad=False))
        else:
            current.data = value

    def _patch_forward(self, module: nn.Module, forward: Callable):
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} is already rewritten by another canonizer.")
        module.forward = forward
        self._patched_forwards.append(module)


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(a, b)`` with ``bn(x) = a x + b`` in eval mode."""
    a = bn.weight.data / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias.data - bn.running_mean * a


def _identity(x):
    return x


def _threshold_relu(a: torch.Tensor, threshold: torch.Tensor) -> Callable:
    """``max(x, t)`` on channels with ``a > 0``, ``min(x, t)`` with ``a < 0``, 0 with ``a == 0``.

    Written as one ``where`` on a precomputed mask so that its autograd backward is a single masking
    op (it runs once per pathology in the batched backward).
    """
    shape = (1, -1, 1, 1)
    sign, t = a.sign().view(shape), threshold.view(shape)
    floor = torch.where(sign != 0, t, torch.zeros_like(t))

    def forward(x):
        return torch.where((x - t) * sign > 0, x, floor.to(x))
    return forward


def _per_output(values: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    return values.view(-1, *([1] * (linear.weight.ndim - 1)))


def _per_input(values: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    return values.view(1, -1, *([1] * (linear.weight.ndim - 2)))


def _is_padded(conv: nn.Conv2d) -> bool:
    return conv.padding == "same" or any(p != 0 for p in conv.padding)


def _apply_to_constant(linear: nn.Module, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """What ``linear`` (without bias) outputs for an input that is ``shift`` everywhere: ``(out,)``."""
    if isinstance(linear, nn.Linear):
        return weight @ shift
    if isinstance(linear, nn.Conv2d) and linear.groups == 1:
        return (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    raise ValueError(f"Cannot fold a BatchNorm into {type(linear).__name__}; expected Linear or Conv2d.")


def _border_corrected_conv(conv: nn.Conv2d, weight: torch.Tensor, shift: torch.Tensor,
                           bias: torch.Tensor) -> Callable:
    """Forward of a padded convolution whose bias is a map: the shift convolved with zero padding, plus ``bias``.

    The map is made for each new input size and kept in ``conv.bias``, where zennit's rules modify it
    like any bias (their modified forward passes see the input size the map was made for).
    """
    made_for = {}

    def forward(x):
        out = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        if made_for.get("size") != tuple(x.shape[-2:]):
            constant = shift.view(1, -1, 1, 1).expand(1, -1, *x.shape[-2:]).to(weight)
            conv.bias.data = F.conv2d(constant, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            made_for["size"] = tuple(x.shape[-2:])
        return out + conv.bias
    return forward


def _densenet_names(root: nn.Module, level: int) -> tuple[list, list]:
    """The merge pairs (level >= 2) and threshold triples (level 3) of a DenseNet, by module name."""
    features = _densenet_features(root)
    prefix = next(name for name, module in root.named_modules() if module is features)
    merges, thresholds = [(f"{prefix}.conv0", f"{prefix}.norm0")], []
    for name, module in features.named_children():
        full = f"{prefix}.{name}"
        for layer_name, layer in module.named_children():
            if isinstance(layer, _DenseLayer):
                dense = f"{full}.{layer_name}"
                merges.append((f"{dense}.conv1", f"{dense}.norm2"))
                thresholds.append((f"{dense}.norm1", f"{dense}.relu1", f"{dense}.conv1"))
        if isinstance(module, _Transition):
            thresholds.append((f"{full}.norm", f"{full}.relu", f"{full}.conv"))
    thresholds.append((f"{prefix}.norm5", "head_relu", "classifier"))
    return merges, thresholds if level >= 3 else []


def _densenet_features(root: nn.Module) -> nn.Module:
    if not isinstance(root, (ExplicitHeadDenseNet, torchvision.models.DenseNet)):
        raise ValueError(f"The DenseNet canonizers apply to {SUPPORTED.split(' and ')[0]}; got "
                         f"{type(root).__name__}.")
    return root.features


def densenet_canonizers(level: int | str = "full") -> list[Canonizer]:
    """zennit canonizers for a DenseNet at canonization ``level`` (1/2/3 or a name in :data:`LEVELS`)."""
    number = _level_number(level)
    canonizers: list[Canonizer] = [ExplicitHeadCanonizer()]
    if number >= 2:
        canonizers.append(BatchNormCanonizer(lambda root: _densenet_names(root, number)))
    return canonizers


def canonizers_for(model: nn.Module, level: int | str = "full") -> list[Canonizer]:
    """The canonizers for ``model``: ours for a DenseNet, zennit's ``ResNetCanonizer`` for a ResNet.

    For a ResNet, levels 2 and 3 are the same (its BatchNorms all follow convolutions).
    """
    number = _level_number(level)
    if isinstance(model, (ExplicitHeadDenseNet, torchvision.models.DenseNet)):
        return densenet_canonizers(number)
    if isinstance(model, (ExplicitHeadResNet, torchvision.models.ResNet)):
        return [ResNetCanonizer()] if number >= 2 else []
    raise ValueError(f"LRP supports {SUPPORTED}; got {type(model).__name__}.")


def _level_number(level: int | str) -> int:
    number = LEVELS.get(level, level) if isinstance(level, str) else level
    if number not in (1, 2, 3):
        raise ValueError(f"Unknown canonization level {level!r}; choose 1, 2, 3 or one of {sorted(LEVELS)}.")
    return number


# --------------------------------------------------------------------------- attribution


def explain_lrp(model: nn.Module, images: torch.Tensor, pathologies: Sequence[str] | None = None,
                composite: str = "epsilon_plus_flat", canonization: int | str = "full",
                image_ids: Sequence[str] | None = None, batch_size: int = 4,
                mean=IMAGENET_MEAN, std=IMAGENET_STD) -> HeatmapSet:
    """Signed LRP maps of every image for every pathology.

    Parameters
    ----------
    model : nn.Module
        A DenseNet or ResNet (see :data:`SUPPORTED`), ideally from :func:`helpers.models.build_model`.
    images : Tensor
        Normalised inputs ``(n, 3, H, W)`` (float32, or float64 with a float64 model).
    pathologies : list of str, optional
        Default all 14.
    composite : str
        One of :data:`COMPOSITES` (default ``"epsilon_plus_flat"``).
    canonization : int or str
        1 ``"explicit_head"``, 2 ``"merge"`` or 3 ``"full"`` (default).
    image_ids : list of str, optional
        Stored in the result (default ``"0", "1", ...``).
    batch_size : int
        Images per forward pass; each is explained for all pathologies in one batched backward.
    mean, std : sequence of float
        The input normalisation, for the pixel bounds of ``"epsilon_gamma_box"``.

    Returns
    -------
    HeatmapSet
        Maps ``(n, n_pathologies, H, W)`` summed over colour channels; ``params`` records the composite,
        the canonization level and the output relevance.
    """
    names = stack_pathologies(pathologies)
    classes = labels.pathology_indices(names)
    level = _level_number(canonization)
    zennit_composite = make_composite(composite, canonizers_for(model, level), mean, std)
    maps, probs = [], []
    with _eval_mode(model):
        for start in range(0, len(images), batch_size):
            chunk_maps, chunk_probs = _explain_chunk(model, zennit_composite, images[start:start + batch_size],
                                                     classes)
            maps.append(chunk_maps)
            probs.append(chunk_probs)
    ids = [str(i) for i in range(len(images))] if image_ids is None else list(image_ids)
    params = {"composite": composite, "canonization": level, "explained": "logit",
              "output_relevance": "one-hot x logit", "channels": "sum"}
    result = HeatmapSet(np.concatenate(maps), ids, names, f"lrp_{composite}", params, np.concatenate(probs))
    _warn_if_diverged(result)
    return result


def _warn_if_diverged(result: HeatmapSet) -> None:
    """Rules without stabilisation (LRP-z) can overflow on deep networks: say so instead of hiding it."""
    diverged = int((~np.isfinite(result.maps)).any(axis=(-2, -1)).sum())
    if diverged:
        warnings.warn(f"{result.method} at canonization level {result.params['canonization']}: relevance diverged "
                      f"(inf or NaN) in {diverged} of {result.maps.shape[0] * result.maps.shape[1]} maps. "
                      f"Use a stabilised composite (e.g. epsilon_plus_flat) or canonization='full'.",
                      RuntimeWarning, stacklevel=3)


def _explain_chunk(model, composite: Composite, images: torch.Tensor, classes: Sequence[int]):
    maps, logits = relevance_maps(model, composite, images, classes)
    probs = torch.sigmoid(logits[:, classes])
    return maps.float().cpu().numpy(), probs.float().cpu().numpy()


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


def _output_relevance(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """``(k, n, n_outputs)``: for pathology ``j``, the logit of class ``classes[j]`` and zero elsewhere."""
    one_hot = torch.zeros(len(classes), *logits.shape, dtype=logits.dtype, device=logits.device)
    for j, c in enumerate(classes):
        one_hot[j, :, c] = logits[:, c]
    return one_hot


class _eval_mode:
    """Context: the model in eval mode without parameter gradients, restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.requires_grad = [p.requires_grad for p in self.model.parameters()]
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.training)
        for p, flag in zip(self.model.parameters(), self.requires_grad):
            p.requires_grad_(flag)
        return False


def conservation(heatmaps: HeatmapSet, logits: np.ndarray) -> np.ndarray:
    """Sum of each map over the explained logit, ``(n, k)``: 1 where relevance is conserved.

    ``logits`` are the model's ``(n, 14)`` outputs; the columns of the explained pathologies are used.
    """
    totals = heatmaps.maps.astype(np.float64).sum(axis=(-2, -1))
    explained = np.asarray(logits, dtype=np.float64)[:, labels.pathology_indices(heatmaps.pathologies)]
    return totals / explained


def conservation_table(model: nn.Module, images: torch.Tensor, composites: Sequence[str] = tuple(COMPOSITES),
                       levels: Sequence[int] = (1, 2, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Relevance conservation (map sum / explained logit) for every composite x canonization level.

    Returns a DataFrame with one row per (composite, level): the median and quartiles over every
    image x pathology with a finite map, and the share of maps whose relevance diverged. Medians,
    because a logit near zero makes its ratio arbitrarily large.
    """
    import pandas as pd

    with torch.no_grad(), _eval_mode(model):
        logits = model(images).double().cpu().numpy()
    rows = []
    for composite in composites:
        for level in levels:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # divergence is reported in the table
                ratio = conservation(explain_lrp(model, images, composite=composite, canonization=level,
                                                 mean=mean, std=std), logits)
            finite = np.isfinite(ratio)
            q25, median, q75 = np.percentile(ratio[finite], [25, 50, 75]) if finite.any() else [np.nan] * 3
            rows.append({"composite": composite, "canonization": level, "median": median, "q25": q25, "q75": q75,
                         "diverged": 1 - finite.mean()})
    return pd.DataFrame(rows)


def explain_lrp_separately(model: nn.Module, images: torch.Tensor, pathologies: Sequence[str] | None = None,
                           composite: str = "epsilon_plus_flat", canonization: int | str = "full",
                           mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The reference: zennit's own ``Gradient`` attributor, once per pathology. ``(n, k, H, W)``, input dtype.

    Used by tests and the benchmark to check and time :func:`explain_lrp`.
    """
    from zennit.attribution import Gradient

    classes = labels.pathology_indices(stack_pathologies(pathologies))
    zennit_composite = make_composite(composite, canonizers_for(model, canonization), mean, std)
    maps = []
    with _eval_mode(model), Gradient(model, zennit_composite) as attributor:
        for c in classes:
            def relevance(logits, c=c):
                mask = torch.zeros_like(logits)
                mask[:, c] = 1
                return mask * logits.detach()
            _, attribution = attributor(images.detach().clone(), relevance)
            maps.append(attribution.sum(dim=1))
    return torch.stack(maps, dim=1).detach()

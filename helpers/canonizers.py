"""DenseNet canonizers for zennit, in the style of ``zennit.torchvision`` (zennit has none: its issue 165).

Three levels, each one zennit :class:`~zennit.canonizers.Canonizer`:

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

The single instance of each canonizer snapshots every parameter it touches and restores exactly those
tensors on removal (zennit's own mergers restore in registration order, which corrupts weights touched
twice, and set the BatchNorm variance to 1 instead of ``1 - eps``). ResNets use zennit's
``ResNetCanonizer`` as it is: each BatchNorm there is merged once, and the variance shortcut moves outputs
by about 1e-4 relative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from zennit.canonizers import AttributeCanonizer, Canonizer
from zennit.torchvision import ResNetCanonizer

from helpers.models import ExplicitHeadDenseNet, ExplicitHeadResNet

#: Canonization levels, by name and number.
LEVELS = {"explicit_head": 1, "merge": 2, "full": 3}
SUPPORTED = (
    "DenseNet (helpers.models 'densenet121' / 'densenet_compact', or torchvision.models.DenseNet) "
    "and ResNet (helpers.models 'resnet50', or torchvision.models.ResNet)"
)
#: Child names that make a module a DenseNet dense layer or transition (torchvision's own names; its
#: classes ``_DenseLayer`` and ``_Transition`` are private, so they are recognised by structure).
DENSE_LAYER_CHILDREN = ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2")
TRANSITION_CHILDREN = ("norm", "relu", "conv", "pool")


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
        return {
            "head_relu": nn.ReLU(),
            "pool": nn.AdaptiveAvgPool2d(1),
            "flatten": nn.Flatten(1),
            "forward": head.__get__(module),
        }

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


def folded_away(module: nn.Module, applied: Sequence[Canonizer] = ()) -> bool:
    """Whether canonization has folded this BatchNorm into a neighbouring layer, so that it passes its input on.

    Ours leave such a BatchNorm with the identity as its forward. zennit's ``MergeBatchNorm`` (ResNets) resets its
    parameters instead, to the identity up to ``1 / sqrt(1 + eps)``, and names it: pass the canonizer instances
    that were applied (a composite's ``handles``) to recognise those. A rule registered on a folded BatchNorm
    would decompose a layer the canonized network no longer has.
    """
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    return module.__dict__.get("forward") is _identity or any(
        getattr(canonizer, "batch_norm", None) is module for canonizer in applied
    )


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


def _border_corrected_conv(conv: nn.Conv2d, weight: torch.Tensor, shift: torch.Tensor, bias: torch.Tensor) -> Callable:
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
            if _has_children(layer, DENSE_LAYER_CHILDREN):
                dense = f"{full}.{layer_name}"
                merges.append((f"{dense}.conv1", f"{dense}.norm2"))
                thresholds.append((f"{dense}.norm1", f"{dense}.relu1", f"{dense}.conv1"))
        if _has_children(module, TRANSITION_CHILDREN):
            thresholds.append((f"{full}.norm", f"{full}.relu", f"{full}.conv"))
    thresholds.append((f"{prefix}.norm5", "head_relu", "classifier"))
    return merges, thresholds if level >= 3 else []


def _has_children(module: nn.Module, names: tuple[str, ...]) -> bool:
    return tuple(name for name, _ in module.named_children()) == names


def _densenet_features(root: nn.Module) -> nn.Module:
    if not isinstance(root, (ExplicitHeadDenseNet, torchvision.models.DenseNet)):
        raise ValueError(f"The DenseNet canonizers apply to {SUPPORTED.split(' and ')[0]}; got {type(root).__name__}.")
    return root.features


def densenet_canonizers(level: int | str = "full") -> list[Canonizer]:
    """zennit canonizers for a DenseNet at canonization ``level`` (1/2/3 or a name in :data:`LEVELS`)."""
    number = level_number(level)
    canonizers: list[Canonizer] = [ExplicitHeadCanonizer()]
    if number >= 2:
        canonizers.append(BatchNormCanonizer(lambda root: _densenet_names(root, number)))
    return canonizers


def canonizers_for(model: nn.Module, level: int | str = "full") -> list[Canonizer]:
    """The canonizers for ``model``: ours for a DenseNet, zennit's ``ResNetCanonizer`` for a ResNet.

    For a ResNet, levels 2 and 3 are the same (its BatchNorms all follow convolutions).
    """
    number = level_number(level)
    if isinstance(model, (ExplicitHeadDenseNet, torchvision.models.DenseNet)):
        return densenet_canonizers(number)
    if isinstance(model, (ExplicitHeadResNet, torchvision.models.ResNet)):
        return [ResNetCanonizer()] if number >= 2 else []
    raise ValueError(f"LRP supports {SUPPORTED}; got {type(model).__name__}.")


def level_number(level: int | str) -> int:
    """Canonization level 1, 2 or 3 from a number or a name in :data:`LEVELS`; a clear error otherwise."""
    number = LEVELS.get(level, level) if isinstance(level, str) else level
    if number not in (1, 2, 3):
        raise ValueError(f"Unknown canonization level {level!r}; choose 1, 2, 3 or one of {sorted(LEVELS)}.")
    return number

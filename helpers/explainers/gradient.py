"""Gradient baselines as zennit computes them: saliency, Gradient x Input, SmoothGrad, Integrated Gradients.

Each explains the pathology's logit. zennit's attributors run one backward pass per output, so 14 pathologies
cost 14 forward and backward passes per noise sample or path step; here each sample's forward pass is shared
and the backward is batched over the pathologies (``is_grads_batched``, as :mod:`helpers.explainers.lrp` does):
written by hand for that reason, and checked against zennit's ``Gradient``, ``SmoothGrad`` and
``IntegratedGradients`` pathology by pathology (:meth:`GradientFamily.zennit_attributor`). SmoothGrad draws
its noise once per sample for all pathologies (the same draws zennit makes for one). Saliency
and SmoothGrad report the largest absolute gradient over the colour channels (Simonyan et al.'s map, so
non-negative); Gradient x Input and Integrated Gradients are signed and summed over channels, like LRP
(whose LRP-0 equals Gradient x Input). Integrated Gradients starts from the black image (pixel value 0 in
every channel, normalised like the inputs): air on a radiograph.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from zennit.attribution import Gradient as ZennitGradient
from zennit.attribution import IntegratedGradients as ZennitIntegratedGradients
from zennit.attribution import SmoothGrad as ZennitSmoothGrad

from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.explainers.base import Explainer, register


class GradientFamily(Explainer):
    """One zennit attributor, run once per pathology with a one-hot output attribution.

    Parameters
    ----------
    kind : {"gradient", "gradient_x_input", "smoothgrad", "integrated_gradients"}
    n_iter : int
        Noise samples (SmoothGrad) or path steps (Integrated Gradients).
    noise_level : float
        SmoothGrad's noise standard deviation as a share of each input's value range.
    seed : int
        SmoothGrad's noise seed (drawn on the input's device, without touching the global random state).
    mean, std : sequence of float
        The input normalisation, for Integrated Gradients' black baseline.
    """

    KINDS = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients")

    def __init__(
        self,
        name: str | None = None,
        kind: str = "gradient",
        n_iter: int = 10,
        noise_level: float = 0.1,
        seed: int = 0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_size: int = 8,
    ):
        if kind not in self.KINDS:
            raise ValueError(f"Unknown gradient method {kind!r}; choose from {self.KINDS}.")
        params = {"kind": kind, "explained": "logit", "library": "by hand, checked against zennit's attributors"}
        if kind == "smoothgrad":
            params.update(n_iter=n_iter, noise_level=noise_level, seed=seed)
        if kind == "integrated_gradients":
            params.update(n_iter=n_iter, baseline="black image")
        super().__init__(name or kind, batch_size, **params)
        self.signed = kind in ("gradient_x_input", "integrated_gradients")
        self.normalisation = (tuple(mean), tuple(std))

    def attribute(self, model, images, classes):
        return self._averaged(images, lambda point: _class_gradients(model, point, classes)).transpose(0, 1)

    def attribute_rows(self, model, images, classes):
        return self._averaged(images, lambda point: _row_gradients(model, point, classes))

    def _averaged(self, images: torch.Tensor, gradients) -> torch.Tensor:
        """The maps from ``gradients(point)`` (``(..., n, 3, H, W)``) averaged over the method's points."""
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.params.get("seed", 0))
            points = self._points(images)
            total = sum(gradients(point) for point in points) / len(points)
        if self.params["kind"] == "integrated_gradients":
            total = total * (images - self._black(images))
        return self._reduce(total, images)

    def _points(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The inputs whose gradients are averaged: zennit's noise samples (the last one noise-free) or path steps."""
        kind, params = self.params["kind"], self.params
        if kind == "smoothgrad":
            dims = tuple(range(1, images.ndim))
            spread = params["noise_level"] * (images.amax(dims, keepdim=True) - images.amin(dims, keepdim=True))
            noise = [torch.randn_like(images) * spread for _ in range(params["n_iter"] - 1)]
            return [images + epsilon for epsilon in noise] + [images]
        if kind == "integrated_gradients":
            baseline = self._black(images)
            alphas = torch.linspace(1.0 / params["n_iter"], 1.0, params["n_iter"])
            return [baseline + alpha * (images - baseline) for alpha in alphas]
        return [images]

    def zennit_attributor(self, model):
        """zennit's own attributor for this method, one pathology per call: the reference the tests compare with."""
        kind, params = self.params["kind"], self.params
        if kind == "smoothgrad":
            return ZennitSmoothGrad(model, noise_level=params["noise_level"], n_iter=params["n_iter"])
        if kind == "integrated_gradients":
            return ZennitIntegratedGradients(model, n_iter=params["n_iter"], baseline_fn=self._black)
        return ZennitGradient(model)

    def _black(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = (
            torch.as_tensor(v, dtype=images.dtype, device=images.device).view(1, -1, 1, 1) for v in self.normalisation
        )
        return ((0 - mean) / std).expand_as(images)

    def _reduce(self, gradient: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Maps from gradients ``(..., 3, H, W)`` over the colour channels (the second-last but two axis)."""
        kind = self.params["kind"]
        if kind == "gradient_x_input":
            return (gradient * images).sum(dim=-3)
        if kind == "integrated_gradients":  # already multiplied by (input - baseline)
            return gradient.sum(dim=-3)
        return gradient.abs().amax(dim=-3)


def _class_gradients(model, inputs: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Gradients of each class's logit, ``(k, n, 3, H, W)``: one forward pass, the backward batched over classes."""
    inputs = inputs.detach().clone().requires_grad_(True)
    logits = model(inputs)
    selector = torch.zeros(len(classes), *logits.shape, dtype=logits.dtype, device=logits.device)
    for j, c in enumerate(classes):
        selector[j, :, c] = 1
    (gradients,) = torch.autograd.grad(logits, inputs, grad_outputs=selector, is_grads_batched=True)
    return gradients


def _row_gradients(model, inputs: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Gradients ``(n, 3, H, W)``: row ``r``'s of class ``classes[r]``'s logit, one forward and one backward pass."""
    inputs = inputs.detach().clone().requires_grad_(True)
    logits = model(inputs)
    selector = torch.zeros_like(logits)
    rows, columns = torch.arange(len(classes), device=logits.device), torch.as_tensor(classes, device=logits.device)
    selector[rows, columns] = 1
    (gradients,) = torch.autograd.grad(logits, inputs, grad_outputs=selector)
    return gradients


for _kind in GradientFamily.KINDS:
    register(_kind, functools.partial(GradientFamily, kind=_kind))


def gradient_methods() -> Sequence[str]:
    """The registered names of the gradient baselines."""
    return GradientFamily.KINDS

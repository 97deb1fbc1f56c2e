"""Gradient baselines as zennit computes them: saliency, Gradient x Input, SmoothGrad, Integrated Gradients.

Each explains the pathology's logit. zennit's attributors run one backward pass per output, so 14 pathologies
cost 14 forward and backward passes per noise sample or path step; here each sample's forward pass is shared
and the backward is batched over the pathologies (``is_grads_batched``, as :mod:`helpers.explainers.lrp` does):
written by hand for that reason, and checked against zennit's ``Gradient``, ``SmoothGrad`` and
``IntegratedGradients`` pathology by pathology (:meth:`GradientFamily.zennit_attributor`). SmoothGrad draws
its noise once per sample for all pathologies, and per image from a generator seeded by the seed and the image's
pixels (:func:`~helpers.explainers.base.image_seed`): the draws zennit makes for that image alone, whatever batch
the image is explained in. Saliency
and SmoothGrad report the largest absolute gradient over the colour channels (Simonyan et al.'s map, so
non-negative); Gradient x Input and Integrated Gradients are signed and summed over channels, like LRP
(whose LRP-0 equals Gradient x Input). Integrated Gradients starts from the black image (pixel value 0 in
every channel, normalised like the inputs): air on a radiograph.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from zennit.attribution import Gradient as ZennitGradient
from zennit.attribution import IntegratedGradients as ZennitIntegratedGradients
from zennit.attribution import SmoothGrad as ZennitSmoothGrad

from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.explainers.base import Explainer, image_seed, register


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
        SmoothGrad's noise seed: each image's noise comes from its own generator, seeded by this and the image's
        pixels (drawn on the CPU, so that every device adds the same noise, without touching the global random
        state).
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
            noise = self._noise(images, params["n_iter"] - 1)
            return [images + epsilon * spread for epsilon in noise] + [images]
        if kind == "integrated_gradients":
            baseline = self._black(images)
            alphas = torch.linspace(1.0 / params["n_iter"], 1.0, params["n_iter"])
            return [baseline + alpha * (images - baseline) for alpha in alphas]
        return [images]

    def _noise(self, images: torch.Tensor, samples: int) -> list[torch.Tensor]:
        """``samples`` standard normal draws shaped like ``images``, each image's from its own generator
        (:meth:`noise_generator`) in the order zennit draws them for one image; moved to the images' device."""
        generators = [self.noise_generator(image) for image in images]
        shape, dtype = images.shape[1:], images.dtype
        return [
            torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(images.device)
            for _ in range(samples)
        ]

    def noise_generator(self, image: torch.Tensor) -> torch.Generator:
        """SmoothGrad's CPU generator for one image, seeded by the seed and the image's pixels."""
        return torch.Generator().manual_seed(
            int(image_seed(self.params["seed"], image).generate_state(1, np.uint64)[0])
        )

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

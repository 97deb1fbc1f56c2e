"""Gradient baselines through zennit's attributors: saliency, Gradient x Input, SmoothGrad, Integrated Gradients.

Each explains the pathology's logit (the gradient of that logit, one zennit call per pathology). Saliency
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
        params = {"kind": kind, "explained": "logit", "library": "zennit"}
        if kind == "smoothgrad":
            params.update(n_iter=n_iter, noise_level=noise_level, seed=seed)
        if kind == "integrated_gradients":
            params.update(n_iter=n_iter, baseline="black image")
        super().__init__(name or kind, batch_size, **params)
        self.signed = kind in ("gradient_x_input", "integrated_gradients")
        self.normalisation = (tuple(mean), tuple(std))

    def attribute(self, model, images, classes):
        attributor = self._attributor(model, images)
        devices = [images.device] if images.device.type == "cuda" else []
        maps = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.params.get("seed", 0))
            for c in classes:
                _, gradient = attributor(images.detach().clone(), functools.partial(_one_hot, column=c))
                maps.append(self._reduce(gradient, images))
        return torch.stack(maps, dim=1)

    def _attributor(self, model, images):
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
        kind = self.params["kind"]
        if kind == "gradient_x_input":
            return (gradient * images).sum(dim=1)
        if kind == "integrated_gradients":  # zennit already multiplies by (input - baseline)
            return gradient.sum(dim=1)
        return gradient.abs().amax(dim=1)


def _one_hot(logits: torch.Tensor, column: int) -> torch.Tensor:
    """Output attribution selecting one logit: the backward gives that logit's gradient."""
    selector = torch.zeros_like(logits)
    selector[:, column] = 1
    return selector


for _kind in GradientFamily.KINDS:
    register(_kind, functools.partial(GradientFamily, kind=_kind))


def gradient_methods() -> Sequence[str]:
    """The registered names of the gradient baselines."""
    return GradientFamily.KINDS

"""Class activation maps through pytorch-grad-cam, for every image x pathology, as a :class:`HeatmapSet`.

The target layer is the model's explicit head ReLU (the post-ReLU feature map just before pooling), not
``features[-1]``: torchvision's functional in-place ReLU after ``norm5`` overwrites that layer's stored
activation on CPU. Logits are explained (``ClassifierOutputTarget``), always one target per batch row:
pytorch-grad-cam silently returns blank maps for rows without one.

Grad-CAM and HiResCAM have a fast path: one forward pass, then the gradients of all pathology logits
with respect to the target activation in one batched backward through the head only. Other methods go
through pytorch-grad-cam with one batch row per image and pathology. Maps are returned raw (ReLU'd,
bilinearly upsampled, not normalised); :func:`helpers.heatmaps.normalise` scales them at use.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam import (EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                              XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from helpers import labels
from helpers.heatmaps import HeatmapSet, stack_pathologies

METHODS = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM,
    "layercam": LayerCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM,
}
#: Methods with the one-forward-pass path (for an average-pooling head they are the same map).
FAST_METHODS = ("gradcam", "hirescam")
#: Opt-in only: ScoreCAM runs a forward pass per activation channel (about a thousand per image).
SLOW_METHODS = ("scorecam",)


def target_layer(model: nn.Module) -> nn.Module:
    """The layer CAMs read: ``head_relu`` (explicit-head DenseNet) or ``layer4`` (ResNet)."""
    for name in ("head_relu", "layer4"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    raise ValueError(f"{type(model).__name__} has no explicit head (no 'head_relu' or 'layer4' module); build it "
                     f"with helpers.models.build_model so that CAMs read the post-ReLU feature map.")


def head(model: nn.Module) -> nn.Module:
    """The modules after the target layer (pool, flatten, linear) as one callable."""
    if hasattr(model, "head_relu"):
        return nn.Sequential(model.pool, model.flatten, model.classifier)
    if hasattr(model, "layer4"):
        return nn.Sequential(model.avgpool, model.flatten, model.fc)
    target_layer(model)  # raises the explanatory error
    raise AssertionError("unreachable")


def explain_cam(model: nn.Module, images: torch.Tensor, pathologies: Sequence[str] | None = None,
                method: str = "gradcam", image_ids: Sequence[str] | None = None, batch_size: int = 8,
                allow_slow: bool = False) -> HeatmapSet:
    """CAMs of every image for every pathology.

    Parameters
    ----------
    model : nn.Module
        From :func:`helpers.models.build_model` (explicit head).
    images : Tensor
        Normalised network inputs ``(n, 3, H, W)``.
    pathologies : list of str, optional
        Default all 14.
    method : str
        One of :data:`METHODS`. ``"scorecam"`` needs ``allow_slow=True``.
    image_ids : list of str, optional
        Stored in the result (default ``"0", "1", ...``).

    Returns
    -------
    HeatmapSet
        Non-negative raw maps ``(n, n_pathologies, H, W)`` and the model's probabilities.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; choose from {sorted(METHODS)}.")
    if method in SLOW_METHODS and not allow_slow:
        raise ValueError(f"{method} runs about a thousand forward passes per image; pass allow_slow=True to run it.")
    names = stack_pathologies(pathologies)
    classes = labels.pathology_indices(names)
    layer = target_layer(model)
    model.eval()
    chunks = [_explain_chunk(model, layer, images[i:i + batch_size], classes, method)
              for i in range(0, len(images), batch_size)]
    maps = np.concatenate([c[0] for c in chunks])
    probs = np.concatenate([c[1] for c in chunks])
    ids = [str(i) for i in range(len(images))] if image_ids is None else list(image_ids)
    params = {"target_layer": _layer_name(model, layer), "fast_path": method in FAST_METHODS,
              "upsampling": "bilinear", "explained": "logit", "aug_smooth": False}
    return HeatmapSet(maps, ids, names, method, params, probs)


def _explain_chunk(model, layer, images, classes, method) -> tuple[np.ndarray, np.ndarray]:
    if method in FAST_METHODS:
        return fast_cam(model, layer, images, classes)
    return library_cam(model, layer, images, classes, method)


def fast_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int]):
    """Grad-CAM for all ``classes`` from one forward pass and one batched backward through the head.

    Written by hand because pytorch-grad-cam runs a full forward and backward per target class. The
    target activation is captured by a forward hook (removed before returning, also on errors); each
    class's gradient comes from ``torch.autograd.grad(..., is_grads_batched=True)`` on the head alone.
    """
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    activation = captured["a"].detach().requires_grad_(True)
    class_logits = head(model)(activation)[:, classes]  # (n, k)
    selector = torch.eye(len(classes), dtype=class_logits.dtype).unsqueeze(1).expand(-1, len(images), -1)
    (grads,) = torch.autograd.grad(class_logits, activation, grad_outputs=selector.contiguous(), is_grads_batched=True)
    weights = grads.mean(dim=(-2, -1), keepdim=True)  # (k, n, C, 1, 1)
    cams = torch.relu((weights * activation.detach().unsqueeze(0)).sum(dim=2))  # (k, n, h, w)
    maps = _upsample(cams.transpose(0, 1), images.shape[-2:])
    probs = torch.sigmoid(logits[:, classes])
    return maps.numpy(), probs.numpy()


def library_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str):
    """Raw maps from pytorch-grad-cam's own weighting, one batch row per image x class.

    The library's forward and backward run as usual; its ``get_cam_image`` gives the un-normalised map,
    which is ReLU'd and upsampled here (the library would min-max normalise it, which must happen at use).
    """
    n, k = len(images), len(classes)
    rows = images.repeat_interleave(k, dim=0)
    targets = [ClassifierOutputTarget(c) for _ in range(n) for c in classes]  # one target per row, always
    cam = METHODS[method](model=model, target_layers=[layer])
    try:
        outputs = cam.activations_and_grads(rows)
        if cam.uses_gradients:
            model.zero_grad()
            sum(target(output) for target, output in zip(targets, outputs)).backward()
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(rows, layer, targets, activations, grads, False)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    maps = _upsample(torch.from_numpy(np.maximum(raw, 0)).float().view(n, k, *raw.shape[-2:]), images.shape[-2:])
    probs = torch.sigmoid(outputs.detach()[::k, classes])
    return maps.numpy(), probs.numpy()


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear with half-pixel centres, as ``cv2.resize`` (what pytorch-grad-cam uses) upsamples."""
    return nn.functional.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)

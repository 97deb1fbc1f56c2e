"""Class activation maps through pytorch-grad-cam: the :class:`CAM` explainer, at any depth of the model.

The default layer is the model's explicit head ReLU (the post-ReLU feature map just before pooling), not
``features[-1]``: torchvision's functional in-place ReLU after ``norm5`` overwrites that layer's stored
activation on CPU. Deeper layers (:meth:`helpers.models.ExplicitHeadModel.cam_layers`) give CAMs at 2x and
4x the head's resolution, so that methods can be compared at matched native resolution. Logits are
explained (``ClassifierOutputTarget``), always one target per batch row: pytorch-grad-cam silently returns
blank maps for rows without one.

Grad-CAM (and HiResCAM at the head, where the two are the same map) has a fast path: one forward pass in which
the layer's output becomes a leaf of the graph, then the gradients of all pathology logits with respect to it in
one batched backward through the layers after it (rows that each explain their own pathology, as in
``explain_pairs``: one plain backward). Other methods go through pytorch-grad-cam with one batch row per image and
pathology.
Maps are returned raw (ReLU'd, bilinearly upsampled, not normalised); :func:`helpers.heatmaps.normalise`
scales them at use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from helpers.explainers.base import Explainer, register
from helpers.heatmaps import HeatmapSet
from helpers.models import ExplicitHeadModel

#: Method name -> pytorch-grad-cam's class name. The library (and OpenCV with it) is imported on first use
#: (:func:`library_class`): a kernel that runs only LRP or the fast path (Grad-CAM, HiResCAM) never imports it.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}
#: Methods with the one-forward-pass path: Grad-CAM at any layer, HiResCAM at the head only (after an average-pooling
#: head the gradient is the same at every position, so the two maps are the same; at an earlier layer they differ).
FAST_METHODS = ("gradcam", "hirescam")
#: Methods whose map ignores the target class (the first principal component of the activations). ScoreCAM also
#: reads no gradient, but weighs channels by the class's score.
CLASS_AGNOSTIC = ("eigencam",)
#: Opt-in only: ScoreCAM runs a forward pass per activation channel (about a thousand per image).
SLOW_METHODS = ("scorecam",)
#: The layer every CAM reads unless told otherwise (see ``ExplicitHeadModel.cam_layers``).
HEAD = "head"


class CAM(Explainer):
    """Non-negative class activation maps of one pytorch-grad-cam method at one layer.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`. ``"scorecam"`` needs ``allow_slow=True``.
    layer : str
        A key of the model's ``cam_layers()`` (default ``"head"``, the post-ReLU head feature map).
    """

    def __init__(
        self,
        name: str | None = None,
        method: str = "gradcam",
        layer: str = HEAD,
        batch_size: int = 8,
        allow_slow: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"Unknown CAM method {method!r}; choose from {sorted(METHODS)}.")
        if method in SLOW_METHODS and not allow_slow:
            raise ValueError(f"{method} runs about a thousand forward passes per image; pass allow_slow=True.")
        default_name = method if layer == HEAD else f"{method}_{layer}"
        super().__init__(
            name or default_name,
            batch_size,
            method=method,
            layer=layer,
            fast_path=method == "gradcam" or (method in FAST_METHODS and layer == HEAD),
            upsampling="bilinear",
            explained="logit",
        )
        if not self.params["fast_path"]:
            self.memory_scale = LIBRARY_MEMORY_SCALE

    def attribute(self, model, images, classes):
        layer = cam_layer(model, self.params["layer"])
        if self.params["fast_path"]:
            return fast_cam(model, layer, images, classes)
        return library_cam(model, layer, images, classes, self.params["method"])

    def attribute_rows(self, model, images, classes):
        if not self.params["fast_path"]:
            return super().attribute_rows(model, images, classes)  # the library: one pass per class
        return fast_cam_rows(model, cam_layer(model, self.params["layer"]), images, classes)


for _method in METHODS:
    register(_method, functools.partial(CAM, method=_method, allow_slow=_method in SLOW_METHODS))

#: Grad-CAM at earlier layers, for granularity at matched native resolution (maps of 2x and 4x the head's side).
for _layer in ("2x", "4x"):
    register(f"gradcam_{_layer}", functools.partial(CAM, method="gradcam", layer=_layer))


#: pytorch-grad-cam runs a full forward and backward per image and pathology: its peak per image over LRP's
#: reference (:data:`helpers.explainers.base.PEAK_BYTES_PER_PIXEL`), with a margin: 1.45-1.51 measured for
#: Grad-CAM++, XGrad-CAM and LayerCAM on DenseNet-121 at 224 px (``benchmarks/bench_explainer_memory.py``).
LIBRARY_MEMORY_SCALE = 1.6


def cam_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module called ``layer`` in the model's ``cam_layers()``; a clear error for other models or names."""
    if not isinstance(model, ExplicitHeadModel):
        raise ValueError(
            f"{type(model).__name__} has no explicit head; build it with helpers.models.build_model "
            f"so that CAMs read the post-ReLU feature map."
        )
    layers = model.cam_layers()
    if layer not in layers:
        raise ValueError(f"Unknown CAM layer {layer!r} for {type(model).__name__}; choose from {sorted(layers)}.")
    return layers[layer]


def explain_cam(
    model: nn.Module,
    images: torch.Tensor,
    pathologies: Sequence[str] | None = None,
    method: str = "gradcam",
    image_ids: Sequence[str] | None = None,
    batch_size: int = 8,
    allow_slow: bool = False,
    layer: str = HEAD,
) -> HeatmapSet:
    """CAMs of every image for every pathology: :class:`CAM` in one call (see its parameters)."""
    explainer = CAM(method=method, layer=layer, batch_size=batch_size, allow_slow=allow_slow)
    return explainer.explain(model, images, pathologies, image_ids)


def fast_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Grad-CAM for all ``classes`` from one forward pass and one batched backward.

    Written by hand because pytorch-grad-cam runs a full forward and backward per target class. A forward
    hook (removed before returning, also on errors) replaces the layer's output by a detached leaf that
    requires grad, so the graph covers only the layers after it; each class's gradient then comes from
    ``torch.autograd.grad(..., is_grads_batched=True)``.
    """
    logits, activation = _forward_from_leaf(model, layer, images)
    class_logits = logits[:, list(classes)]  # (n, k)
    selector = torch.eye(len(classes), dtype=class_logits.dtype, device=class_logits.device)
    selector = selector.unsqueeze(1).expand(-1, len(images), -1).contiguous()  # (k, n, k)
    (grads,) = torch.autograd.grad(class_logits, activation, grad_outputs=selector, is_grads_batched=True)
    cams = _weighted_activation(grads, activation.detach().unsqueeze(0))  # (k, n, h, w)
    return _upsample(cams.transpose(0, 1), images.shape[-2:])


def fast_cam_rows(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Grad-CAM maps ``(n, H, W)``: row ``r`` for class ``classes[r]``, from one forward and one backward pass.

    The rows' logits are summed before the backward: in eval mode no row's logit depends on another row, so each
    row's gradient is its own logit's (the per-class loop of :meth:`Explainer.attribute_rows` would run one pass
    per distinct class).
    """
    logits, activation = _forward_from_leaf(model, layer, images)
    rows = torch.arange(len(images), device=logits.device)
    columns = torch.as_tensor(classes, dtype=torch.long, device=logits.device)
    (grads,) = torch.autograd.grad(logits[rows, columns].sum(), activation)
    cams = _weighted_activation(grads, activation.detach())  # (n, h, w)
    return _upsample(cams.unsqueeze(1), images.shape[-2:])[:, 0]


def _forward_from_leaf(model: nn.Module, layer: nn.Module, images: torch.Tensor):
    """The logits, and ``layer``'s output made a leaf that requires grad (the hook removed, also on errors)."""
    captured = {}

    def make_leaf(module, inputs, output):
        captured["a"] = output.detach().requires_grad_(True)
        return captured["a"]

    handle = layer.register_forward_hook(make_leaf)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    return logits, captured["a"]


def _weighted_activation(grads: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: the channels weighted by their spatially averaged gradient, summed, ReLU'd (``(..., h, w)``)."""
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    return torch.relu((weights * activation).sum(dim=-3))


def library_cam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str
) -> torch.Tensor:
    """Raw maps from pytorch-grad-cam's own weighting, one batch row per image x class.

    The library's forward and backward run as usual; its ``get_cam_image`` gives the un-normalised map,
    which is ReLU'd and upsampled here (the library would min-max normalise it, which must happen at use).
    The library keeps activations and gradients as CPU numpy; the map comes back to the input's device. A
    class-agnostic method (:data:`CLASS_AGNOSTIC`: EigenCAM) gives every class the same map: it is computed once
    per image.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # with the library: on first use

    n, k = len(images), len(classes)
    per_row = 1 if method in CLASS_AGNOSTIC else k
    rows = images.repeat_interleave(per_row, dim=0).requires_grad_(True)  # parameters are frozen: grads flow here
    row_classes = classes[:1] if method in CLASS_AGNOSTIC else classes
    targets = [ClassifierOutputTarget(c) for _ in range(n) for c in row_classes]  # one target per row, always
    cam = library_class(method)(model=model, target_layers=[layer])  # hooks the layer: released in finally
    try:
        with torch.enable_grad():
            outputs = cam.activations_and_grads(rows)
            if cam.uses_gradients:
                sum(target(output) for target, output in zip(targets, outputs)).backward()
        activations = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(rows, layer, targets, activations, grads, False)
    finally:
        cam.activations_and_grads.release()
    maps = torch.as_tensor(raw, device=images.device).clamp(min=0).float().view(n, per_row, *raw.shape[-2:])
    maps = maps.expand(n, k, *raw.shape[-2:])
    return _upsample(maps, images.shape[-2:])


def library_class(method: str) -> type:
    """pytorch-grad-cam's class for ``method`` (a key of :data:`METHODS`), imported on first use."""
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, METHODS[method])


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear with half-pixel centres, as ``cv2.resize`` (what pytorch-grad-cam uses) upsamples."""
    return nn.functional.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)

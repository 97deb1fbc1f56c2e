"""Occlusion sensitivity: a gradient-free reference explainer for all 14 pathologies at once.

If occlusion localises a finding and a gradient method does not, the method (not the model or the data)
is at fault. Written by hand because zennit's ``Occlusion`` explains one output per run; here every
occluded forward pass serves all 14 logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from helpers.explainers.base import Explainer, register


def blurred_baseline(inputs: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-blurred inputs (sigma default: 1/16 of the width): what occluded pixels are replaced by."""
    sigma = sigma or inputs.shape[-1] / 16
    kernel = int(4 * sigma) // 2 * 2 + 1
    return gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])


class Occlusion(Explainer):
    """The logit drop when a square is replaced by the blurred image, placed at the square's centre.

    Parameters
    ----------
    window : int, optional
        Side of the square (default 1/8 of the input width).
    stride : int, optional
        Step between squares (default half the window).

    The drops on the grid of window centres are interpolated bilinearly to the input size (edges held),
    as CAMs are upsampled, so that a map has one maximum rather than a tied block. Positive where
    hiding the region lowers the logit; signed (hiding can also raise it).
    """

    signed = True

    def __init__(
        self, name: str = "occlusion", window: int | None = None, stride: int | None = None, batch_size: int = 8
    ):
        super().__init__(name, batch_size, window=window, stride=stride, baseline="blurred", explained="logit")
        self.window, self.stride = window, stride

    def attribute(self, model, images, classes):
        window = self.window or images.shape[-1] // 8
        stride = self.stride or max(1, window // 2)
        self.params.update(window=window, stride=stride)  # record what the last images were explained with
        baseline = blurred_baseline(images)
        height, width = images.shape[-2:]
        tops, lefts = range(0, height - window + 1, stride), range(0, width - window + 1, stride)
        # the drops of float32 logits are exact in float64; MPS has no float64
        wide = torch.float32 if images.device.type == "mps" else torch.float64
        drops = torch.zeros(len(images), len(classes), len(tops), len(lefts), dtype=wide, device=images.device)
        with torch.no_grad():
            reference = model(images)[:, list(classes)].to(wide)
            for r, top in enumerate(tops):
                for c, left in enumerate(lefts):
                    region = (..., slice(top, top + window), slice(left, left + window))
                    occluded = images.clone()
                    occluded[region] = baseline[region]
                    drops[:, :, r, c] = reference - model(occluded)[:, list(classes)].to(wide)
        return _centre_grid_to_image(drops, stride, window // 2, (height, width))


register("occlusion", Occlusion)


def _centre_grid_to_image(grid: torch.Tensor, stride: int, offset: int, size) -> torch.Tensor:
    """Values at pixels ``offset + k * stride`` interpolated bilinearly in between, held constant beyond."""
    span = [(n - 1) * stride + 1 for n in grid.shape[-2:]]
    inner = nn.functional.interpolate(grid, size=span, mode="bilinear", align_corners=True)
    pad = (offset, size[1] - offset - span[1], offset, size[0] - offset - span[0])
    return nn.functional.pad(inner, pad, mode="replicate")

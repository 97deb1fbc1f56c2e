"""Model-free baselines, scored exactly like the methods: the finding's prior, a random map, an edge map.

A method's localisation score means something only beside what a map that ignores the model reaches: the
per-finding **prior** (the mean training mask of the finding: no model, no image), a **random** map (uniform
noise, seeded per image) and an **edge** map (the Sobel magnitude of the image: no model). None of them looks
at the model, so their ``probs`` are the model's only for the table's sake. Written here because no attribution
library ships such baselines as explainers.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.filters import sobel

from helpers import labels
from helpers.explainers.base import Explainer, image_seed, register


class PriorMap(Explainer):
    """The same map for every image: the mean ground-truth mask of each pathology over the training split.

    Parameters
    ----------
    prior : array ``(14, H, W)``, optional
        Mean masks in :data:`helpers.labels.PATHOLOGIES` order at the input size (zeros where a pathology has
        no masks, e.g. No Finding). :meth:`helpers.run.Run.explainer` sets it from the run's training split.
    """

    def __init__(self, name: str | None = None, prior: np.ndarray | None = None, batch_size: int = 64):
        super().__init__(name or "prior", batch_size, baseline="mean training mask per pathology")
        self.prior = prior

    def attribute(self, model, images, classes):
        if self.prior is None:
            raise ValueError(
                "The prior baseline needs the training masks' mean per pathology: make it with "
                "Run.explainer('prior'), or pass prior=<mean masks, shape (14, H, W)>."
            )
        if tuple(self.prior.shape) != (len(labels.PATHOLOGIES), *images.shape[-2:]):
            raise ValueError(
                f"prior has shape {tuple(self.prior.shape)}; expected (14, {images.shape[-2]}, {images.shape[-1]}) "
                f"to explain these inputs."
            )
        prior = torch.as_tensor(np.asarray(self.prior)[list(classes)], dtype=images.dtype, device=images.device)
        return prior.unsqueeze(0).expand(len(images), -1, -1, -1)


class RandomMap(Explainer):
    """Uniform noise in [0, 1), a fresh draw per image and pathology, seeded by ``seed`` and the image's pixels
    (so a map depends neither on the batch it was explained in nor on the other pathologies asked for)."""

    def __init__(self, name: str | None = None, seed: int = 0, batch_size: int = 64):
        super().__init__(name or "random", batch_size, baseline="uniform noise", seed=seed)

    def attribute(self, model, images, classes):
        maps = np.stack([self._noise(image)[list(classes)] for image in _as_numpy(images)])
        return torch.as_tensor(maps, dtype=images.dtype, device=images.device)

    def _noise(self, image: np.ndarray) -> np.ndarray:
        """One map per pathology of :data:`helpers.labels.PATHOLOGIES`."""
        rng = np.random.default_rng(image_seed(self.params["seed"], image))
        return rng.random((len(labels.PATHOLOGIES), *image.shape[-2:]))


class EdgeMap(Explainer):
    """The Sobel gradient magnitude of the image (mean over channels), the same for every pathology."""

    def __init__(self, name: str | None = None, batch_size: int = 64):
        super().__init__(name or "edge", batch_size, baseline="Sobel magnitude of the image")

    def attribute(self, model, images, classes):
        edges = np.stack([sobel(image.mean(axis=0)) for image in _as_numpy(images)])
        edges = torch.as_tensor(edges, dtype=images.dtype, device=images.device)
        return edges.unsqueeze(1).expand(-1, len(classes), -1, -1)


def _as_numpy(images: torch.Tensor) -> np.ndarray:
    """The batch as float64 numpy (CPU), for the numpy-side baselines."""
    return images.detach().to("cpu", torch.float64).numpy()


#: The registered model-free baselines.
BASELINES = {"prior": PriorMap, "random": RandomMap, "edge": EdgeMap}

for _name, _cls in BASELINES.items():
    register(_name, _cls)

"""The one place where device tensors leave for numpy.

Models and their inputs live on the best device (CUDA, MPS, CPU); results leave as CPU numpy. Every
tensor -> numpy conversion goes through :func:`to_numpy`, so that a GPU tensor never meets ``.numpy()``
directly, and so that tests can replace this one function to run code on the ``meta`` device (where
nothing can be copied to the CPU).
"""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a CPU numpy array (detached from autograd, copied off its device; dtype kept).

    Parameters
    ----------
    tensor : torch.Tensor
        On any device, with or without gradients.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype; shares memory with ``tensor`` when it already is a CPU tensor without grad.
    """
    return tensor.detach().cpu().numpy()

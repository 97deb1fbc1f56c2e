"""Metrics keep every tensor on the inputs' device: checked on the ``meta`` device, so no GPU is needed.

On ``meta`` only shapes are tracked, and an op that mixes a meta tensor with a CPU tensor raises, as an op
mixing a CUDA and a CPU tensor does on a GPU. Nothing can be copied off ``meta``, so the one exit to numpy,
:func:`helpers.tensors.to_numpy`, is replaced by zeros of the right shape.
"""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import heatmaps, labels, metrics, tensors
from helpers.metrics import faithfulness

META = torch.device("meta")


@pytest.fixture
def meta_to_numpy(monkeypatch):
    """Replace the metrics' exit to numpy by zeros of the tensor's shape; record what it was given."""
    received = []

    def zeros_like(tensor):
        assert tensor.device == META, f"expected a meta tensor, got one on {tensor.device}"
        received.append(tensor)
        return np.zeros(tuple(tensor.shape), dtype=np.float32)

    monkeypatch.setattr(faithfulness, "to_numpy", zeros_like)
    return received


def _tiny_model():
    return nn.Sequential(
        nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, len(labels.PATHOLOGIES))
    )


def test_perturbation_scores_keep_tensors_on_the_inputs_device(meta_to_numpy):
    size, steps = 16, 4
    inputs = torch.empty(2, 3, size, size, device=META)
    maps = np.random.default_rng(0).random((2, len(labels.PATHOLOGIES), size, size)).astype(np.float32)
    explained = heatmaps.HeatmapSet(maps, ["a", "b"], labels.PATHOLOGIES, "m")
    pairs = [(0, "Edema"), (1, "Cardiomegaly")]
    scores = metrics.perturbation_scores(_tiny_model().to(META), inputs, explained, pairs, steps=steps, batch_size=3)
    assert [tuple(t.shape) for t in meta_to_numpy] == [(2 * (steps + 1),)] * len(pairs)  # deleted + inserted
    assert scores["metric"].tolist() == ["deletion_auc", "insertion_auc"] * len(pairs)
    assert (scores["value"] == 0.0).all()  # the zeros stood in for the probabilities


def test_to_numpy_detaches_and_keeps_values_and_dtype():
    tensor = torch.arange(6.0, dtype=torch.float64, requires_grad=True).view(2, 3) * 2
    array = tensors.to_numpy(tensor)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64
    assert np.array_equal(array, np.arange(6.0).reshape(2, 3) * 2)

"""Shared fixtures: the real CheXpert CSV (from torchxrayvision), a small phantom, a compact model and inputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import data, models, paths, phantom


def _import_script(relative_path: str):
    path = paths.PROJECT_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def import_script():
    """Imports a script of the repository that is not in a package (``benchmarks/``, ``scripts/``) by its path."""
    return _import_script


@pytest.fixture(scope="session")
def real_csv_path():
    return data.chexpert_csv_from_torchxrayvision()


@pytest.fixture(scope="session")
def real_frame(real_csv_path):
    return data.read_chexpert_csv(real_csv_path)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A 60 + 20 image phantom at 64 px (session-wide: it is read, never modified)."""
    root = tmp_path_factory.mktemp("phantom") / "CheXpert-v1.0-small"
    return phantom.generate(root, 60, 64, seed=3, n_valid=20, min_prevalence=0.1)


@pytest.fixture(scope="module")
def model():
    """A compact DenseNet with non-trivial BatchNorm statistics, as after training (eval mode)."""
    torch.manual_seed(0)
    net = models.build_model("densenet_compact")
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def images():
    """Three random normalised 64-px inputs."""
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))

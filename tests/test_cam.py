import subprocess
import sys

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from helpers import cam, heatmaps, labels, models


def _hooks(net):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@pytest.mark.parametrize("method, library", [("gradcam", GradCAM), ("hirescam", HiResCAM)])
def test_fast_path_equals_the_library_for_every_pathology(model, images, method, library):
    ours = heatmaps.normalise(cam.explain_cam(model, images, method=method).maps)
    for j, _ in enumerate(labels.PATHOLOGIES):
        with library(model=model, target_layers=[model.head_relu]) as reference:
            expected = reference(images, targets=[ClassifierOutputTarget(j)] * len(images))
        assert np.abs(ours[:, j] - expected).max() <= 1e-5, labels.PATHOLOGIES[j]


def test_library_route_gives_every_row_its_target(model, images):
    """The generic route (one row per image x pathology) reproduces the fast path: no row left blank."""
    layer = model.target_layer
    fast = cam.fast_cam(model, layer, images, range(14)).numpy()
    generic = cam.library_cam(model, layer, images, range(14), "gradcam").detach().numpy()
    assert np.allclose(fast, generic, atol=1e-5 * fast.max())
    assert (generic.reshape(len(images) * 14, -1).max(axis=1) > 0).mean() > 0.5


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"])
def test_each_method_returns_raw_non_negative_maps(model, images, method):
    result = cam.explain_cam(model, images[:2], ["Cardiomegaly", "Edema"], method=method, image_ids=["a", "b"])
    assert result.maps.shape == (2, 2, 64, 64)
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0
    assert result.pathologies == ["Cardiomegaly", "Edema"] and result.image_ids == ["a", "b"]
    with torch.no_grad():
        probs = torch.sigmoid(model(images[:2]))[:, [2, 5]].numpy()
    assert np.allclose(result.probs, probs, atol=1e-6)
    assert _hooks(model) == 0


def test_eigencam_once_per_image_equals_the_library_per_class(model, images):
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = cam.library_cam(model, model.target_layer, images[:2], [2, 5, 9], "eigencam").detach().numpy()
    assert ours.shape == (2, 3, 64, 64)
    library = EigenCAM(model=model, target_layers=[model.target_layer])
    for k, c in enumerate([2, 5, 9]):  # the library's own call, one class at a time (it min-max scales its maps)
        expected = library(images[:2], [ClassifierOutputTarget(c)] * 2)
        scaled = ours[:, k] - ours[:, k].min(axis=(1, 2), keepdims=True)
        scaled /= scaled.max(axis=(1, 2), keepdims=True)
        assert np.allclose(scaled, expected, atol=1e-3)


def test_scorecam_is_opt_in_and_weighs_each_class(model, images):
    with pytest.raises(ValueError, match="allow_slow=True"):
        cam.explain_cam(model, images[:1], method="scorecam")
    result = cam.explain_cam(model, images[:1], ["Edema", "Fracture"], method="scorecam", allow_slow=True)
    assert np.isfinite(result.maps).all()
    assert not np.allclose(result.maps[0, 0], result.maps[0, 1])  # reads no gradient, yet not class-agnostic


def test_constant_images_give_finite_maps(model):
    for value in (0.0, 1.0, -2.0):
        result = cam.explain_cam(model, torch.full((1, 3, 64, 64), value), method="gradcam++")
        assert np.isfinite(result.maps).all()
        assert np.isfinite(heatmaps.normalise(result.maps)).all()


def test_hooks_released_after_calls_and_errors(model, images, monkeypatch):
    for method in ("gradcam", "layercam"):
        cam.explain_cam(model, images[:1], method=method)
    assert _hooks(model) == 0

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(GradCAMPlusPlus, "get_cam_image", broken)
    with pytest.raises(RuntimeError, match="boom"):
        cam.explain_cam(model, images[:1], method="gradcam++")
    assert _hooks(model) == 0


def test_bad_names_and_models(model, images):
    with pytest.raises(ValueError, match="Cardiomegally"):
        cam.explain_cam(model, images[:1], ["Cardiomegally"])
    with pytest.raises(ValueError, match="choose from"):
        cam.explain_cam(model, images[:1], method="gradcam-jet")
    with pytest.raises(ValueError, match="no explicit head"):
        cam.explain_cam(torch.nn.Sequential(torch.nn.Conv2d(3, 14, 3)), images[:1])


def test_resnet50_target_layer(images):
    torch.manual_seed(0)
    net = models.build_model("resnet50").eval()
    result = cam.explain_cam(net, images[:1], ["Edema"])
    assert result.params["layer"] == "head" and cam.cam_layer(net, "head") is net.layer4
    assert result.maps.shape == (1, 1, 64, 64)


def test_every_method_names_a_class_of_the_library():
    from pytorch_grad_cam.base_cam import BaseCAM

    assert all(issubclass(cam.library_class(method), BaseCAM) for method in cam.METHODS)


@pytest.mark.slow  # a new Python process imports torch
def test_the_library_is_imported_only_for_a_method_without_the_fast_path():
    """LRP and the fast path (Grad-CAM, HiResCAM) run without pytorch-grad-cam, whose import with OpenCV and
    scikit-learn takes seconds of every notebook kernel that would not use it."""
    script = (
        "import sys, torch\n"
        "from helpers import explainers, models\n"
        "net, x = models.build_model('densenet_compact').eval(), torch.zeros(1, 3, 32, 32)\n"
        "for name in ('lrp_epsilon_plus_flat', 'gradcam', 'hirescam'):\n"
        "    explainers.create(name).explain(net, x, ['Edema'])\n"
        "print('pytorch_grad_cam' in sys.modules)\n"
        "explainers.create('gradcam++').explain(net, x, ['Edema'])\n"
        "print('pytorch_grad_cam' in sys.modules)\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["False", "True"]


def test_hirescam_below_the_head_is_the_librarys_and_not_grad_cam(model, images):
    """Only after the average-pooling head are HiResCAM and Grad-CAM the same map; at a deeper layer the fast path
    (Grad-CAM's) would be wrong for HiResCAM."""
    edema = labels.PATHOLOGIES.index("Edema")
    ours = heatmaps.normalise(cam.CAM(method="hirescam", layer="2x").explain(model, images, ["Edema"]).maps)[:, 0]
    grad_cam = heatmaps.normalise(cam.CAM(method="gradcam", layer="2x").explain(model, images, ["Edema"]).maps)[:, 0]
    with HiResCAM(model=model, target_layers=[cam.cam_layer(model, "2x")]) as reference:
        expected = reference(images, targets=[ClassifierOutputTarget(edema)] * len(images))
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(ours - grad_cam).max() > 0.05

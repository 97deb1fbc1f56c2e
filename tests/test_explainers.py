"""The Explainer type: registry, shared behaviour of every method, and device placement without a GPU."""

import numpy as np
import pytest
import torch

from helpers import explainers, heatmaps, labels, lrp, models
from helpers.explainers import base

#: Methods with a code path of their own; library CAMs keep activations as CPU numpy inside pytorch-grad-cam.
DEVICE_CHECKED = [
    "lrp_epsilon_plus_flat",
    "lrp_epsilon_gamma_box",
    "lrp_z",
    "gradcam",
    "hirescam",
    "occlusion",
    "gradient",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
]


def test_registry_names_every_method_once():
    names = explainers.available()
    for expected in (
        "lrp_epsilon_plus_flat",
        "lrp_deep_taylor",
        "gradcam",
        "gradcam++",
        "scorecam",
        "occlusion",
        "gradient",
        "gradient_x_input",
        "smoothgrad",
        "integrated_gradients",
    ):
        assert expected in names
    with pytest.raises(ValueError, match="registered are"):
        explainers.create("lrp_epsilon_plus_flatt")
    with pytest.raises(ValueError, match="already registered"):
        explainers.register("gradcam", explainers.CAM)


@pytest.mark.parametrize("name", DEVICE_CHECKED + ["gradcam++", "layercam", "eigencam"])
def test_every_explainer_returns_a_named_heatmap_set(model, images, name):
    model.train()  # explain() must switch to eval and back, and leave gradients as they were
    model.classifier.weight.requires_grad_(False)
    explainer = explainers.create(name, batch_size=2)
    result = explainer.explain(model, images, ["Cardiomegaly", "Edema"], image_ids=["a", "b", "c"])
    assert model.training and not model.classifier.weight.requires_grad
    model.classifier.weight.requires_grad_(True)
    model.eval()
    assert result.method == name and result.signed == explainer.signed
    assert result.maps.shape == (3, 2, 64, 64) and result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all() and result.image_ids == ["a", "b", "c"]
    if not result.signed:
        assert result.maps.min() >= 0
    with torch.no_grad():
        expected = torch.sigmoid(model(images))[:, [2, 5]].numpy()
    assert np.allclose(result.probs, expected, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["lrp_epsilon_plus_flat", "lrp_alpha2_beta1", "gradient_x_input", "gradcam", "gradcam_4x", "gradcam++", "edge"],
)
def test_explaining_pairs_gives_the_maps_of_explain_at_those_pairs_only(model, images, name):
    """Each row's own class (LRP, gradients, Grad-CAM: one backward over all rows; the library's CAMs: per class)
    equals the full explain."""
    explainer = explainers.create(name, batch_size=2)
    pairs = [(2, "Edema"), (0, "Cardiomegaly"), (0, "Edema"), (1, "Pneumothorax")]
    chosen = explainer.explain_pairs(model, images, pairs, image_ids=["a", "b", "c"])
    full = explainer.explain(model, images, ["Cardiomegaly", "Edema", "Pneumothorax"], image_ids=["a", "b", "c"])
    assert chosen.pathologies == full.pathologies and chosen.image_ids == full.image_ids
    assert np.allclose(chosen.probs, full.probs, atol=1e-6)
    explained = np.zeros(chosen.maps.shape[:2], bool)
    for i, pathology in pairs:
        j = chosen.pathologies.index(pathology)
        explained[i, j] = True
        scale = np.abs(full.maps[i, j]).max()
        np.testing.assert_allclose(chosen.maps[i, j], full.maps[i, j], atol=1e-4 * scale + 1e-12, rtol=1e-4)
    assert np.isnan(chosen.maps[~explained]).all() and np.isfinite(chosen.maps[explained]).all()
    with pytest.raises(ValueError, match="at least one"):
        explainer.explain_pairs(model, images, [])


@pytest.mark.parametrize("name, passes", [("gradcam", 1), ("hirescam", 1), ("gradcam++", 3)])
def test_grad_cam_explains_rows_of_different_pathologies_in_one_pass(model, images, name, passes):
    """Three rows, three pathologies: the fast path runs one forward for them all (explain_pairs' probabilities add
    one more), the library one per pathology."""
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        explainers.create(name, batch_size=8).explain_pairs(
            model, images, [(0, "Edema"), (1, "Cardiomegaly"), (2, "Pneumothorax")]
        )
    finally:
        handle.remove()
    assert len(forwards) == passes + 1


def test_signed_flag_survives_a_round_trip(model, images, tmp_path):
    for name in ("lrp_epsilon_plus_flat", "gradcam"):
        result = explainers.create(name).explain(model, images[:1], ["Edema"])
        loaded = heatmaps.HeatmapSet.load(result.save(tmp_path / f"{name}.npz"))
        assert loaded.signed == result.signed and loaded.method == name


def test_cams_at_deeper_layers_are_finer(model, images):
    """The 2x and 4x layers give maps with 2x and 4x as many distinct rows as the head's grid."""
    rows = {}
    for layer in ("head", "2x", "4x"):
        result = explainers.CAM(method="gradcam", layer=layer).explain(model, images[:1], ["Edema"])
        assert result.method == ("gradcam" if layer == "head" else f"gradcam_{layer}")
        native = explainers.cam.cam_layer(model, layer)
        captured = {}
        handle = native.register_forward_hook(lambda m, i, o, seen=captured: seen.update(shape=o.shape))
        with torch.no_grad():
            model(images[:1])
        handle.remove()
        rows[layer] = captured["shape"][-1]
    assert rows["2x"] == 2 * rows["head"] and rows["4x"] == 4 * rows["head"]


def test_gradient_x_input_is_gradient_times_input(model, images):
    x = images[:1].double()
    net = model.double()
    try:
        ours = explainers.create("gradient_x_input").explain(net, x, ["Edema"]).maps[0, 0]
        x = x.clone().requires_grad_(True)
        net(x)[0, labels.PATHOLOGIES.index("Edema")].backward()
        expected = (x.grad * x).sum(dim=1)[0].detach().numpy()
    finally:
        net.float()
    assert np.allclose(ours, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", explainers.GradientFamily.KINDS)
def test_gradient_family_equals_zennit_pathology_by_pathology(model, images, kind):
    """The batched backward gives what zennit's own attributor gives for each pathology and image alone (computed
    in float64, stored as float32 maps); SmoothGrad with the same noise draws for every pathology, zennit's for
    the image alone with its generator's seed."""
    net, x = model.double(), images[:2].double()
    explainer = explainers.create(kind, **({"n_iter": 3} if kind in ("smoothgrad", "integrated_gradients") else {}))
    names = ["Edema", "Fracture"]
    try:
        ours = explainer.explain(net, x, names).maps
        with base.frozen_eval(net):
            expected = [[_zennit_map(explainer, net, image[None], name) for name in names] for image in x]
    finally:
        net.float()
    expected = np.array([[m.numpy() for m in maps] for maps in expected])
    assert np.abs(expected).max() > 0  # maps are float32: equal to its precision
    assert np.allclose(ours, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


def _zennit_map(explainer, net, image, name) -> torch.Tensor:
    """zennit's map of one image ``(1, 3, H, W)`` for one pathology, with the seed SmoothGrad would draw it by."""
    column = labels.PATHOLOGIES.index(name)
    seed = explainer.noise_generator(image[0]).initial_seed() if "seed" in explainer.params else 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, gradient = explainer.zennit_attributor(net)(
            image.clone(),
            lambda logits: torch.nn.functional.one_hot(torch.full(logits.shape[:1], column), logits.shape[1]).to(
                logits.dtype
            ),
        )
    return explainer._reduce(gradient, image)[0]


def test_smoothgrad_is_seeded_and_leaves_the_global_random_state(model, images):
    state = torch.random.get_rng_state()
    first = explainers.create("smoothgrad", n_iter=3).explain(model, images[:1], ["Edema"]).maps
    assert torch.equal(state, torch.random.get_rng_state())
    again = explainers.create("smoothgrad", n_iter=3).explain(model, images[:1], ["Edema"]).maps
    other = explainers.create("smoothgrad", n_iter=3, seed=1).explain(model, images[:1], ["Edema"]).maps
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_smoothgrad_maps_an_image_alike_in_any_batch(model, images):
    """Each image draws its own noise: alone, or second in a batch of another size, its map is the same."""
    explainer = explainers.create("smoothgrad", n_iter=3, batch_size=2)
    alone = explainer.explain(model, images[1:2], ["Edema", "Fracture"]).maps[0]
    batched = explainer.explain(model, images[[2, 1, 0]], ["Edema", "Fracture"]).maps[1]
    assert np.abs(alone).max() > 0
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())


def test_occlusion_finds_the_only_region_a_model_uses():
    """A hand-built model whose Edema logit is the mean of the top-left quarter: occlusion peaks there."""

    class TopLeft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(14))

        def forward(self, x):
            return x[:, 0, :32, :32].mean(dim=(-2, -1))[:, None] * self.scale

    x = torch.rand(1, 3, 64, 64) * 4
    result = explainers.create("occlusion").explain(TopLeft(), x, ["Edema"])
    peak = np.unravel_index(np.argmax(result.maps[0, 0]), (64, 64))
    assert peak[0] < 32 and peak[1] < 32
    assert result.maps[0, 0, 48:, 48:].max() <= 1e-6 * np.abs(result.maps).max() + 1e-12


@pytest.mark.parametrize("name", DEVICE_CHECKED)
def test_tensors_follow_the_model_device(model, images, name, monkeypatch):
    """Model and inputs on the ``meta`` device: any tensor made on the CPU meets a meta tensor and raises, and
    nothing but the one conversion to numpy (patched here, since meta tensors hold no data) may leave the device."""
    seen = []

    def to_numpy(tensor):
        assert tensor.device.type == "meta", "a map or probability was computed off the model's device"
        seen.append(tuple(tensor.shape))
        return np.zeros(tuple(tensor.shape), np.float32)

    monkeypatch.setattr(base, "to_numpy", to_numpy)
    net = models.build_model("densenet_compact").to("meta").eval()
    cheap = {
        "occlusion": {"window": 32, "stride": 32},
        "smoothgrad": {"n_iter": 2},
        "integrated_gradients": {"n_iter": 2},
    }.get(name, {})  # meta ops carry overhead: few passes suffice
    result = explainers.create(name, batch_size=2, **cheap).explain(net, images.to("meta"), ["Edema", "Fracture"])
    assert result.maps.shape == (3, 2, 64, 64) and (2, 2, 64, 64) in seen


def test_explainers_reject_unknown_layers_and_models(model, images):
    with pytest.raises(ValueError, match="choose from"):
        explainers.CAM(layer="8x").explain(model, images[:1], ["Edema"])
    with pytest.raises(ValueError, match="no explicit head"):
        explainers.create("gradcam").explain(torch.nn.Sequential(torch.nn.Conv2d(3, 14, 3)), images[:1])
    with pytest.raises(ValueError, match="Unknown gradient method"):
        explainers.GradientFamily(kind="deconvnet")


def test_batch_size_on_cuda_is_what_half_the_free_memory_holds_within_1_and_most(monkeypatch):
    cuda, per_image = torch.device("cuda"), base.PEAK_BYTES_PER_PIXEL * 224**2  # about 1.1 GB at 224 px
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * per_image, 80 * per_image))
    assert explainers.batch_size_for(cuda, 224, default=4) == 10  # half of what is free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (per_image, 80 * per_image))
    assert explainers.batch_size_for(cuda, 224, default=4) == 1  # never 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000 * per_image, 2000 * per_image))
    assert explainers.batch_size_for(cuda, 224, default=4, most=64) == 64
    assert explainers.batch_size_for(torch.device("cpu"), 224, default=4) == 4  # off CUDA: the explainer's own
    # what torch's allocator caches but no tensor uses (left by training in this process) is free for explanations
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * per_image, 80 * per_image))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 50 * per_image)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 34 * per_image)
    assert explainers.batch_size_for(cuda, 224, default=4) == 10  # (4 + 50 - 34) / 2
    assert explainers.batch_size_for(cuda, 224, default=4, scale=2.0) == 5  # an explainer twice as heavy


def test_explainers_heavier_than_the_reference_say_so():
    """The batch sizing's reference is LRP EpsilonPlusFlat; pytorch-grad-cam's per-class passes and LRP's other
    composites need more per image (measured by benchmarks/bench_explainer_memory.py), Grad-CAM's fast path less."""
    for name in ("gradcam++", "xgradcam", "layercam"):
        assert explainers.create(name).memory_scale >= 1.5
    for composite in lrp.COMPOSITES:
        assert explainers.create(f"lrp_{composite}").memory_scale >= 1.4
    assert explainers.create("gradcam").memory_scale == explainers.create("gradcam_4x").memory_scale == 1.0


def test_batch_size_on_mps_is_what_half_its_recommended_memory_left_holds(monkeypatch):
    mps, per_image = torch.device("mps"), base.PEAK_BYTES_PER_PIXEL * 224**2
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 30 * per_image, raising=False)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 10 * per_image, raising=False)
    assert explainers.batch_size_for(mps, 224, default=4) == 10
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 40 * per_image, raising=False)
    assert explainers.batch_size_for(mps, 224, default=4) == 1
    monkeypatch.delattr(torch.mps, "recommended_max_memory")
    assert explainers.batch_size_for(mps, 224, default=4) == 4  # a torch that cannot tell: the explainer's own

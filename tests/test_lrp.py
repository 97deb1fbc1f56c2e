import copy

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonPlusFlat, LayerMapComposite  # noqa: E402

from helpers import explainers, labels, lrp, models, widgets  # noqa: E402


def _randomise_batchnorm(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial statistics and affine parameters (defaults make BatchNorm nearly the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.1)
            module.weight.data.copy_(torch.randn(c, generator=generator))  # some scales negative
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.5)
    return net.eval()


def _snapshot(net):
    return {key: value.clone() for key, value in net.state_dict().items()}


def _assert_restored(net, snapshot):
    state = net.state_dict()
    assert list(state) == list(snapshot)
    assert all(torch.equal(state[key], snapshot[key]) for key in snapshot)
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in net.modules()
    )
    assert hooks == 0
    assert not any("forward" in m.__dict__ for m in net.modules())


@pytest.fixture(scope="module")
def compact64():
    torch.manual_seed(0)
    return _randomise_batchnorm(models.build_model("densenet_compact").double())


@pytest.fixture(scope="module")
def images64():
    return torch.randn(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_canonizers_keep_densenet121_outputs_and_state_dict(level):
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("densenet121"))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    snapshot = _snapshot(net)
    with torch.no_grad():
        expected = net(images)
        with lrp.make_composite("epsilon_plus_flat", lrp.densenet_canonizers(level)).context(net) as canonized:
            got = canonized(images)
            changed = any(not torch.equal(v, snapshot[k]) for k, v in net.state_dict().items() if k in snapshot)
    assert (got - expected).abs().max() / expected.abs().max() <= 1e-5
    assert changed == (level >= 2)  # levels 2 and 3 really rewrite weights while registered
    _assert_restored(net, snapshot)


def test_state_dict_restored_when_attribution_raises(compact64):
    snapshot = _snapshot(compact64)
    with pytest.raises(RuntimeError):
        lrp.explain_lrp(compact64, torch.zeros(1, 1, 48, 48, dtype=torch.float64))  # wrong channel count
    _assert_restored(compact64, snapshot)


def test_threshold_relu_with_border_correction_on_a_padded_convolution():
    """BatchNorm -> ReLU -> 3x3 zero-padded convolution, including a channel whose BatchNorm scale is 0."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3, padding=1))
    block = _randomise_batchnorm(block.double())
    block[0].weight.data[0] = 0.0
    snapshot = _snapshot(block)
    images = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    expected = block(images)
    canonizer = lrp.BatchNormCanonizer(lambda root: ([], [("0", "1", "2")]))
    with EpsilonPlusFlat(canonizers=[canonizer]).context(block) as canonized:
        assert torch.allclose(canonized(images), expected, rtol=0, atol=1e-12)
        assert canonized(images[:1, :, :5, :5]).shape == (1, 5, 5, 5)  # bias map re-sized per input size
        assert torch.allclose(canonized(images), expected, rtol=0, atol=1e-12)
        with Gradient(block, None) as attributor:
            _, relevance = attributor(images, torch.ones_like(expected))
    assert torch.isfinite(relevance).all()
    _assert_restored(block, snapshot)


def test_relevance_is_conserved_with_explicit_head_and_bias_free_layers(compact64, images64):
    net = models.build_model("densenet_compact").double().eval()
    torch.nn.init.zeros_(net.classifier.bias)
    with torch.no_grad():
        logits = net(images64).numpy()
    for composite in set(lrp.COMPOSITES) - {"epsilon"}:  # epsilon = 1 absorbs relevance by design
        result = lrp.explain_lrp(net, images64, composite=composite, canonization="explicit_head")
        ratio = lrp.conservation(result, logits)
        assert np.abs(ratio - 1).max() <= 0.01, composite


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "alpha2_beta1"])
def test_all_pathologies_at_once_equal_separate_zennit_calls(compact64, images64, composite):
    classes = list(range(14))
    zennit_composite = lrp.make_composite(composite, lrp.canonizers_for(compact64, "full"))
    with explainers.frozen_eval(compact64):
        shared, _ = lrp.relevance_maps(compact64, zennit_composite, images64, classes)
    separate = lrp.explain_lrp_separately(compact64, images64, composite=composite)
    assert shared.dtype == torch.float64
    assert (shared - separate).abs().max() / separate.abs().max() <= 1e-10


def test_batch_equals_single_images(images64):
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("densenet_compact"))
    batch = lrp.explain_lrp(net, images64.float(), batch_size=2)
    singles = [lrp.explain_lrp(net, images64[i : i + 1].float()).maps for i in range(2)]
    assert batch.maps.shape == (2, 14, 48, 48)
    assert np.abs(batch.maps - np.concatenate(singles)).max() <= 1e-4 * np.abs(batch.maps).max()


@pytest.mark.slow
def test_no_hooks_left_after_100_calls():
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("densenet_compact"))
    snapshot = _snapshot(net)
    images = torch.randn(1, 3, 32, 32)
    for i in range(100):
        lrp.explain_lrp(
            net, images, ["Edema"], composite=list(lrp.COMPOSITES)[i % len(lrp.COMPOSITES)], canonization=1 + i % 3
        )
    _assert_restored(net, snapshot)
    assert not net.training


@pytest.mark.parametrize("value", [0.0, 1.0, -2.0])
def test_constant_images_give_finite_maps(compact64, value):
    images = torch.full((1, 3, 32, 32), value, dtype=torch.float64)
    for composite in lrp.COMPOSITES:
        result = lrp.explain_lrp(compact64, images, ["Cardiomegaly", "Edema"], composite=composite)
        assert np.isfinite(result.maps).all(), composite


def test_result_is_a_heatmapset_with_probabilities(compact64, images64):
    result = lrp.explain_lrp(compact64, images64, ["Edema", "Cardiomegaly"], image_ids=["a", "b"])
    with torch.no_grad():
        probs = torch.sigmoid(compact64(images64))[:, [5, 2]].numpy()
    assert result.pathologies == ["Cardiomegaly", "Edema"]  # label order
    assert np.allclose(result.probs, probs[:, ::-1], atol=1e-6)
    assert result.image_ids == ["a", "b"] and result.method == "lrp_epsilon_plus_flat"
    assert result.params["canonization"] == 3 and result.maps.dtype == np.float32
    assert (result.maps < 0).any() and (result.maps > 0).any()  # signed


def test_plain_torchvision_densenet_gets_an_explicit_head_only_while_registered():
    torch.manual_seed(0)
    net = _randomise_batchnorm(torchvision.models.densenet121(num_classes=14))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = net(images).numpy()
    result = lrp.explain_lrp(net, images, canonization=1)
    assert not hasattr(net, "head_relu")
    assert np.abs(lrp.conservation(result, logits) - 1).max() <= 0.01  # nothing lost in the head


def test_resnet50_through_zennit_resnet_canonizer():
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("resnet50"))
    snapshot = _snapshot(net)
    result = lrp.explain_lrp(net, torch.randn(1, 3, 32, 32), ["Edema"])
    assert result.maps.shape == (1, 1, 32, 32) and np.isfinite(result.maps).all()
    _assert_restored(net, snapshot)


def test_bad_input_gets_clear_errors(compact64, images64):
    with pytest.raises(ValueError, match="LRP supports DenseNet"):
        lrp.explain_lrp(torch.nn.Sequential(torch.nn.Conv2d(3, 14, 3)), images64)
    with pytest.raises(ValueError, match="Cardio"):
        lrp.explain_lrp(compact64, images64, ["Cardio"])
    with pytest.raises(ValueError, match="epsilon_plus_flat"):
        lrp.explain_lrp(compact64, images64, composite="lrp_eps")
    with pytest.raises(ValueError, match="canonization level"):
        lrp.explain_lrp(compact64, images64, canonization=4)


def test_viewer_renders_lrp_maps_for_every_pathology(compact64, images64):
    result = lrp.explain_lrp(compact64, images64[:1])
    radiographs = np.zeros((1, 48, 48), np.uint8)
    masks = np.zeros((1, 14, 48, 48), bool)
    masks[:, :, 10:20, 10:20] = True
    for name in labels.PATHOLOGIES:
        fig = widgets.render_view(radiographs, result, 0, name, codes=np.zeros((1, 14)), masks=masks)
        shown = fig.axes[1].get_images()[1]
        assert shown.get_cmap().name == widgets.LRP_CMAP and shown.get_clim() == (-1, 1)
        assert name in fig.axes[1].get_title() and "label: negative" in fig.axes[1].get_title()
        plt.close(fig)


def test_diverged_relevance_is_reported_not_hidden(compact64, images64):
    broken = images64[:1].clone()
    broken[0, 0, 0, 0] = float("inf")  # relevance through an infinite input is not finite
    with pytest.warns(RuntimeWarning, match=r"lrp_z at canonization level 1: relevance diverged .* of 2 maps"):
        result = lrp.explain_lrp(compact64, broken, ["Edema", "Fracture"], composite="z", canonization=1)
    assert not np.isfinite(result.maps).all()


def test_conservation_uses_the_explained_pathologies_logits(compact64, images64):
    result = lrp.explain_lrp(compact64, images64, ["Edema"], canonization=1)
    with torch.no_grad():
        logits = compact64(images64).numpy()
    ratio = lrp.conservation(result, logits)
    assert ratio.shape == (2, 1)
    assert np.allclose(ratio[:, 0], result.maps.astype(np.float64).sum(axis=(-2, -1))[:, 0] / logits[:, 5])


def test_conservation_table_takes_maps_already_made_at_their_own_composite_and_level(compact64, images64):
    """Maps already made of more images, the table's first: the same table as explaining those images again (one
    batch on the CPU, as in notebook 03), and they are really used (doubled maps double their row, only theirs);
    maps of some pathologies only are not."""
    import dataclasses

    import pandas as pd

    composites = ["epsilon_plus_flat", "z"]
    three = torch.cat([images64, images64[:1] * 0.5])
    made = [lrp.explain_lrp(compact64, three, composite=c) for c in composites]  # levels 3 (full) and 2 (merge)
    assert [m.params["canonization"] for m in made] == [3, 2]
    fresh = lrp.conservation_table(compact64, images64, composites)
    pd.testing.assert_frame_equal(lrp.conservation_table(compact64, images64, composites, known=made), fresh)
    doubled = dataclasses.replace(made[1], maps=made[1].maps * 2)
    table = lrp.conservation_table(compact64, images64, composites, known=[made[0], doubled])
    row = (table["composite"] == "z") & (table["canonization"] == 2)
    assert np.allclose(table.loc[row, "median"], 2 * fresh.loc[row, "median"])
    pd.testing.assert_frame_equal(table[~row], fresh[~row])
    edema = lrp.explain_lrp(compact64, images64, ["Edema"], composite="z")  # not every pathology: explained again
    edema = dataclasses.replace(edema, maps=edema.maps * 2)
    pd.testing.assert_frame_equal(lrp.conservation_table(compact64, images64, composites, known=[edema]), fresh)


def test_border_map_is_remade_for_each_input_size_with_a_strided_convolution():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    block = _randomise_batchnorm(block.double())
    small, large = torch.randn(1, 3, 9, 9, dtype=torch.float64), torch.randn(1, 3, 10, 10, dtype=torch.float64)
    expected = block(small), block(large)  # both 5 x 5 outputs
    canonizer = lrp.BatchNormCanonizer(lambda root: ([], [("0", "1", "2")]))
    with EpsilonPlusFlat(canonizers=[canonizer]).context(block) as canonized:
        got = canonized(small), canonized(large)
    assert all(torch.allclose(g, e, atol=1e-12) for g, e in zip(got, expected))


def _gradient_x_input(net, inputs, classes, canonizers=()):
    """Gradient x Input, summed over channels, ``(n, k, H, W)``, of ``net`` with ``canonizers`` applied."""
    from zennit.core import Composite

    with Composite(module_map=lambda *_: None, canonizers=list(canonizers)).context(net) as hooked:
        x = inputs.detach().clone().requires_grad_(True)
        logits = hooked(x)
        grads = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)[0] for c in classes]
    return torch.stack([(g * x).sum(dim=1) for g in grads], dim=1).detach()


def _lrp_zero_error(net, level, reference_canonized):
    """Largest |LRP-0 - Gradient x Input| over the largest |Gradient x Input|, float64, two classes."""
    from helpers.canonizers import canonizers_for

    inputs = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    classes = [labels.PATHOLOGIES.index("Edema"), labels.PATHOLOGIES.index("Cardiomegaly")]
    composite = lrp.make_composite("z", canonizers_for(net, level), like=inputs)
    relevance, _ = lrp.relevance_maps(net, composite, inputs, classes)
    reference = _gradient_x_input(net, inputs, classes, canonizers_for(net, level) if reference_canonized else ())
    return float((relevance - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("level", [1, 2])
def test_lrp_zero_equals_gradient_x_input_on_compact_densenet(compact64, level):
    assert _lrp_zero_error(compact64, level, reference_canonized=False) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 2])
def test_lrp_zero_equals_gradient_x_input_on_densenet121(level):
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("densenet121").double())
    # BatchNorm gets the z-rule: with zennit's default Pass rule this error is 3.5e24 at level 1
    assert _lrp_zero_error(net, level, reference_canonized=False) <= 1e-6


@pytest.mark.slow
def test_lrp_zero_equals_gradient_x_input_on_resnet50_after_its_canonizer():
    """Level 2 only: without zennit's ResNetCanonizer the residual additions are invisible to zennit (relevance
    is duplicated, not split), and the canonizer's BatchNorm merge changes the function slightly, so the
    identity holds against Gradient x Input of the canonized network."""
    torch.manual_seed(0)
    net = _randomise_batchnorm(models.build_model("resnet50").double())
    assert _lrp_zero_error(net, 2, reference_canonized=True) <= 1e-6


def test_registered_lrp_zero_is_the_consistent_one():
    explainer = explainers.create("lrp_z")
    assert explainer.params["canonization"] == 2 and explainer.params["composite"] == "z"


def _physically_merged(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` with its canonization level 2 made permanent: the merged convolutions' weights, and each
    folded BatchNorm replaced by ``nn.Identity`` (the network LRP at that level is meant to decompose)."""
    from helpers.canonizers import canonizers_for, folded_away

    with LayerMapComposite([], canonizers=canonizers_for(net, 2)).context(net):  # canonizers only, no rules
        merged = copy.deepcopy(net)
    for name, module in list(merged.named_modules()):
        if folded_away(module):
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, torch.nn.Identity())
    return merged.eval()


def test_lrp_epsilon_puts_no_rule_on_a_batchnorm_that_canonization_folded_away(compact64, images64):
    merged = _physically_merged(compact64)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.__dict__.get("forward") for m in merged.modules())
    canonized = lrp.explain_lrp(compact64, images64, ["Edema"], composite="epsilon", canonization="merge")
    # level 1 on the merged copy only makes the head explicit, which build_model's models have already
    reference = lrp.explain_lrp(merged, images64, ["Edema"], composite="epsilon", canonization="explicit_head")
    assert np.allclose(canonized.maps, reference.maps, rtol=1e-5, atol=1e-7 * np.abs(reference.maps).max())
    # the BatchNorms left unfolded at this level still get the rule, at level 1 all of them
    composite = lrp.make_composite("epsilon", canonizers=[])
    with composite.context(compact64):
        hooked = [m for m in compact64.modules() if isinstance(m, torch.nn.BatchNorm2d) and m._forward_hooks]
    assert len(hooked) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in compact64.modules())


def _rules_on_batchnorms(net, composite) -> set[str]:
    """Names of the rule classes hooked on ``net``'s BatchNorms while ``composite`` is registered."""
    with composite.context(net):
        return {
            type(hook.__self__).__name__
            for module in net.modules()
            if isinstance(module, torch.nn.BatchNorm2d)
            for hook in module._forward_hooks.values()
            if hasattr(hook, "__self__")
        }


def test_batchnorms_zennits_resnet_canonizer_merged_get_the_pass_rule():
    from helpers.canonizers import canonizers_for

    net = _randomise_batchnorm(torchvision.models.resnet18(num_classes=14))
    assert _rules_on_batchnorms(net, lrp.make_composite("epsilon", canonizers_for(net, 2))) == {"Pass"}
    assert _rules_on_batchnorms(net, lrp.make_composite("epsilon", canonizers_for(net, 1))) == {"Epsilon"}

import re

import pytest
import torch
import torchvision

from helpers import labels, models


@pytest.mark.parametrize("arch", ["densenet121", "densenet_compact"])
def test_explicit_head_equals_torchvision_and_keeps_keys(arch):
    torch.manual_seed(0)
    model = models.build_model(arch).eval()
    reference = (
        torchvision.models.densenet121(num_classes=14)
        if arch == "densenet121"
        else torchvision.models.DenseNet(num_classes=14, **models.COMPACT_DENSENET)
    ).eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    for module in reference.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-6
    assert isinstance(model.head_relu, torch.nn.ReLU) and not model.head_relu.inplace
    assert isinstance(model.pool, torch.nn.AdaptiveAvgPool2d) and isinstance(model.flatten, torch.nn.Flatten)


def test_densenet121_is_exactly_densenet121():
    model = models.build_model("densenet121")
    # Huang et al.'s DenseNet-121: growth 32, bottleneck 4 x 32, blocks of 6, 12, 24, 16 layers, 64 stem
    # channels, compression 0.5. Counted by hand from those: 6,953,856 parameters in `features`.
    blocks = [model.features.get_submodule(f"denseblock{i}") for i in range(1, 5)]
    assert [len(block) for block in blocks] == [6, 12, 24, 16]
    assert {layer.conv2.out_channels for block in blocks for layer in block.values()} == {32}
    assert model.features.conv0.out_channels == 64
    assert sum(p.numel() for p in model.features.parameters()) == 6_953_856
    assert model.classifier.out_features == 14 and model.classifier.in_features == 1024


def test_resnet50_explicit_head():
    torch.manual_seed(0)
    model = models.build_model("resnet50").eval()
    reference = torchvision.models.resnet50(num_classes=14).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-5


def test_unknown_architecture_and_offline_weights(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="supported are"):
        models.build_model("vgg16")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache: forces a download attempt

    asked = []

    def offline(url, *args, **kwargs):  # the test never downloads, online or not: the stub must be what is called
        asked.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="offline.*densenet121-a639ec97.pth"):
        models.build_model("densenet121", weights="imagenet")
    assert asked == [models.IMAGENET_WEIGHTS["densenet121"].url]


def test_weights_from_a_file(tmp_path):
    file = tmp_path / "imagenet.pth"
    source = torchvision.models.densenet121()
    torch.save(source.state_dict(), file)
    model = models.build_model("densenet121", weights=file)
    assert torch.equal(model.features.conv0.weight, source.features.conv0.weight)


def test_weights_with_the_published_files_key_names(tmp_path):
    """torchvision's ImageNet DenseNet-121 file names a dense layer's modules ``norm.1``, not ``norm1``."""
    source = torchvision.models.densenet121()
    published = {
        re.sub(r"(denselayer\d+\.(norm|relu|conv))([12])\.", r"\1.\3.", key): value
        for key, value in source.state_dict().items()
        if not key.endswith("num_batches_tracked")  # the published file predates them
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in published
    torch.save(published, tmp_path / "densenet121-a639ec97.pth")
    model = models.build_model("densenet121", weights=tmp_path / "densenet121-a639ec97.pth")
    layer = model.features.denseblock4.denselayer16
    assert torch.equal(layer.norm2.running_var, source.features.denseblock4.denselayer16.norm2.running_var)
    assert torch.equal(layer.conv1.weight, source.features.denseblock4.denselayer16.conv1.weight)


def test_weights_of_another_network_name_the_file(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"resnet18\.pth do not fit torchvision's resnet50 \(tensors of other shapes"):
        models.build_model("resnet50", weights=tmp_path / "resnet18.pth")
    state = torchvision.models.densenet121().state_dict()
    state["extra.weight"] = state.pop("features.conv0.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"1 missing keys \(e\.g\. features\.conv0\.weight\), 1 unexpected keys"):
        models.build_model("densenet121", weights=tmp_path / "renamed.pth")


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 a zip cut short"], ids=["bytes", "zip"])
def test_a_corrupt_weights_file_is_named_with_what_to_do(tmp_path, monkeypatch, content):
    """Passed as a path, or left broken in torch.hub's cache (where it is not a network problem)."""
    file = tmp_path / "densenet121-a639ec97.pth"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=rf"Corrupt or unreadable weights file {re.escape(str(file))} .*Delete it"):
        models.build_model("densenet121", weights=file)
    cached = tmp_path / "hub" / "checkpoints" / file.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValueError, match=rf"Corrupt or unreadable weights file {re.escape(str(cached))} .*download"):
        models.build_model("densenet121", weights="imagenet")


def test_offline_message_names_the_file_torch_hub_looks_for():
    assert models.IMAGENET_FILES == {"densenet121": "densenet121-a639ec97.pth", "resnet50": "resnet50-0676ba61.pth"}


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = models.build_model("densenet_compact")
    meta = {"arch": "densenet_compact", "labels": list(labels.PATHOLOGIES), "image_size": 64}
    path = models.save_checkpoint(tmp_path / "c.pt", model, meta)
    loaded, loaded_meta = models.load_checkpoint(path, arch="densenet_compact", image_size=64)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert loaded_meta["versions"]["torch"] == torch.__version__
    with pytest.raises(models.CheckpointError, match="arch: checkpoint has 'densenet_compact', expected 'densenet121'"):
        models.load_checkpoint(path, arch="densenet121")
    with pytest.raises(models.CheckpointError, match="image_size: checkpoint has 64, expected 128"):
        models.load_checkpoint(path, image_size=128)
    with pytest.raises(models.CheckpointError, match="labels"):
        models.load_checkpoint(path, labels=list(labels.COMPETITION))


def test_weights_of_another_network_are_refused_with_the_file_name(tmp_path):
    """A checkpoint of the 32-layer compact DenseNet of earlier versions: same architecture name, other layers."""
    older = torchvision.models.DenseNet(
        num_classes=14, growth_rate=16, block_config=(4, 8, 12, 8), num_init_features=32
    )
    meta = {"arch": "densenet_compact", "labels": list(labels.PATHOLOGIES), "image_size": 64}
    path = models.save_checkpoint(tmp_path / "old.pt", models.ExplicitHeadDenseNet(older), meta)
    with pytest.raises(models.CheckpointError, match=r"old\.pt holds the weights of another network.*make clean"):
        models.load_checkpoint(path, arch="densenet_compact")


def test_corrupt_and_missing_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(models.CheckpointError, match="corrupt"):
        models.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="02_train"):
        models.load_checkpoint(tmp_path / "absent.pt")


ARCHS = ["densenet121", "densenet_compact", "resnet50"]


@pytest.mark.parametrize("arch", ARCHS)
def test_head_applied_to_the_target_layer_gives_the_logits(arch):
    torch.manual_seed(0)
    model = models.build_model(arch).eval()
    assert isinstance(model, models.ExplicitHeadModel)
    seen = {}
    model.target_layer.register_forward_hook(lambda module, inputs, output: seen.update(output=output))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
        assert seen["output"].dim() == 4  # a spatial map, not already pooled
        assert torch.allclose(model.head(seen["output"]), logits, atol=1e-6)
    assert all(p1 is p2 for p1, p2 in zip(model.head.parameters(), list(model.parameters())[-2:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_randomisation_stages_cover_every_parameter_once(arch):
    model = models.build_model(arch)
    stages = model.randomisation_stages()
    names = [name for _, group in stages for name in group]
    modules = dict(model.named_modules())
    assert all(name in modules for name in names), [n for n in names if n not in modules]
    for parameter in dict(model.named_parameters()):
        owners = [name for name in names if parameter.startswith(name + ".")]
        assert len(owners) == 1, (parameter, owners)
    assert stages[0][0] == ("classifier" if arch.startswith("densenet") else "fc") and stages[-1][0] == "stem"


def test_randomisation_stages_go_from_the_output_down():
    dense = [stage for stage, _ in models.build_model("densenet_compact").randomisation_stages()]
    assert dense == ["classifier", "denseblock4", "denseblock3", "denseblock2", "denseblock1", "stem"]
    resnet = [stage for stage, _ in models.build_model("resnet50").randomisation_stages()]
    assert resnet == ["fc", "layer4", "layer3", "layer2", "layer1", "stem"]


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_layers_are_at_1x_2x_4x_the_head_resolution(arch):
    model = models.build_model(arch).eval()
    layers = model.cam_layers()
    assert list(layers) == ["head", "2x", "4x"] and layers["head"] is model.target_layer
    sizes = {}
    for key, layer in layers.items():
        layer.register_forward_hook(lambda module, inputs, output, key=key: sizes.update({key: output.shape[-2:]}))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert sizes == {"head": (4, 4), "2x": (8, 8), "4x": (16, 16)}  # strides 32, 16, 8

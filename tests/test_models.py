import pytest
import torch
import torchvision

from helpers import labels, models


@pytest.mark.parametrize("arch", ["densenet121", "densenet_compact"])
def test_explicit_head_equals_torchvision_and_keeps_keys(arch):
    torch.manual_seed(0)
    model = models.build_model(arch).eval()
    reference = (torchvision.models.densenet121(num_classes=14) if arch == "densenet121"
                 else torchvision.models.DenseNet(num_classes=14, **models.COMPACT_DENSENET)).eval()
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
    reference = torchvision.models.densenet121()
    assert sum(p.numel() for p in model.features.parameters()) == sum(p.numel() for p in reference.features.parameters())
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

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="offline.*densenet121-a639ec97.pth"):
        models.build_model("densenet121", weights="imagenet")


def test_weights_from_a_file(tmp_path):
    file = tmp_path / "imagenet.pth"
    source = torchvision.models.densenet121()
    torch.save(source.state_dict(), file)
    model = models.build_model("densenet121", weights=file)
    assert torch.equal(model.features.conv0.weight, source.features.conv0.weight)


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


def test_corrupt_and_missing_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(models.CheckpointError, match="corrupt"):
        models.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="02_train"):
        models.load_checkpoint(tmp_path / "absent.pt")

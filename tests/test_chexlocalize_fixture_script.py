"""``scripts/chexlocalize_fixture.py``: CheXlocalize's map pickles read as arrays, nothing else run or kept."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

IMAGE = "patient1_study1_view1_frontal"


@pytest.fixture(scope="module")
def fixture_script(import_script):
    return import_script("scripts/chexlocalize_fixture.py")


def _fake_clone(root, maps: dict[str, torch.Tensor]):
    """A folder laid out as CheXlocalize's repository: sample masks, map pickles as its code writes them."""
    folder = root / "sample" / "gradcam_maps_val"
    folder.mkdir(parents=True)
    (root / "sample" / "gt_segmentations_val.json").write_text(json.dumps({IMAGE: {}}))
    (root / "LICENSE.md").write_text("MIT")
    for task, heatmap in maps.items():
        content = {
            "map": heatmap,
            "prob": 0.25,
            "task": task,
            "gt": 0,
            "cxr_img": torch.ones(3, 8, 8),
            "cxr_dims": (40, 30),
        }
        (folder / f"{IMAGE}_{task}_map.pkl").write_bytes(pickle.dumps(content))
    return root


def test_the_fixture_keeps_the_maps_as_arrays_and_leaves_the_image_out(tmp_path, fixture_script):
    heatmaps = {"Airspace Opacity": torch.rand(1, 1, 8, 8), "Edema": torch.rand(1, 1, 8, 8)}
    clone = _fake_clone(tmp_path / "cheXlocalize", heatmaps)
    written = fixture_script.write_fixture(clone, tmp_path / "out" / "sample")
    arrays = np.load(written / "gradcam_maps_val.npz")
    assert sorted(arrays.files) == ["cxr_dims", "image_ids", "maps", "probs", "tasks"]
    assert list(arrays["tasks"]) == ["Airspace Opacity", "Edema"] and set(arrays["image_ids"]) == {IMAGE}
    np.testing.assert_array_equal(arrays["maps"][1], heatmaps["Edema"].squeeze().numpy())
    assert arrays["cxr_dims"].tolist() == [[40, 30], [40, 30]]
    masks = "gt_segmentations_val.json"
    assert (written / masks).read_bytes() == (clone / "sample" / masks).read_bytes()
    assert sorted(os.listdir(written.parent)) == ["sample"]  # no staging folder left behind


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo this must not run",))


def test_a_pickle_naming_anything_but_tensor_functions_is_refused_naming_the_file(tmp_path, fixture_script):
    clone = _fake_clone(tmp_path / "cheXlocalize", {"Edema": torch.rand(1, 1, 8, 8)})
    bad = clone / "sample" / "gradcam_maps_val" / f"{IMAGE}_Edema_map.pkl"
    bad.write_bytes(pickle.dumps({"map": _RunsACommand()}))
    with pytest.raises(ValueError, match=r"Edema_map\.pkl.*(posix|os)\.system is not a tensor function"):
        fixture_script.write_fixture(clone, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_no_staging_folder(tmp_path, fixture_script):
    clone = _fake_clone(tmp_path / "cheXlocalize", {"Edema": torch.rand(1, 1, 8, 8)})
    (clone / "LICENSE.md").unlink()
    with pytest.raises(FileNotFoundError, match="LICENSE.md"):
        fixture_script.write_fixture(clone, tmp_path / "out" / "sample")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_that_is_not_a_chexlocalize_clone_is_a_clear_error(tmp_path, fixture_script):
    with pytest.raises(FileNotFoundError, match="rajpurkarlab/cheXlocalize"):
        fixture_script.write_fixture(tmp_path, tmp_path / "out")

"""The self-contained HTML viewer (helpers.export): frames for every image x pathology x method, nothing external."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from helpers import export, labels
from helpers.heatmaps import HeatmapSet

PATHOLOGIES = ["Edema", "Pleural Effusion"]


def _sets(n=3, size=32):
    rng = np.random.default_rng(0)
    probs = rng.random((n, len(PATHOLOGIES)))
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(n)]
    signed = HeatmapSet(rng.normal(size=(n, 2, size, size)).astype(np.float32), ids, PATHOLOGIES, "lrp_z", {}, probs)
    cam = HeatmapSet(rng.random((n, 2, size, size)).astype(np.float32), ids, PATHOLOGIES, "gradcam", {}, probs)
    return {"lrp_z": signed, "gradcam": cam}


def test_overlay_uses_the_viewers_colours_and_outlines_the_mask():
    image = np.full((16, 16), 100, np.uint8)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[4, 4], heatmap[10, 10] = 1.0, -1.0
    mask = np.zeros((16, 16), bool)
    mask[8:14, 1:6] = True
    rgb = export.overlay(image, heatmap, signed=True, mask=mask)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert rgb[4, 4, 0] > rgb[4, 4, 2] and rgb[10, 10, 2] > rgb[10, 10, 0], "red for, blue against"
    assert (rgb[8, 1] == export.OUTLINE).all() and not (rgb[10, 3] == export.OUTLINE).all(), "outline, not fill"


def test_a_diverged_map_is_not_drawn_as_zero_relevance_and_its_frame_says_so(tmp_path):
    image = np.full((8, 8), 100, np.uint8)
    zeros, diverged = np.zeros((8, 8), np.float32), np.full((8, 8), np.nan, np.float32)
    assert not np.array_equal(export.overlay(image, diverged, True), export.overlay(image, zeros, True))
    one_nan = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    one_nan[2, 2] = np.nan
    assert (export.overlay(image, one_nan, True)[2, 2] == 100).all(), "the radiograph alone, not black"
    sets = _sets(n=1, size=8)
    sets["lrp_z"].maps[0, 1] = np.nan
    data = export.viewer_data(np.full((1, 8, 8), 90, np.uint8), sets)
    assert data["notes"]["lrp_z"][0] == ["", "diverged map (NaN or inf: not scored)"]
    assert data["notes"]["gradcam"][0] == ["", ""]
    data["ids"] = ["</script><script>alert(1)</script>"]  # an id cannot end the page's script
    page = export.write_viewer(tmp_path / "v.html", data, "t").read_text()
    assert page.count("</script>") == 1
    assert json.loads(re.search(r"const data = (\{.*\});", page).group(1))["ids"] == data["ids"]


def test_overlay_takes_the_radiograph_as_the_widgets_draw_it_and_refuses_maps_of_another_size():
    zeros = np.zeros((8, 8), np.float32)
    as_float = export.overlay(np.full((8, 8), 0.5), zeros, False)  # a float image in [0, 1], as draw_radiograph takes
    as_bytes = export.overlay(np.full((8, 8), 128, np.uint8), zeros, False)
    assert np.abs(as_float.astype(int) - as_bytes.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r"The map is \(4, 4\) and the radiograph \(8, 8\)"):
        export.overlay(np.zeros((8, 8), np.uint8), np.zeros((4, 4)), True)


def test_viewer_holds_every_frame_and_needs_nothing_outside(tmp_path):
    sets = _sets()
    images = np.full((3, 32, 32), 90, np.uint8)
    codes = np.full((3, 14), np.nan)
    codes[1, labels.PATHOLOGIES.index("Edema")] = 1
    data = export.viewer_data(images, sets, codes=codes, masks=np.zeros((3, 14, 32, 32), bool))
    assert data["pathologies"] == PATHOLOGIES and data["methods"] == ["lrp_z", "gradcam"]
    assert data["labels"][1][0] == "positive" and data["probs"]["gradcam"][2][1] == round(
        float(sets["gradcam"].probs[2, 1]), 3
    )
    frames = [frame for method in data["frames"].values() for row in method for frame in row]
    assert len(frames) == 2 * 3 * 2
    decoded = Image.open(io.BytesIO(base64.b64decode(frames[0])))
    assert decoded.format == "JPEG" and decoded.size == (32, 32)
    path = export.write_viewer(tmp_path / "viewer.html", data, "a <run>")
    page = path.read_text()
    assert "<title>a &lt;run&gt;</title>" in page and list(tmp_path.iterdir()) == [path]
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "no external resource: opens from disk, offline"
    embedded = json.loads(re.search(r"const data = (\{.*\});", page).group(1))
    assert embedded["frames"]["lrp_z"][1][0] == data["frames"]["lrp_z"][1][0]

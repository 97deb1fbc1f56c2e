import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import heatmaps, labels, widgets  # noqa: E402


def _set(method="gradcam", signed=False, n=2, size=16):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(n, 14, size, size)) if signed else rng.random((n, 14, size, size))
    return heatmaps.HeatmapSet(
        maps, [f"img{i}" for i in range(n)], labels.PATHOLOGIES, method, {"k": 1}, rng.random((n, 14)), signed=signed
    )


def test_save_load_round_trip(tmp_path):
    original = _set(signed=True)
    loaded = heatmaps.HeatmapSet.load(original.save(tmp_path / "lrp.npz"))
    assert np.array_equal(loaded.maps, original.maps) and np.array_equal(loaded.probs, original.probs)
    assert loaded.image_ids == original.image_ids and loaded.params == {"k": 1}
    assert loaded.map("img1", "Edema").shape == (16, 16)
    with pytest.raises(FileNotFoundError, match="run the notebook"):
        heatmaps.HeatmapSet.load(tmp_path / "absent.npz")


def test_shape_and_names_are_checked():
    with pytest.raises(ValueError, match="n_pathologies"):
        heatmaps.HeatmapSet(np.zeros((2, 3, 4, 4)), ["a", "b"], ["Edema"], "x")
    with pytest.raises(ValueError, match="Oedema"):
        heatmaps.HeatmapSet(np.zeros((1, 1, 4, 4)), ["a"], ["Oedema"], "x")


def test_normalise_modes():
    maps = np.array([[[-2.0, 0.0], [1.0, 4.0]]])
    assert np.allclose(heatmaps.normalise(maps), [[[0, 1 / 3], [0.5, 1]]])
    assert np.allclose(heatmaps.normalise(maps, "absmax"), [[[-0.5, 0], [0.25, 1]]])
    assert np.allclose(heatmaps.normalise(maps, positive_only=True), [[[0, 0], [0.25, 1]]])
    assert np.array_equal(heatmaps.normalise(np.ones((1, 3, 3))), np.zeros((1, 3, 3)))


@pytest.mark.parametrize("signed", [False, True])
def test_render_view_for_every_pathology(signed):
    result = _set("lrp_epsilon" if signed else "gradcam", signed=signed)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    masks = np.zeros((2, 14, 16, 16), bool)
    masks[:, :, 4:9, 4:9] = True
    codes = np.full((2, 14), np.nan)
    codes[0, 2] = 1.0
    for name in labels.PATHOLOGIES:
        fig = widgets.render_view(images, result, 0, name, codes=codes, masks=masks)
        overlay = fig.axes[1]
        assert name in overlay.get_title() and "p = " in overlay.get_title()
        shown = overlay.get_images()[1]
        assert shown.get_cmap().name == (widgets.LRP_CMAP if signed else widgets.CAM_CMAP)
        low, high = shown.get_clim()
        assert (low, high) == ((-1, 1) if signed else (0, 1))
        plt.close(fig)
    fig = widgets.render_view(images, result, 0, "Cardiomegaly", codes=codes, masks=masks)
    assert "label: positive" in fig.axes[1].get_title()
    fig.canvas.draw()  # applies the images' aspect to the panels
    radiograph, overlay = (ax.get_position().bounds for ax in fig.axes[:2])
    assert overlay[2:] == pytest.approx(radiograph[2:], rel=1e-3), "the colour bar must not shrink the overlay"
    plt.close(fig)


def test_gallery_and_viewer_build():
    result = _set()
    images = np.zeros((2, 16, 16), np.uint8)
    fig = widgets.plot_gallery(images, {"gradcam": result, "again": result}, [(0, "Edema"), (1, "Fracture")])
    assert len(fig.axes) == 6
    plt.close(fig)
    viewer = widgets.heatmap_viewer(images, {"gradcam": result})
    assert len(viewer.children) == 3


def test_viewer_redraws_its_frame_in_place_and_closes_its_figures():
    result = _set()
    images = np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8)
    open_before = len(plt.get_fignums())
    viewer = widgets.heatmap_viewer(images, {"gradcam": result})
    (pathology, name, image), _, frame = viewer.children[0].children, viewer.children[1], viewer.children[2]
    first = frame.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG, drawn when the viewer is built
    image.value = 1
    assert frame.value != first  # the same widget shows the other image
    pathology.value = result.pathologies[-1]
    assert frame.value not in (first, b"")
    assert name.value == result.pathologies[-1] and not pathology.readout  # the whole name, beside the slider
    assert len(plt.get_fignums()) == open_before  # every figure drawn was closed


def test_building_a_viewer_keeps_the_kernels_objects_out_of_full_garbage_collections():
    """Without it a full collection over the kernel's heap made every few moves 0.3-0.5 s slower (bench_viewer)."""
    import gc

    gc.unfreeze()
    kept = [[] for _ in range(1000)]  # containers the collector tracks, alive before the viewer, like a run's tables
    assert gc.get_freeze_count() == 0
    widgets.heatmap_viewer(np.zeros((2, 16, 16), np.uint8), {"gradcam": _set()})
    assert gc.get_freeze_count() >= len(kept)
    gc.unfreeze()


def test_pick_examples_prefers_the_surest_positive():
    codes = np.full((3, 14), np.nan)
    codes[0, [2, 5]] = 1.0
    codes[2, 9] = 1.0
    probs = np.zeros((3, 14))
    probs[0, 5] = 0.9
    assert widgets.pick_examples(codes, probs, labels.PATHOLOGIES, 5) == [(0, "Edema"), (2, "Pneumothorax")]


def test_comparison_render_shows_each_panels_scores_for_every_pathology():
    import pandas as pd

    cam_maps, lrp_maps = _set("gradcam"), _set("lrp_epsilon_plus_flat", signed=True)
    sets = {"gradcam": cam_maps, "lrp_epsilon_plus_flat": lrp_maps}
    images = np.zeros((2, 16, 16), np.uint8)
    masks = np.zeros((2, 14, 16, 16), bool)
    masks[0, 5, 2:6, 2:6] = True
    scores = pd.DataFrame(
        [
            ("img0", "Edema", "gradcam", "hit", 1.0),
            ("img0", "Edema", "lrp_epsilon_plus_flat", "hit", 0.0),
            ("img0", "Edema", "lrp_epsilon_plus_flat", "iou", 0.25),
        ],
        columns=["image", "pathology", "method", "metric", "value"],
    )
    for name in labels.PATHOLOGIES:
        fig = widgets.render_comparison(
            images,
            sets,
            ["gradcam", "lrp_epsilon_plus_flat"],
            0,
            name,
            scores=scores,
            masks=masks,
            codes=np.zeros((2, 14)),
        )
        assert len(fig.axes) == 3 and name in fig.axes[0].get_title()
        texts = [t.get_text() for ax in fig.axes[1:] for t in ax.texts]
        if name == "Edema":
            assert texts == ["hit 1.00", "hit 0.00\nIoU 0.25"]
        else:
            assert texts == ["no ground truth", "no ground truth"]
        assert fig.axes[1].get_images()[1].get_cmap().name == widgets.CAM_CMAP
        assert fig.axes[2].get_images()[1].get_cmap().name == widgets.LRP_CMAP
        plt.close(fig)
    viewer = widgets.comparison_viewer(images, sets, scores=scores, masks=masks)
    assert len(viewer.children) == 3


def test_symmetric_scale_keeps_zero_and_clips_outliers():
    heatmap = np.linspace(-1, 1, 1000).reshape(10, 100)
    heatmap[0, 0] = -50.0
    scaled = widgets.symmetric_scale(heatmap)
    assert scaled.min() == -1 and scaled.max() <= 1 and scaled[5, 50] * heatmap[5, 50] >= 0
    assert np.array_equal(widgets.symmetric_scale(np.zeros((3, 3))), np.zeros((3, 3)))


def test_viewer_starts_at_the_given_example_with_its_picker_label():
    result = _set()
    images = np.zeros((2, 16, 16), np.uint8)
    viewer = widgets.heatmap_viewer(images, {"lrp": result}, start=(1, result.pathologies[-1]), picker="composite")
    pathology, name, image = viewer.children[0].children
    assert (image.value, pathology.value, name.value) == (1, result.pathologies[-1], result.pathologies[-1])
    assert viewer.children[1].children[0].description == "composite"
    viewer = widgets.comparison_viewer(images, {"a": result, "b": result}, start=(1, result.pathologies[0]))
    assert viewer.children[0].children[2].value == 1


def test_a_constant_map_is_labelled_empty():
    fig, (ax_empty, ax_full) = plt.subplots(1, 2)
    image = np.zeros((16, 16), np.uint8)
    widgets.render_overlay(ax_empty, image, np.zeros((16, 16)), signed=False)
    widgets.render_overlay(ax_full, image, np.eye(16), signed=False)
    assert [t.get_text() for t in ax_empty.texts] == [widgets.EMPTY_MAP]
    assert not ax_full.texts
    plt.close(fig)


def test_a_diverged_map_is_labelled_and_its_pixels_drawn_as_nothing():
    """An all-NaN LRP map scaled to zeros looked like a map of no relevance, unlabelled; inf pixels like full."""
    fig, (ax_nan, ax_inf) = plt.subplots(1, 2)
    image = np.zeros((16, 16), np.uint8)
    widgets.render_overlay(ax_nan, image, np.full((16, 16), np.nan), signed=True)
    with_inf = np.linspace(-1, 1, 256).reshape(16, 16)
    with_inf[3, 3] = np.inf
    shown = widgets.render_overlay(ax_inf, image, with_inf, signed=True)
    assert [t.get_text() for t in ax_nan.texts] == [widgets.DIVERGED_MAP] == [t.get_text() for t in ax_inf.texts]
    assert np.ma.is_masked(shown.get_array()[3, 3]) or np.isnan(shown.get_array()[3, 3])
    assert np.isnan(widgets.symmetric_scale(np.full((4, 4), np.nan))).all()
    plt.close(fig)

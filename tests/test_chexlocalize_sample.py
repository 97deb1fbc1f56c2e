"""CheXlocalize's public sample, scored by chexplain at the original resolution, against CheXlocalize's own numbers.

The sample (``sample/`` of github.com/rajpurkarlab/cheXlocalize, MIT licence, Copyright (c) 2022 Rajpurkar Lab /
Harvard Medical AI): the radiologists' masks of two CheXpert validation images at their original resolution
(2320 x 2828 and 2022 x 2021 px) and the 20 Grad-CAM maps (320 x 320) of CheXlocalize's model, as arrays without
the CheXpert images. The expected numbers were computed once by CheXlocalize's own code at commit 2a79492
(``heatmap_to_segmentation.pkl_to_mask``: the map resized to the original image, min-max, uint8, Otsu, filled
contours; ``eval.calculate_iou``; ``eval.get_hitrates``: the map's argmax) on the same files.

Fetched data may not be committed to this repository: the files live in ``../shared/fixtures/chexlocalize_sample``
(``gt_segmentations_val.json``, ``gradcam_maps_val.npz``, ``LICENSE.md``), written from a clone of CheXlocalize by
``python scripts/chexlocalize_fixture.py PATH/TO/cheXlocalize``. Without them the test is skipped and says so.
"""

import numpy as np
import pytest

from helpers import data, heatmaps, metrics, paths

FIXTURE = paths.PROJECT_ROOT.parent / "shared" / "fixtures" / "chexlocalize_sample"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FIXTURE / "gradcam_maps_val.npz").is_file(),
        reason=f"CheXlocalize's sample is not in {FIXTURE}: write it with scripts/chexlocalize_fixture.py",
    ),
]

FIRST, SECOND = "patient64541_study1_view1_frontal", "patient64542_study1_view1_frontal"
#: CheXlocalize's segmentation of every map: pixels at the original resolution.
SEGMENTED = {
    (FIRST, "Lung Opacity"): 1893873,
    (FIRST, "Atelectasis"): 968448,
    (FIRST, "Cardiomegaly"): 741012,
    (FIRST, "Consolidation"): 334807,
    (FIRST, "Edema"): 1081726,
    (FIRST, "Enlarged Cardiomediastinum"): 789457,
    (FIRST, "Lung Lesion"): 1190078,
    (FIRST, "Pleural Effusion"): 1531829,
    (FIRST, "Pneumothorax"): 1697930,
    (FIRST, "Support Devices"): 1371177,
    (SECOND, "Lung Opacity"): 447326,
    (SECOND, "Atelectasis"): 173389,
    (SECOND, "Cardiomegaly"): 738722,
    (SECOND, "Consolidation"): 420367,
    (SECOND, "Edema"): 69275,
    (SECOND, "Enlarged Cardiomediastinum"): 497784,
    (SECOND, "Lung Lesion"): 630672,
    (SECOND, "Pleural Effusion"): 1893374,
    (SECOND, "Pneumothorax"): 406706,
    (SECOND, "Support Devices"): 1196531,
}
#: Where a radiologist drew the finding: CheXlocalize's IoU (``--true_pos_only``) and hit.
WITH_MASK = {
    (FIRST, "Lung Opacity"): (0.0, 0.0),
    (FIRST, "Cardiomegaly"): (0.36620622920151663, 1.0),
    (FIRST, "Enlarged Cardiomediastinum"): (0.46234707294166755, 1.0),
    (SECOND, "Support Devices"): (0.03329038603556568, 0.0),
}


@pytest.fixture(scope="module")
def sample():
    """Masks under chexplain's names ("Airspace Opacity" read as "Lung Opacity") and the maps by (image, name)."""
    masks = data.load_masks(FIXTURE / "gt_segmentations_val.json")
    arrays = np.load(FIXTURE / "gradcam_maps_val.npz")
    maps = {
        (str(image), data.pathology_name(str(task))): heatmap
        for image, task, heatmap in zip(arrays["image_ids"], arrays["tasks"], arrays["maps"])
    }
    return masks, maps


def test_the_sample_reads_with_chexplains_names_at_the_original_resolution(sample):
    masks, maps = sample
    assert set(maps) == set(SEGMENTED)
    assert masks[FIRST]["Lung Opacity"].shape == (2320, 2828) and masks[SECOND]["Cardiomegaly"].shape == (2022, 2021)
    drawn = {(image, name) for image, found in masks.items() for name, mask in found.items() if mask.any()}
    assert drawn == set(WITH_MASK)


def test_segmentation_iou_and_hit_equal_chexlocalizes_own_evaluation(sample):
    masks, maps = sample
    for (image, name), heatmap in maps.items():
        mask = masks[image][name]
        full = heatmaps.to_original_size(heatmap, mask.shape)
        assert int(metrics.chexlocalize_segmentation(full).sum()) == SEGMENTED[image, name], (image, name)
        if (image, name) in WITH_MASK:
            iou, hit = WITH_MASK[image, name]
            assert metrics.chexlocalize_iou(full, mask, true_positive_only=True) == pytest.approx(iou, abs=1e-12)
            assert metrics.hit(full, mask, ties="first") == hit
        else:  # CheXlocalize's full-dataset mode: a segmentation where no finding was drawn scores 0
            assert metrics.chexlocalize_iou(full, mask) == 0.0


def test_masks_mapped_to_the_input_keep_their_share_of_the_image(sample):
    """Nearest-neighbour from 2320 x 2828 to 224 px: each drawn mask covers the same share of the image within 0.0003
    (measured: 0.0000-0.0002; Support Devices 0.0116 -> 0.0114), so thin masks are not lost on the way."""
    masks, _ = sample
    for image, name in WITH_MASK:
        original = masks[image][name]
        mapped = data.map_mask(original, 224)
        assert abs(mapped.mean() - original.mean()) <= 3e-4, (image, name, original.mean(), mapped.mean())

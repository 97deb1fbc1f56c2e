"""Heatmaps x ground-truth masks -> one tidy DataFrame: ``image, pathology, method, metric, value``.

Every localisation and granularity score reads the map's **positive part** (for signed LRP maps, the
evidence *for* the pathology; CAMs are non-negative already), so LRP and Grad-CAM are scored on the same
footing. Correlations between maps (class sensitivity, randomisation) and the pixel order of deletion /
insertion use the maps as they are.

- Localisation, as CheXlocalize defines it (rows where the ground-truth mask is non-empty): ``hit``
  (the map's maximum lies in the mask; ties count if any tied pixel does, as Quantus' pointing game),
  ``distance_px`` from the maximum to the mask and ``near_hit`` (within 1/16 of the width), ``iou`` (Otsu threshold of the min-max-normalised map, scikit-image), ``mass_accuracy`` (share of
  relevance inside the mask), ``rank_accuracy`` (share of the mask-sized top of the map inside the
  mask), ``pixel_auroc`` (the map as a pixel-wise mask detector, scikit-learn).
- Granularity: ``gini`` (sparseness), ``entropy`` (complexity), ``resolution_px`` (width of the map's
  spatial autocorrelation at half height, in input pixels).
- Class sensitivity: ``class_correlation`` (mean correlation between one image's maps for different
  findings; pathology ``"all"``).
- Faithfulness (:func:`perturbation_scores`) and sanity (:func:`cascading_randomisation`) need the model.
- :func:`summarise` and :func:`paired_differences` add bootstrap 95% CIs over images.

A constant map carries no location: ``hit``, ``near_hit`` and ``iou`` are 0, ``distance_px`` is NaN and
the other localisation scores are at chance (the mask's area share; AUROC 0.5). A map with inf or NaN
(diverged relevance) scores NaN.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats
from skimage.filters import threshold_otsu
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from helpers import labels
from helpers.heatmaps import HeatmapSet

COLUMNS = ["image", "pathology", "method", "metric", "value"]


# --------------------------------------------------------------------------- single-map scores


def positive_part(heatmap: np.ndarray) -> np.ndarray:
    """The evidence for the pathology, float64: ``max(map, 0)``."""
    return np.maximum(np.asarray(heatmap, dtype=np.float64), 0.0)


def hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum (any tied pixel) lies in the mask (CheXlocalize's hit, Quantus' pointing game)."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return 0.0
    return float(np.any(mask[values == values.max()]))


def distance_px(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Distance (pixels) from the map's maximum (the tied pixel nearest the mask) to the mask; 0 for a hit."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return float("nan")
    distance = ndimage.distance_transform_edt(~mask)
    return float(distance[values == values.max()].min())


def near_hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum lies within 1/16 of the image width of the mask (a tolerant hit)."""
    distance = distance_px(heatmap, mask)
    return 0.0 if np.isnan(distance) else float(distance <= mask.shape[-1] / 16)


def otsu_segmentation(heatmap: np.ndarray) -> np.ndarray:
    """Boolean segmentation: the min-max-normalised positive part above its Otsu threshold."""
    values = positive_part(heatmap)
    if values.max() == values.min():
        return np.zeros(values.shape, dtype=bool)
    scaled = (values - values.min()) / (values.max() - values.min())
    return scaled > threshold_otsu(scaled)


def iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of the Otsu segmentation and the mask (NaN if both are empty)."""
    segmentation = otsu_segmentation(heatmap)
    union = np.logical_or(segmentation, mask).sum()
    return float(np.logical_and(segmentation, mask).sum() / union) if union else float("nan")


def mass_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance inside the mask (Arras et al. 2022)."""
    values = positive_part(heatmap)
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else float(mask.mean())


def rank_accuracy(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the ``|mask|`` highest-ranked pixels that lie in the mask (Arras et al. 2022).

    Pixels tied at the cut-off (e.g. the zeros of a positive part) share the remaining places evenly:
    they get the mask's share among them, not an order that would favour the top-left of the image.
    """
    values = positive_part(heatmap).ravel()
    inside = mask.ravel()
    k = int(inside.sum())
    if not k:
        return float("nan")
    cutoff = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > cutoff, values == cutoff
    credit = inside[above].sum() + (k - above.sum()) * inside[tied].mean()
    return float(credit / k)


def pixel_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of the map's positive part as a detector of mask pixels."""
    flat_mask = mask.ravel()
    if flat_mask.all() or not flat_mask.any():
        return float("nan")
    return float(roc_auc_score(flat_mask, positive_part(heatmap).ravel()))


def gini(heatmap: np.ndarray) -> float:
    """Gini sparseness of the positive part (Chalasani et al. 2020): 0 uniform, towards 1 for a single pixel."""
    values = np.sort(positive_part(heatmap).ravel())
    n, total = values.size, values.sum()
    if total == 0:
        return 0.0
    return float(((2 * np.arange(1, n + 1) - n - 1) * values).sum() / (n * total))


def entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy (nats) of the positive part as a distribution over pixels (Bhatt et al. 2020)."""
    values = positive_part(heatmap).ravel()
    total = values.sum()
    if total == 0:
        return float(np.log(values.size))
    share = values / total
    return float(-(share * np.log(share + 1e-12)).sum())


def resolution_px(heatmap: np.ndarray) -> float:
    """Width (pixels) at which the map's spatial autocorrelation falls to one half (FWHM of its central peak).

    Written by hand (no library measures it): the mean-subtracted positive part is autocorrelated through
    a zero-padded FFT, averaged over rings of equal lag, and the half-height lag is interpolated. A
    Gaussian blob of standard deviation ``s`` gives about ``2.355 * s * sqrt(2)``; a map that changes
    every pixel gives about 1-2. NaN for a constant map.
    """
    values = positive_part(heatmap)
    if values.max() == values.min():
        return float("nan")
    values = values - values.mean()
    height, width = values.shape
    spectrum = np.fft.rfft2(values, s=(2 * height, 2 * width))
    correlation = np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * height, 2 * width))
    correlation = np.fft.fftshift(correlation / correlation[0, 0])
    rows, cols = np.indices(correlation.shape)
    radius = np.hypot(rows - height, cols - width).round().astype(int)
    limit = min(height, width)
    profile = np.bincount(radius.ravel(), correlation.ravel())[:limit] / np.bincount(radius.ravel())[:limit]
    below = np.flatnonzero(profile < 0.5)
    if not len(below):
        return float(2 * limit)
    r = below[0]
    half_lag = r - 1 + (profile[r - 1] - 0.5) / (profile[r - 1] - profile[r])
    return float(2 * half_lag)


SINGLE_MAP = {"gini": gini, "entropy": entropy, "resolution_px": resolution_px}
WITH_MASK = {"hit": hit, "near_hit": near_hit, "distance_px": distance_px, "iou": iou, "mass_accuracy": mass_accuracy,
             "rank_accuracy": rank_accuracy, "pixel_auroc": pixel_auroc}


# --------------------------------------------------------------------------- scoring HeatmapSets


def score(heatmaps: HeatmapSet, masks: np.ndarray | Mapping, *, codes: np.ndarray | None = None,
          granularity: bool = True, class_sensitivity: bool = True) -> pd.DataFrame:
    """Localisation, granularity and class-sensitivity scores of one method's maps.

    Parameters
    ----------
    heatmaps : HeatmapSet
        One method's maps.
    masks : bool array ``(n, 14, H, W)`` or dict
        Ground truth in :data:`helpers.labels.PATHOLOGIES` order, rows aligned with ``heatmaps.image_ids``;
        or the dict of :func:`helpers.data.load_masks` (e.g. CheXlocalize's JSON), matched by image id and
        resized to the maps.
    codes : array ``(n, 14)``, optional
        CheXpert label codes. Granularity is scored on positive findings only when given (all maps otherwise).
    granularity, class_sensitivity : bool
        Whether to add those metrics.

    Returns
    -------
    DataFrame
        Columns ``image, pathology, method, metric, value``; localisation rows only where the mask is non-empty.
    """
    masks = _mask_array(heatmaps, masks)
    rows = []
    for i, image_id in enumerate(heatmaps.image_ids):
        for j, pathology in enumerate(heatmaps.pathologies):
            k = labels.PATHOLOGIES.index(pathology)
            heatmap, mask = heatmaps.maps[i, j], masks[i, k]
            finite = bool(np.isfinite(heatmap).all())  # a diverged map (LRP-z) has no defined score
            if mask.any():
                rows += [(image_id, pathology, heatmaps.method, name, f(heatmap, mask) if finite else np.nan)
                         for name, f in WITH_MASK.items()]
            if granularity and (codes is None or codes[i, k] == 1):
                rows += [(image_id, pathology, heatmaps.method, name, f(heatmap) if finite else np.nan)
                         for name, f in SINGLE_MAP.items()]
        if class_sensitivity:
            rows.append((image_id, "all", heatmaps.method, "class_correlation", class_correlation(heatmaps, i)))
    return pd.DataFrame(rows, columns=COLUMNS)


def _mask_array(heatmaps: HeatmapSet, masks) -> np.ndarray:
    if isinstance(masks, Mapping):
        from helpers.data import mask_stack

        masks = mask_stack(masks, heatmaps.image_ids, heatmaps.maps.shape[-1])
    masks = np.asarray(masks, dtype=bool)
    expected = (len(heatmaps.image_ids), len(labels.PATHOLOGIES), *heatmaps.maps.shape[-2:])
    if masks.shape != expected:
        raise ValueError(f"masks must be bool {expected} (images x all 14 pathologies x map size), aligned "
                         f"with the heatmaps' image ids; got {masks.shape}.")
    return masks


def class_correlation(heatmaps: HeatmapSet, image: int) -> float:
    """Mean Pearson correlation between one image's maps for different findings (``No Finding`` left out).

    Near 1: the method shows the same thing whatever the pathology asked for.
    """
    keep = [j for j, name in enumerate(heatmaps.pathologies) if name != "No Finding"]
    flat = heatmaps.maps[image, keep].reshape(len(keep), -1).astype(np.float64)
    varying = flat.std(axis=1) > 0
    if varying.sum() < 2:
        return float("nan")
    matrix = np.corrcoef(flat[varying])
    return float(matrix[np.triu_indices_from(matrix, k=1)].mean())


def multi_finding_rows(scores: pd.DataFrame, codes: np.ndarray, image_ids: Sequence[str],
                       metric: str = "hit", minimum: int = 2) -> pd.DataFrame:
    """``metric`` rows of images with at least ``minimum`` positive findings, renamed ``<metric>_multi``."""
    findings = [labels.PATHOLOGIES.index(p) for p in labels.PATHOLOGIES if p != "No Finding"]
    counts = (np.asarray(codes)[:, findings] == 1).sum(axis=1)
    multi = {str(i) for i, c in zip(image_ids, counts) if c >= minimum}
    chosen = scores[(scores["metric"] == metric) & scores["image"].isin(multi)]
    return chosen.assign(metric=f"{metric}_multi")


# --------------------------------------------------------------------------- faithfulness


def blurred_baseline(inputs: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-blurred inputs (sigma default: 1/16 of the width), the reference for perturbation curves."""
    sigma = sigma or inputs.shape[-1] / 16
    kernel = int(4 * sigma) // 2 * 2 + 1
    return gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])


def perturbation_scores(model: nn.Module, inputs: torch.Tensor, heatmaps: HeatmapSet,
                        pairs: Sequence[tuple[int, str]], steps: int = 10, batch_size: int = 64,
                        seed: int = 0) -> pd.DataFrame:
    """Deletion and insertion curves (areas under each) with a blurred-image baseline.

    Pixels are taken in the order of the map (most relevant first; ties in a seeded random order, so that
    the zeros of a map are not taken from the top-left first). Deletion replaces the top fraction
    by the blurred image (a faithful map makes the probability fall fast: low area); insertion starts
    from the blurred image and restores the top fraction (high area is good). Areas are over the
    fraction 0..1 of the probability of the explained pathology. A map with inf or NaN scores NaN.
    """
    baseline = blurred_baseline(inputs)
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0, 1, steps + 1)
    rows = []
    model.eval()
    for i, pathology in pairs:
        j, k = heatmaps.pathologies.index(pathology), labels.PATHOLOGIES.index(pathology)
        values = heatmaps.maps[i, j].ravel()
        if not np.isfinite(values).all():
            rows += [(heatmaps.image_ids[i], pathology, heatmaps.method, name, np.nan)
                     for name in ("deletion_auc", "insertion_auc")]
            continue
        order = np.lexsort((rng.random(values.size), -values))
        revealed = _top_fraction_masks(order, fractions, inputs.shape[-2:])
        deleted = torch.where(revealed, baseline[i], inputs[i])
        inserted = torch.where(revealed, inputs[i], baseline[i])
        probs = _probabilities(model, torch.cat([deleted, inserted]), k, batch_size)
        for name, curve in (("deletion_auc", probs[:len(fractions)]), ("insertion_auc", probs[len(fractions):])):
            rows.append((heatmaps.image_ids[i], pathology, heatmaps.method, name, float(np.trapezoid(curve, fractions))))
    return pd.DataFrame(rows, columns=COLUMNS)


def occlusion_maps(model: nn.Module, inputs: torch.Tensor, image_ids: Sequence[str], window: int | None = None,
                   stride: int | None = None) -> HeatmapSet:
    """Occlusion sensitivity for all 14 pathologies: the logit drop when a square is replaced by the blurred image.

    A model-based reference that needs no gradients: if it localises and a gradient method does not,
    the method (not the model or the data) is at fault. Written by hand because zennit's ``Occlusion``
    explains one output per run; here every occluded forward pass serves all 14 logits. Window default
    1/8 of the width, stride half the window. Each drop is placed at its window's centre and the grid is
    bilinearly interpolated to the input size (edges held), as CAMs are upsampled, so that the map has
    one maximum rather than a tied block.
    """
    window = window or inputs.shape[-1] // 8
    stride = stride or max(1, window // 2)
    baseline = blurred_baseline(inputs)
    height, width = inputs.shape[-2:]
    tops, lefts = range(0, height - window + 1, stride), range(0, width - window + 1, stride)
    drops = torch.zeros(len(inputs), len(labels.PATHOLOGIES), len(tops), len(lefts), dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        reference = model(inputs).double()
        for r, top in enumerate(tops):
            for c, left in enumerate(lefts):
                region = (..., slice(top, top + window), slice(left, left + window))
                occluded = inputs.clone()
                occluded[region] = baseline[region]
                drops[:, :, r, c] = reference - model(occluded).double()
        probs = torch.sigmoid(reference).numpy()
    maps = _centre_grid_to_image(drops, stride, window // 2, (height, width)).numpy()
    return HeatmapSet(maps, image_ids, labels.PATHOLOGIES, "occlusion", {"window": window, "stride": stride,
                                                                        "baseline": "blurred"}, probs)


def _centre_grid_to_image(grid: torch.Tensor, stride: int, offset: int, size) -> torch.Tensor:
    """Values at pixels ``offset + k * stride`` interpolated bilinearly in between, held constant beyond."""
    span = [(n - 1) * stride + 1 for n in grid.shape[-2:]]
    inner = nn.functional.interpolate(grid, size=span, mode="bilinear", align_corners=True)
    pad = (offset, size[1] - offset - span[1], offset, size[0] - offset - span[0])
    return nn.functional.pad(inner, pad, mode="replicate")


def _top_fraction_masks(order: np.ndarray, fractions: np.ndarray, shape) -> torch.Tensor:
    """Bool ``(len(fractions), 1, H, W)``: True on the top ``fraction`` of pixels in ``order``."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    counts = np.round(fractions * order.size).astype(int)
    return torch.from_numpy(rank[None, :] < counts[:, None]).view(len(fractions), 1, *shape)


def _probabilities(model: nn.Module, batch: torch.Tensor, k: int, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        logits = torch.cat([model(batch[s:s + batch_size]) for s in range(0, len(batch), batch_size)])
    return torch.sigmoid(logits[:, k]).numpy().astype(np.float64)


# --------------------------------------------------------------------------- sanity


def randomisation_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Module groups from the output down, for cascading randomisation (cumulative in this order)."""
    children = dict(model.named_children())
    if "features" in children:  # DenseNet
        feature_names = [name for name, _ in model.features.named_children()]
        blocks = [n for n in feature_names if n.startswith("denseblock")][::-1]
        stages = [("classifier", ["classifier"])]
        for block in blocks:
            number = block.removeprefix("denseblock")
            group = [f"features.{block}"] + ([f"features.transition{number}"] if f"transition{number}" in feature_names
                                             else ["features.norm5"])
            stages.append((block, group))
        return stages + [("stem", ["features.conv0", "features.norm0"])]
    if "layer4" in children:  # ResNet
        return [("fc", ["fc"])] + [(f"layer{n}", [f"layer{n}"]) for n in (4, 3, 2, 1)] + [("stem", ["conv1", "bn1"])]
    raise ValueError(f"No randomisation stages for {type(model).__name__}; supported: DenseNet and ResNet.")


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two maps; 0 when either is constant (it has no structure left to share)."""
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first.ravel(), second.ravel()).statistic)


def cascading_randomisation(model: nn.Module, inputs: torch.Tensor, explain: Callable[[nn.Module], HeatmapSet],
                            pairs: Sequence[tuple[int, str]], seed: int = 0) -> pd.DataFrame:
    """Adebayo et al. (2018): re-initialise layers from the top, cumulatively, and compare maps.

    ``explain(model) -> HeatmapSet`` explains ``inputs`` with one method. Each stage's rows carry metric
    ``randomised_<stage>``, value the Spearman rank correlation (:func:`rank_correlation`) between the trained model's map and the
    randomised model's map for each (image, pathology) in ``pairs``. The last stage is full randomisation.
    The model itself is not modified (a deep copy is randomised).
    """
    trained = explain(model)
    randomised = copy.deepcopy(model).eval()
    modules = dict(randomised.named_modules())
    rows = []
    for s, (stage, names) in enumerate(randomisation_stages(randomised)):
        torch.manual_seed(seed + s)
        for name in names:
            for module in modules[name].modules():
                if hasattr(module, "reset_parameters") and not isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()
        maps = explain(randomised)
        for i, pathology in pairs:
            j = trained.pathologies.index(pathology)
            rows.append((trained.image_ids[i], pathology, trained.method, f"randomised_{stage}",
                         rank_correlation(trained.maps[i, j], maps.maps[i, j])))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- confidence intervals


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaN-free ``values``)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, pooled: bool = True) -> pd.DataFrame:
    """Mean and bootstrap 95% CI over images per method x pathology x metric.

    With ``pooled``, adds pathology ``"all"`` per method x metric: each image's values are averaged first,
    so the CI still resamples images. NaN values (undefined scores) are left out; ``n`` counts the values used.
    """
    scores = _with_pooled(scores) if pooled else scores.dropna(subset=["value"])
    rows = []
    for (method, pathology, metric), group in scores.groupby(["method", "pathology", "metric"], sort=False):
        low, high = bootstrap_ci(group["value"].to_numpy(), n_boot, seed)
        rows.append({"method": method, "pathology": pathology, "metric": metric, "mean": group["value"].mean(),
                     "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(rows)


def _with_pooled(scores: pd.DataFrame) -> pd.DataFrame:
    """NaN-free scores plus pathology ``"all"`` rows: each image's per-pathology values averaged."""
    scores = scores.dropna(subset=["value"])
    per_pathology = scores[scores["pathology"] != "all"]
    pooled = per_pathology.groupby(["method", "metric", "image"], as_index=False, sort=False)["value"].mean()
    return pd.concat([scores, pooled.assign(pathology="all")], ignore_index=True)


def paired_differences(scores: pd.DataFrame, method_a: str, method_b: str, n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """Mean of ``a - b`` over images scored by both methods, per pathology x metric, with a bootstrap 95% CI.

    Differences are taken per (image, pathology) first, where both methods have a value; pathology ``"all"``
    then averages each image's differences, so both methods are always compared on the same maps.
    """
    scores = scores.dropna(subset=["value"])
    wide = scores.pivot_table(index=["pathology", "metric", "image"], columns="method", values="value")
    if method_a not in wide or method_b not in wide:
        raise ValueError(f"Both methods must be in the scores; have {sorted(scores['method'].unique())}.")
    difference = (wide[method_a] - wide[method_b]).dropna().rename("difference").reset_index()
    per_pathology = difference[difference["pathology"] != "all"]
    pooled = per_pathology.groupby(["metric", "image"], as_index=False, sort=False)["difference"].mean()
    difference = pd.concat([difference, pooled.assign(pathology="all")], ignore_index=True)
    rows = []
    for (pathology, metric), group in difference.groupby(["pathology", "metric"], sort=False):
        low, high = bootstrap_ci(group["difference"].to_numpy(), n_boot, seed)
        rows.append({"pathology": pathology, "metric": metric, "a": method_a, "b": method_b,
                     "mean_difference": group["difference"].mean(), "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables and verdicts

#: Published scores on *other data* (real CheXpert), shown beside ours and labelled as such.
ANCHORS = [
    {"method": "Grad-CAM (SHAMSUL 2023, CheXpert: other data)", "iou": 0.153},
    {"method": "LRP (SHAMSUL 2023, CheXpert: other data)", "iou": 0.104},
    {"method": "Grad-CAM (CheXlocalize 2022, CheXpert test: other data)", "hit": 0.58, "iou": 0.28},
]


def results_table(summary: pd.DataFrame, methods: Sequence[str], metric_names: Sequence[str],
                  anchors: Sequence[dict] = ANCHORS) -> pd.DataFrame:
    """Pooled means with 95% CIs, ``"0.43 [0.35, 0.51]"``, one row per method, then the anchors' rows."""
    pooled = summary[summary["pathology"] == "all"].set_index(["method", "metric"])
    rows = []
    for method in methods:
        row = {"method": method}
        for metric in metric_names:
            if (method, metric) in pooled.index:
                r = pooled.loc[(method, metric)]
                row[metric] = f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        rows.append(row)
    rows += [{"method": a["method"], **{m: f"{a[m]:.3f}" for m in metric_names if m in a}} for a in anchors]
    return pd.DataFrame(rows, columns=["method", *metric_names])


def granularity_verdict(scores: pd.DataFrame, lrp_method: str, cam_method: str, n_boot: int = 1000,
                        seed: int = 0) -> tuple[str, pd.DataFrame]:
    """Is ``lrp_method`` more granular than ``cam_method``? Paired differences of resolution and Gini.

    Granular means a smaller effective resolution (finer detail) and a higher Gini sparseness. The claim
    holds when both paired 95% CIs exclude zero in that direction, fails when either excludes zero the
    other way, and is undecided otherwise.
    """
    differences = paired_differences(scores, lrp_method, cam_method, n_boot, seed)
    pooled = differences[(differences["pathology"] == "all")
                         & differences["metric"].isin(["resolution_px", "gini"])].set_index("metric")
    finer = pooled.loc["resolution_px", "ci_high"] < 0 and pooled.loc["gini", "ci_low"] > 0
    coarser = pooled.loc["resolution_px", "ci_low"] > 0 or pooled.loc["gini", "ci_high"] < 0
    verdict = "supported" if finer else "contradicted" if coarser else "undecided"
    text = (f"'LRP is more granular than Grad-CAM' is {verdict} for {lrp_method} vs {cam_method}: effective "
            f"resolution differs by {pooled.loc['resolution_px', 'mean_difference']:+.1f} px (95% CI "
            f"{pooled.loc['resolution_px', 'ci_low']:+.1f} to {pooled.loc['resolution_px', 'ci_high']:+.1f}), Gini "
            f"sparseness by {pooled.loc['gini', 'mean_difference']:+.3f} ({pooled.loc['gini', 'ci_low']:+.3f} to "
            f"{pooled.loc['gini', 'ci_high']:+.3f}), over {int(pooled.loc['gini', 'n'])} images.")
    return text, pooled.reset_index()


def hit_rate_diagnosis(summary: pd.DataFrame, methods: Sequence[str], reference: str = "occlusion",
                       target: float = 0.8) -> str:
    """Who is at fault when no method reaches a ``target`` hit rate: the methods, the metric, or the model?

    Occlusion of the same model is the reference: it needs no gradients and reads the model's behaviour
    directly. If even its maximum is rarely near the mask, the model (or the data it learnt from) does not
    look at the findings. If its maximum is near the mask (``near_hit``) but not always inside, the strict
    hit is asking for more than the image resolution gives on thin and small masks; methods whose near-hit
    rate stays far below the reference's miss the findings themselves.
    """
    pooled = summary[summary["pathology"] == "all"].set_index(["metric", "method"])

    def text(metric, method):
        r = pooled.loc[(metric, method)]
        return f"{method} {r['mean']:.2f} (95% CI {r['ci_low']:.2f}-{r['ci_high']:.2f})"

    hits = pooled.loc["hit"]["mean"]
    best = hits.loc[list(methods)].idxmax()
    if hits[best] >= target:
        return f"Hit rate: {text('hit', best)} reaches the {target} target."
    if reference not in hits.index:
        return f"No method reaches a hit rate of {target} (best: {text('hit', best)}); run occlusion to find out why."
    near = pooled.loc["near_hit"]["mean"]
    if near[reference] < target:
        return (f"No method reaches a hit rate of {target} (best: {text('hit', best)}), and even occlusion's maximum "
                f"is near the finding too rarely ({text('near_hit', reference)} within 1/16 of the width): the model "
                f"does not rely on the findings' locations, so the model or its data is at fault.")
    near_best = near.loc[list(methods)].idxmax()
    return (f"No method reaches a hit rate of {target} (best: {text('hit', best)}); occlusion of the same model reaches "
            f"{text('hit', reference)}. Its maximum lies within 1/16 of the width of the mask far more often "
            f"({text('near_hit', reference)}), so the model does look at the findings and the phantom's masks are "
            f"where it looks: the strict hit fails on thin and small masks (support devices, pleural thickening, "
            f"fractures) at this resolution. The gradient methods are at fault beyond that: their maxima are that "
            f"near in at most {text('near_hit', near_best)}.")


def explainer(method: str, inputs: torch.Tensor, image_ids: Sequence[str], mean=None, std=None
              ) -> Callable[[nn.Module], HeatmapSet]:
    """``model -> HeatmapSet`` for a method named as in the HeatmapSets (``gradcam``, ``lrp_<composite>``)."""
    from helpers import cam, lrp

    if method.startswith("lrp_"):
        bounds = {} if mean is None else {"mean": mean, "std": std}
        return lambda net: lrp.explain_lrp(net, inputs, composite=method.removeprefix("lrp_"), image_ids=image_ids,
                                           **bounds)
    return lambda net: cam.explain_cam(net, inputs, method=method, image_ids=image_ids)

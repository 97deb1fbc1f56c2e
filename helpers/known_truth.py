"""Notebook 06's steps: what the model really uses, from the phantom's counterfactual renders, and whether the
methods reveal a shortcut model's marker. The notebook narrates these; each returns tidy tables.

1. Counterfactual evidence, on the run's model and the explained batch of notebooks 03-05: every positive
   (image, finding) is rendered again without the finding; the logit changes are the ground truth of use
   (:func:`counterfactual_evidence`), against which each method's mass in the finding's footprint is ranked
   (:func:`helpers.metrics.use_correlation`); class leakage is the move of pathology A's map when only finding B
   is removed (:func:`class_leakage`); notebook 05's localisation is split by whether the model uses the finding
   (:func:`localisation_by_use`).
2. A Clever-Hans experiment: two twins of the run (:meth:`helpers.run.Run.twin`) trained alike on the phantom
   without and with a spurious marker; their reliance on it (:func:`reliance`) and what each method's maps show
   of it (:func:`shortcut_scores`, :func:`helpers.metrics.detection_auroc`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers import data, evaluate, labels, metrics
from helpers.heatmaps import HeatmapSet
from helpers.run import ExplainedBatch, Run

#: A finding counts as used by the model where rendering it out lowers its logit by at least this much (a factor
#: e^0.5 = 1.65 on the odds).
USED_DELTA = 0.5
#: The model kinds of the shortcut experiment.
TWINS = ("clean", "shortcut")


def counterfactual_evidence(
    run: Run, model: nn.Module, sets: dict[str, HeatmapSet], methods: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Logit changes and footprint scores for every positive pair of the explained batch.

    Returns
    -------
    truth : DataFrame
        :func:`helpers.metrics.logit_changes`: ``image, removed, pathology, delta`` for every pathology of every
        removal.
    scores : DataFrame
        :func:`helpers.metrics.region_scores` of each method's map of the pair's pathology against the pair's
        footprint (where removing the finding changes the radiograph): ``footprint_mass``, ``_excess``, ``_max``,
        ``_rank``.
    """
    batch = run.explained()
    pairs = batch.pairs()
    counterfactual, footprints = run.counterfactual_renders(pairs)
    truth = metrics.logit_changes(model, batch.inputs, counterfactual, pairs, batch.image_ids)
    scores = pd.concat([metrics.region_scores(sets[m], pairs, footprints, "footprint") for m in methods])
    return truth, scores.reset_index(drop=True)


def own_changes(truth: pd.DataFrame) -> pd.DataFrame:
    """Each removal's change of its own pathology's logit: ``image, pathology, delta, used``."""
    own = truth[truth["removed"] == truth["pathology"]][["image", "pathology", "delta"]]
    return own.assign(used=own["delta"] >= USED_DELTA).reset_index(drop=True)


def localisation_by_use(
    scores: pd.DataFrame, own: pd.DataFrame, metric_names: Sequence[str], n_boot: int, patients: dict
) -> pd.DataFrame:
    """Notebook 05's localisation scores summarised separately for findings the model uses and those it does not
    (:data:`USED_DELTA`): a method pointing away from a finding the model ignores is not wrong about the model.
    Per pathology and pooled (pathology ``"all"``), as every localisation summary."""
    chosen = scores[scores["metric"].isin(metric_names)].merge(own[["image", "pathology", "used"]])
    return metrics.summarise(chosen, n_boot, patients=patients, by=["used"]).reset_index(drop=True)


def leakage_targets(batch: ExplainedBatch, n: int, seed: int = 0) -> list[tuple[int, str, str]]:
    """Up to ``n`` triples (image, A, B) of two different positive findings of one image, at most one per image
    (sampled with ``seed``): A is explained, B removed."""
    by_image: dict[int, list[str]] = {}
    for i, name in batch.pairs():
        by_image.setdefault(i, []).append(name)
    rng = np.random.default_rng(seed)
    triples = []
    for i in rng.permutation(sorted(i for i, names in by_image.items() if len(names) > 1)):
        a, b = rng.choice(by_image[int(i)], 2, replace=False)
        triples.append((int(i), str(a), str(b)))
    return triples[:n]


def class_leakage(
    run: Run, model: nn.Module, sets: dict[str, HeatmapSet], methods: Sequence[str], n: int
) -> pd.DataFrame:
    """Does the map of pathology A move when only finding B is removed, and does the model's logit A move?

    For up to ``n`` images with two positive findings (:func:`leakage_targets`), B is rendered out and every
    method explains A again on the counterfactual. Rows (tidy, ``method`` ``"model"`` for the truth):
    ``map_shift`` (:func:`helpers.metrics.map_shift`), ``leak_mass`` / ``_max`` / ``_rank`` (A's map on the
    pixels only B occupies) and, as method ``"model"``, ``delta_other`` (logit A minus logit A without B).
    """
    batch = run.explained()
    triples = leakage_targets(batch, n, seed=run.profile.seed)
    if not triples:
        raise ValueError(
            f"No explained image has two positive findings to test class leakage on: explain more images "
            f"(n_explain, {len(batch)} now) or leave class_leakage out."
        )
    removals = [(i, b) for i, _, b in triples]
    counterfactual, footprints = run.counterfactual_renders(removals)
    truth = metrics.logit_changes(model, batch.inputs, counterfactual, removals, batch.image_ids)
    per_pair = truth["delta"].to_numpy().reshape(len(triples), len(labels.PATHOLOGIES))  # pair-major rows
    delta = [per_pair[p, labels.PATHOLOGIES.index(a)] for p, (_, a, _) in enumerate(triples)]
    rows = [
        pd.DataFrame(
            {
                "image": [batch.image_ids[i] for i, _, _ in triples],
                "pathology": [a for _, a, _ in triples],
                "method": "model",
                "metric": "delta_other",
                "value": delta,
            }
        )
    ]
    own_masks = np.stack([batch.masks[i, labels.PATHOLOGIES.index(a)] for i, a, _ in triples])
    explained = [(i, a) for i, a, _ in triples]
    for name in methods:
        rows.append(_shift_rows(run.explainer(name), model, sets[name], counterfactual, triples))
        rows.append(metrics.region_scores(sets[name], explained, footprints & ~own_masks, "leak"))
    return pd.concat(rows, ignore_index=True)


def _shift_rows(explainer, model, before: HeatmapSet, counterfactual, triples) -> pd.DataFrame:
    """:func:`helpers.metrics.map_shift` of each triple's A, explained on its counterfactual for A alone."""
    tables = []
    for a in labels.subset({a for _, a, _ in triples}):
        chosen = [p for p, (_, own, _) in enumerate(triples) if own == a]
        ids = [before.image_ids[triples[p][0]] for p in chosen]
        after = explainer.explain(model, counterfactual[chosen], [a], image_ids=ids)
        tables.append(metrics.map_shift(before, after, [(triples[p][0], q, a) for q, p in enumerate(chosen)]))
    return pd.concat(tables)


def train_twins(run: Run, progress: bool = True) -> dict[str, tuple[Run, nn.Module]]:
    """The clean and the shortcut twin of ``run`` (:meth:`helpers.run.Run.twin`): data prepared, model trained once
    (loaded afterwards). ``{"clean": (run, model), "shortcut": (run, model)}``."""
    twins = {}
    for kind in TWINS:
        twin = run.twin(shortcut=kind == "shortcut")
        twin.prepare(progress=progress)
        twins[kind] = (twin, twin.train(progress=progress)[0])
    return twins


def reliance(twins: dict[str, tuple[Run, nn.Module]], n_boot: int) -> pd.DataFrame:
    """Ground truth of each twin's reliance on the marker, measured on the shortcut twin's data (images with the
    marker) for the marker's pathology.

    Rows per model (``clean``, ``shortcut``): ``auroc_validation`` (the validation split, where the marker follows
    the label as in training), ``auroc_test`` (the test split, where it does not), ``auroc_test_marked`` and
    ``auroc_test_unmarked`` (test images with and without it), and ``marker_delta``: the mean change of the
    pathology's logit when the marker is rendered out of the test images that carry it (positive: the marker
    raised it). Each with a 95% CI over patients.
    """
    marked_run = twins["shortcut"][0]
    pathology = marked_run.profile.shortcut.pathology
    prepared = marked_run.data()
    rows = []
    renders = _marker_renders(marked_run)  # the same marked images, rendered once for both twins
    for kind, (twin, model) in twins.items():
        meta = twin.model()[1]
        for split in ("validation", "test"):
            rows += _split_aurocs(
                model,
                meta,
                prepared,
                "val" if split == "validation" else split,
                split,
                pathology,
                marked_run,
                n_boot,
                kind,
            )
        rows.append(_marker_delta(renders, model, pathology, n_boot, kind))
    return pd.DataFrame(rows)


def _split_aurocs(model, meta, prepared, split, label, pathology, marked_run, n_boot, kind) -> list[dict]:
    """AUROC of ``pathology`` on one split, overall and (test) with and without the marker; over the labels the
    twin's uncertainty policy scores (under u-ignore, uncertain ones are left out, as notebook 02 scores a model)."""

    frame = prepared.split(split)
    k = labels.PATHOLOGIES.index(pathology)
    dataset = prepared.dataset(split, meta["policy"], meta["mean"], meta["std"])
    probs = evaluate.predict(model, dataset)[:, k]
    truth, scored = dataset.targets[:, k] == 1, dataset.loss_mask[:, k] > 0
    patients = data.patient_ids(frame).to_numpy()
    marked = marked_run.replay().marker_present(frame["image_id"].tolist())
    subsets = {f"auroc_{label}": scored}
    if label == "test":
        subsets |= {"auroc_test_marked": marked & scored, "auroc_test_unmarked": ~marked & scored}
    rows = []
    for metric, chosen in subsets.items():
        value, low, high = metrics.auroc_with_ci(truth[chosen], probs[chosen], patients[chosen], n_boot)
        rows.append(
            {"model": kind, "metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": int(chosen.sum())}
        )
    return rows


def _marker_renders(marked_run: Run) -> tuple[ExplainedBatch, torch.Tensor, list[tuple[int, str]]]:
    """Every marked test image, the same images rendered without the marker, and the (image, "marker") removals."""
    test = marked_run.data().split("test")
    rows = np.flatnonzero(marked_run.replay().marker_present(test["image_id"].tolist()))
    batch = marked_run.test_batch(rows)
    removals = [(i, "marker") for i in range(len(batch))]
    counterfactual, _ = marked_run.counterfactual_renders(removals, batch)
    return batch, counterfactual, removals


def _marker_delta(renders: tuple, model: nn.Module, pathology: str, n_boot: int, kind: str) -> dict:
    """Mean change of ``pathology``'s logit when the marker is rendered out of every marked test image
    (``renders`` from :func:`_marker_renders`)."""
    batch, counterfactual, removals = renders
    truth = metrics.logit_changes(model, batch.inputs, counterfactual, removals, batch.image_ids)
    delta = truth[truth["pathology"] == pathology]["delta"].to_numpy()
    low, high = metrics.bootstrap_ci(delta, n_boot, clusters=batch.patients)
    return {
        "model": kind,
        "metric": "marker_delta",
        "value": delta.mean(),
        "ci_low": low,
        "ci_high": high,
        "n": len(delta),
    }


def shortcut_maps(
    twins: dict[str, tuple[Run, nn.Module]], batch: ExplainedBatch, methods: Sequence[str], pathologies: Sequence[str]
) -> dict[str, dict[str, HeatmapSet]]:
    """``{model kind: {method: HeatmapSet}}``: every method's maps of ``batch`` (the shortcut twin's marked test
    images) under each twin's model, for ``pathologies``; each twin's own explainer set-up (its prior)."""
    return {
        kind: {
            name: twin.explainer(name).explain(model, batch.inputs, pathologies, image_ids=batch.image_ids)
            for name in methods
        }
        for kind, (twin, model) in twins.items()
    }


def shortcut_scores(
    maps: dict[str, dict[str, HeatmapSet]], batch: ExplainedBatch, marker_masks: np.ndarray, pathology: str
) -> pd.DataFrame:
    """Each map of ``pathology`` against the marker (``marker_mass``, ``_max``, ``_rank``) and, on images where the
    finding is present, against the finding's mask less the marker's pixels (``finding_mass``, ...); a ``model``
    column says whose map.

    The token can lie over part of an apical pneumothorax: those pixels show the token, not the finding, and are
    left out of the finding's region, so that relevance on the marker never counts for the finding too.
    """
    k = labels.PATHOLOGIES.index(pathology)
    targets = [(i, pathology) for i in range(len(batch))]
    finding_regions = batch.masks[:, k] & ~marker_masks
    positive = [i for i in range(len(batch)) if finding_regions[i].any()]
    tables = []
    for kind, sets in maps.items():
        for heatmaps in sets.values():
            marker = metrics.region_scores(heatmaps, targets, marker_masks, "marker")
            finding = metrics.region_scores(
                heatmaps, [targets[i] for i in positive], finding_regions[positive], "finding"
            )
            tables.append(pd.concat([marker, finding]).assign(model=kind))
    return pd.concat(tables, ignore_index=True)


#: The shortcut experiment's metrics in its results table.
SHORTCUT_METRICS = ["marker_mass", "marker_max", "marker_rank", "finding_mass"]


def shortcut_table(summary: pd.DataFrame, detection: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The results table: per method and model, the pooled means with 95% CIs of :data:`SHORTCUT_METRICS`, and the
    method's detection AUROC (the same on both of its rows)."""
    tables = [
        metrics.results_table(summary[summary["model"] == kind], methods, SHORTCUT_METRICS).assign(model=kind)
        for kind in TWINS
    ]
    table = pd.concat(tables).sort_values("method", key=lambda m: m.map(list(methods).index), kind="stable")
    auroc = detection.set_index("method")
    table["detection_auroc"] = [
        f"{auroc.at[m, 'auroc']:.3f} [{auroc.at[m, 'ci_low']:.3f}, {auroc.at[m, 'ci_high']:.3f}]"
        for m in table["method"]
    ]
    return table[["method", "model", *SHORTCUT_METRICS, "detection_auroc"]].reset_index(drop=True)

"""Notebook 05's comparison, step by step: the computations it narrates, so that the notebook and the GPU
benchmark (``benchmarks/bench_gpu.py``) run the same code.

Each step takes a :class:`~helpers.run.Run` and its explained batch and returns a tidy table
(``image, pathology, method, metric, value``) or a dict of HeatmapSets. Steps that need what only some data
have (the finding prior needs training masks, the counterfactual renders a phantom) say so and leave their
rows out on other data, so the paper profile on real CheXpert runs the notebook top to bottom.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from joblib import Parallel, delayed
from torch import nn

from helpers import metrics
from helpers.heatmaps import HeatmapSet
from helpers.run import ExplainedBatch, Run

__all__ = [
    "GRADIENT_METHODS",
    "GRANULARITY_METRICS",
    "LOCALISATION_METRICS",
    "available_baselines",
    "compare_methods",
    "granularity_challengers",
    "counterfactual_faithfulness",
    "reference_method",
    "sanity_checks",
    "score_methods",
    "stratified_summary",
]


#: The metrics every method is compared on with the reference map (the prior), in notebook 05 and across seeds.
LOCALISATION_METRICS = [
    "hit",
    "iou",
    "mass_accuracy",
    "rank_accuracy",
    "pixel_auroc",
    "cf_deletion_auc",
    "cf_insertion_auc",
]
#: The metrics LRP and the gradient family are compared on with Grad-CAM at each layer (one Holm family).
GRANULARITY_METRICS = ["resolution_gap", "boundary_f1", "separation", "resolution_px", "gini"]
#: The gradient family of notebook 05 (zennit's attributors).
GRADIENT_METHODS = ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients"]


def granularity_challengers(methods: Sequence[str]) -> list[str]:
    """The methods compared with Grad-CAM on granularity: every LRP composite and the gradient family."""
    return [m for m in methods if m.startswith("lrp_") or m in GRADIENT_METHODS]


def available_baselines(run: Run, names: Sequence[str]) -> list[str]:
    """``names`` less the baselines this run's data cannot make, each dropped with a printed reason.

    The finding prior is the mean training mask: real CheXpert with CheXlocalize has masks only for test
    images, which the prior must not see.
    """
    kept = list(names)
    if "prior" in kept:
        try:
            run.finding_prior()
        except FileNotFoundError as error:
            kept.remove("prior")
            print(f"Baseline 'prior' left out: {error}")
    return kept


def compare_methods(
    scores: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metric_names: Sequence[str],
    n_boot: int,
    patients: dict,
) -> pd.DataFrame:
    """:func:`helpers.metrics.compare` with :func:`helpers.metrics.outcome` for the ``pairs`` whose two methods
    both have scores of ``metric_names``; the others are named in a printed line (without masks, as real CheXpert
    without CheXlocalize, nothing is localised; without counterfactual renders nothing is faithful). Empty when
    no pair is left."""
    scored = set(scores.loc[scores["metric"].isin(metric_names), "method"])
    kept = [(a, b) for a, b in pairs if a in scored and b in scored]
    if len(kept) < len(pairs):
        left_out = sorted({m for pair in pairs for m in pair} - scored)
        print(f"Not compared on {', '.join(metric_names)}: no such scores for {', '.join(left_out)} on this data.")
    return metrics.outcome(metrics.compare(scores, kept, metric_names, n_boot, patients=patients))


def reference_method(methods: Sequence[str]) -> str:
    """The model-free map every method is compared with: the finding prior where it exists, else random."""
    return "prior" if "prior" in methods else "random"


def score_methods(
    sets: dict[str, HeatmapSet], batch: ExplainedBatch, n_jobs: int | None = None, multi_finding: bool = True
) -> pd.DataFrame:
    """:func:`helpers.metrics.score` of every method, on ``n_jobs`` processes (default: every core), plus the
    ``hit_multi`` rows of images with several findings.

    The methods are independent and their scores are numpy and scipy work on the CPU, so they run side by side
    (joblib; the maps and masks travel as shared memory maps); the rows come back in ``sets`` order.
    """
    tables = Parallel(n_jobs=n_jobs or -1)(
        delayed(metrics.score)(heatmaps, batch.masks, codes=batch.codes) for heatmaps in sets.values()
    )
    scores = pd.concat(tables, ignore_index=True)
    if multi_finding:
        multi = metrics.multi_finding_rows(scores, batch.codes, batch.image_ids)
        scores = pd.concat([scores, multi], ignore_index=True)
    return scores


def counterfactual_faithfulness(
    run: Run,
    model: nn.Module,
    sets: dict[str, HeatmapSet],
    methods: Sequence[str],
    n_pairs: int,
    steps: int,
) -> pd.DataFrame:
    """Deletion and insertion toward the counterfactual image without the finding
    (:func:`helpers.metrics.counterfactual_perturbation_scores`) for ``n_pairs`` balanced pairs of the explained
    batch; no rows (and a printed reason) where the data is not a phantom and so has no counterfactual."""
    if not run.has_counterfactuals():
        print(f"Counterfactual faithfulness left out: {run.data_root} is not a chexplain phantom.")
        return pd.DataFrame(columns=metrics.COLUMNS)
    batch = run.explained()
    pairs = batch.balanced_pairs(n_pairs, seed=run.profile.seed)
    counterfactual = run.counterfactuals(pairs)
    scored = [sets[m] for m in methods if m in sets]
    return metrics.counterfactual_perturbation_scores(model, batch.inputs, counterfactual, scored, pairs, steps=steps)


def sanity_checks(
    run: Run,
    model: nn.Module,
    methods: Sequence[str],
    n_images: int,
    shuffled_epochs: int,
    shuffled_images: int | None = None,
    n_jobs: int = -1,
) -> pd.DataFrame:
    """Adebayo et al.'s checks on the first ``n_images`` explained images: model randomisation, cascading and
    independent, and data randomisation against a model trained ``shuffled_epochs`` on permuted labels of at most
    ``shuffled_images`` training images (:meth:`Run.shuffled_label_model`).

    Every method's maps are made first (on the model's device), then the similarities of every method, stage
    and pair are computed at once on ``n_jobs`` processes (default: every core). Returns the similarity rows of
    :func:`helpers.metrics.model_randomisation` and :func:`helpers.metrics.data_randomisation` (decide with
    :func:`helpers.metrics.sanity_outcome`), method by method.
    """
    checked = run.explained().head(n_images)
    shuffled, _ = run.shuffled_label_model(shuffled_epochs, shuffled_images)
    pairs, inputs, ids = checked.pairs(), checked.inputs, checked.image_ids
    used = [run.explainer(name) for name in methods]
    # the compared maps only; the trained model's once, for both randomisation modes and the data randomisation
    trained = [explainer.explain_pairs(model, inputs, pairs, image_ids=ids) for explainer in used]
    compared, first_stage = [{} for _ in used], None
    for mode in metrics.RANDOMISATION_MODES:  # each randomised model made once, for every method
        explained = metrics.randomised_maps(model, inputs, used, pairs, ids, mode=mode, first_stage=first_stage)
        for maps, stages in zip(compared, explained):
            maps.update(stages)
        if first_stage is None:  # the first mode's first stage: the same model in the other mode
            first_stage = [next(iter(stages.values())) for stages in explained]
    for explainer, maps in zip(used, compared):
        maps[metrics.SHUFFLED_LABELS] = explainer.explain_pairs(shuffled, inputs, pairs, image_ids=ids)
    return metrics.similarity_table(list(zip(trained, compared)), pairs, n_jobs=n_jobs)


def stratified_summary(
    batch: ExplainedBatch, reference: HeatmapSet, scores: pd.DataFrame, n_boot: int, patients: dict
) -> pd.DataFrame:
    """Summaries by stratum, per pathology and pooled (pathology ``"all"``): the prediction of ``reference``'s model
    (true positive or false negative) and the mask-size tercile (:func:`helpers.metrics.strata`)."""
    strata = metrics.strata(batch.image_ids, reference.probs, batch.masks, batch.codes, reference.pathologies)
    strata = strata.melt(["image", "pathology"], ["prediction", "mask_size"], var_name="stratum", value_name="level")
    stratified = scores.merge(strata, on=["image", "pathology"])
    return metrics.summarise(stratified, n_boot, patients=patients, by=["stratum", "level"], n_jobs=-1)

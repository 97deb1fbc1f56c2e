"""Does the map depend on the model and on the data? The sanity checks of Adebayo et al. (2018), sign-aware.

Model randomisation re-initialises the model's layers, either from the top cumulatively (``cascading``) or one
stage at a time in a fresh copy of the trained model (``independent``); data randomisation compares the maps of
the trained model with those of a model trained on shuffled labels. Each compares maps with every similarity in
:data:`SIMILARITIES`: Spearman on the signed maps and on ``|R|`` (a map that only flips sign with the logit is
unchanged in ``|R|``), SSIM, and the Pearson correlation of HOG descriptors. :func:`sanity_outcome` turns those
scores into a structured verdict per method, mode, stage and similarity.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from torch import nn

from helpers.explainers import Explainer
from helpers.heatmaps import HeatmapSet
from helpers.metrics.base import COLUMNS
from helpers.metrics.similarity import (  # noqa: F401  (re-exported: the checks' similarities)
    HOG_PARAMS,
    SIMILARITIES,
    hog_similarity,
    pair_similarities,
    rank_correlation,
    spearman,
    spearman_abs,
    ssim,
    ssim_abs,
)

#: How :func:`model_randomisation` re-initialises the stages.
MODES = ("cascading", "independent")
#: The metric prefix of :func:`data_randomisation`'s rows (the model trained on shuffled labels).
SHUFFLED_LABELS = "data:shuffled_labels"
#: The similarity whose mean decides :func:`sanity_outcome`'s ``passes`` for each reported similarity.
DECIDED_BY = {
    "spearman": "spearman_abs",
    "spearman_abs": "spearman_abs",
    "ssim": "ssim_abs",
    "ssim_abs": "ssim_abs",
    "hog": "hog",
}


def model_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    explainer: Explainer,
    pairs: Sequence[tuple[int, str]],
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
    *,
    mode: str = "cascading",
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
    n_jobs: int = 1,
    trained: HeatmapSet | None = None,
) -> pd.DataFrame:
    """Model parameter randomisation test (Adebayo et al. 2018): re-initialise layers and compare the maps.

    Parameters
    ----------
    model : nn.Module
        The trained model. It is never modified: randomisation happens in deep copies.
    inputs : tensor
        The explained images.
    explainer : Explainer
        Explains the maps of ``pairs`` (:meth:`~helpers.explainers.Explainer.explain_pairs`) with the trained
        model and once per stage with the randomised model.
    pairs : sequence of (image index, pathology)
        The maps to compare.
    image_ids : sequence of str, optional
        Ids of ``inputs``, reported in the ``image`` column.
    seed : int
        Stage ``s`` re-initialises under ``torch.manual_seed(seed + s)``.
    mode : {"cascading", "independent"}
        ``cascading``: the stages are re-initialised in order, cumulatively (stage ``s`` compares a model whose
        stages ``0..s`` are random). ``independent``: stage ``s`` compares a fresh copy of the trained model in
        which only stage ``s`` is re-initialised. BatchNorm layers keep their parameters and statistics.
    stages : sequence of (stage name, module names), optional
        Module groups from the output down (names as in ``model.named_modules()``); default the model's own
        ``randomisation_stages()``.
    n_jobs : int
        Processes computing the similarities (joblib; -1: every core). Every stage is explained first, on the
        model's device; the similarities (HOG and SSIM of every pair) are CPU work that a GPU would wait on.
    trained : HeatmapSet, optional
        The trained model's maps of ``inputs`` holding at least the maps of ``pairs``, when the caller already has
        them (both modes compare against the same maps); explained here otherwise.

    Returns
    -------
    DataFrame
        Columns :data:`~helpers.metrics.base.COLUMNS`; per pair, stage and similarity one row with metric
        ``f"{mode}:{stage}:{similarity}"`` (similarities of :data:`SIMILARITIES`) and value the similarity of
        the trained model's map (first argument) and the randomised model's map.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    stages = _checked_stages(model, stages)  # before any explanation
    if trained is None:
        trained = explainer.explain_pairs(model, inputs, pairs, image_ids=image_ids)
    (explained,) = randomised_maps(model, inputs, [explainer], pairs, image_ids, seed, mode=mode, stages=stages)
    return similarity_table([(trained, explained)], pairs, n_jobs=n_jobs)


def randomised_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    explainers: Sequence[Explainer],
    pairs: Sequence[tuple[int, str]],
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
    *,
    mode: str = "cascading",
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
    first_stage: Sequence[HeatmapSet] | None = None,
) -> list[dict[str, HeatmapSet]]:
    """Per explainer, the maps of ``pairs`` (:meth:`~helpers.explainers.Explainer.explain_pairs`) of
    :func:`model_randomisation`'s randomised models, keyed ``f"{mode}:{stage}"`` in stage order.

    Each randomised model is made once and explained by every explainer (one copy and re-initialisation per
    stage, whatever the number of explainers). ``first_stage``, per explainer, are the first stage's maps when the
    caller has them from the other mode: in both modes the first stage is the same model (the trained one with
    only that stage re-initialised, under ``seed``), so it is not explained again. Other parameters as in
    :func:`model_randomisation`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if first_stage is not None and len(first_stage) != len(explainers):
        raise ValueError(f"first_stage holds {len(first_stage)} sets of maps for {len(explainers)} explainers.")
    maps: list[dict[str, HeatmapSet]] = [{} for _ in explainers]
    for s, (stage, randomised) in enumerate(_randomised_models(model, _checked_stages(model, stages), mode, seed)):
        for k, (explainer, explained) in enumerate(zip(explainers, maps)):
            if s == 0 and first_stage is not None:
                explained[f"{mode}:{stage}"] = first_stage[k]
            else:
                explained[f"{mode}:{stage}"] = explainer.explain_pairs(randomised, inputs, pairs, image_ids=image_ids)
    return maps


def similarity_table(
    comparisons: Sequence[tuple[HeatmapSet, Mapping[str, HeatmapSet]]],
    pairs: Sequence[tuple[int, str]],
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Every similarity of :data:`SIMILARITIES` between a reference map and the same pair's map in other sets.

    Parameters
    ----------
    comparisons : sequence of (reference, compared)
        Per comparison the reference set (e.g. the trained model's maps; its ``method`` fills the ``method``
        column) and a mapping from a metric prefix (e.g. ``"cascading:dense4"``) to a set of the same images
        and pathologies (e.g. a randomised model's maps).
    pairs : sequence of (image index, pathology)
        The maps to compare.
    n_jobs : int
        Processes (joblib; -1: every core). The work is split by comparison and pair, so each process gets one
        pair's maps only, and an explainer's comparisons of every stage and mode can run at once.

    Returns
    -------
    DataFrame
        Columns :data:`~helpers.metrics.base.COLUMNS`, metric ``f"{prefix}:{similarity}"``; comparison by
        comparison, then prefix by prefix, pair by pair.
    """
    tasks = [
        (reference, list(compared.items()), i, pathology)
        for reference, compared in comparisons
        for i, pathology in pairs
    ]
    values = Parallel(n_jobs=n_jobs)(
        delayed(pair_similarities)(
            _map_of(reference, i, pathology), [_map_of(maps, i, pathology) for _, maps in compared]
        )
        for reference, compared, i, pathology in tasks
    )
    rows, n_pairs = [], len(pairs)
    for c, (reference, compared) in enumerate(comparisons):
        for s, (prefix, _) in enumerate(compared.items()):
            for p, (i, pathology) in enumerate(pairs):
                rows += [
                    (reference.image_ids[i], pathology, reference.method, f"{prefix}:{name}", value)
                    for name, value in zip(SIMILARITIES, values[c * n_pairs + p][s])
                ]
    return pd.DataFrame(rows, columns=COLUMNS)


def cascading_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    explainer: Explainer,
    pairs: Sequence[tuple[int, str]],
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
    *,
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> pd.DataFrame:
    """:func:`model_randomisation` with ``mode="cascading"``: layers re-initialised from the top, cumulatively."""
    return model_randomisation(model, inputs, explainer, pairs, image_ids, seed, mode="cascading", stages=stages)


def data_randomisation(trained: HeatmapSet, other: HeatmapSet, pairs: Sequence[tuple[int, str]]) -> pd.DataFrame:
    """Data randomisation test (Adebayo et al. 2018): the trained model's maps against another model's.

    Parameters
    ----------
    trained : HeatmapSet
        Maps of the model trained on the true labels; its ``method`` fills the ``method`` column.
    other : HeatmapSet
        Maps of the same images and pathologies by the same method, from a model trained on shuffled labels.
    pairs : sequence of (image index, pathology)
        The maps to compare.

    Returns
    -------
    DataFrame
        Columns :data:`~helpers.metrics.base.COLUMNS`; per pair and similarity one row with metric
        ``f"data:shuffled_labels:{similarity}"``.

    Raises
    ------
    ValueError
        If the two sets differ in image ids, pathologies or map size (the message names which).
    """
    differences = [
        f"{name}: {getattr(trained, name)} vs {getattr(other, name)}"
        for name in ("image_ids", "pathologies")
        if getattr(trained, name) != getattr(other, name)
    ]
    if trained.maps.shape[2:] != other.maps.shape[2:]:
        differences.append(f"map size: {trained.maps.shape[2:]} vs {other.maps.shape[2:]}")
    if differences:
        raise ValueError(f"Data randomisation needs maps of the same images; the sets differ in {differences}.")
    return similarity_table([(trained, {SHUFFLED_LABELS: other})], pairs)


def sanity_outcome(sanity_scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per method, mode, stage and similarity: the mean similarity, its spread, and whether the method passes.

    A method passes where the maps changed: ``passes = mean(DECIDED_BY[similarity]) < threshold``, the mean
    over pairs of the same method, mode and stage. For ``spearman`` and ``spearman_abs`` the deciding similarity
    is ``spearman_abs``, so a map that only flips sign (signed Spearman -1, ``spearman_abs`` +1) fails; for
    ``ssim`` and ``ssim_abs`` it is ``ssim_abs`` (a sign flip lowers ``ssim`` as a change of the map does); ``hog``
    decides for itself (unsigned orientations: blind to a sign flip). ``passes`` is False where the deciding mean
    is NaN.

    Parameters
    ----------
    sanity_scores : DataFrame
        Rows of :func:`model_randomisation` and :func:`data_randomisation` (other metrics are ignored).
    threshold : float
        A mean similarity below it counts as changed.

    Returns
    -------
    DataFrame
        Columns ``method, mode, stage, similarity, mean, std, n, decided_by, passes``: ``std`` the standard
        deviation over pairs (``ddof=1``), ``n`` the number of finite values.
    """
    keys = ["method", "mode", "stage", "similarity"]
    summary = _parsed(sanity_scores).groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    summary = summary.rename(columns={"count": "n"}).assign(decided_by=lambda t: t["similarity"].map(DECIDED_BY))
    deciding = summary[[*keys, "mean"]].rename(columns={"similarity": "decided_by", "mean": "deciding_mean"})
    summary = summary.merge(deciding, on=[*keys[:3], "decided_by"], how="left")
    return summary.assign(passes=summary["deciding_mean"] < threshold).drop(columns="deciding_mean")


def _parsed(scores: pd.DataFrame) -> pd.DataFrame:
    """Sanity rows only, with ``mode, stage, similarity`` split out of ``metric``."""
    modes, similarities = "|".join([*MODES, "data"]), "|".join(SIMILARITIES)
    parts = scores["metric"].str.extract(rf"^(?P<mode>{modes}):(?P<stage>.+):(?P<similarity>{similarities})$")
    return pd.concat([scores, parts], axis=1).dropna(subset=["similarity"])


def _checked_stages(model: nn.Module, stages) -> list[tuple[str, list[str]]]:
    stages = model.randomisation_stages() if stages is None else stages
    known = dict(model.named_modules())
    unknown = [name for _, names in stages for name in names if name not in known]
    if unknown:
        raise ValueError(f"Randomisation stages name modules that {type(model).__name__} does not have: {unknown}.")
    return [(stage, list(names)) for stage, names in stages]


def _randomised_models(model: nn.Module, stages, mode: str, seed: int) -> Iterator[tuple[str, nn.Module]]:
    """Per stage, the randomised model to explain; cascading reuses one copy, independent starts afresh.

    The new weights are drawn on the CPU, from a generator forked off the global one (which is left as it was), and
    then copied to the model's device: the same seed gives the same randomised model on every device, as the
    gradient family's noise is drawn on the CPU for the same reason.
    """
    randomised = copy.deepcopy(model)
    for s, (stage, names) in enumerate(stages):
        if mode == "independent" and s > 0:
            randomised = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + s)
            for name in names:
                _reset_on_cpu(randomised.get_submodule(name))
        yield stage, randomised


def _reset_on_cpu(module: nn.Module) -> None:
    """:func:`_reset_parameters` on a CPU copy of ``module``, the result copied into ``module`` where it is."""
    fresh = copy.deepcopy(module).cpu()
    _reset_parameters(fresh)
    with torch.no_grad():
        module.load_state_dict(fresh.state_dict())


def _map_of(heatmaps: HeatmapSet, i: int, pathology: str) -> np.ndarray:
    return heatmaps.maps[i, heatmaps.pathologies.index(pathology)]


def _reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that can be; BatchNorm layers keep their trained parameters and statistics."""
    for submodule in module.modules():
        if hasattr(submodule, "reset_parameters") and not isinstance(submodule, nn.BatchNorm2d):
            submodule.reset_parameters()

"""Statistics a reviewer accepts: patient-clustered bootstrap, paired tests with Holm, seeds; outcomes that flip."""

import numpy as np
import pandas as pd
import pytest

from helpers import metrics


def _scores(per_method: dict[str, np.ndarray], metric: str = "hit", pathology: str = "Edema") -> pd.DataFrame:
    rows = [
        (f"i{i}", pathology, method, metric, float(v))
        for method, values in per_method.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=metrics.COLUMNS)


def test_clustered_bootstrap_is_wider_when_a_patients_images_agree():
    """Ten images per patient with one value each: 5 independent observations, not 50."""
    patient_values = np.random.default_rng(0).normal(0, 1, 5)
    values = np.repeat(patient_values, 10)
    patients = np.repeat([f"p{k}" for k in range(5)], 10)
    low_i, high_i = metrics.bootstrap_ci(values, n_boot=2000)
    low_p, high_p = metrics.bootstrap_ci(values, n_boot=2000, clusters=patients)
    assert (high_p - low_p) > 2.5 * (high_i - low_i)  # about sqrt(10) wider
    assert np.isnan(metrics.bootstrap_ci(values, clusters=["one"] * 50)[0])  # one patient: no CI


def test_summarise_counts_patients_and_resamples_them():
    scores = _scores({"a": np.repeat([0.0, 1.0, 0.0, 1.0], 5)})
    patients = {f"i{i}": f"p{i // 5}" for i in range(20)}
    summary = metrics.summarise(scores, n_boot=200, patients=patients).set_index("pathology")
    assert summary.loc["Edema", "n"] == 20 and summary.loc["Edema", "n_patients"] == 4
    image_level = metrics.summarise(scores, n_boot=200).set_index("pathology")
    width = lambda s: s.loc["Edema", "ci_high"] - s.loc["Edema", "ci_low"]
    assert width(summary) > width(image_level)


def test_compare_reports_holm_corrected_paired_tests_and_outcomes():
    rng = np.random.default_rng(1)
    prior = rng.random(40)
    scores = _scores({"prior": prior, "better": prior + 0.2 + 0.01 * rng.random(40), "same": prior + 0.0})
    scores = pd.concat([scores, _scores({"noise": prior + rng.normal(0, 0.05, 40)})])
    table = metrics.compare(scores, [("better", "prior"), ("same", "prior"), ("noise", "prior")], ["hit"], n_boot=200)
    table = metrics.outcome(table).set_index("a")
    assert table.loc["better", "outcome"] == 1 and table.loc["better", "p_holm"] < 1e-6
    assert table.loc["same", "outcome"] == 0 and table.loc["same", "p_value"] == 1.0  # does not beat the prior
    assert table.loc["noise", "outcome"] == 0
    assert (table["p_holm"] >= table["p_value"]).all()
    assert table["p_holm"].min() == pytest.approx(min(1.0, 3 * table["p_value"].min()))


def test_paired_tests_count_patients_not_images_and_refuse_unmapped_images_and_repeated_scores():
    """Ten images per patient, a difference that differs by patient: 40 images look decisive, 4 patients cannot be
    (the smallest two-sided signed-rank p-value with 4 pairs is 0.125)."""
    rng = np.random.default_rng(2)
    base = rng.random(40)
    shift = np.repeat([0.3, 0.1, 0.2, 0.25], 10) + rng.normal(0, 0.01, 40)
    scores = _scores({"a": base + shift, "b": base})
    patients = {f"i{i}": f"p{i // 10}" for i in range(40)}
    by_image = metrics.paired_differences(scores, "a", "b", n_boot=200).set_index("pathology")
    by_patient = metrics.paired_differences(scores, "a", "b", n_boot=200, patients=patients).set_index("pathology")
    assert by_image.loc["Edema", "p_value"] < 1e-6 and by_patient.loc["Edema", "p_value"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match=r"no entry for 10 scored images \(e.g. \['i30', 'i31', 'i32'\]\)"):
        metrics.paired_differences(scores, "a", "b", n_boot=10, patients={f"i{i}": "p" for i in range(30)})
    with pytest.raises(ValueError, match="80 score rows share"):  # each repeated row and its original
        metrics.paired_differences(pd.concat([scores, _scores({"a": base})]), "a", "b", n_boot=10)


def test_no_verdict_when_the_ranks_lean_against_the_mean():
    """40 patients a little worse under a, 8 much better: the mean (and its CI) says a is better, the signed ranks
    say most patients are worse. Tested two-sided, the ranks' own significance (p = 0.01) made the table read
    "a better"; toward the mean they are not significant at all."""
    difference = np.r_[np.full(40, -0.01), np.full(8, 1.0)]
    scores = _scores({"a": 0.5 + difference / 2, "b": np.full(48, 0.5)})
    row = metrics.outcome(metrics.compare(scores, [("a", "b")], ["hit"], n_boot=2000)).iloc[0]
    assert row["ci_low"] > 0 and row["mean_difference"] > 0  # the CI alone would call it
    assert row["p_value"] == 1.0 and row["outcome"] == 0
    flipped = _scores({"a": 0.5 - difference / 2, "b": np.full(48, 0.5)})  # the same, mirrored: also no verdict
    assert metrics.outcome(metrics.compare(flipped, [("a", "b")], ["hit"], n_boot=2000)).iloc[0]["outcome"] == 0


def test_where_ranks_and_mean_agree_the_p_value_is_the_two_sided_one():
    from scipy import stats

    rng = np.random.default_rng(4)
    prior = rng.random(30)
    difference = rng.normal(-0.1, 0.2, 30)
    table = metrics.compare(_scores({"a": prior + difference, "b": prior}), [("a", "b")], ["hit"], n_boot=100)
    expected = stats.wilcoxon(difference, zero_method="zsplit").pvalue
    assert table["p_value"].item() == pytest.approx(expected, rel=1e-9)


def test_descriptive_metrics_do_not_weaken_the_holm_correction_of_verdicts():
    """gini and resolution_px have no better direction, so no verdict: adding them leaves the verdicts' p_holm."""
    rng = np.random.default_rng(5)
    base = rng.random(30)
    scores = pd.concat(
        _scores({"a": base + rng.normal(0.05, 0.1, 30), "b": base}, metric=name)
        for name in ("boundary_f1", "gini", "resolution_px")
    )
    alone = metrics.compare(scores, [("a", "b")], ["boundary_f1"], n_boot=100).set_index("metric")
    with_descriptive = metrics.compare(scores, [("a", "b")], ["boundary_f1", "gini", "resolution_px"], n_boot=100)
    with_descriptive = with_descriptive.set_index("metric")
    assert with_descriptive.loc["boundary_f1", "p_holm"] == alone.loc["boundary_f1", "p_holm"]
    descriptive = with_descriptive.loc[["gini", "resolution_px"]]  # corrected among themselves
    assert descriptive["p_holm"].tolist() == pytest.approx(metrics.holm(descriptive["p_value"].to_numpy()).tolist())


def test_outcome_follows_the_metric_direction():
    prior = np.linspace(0.1, 0.9, 30)
    scores = pd.concat(
        [
            _scores({"prior": prior, "m": prior + 0.1}, metric="deletion_auc"),  # higher deletion AUC is worse
            _scores({"prior": prior, "m": prior + 0.1}, metric="hit"),
        ]
    )
    table = metrics.outcome(metrics.compare(scores, [("m", "prior")], ["deletion_auc", "hit"], n_boot=200))
    assert table.set_index("metric")["outcome"].to_dict() == {"deletion_auc": -1, "hit": 1}


def test_against_reference_keeps_one_row_per_pair_of_methods():
    """Challengers against several references (the granularity comparison): no pair's cells overwrite another's."""
    prior = np.linspace(0.1, 0.9, 30)
    scores = _scores({"prior": prior, "edge": prior - 0.2, "m": prior + 0.1}, metric="hit")
    table = metrics.outcome(metrics.compare(scores, [("m", "prior"), ("m", "edge")], ["hit"], n_boot=200))
    wide = metrics.against_reference(table, ["hit"], digits=2)
    assert wide[["method", "versus"]].values.tolist() == [["m", "prior"], ["m", "edge"]]
    assert wide["hit"].str.startswith(("+0.10", "+0.30")).tolist() == [True, True]
    assert wide.set_index("versus")["hit"]["edge"].startswith("+0.30")
    only = metrics.against_reference(table, ["hit"], reference="prior")
    assert only[["method", "versus"]].values.tolist() == [["m", "prior"]]


def test_a_difference_holds_across_seeds_only_if_every_seed_agrees():
    def comparison(difference, outcome):
        row = {"a": "m", "b": "prior", "metric": "hit", "pathology": "all", "mean_difference": difference}
        return pd.DataFrame([{**row, "p_holm": 0.01, "outcome": outcome}])

    agreeing = {0: comparison(0.1, 1), 1: comparison(0.12, 1), 2: comparison(0.08, 1)}
    assert metrics.holds_across_seeds(agreeing)["holds"].item() == 1
    reversed_once = {**agreeing, 2: comparison(-0.05, -1)}
    assert metrics.holds_across_seeds(reversed_once)["holds"].item() == 0
    weak_once = {**agreeing, 2: comparison(0.08, 0)}
    assert metrics.holds_across_seeds(weak_once)["holds"].item() == 0
    missing_once = {**agreeing, 2: comparison(0.08, 1).iloc[:0]}  # a seed run without this method
    assert metrics.holds_across_seeds(missing_once)["holds"].item() == 0
    worse_everywhere = {k: comparison(-0.1, -1) for k in range(3)}
    assert metrics.holds_across_seeds(worse_everywhere)["holds"].item() == -1
    twice_in_one_seed = {0: pd.concat([comparison(0.1, 1)] * 2), 1: agreeing[1], 2: comparison(0.08, 1).iloc[:0]}
    with pytest.raises(ValueError, match="within one seed"):  # seed 0 twice is not two seeds
        metrics.holds_across_seeds(twice_in_one_seed)


def test_across_seeds_reports_the_spread():
    tables = {
        s: pd.DataFrame({"method": ["a"], "metric": ["hit"], "mean": [v]}) for s, v in ((0, 0.4), (1, 0.5), (2, 0.6))
    }
    row = metrics.across_seeds(tables, ["method", "metric"]).iloc[0]
    assert row["seed_mean"] == pytest.approx(0.5) and row["seed_sd"] == pytest.approx(0.1)
    assert (row["seed_min"], row["seed_max"], row["n_seeds"]) == (0.4, 0.6, 3)
    assert row["seed_1"] == 0.5
    per_pathology = {
        s: pd.DataFrame({"method": ["a", "a"], "metric": ["hit"] * 2, "pathology": ["Edema", "all"], "mean": [v, v]})
        for s, v in ((0, 0.4), (1, 0.5), (2, 0.6))
    }
    with pytest.raises(ValueError, match="within one seed"):  # six rows are three seeds of two pathologies
        metrics.across_seeds(per_pathology, ["method", "metric"])
    assert metrics.across_seeds(per_pathology, ["method", "metric", "pathology"])["n_seeds"].tolist() == [3, 3]


def test_results_table_has_no_published_anchor_rows():
    summary = metrics.summarise(_scores({"a": np.linspace(0, 1, 10)}), n_boot=50)
    table = metrics.results_table(summary, ["a"], ["hit"])
    assert table["method"].tolist() == ["a"] and table.loc[0, "hit"].startswith("0.500 [")


def test_strata_give_the_verdict_and_the_mask_size_tercile_of_each_positive_pair():
    from helpers import labels

    edema = labels.PATHOLOGIES.index("Edema")
    n = 6
    codes = np.zeros((n, 14))
    codes[:, edema] = 1
    codes[5, edema] = 0  # a negative image: no stratum
    masks = np.zeros((n, 14, 10, 10), bool)
    for i in range(n):
        masks[i, edema, : i + 1] = True  # areas 10%, 20%, ... 60% of the image
    probs = np.linspace(0.2, 0.8, n)[:, None]  # the model's probability of Edema, the set's one column
    table = metrics.strata([f"i{i}" for i in range(n)], probs, masks, codes, ["Edema"])
    assert table["image"].tolist() == ["i0", "i1", "i2", "i3", "i4"]
    assert table["prediction"].tolist() == ["false negative"] * 3 + ["true positive"] * 2  # p >= 0.5 from i3 (0.56)
    assert table["mask_size"].tolist() == ["small", "small", "medium", "large", "large"]
    few = metrics.strata(["i0", "i1"], probs[:2], masks[:2], codes[:2], ["Edema"])
    assert len(few) == 2 and few["mask_size"].isna().all()  # two pairs make no terciles
    assert metrics.strata([], probs[:0], masks[:0], codes[:0], ["Edema"]).empty


def test_strata_put_equal_mask_areas_in_one_tercile():
    from helpers import labels

    edema = labels.PATHOLOGIES.index("Edema")
    rows = [1, 2, 2, 2, 3, 4]  # mask heights: three equal areas straddle the first tercile's edge
    codes = np.zeros((len(rows), 14))
    codes[:, edema] = 1
    masks = np.zeros((len(rows), 14, 10, 10), bool)
    for i, height in enumerate(rows):
        masks[i, edema, :height] = True
    probs = np.full((len(rows), 1), 0.9)
    table = metrics.strata([f"i{i}" for i in range(len(rows))], probs, masks, codes, ["Edema"])
    # by row order the equal areas were split small, small | medium; their average rank (3) is a medium one
    assert table["mask_size"].tolist() == ["small", "medium", "medium", "medium", "large", "large"]
    # pairs in another order: the same areas, the same terciles
    order = [3, 0, 5, 2, 4, 1]
    shuffled = metrics.strata([f"i{i}" for i in order], probs[order], masks[order], codes[order], ["Edema"])
    assert shuffled.set_index("image")["mask_size"].sort_index().equals(table.set_index("image")["mask_size"])

"""The README's results block is generated from a run's tables, between markers, and states their outcomes."""

import pandas as pd
import pytest

from helpers import report
from helpers.run import Run


def _difference_row(a, b, metric, difference, outcome):
    return {
        "pathology": "all",
        "metric": metric,
        "a": a,
        "b": b,
        "mean_difference": difference,
        "ci_low": difference - 0.1,
        "ci_high": difference + 0.1,
        "p_holm": 0.01,
        "outcome": outcome,
    }


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    run = Run("smoke", device="cpu")
    summary = pd.DataFrame(
        [
            {"method": m, "pathology": "all", "metric": k, "mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
            for m, v in (("gradcam", 0.4), ("prior", 0.5))
            for k in ("hit", "mass_accuracy", "iou")
        ]
    )
    run.save_table(summary, "summary")
    run.save_table(pd.DataFrame([_difference_row("gradcam", "prior", "hit", -0.1, -1)]), "versus_prior")
    run.save_table(
        pd.DataFrame([_difference_row("lrp_z", "gradcam", "boundary_f1", 0.2, 1)]),
        "granularity",
    )
    explained = pd.DataFrame(
        [
            {"pathology": "Edema", "images": 20, "patients": 18, "positives": 20},
            {"pathology": "Fracture", "images": 21, "patients": 20, "positives": 21},
            {"pathology": "all", "images": 30, "patients": 25, "positives": 41},
        ]
    )
    run.save_table(explained, "explained")
    sanity = pd.DataFrame(
        [
            {
                "method": "gradcam",
                "mode": "cascading",
                "stage": "stem",
                "similarity": "spearman_abs",
                "mean": 0.1,
                "std": 0.05,
                "n": 8,
                "passes": True,
            }
        ]
    )
    run.save_table(sanity, "sanity")
    return run


def test_results_block_states_the_tables_outcomes(run):
    text = report.results_markdown(run)
    assert "30 test images of 25 patients, 41 positive (image, finding) pairs" in text
    assert "positives per localisable finding 20-21" in text
    assert "-0.10 (-0.20 to +0.00), p=0.01: worse" in text  # Grad-CAM against the prior, as the table says
    assert "F1 +0.20 (better)" in text  # LRP-0 against Grad-CAM on the boundary F-score
    assert "zennit analogue of iNNvestigate's LRPZ (LRP-0)" in text


def test_readme_block_is_replaced_between_markers_only(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold numbers\n{report.END}\nafter\n")
    report.write_readme("smoke", readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old numbers" not in text
    assert "41 positive" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        report.write_readme("smoke", readme)


def test_the_reference_is_the_summarys_not_a_stale_table_beside_it(run):
    # a rerun without the prior (e.g. real data without training masks) scores against the random map; the old
    # versus_prior table is still in the folder
    summary = run.table("summary")
    run.save_table(summary.assign(method=summary["method"].replace("prior", "random")), "summary")
    run.save_table(pd.DataFrame([_difference_row("gradcam", "random", "hit", 0.3, 1)]), "versus_random")
    stale = {"a": "gradcam", "b": "prior", "metric": "hit", "pathology": "all", "seed_mean_difference": -0.1}
    stale.update(seed_sd_difference=0.01, max_p_holm=0.01, n_seeds=3, holds=-1)
    run.save_table(pd.DataFrame([stale]), "seeds_versus_prior")
    text = report.results_markdown(run)
    assert "paired difference to the random map" in text and "+0.30 (+0.20 to +0.40), p=0.01: better" in text
    assert "-0.10 (-0.20 to +0.00)" not in text and "against the finding prior**" not in text
    assert "The seed table against the finding prior is not shown: this run's reference is the random map" in text


def _sanity_row(method, mode, stage, mean, passes):
    return {
        "method": method,
        "mode": mode,
        "stage": stage,
        "similarity": "spearman_abs",
        "mean": mean,
        "passes": passes,
    }


def test_sanity_across_seeds_counts_the_seeds_that_pass_on_the_whole_model():
    seed0 = pd.DataFrame(
        [
            _sanity_row("gradcam", "cascading", "head", 0.2, True),
            _sanity_row("gradcam", "cascading", "stem", 0.1, True),  # the last stage: the whole model random
            _sanity_row("gradcam", "independent", "stem", 0.9, False),  # not a whole-model verdict: left out
            _sanity_row("lrp_z", "cascading", "stem", 0.6, False),
            _sanity_row("lrp_z", "data", "shuffled_labels", 0.3, True),
            _sanity_row("edge", "cascading", "stem", 0.9, False),  # checked in one seed only: left out
        ]
    )
    seed1 = pd.DataFrame(
        [
            _sanity_row("gradcam", "cascading", "stem", 0.3, True),
            _sanity_row("lrp_z", "cascading", "stem", 0.4, True),
            _sanity_row("lrp_z", "data", "shuffled_labels", 0.7, False),
        ]
    )
    table = report._sanity_across_seeds([seed0, seed1]).set_index(["method", "mode"])
    assert set(table.index) == {("gradcam", "cascading"), ("lrp_z", "cascading"), ("lrp_z", "data")}
    assert table.loc[("gradcam", "cascading"), "passes"] == 2 and table.loc[("lrp_z", "cascading"), "passes"] == 1
    assert table.loc[("lrp_z", "data"), "seed_min"] == 0.3 and table.loc[("lrp_z", "data"), "seed_max"] == 0.7
    assert (table["n_seeds"] == 2).all()


def test_seed_tables_appear_in_the_block_once_written(run):
    assert "Across training seeds" not in report.results_markdown(run)
    granularity = {"a": "lrp_z", "b": "gradcam_4x", "metric": "resolution_gap", "pathology": "all"}
    granularity.update(seed_mean_difference=2.5, seed_sd_difference=0.5, max_p_holm=0.01, n_seeds=3, holds=-1)
    run.save_table(pd.DataFrame([granularity]), "seeds_granularity")
    text = report.results_markdown(run)
    assert "granularity against Grad-CAM at each layer" in text and "| -1 |" in text
    assert "Grad-CAM" in text.split("granularity against Grad-CAM at each layer")[1]  # the reference, by its label


def test_known_truth_across_seeds_needs_every_seed_and_keeps_each(tmp_path, monkeypatch):
    from helpers.report import _known_truth_across_seeds

    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    runs = [Run(name, device="cpu") for name in ("smoke", "smoke-seed1")]
    for k, run in enumerate(runs):
        run.save_table(
            pd.DataFrame({"method": ["gradcam"], "metric": ["marker_mass"], "auroc": [0.9 + k / 20]}),
            "known_truth_detection",
        )
        run.save_table(
            pd.DataFrame({"model": ["shortcut"], "metric": ["marker_delta"], "value": [3.0 + k]}),
            "known_truth_reliance",
        )
        assert _known_truth_across_seeds(runs) is None, "a seed without the shortcut summary: no table"
        summary = pd.DataFrame(
            {
                "method": ["gradcam"],
                "model": ["shortcut"],
                "pathology": ["all"],
                "metric": ["marker_mass"],
                "mean": [0.03 * (k + 1)],
            }
        )
        run.save_table(summary, "known_truth_shortcut_summary")
    table = _known_truth_across_seeds(runs).set_index(["method", "model", "metric"])
    assert table.loc[("(model)", "shortcut", "marker_delta"), ["seed_0", "seed_1", "seed_min"]].tolist() == [
        3.0,
        4.0,
        3.0,
    ]
    assert table.loc[("gradcam", "both", "marker_mass"), "seed_max"] == pytest.approx(0.95)
    assert table.loc[("gradcam", "shortcut", "marker_mass"), "seed_mean"] == pytest.approx(0.045)


def _known_truth_tables(run):
    reliance = [
        {"model": m, "metric": k, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 30}
        for m, delta in (("clean", -0.12), ("shortcut", 3.5))
        for k, v in (("auroc_test", 0.9), ("marker_delta", delta))
    ]
    run.save_table(pd.DataFrame(reliance), "known_truth_reliance")
    detection = [
        {"method": "gradcam", "metric": "marker_mass", "auroc": 0.75, "ci_low": 0.6, "ci_high": 0.9, "n_images": 8}
    ]
    run.save_table(pd.DataFrame(detection), "known_truth_detection")
    summary = [
        {"method": "gradcam", "pathology": "all", "metric": k, "model": m, "mean": v}
        for k, m, v in (
            ("marker_mass", "clean", 0.01),
            ("marker_mass", "shortcut", 0.2),
            ("marker_max", "shortcut", 0.5),
        )
    ]
    run.save_table(pd.DataFrame(summary), "known_truth_shortcut_summary")


def test_known_truth_block_states_reliance_and_detection_and_replaces_its_markers(run, tmp_path):
    _known_truth_tables(run)
    text = report.known_truth_markdown(run)
    assert "| Pneumothorax logit change when the marker is rendered out | -0.12 (-0.22 to -0.02) | 3.50" in text
    assert "| Grad-CAM (head) | 0.010 / 0.200 | nan / 0.500 | 0.75 (0.60 to 0.90) |" in text
    assert "Across training seeds" not in text
    readme = tmp_path / "README.md"
    blocks = (
        f"{report.BEGIN}\nold\n{report.END}\nmiddle\n{report.KNOWN_TRUTH_BEGIN}\nold truth\n{report.KNOWN_TRUTH_END}\n"
    )
    readme.write_text(blocks)
    report.write_readme("smoke", readme)
    written = readme.read_text()
    assert "old" not in written and "middle" in written and "0.75 (0.60 to 0.90)" in written

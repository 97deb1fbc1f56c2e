"""The README's results block and the seed table, generated from a run's metric tables (never typed by hand).

``python -m helpers.report readme <profile> README.md`` replaces the text between the README's
``<!-- results:begin -->`` and ``<!-- results:end -->`` markers with tables rendered from
``runs/<profile>/metrics/*.csv`` (written by notebook 05). ``python -m helpers.report seeds <profile> ...``
combines the runs of several training seeds into ``runs/<first profile>/metrics/seeds_*.csv`` (the results block
shows them once they exist). Outcomes are
rendered from the structured columns the metrics computed (``outcome``, ``passes``); no conclusion is written
here that a table does not hold.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from helpers import export, metrics, study
from helpers.figures import method_label as label
from helpers.io import atomic_path
from helpers.run import Run

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
#: Notebook 06's block, written by the same command.
KNOWN_TRUTH_BEGIN, KNOWN_TRUTH_END = "<!-- known-truth:begin -->", "<!-- known-truth:end -->"
OUTCOME = {1: "better", 0: "not distinguishable", -1: "worse"}


def _cell(row: pd.Series, digits: int = 2) -> str:
    return _interval(row, "mean", digits)


def _difference(row: pd.Series, digits: int = 2) -> str:
    return (
        f"{row['mean_difference']:+.{digits}f} ({row['ci_low']:+.{digits}f} to {row['ci_high']:+.{digits}f}), "
        f"p={row['p_holm']:.2g}: {OUTCOME[int(row['outcome'])]}"
    )


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def pooled_with_differences(
    summary: pd.DataFrame, versus: pd.DataFrame, metric_names: Sequence[str], methods: Sequence[str]
) -> pd.DataFrame:
    """One row per method: pooled mean (CI) of each metric and its paired difference to the reference."""
    pooled = summary[summary["pathology"] == "all"].set_index(["method", "metric"])
    differences = versus.set_index(["a", "metric"])
    rows = []
    for method in methods:
        row = {"method": label(method)}
        for metric in metric_names:
            if (method, metric) in pooled.index:
                row[metric] = _cell(pooled.loc[(method, metric)])
            if (method, metric) in differences.index:
                row[f"{metric} vs {versus['b'].iloc[0]}"] = _difference(differences.loc[(method, metric)])
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def results_markdown(run: Run) -> str:
    """The results block of ``run``: sample, localisation against the prior, granularity, sanity, faithfulness."""
    summary = run.table("summary")
    methods = list(dict.fromkeys(summary["method"]))
    # notebook 05's rule on the methods it scored, not which file exists: a rerun without the prior leaves the old
    # versus_prior table beside its new versus_random one
    reference = study.reference_method(methods)
    versus_reference = run.table(f"versus_{reference}")
    explained, granularity, sanity = run.table("explained"), run.table("granularity"), run.table("sanity")
    sections = [
        _sample_text(explained),
        f"**Localisation, and each method's paired difference to the {REFERENCE_NAMES[reference]}** (mean, 95% CI "
        "by patient, Holm-corrected Wilcoxon p over every method x metric):",
        _markdown(pooled_with_differences(summary, versus_reference, ["hit", "mass_accuracy", "iou"], methods)),
        "**Granularity against the ground truth** (paired differences, method minus Grad-CAM at the named layer, "
        "Holm-corrected over the table's gaps, F1s and separations (the resolution in px and the Gini index, which "
        "have no better direction, are corrected apart): gap = "
        "resolution gap to the mask in px, lower is better, over the maps that are not flat (a flat map, e.g. a "
        "Grad-CAM map all zero after its ReLU, has no resolution or Gini index and leaves their pairs); F1 = "
        "boundary F-score and sep. = separation of two findings, higher is better):",
        _markdown(_granularity_rows(granularity)),
        "**Sanity** (model randomisation; `passes` is decided on the sign-insensitive similarity):",
        _markdown(_sanity_rows(sanity)),
        "**Faithfulness toward the counterfactual** (areas under the probability curve; the random pixel order "
        "of the same pairs is the reference):",
        _markdown(_pooled_rows(summary, FAITHFULNESS)),
        "**Class sensitivity** (mean correlation between one image's maps for its findings with a positive logit):",
        _markdown(_pooled_rows(summary, CLASS_SENSITIVITY)),
    ]
    return "\n\n".join(sections + _seed_sections(run, reference))


#: The localisation metrics the block shows (every metric is in ``seeds_versus_<reference>.csv``).
HEADLINE = ["hit", "mass_accuracy", "iou"]


def _headline(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["metric"].isin(HEADLINE)]


def _shown_granularity(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["metric"].isin(list(GRANULARITY_SHOWN))]


#: The reference maps of notebook 05, as the results block names them.
REFERENCE_NAMES = {"prior": "finding prior", "random": "random map"}


def _seed_sections(run: Run, reference: str) -> list[str]:
    """The seed tables of ``make seeds``, where they exist; against ``reference``, the run's own reference map."""
    sections = []
    if run.table_path(f"seeds_versus_{reference}").is_file():
        sections += [
            f"**Across training seeds: each method against the {REFERENCE_NAMES[reference]}** (over the methods "
            "every seed explained; `holds` +1 / -1 only where every seed gives that outcome, better / worse, at Holm "
            "p < 0.05; every metric in `figures/seeds_*.csv`):",
            _markdown(_seed_rows(_headline(run.table(f"seeds_versus_{reference}")))),
        ]
    others = [r for r in REFERENCE_NAMES if r != reference and run.table_path(f"seeds_versus_{r}").is_file()]
    if others and not sections:  # said, not dropped: the seeds compared with another map than this run
        sections.append(
            f"The seed table against the {REFERENCE_NAMES[others[0]]} is not shown: this run's reference is the "
            f"{REFERENCE_NAMES[reference]}. Run `make seeds` again."
        )
    if run.table_path("seeds_granularity").is_file():
        sections += [
            "**Across training seeds: granularity against Grad-CAM at each layer** (resolution gap lower is better, "
            "boundary F1 and separation higher; `holds` as above):",
            _markdown(_seed_rows(_shown_granularity(run.table("seeds_granularity")), with_reference=True)),
        ]
    if run.table_path("seeds_sanity").is_file():
        sanity = run.table("seeds_sanity")
        sections += [
            "**Across training seeds: sanity** (sign-blind Spearman of the whole randomised model, or of the "
            "shuffled-label model; seeds in which the method passes):",
            _markdown(sanity.assign(method=sanity["method"].map(label)).round(2)),
        ]
    return sections


#: Pooled metrics shown per method in the faithfulness and class-sensitivity tables, with their headers.
FAITHFULNESS = {
    "cf_deletion_auc": "deletion (lower: faithful)",
    "cf_deletion_random_auc": "deletion, random order",
    "cf_insertion_auc": "insertion (higher: faithful)",
    "cf_insertion_random_auc": "insertion, random order",
    "cf_prob_factual": "probability with the finding",
    "cf_prob_counterfactual": "without it",
}
CLASS_SENSITIVITY = {
    "class_correlation_positive": "positive parts",
    "class_correlation_abs": "abs",
    "class_correlation_signed": "signed",
}


def _pooled_rows(summary: pd.DataFrame, shown: dict[str, str]) -> pd.DataFrame:
    """One row per method that has any of ``shown``: its pooled mean (CI) per metric."""
    pooled = summary[(summary["pathology"] == "all") & summary["metric"].isin(list(shown))]
    rows = []
    for method, own in pooled.groupby("method", sort=False):
        cells = {shown[r["metric"]]: _cell(r) for _, r in own.iterrows()}
        rows.append({"method": label(method), **{name: cells.get(name, "") for name in shown.values()}})
    return pd.DataFrame(rows, columns=["method", *shown.values()])


def _sample_text(explained: pd.DataFrame) -> str:
    total = explained[explained["pathology"] == "all"].iloc[0]
    per = explained[explained["pathology"] != "all"]
    return (
        f"{int(total['images'])} test images of {int(total['patients'])} patients, {int(total['positives'])} "
        f"positive (image, finding) pairs; positives per localisable finding {int(per['positives'].min())}-"
        f"{int(per['positives'].max())}."
    )


#: Granularity metrics in the README, with short names.
GRANULARITY_SHOWN = {"resolution_gap": "gap", "boundary_f1": "F1", "separation": "sep."}


def _granularity_rows(granularity: pd.DataFrame) -> pd.DataFrame:
    """One row per challenger, one column per Grad-CAM layer: each metric's difference and outcome."""
    rows = {}
    for (a, b), group in granularity.groupby(["a", "b"], sort=False):
        row = rows.setdefault(a, {"method": label(a)})
        shown = group.set_index("metric").reindex(list(GRANULARITY_SHOWN)).dropna(subset=["mean_difference"])
        row[f"vs {label(b)}"] = "; ".join(
            f"{GRANULARITY_SHOWN[m]} {r['mean_difference']:+.2f} ({OUTCOME[int(r['outcome'])]})"
            for m, r in shown.iterrows()
        )
    return pd.DataFrame(list(rows.values())).fillna("")


def _sanity_rows(sanity: pd.DataFrame) -> pd.DataFrame:
    """Per method: full cascading randomisation (signed and |R| Spearman, SSIM of |R|, HOG, passes), the
    independent stages passing, and the shuffled-label model."""
    rows = []
    for method, own in sanity.groupby("method", sort=False):
        cascading = own[own["mode"] == "cascading"]
        full = cascading[cascading["stage"] == cascading["stage"].iloc[-1]].set_index("similarity")
        independent = own[(own["mode"] == "independent") & (own["similarity"] == "spearman_abs")]
        data = own[(own["mode"] == "data") & (own["similarity"] == "spearman_abs")]
        rows.append(
            {
                "method": label(method),
                "all layers randomised: Spearman signed / abs": _pair(full, "spearman", "spearman_abs"),
                "SSIM abs / HOG": _pair(full, "ssim_abs", "hog"),
                "passes": _yes(full.loc["spearman_abs", "passes"]) if "spearman_abs" in full.index else "",
                "independent stages passing": f"{int(independent['passes'].sum())} of {len(independent)}",
                "shuffled labels: Spearman abs": (
                    f"{data['mean'].iloc[0]:.2f} ({_yes(data['passes'].iloc[0])})" if len(data) else ""
                ),
            }
        )
    return pd.DataFrame(rows)


def _pair(table: pd.DataFrame, first: str, second: str) -> str:
    values = [f"{table.loc[k, 'mean']:.2f}" if k in table.index else "-" for k in (first, second)]
    return " / ".join(values)


def _yes(passes) -> str:
    return "passes" if bool(passes) and str(passes) != "False" else "fails"


def _seed_rows(seeds: pd.DataFrame, with_reference: bool = False) -> pd.DataFrame:
    keep = ["a", *(["b"] if with_reference else []), "metric"]
    keep += ["seed_mean_difference", "seed_sd_difference", "max_p_holm", "n_seeds", "holds"]
    table = seeds[keep].assign(a=seeds["a"].map(label))
    if with_reference:
        table = table.assign(b=seeds["b"].map(label))
    return table.round(3)


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with everything between ``begin`` and ``end`` (the results block's markers) replaced by ``block``."""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"No {begin} ... {end} markers: add them where the block belongs.")
    return pattern.sub(lambda _: f"{begin}\n{block}\n{end}", text)


def write_readme(profile: str, readme: Path) -> None:
    """Rewrite the results block of ``readme`` from the run of ``profile``, and the known-truth block where the
    README has its markers and the run has notebook 06's tables (atomically)."""
    run = Run(profile, device="cpu")
    text = replace_block(readme.read_text(), results_markdown(run))
    if KNOWN_TRUTH_BEGIN in text and run.table_path("known_truth_reliance").is_file():
        text = replace_block(text, known_truth_markdown(run), KNOWN_TRUTH_BEGIN, KNOWN_TRUTH_END)
    with atomic_path(readme) as tmp:
        tmp.write_text(text)


#: Rows of the reliance table, as the known-truth block names them.
RELIANCE_ROWS = {
    "auroc_validation": "AUROC, validation (the marker follows the label)",
    "auroc_test": "AUROC, test (the marker is independent of it)",
    "auroc_test_marked": "AUROC, test images with the marker",
    "auroc_test_unmarked": "AUROC, test images without it",
    "marker_delta": "logit change when the marker is rendered out",
}


def known_truth_markdown(run: Run) -> str:
    """Notebook 06's block: each twin's reliance on the marker, what each method's maps show of it, how a map's
    mass in a finding's footprint follows the logit change, and the seed-to-seed spread where ``make seeds`` ran."""
    reliance = run.table("known_truth_reliance").set_index(["metric", "model"])
    pathology = run.profile.shortcut.pathology
    rows = [
        {"measure": f"{pathology} {name}", **{m: _interval(reliance.loc[(metric, m)], "value") for m in TWIN_ORDER}}
        for metric, name in RELIANCE_ROWS.items()
        if (metric, "clean") in reliance.index
    ]
    sections = [
        "**Reliance** (each twin on the shortcut twin's data; mean, 95% CI by patient):",
        _markdown(pd.DataFrame(rows, columns=["measure", "clean", "shortcut"])),
        "**What the maps show of it** (marked test images; map mass on the marker and share of images whose maximum "
        "lies on it, clean / shortcut model; detection AUROC: does the mass on the marker alone tell the shortcut "
        "model's map from the clean model's):",
        _markdown(_detection_rows(run)),
    ]
    if run.table_path("known_truth_use").is_file():
        use = run.table("known_truth_use")
        use = use[use["metric"] == "footprint_excess"].assign(method=lambda t: t["method"].map(label))
        sections += [
            "**Counterfactual evidence on the main model** (Spearman's rho between a method's excess mass in a "
            "finding's footprint, its share minus the footprint's area share, and the logit change when the finding "
            "is rendered out; 95% CI by patient):",
            _markdown(use.assign(rho=[_interval(r, "rho") for _, r in use.iterrows()])[["method", "rho", "n"]]),
        ]
    if run.table_path("seeds_known_truth").is_file():
        sections += [
            "**Across training seeds** (each seed trains its own twins; the value in each seed, and their range):",
            _markdown(_known_truth_seed_rows(run.table("seeds_known_truth"))),
        ]
    return "\n\n".join(sections)


def _interval(row: pd.Series, column: str, digits: int = 2) -> str:
    return f"{row[column]:.{digits}f} ({row['ci_low']:.{digits}f} to {row['ci_high']:.{digits}f})"


def _detection_rows(run: Run) -> pd.DataFrame:
    """Per method: marker mass and marker-holds-the-maximum under each twin, and the detection AUROC."""
    detection = run.table("known_truth_detection").set_index("method")
    summary = run.table("known_truth_shortcut_summary")
    pooled = summary[summary["pathology"] == "all"].set_index(["method", "metric", "model"])["mean"]
    rows = []
    for method, row in detection.iterrows():
        rows.append(
            {
                "method": label(method),
                "mass on the marker": _twin_pair(pooled, method, "marker_mass"),
                "maximum on the marker": _twin_pair(pooled, method, "marker_max"),
                "detection AUROC": _interval(row, "auroc"),
            }
        )
    return pd.DataFrame(rows)


TWIN_ORDER = ("clean", "shortcut")


def _twin_pair(pooled: pd.Series, method: str, metric: str) -> str:
    """``clean / shortcut`` pooled means of one method's metric."""
    return " / ".join(f"{pooled.get((method, metric, model), float('nan')):.3f}" for model in TWIN_ORDER)


#: The seed rows of the known-truth block: (method, model, metric) and how it is named.
KNOWN_TRUTH_SEED_ROWS = {
    ("(model)", "shortcut", "marker_delta"): "shortcut twin: logit change, marker rendered out",
    ("(model)", "clean", "marker_delta"): "clean twin: logit change, marker rendered out",
    ("(model)", "shortcut", "auroc_test"): "shortcut twin: test AUROC",
    ("(model)", "clean", "auroc_test"): "clean twin: test AUROC",
}


def _known_truth_seed_rows(seeds: pd.DataFrame) -> pd.DataFrame:
    """Reliance per seed, then each method's detection AUROC and marker mass under the shortcut twin per seed."""
    indexed = seeds.set_index(["method", "model", "metric"])
    per_seed = [c for c in seeds.columns if c.startswith("seed_") and c[5:].isdigit()]
    wanted = dict(KNOWN_TRUTH_SEED_ROWS)
    for method in dict.fromkeys(seeds.loc[seeds["model"] == "both", "method"]):
        wanted[(method, "both", "marker_mass")] = f"{label(method)}: detection AUROC"
        wanted[(method, "shortcut", "marker_mass")] = f"{label(method)}: marker mass, shortcut twin"
    rows = []
    for key, name in wanted.items():
        if key in indexed.index:
            row = indexed.loc[key]
            rows.append(
                {
                    "measure": name,
                    "per seed": ", ".join(f"{row[c]:.2f}" for c in per_seed),
                    "range": f"{row['seed_min']:.2f} to {row['seed_max']:.2f}",
                }
            )
    return pd.DataFrame(rows, columns=["measure", "per seed", "range"])


#: Grad-CAM at its three layers, with which LRP and the gradient family are compared on granularity in every seed.
SEED_CAMS = ["gradcam", "gradcam_2x", "gradcam_4x"]


def write_seed_tables(profiles: Sequence[str], n_boot: int = 1000) -> None:
    """Seed-to-seed spread of the pooled summaries, whether each method's outcome against the prior and its
    granularity against Grad-CAM (at each layer) hold in every seed, and each seed's sanity verdicts, into the
    first profile's metrics folder (``seeds_summary``, ``seeds_versus_<reference>``, ``seeds_granularity``,
    ``seeds_sanity``).

    The comparisons are recomputed from each seed's ``scores.csv`` over the methods every seed explained, so that
    each seed's Holm correction covers the same family.
    """
    runs = [Run(p, device="cpu") for p in profiles]
    scores = [run.table("scores") for run in runs]
    common = sorted(set.intersection(*(set(s["method"]) for s in scores)))
    reference = study.reference_method(common)
    families = {
        f"seeds_versus_{reference}": ([(m, reference) for m in common if m != reference], study.LOCALISATION_METRICS),
        "seeds_granularity": (
            [(m, cam) for cam in SEED_CAMS if cam in common for m in study.granularity_challengers(common)],
            study.GRANULARITY_METRICS,
        ),
    }
    patients = [dict(zip(run.explained().image_ids, run.explained().patients)) for run in runs]
    for name, (pairs, metric_names) in families.items():
        if not pairs:
            continue
        comparisons = {
            k: metrics.outcome(metrics.compare(table, pairs, metric_names, n_boot, patients=patients[k]))
            for k, table in enumerate(scores)
        }
        runs[0].save_table(metrics.holds_across_seeds(comparisons), name)
    summaries = {k: r.table("summary").query("pathology == 'all'") for k, r in enumerate(runs)}
    runs[0].save_table(metrics.across_seeds(summaries, ["method", "metric"]), "seeds_summary")
    runs[0].save_table(_sanity_across_seeds([r.table("sanity") for r in runs]), "seeds_sanity")
    known_truth = _known_truth_across_seeds(runs)
    if known_truth is not None:
        runs[0].save_table(known_truth, "seeds_known_truth")


#: Notebook 06's tables combined across seeds (each seed trains its own clean and shortcut twin).
KNOWN_TRUTH_TABLES = ("known_truth_detection", "known_truth_reliance", "known_truth_shortcut_summary")


def _known_truth_across_seeds(runs: Sequence[Run]) -> pd.DataFrame | None:
    """Seed-to-seed spread of the shortcut experiment: each twin's reliance, each method's detection AUROC and its
    pooled marker and finding scores per model; None unless every seed ran notebook 06."""
    if not all(run.table_path(name).is_file() for run in runs for name in KNOWN_TRUTH_TABLES):
        return None
    keys = ["method", "model", "metric"]
    detection = {
        k: r.table("known_truth_detection").assign(model="both", value=lambda t: t["auroc"]) for k, r in enumerate(runs)
    }
    reliance = {k: r.table("known_truth_reliance").assign(method="(model)") for k, r in enumerate(runs)}
    shortcut = {
        k: r.table("known_truth_shortcut_summary").query("pathology == 'all'").rename(columns={"mean": "value"})
        for k, r in enumerate(runs)
    }
    tables = [metrics.across_seeds(t, keys, value="value") for t in (reliance, detection, shortcut)]
    return pd.concat(tables, ignore_index=True)


def _sanity_across_seeds(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per method (those every seed checked): the sign-blind Spearman of the whole randomised model (the last
    cascading stage) and of the shuffled-label model in each seed, and in how many seeds it passes."""
    rows = []
    for k, table in enumerate(tables):
        decided = table[(table["similarity"] == "spearman_abs") & table["mode"].isin(["cascading", "data"])]
        for (method, mode), own in decided.groupby(["method", "mode"], sort=False):
            last = own.iloc[-1]  # the stages run from the output down: the last is the whole model (or the data)
            rows.append({"seed": k, "method": method, "mode": mode, "stage": last["stage"], **_verdict(last)})
    stacked = pd.DataFrame(rows)
    checked = stacked.groupby(["method", "mode"])["seed"].transform("nunique") == len(tables)
    return (
        stacked[checked]
        .groupby(["method", "mode", "stage"], sort=False)
        .agg(seed_mean=("mean", "mean"), seed_min=("mean", "min"), seed_max=("mean", "max"), passes=("passes", "sum"))
        .assign(n_seeds=len(tables))
        .reset_index()
    )


def _verdict(row: pd.Series) -> dict:
    return {"mean": row["mean"], "passes": _yes(row["passes"]) == "passes"}


#: The methods of the HTML viewer (those a run made), and how many explained images it shows.
VIEWER_METHODS = ("gradcam", "gradcam_4x", "lrp_epsilon_plus_flat", "lrp_alpha2_beta1", "gradient_x_input", "prior")
VIEWER_IMAGES = 24


def write_html_viewer(profile: str, methods: Sequence[str] = VIEWER_METHODS, n_images: int = VIEWER_IMAGES) -> Path:
    """``runs/<profile>/figures/viewer.html``: the run's maps of its first ``n_images`` explained images for every
    pathology and each of ``methods`` it made (:mod:`helpers.export`), browsable without a kernel."""
    run = Run(profile, device="cpu")
    made = [m for m in methods if run.heatmap_path(m).is_file()]
    if not made:
        raise FileNotFoundError(
            f"No heatmaps of {list(methods)} in {run.folder('heatmaps')}: run notebooks 03-05 first."
        )
    batch = run.explained()
    shown = slice(0, n_images)
    data = export.viewer_data(
        batch.images[shown], run.heatmaps(made), masks=batch.masks[shown], codes=batch.codes[shown]
    )
    return export.write_viewer(
        run.figures_dir / "viewer.html", data, f"chexplain: {profile} run, {len(data['ids'])} images"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    readme = commands.add_parser("readme", help="rewrite the README's results block from a run")
    readme.add_argument("profile")
    readme.add_argument("readme", type=Path)
    seeds = commands.add_parser("seeds", help="combine runs of several training seeds")
    seeds.add_argument("profiles", nargs="+")
    viewer = commands.add_parser("viewer", help="write a self-contained HTML viewer of a run's heatmaps")
    viewer.add_argument("profile")
    viewer.add_argument("--methods", nargs="+", default=list(VIEWER_METHODS))
    viewer.add_argument("--images", type=int, default=VIEWER_IMAGES)
    args = parser.parse_args(argv)
    if args.command == "readme":
        write_readme(args.profile, args.readme)
    elif args.command == "seeds":
        write_seed_tables(args.profiles)
    else:
        path = write_html_viewer(args.profile, args.methods, args.images)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

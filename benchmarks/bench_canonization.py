"""Does the canonization level change what LRP shows? Localisation and faithfulness of two composites at
levels 1-3 on the default profile's 48 explained test images (needs ``make run`` first: it reads the trained
model and prepared data from ``runs/default``).

Run: ``python benchmarks/bench_canonization.py [--pairs 60]``.
"""
from __future__ import annotations

import argparse

import pandas as pd

from helpers import config, data, labels, lrp, metrics, train

SHOWN = ["hit", "near_hit", "iou", "mass_accuracy", "pixel_auroc", "resolution_px", "deletion_auc", "insertion_auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=60, help="positive (image, finding) pairs for deletion/insertion")
    args = parser.parse_args()
    profile = config.load_profile("default")
    prepared = data.load_profile_data(profile)
    model, meta = train.load_trained(profile)
    rows = prepared.rows_with_findings("test", profile.n_explain)
    test = prepared.split("test").iloc[rows]
    inputs = prepared.inputs("test", rows, meta["mean"], meta["std"])
    masks, codes = prepared.masks("test")[rows], test[list(labels.PATHOLOGIES)].to_numpy()
    pairs = [(i, p) for i in range(len(rows)) for p in labels.PATHOLOGIES
             if p != "No Finding" and codes[i, labels.PATHOLOGIES.index(p)] == 1][:args.pairs]
    scores = []
    for composite in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
        for level in (1, 2, 3):
            maps = lrp.explain_lrp(model, inputs, composite=composite, canonization=level,
                                   image_ids=test["image_id"], mean=meta["mean"], std=meta["std"])
            maps.method = f"{composite}, level {level}"
            scores += [metrics.score(maps, masks, codes=codes, class_sensitivity=False),
                       metrics.perturbation_scores(model, inputs, maps, pairs)]
    table = pd.concat(scores).groupby(["method", "metric"], sort=False)["value"].mean().unstack()[SHOWN]
    print(f"{len(rows)} images, {len(pairs)} pairs for deletion / insertion; means over rows")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()

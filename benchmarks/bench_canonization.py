"""Does the canonization level change what LRP shows? Localisation and faithfulness of two composites at
levels 1-3 on the default profile's explained test images (needs ``make run`` first: it reads the trained
model and prepared data from ``runs/default``).

Run: ``python benchmarks/bench_canonization.py [--pairs 60]``.
"""

from __future__ import annotations

import argparse

import pandas as pd

from helpers import explainers, metrics
from helpers.run import Run

SHOWN = ["hit", "near_hit", "iou", "mass_accuracy", "pixel_auroc", "resolution_px", "deletion_auc", "insertion_auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=60, help="positive (image, finding) pairs for deletion/insertion")
    args = parser.parse_args()
    run = Run("default")
    model, meta = run.model()
    batch = run.explained()
    pairs = batch.pairs()[: args.pairs]
    scores = []
    for composite in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
        for level in (1, 2, 3):
            explainer = explainers.LRP(f"{composite}, level {level}", composite, level, meta["mean"], meta["std"])
            maps = explainer.explain(model, batch.inputs, image_ids=batch.image_ids)
            scores += [
                metrics.score(maps, batch.masks, codes=batch.codes, class_sensitivity=False),
                metrics.perturbation_scores(model, batch.inputs, maps, pairs),
            ]
    table = pd.concat(scores).groupby(["method", "metric"], sort=False)["value"].mean().unstack()[SHOWN]
    print(f"{len(batch)} images, {len(pairs)} pairs for deletion / insertion; means over rows")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()

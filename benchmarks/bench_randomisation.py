"""Notebook 05's randomisation checks: seconds with the similarities on one process against every core.

Model randomisation (cascading and independent) of one explainer on ``--n`` random inputs at ``--size`` px, for
``--findings`` findings per image, first with ``n_jobs=1`` then ``n_jobs=-1``; the explanations are the same work
both times, so the difference is what running the similarities (HOG, SSIM, Spearman) on every core saves. A random
initialisation stands in for a trained model (the work is the same).

Run: ``python benchmarks/bench_randomisation.py [--arch densenet121] [--size 224] [--method lrp_epsilon_plus_flat]``.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from helpers import explainers, labels, metrics, models, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=8, help="images")
    parser.add_argument("--findings", type=int, default=4, help="positive findings per image")
    parser.add_argument("--method", default="lrp_epsilon_plus_flat")
    args = parser.parse_args()
    device = train.select_device()
    torch.manual_seed(0)
    model = models.build_model(args.arch).to(device).eval()
    inputs = torch.randn(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    pairs = [
        (i, labels.LOCALISABLE[(i + k) % len(labels.LOCALISABLE)]) for i in range(args.n) for k in range(args.findings)
    ]
    explainer = explainers.create(args.method)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{args.method}, {args.arch} at {args.size} px, {args.n} images, {len(pairs)} pairs, on {name}")
    explainer.explain_pairs(model, inputs, pairs[:1])  # warm-up: first-use costs (CUDA handles) in neither timing
    tables = {}
    for n_jobs in (1, -1):
        started = time.perf_counter()
        tables[n_jobs] = pd.concat(
            [
                metrics.model_randomisation(model, inputs, explainer, pairs, mode=mode, n_jobs=n_jobs)
                for mode in ("cascading", "independent")
            ]
        )
        print(f"n_jobs={n_jobs:>2}: {time.perf_counter() - started:.1f} s", flush=True)
    one, every = (tables[n]["value"].to_numpy() for n in (1, -1))
    print(f"largest difference of a similarity between the two runs: {abs(one - every).max():.2g}")
    print("(0 on a CPU; on CUDA the maps themselves differ from run to run: cuDNN's backward is not deterministic)")


if __name__ == "__main__":
    main()

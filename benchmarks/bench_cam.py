"""Grad-CAM for all 14 pathologies: fast path against pytorch-grad-cam called once per pathology
(DenseNet-121, 224 px, target >= 20x), and resident memory over 500 calls (target growth < 50 MB).

Run: ``python benchmarks/bench_cam.py [--repeats 3] [--calls 500]``.
"""

from __future__ import annotations

import argparse
import gc
import time

import psutil
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from helpers import cam, labels, models


def library_per_pathology(model, images) -> None:
    """What a user would write with pytorch-grad-cam alone: one call per pathology, one target per row."""
    for j in range(len(labels.PATHOLOGIES)):
        with GradCAM(model=model, target_layers=[model.target_layer]) as explainer:
            explainer(images, targets=[ClassifierOutputTarget(j)] * len(images))


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def rss_growth_mb(function, calls: int, warmup: int = 20) -> tuple[float, float]:
    """Resident memory growth (MB) between call ``warmup`` and the last call, and the peak RSS (MB)."""
    process = psutil.Process()
    for _ in range(warmup):
        function()
    gc.collect()
    start = process.memory_info().rss
    peak = start
    for _ in range(calls - warmup):
        function()
        peak = max(peak, process.memory_info().rss)
    gc.collect()
    return (process.memory_info().rss - start) / 2**20, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = models.build_model("densenet121").eval()
    images = torch.randn(args.batch, 3, 224, 224)
    fast = best_seconds(lambda: cam.explain_cam(model, images, method="gradcam"), args.repeats)
    library = best_seconds(lambda: library_per_pathology(model, images), args.repeats)
    print(f"| DenseNet-121, 224 px, {args.batch} image(s), 14 pathologies | seconds (best of {args.repeats}) |")
    print("|---|---|")
    print(f"| chexplain fast path (explain_cam, gradcam) | {fast:.3f} |")
    print(f"| pytorch-grad-cam, one call per pathology | {library:.3f} |")
    print(f"\nspeed-up: {library / fast:.1f}x (target >= 20x); torch threads: {torch.get_num_threads()}")
    growth, peak = rss_growth_mb(lambda: cam.explain_cam(model, images, method="gradcam"), args.calls)
    print(
        f"resident memory over {args.calls} fast-path calls: growth {growth:+.1f} MB after warm-up, peak {peak:.0f} MB "
        f"(target growth < 50 MB)"
    )
    compact = models.build_model("densenet_compact").eval()
    small = torch.randn(1, 3, 128, 128)
    calls = max(args.calls // 5, 40)
    growth, peak = rss_growth_mb(lambda: cam.explain_cam(compact, small, method="gradcam++"), calls)
    print(
        f"resident memory over {calls} library-route calls (gradcam++, compact DenseNet, 128 px): growth "
        f"{growth:+.1f} MB after warm-up, peak {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()

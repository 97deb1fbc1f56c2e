"""LRP for all 14 pathologies: ``explain_lrp`` (one forward, backward batched over pathologies) against 14
separate zennit ``Gradient`` calls, DenseNet-121 at 224 px, float32 (target >= 2x), the float32 agreement
between the two, and the peak resident memory of one ``explain_lrp`` call in a fresh process (target <= 4 GB).

Run: ``python benchmarks/bench_lrp.py [--repeats 3] [--composite epsilon_plus_flat]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from bench_cam import best_seconds  # benchmarks/ is on sys.path when a script here runs

from helpers import lrp, models


def model_with_random_statistics(arch: str) -> torch.nn.Module:
    """Untrained weights with non-trivial BatchNorm statistics (so canonization does real work)."""
    torch.manual_seed(0)
    model = models.build_model(arch).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model


def peak_memory_child(arch: str, composite: str, size: int) -> None:
    """Run one ``explain_lrp`` call and print this process's peak RSS in MB (JSON)."""
    model = model_with_random_statistics(arch)
    images = torch.randn(1, 3, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lrp.explain_lrp(model, images, composite=composite)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "before_mb": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return peak_memory_child(args.arch, args.composite, args.size)
    # the child first: Linux keeps a process's peak RSS across exec, so it must start while this one is small
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--arch",
            args.arch,
            "--size",
            str(args.size),
            "--composite",
            args.composite,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    memory = json.loads(child.stdout.strip().splitlines()[-1])
    model = model_with_random_statistics(args.arch)
    images = torch.randn(1, 3, args.size, args.size)
    batched = lrp.explain_lrp(model, images, composite=args.composite).maps
    separate = lrp.explain_lrp_separately(model, images, composite=args.composite).numpy()
    rel_diff = abs(batched - separate).max() / abs(separate).max()
    fast = best_seconds(lambda: lrp.explain_lrp(model, images, composite=args.composite), args.repeats)
    slow = best_seconds(lambda: lrp.explain_lrp_separately(model, images, composite=args.composite), args.repeats)
    print(
        f"{args.arch}, {args.size} px, 1 image, 14 pathologies, {args.composite}, canonization full, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  explain_lrp (shared forward, batched backward): {fast:.2f} s")
    print(f"  14 separate zennit Gradient calls:              {slow:.2f} s")
    print(f"  speed-up: {slow / fast:.1f}x (target >= 2x)")
    print(f"  float32 relative max difference: {rel_diff:.1e}")
    print(
        f"  peak RSS of a fresh process running one call: {memory['peak_mb']:.0f} MB "
        f"(before the call: {memory['before_mb']:.0f} MB; target <= 4096 MB)"
    )


if __name__ == "__main__":
    main()

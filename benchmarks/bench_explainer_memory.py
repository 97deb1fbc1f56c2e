"""Peak memory per explained image of each explainer, against LRP EpsilonPlusFlat's (the reference of
``helpers.explainers.base.PEAK_BYTES_PER_PIXEL``), and whether the explainer's ``memory_scale`` covers it.

On a GPU the explanation batch is sized by that reference times ``memory_scale`` (``batch_size_for``); the ratios
are measured here on the CPU, where the same tensors live in resident memory: DenseNet-121 with random weights
and BatchNorm statistics, 224 px, all 14 pathologies, each explainer in a fresh process (the peak resident set
above the one after a warm-up forward pass, per image).

Run: ``python benchmarks/bench_explainer_memory.py [--images 2] [--size 224] [name ...]`` (about 7 minutes on 2
cores with the default names).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from bench_lrp import model_with_random_statistics  # benchmarks/ is on sys.path when a script here runs

from helpers import explainers

REFERENCE = "lrp_epsilon_plus_flat"
NAMES = [
    REFERENCE,
    "lrp_z",
    "lrp_epsilon",
    "lrp_alpha2_beta1",
    "lrp_deep_taylor",
    "lrp_epsilon_gamma_box",
    "lrp_epsilon_alpha2_beta1_flat",
    "gradcam",
    "gradcam_4x",
    "gradcam++",
    "xgradcam",
    "layercam",
    "eigencam",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
]


def peak_child(name: str, n_images: int, size: int) -> None:
    """Explain ``n_images`` random images with ``name``; print the peak resident memory above the warm model (JSON)."""
    model = model_with_random_statistics("densenet121")
    images = torch.randn(n_images, 3, size, size)
    with torch.no_grad():
        model(images[:1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    explainers.create(name, batch_size=n_images).explain(model, images)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mb_per_image": (after - before) / 1024 / n_images}))


def measure(name: str, n_images: int, size: int) -> float:
    child = subprocess.run(
        [sys.executable, __file__, "--child", name, "--images", str(n_images), "--size", str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])["mb_per_image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=NAMES)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_child(args.child, args.images, args.size)
        return
    names = [REFERENCE] + [name for name in args.names if name != REFERENCE]
    print(
        f"DenseNet-121, {args.size} px, {args.images} images x 14 pathologies, CPU ({torch.get_num_threads()} threads)"
    )
    print(f"{'explainer':32} {'MB/image':>9} {'x reference':>12} {'memory_scale':>13}")
    reference = None
    for name in names:
        mb = measure(name, args.images, args.size)
        reference = reference or mb
        scale = explainers.create(name).memory_scale
        verdict = "covered" if scale >= mb / reference else "NOT COVERED"
        print(f"{name:32} {mb:9.0f} {mb / reference:12.2f} {scale:13.2f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()

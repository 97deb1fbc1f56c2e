"""Phantom generation speed: images per second at 128 px on one core (target >= 500), and on every core.

Times :func:`helpers.phantom.generate` end to end (labels, rendering, JPEG files, RLE masks, CSVs,
JSON) into a temporary folder, with BLAS/OpenMP pinned to one thread, on one writer thread and on one per core.
Run: ``python benchmarks/bench_phantom.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import joblib  # noqa: E402
import numpy as np  # noqa: E402

from helpers import phantom  # noqa: E402


def render_ms_per_image(n: int, size: int, findings: bool) -> float:
    """Milliseconds per image for rendering alone (no files), with CheXpert-like findings or none."""
    rng = np.random.default_rng(0)
    patient, _ = phantom.patients(n, rng)
    scene = phantom.study_scenes(patient, rng)
    strength = phantom.drawing_strength(phantom.sample_labels(n, rng, min_prevalence=0.1), rng)
    strength *= float(findings)
    start = time.perf_counter()
    for first, stop in phantom.patient_batches(patient):
        rows = slice(first, stop)
        phantom.render({k: v[rows] for k, v in scene.items()}, strength[rows], size)
    return (time.perf_counter() - start) / n * 1e3


def generation_rates(args, threads: int) -> list[float]:
    """Images per second of each repeat, written on ``threads`` threads."""
    rates = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            start = time.perf_counter()
            phantom.generate(Path(tmp) / "phantom", args.images, args.size, seed=repeat, n_valid=1, threads=threads)
            rates.append(args.images / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir",
        default=None,
        help="where to write (default: the system temp folder); /dev/shm separates the code's speed from the disk's",
    )
    args = parser.parse_args()
    print("| benchmark | images | size | best images/s | median images/s | target |")
    print("|---|---|---|---|---|---|")
    where = args.dir or tempfile.gettempdir()
    for threads in sorted({1, joblib.cpu_count()}):
        rates = generation_rates(args, threads)
        print(
            f"| phantom.generate ({threads} thread{'s' * (threads > 1)}) into {where} | {args.images} | {args.size} | "
            f"{max(rates):.0f} | {sorted(rates)[len(rates) // 2]:.0f} | {'>= 500' if threads == 1 else ''} |"
        )
        if threads == 1:
            total = 1e3 / max(rates)
    anatomy = render_ms_per_image(1024, args.size, findings=False)
    with_findings = render_ms_per_image(1024, args.size, findings=True)
    print(
        f"\nper image at {args.size} px: {total:.2f} ms in all; render {with_findings:.2f} ms "
        f"(anatomy + exposure {anatomy:.2f} ms, findings {with_findings - anatomy:.2f} ms); "
        f"files, RLE masks, CSV and JSON {max(total - with_findings, 0):.2f} ms"
    )


if __name__ == "__main__":
    main()

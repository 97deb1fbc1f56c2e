"""How long a viewer takes to redraw after a slider move, on a finished run (default: the default profile).

Builds notebook 03's per-pathology viewer and notebook 05's two-panel viewer over the run's saved maps, then
moves the image slider, the pathology slider and the method picker in turn (``--moves`` times in all) and times
each redraw in the kernel: the render, the PNG encoding and the swap of the frame's bytes (what the browser then
shows is not included). Prints the median and the slowest move per viewer (target: <= 0.5 s on the 2-core CPU).

Run: ``python benchmarks/bench_viewer.py [--profile default] [--moves 30]`` after ``make run``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from helpers import lrp, widgets
from helpers.run import Run


def timed_moves(viewer, moves: int) -> list[float]:
    """Seconds of each of ``moves`` control changes, cycling image, pathology and the (first) picker."""
    (pathology, _name, image), (picker, *_) = viewer.children[0].children, viewer.children[1].children
    changes = itertools.cycle(
        [
            (image, lambda v: (v + 7) % (image.max + 1)),
            (pathology, lambda v: pathology.options[(pathology.options.index(v) + 3) % len(pathology.options)]),
            (picker, lambda v: picker.options[(picker.options.index(v) + 1) % len(picker.options)]),
        ]
    )
    seconds = []
    for control, step in itertools.islice(changes, moves):
        started = time.perf_counter()
        control.value = step(control.value)  # the observer redraws synchronously
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--moves", type=int, default=30)
    args = parser.parse_args()
    run = Run(args.profile, device="cpu")
    batch = run.explained()
    lrp_sets = run.heatmaps([f"lrp_{c}" for c in lrp.COMPOSITES if run.heatmap_path(f"lrp_{c}").is_file()])
    compared = run.heatmaps(["gradcam", "lrp_epsilon_plus_flat", "lrp_alpha2_beta1"])
    scores = run.table("scores")
    scores["image"] = scores["image"].astype(str)
    viewers = {
        "03 per-pathology viewer": widgets.heatmap_viewer(batch.images, lrp_sets, codes=batch.codes, masks=batch.masks),
        "05 two-panel viewer": widgets.comparison_viewer(
            batch.images, compared, scores=scores, masks=batch.masks, codes=batch.codes
        ),
    }
    side = batch.images.shape[-1]
    print(f"{args.profile}: {len(batch)} images at {side} px, {args.moves} moves per viewer")
    for name, viewer in viewers.items():
        seconds = timed_moves(viewer, args.moves)
        print(f"{name}: median {statistics.median(seconds):.3f} s, slowest {max(seconds):.3f} s per move")


if __name__ == "__main__":
    main()

"""How long the notebooks' heatmap galleries take to save, with :func:`helpers.figures.save_figure` and with a
plain ``savefig`` of the same figure (matplotlib's defaults: the layout engine left in place, Pillow's zlib level).

Draws the three galleries of notebooks 03-05 at their paper-profile shape (03: 4 examples x 5 LRP composites;
04: 4 examples x 8 CAM methods; 05: 6 findings x Grad-CAM and 5 composites) from phantom radiographs at ``--size``
px and stand-in maps (smoothed noise: coarse like a CAM, or fine like LRP's signed relevance, which compresses
worst), then saves each figure both ways, alternating, ``--repeats`` times, and prints the median seconds of
building it, of each file and the files' sizes. The figures are what the notebooks draw; the maps are not a
model's, so file sizes are indicative.

Run: ``python benchmarks/bench_figures.py [--size 224] [--repeats 3]`` (alone on the machine: it is CPU-bound).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from bench_gpu import notebook_parameters  # noqa: E402  (this folder is on the path when run as a script)
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from helpers import figures, labels, phantom, widgets  # noqa: E402
from helpers.heatmaps import HeatmapSet  # noqa: E402


def galleries() -> dict[str, tuple[int, list[str]]]:
    """Figure -> (rows, methods) of the notebooks' galleries, from their parameters cells (the paper profile's
    shape: 4 examples in 03 and 04, 6 findings in 05)."""
    lrp = notebook_parameters("03_lrp_zennit.ipynb")["composites"]
    cam = notebook_parameters("04_gradcam.ipynb")
    compared = notebook_parameters("05_compare.ipynb")
    return {
        "03 LRP gallery": (4, [f"lrp_{c}" for c in lrp]),
        "04 CAM gallery": (4, cam["methods"] + cam["layer_methods"]),
        "05 comparison gallery": (6, compared["cam_methods"][:1] + [f"lrp_{c}" for c in compared["lrp_composites"]]),
    }


def phantom_images(n: int, size: int, folder: Path) -> np.ndarray:
    """``n`` phantom radiographs, ``(n, size, size)`` floats in [0, 1]."""
    root = phantom.generate(folder / "phantom", max(n, 8), size, n_valid=1)
    paths = sorted(root.glob("train/*/*/*.jpg"))[:n]
    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in paths])


def stand_in_maps(method: str, n: int, size: int, rng: np.random.Generator) -> HeatmapSet:
    """Smoothed noise for every pathology: signed and fine for LRP, non-negative and coarse for a CAM."""
    signed = method.startswith("lrp")
    noise = rng.standard_normal((n, len(labels.PATHOLOGIES), size, size)).astype(np.float32)
    maps = gaussian_filter(noise, (0, 0, size / 224, size / 224) if signed else (0, 0, size / 16, size / 16))
    return HeatmapSet(
        maps if signed else np.abs(maps), [str(i) for i in range(n)], labels.PATHOLOGIES, method, signed=signed
    )


def gallery(images: np.ndarray, sets: dict[str, HeatmapSet], rows: int, masks: np.ndarray) -> plt.Figure:
    """The notebooks' gallery: ``rows`` (image, pathology) rows, the radiograph then one column per method."""
    shown = [(i % len(images), labels.PATHOLOGIES[2 + i]) for i in range(rows)]
    return widgets.plot_gallery(images, sets, shown, masks=masks)


def plain_save(fig: plt.Figure, folder: Path) -> list[Path]:
    """The same two files the way ``save_figure`` wrote them before: matplotlib's defaults but the crop."""
    written = []
    with figures.paper_style():
        crop = figures._tight_box(fig)
        for suffix in ("pdf", "png"):
            target = folder / f"plain.{suffix}"
            fig.savefig(target, bbox_inches=crop, **({"metadata": {"CreationDate": None}} if suffix == "pdf" else {}))
            written.append(target)
    return written


def timed(save, fig, folder: Path) -> dict[str, float]:
    """Seconds of each file of one save, read from the files' modification times (both written in order)."""
    started = time.time()
    pdf, png = save(fig, folder)
    return {
        "pdf s": pdf.stat().st_mtime - started,
        "png s": png.stat().st_mtime - pdf.stat().st_mtime,
        "pdf MB": pdf.stat().st_size / 1e6,
        "png MB": png.stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="image side in px (paper 224, default 96, smoke 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    saves = {
        "save_figure": lambda fig, folder: figures.save_figure(fig, 1, "bench", folder),
        "plain savefig": plain_save,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = phantom_images(6, args.size, folder)
        masks = np.zeros((len(images), len(labels.PATHOLOGIES), args.size, args.size), bool)
        masks[..., args.size // 4 : args.size // 2, args.size // 3 : args.size // 2] = True
        print(f"{args.size} px, median of {args.repeats} (alternating)")
        print("| figure | how | build s | pdf s | png s | pdf MB | png MB |\n|---|---|---|---|---|---|---|")
        for name, (rows, methods) in galleries().items():
            rng = np.random.default_rng(0)
            sets = {m: stand_in_maps(m, len(images), args.size, rng) for m in methods}
            results = {how: [] for how in saves}
            for _ in range(args.repeats):
                for how, save in saves.items():
                    started = time.perf_counter()
                    fig = gallery(images, sets, rows, masks)
                    build = time.perf_counter() - started
                    results[how].append({"build s": build, **timed(save, fig, folder)})
                    plt.close(fig)
            for how, runs in results.items():
                cells = [f"{statistics.median(r[key] for r in runs):.2f}" for key in runs[0]]
                print(f"| {name} | {how} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

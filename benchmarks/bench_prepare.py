"""CheXpert-scale preparation: decoding a CheXpert-small-sized phantom into the image cache.

Writes (or reuses) a phantom at CheXpert-v1.0-small's image size (320 wide, 390 high: not square) in
``--dir``, then times :func:`helpers.data.build_image_cache` into a ``.npy`` cache on 1 process and on all
cores, and once more on all cores without a cache file (the array returned in memory). For each run it
prints images/s, the parent's peak resident memory (sampled, and the rise above what it held before)
against the final array's size (target: <= 1.2x), the worker processes' own peak memory, and the time
projected for CheXpert-small's 191,027 frontal training images. The JPEGs are read once untimed first,
so both timed runs find them in the page cache, and the workers' one-off start (a fork server that
imports numpy, PIL and torch) is timed apart.

Run: ``python benchmarks/bench_prepare.py`` (20,000 images; writing the phantom takes a while the first
time) or ``--n 2000`` for a quick check.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import joblib  # noqa: E402
import psutil  # noqa: E402

from helpers import data, phantom  # noqa: E402
from helpers.data.cache import decode_workers  # noqa: E402

#: CheXpert-v1.0-small's frontal training images, for the projection.
CHEXPERT_SMALL_IMAGES = 191_027
#: CheXpert-v1.0-small's typical image: 320 wide, about 390 high.
WIDTH, HEIGHT = 320, 390
MIB = 2**20


class MemorySampler:
    """Peak resident memory of this process and of its descendants (fork server, workers), sampled
    every ``interval`` seconds in a thread while the ``with`` block runs.

    The list of descendants is refreshed only every ``refresh`` seconds: finding them reads every
    process's ``/proc`` entry, which would otherwise take a noticeable share of a core from the workers. The
    proportional set size (``smaps``, slower still) is summed at each refresh only: its peak is a lower bound.
    """

    def __init__(self, interval: float = 0.02, refresh: float = 0.5):
        self.interval = interval
        self.refresh = refresh
        self.process = psutil.Process()

    def __enter__(self) -> MemorySampler:
        self.before = self.process.memory_info().rss
        self.parent_peak = self.before
        self.worker_peak = 0  # the largest single descendant
        self.descendants_peak = 0  # all descendants together
        self.total_pss_peak = 0  # this process and its descendants, shared pages split among them (no double count)
        self.total_pss_before = _pss([self.process, *self.process.children(recursive=True)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        descendants, listed_at = [], -float("inf")
        while not self._stop.is_set():
            if time.monotonic() - listed_at > self.refresh:
                descendants, listed_at = self.process.children(recursive=True), time.monotonic()
                self.total_pss_peak = max(self.total_pss_peak, _pss([self.process, *descendants]))
            self.parent_peak = max(self.parent_peak, self.process.memory_info().rss)
            sizes = []
            for child in descendants:
                try:
                    sizes.append(child.memory_info().rss)
                except psutil.Error:  # a worker that just exited
                    pass
            self.worker_peak = max([self.worker_peak, *sizes])
            self.descendants_peak = max(self.descendants_peak, sum(sizes))
            self._stop.wait(self.interval)


def _pss(processes) -> int:
    """Proportional set size summed over ``processes`` (``/proc/<pid>/smaps``; read at each refresh only: slow)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:  # a worker that just exited
            pass
    return total


def ensure_phantom(folder: Path, n_images: int) -> Path:
    """The phantom of ``n_images`` training images at 320 x 390 under ``folder`` (reused when it exists)."""
    root = folder / f"chexpert-small-phantom-{n_images}"
    existed = root.exists()
    start = time.perf_counter()
    phantom.generate(root, n_images, WIDTH, seed=0, n_valid=1, height=HEIGHT, progress=True)
    print(f"phantom: {root} ({'reused' if existed else 'written'} in {time.perf_counter() - start:.0f} s)")
    return root


def read_all_files(frame, root: Path) -> None:
    """Read every image file once, so the timed runs all find them in the page cache."""
    for csv_path in frame["Path"]:
        data.resolve_image_path(root, csv_path).read_bytes()


def timed_build(frame, root: Path, size: int, workers: int, cache_file: Path | None) -> dict:
    """One build from scratch: seconds, images/s, memory figures, and the bytes' SHA-1."""
    with MemorySampler() as memory:
        start = time.perf_counter()
        images, kept, _ = data.build_image_cache(frame, root, size, cache_file, workers=workers)
        seconds = time.perf_counter() - start
    digest = hashlib.sha1()
    for first in range(0, len(images), 1024):  # after the measurement: reading the map raises this RSS
        digest.update(images[first : first + 1024].tobytes())
    return {
        "workers": workers,
        "where": "cache file" if cache_file else "in memory",
        "seconds": seconds,
        "rate": len(kept) / seconds,
        "array": images.nbytes,
        "parent_peak": memory.parent_peak,
        "parent_rise": memory.parent_peak - memory.before,
        "worker_peak": memory.worker_peak,
        "descendants_peak": memory.descendants_peak,
        "total_pss_peak": memory.total_pss_peak,
        "total_pss_rise": memory.total_pss_peak - memory.total_pss_before,
        "sha1": digest.hexdigest(),
    }


def print_table(results: list[dict], n_images: int, size: int) -> None:
    print(f"\n{n_images} images, {WIDTH} x {HEIGHT} JPEG -> {size} x {size} uint8; {joblib.cpu_count()} cores\n")
    print(
        "| processes | result | images/s | seconds | array MiB | parent peak RSS MiB (x array) | "
        "parent rise MiB (x array) | largest worker RSS MiB | all descendants MiB | "
        "all processes PSS MiB (x array) | its rise MiB (x array) | projected 191,027 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        array = max(r["array"], 1)
        projected = CHEXPERT_SMALL_IMAGES / r["rate"]
        print(
            f"| {r['workers']} | {r['where']} | {r['rate']:.0f} | {r['seconds']:.1f} | {r['array'] / MIB:.0f} | "
            f"{r['parent_peak'] / MIB:.0f} ({r['parent_peak'] / array:.2f}) | "
            f"{r['parent_rise'] / MIB:.0f} ({r['parent_rise'] / array:.2f}) | {r['worker_peak'] / MIB:.0f} | "
            f"{r['descendants_peak'] / MIB:.0f} | {r['total_pss_peak'] / MIB:.0f} "
            f"({r['total_pss_peak'] / array:.2f}) | {r['total_pss_rise'] / MIB:.0f} "
            f"({r['total_pss_rise'] / array:.2f}) | {projected / 60:.1f} min |"
        )
    same = len({r["sha1"] for r in results}) == 1
    print(f"\nsame bytes in every run: {same}")
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"this process's lifetime peak RSS (getrusage, self only, phantom writing included): {lifetime_peak:.0f} MiB")
    print(
        "Worker RSS includes the pages they share with the fork server (numpy, PIL, torch, imported once); "
        "the parent's peak includes what it held before the call (interpreter, torch, pandas)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="training images in the phantom (default 20000)")
    parser.add_argument("--size", type=int, default=224, help="side of the decoded square images (paper: 224)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "chexplain-bench-prepare",
        help="where the phantom is kept for reuse and the caches are written (default: system temp folder)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes for the parallel runs (default: all)")
    args = parser.parse_args()
    root = ensure_phantom(args.dir, args.n)
    frame = data.read_chexpert_csv(root / "train.csv")
    read_all_files(frame, root)
    parallel = decode_workers(args.workers)
    start = time.perf_counter()  # the first pool starts the fork server, which imports numpy, PIL and torch
    data.build_image_cache(frame.iloc[: 2 * parallel], root, args.size, workers=parallel)
    print(
        f"starting {parallel} workers the first time (fork server, imports), untimed below: "
        f"{time.perf_counter() - start:.1f} s"
    )
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as caches:
        for workers in dict.fromkeys([1, parallel]):  # once when there is one core
            results.append(timed_build(frame, root, args.size, workers, Path(caches) / f"images_{workers}.npy"))
            (Path(caches) / f"images_{workers}.npy").unlink()  # the disk holds one cache at a time
    results.append(timed_build(frame, root, args.size, parallel, None))
    print_table(results, len(frame), args.size)


if __name__ == "__main__":  # required: decoding workers import this script (forkserver/spawn)
    main()

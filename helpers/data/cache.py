"""Decode every image of a table once into one uint8 array, cached as ``.npy`` with sidecars.

Decoding runs on every core: worker processes write their rows straight into a preallocated
memory-mapped ``.npy`` beside the target (no image travels back through a pipe, and the parent never
holds the whole array), which is renamed into place only when complete.

The sidecars make a cache self-checking: ``<name>.paths.txt`` holds a fingerprint of the source files
(path, size and modification time of each) and the kept paths, ``<name>.skipped.csv`` the rows an
audited skip dropped. A cache is reused only when both match the rows asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import forkserver, spawn
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from helpers.data.chexpert import DatasetError
from helpers.data.images import load_image, resolve_image_path
from helpers.io import atomic_path

#: Environment variable that sets the number of decoding processes (default: every core).
WORKERS_VARIABLE = "CHEXPLAIN_DECODE_WORKERS"
#: Most rows one task decodes: enough to amortise a task's overhead, few enough that an interrupt
#: waits only for short tasks and that the cores stay balanced to the end.
MAX_CHUNK_ROWS = 256
#: By default, fewer rows than this are decoded in this process: starting the workers (a fork server
#: that imports numpy, PIL and torch) takes seconds, as long as decoding about a thousand images.
PARALLEL_MIN_ROWS = 1000
#: The module the fork server preloads to run this process's main script once (see :func:`_worker_context`),
#: and the environment variable that tells it the script's path or module name (as multiprocessing's JSON).
FORKSERVER_MAIN_MODULE = "helpers.data._forkserver_main"
FORKSERVER_MAIN_VARIABLE = "CHEXPLAIN_FORKSERVER_MAIN"
#: Tasks per worker when rows are few, so one slow chunk does not leave the other cores idle.
CHUNKS_PER_WORKER = 4


def build_image_cache(
    frame: pd.DataFrame,
    root: str | os.PathLike,
    size: int,
    cache_file: str | os.PathLike | None = None,
    on_bad: str = "raise",
    workers: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Decode every image once into a ``(n, size, size)`` uint8 array (optionally cached as ``.npy``).

    Parameters
    ----------
    frame : DataFrame
        Rows to load (a validated CheXpert CSV, possibly filtered).
    root : path-like
        Dataset folder holding ``train.csv``.
    size : int
        Side of the square images.
    cache_file : path-like, optional
        ``.npy`` file; written atomically, and read back instead of decoding when it exists and
        matches ``frame``: same paths in the same order, same size, and the same files (size and modification time of
        every image, fingerprinted in the sidecar ``.paths.txt``), so regenerated data is re-decoded.
        Without it the images are decoded through a temporary file and returned in memory.
    on_bad : {"raise", "skip"}
        What a missing or corrupt image does: raise :class:`DatasetError`, or drop the row and list it
        in the returned audit table (an audited skip).
    workers : int, optional
        Decoding processes; default the environment variable ``CHEXPLAIN_DECODE_WORKERS``, else
        every core this process may use for :data:`PARALLEL_MIN_ROWS` rows or more and 1 below. With 1 the images are
        decoded in this process.

    Returns
    -------
    images : numpy.ndarray, uint8, shape (n_kept, size, size)
        Read-only memory map of ``cache_file`` when given, else an array in memory.
    kept : DataFrame
        The rows that were loaded, in ``frame``'s order, indexed from 0.
    skipped : DataFrame
        One row per dropped image with the reason (empty unless ``on_bad="skip"``).

    Notes
    -----
    The bytes are those of :func:`~helpers.data.load_image` on each file, whatever the number of
    workers. The parent's resident memory stays about one row chunk per worker (plus the returned array
    without ``cache_file``). An interrupt or a failure removes the temporary files; the one a process killed
    outright leaves beside the cache is removed when the cache is next built (:class:`helpers.io.atomic_path`).
    Workers start from a fork server (``spawn`` where there is none), never as forks of this process,
    which are unsafe once torch runs threads here; so a script that calls this with several workers
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}.")
    fingerprint = _source_fingerprint(frame, root)
    cached = _read_cache(cache_file, frame, size, fingerprint)
    if cached is not None:
        _refuse_recorded_skips(cached[2], cache_file, on_bad)
        return cached
    files = [str(resolve_image_path(root, csv_path)) for csv_path in frame["Path"]]
    workers = _processes_for(len(files), workers)
    if cache_file is None:
        with tempfile.TemporaryDirectory(prefix="chexplain-decode-") as folder:
            npy = Path(folder) / "images.npy"
            problems = _decode_to_npy(npy, files, size, on_bad, workers)
            images = np.load(npy)
    else:
        cache_file = Path(cache_file)
        with atomic_path(cache_file) as npy:
            problems = _decode_to_npy(npy, files, size, on_bad, workers)
            # the old cache's completeness marker goes before its images are replaced: new images are never read
            # with old rows, even if this process dies before it writes their own sidecars
            _cache_sidecars(cache_file)[0].unlink(missing_ok=True)
    skipped_positions = [position for position, _ in problems]
    kept = frame.iloc[np.setdiff1d(np.arange(len(frame)), skipped_positions)].reset_index(drop=True)
    skipped = pd.DataFrame(
        [{"Path": frame["Path"].iat[position], "problem": str(error)} for position, error in problems],
        columns=["Path", "problem"],
    )
    if cache_file is not None:
        _write_sidecars(cache_file, kept, skipped, fingerprint)
        images = np.load(cache_file, mmap_mode="r")
    return images, kept, skipped


def decode_workers(workers: int | None = None) -> int:
    """Number of decoding processes: ``workers``, else ``$CHEXPLAIN_DECODE_WORKERS``, else every core."""
    if workers is not None:
        return _process_count(workers, "workers")
    setting = os.environ.get(WORKERS_VARIABLE, "").strip()
    if setting:
        return _process_count(setting, f"The environment variable {WORKERS_VARIABLE}")
    return joblib.cpu_count()  # the cores this process may use (affinity, container quota), as joblib's pools


def _processes_for(n_rows: int, workers: int | None) -> int:
    """:func:`decode_workers`, but 1 for a small job unless a count was set (argument or environment)."""
    count = decode_workers(workers)
    chosen = workers is not None or os.environ.get(WORKERS_VARIABLE, "").strip()
    return count if chosen or n_rows >= PARALLEL_MIN_ROWS else 1


def _process_count(value, name: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1 (decoding processes), got {value!r}.")
    return int(value)


def _decode_to_npy(npy: Path, files: list[str], size: int, on_bad: str, workers: int) -> list[tuple[int, Exception]]:
    """Decode ``files`` into the ``.npy`` file ``npy`` (kept rows only); the problems, in row order.

    Every row is decoded into a full-size file first (workers write disjoint rows of it); only when
    rows were skipped are the kept ones copied, a chunk at a time, into a compact file that replaces it.
    """
    offset = _create_npy(npy, len(files), size)
    problems = _decode_rows(npy, offset, files, size, on_bad, workers)
    if problems:
        keep = np.setdiff1d(np.arange(len(files)), [position for position, _ in problems])
        with atomic_path(npy) as compact:
            _copy_rows(npy, offset, compact, keep, size)
    return problems


def _create_npy(path: Path, n_rows: int, size: int) -> int:
    """Write a ``.npy`` header for ``(n_rows, size, size)`` uint8, on a disk with room for it; its data offset."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_rows, size, size))
    offset = array.offset
    del array  # unmapped: the workers write through their own maps
    _check_disk_space(path, offset + n_rows * size * size)
    return offset


def _check_disk_space(path: Path, length: int) -> None:
    """Refuse to decode into a disk without room for the whole file. The header leaves a sparse file, and a mapped
    write that finds the disk full kills its process (SIGBUS) without a message. A free-space check, not an
    allocation: glibc's ``posix_fallocate`` writes every block where the file system cannot allocate (NFS, FUSE
    mounts such as a notebook service's drive), minutes for CheXpert's 9.6 GB. Copy-on-write file systems may
    still run out later."""
    free = shutil.disk_usage(path.parent).free
    if free < length:
        raise DatasetError(
            f"No room in {path.parent} for the image cache: it needs {length / 2**30:.2f} GiB and "
            f"{free / 2**30:.2f} GiB are free there. Free disk space, or choose a cache folder on a larger disk."
        )


def _row_window(npy, offset: int, start: int, stop: int, size: int, mode: str) -> np.memmap:
    """Rows ``[start, stop)`` of a uint8 ``.npy`` as a memory map of just those rows."""
    return np.memmap(npy, np.uint8, mode, offset=offset + start * size * size, shape=(stop - start, size, size))


def _decode_chunk(npy: str, offset: int, size: int, start: int, files: list[str]) -> list[tuple[int, DatasetError]]:
    """Decode ``files`` into rows ``start...`` of ``npy`` (runs in a worker); the rows that failed.

    Only the problems travel back: the pixels go into the shared file, and mapping just this chunk's
    rows keeps the worker's memory to one chunk.
    """
    rows = _row_window(npy, offset, start, start + len(files), size, "r+")
    problems = []
    for row, file in enumerate(files):
        try:
            rows[row] = load_image(file, size)
        except DatasetError as error:
            problems.append((start + row, error))
    rows.flush()
    del rows
    return problems


def _decode_rows(npy, offset: int, files: list[str], size: int, on_bad: str, workers: int) -> list:
    """Run :func:`_decode_chunk` over every chunk of rows, in this process or in ``workers`` processes.

    Results are read in row order, so with ``on_bad="raise"`` the error raised is the first bad row's,
    as a sequential decode would raise, and the chunks not yet started are cancelled.
    """
    chunk = max(1, min(MAX_CHUNK_ROWS, math.ceil(len(files) / (workers * CHUNKS_PER_WORKER))))
    tasks = [(str(npy), offset, size, start, files[start : start + chunk]) for start in range(0, len(files), chunk)]
    problems = []
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            problems += _checked(_decode_chunk(*task), on_bad)
        return problems
    with _process_pool(min(workers, len(tasks))) as pool:
        for future in [pool.submit(_decode_chunk, *task) for task in tasks]:
            problems += _checked(future.result(), on_bad)
    return problems


def _worker_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` (``spawn`` where it does not exist): forking this process is unsafe once torch runs
    threads here.

    The fork server imports this module (hence numpy, PIL, pandas and torch) and the main script, if any, once,
    when it starts; workers fork from it ready. Without that, every worker of every pool would import them again
    (multiprocessing runs the main script in each worker): seconds per pool. Python's own preload of
    ``"__main__"`` never reaches the server (:mod:`helpers.data._forkserver_main` does it instead; ``"__main__"``
    stays listed for a Python that fixes it).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", FORKSERVER_MAIN_MODULE, __name__])  # no effect once one runs
    preparation = spawn.get_preparation_data("decoding")
    main = {key: preparation[key] for key in ("init_main_from_path", "init_main_from_name") if key in preparation}
    if main:  # a script or ``python -m``; nothing in a notebook kernel
        _start_fork_server(json.dumps(main))
    return context


def _start_fork_server(main: str) -> None:
    """Start the fork server now, if none runs, with ``main`` in :data:`FORKSERVER_MAIN_VARIABLE` of its environment
    only (this process's is restored, so no other child inherits it)."""
    previous = os.environ.get(FORKSERVER_MAIN_VARIABLE)
    os.environ[FORKSERVER_MAIN_VARIABLE] = main
    try:
        forkserver.ensure_running()
    finally:
        if previous is None:
            del os.environ[FORKSERVER_MAIN_VARIABLE]
        else:
            os.environ[FORKSERVER_MAIN_VARIABLE] = previous


def _checked(problems: list[tuple[int, DatasetError]], on_bad: str) -> list[tuple[int, DatasetError]]:
    if problems and on_bad == "raise":
        raise problems[0][1]
    return problems


@contextmanager
def _process_pool(workers: int):
    """A process pool that, on any exit, cancels the tasks not started and waits for the running ones
    (the plain ``with`` would first finish every queued task, e.g. after Ctrl-C)."""
    pool = ProcessPoolExecutor(workers, mp_context=_worker_context())
    finished = False
    try:
        yield pool
        finished = True
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"A decoding process died ({error}); out of memory is the usual cause, a full disk under the cache "
            f"another. Run again with fewer processes (workers=..., or the environment variable {WORKERS_VARIABLE})."
        ) from error
    finally:
        # after a failure, wait: no worker may still write to a file about to be removed. After success every
        # task has returned (its rows flushed); waiting for the workers to exit cost 10.7 s on a 16-core machine
        # (benchmarks/results/bench_gpu_h100.log), workers then still running the benchmark script at their start
        pool.shutdown(wait=not finished, cancel_futures=True)


def _copy_rows(source: Path, source_offset: int, target: Path, keep: np.ndarray, size: int) -> None:
    """Write rows ``keep`` of the ``.npy`` ``source`` as the ``.npy`` ``target``, a chunk at a time
    (each chunk mapped on its own, so memory stays one chunk whatever the array's size)."""
    target_offset = _create_npy(target, len(keep), size)
    for first in range(0, len(keep), MAX_CHUNK_ROWS):
        rows = keep[first : first + MAX_CHUNK_ROWS]
        window = _row_window(source, source_offset, rows[0], rows[-1] + 1, size, "r")
        out = _row_window(target, target_offset, first, first + len(rows), size, "r+")
        out[:] = window[rows - rows[0]]
        out.flush()
        del window, out


def _cache_sidecars(cache_file: Path) -> tuple[Path, Path]:
    return cache_file.with_suffix(".paths.txt"), cache_file.with_suffix(".skipped.csv")


def _source_fingerprint(frame: pd.DataFrame, root) -> str:
    """Hash of every image file's path, size and modification time (a stat per file, no reading)."""
    digest = hashlib.sha1()
    for csv_path in frame["Path"]:
        try:
            info = resolve_image_path(root, csv_path).stat()
            digest.update(f"{csv_path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{csv_path}:missing\n".encode())
    return digest.hexdigest()


def _read_cache(cache_file, frame: pd.DataFrame, size: int, fingerprint: str):
    if cache_file is None or not Path(cache_file).is_file():
        return None
    cache_file = Path(cache_file)
    paths_file, skipped_file = _cache_sidecars(cache_file)
    if not (paths_file.is_file() and skipped_file.is_file()):
        return None
    header, *cached_paths = paths_file.read_text().splitlines()
    if header != f"# source {fingerprint}":
        return None
    skipped = pd.read_csv(skipped_file)
    # The cache holds frame's rows in frame's order, less the skipped ones (a path listed twice, twice).
    dropped = frame["Path"].isin(skipped["Path"])
    if frame["Path"][~dropped].tolist() != cached_paths or frame["Path"][dropped].tolist() != skipped["Path"].tolist():
        return None
    try:
        images = np.load(cache_file, mmap_mode="r")
    except (ValueError, OSError):  # cut short (an interrupted copy) or not a .npy: built again
        return None
    if images.shape != (len(cached_paths), size, size):
        return None
    return images, frame[~dropped].reset_index(drop=True), skipped


def _refuse_recorded_skips(skipped: pd.DataFrame, cache_file, on_bad: str) -> None:
    """With ``on_bad="raise"``, a cache built with ``on_bad="skip"`` that dropped rows raises as a fresh decode
    would, with the first dropped row's recorded problem."""
    if on_bad == "raise" and not skipped.empty:
        raise DatasetError(
            f"{skipped['problem'].iat[0]} (recorded in {_cache_sidecars(Path(cache_file))[1]} when this cache was "
            f"built with on_bad='skip', which dropped {len(skipped)} rows; pass on_bad='skip' to use it as it is)"
        )


def _write_sidecars(cache_file: Path, kept: pd.DataFrame, skipped: pd.DataFrame, fingerprint: str) -> None:
    """The audit and the fingerprint, after the images: a ``.paths.txt`` marks a complete cache."""
    paths_file, skipped_file = _cache_sidecars(cache_file)
    with atomic_path(skipped_file) as tmp:
        skipped.to_csv(tmp, index=False)
    with atomic_path(paths_file) as tmp:  # written last: its presence marks a complete cache
        Path(tmp).write_text("\n".join([f"# source {fingerprint}", *kept["Path"]]) + "\n")

"""helpers.pools.release_worker_pools: no child process left (the kernel's shutdown waits on none), no
temporary file left, and the pools work again afterwards."""

import json
import subprocess
import sys

#: Runs in a fresh interpreter, so that no other test's pools are this process's children.
SCRIPT = """
import atexit, glob, json, multiprocessing, os, tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil
from joblib import Parallel, delayed

from helpers.pools import release_worker_pools


def children():
    # psutil lists zombies too: a child that died and was not reaped still holds up a kernel's shutdown
    return len(psutil.Process().children(recursive=True))


def memmap_folders():
    pattern = f"joblib_memmapping_folder_{os.getpid()}_*"
    return sorted(f for root in {"/dev/shm", tempfile.gettempdir()} for f in glob.glob(os.path.join(root, pattern)))


def use_pools():
    # small arguments: nothing to memory-map; joblib starts its workers and their manager
    signs = Parallel(n_jobs=2)(delayed(abs)(x) for x in (-1, -2))
    big = np.ones(500_000)  # 4 MB: joblib hands it to the workers as a memory map in a temporary folder
    # reuses the workers, and registers a folder for a manager it discards (joblib's issue #1620)
    totals = Parallel(n_jobs=2)(delayed(np.sum)(big) for _ in range(4))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        absolute = list(pool.map(abs, [-1, -2]))
    return [float(t) for t in totals], signs, absolute


report = {"first": use_pools(), "children_before": children(), "folders_before": len(memmap_folders())}
release_worker_pools()
report.update(children_after=children(), folders_after=memmap_folders())
report["again"] = use_pools()
release_worker_pools()
release_worker_pools()  # nothing left to stop: no error
report["children_end"] = children()
atexit._run_exitfuncs()  # what the interpreter runs at exit: no finalizer left that starts a tracker again
report["children_exit"] = children()
print(json.dumps(report))
"""


def test_release_leaves_no_child_and_no_memmap_and_pools_restart(tmp_path):
    finished = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["first"] == report["again"] == [[500_000.0] * 4, [1, 2], [1, 2]]
    # joblib's 2 workers, its resource tracker, multiprocessing's tracker and the fork server
    assert report["children_before"] >= 4, report
    assert report["folders_before"] >= 1, report  # joblib 1.6 leaves one folder per call until exit
    assert report["children_after"] == 0, report
    assert report["folders_after"] == [], "the memory-mapped arrays are deleted with the workers"
    assert report["children_end"] == report["children_exit"] == 0, report
    assert "leaked" not in finished.stderr, "the trackers found nothing left to clean: " + finished.stderr

"""Stopping the processes a kernel keeps after its process pools, so that it shuts down at once.

joblib keeps its loky workers for reuse; a process pool leaves a resource tracker behind (loky's and
multiprocessing's, which ignore SIGTERM by design) and, with the ``"forkserver"`` start method (the image
cache's decoding), the fork server, which dies on SIGTERM but stays a child until its parent reaps it. A Jupyter
kernel asked to shut down sends SIGTERM to its children and waits, with a growing back-off, until none is left;
its manager kills it first, about 2.5 s later (papermill, nbmake, JupyterLab's restart).
:func:`release_worker_pools` ends them the orderly way instead.

Written here because neither joblib nor multiprocessing has a public call for it: it uses loky's reusable
executor and the ``_stop`` methods of the trackers and the fork server (the ones their own tests use), and
leaves alone any that a version lacks.
"""

from __future__ import annotations

import atexit
import gc
import types
from multiprocessing import forkserver
from multiprocessing import resource_tracker as multiprocessing_tracker


def release_worker_pools() -> None:
    """Stop joblib's reusable workers (deleting their memory-mapped arrays), the resource trackers and the fork
    server.

    Call it where a notebook has no more parallel work (its last cell): the next ``joblib.Parallel`` or pool
    starts fresh ones. Nothing is lost: the workers hold no results, and a tracker asked to stop after the
    folders it tracks were deleted has nothing left to clean.
    """
    from joblib.externals.loky import reusable_executor
    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        # joblib's MemmappingExecutor: terminate() waits for the workers to stop, then deletes its memmap folders
        (getattr(executor, "terminate", None) or executor.shutdown)()
    tracker = getattr(loky_tracker, "_resource_tracker", None)
    if getattr(tracker, "_pid", None) is not None:  # joblib ran a pool: it may have left folders registered
        _run_memmap_folder_finalizers()
    servers = (
        getattr(forkserver, "_forkserver", None),
        tracker,
        getattr(multiprocessing_tracker, "_resource_tracker", None),
    )
    for server in servers:
        stop = getattr(server, "_stop", None)
        if stop is not None:
            stop()


#: The exit finalizer joblib registers (``atexit``) for each memory-map folder name it registers with its tracker
_FOLDER_FINALIZER = "TemporaryResourcesManager.register_folder_finalizer.<locals>._cleanup"


def _run_memmap_folder_finalizers() -> None:
    """Run now, once, the exit finalizers of joblib's memory-map folders, so that its tracker stops with nothing
    registered.

    joblib (1.6; its issue #1620) registers a memory-map folder name with its resource tracker for every
    ``Parallel`` call, and a finalizer that unregisters it at exit. A call that reuses the workers registers the
    name for a manager it then discards, and ``terminate`` unregisters only the folders of the workers' own manager
    that exist; so the tracker, stopped before the exit, warned of "leaked folder objects", and the finalizers then
    started a new tracker at exit. Each finalizer deletes its folder if there is one (the workers have stopped:
    nothing maps a file in it) and unregisters it. The discarded managers keep no reference to theirs, hence the
    search of the collector's objects (about 0.2 s).
    """
    for cleanup in gc.get_objects():
        if type(cleanup) is types.FunctionType and cleanup.__qualname__ == _FOLDER_FINALIZER:
            cleanup()
            atexit.unregister(cleanup)

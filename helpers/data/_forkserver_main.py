"""Preloaded by the decoding pools' fork server only (:func:`helpers.data.cache._worker_context`): runs the parent's
main script there once, so that the workers forked from it find it loaded instead of each running it again.

Written by hand because the standard library means to and does not: ``"__main__"`` in a fork server's preload list
should load the script into the server, but in the Pythons this project runs on (3.11 here, 3.12 on the GPU
machines) the server never receives the script's path (CPython gh-98552, gh-126631), so ``multiprocessing`` runs
the script in every worker it starts. For a script that imports torch and the explainers at the top (the
benchmarks), a second 2-worker pool on 1,800 small images took 5.2 s instead of 0.5 s on the 2-core CI machine.
A notebook kernel has no main script and is not concerned.

The parent names the script (its path, or its module name under ``python -m``) in
:data:`~helpers.data.cache.FORKSERVER_MAIN_VARIABLE`, in the server's environment only (read here, then removed, so
the workers do not inherit it). Nothing else imports this module. The script is prepared as multiprocessing
prepares a worker (:func:`multiprocessing.spawn.prepare`: run as ``__mp_main__``, skipped where already loaded),
with process creation refused, as the fork server itself would do it, so an unguarded script cannot start pools
from the server. A script that fails here is left to the workers, which run it as they would without this module
and report its error there. What a script's top level starts (threads, a CUDA context) now lives in the process
the workers fork from: as multiprocessing already asks, a script's top level should only import and define.
"""

from __future__ import annotations

import json
import os
from multiprocessing import process, spawn

from helpers.data.cache import FORKSERVER_MAIN_VARIABLE


def load_main(main: dict[str, str]) -> bool:
    """Prepare ``main`` (``{"init_main_from_path": path}`` or ``{"init_main_from_name": module}``, from
    :func:`multiprocessing.spawn.get_preparation_data`) as a worker would; whether it went through."""
    current = process.current_process()
    current._inheriting = True  # what multiprocessing checks to refuse new processes while a main script loads
    try:
        spawn.prepare(main)
        return True
    except (Exception, SystemExit):  # the workers run it themselves and report the error
        return False
    finally:
        del current._inheriting


_main = os.environ.pop(FORKSERVER_MAIN_VARIABLE, None)
if _main:
    load_main(json.loads(_main))

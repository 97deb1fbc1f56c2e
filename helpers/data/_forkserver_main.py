"""Preloaded by the decoding pools' fork server only (:func:`helpers.data.cache._worker_context`): runs the parent's
main script there once, so that the workers forked from it find it loaded instead of each running it again.

Written by hand because the standard library means to and does not: ``"__main__"`` in a fork server's preload list
should load the script into the server, but in the Pythons this project runs on (3.11 here, 3.12 on the GPU
machines) the server never receives the script's path (CPython gh-98552, gh-126631), so ``multiprocessing`` runs
the script in every worker it starts. For a script that imports torch and the explainers at the top (the
benchmarks), a second 2-worker pool on 1,800 small images took 5.2 s instead of 0.5 s on the 2-core CI machine.
A notebook kernel has no main script and is not concerned.

The parent names the script in :data:`~helpers.data.cache.FORKSERVER_MAIN_VARIABLE`, in the server's environment
only (read here, then removed, so the workers do not inherit it). Nothing else imports this module. As the fork
server itself would, the script runs as ``__mp_main__`` with process creation refused, so an unguarded
script cannot start pools from the server. A script that fails here is left to the workers, which run it as they
would without this module and report its error there.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import process, spawn

from helpers.data.cache import FORKSERVER_MAIN_VARIABLE


def load_main(path: str) -> bool:
    """Run the script at ``path`` as ``__mp_main__`` unless it is loaded already; whether it is loaded now."""
    if getattr(sys.modules.get("__main__"), "__file__", None) == path:  # a Python whose fork server did it
        return True
    if os.path.splitext(os.path.basename(path))[0] == "ipython":  # unguarded; the workers skip it too
        return False
    current = process.current_process()
    current._inheriting = True  # what multiprocessing checks to refuse new processes while a main script loads
    try:
        spawn.import_main_path(path)
        return True
    except (Exception, SystemExit):  # the workers run it themselves and report the error
        return False
    finally:
        del current._inheriting


_path = os.environ.pop(FORKSERVER_MAIN_VARIABLE, None)
if _path:
    load_main(_path)

"""Atomic file writes: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no temporary is ever judged stale
    fcntl = None


class atomic_path:
    """Context manager yielding a temporary path that is renamed onto ``target`` on success.

    The temporary file lives in ``target``'s folder (so the rename is atomic on one file system);
    on an exception it is removed and ``target`` is left as it was. Its name carries this machine's name and
    process id, and the writer holds an advisory lock on it until the end, so that the temporaries of ``target``
    left by a process killed outright (a cache of CheXpert's size is ~10 GB) are removed by the next write of
    ``target`` (:func:`remove_stale_temporaries`).

    Parameters
    ----------
    target : path-like
        The file to write; its parent folders are created.

    Examples
    --------
    >>> with atomic_path("out/table.csv") as tmp:  # doctest: +SKIP
    ...     frame.to_csv(tmp, index=False)
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.target)
        prefix = f".{self.target.name}.{socket.gethostname()}-{os.getpid()}."
        self._lock, self.tmp = _create_temporary(self.target.parent, prefix)
        if fcntl is not None:
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # held while this process lives: the file is not stale
        else:  # no lock to hold, and Windows renames or deletes no file that is still open
            os.close(self._lock)
            self._lock = None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                os.replace(self.tmp, self.target)
            else:
                self.tmp.unlink(missing_ok=True)
        finally:
            if self._lock is not None:
                os.close(self._lock)


def _create_temporary(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new empty file ``folder/<prefix><random>.tmp``, opened; its descriptor and path.

    Written by hand because :func:`tempfile.mkstemp` makes files only their owner may read, and the rename would
    keep that: a cache or table shared with other users must get the mode any new file gets (0666 less the umask).
    """
    return _unused_name(folder, prefix, ".tmp", lambda path: os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666))


def new_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>`` with the mode any new folder gets (0777 less the umask), to
    fill and then rename into place; :func:`tempfile.mkdtemp` would make it, and what is renamed from it, private."""
    return _unused_name(Path(parent), prefix, "", lambda path: path.mkdir(mode=0o777))[1]


def _unused_name(folder: Path, prefix: str, suffix: str, create):
    """``(create(path), path)`` for the first random ``folder/<prefix><random><suffix>`` that ``create`` makes anew
    (it must raise :class:`FileExistsError` for a taken name, as exclusive creation does)."""
    while True:
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return create(path), path
        except FileExistsError:
            continue


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` that :class:`atomic_path` made on this machine in a process that no
    longer runs and that nobody holds locked; returns them. Those of running processes (this one included), those
    still locked (a writer in another process namespace under the same machine name), those of other machines
    sharing the folder, and those of other names are left alone. A temporary of a temporary of ``target`` (a file
    rewritten in place before its rename, such as a compacted cache) counts as one of ``target``'s, judged by its
    own writer."""
    target, host = Path(target), socket.gethostname()
    pattern = re.compile(rf"\.+{re.escape(target.name)}\.(?:.*\.)?{re.escape(host)}-(?P<pid>\d+)\.[^.]+\.tmp")
    removed = []
    for candidate in target.parent.glob(f".*{target.name}.*.tmp"):
        found = pattern.fullmatch(candidate.name)
        if found and not _running(int(found["pid"])):
            if _unlink_unless_locked(candidate):
                removed.append(candidate)
    return removed


def _unlink_unless_locked(path: Path) -> bool:
    """Delete ``path`` if no process holds its lock (taken without waiting); whether it was deleted."""
    if fcntl is None:
        return False
    try:
        handle = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its writer is alive
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(handle)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True

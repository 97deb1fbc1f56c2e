"""helpers.io.atomic_path: a file is either the old one or the whole new one, never a half-written one."""

import contextlib
import fcntl
import os
import socket
import stat
import subprocess
import sys

import pytest

from helpers.io import atomic_path, new_folder, remove_stale_temporaries


class Interrupted(RuntimeError):
    pass


def test_target_appears_whole_only_on_success(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with atomic_path(target) as tmp:
        tmp.write_text("new, first half\n")
        assert target.read_text() == "old\n", "nothing new is visible before the body finishes"
        with open(tmp, "a") as handle:
            handle.write("second half\n")
    assert target.read_text() == "new, first half\nsecond half\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"], "no temporary file left behind"


def test_body_that_raises_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(Interrupted):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Interrupted
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"], "no temporary file left behind"


def test_body_that_raises_creates_no_target(tmp_path):
    target = tmp_path / "new.npy"
    with pytest.raises(Interrupted):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"\x00" * 10)
            raise Interrupted
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_sits_beside_the_target_and_parents_are_made(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target  # same folder: the rename is atomic
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_still_importable_from_helpers_data():
    from helpers import data

    assert data.atomic_path is atomic_path


def test_temporaries_of_processes_no_longer_running_are_removed_by_the_next_write(tmp_path):
    target, host = tmp_path / "cache.npy", socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    stale = tmp_path / f".cache.npy.{host}-{dead}.k2j4_x9a.tmp"  # what a killed run leaves
    live = tmp_path / f".cache.npy.{host}-{os.getpid()}.abcdefgh.tmp"  # this process may be writing it
    elsewhere = tmp_path / f".cache.npy.other-machine-{dead}.abcdefgh.tmp"  # a process on another machine
    unknown = tmp_path / ".cache.npy.killed.tmp"  # not named by atomic_path: nothing to judge it by
    neighbour = tmp_path / f".other.npy.{host}-{dead}.abcdefgh.tmp"  # another target's
    locked = tmp_path / f".cache.npy.{host}-{dead}.lockedxx.tmp"  # a writer whose process id we cannot see
    for path in (stale, live, elsewhere, unknown, neighbour, locked):
        path.write_bytes(b"partial")
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with atomic_path(target) as tmp:
            assert not stale.exists() and tmp.name.startswith(f".cache.npy.{host}-{os.getpid()}.")
            assert remove_stale_temporaries(target) == []  # its own temporary is locked and its process alive
            tmp.write_text("whole")
    finally:
        os.close(holder)
    kept = (live, elsewhere, unknown, neighbour, locked)
    assert all(path.exists() for path in kept) and target.read_text() == "whole"
    assert remove_stale_temporaries(target) == [locked]  # its writer let go


def test_a_temporary_of_a_temporary_left_by_a_killed_run_is_removed_too(tmp_path):
    """A cache compacted in place writes a temporary of its own temporary: a kill then leaves both."""
    target, host = tmp_path / "cache.npy", socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    outer = tmp_path / f".cache.npy.{host}-{dead}.k2j4_x9a.tmp"
    nested = tmp_path / f"..cache.npy.{host}-{dead}.k2j4_x9a.tmp.{host}-{dead}.abcdefgh.tmp"
    live = tmp_path / f"..cache.npy.{host}-{dead}.k2j4_x9a.tmp.{host}-{os.getpid()}.abcdefgh.tmp"
    other = tmp_path / f"..xcache.npy.{host}-{dead}.k2j4_x9a.tmp.{host}-{dead}.abcdefgh.tmp"
    for path in (outer, nested, live, other):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(target)) == sorted([outer, nested])
    assert live.exists() and other.exists()


def test_written_files_and_new_folders_get_the_mode_of_any_new_file_not_a_private_one(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a,b\n")
        folder = new_folder(tmp_path, ".phantom.")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == 0o644  # mkstemp's would be 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and folder.name.startswith(".phantom.")


def _open_descriptors_of(path) -> list[str]:
    """The descriptors of this process open on ``path`` (Linux's /proc)."""
    folder = "/proc/self/fd"
    return [fd for fd in os.listdir(folder) if os.path.realpath(os.path.join(folder, fd)) == os.path.realpath(path)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads the open descriptors from Linux's /proc")
@pytest.mark.parametrize("fails", [False, True])
def test_without_advisory_locks_the_temporary_is_closed_before_its_rename_or_removal(tmp_path, monkeypatch, fails):
    """Windows (no fcntl) renames or deletes no file that is still open: every write failed with WinError 32."""
    from helpers import io

    open_at = []
    rename, unlink = os.replace, type(tmp_path).unlink
    monkeypatch.setattr(io, "fcntl", None)

    def checked(action):
        return lambda path, *args, **kwargs: (open_at.append(_open_descriptors_of(path)), action(path, *args, **kwargs))

    monkeypatch.setattr(io.os, "replace", checked(rename))
    monkeypatch.setattr(type(tmp_path), "unlink", checked(unlink))
    target = tmp_path / "table.csv"
    with pytest.raises(Interrupted) if fails else contextlib.nullcontext():
        with atomic_path(target) as tmp:
            tmp.write_text("a,b\n")
            if fails:
                raise Interrupted
    assert open_at == [[]]
    assert target.exists() != fails and [p.name for p in tmp_path.iterdir()] == ([] if fails else ["table.csv"])

"""The image cache: parallel decoding into a memory map, audited skips, atomicity and reuse."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import data, phantom
from helpers.data import cache

SIZE = 32
WORKERS = 2


@pytest.fixture
def phantom_copy(small_phantom, tmp_path):
    """A writable copy of the session phantom, for tests that break or change it."""
    return shutil.copytree(small_phantom, tmp_path / "CheXpert-v1.0-small")


@pytest.fixture
def frame(small_phantom):
    return data.read_chexpert_csv(small_phantom / "train.csv")


def sequential(frame, root) -> np.ndarray:
    """The reference: every file through ``load_image``, one after the other."""
    return np.stack([data.load_image(data.resolve_image_path(root, p), SIZE) for p in frame["Path"]])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_parallel_decode_writes_the_sequential_bytes(small_phantom, frame, tmp_path):
    expected = sequential(frame, small_phantom)
    images, kept, skipped = data.build_image_cache(frame, small_phantom, SIZE, tmp_path / "c.npy", workers=WORKERS)
    assert (tmp_path / "c.npy").read_bytes() == npy_bytes(expected)
    assert images.dtype == np.uint8 and np.array_equal(images, expected)
    assert kept["Path"].tolist() == frame["Path"].tolist() and skipped.empty
    in_memory, _, _ = data.build_image_cache(frame, small_phantom, SIZE, workers=WORKERS)
    in_process, _, _ = data.build_image_cache(frame, small_phantom, SIZE, workers=1)
    assert type(in_memory) is np.ndarray and np.array_equal(in_memory, expected)
    assert np.array_equal(in_process, expected)
    assert leftovers(tmp_path) == ["c.npy", "c.paths.txt", "c.skipped.csv"]


def test_skip_compacts_the_kept_rows_and_raise_names_the_first_bad_file(phantom_copy, tmp_path):
    frame = data.read_chexpert_csv(phantom_copy / "train.csv")
    files = [data.resolve_image_path(phantom_copy, p) for p in frame["Path"]]
    files[3].write_bytes(b"not a jpeg")
    files[50].unlink()  # in another chunk than row 3, which a worker may finish first
    with pytest.raises(data.DatasetError, match=f"Corrupt or truncated image: {files[3]}"):
        data.build_image_cache(frame, phantom_copy, SIZE, tmp_path / "cache" / "c.npy", workers=WORKERS)
    assert leftovers(tmp_path / "cache") == []
    images, kept, skipped = data.build_image_cache(
        frame, phantom_copy, SIZE, tmp_path / "cache" / "c.npy", on_bad="skip", workers=WORKERS
    )
    good = frame.drop(index=frame.index[[3, 50]])
    assert np.array_equal(images, sequential(good, phantom_copy))
    assert kept["Path"].tolist() == good["Path"].tolist()
    assert skipped["Path"].tolist() == [frame["Path"].iat[3], frame["Path"].iat[50]]
    assert "Corrupt" in skipped["problem"].iat[0] and "missing" in skipped["problem"].iat[1]
    assert leftovers(tmp_path / "cache") == ["c.npy", "c.paths.txt", "c.skipped.csv"]
    # the cache with skipped rows is not passed off as complete to a caller who asked for errors
    with pytest.raises(data.DatasetError, match=f"Corrupt or truncated image: {files[3]}.*dropped 2 rows"):
        data.build_image_cache(frame, phantom_copy, SIZE, tmp_path / "cache" / "c.npy", workers=WORKERS)


def test_interrupted_decode_leaves_the_old_cache_and_no_temporary_file(phantom_copy, tmp_path, monkeypatch):
    frame = data.read_chexpert_csv(phantom_copy / "train.csv")
    target = tmp_path / "cache" / "c.npy"
    old, _, _ = data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    old_bytes = target.read_bytes()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data.resolve_image_path(phantom_copy, frame["Path"].iat[0]))
    (tmp_path / "cache" / ".c.npy.killed.tmp").write_bytes(b"left by a killed run")
    checked_chunks = []

    def interrupt_at_the_second_chunk(problems, on_bad):
        checked_chunks.append(problems)
        if len(checked_chunks) == 2:
            raise KeyboardInterrupt
        return problems

    monkeypatch.setattr(cache, "_checked", interrupt_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    assert leftovers(tmp_path / "cache") == [".c.npy.killed.tmp", "c.npy", "c.paths.txt", "c.skipped.csv"]
    assert target.read_bytes() == old_bytes
    monkeypatch.undo()
    images, _, _ = data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    assert images[0].max() == 0 and old[0].max() > 0 and np.array_equal(images[1:], old[1:])
    assert np.array_equal(images, sequential(frame, phantom_copy))


def test_a_rebuild_that_dies_before_its_sidecars_never_serves_its_images_under_the_old_rows(
    small_phantom, frame, tmp_path, monkeypatch
):
    target = tmp_path / "c.npy"
    data.build_image_cache(frame, small_phantom, SIZE, target, workers=1)
    reversed_rows = frame.iloc[::-1]  # the same files in another order: the old sidecar's paths sort equal

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_write_sidecars", killed)  # dies after the rename, before the new sidecars
    with pytest.raises(KeyboardInterrupt):
        data.build_image_cache(reversed_rows, small_phantom, SIZE, target, workers=1)
    monkeypatch.undo()
    images, kept, _ = data.build_image_cache(frame, small_phantom, SIZE, target, workers=1)
    assert kept["Path"].tolist() == frame["Path"].tolist()
    assert np.array_equal(images, sequential(frame, small_phantom))


def test_a_reused_cache_returns_the_rows_a_fresh_decode_returns(small_phantom, frame, tmp_path):
    """The same path listed twice, and rows in another order: reuse must give the fresh decode's rows and images."""
    twice = frame.iloc[[0, 1, 0, 2]].set_axis([7, 8, 9, 10])
    target = tmp_path / "c.npy"
    fresh = data.build_image_cache(twice, small_phantom, SIZE, target, workers=1)
    reused = data.build_image_cache(twice, small_phantom, SIZE, target, workers=1)
    for images, kept, _ in (fresh, reused):
        assert kept["Path"].tolist() == twice["Path"].tolist() and kept.index.tolist() == [0, 1, 2, 3]
        assert np.array_equal(images, sequential(twice, small_phantom))
    reordered = frame.iloc[[2, 0, 1]]
    images, kept, _ = data.build_image_cache(reordered, small_phantom, SIZE, target, workers=1)
    assert kept["Path"].tolist() == reordered["Path"].tolist()
    assert np.array_equal(images, sequential(reordered, small_phantom))


def test_failure_in_this_process_leaves_no_temporary_file(small_phantom, frame, tmp_path, monkeypatch):
    calls = []

    def fail_at_the_fifth_image(path, size):
        calls.append(path)
        if len(calls) == 5:
            raise MemoryError("injected")
        return np.zeros((size, size), np.uint8)

    monkeypatch.setattr(cache, "load_image", fail_at_the_fifth_image)
    with pytest.raises(MemoryError, match="injected"):
        data.build_image_cache(frame, small_phantom, SIZE, tmp_path / "cache" / "c.npy", workers=1)
    assert leftovers(tmp_path / "cache") == []


def test_cache_is_reused_when_unchanged_and_redone_when_a_file_changes(phantom_copy, tmp_path, monkeypatch):
    frame = data.read_chexpert_csv(phantom_copy / "train.csv").iloc[:12]
    target = tmp_path / "c.npy"
    first, _, _ = data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    written = target.stat()

    def no_decoding(*args):
        raise AssertionError("decoded although the cache matches")

    with monkeypatch.context() as patch:
        patch.setattr(cache, "_decode_to_npy", no_decoding)
        again, kept, _ = data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    assert np.array_equal(again, first) and kept["Path"].tolist() == frame["Path"].tolist()
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    changed = data.resolve_image_path(phantom_copy, frame["Path"].iat[7])
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(changed)
    redone, _, _ = data.build_image_cache(frame, phantom_copy, SIZE, target, workers=WORKERS)
    assert redone[7].min() == 255 and first[7].min() < 255
    assert np.array_equal(np.delete(redone, 7, axis=0), np.delete(first, 7, axis=0))


def test_a_cache_cut_short_is_built_again(small_phantom, frame, tmp_path):
    frame = frame.iloc[:6]
    target = tmp_path / "c.npy"
    first = np.array(data.build_image_cache(frame, small_phantom, SIZE, target, workers=1)[0])  # not a map of it
    with open(target, "r+b") as file:  # an interrupted copy of the run folder: the sidecars whole, the images not
        file.truncate(target.stat().st_size - 100)
    again, kept, _ = data.build_image_cache(frame, small_phantom, SIZE, target, workers=1)
    assert np.array_equal(again, first) and len(kept) == 6
    assert target.stat().st_size == len(npy_bytes(first))


def test_prepared_images_cut_short_are_named(small_phantom, tmp_path):
    data.prepare(small_phantom, tmp_path / "cache", SIZE)
    npy = tmp_path / "cache" / f"val_{SIZE}.npy"
    with open(npy, "r+b") as file:
        file.truncate(npy.stat().st_size - 100)
    with pytest.raises(data.DatasetError, match=f"val_{SIZE}.npy.*01_prepare_data"):
        data.load_prepared(tmp_path / "cache", SIZE)


def test_a_full_disk_is_a_clear_error_before_decoding_and_leaves_no_file(small_phantom, frame, tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr(cache, "load_image", lambda path, size: decoded.append(path) or np.zeros((size, size)))
    needed = 128 + 4 * SIZE * SIZE  # header and rows
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=needed - 1))
    with pytest.raises(data.DatasetError, match=r"No room in .*cache for the image cache: it needs 0\.00 GiB"):
        data.build_image_cache(frame.iloc[:4], small_phantom, SIZE, tmp_path / "cache" / "c.npy", workers=1)
    assert decoded == [] and leftovers(tmp_path / "cache") == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=needed))  # just enough
    images, _, _ = data.build_image_cache(frame.iloc[:4], small_phantom, SIZE, tmp_path / "cache" / "c.npy", workers=1)
    assert len(decoded) == 4 and images.shape == (4, SIZE, SIZE)


def test_worker_count_from_argument_environment_or_cores(monkeypatch):
    monkeypatch.delenv(cache.WORKERS_VARIABLE, raising=False)
    monkeypatch.setattr(cache.joblib, "cpu_count", lambda: 5)  # the cores this process may use, not the machine's
    assert cache.decode_workers() == 5
    monkeypatch.setenv(cache.WORKERS_VARIABLE, "3")
    assert cache.decode_workers() == 3 and cache.decode_workers(2) == 2
    monkeypatch.setenv(cache.WORKERS_VARIABLE, "many")
    with pytest.raises(ValueError, match="CHEXPLAIN_DECODE_WORKERS must be a whole number >= 1.*'many'"):
        cache.decode_workers()
    with pytest.raises(ValueError, match="workers must be a whole number >= 1"):
        cache.decode_workers(0)


def test_non_square_phantom_resizes_images_and_masks_together(tmp_path):
    """A 40 x 52 (portrait) phantom is the 52 px square one resized: same rows, images and masks aligned."""
    square = phantom.generate(tmp_path / "square", 10, 52, seed=4, n_valid=2, min_prevalence=0.3)
    portrait = phantom.generate(tmp_path / "portrait", 10, 40, seed=4, n_valid=2, min_prevalence=0.3, height=52)
    assert json.loads((portrait / phantom.MANIFEST).read_text())["height"] == 52
    assert "height" not in json.loads((square / phantom.MANIFEST).read_text())
    frame = data.read_chexpert_csv(portrait / "train.csv")
    assert frame.equals(data.read_chexpert_csv(square / "train.csv"))
    for csv_path in frame["Path"]:
        with Image.open(data.resolve_image_path(portrait, csv_path)) as image:
            assert image.size == (40, 52)
            written = np.asarray(image, dtype=float)
        with Image.open(data.resolve_image_path(square, csv_path)) as image:
            resized = np.asarray(image.resize((40, 52), Image.Resampling.BILINEAR), dtype=float)
        assert np.abs(written - resized).mean() < 3, "the image is the square render resized (JPEG noise aside)"
    square_rle, portrait_rle = (json.loads((f / "gt_segmentations.json").read_text()) for f in (square, portrait))
    drawn = 0
    for image_id, findings in portrait_rle.items():
        for name, rle in findings.items():
            mask = data.decode_mask(rle)
            assert rle["size"] == [52, 40] and mask.shape == (52, 40)
            square_mask = data.decode_mask(square_rle[image_id][name]).astype(np.float32)
            coverage = Image.fromarray(square_mask).resize((40, 52), Image.Resampling.BILINEAR)
            assert np.array_equal(mask, np.asarray(coverage) > 0), (image_id, name)
            drawn += mask.any()
    assert drawn > 10
    images, _, _ = data.build_image_cache(frame, portrait, SIZE, workers=WORKERS)
    assert np.array_equal(images, sequential(frame, portrait))


def test_small_jobs_decode_in_this_process_unless_a_count_is_set(small_phantom, frame, monkeypatch):
    def no_pool(workers):
        raise AssertionError(f"started {workers} worker processes")

    monkeypatch.setattr(cache, "_process_pool", no_pool)
    monkeypatch.delenv(cache.WORKERS_VARIABLE, raising=False)
    assert len(frame) < cache.PARALLEL_MIN_ROWS
    images, _, _ = data.build_image_cache(frame, small_phantom, SIZE)
    assert np.array_equal(images, sequential(frame, small_phantom))
    monkeypatch.setenv(cache.WORKERS_VARIABLE, "2")
    with pytest.raises(AssertionError, match="started 2 worker processes"):
        data.build_image_cache(frame, small_phantom, SIZE)


def test_a_run_folder_moves_whole_and_a_lost_data_folder_is_named(small_phantom, tmp_path):
    """The cache records a phantom beside it relatively, so a moved run folder still finds its masks; a data folder
    that is gone stops the masks with its name instead of giving empty ones."""
    run = tmp_path / "run"
    shutil.copytree(small_phantom, run / "CheXpert-v1.0-small")
    data.prepare(run / "CheXpert-v1.0-small", run / "cache", SIZE)
    assert (run / "cache" / "root.txt").read_text() == os.path.join("..", "CheXpert-v1.0-small")
    expected = data.load_prepared(run / "cache", SIZE).masks("test")
    assert expected.any()
    moved = shutil.move(run, tmp_path / "moved")
    assert np.array_equal(data.load_prepared(moved / "cache", SIZE).masks("test"), expected)
    shutil.rmtree(moved / "CheXpert-v1.0-small")
    with pytest.raises(FileNotFoundError, match="prepared from is gone: .*CheXpert-v1.0-small"):
        data.load_prepared(moved / "cache", SIZE).masks("test")


MAIN_SCRIPT = """
import os
import sys

with open(os.environ["RUNS_LOG"], "a") as log:  # every run of this script, by name and process
    log.write(f"{__name__} {os.getpid()}\\n")

import numpy as np
from helpers import data

if __name__ == "__main__":
    root = sys.argv[1]
    frame = data.read_chexpert_csv(os.path.join(root, "train.csv"))
    first, _, _ = data.build_image_cache(frame, root, 32, workers=2)
    second, _, _ = data.build_image_cache(frame, root, 32, workers=2)  # a second pool, from the same fork server
    np.save(sys.argv[2], np.stack([first, second]))
    assert "CHEXPLAIN_FORKSERVER_MAIN" not in os.environ  # only the fork server's environment had it
"""


@pytest.mark.parametrize("run_as", ["file", "module"])
def test_a_scripts_decoding_workers_find_the_script_loaded_instead_of_each_running_it(small_phantom, tmp_path, run_as):
    """multiprocessing runs a script's top level in every worker it starts (Python's forkserver preload of
    ``__main__`` does not work up to 3.13); the fork server runs it once instead, before the workers fork. The same
    for ``python -m``, which names the script by its module."""
    script, runs, out = tmp_path / "decode_script.py", tmp_path / "runs.txt", tmp_path / "images.npy"
    script.write_text(MAIN_SCRIPT)
    env = {**os.environ, "RUNS_LOG": str(runs)}
    env.pop(cache.WORKERS_VARIABLE, None)
    how = [str(script)] if run_as == "file" else ["-m", "decode_script"]
    command = [sys.executable, *how, str(small_phantom), str(out)]
    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    names = [line.split()[0] for line in runs.read_text().splitlines()]
    assert sorted(names) == ["__main__", "__mp_main__"], names  # not one __mp_main__ per worker and pool
    frame = data.read_chexpert_csv(small_phantom / "train.csv")
    expected = np.stack([data.load_image(data.resolve_image_path(small_phantom, p), 32) for p in frame["Path"]])
    assert np.array_equal(np.load(out), np.stack([expected, expected]))

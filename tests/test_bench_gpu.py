"""``benchmarks/bench_gpu.py`` runs only on a GPU machine: what it reads from the notebooks and what it reports is
checked here, so that a renamed parameter or a changed table fails on the CPU rather than on the device."""

import json
import threading
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch

#: The parameters each notebook's timing reads (``notebook_03`` .. ``notebook_05``).
READ = {
    "03_lrp_zennit.ipynb": {"composites", "n_conservation"},
    "04_gradcam.ipynb": {"methods", "layer_methods"},
    "05_compare.ipynb": {
        "cam_methods",
        "lrp_composites",
        "gradient_methods",
        "baselines",
        "faithfulness_methods",
        "n_faithfulness",
        "faithfulness_steps",
        "shuffled_epochs",
        "shuffled_images",
        "sanity_methods",
        "n_sanity",
    },
}


@pytest.fixture(scope="module")
def bench(import_script):
    return import_script("benchmarks/bench_gpu.py")


@pytest.mark.parametrize("notebook", sorted(READ))
def test_the_benchmark_reads_what_it_needs_from_each_notebooks_parameters(bench, notebook):
    params = bench.notebook_parameters(notebook)
    assert READ[notebook] <= set(params), sorted(READ[notebook] - set(params))
    assert params["profile_name"] is None


def test_the_report_adds_up_notebooks_03_to_05_and_compares_the_feed_at_the_profiles_batch(bench, capsys):
    rows = [
        ("02", "synthetic training steps, batch 64, deterministic kernels", float("nan"), 0, 800.0),
        ("02", "synthetic training steps, batch 64, fastest kernels", float("nan"), 0, 1000.0),
        ("02", "training epoch 1 (DataLoader-fed, no validation)", 10.0, 1000, 500.0),
        ("02", "training epoch 2 (DataLoader-fed, no validation)", 2.5, 1000, 640.0),
        ("03", "lrp, 14 pathologies", 30.0, 32, 1.0),
        ("04", "gradcam, 14 pathologies", 10.0, 32, 3.2),
        ("05", "shuffled-label model (2 epochs of 4000 images; training)", 20.0, 0, float("nan")),
        ("05", "scores", 40.0, 512, 12.8),
    ]
    table = pd.DataFrame(rows, columns=["notebook", "step", "seconds", "images", "images_per_s"])
    bench.report(table, "a card", batch_size=64)
    out = capsys.readouterr().out
    assert "notebooks 03-05 together: 100.0 s, of which 20.0 s train the shuffled-label model; 80.0 s without it" in out
    assert (
        "epoch, deterministic kernels); the last is 0.80 x the synthetic steps at batch 64 with the same kernels" in out
    )
    assert "deterministic kernels at batch 64: 800 against 1000 images/s (0.80 x)" in out
    assert "(191,027 images): 5.0 min at 640 images/s" in out
    bench.report(table, "a card", batch_size=64, deterministic=False)  # trained with the fastest kernels
    assert "epoch, fastest kernels); the last is 0.64 x the synthetic steps" in capsys.readouterr().out
    by_papermill = pd.DataFrame(
        [
            (f"{n} {bench.PAPERMILL}", "whole notebook", seconds, 32, 1.0)
            for n, seconds in (("03", 30), ("04", 10), ("05", 70))
        ],
        columns=table.columns,
    )
    bench.report(pd.concat([table, by_papermill]), "a card", batch_size=64)  # --notebooks: reported apart
    out = capsys.readouterr().out
    assert "notebooks 03-05 together: 100.0 s" in out  # the steps' total does not count the notebooks' runs
    assert "notebooks 03-05 by papermill (kernel start, figures): 110.0 s (03 30.0 s, 04 10.0 s, 05 70.0 s" in out
    table_to_02 = table[table["notebook"] == "02"]  # --last-notebook 02: the feed alone, no 03-05 total
    bench.report(table_to_02, "a card", batch_size=64)
    out = capsys.readouterr().out
    assert "notebooks 03-05 together" not in out
    assert "the last is 0.80 x the synthetic steps at batch 64" in out


def _nap(seconds):
    time.sleep(seconds)


def _nested(depth):
    time.sleep(0.02)
    if depth:
        WORK.nested(depth - 1)


def _stages(n):
    for stage in range(n):
        time.sleep(0.02)
        yield stage


#: Functions for the clock to time, looked up through a namespace as the helpers' modules are.
WORK = types.SimpleNamespace(nap=_nap, nested=_nested, stages=_stages)


class _Explainer:
    def explain(self, seconds):
        time.sleep(seconds)
        return self


class _Lrp(_Explainer):
    pass


def test_the_call_clock_counts_outermost_main_thread_calls_and_generator_steps_then_restores(bench):
    originals = dict(vars(WORK))
    synced = []
    targets = {label: (WORK, label) for label in ("nap", "nested", "stages")}
    with bench.CallClock(targets, synchronize=lambda: synced.append(1)) as clock:
        WORK.nap(0.03)
        WORK.nested(2)  # three sleeps, one outermost call
        thread = threading.Thread(target=WORK.nap, args=(0.2,))  # another thread's time is not this thread's
        thread.start()
        consumed = []
        for stage in WORK.stages(3):
            consumed.append(stage)
            time.sleep(0.1)  # the caller's work between steps is not the generator's
        thread.join()
    assert consumed == [0, 1, 2]
    assert len(clock.calls["nap"]) == 1 and 0.03 <= clock.calls["nap"][0] < 0.15
    assert len(clock.calls["nested"]) == 1 and clock.calls["nested"][0] >= 0.06
    assert len(clock.calls["stages"]) == 4  # three yields and the step that ends it
    assert 0.06 <= sum(clock.calls["stages"]) < 0.2
    assert len(synced) == 6
    assert vars(WORK) == originals
    assert clock.lines()[2].startswith("   stages: ") and "in 4 calls (" in clock.lines()[2]


def test_the_call_clock_times_a_method_of_a_base_class_and_of_a_subclass_that_inherits_it(bench):
    explainer, original = _Lrp(), _Explainer.explain
    with bench.CallClock({"explain": (_Explainer, "explain"), "sub": (_Lrp, "explain")}) as clock:
        assert explainer.explain(0.01) is explainer
    assert [len(clock.calls[label]) for label in ("explain", "sub")] == [1, 1]
    assert "explain" not in vars(_Lrp) and _Lrp.explain is _Explainer.explain is original


def _cell(source, seconds, tags=()):
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags), "papermill": {"duration": seconds}}}


def test_the_cell_breakdown_splits_an_executed_notebook_into_kernel_first_cell_drawing_and_the_rest(bench, tmp_path):
    cells = [
        _cell("profile_name = None", 0.01, ["parameters"]),
        _cell("profile_name = 'paper'", 0.02, ["injected-parameters"]),
        {"cell_type": "markdown", "source": "# text", "metadata": {}},
        _cell("from helpers.run import Run\nrun = Run(profile_name)", 6.0),
        _cell("maps = run.explain('gradcam')", 20.0),
        _cell("fig = plot(maps)\nrun.save_figure(fig, 1, 'a')", 2.0),
        _cell("widgets.heatmap_viewer(images, maps)", 0.5),
        _cell("table = summarise(maps)", 1.0),
    ]
    executed = tmp_path / "executed.ipynb"
    executed.write_text(json.dumps({"cells": cells}))
    line = bench.cell_breakdown(executed, whole=31.53)
    assert line == (
        "   kernel 2.0 s, first cell 6.0 s, 2 drawing cells 2.5 s, 2 other cells 21.0 s; "
        "longest 20.0 s: maps = run.explain('gradcam')"
    )
    executed.write_text(json.dumps({"cells": cells[:4]}))  # a notebook that stopped after its first cell
    assert bench.cell_breakdown(executed, whole=8.03) == "   kernel 2.0 s, 1 timed cells"


def test_the_feed_benchmark_trains_epochs_from_a_memory_mapped_uint8_array(import_script, tmp_path):
    feed = import_script("benchmarks/bench_gpu_feed.py")
    dataset = feed.random_dataset(24, 32, str(tmp_path))
    assert dataset.images.dtype == "uint8" and dataset.images.shape == (24, 32, 32)
    assert isinstance(dataset.images, np.memmap)  # read as the decoded cache is
    rates = feed.fed_epochs(dataset, "densenet_compact", 8, 0, torch.device("cpu"), epochs=2)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)


def test_the_benchmark_refuses_a_run_folder_that_would_load_instead_of_train(bench, tmp_path, monkeypatch):
    """A second run in the same folder would load the first one's model and print its epochs as its own."""
    monkeypatch.setenv("CHEXPLAIN_RUNS_DIR", str(tmp_path))
    args = types.SimpleNamespace(profile="paper", fastest_kernels=True, n_explain=4, epochs=1, n_boot=10, smoke=True)
    run = bench.paper_run(args)  # a fresh folder: fine
    (run.model_dir / "best.pt").write_bytes(b"a finished run")
    with pytest.raises(SystemExit, match=r"times a fresh run, but .*model already hold.*CHEXPLAIN_RUNS_DIR"):
        bench.paper_run(args)


def test_the_kernels_get_the_packages_of_a_relative_python_path(bench, tmp_path, monkeypatch):
    """The GPU recipe sets PYTHONPATH=.site:. in the repository; papermill starts the kernels in notebooks/."""
    monkeypatch.chdir(tmp_path)
    assert bench.absolute_python_path(".site::.") == f"{tmp_path / '.site'}:{tmp_path}"
    assert bench.absolute_python_path("/opt/site") == "/opt/site" and bench.absolute_python_path("") == ""

"""``benchmarks/bench_gpu.py`` runs only on a GPU machine: what it reads from the notebooks and what it reports is
checked here, so that a renamed parameter or a changed table fails on the CPU rather than on the device."""

import pandas as pd
import pytest

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
        ("02", "synthetic training steps, batch 64", float("nan"), 0, 800.0),
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
    assert "the last is 0.80 x the synthetic steps at batch 64" in out
    assert "(191,027 images): 5.0 min at 640 images/s" in out

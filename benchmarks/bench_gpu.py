"""The paper profile on a GPU: seconds and images/s per notebook and per step, on a CheXpert-format phantom.

What notebooks 01-05 do in the ``paper`` profile (DenseNet-121, 224 px, the paper's batch of 16), run through
:class:`helpers.run.Run` step by step and timed: decoding into the cache, training steps on synthetic tensors
against real epochs fed by the DataLoader (the second epoch is the steady state: workers started, cuDNN tuned), test
prediction with its bootstrap, LRP (the composites, conservation table and canonization levels of notebook 03), the
CAM family with Grad-CAM at 2x and 4x, and notebook 05's comparison through :mod:`helpers.study`, the code the
notebook runs (gradient family, baselines, occlusion, scores, counterfactual deletion / insertion, model and data
randomisation, bootstrap summaries and paired comparisons). Methods, sample sizes and checks are the defaults of
each notebook's parameters cell, read from the notebook. Figures are not drawn there; ``--notebooks`` then runs
notebooks 03-05 themselves by papermill (kernels, figures and viewers included) on the same model. ImageNet weights
cannot be downloaded here, so a random initialisation stands in (the speed is the same). The phantom is written at
CheXpert-small's size (``--width`` x ``--height``), or read from ``--data``; as a chexplain phantom it also has
training masks (the prior baseline) and counterfactual renders, which real CheXpert lacks. Exactly ``--n-explain``
images are explained (the profile's ``min_positives`` is set to 0). Ends with the projected time of one epoch on the
full CheXpert-small (191,027 frontal training images).

Run: ``python benchmarks/bench_gpu.py [--data FOLDER] [--n-train 2000] [--n-valid 200] [--out results.csv]``
(``make bench-gpu``). Needs a CUDA GPU for meaningful numbers; it runs anywhere.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import inspect
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from helpers import config, evaluate, labels, lrp, metrics, models, paths, phantom, study, train
from helpers.data import prepared as prepared_module
from helpers.data.cache import decode_workers
from helpers.explainers import Explainer
from helpers.explainers import lrp as lrp_explainer
from helpers.metrics import sanity
from helpers.run import Run

CHEXPERT_SMALL_TRAIN = 191_027
_FINISHED = object()  # a sentinel: a generator's end, an attribute not held


def notebook_parameters(notebook: str) -> dict:
    """The values of a notebook's papermill ``parameters`` cell: the benchmark runs the methods, images and checks
    the notebook runs, read from the notebook itself.

    Read with json and ast rather than ``papermill.inspect_notebook``: the GPU machines have neither papermill
    nor nbformat, and the cell is plain assignments of literals.
    """
    cells = json.loads((paths.NOTEBOOKS_DIR / notebook).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {
        target.id: ast.literal_eval(statement.value)
        for statement in tree.body
        if isinstance(statement, ast.Assign)
        for target in statement.targets
    }


class Timer:
    """Collects (notebook, step, seconds, images) rows; waits for the GPU before reading the clock."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    @contextlib.contextmanager
    def step(self, notebook: str, name: str, images: int):
        self.sync()
        started = time.perf_counter()
        yield
        self.sync()
        seconds = time.perf_counter() - started
        self.rows.append(
            {
                "notebook": notebook,
                "step": name,
                "seconds": seconds,
                "images": images,
                "images_per_s": images / seconds if images else float("nan"),
            }
        )
        print(f"{notebook} | {name} | {seconds:.2f} s | {images} images", flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class CallClock:
    """Wall-clock seconds of chosen functions, counted in the main thread only and in their outermost calls.

    Written here instead of reading cProfile: from Python 3.12 cProfile listens through ``sys.monitoring``, which
    reports the calls of every thread onto one stack, so time a pool's manager thread spent waiting is booked
    under whatever the main thread runs meanwhile (the H200 run's "11.2 s in PIL's resize", whose own time was
    0.25 s; ``sanity_checks`` shorter than a function it calls). A generator function is timed over its own steps
    (one more than it yields: the last ends it), not over its caller's work between them. Each timed call ends
    with ``synchronize`` (the GPU's queue emptied), so queued kernels count where they were launched; the functions
    timed here copy their maps to the host right after anyway, so the step's own time hardly moves.

    Parameters
    ----------
    targets : dict
        ``label -> (owner, attribute)``: the function ``getattr(owner, attribute)`` is replaced while the clock
        runs (a module where the caller looks the name up, or a class for a method).
    synchronize : callable
        Called after each timed call (default: nothing).
    """

    def __init__(self, targets: dict[str, tuple[object, str]], synchronize: Callable[[], None] = lambda: None):
        self.targets, self.synchronize = targets, synchronize
        self.calls: dict[str, list[float]] = {label: [] for label in targets}
        self._running: set[str] = set()

    def __enter__(self) -> CallClock:
        # what the owner itself holds (nothing where a module's __getattr__ or a base class provides the name)
        self._held = {label: vars(owner).get(name, _FINISHED) for label, (owner, name) in self.targets.items()}
        for label, (owner, name) in self.targets.items():
            setattr(owner, name, self._timed(label, getattr(owner, name)))
        return self

    def __exit__(self, *exc) -> None:
        for label, (owner, name) in self.targets.items():
            if self._held[label] is _FINISHED:
                delattr(owner, name)
            else:
                setattr(owner, name, self._held[label])

    def _timed(self, label: str, function: Callable) -> Callable:
        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def steps(*args, **kwargs):
                iterator = function(*args, **kwargs)
                while True:
                    with self._clock(label):
                        item = next(iterator, _FINISHED)
                    if item is _FINISHED:
                        return
                    yield item

            return steps

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self._clock(label):
                return function(*args, **kwargs)

        return timed

    @contextlib.contextmanager
    def _clock(self, label: str):
        """Times the block into ``calls[label]`` unless it runs off the main thread or inside a timed call of the
        same label."""
        if threading.current_thread() is not threading.main_thread() or label in self._running:
            yield
            return
        self._running.add(label)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.calls[label].append(time.perf_counter() - started)
            self._running.discard(label)

    def lines(self) -> list[str]:
        """One line per label: total seconds, calls and, for up to 6 calls, each call's seconds."""
        lines = []
        for label, seconds in self.calls.items():
            each = f" ({', '.join(f'{s:.2f}' for s in seconds)})" if 1 < len(seconds) <= 6 else ""
            lines.append(f"   {label}: {sum(seconds):.2f} s in {len(seconds)} calls{each}")
        return lines


def synthetic_steps(
    arch: str, batch: int, size: int, device: torch.device, deterministic: bool, steps: int = 20
) -> float:
    """Training images/s on tensors already on the device (AMP, channels-last): the GPU's own ceiling, with
    deterministic kernels (as training runs by default, :attr:`helpers.config.TrainSettings.deterministic`) or
    with the fastest ones cuDNN picks."""
    with kernels(deterministic):
        model = models.build_model(arch).to(device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 2, (batch, len(labels.PATHOLOGIES)), device=device).float()
        for step in range(steps + 3):
            if step == 3:  # after warm-up (cuDNN autotuning, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = train.masked_bce(model(images).float(), target, torch.ones_like(target))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return steps * batch / (time.perf_counter() - started)


@contextlib.contextmanager
def kernels(deterministic: bool):
    """Deterministic kernels on or off inside the block, torch's previous setting restored after it."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


def synthetic_step_name(batch: int, deterministic: bool) -> str:
    """The table's name of a synthetic-steps row."""
    return f"synthetic training steps, batch {batch}, {KERNELS[deterministic]}"


KERNELS = {True: "deterministic kernels", False: "fastest kernels"}


def paper_run(args) -> Run:
    """The paper profile (real-data layout, read from ``$CHEXPERT_ROOT``) with :func:`profile_overrides`, in a run
    folder that holds no cache and no model yet: a used one would be loaded instead of decoded and trained (a
    rerun with ``--fastest-kernels`` would print the first run's epochs), so it is refused, never deleted (it may
    be a real run's)."""
    run = Run(args.profile, overrides=profile_overrides(args))
    used = [folder for folder in (run.cache_dir, run.model_dir) if folder.is_dir() and any(folder.iterdir())]
    if used:
        raise SystemExit(
            f"bench_gpu.py times a fresh run, but {', '.join(map(str, used))} already hold(s) one: set "
            f"CHEXPLAIN_RUNS_DIR to an empty folder (or remove {run.root} if it is a benchmark's)."
        )
    return run


def profile_overrides(args) -> dict:
    """What the benchmark changes in the profile: a random initialisation, exactly ``--n-explain`` images, its
    epochs and resamples; plain values, so the notebooks run by ``--notebooks`` get the same (their
    ``profile_overrides`` parameter).

    ``--smoke`` shrinks the network and images so that the script itself can be checked on a CPU in a minute.
    """
    smoke = {"arch": "densenet_compact", "image_size": 64, "num_workers": 0} if args.smoke else {}
    return {
        "weights": None,
        "deterministic": not args.fastest_kernels,
        "n_explain": args.n_explain,
        "min_positives": 0,
        "max_epochs": args.epochs,
        "patience": args.epochs,
        "n_boot": args.n_boot,
        **smoke,
    }


def notebook_01(run: Run, timer: Timer, args) -> None:
    """Write the phantom at CheXpert-small's size (unless ``--data``), point the run at it, decode it."""
    root = os.path.abspath(args.data) if args.data else run.folder("phantom") / "CheXpert-v1.0-small"
    if not args.data:
        with timer.step("01", "phantom written (not part of a real run)", args.n_train + args.n_valid):
            phantom.generate(
                root, args.n_train, args.width, seed=0, n_valid=args.n_valid, min_prevalence=0.1, height=args.height
            )
    os.environ[config.CHEXPERT_ROOT_ENV] = str(root)
    rows = sum(len(pd.read_csv(os.path.join(root, f"{split}.csv"))) for split in ("train", "valid"))
    clock = CallClock({"decode into the cache, per split": (prepared_module, "build_image_cache")})
    with timer.step("01", f"validate + decode into the cache ({decode_workers()} processes at most)", rows), clock:
        prepared = run.prepare(progress=False)
    print(prepared.summary().to_string())
    print("\n".join(clock.lines()))  # the splits in order: train on every core, val and test in this process


def notebook_02(run: Run, timer: Timer) -> None:
    settings, size = run.profile.train, run.profile.image_size
    for batch in sorted({settings.batch_size, 64}):
        for deterministic in KERNELS:
            rate = synthetic_steps(settings.arch, batch, size, run.device, deterministic)
            step = synthetic_step_name(batch, deterministic)
            timer.rows.append(
                {"notebook": "02", "step": step, "seconds": float("nan"), "images": 0, "images_per_s": rate}
            )
            print(f"02 | {step} | {rate:.0f} images/s", flush=True)
    n_train = len(run.data().split("train"))
    # the training loader drops the last partial batch (helpers.train): the images an epoch trains on
    n_trained = n_train // settings.batch_size * settings.batch_size if n_train > settings.batch_size else n_train
    epochs = run.profile.train.max_epochs
    with timer.step("02", f"train {epochs} epochs (batch {settings.batch_size}, incl. validation)", n_train * epochs):
        model, meta, history = run.train(progress=False)
    for epoch, seconds in enumerate(history["train_seconds"], start=1):
        timer.rows.append(
            {
                "notebook": "02",
                "step": f"training epoch {epoch} (DataLoader-fed, no validation)",
                "seconds": float(seconds),
                "images": n_trained,
                "images_per_s": n_trained / float(seconds),
            }
        )
    test_set = run.data().dataset("test", meta["policy"], meta["mean"], meta["std"])
    with timer.step("02", "test prediction", len(test_set)):
        probs = evaluate.predict(model, test_set)
    with timer.step("02", f"bootstrap AUROC and AP ({run.profile.n_boot} resamples)", len(test_set)):
        patients = run.data().patients("test")  # as notebook 02 resamples: a patient's images together
        evaluate.evaluate(probs, test_set.targets, test_set.loss_mask, n_boot=run.profile.n_boot, patients=patients)


def notebook_03(run: Run, timer: Timer) -> None:
    params = notebook_parameters("03_lrp_zennit.ipynb")
    composites, n_images = params["composites"], params["n_conservation"]
    model, meta = run.model()
    batch = run.explained()
    results = []
    for composite in composites:
        with timer.step("03", f"lrp_{composite}, 14 pathologies", len(batch)):
            results.append(run.explain(f"lrp_{composite}"))
    table = f"conservation table ({len(composites)} composites x 3 levels, {n_images} images)"
    with timer.step("03", table, n_images * 3 * len(composites)):
        lrp.conservation_table(
            model, batch.inputs[:n_images], composites, mean=meta["mean"], std=meta["std"], known=results
        )
    with timer.step("03", "canonization levels (3, 4 images)", 12):
        for level in (1, 2, 3):
            run.explainer(f"lrp_{composites[0]}", canonization=level).explain(model, batch.inputs[:4])


def notebook_04(run: Run, timer: Timer) -> None:
    params = notebook_parameters("04_gradcam.ipynb")
    batch = run.explained()
    for name in params["methods"] + params["layer_methods"]:
        with timer.step("04", f"{name}, 14 pathologies", len(batch)):
            run.explain(name)


def notebook_05(run: Run, timer: Timer) -> None:
    params = notebook_parameters("05_compare.ipynb")
    model, _ = run.model()
    batch = run.explained()
    patients = dict(zip(batch.image_ids, batch.patients))
    cams = params["cam_methods"]
    sets = run.heatmaps(cams + [f"lrp_{c}" for c in params["lrp_composites"]])
    for name in params["gradient_methods"] + study.available_baselines(run, params["baselines"]) + ["occlusion"]:
        with timer.step("05", f"{name}, 14 pathologies", len(batch)):
            sets[name] = run.explain(name)
    with timer.step("05", f"scores ({len(sets)} methods, every core)", len(batch) * len(sets)):
        scores = study.score_methods(sets, batch)
    faithful, n_pairs = [m for m in params["faithfulness_methods"] if m in sets], params["n_faithfulness"]
    with timer.step("05", f"counterfactual deletion / insertion ({len(faithful)} methods)", n_pairs * len(faithful)):
        faithfulness = study.counterfactual_faithfulness(
            run, model, sets, faithful, n_pairs, params["faithfulness_steps"]
        )
    epochs, images = params["shuffled_epochs"], params["shuffled_images"]
    checked, n_sanity = params["sanity_methods"], params["n_sanity"]
    n_shuffled = run.shuffled_label_profile(epochs, images).train.train_images or len(run.data().split("train"))
    with timer.step("05", f"shuffled-label model ({epochs} epochs of {n_shuffled} images; training)", 0):
        run.shuffled_label_model(epochs, images, progress=False)
    stages = len(model.randomisation_stages())
    step = f"model + data randomisation ({len(checked)} methods x {n_sanity} images, {stages} stages)"
    with timer.step("05", step, n_sanity), sanity_clock(timer) as clock:
        sanity = metrics.sanity_outcome(study.sanity_checks(run, model, checked, n_sanity, epochs, images))
    print("\n".join(clock.lines()))  # explanations on the device against similarities on the cores
    scores = pd.concat([scores, faithfulness], ignore_index=True)
    methods, reference = list(sets), study.reference_method(list(sets))
    with timer.step("05", "bootstrap summaries, paired comparisons, strata", 0):
        metrics.summarise(scores, n_boot=run.profile.n_boot, patients=patients, n_jobs=-1)
        challengers = study.granularity_challengers(methods)
        for pairs, names in (
            ([(m, reference) for m in methods if m != reference], study.LOCALISATION_METRICS),
            ([(m, cam) for cam in cams for m in challengers], study.GRANULARITY_METRICS),
        ):
            metrics.outcome(metrics.compare(scores, pairs, names, run.profile.n_boot, patients=patients))
        study.stratified_summary(batch, sets["gradcam"], scores, run.profile.n_boot, patients)
    print(sanity.groupby(["method", "mode"])["passes"].mean().to_string())


def sanity_clock(timer: Timer) -> CallClock:
    """Where the sanity checks' time goes: maps (every method, every model), LRP's share of them, the randomised
    models (copy and re-initialisation), and the similarities."""
    return CallClock(
        {
            "explain_pairs (every method and model)": (Explainer, "explain_pairs"),
            "of which LRP's relevance_rows": (lrp_explainer, "relevance_rows"),
            "randomised models made (steps)": (sanity, "_randomised_models"),
            "similarity_table (every core)": (metrics, "similarity_table"),
        },
        timer.sync,
    )


LATER_NOTEBOOKS = {"03": notebook_03, "04": notebook_04, "05": notebook_05}
NOTEBOOK_FILES = {"03": "03_lrp_zennit.ipynb", "04": "04_gradcam.ipynb", "05": "05_compare.ipynb"}
PAPERMILL = "by papermill (kernel start, figures)"


def notebooks_by_papermill(run: Run, timer: Timer, overrides: dict) -> None:
    """Notebooks 03-05 themselves, one after the other as ``make run`` runs them: each in its own kernel, with its
    figures and viewers, on the model notebook 02's step trained (same profile and ``overrides``). Their default
    parameters, as the steps above; the executed notebooks are kept in the run folder. The shuffled-label model
    the steps trained is removed first, so that notebook 05 trains it as in a run of its own (the maps the steps
    saved are made again by the notebooks, which do not reuse them by default)."""
    import papermill  # only here: the GPU machines need it brought as a wheel

    shutil.rmtree(run.shuffled_model_dir)
    os.environ["PYTHONPATH"] = absolute_python_path(os.environ.get("PYTHONPATH", ""))
    out = run.folder("bench_notebooks")
    parameters = {"profile_name": run.profile.name, "profile_overrides": overrides}
    images = len(run.explained())
    for number, notebook in NOTEBOOK_FILES.items():
        with timer.step(f"{number} {PAPERMILL}", "whole notebook", images):
            papermill.execute_notebook(
                str(paths.NOTEBOOKS_DIR / notebook),
                str(out / notebook),
                parameters=parameters,
                cwd=str(paths.NOTEBOOKS_DIR),
                progress_bar=False,
            )
        print(cell_breakdown(out / notebook, timer.rows[-1]["seconds"]), flush=True)


def absolute_python_path(python_path: str) -> str:
    """``PYTHONPATH`` with every entry absolute: the kernels start in ``notebooks/``, where the GPU recipe's relative
    ``.site`` (the packages brought as wheels) and ``.`` (``helpers``) would name other folders."""
    return os.pathsep.join(str(Path(entry).resolve()) for entry in python_path.split(os.pathsep) if entry)


#: Source text that marks a cell as drawing: a saved figure or an interactive viewer.
DRAWING = ("save_figure(", "_viewer(")


def cell_breakdown(executed: Path, whole: float) -> str:
    """Where an executed notebook's time went, from papermill's per-cell durations: the kernel (start, shutdown,
    papermill's own work: the whole minus the cells), the first code cell after the parameters (imports, model,
    images), the cells that draw (:data:`DRAWING`), the other cells, and the longest cell."""
    cells = []
    for cell in json.loads(executed.read_text())["cells"]:
        metadata = cell.get("metadata", {})
        if cell["cell_type"] == "code" and not {"parameters", "injected-parameters"} & set(metadata.get("tags", [])):
            cells.append(("".join(cell["source"]), metadata.get("papermill", {}).get("duration") or 0.0))
    kernel = f"   kernel {whole - sum(seconds for _, seconds in cells):.1f} s"
    if len(cells) < 2:
        return f"{kernel}, {len(cells)} timed cells"
    (_, first), rest = cells[0], cells[1:]
    drawing = [seconds for source, seconds in rest if any(mark in source for mark in DRAWING)]
    longest_source, longest = max(rest, key=lambda cell: cell[1])
    return (
        f"{kernel}, first cell {first:.1f} s, {len(drawing)} drawing cells {sum(drawing):.1f} s, "
        f"{len(rest) - len(drawing)} other cells {sum(seconds for _, seconds in rest) - sum(drawing):.1f} s; "
        f"longest {longest:.1f} s: {(longest_source.strip().splitlines() or [''])[0][:60]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an existing CheXpert-format folder (default: write a phantom)")
    parser.add_argument("--profile", default="paper", help="paper, or paper-batch64 (batch 64, linear-rule rate)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-valid", type=int, default=200)
    parser.add_argument("--width", type=int, default=320, help="phantom width (CheXpert-small: about 320)")
    parser.add_argument("--height", type=int, default=390, help="phantom height (CheXpert-small: about 390)")
    parser.add_argument("--n-explain", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the last is the steady state)")
    parser.add_argument("--out", help="also write the table as CSV here")
    parser.add_argument(
        "--fastest-kernels", action="store_true", help="train without deterministic kernels (deterministic=False)"
    )
    parser.add_argument(
        "--notebooks",
        action="store_true",
        help="then run notebooks 03-05 themselves by papermill and time each (with --last-notebook 02: instead of "
        "the steps)",
    )
    parser.add_argument(
        "--last-notebook",
        choices=sorted(LATER_NOTEBOOKS) + ["02"],
        default="05",
        help="stop after this notebook (02: preparation and training alone, e.g. the feed of paper-batch64)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="compact DenseNet at 64 px on an 80 x 98 phantom: checks the script on a CPU",
    )
    args = parser.parse_args()
    if args.smoke:  # under twice the input's side: the counterfactual renders match the cache (no JPEG draft decode)
        args.width, args.height = 80, 98
    run = paper_run(args)
    name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else str(run.device)
    print(f"device: {name}; torch {torch.__version__}; run folder {run.root}", flush=True)
    timer = Timer(run.device)
    notebook_01(run, timer, args)
    notebook_02(run, timer)
    for number, notebook in LATER_NOTEBOOKS.items():
        if number <= args.last_notebook:
            notebook(run, timer)
    if args.notebooks:
        notebooks_by_papermill(run, timer, profile_overrides(args))
    table = pd.DataFrame(timer.rows).assign(device=name)
    report(table, name, run.profile.train.batch_size, run.profile.train.deterministic)
    if args.out:
        table.to_csv(args.out, index=False)


def report(table: pd.DataFrame, device: str, batch_size: int, deterministic: bool = True) -> None:
    """The table, the per-notebook totals, the feed ratio (against the synthetic steps with the kernels the
    training used: what the loader alone costs), the price of deterministic kernels and the full-CheXpert epoch
    projection."""
    print(f"\n| notebook | step | seconds | images/s |  ({device})\n|---|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.notebook} | {row.step} | {row.seconds:.2f} | {row.images_per_s:.1f} |")
    totals = table.groupby("notebook")["seconds"].sum()
    print("\nseconds per notebook:", {k: round(v, 1) for k, v in totals.items()})
    if set(LATER_NOTEBOOKS) <= set(totals.index):
        together = totals[list(LATER_NOTEBOOKS)].sum()
        training = table[table["step"].str.startswith("shuffled-label model")]["seconds"].sum()
        print(
            f"notebooks 03-05 together: {together:.1f} s, of which {training:.1f} s train the shuffled-label model; "
            f"{together - training:.1f} s without it (target <= 120 s on an H100-class card)"
        )
    by_papermill = [f"{number} {PAPERMILL}" for number in LATER_NOTEBOOKS]
    if set(by_papermill) <= set(totals.index):
        each = ", ".join(f"{name[:2]} {totals[name]:.1f} s" for name in by_papermill)
        print(f"notebooks 03-05 {PAPERMILL}: {totals[by_papermill].sum():.1f} s ({each}; target <= 120 s)")
    synthetic = table[table["step"].str.startswith("synthetic")].set_index("step")["images_per_s"]
    epochs = table[table["step"].str.startswith("training epoch")]["images_per_s"]
    same_batch = synthetic[synthetic_step_name(batch_size, deterministic)]
    steady = epochs.iloc[-1]
    print(
        f"epoch throughput {', '.join(f'{e:.0f}' for e in epochs)} images/s (first to last epoch, "
        f"{KERNELS[deterministic]}); the last is {steady / same_batch:.2f} x the synthetic steps at batch "
        f"{batch_size} with the same kernels (target >= 0.8)"
    )
    for step, slow in synthetic.items():
        fast = synthetic.get(step.replace(KERNELS[True], KERNELS[False]))
        if step.endswith(KERNELS[True]) and fast is not None:
            batch = step.removeprefix("synthetic training steps, ").removesuffix(f", {KERNELS[True]}")
            print(f"deterministic kernels at {batch}: {slow:.0f} against {fast:.0f} images/s ({slow / fast:.2f} x)")
    print(
        f"projected epoch on the full CheXpert-small ({CHEXPERT_SMALL_TRAIN:,} images): "
        f"{CHEXPERT_SMALL_TRAIN / steady / 60:.1f} min at {steady:.0f} images/s"
    )
    params = notebook_parameters("05_compare.ipynb")
    epochs, images = params["shuffled_epochs"], params["shuffled_images"] or CHEXPERT_SMALL_TRAIN
    images = min(images, CHEXPERT_SMALL_TRAIN)
    print(
        f"projected shuffled-label model of notebook 05 on the full CheXpert-small ({epochs} epochs of {images:,} "
        f"images, validation not counted): {epochs * images / steady:.0f} s at {steady:.0f} images/s"
    )


if __name__ == "__main__":
    main()

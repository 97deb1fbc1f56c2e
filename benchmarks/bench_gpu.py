"""The paper profile on a GPU: seconds and images/s per notebook and per step, on a CheXpert-format phantom.

What notebooks 01-05 do in the ``paper`` profile (DenseNet-121, 224 px, the paper's batch of 16), run through
:class:`helpers.run.Run` step by step and timed: decoding into the cache, training steps on synthetic tensors
against a real epoch fed by the DataLoader, test prediction, LRP (seven composites, conservation table,
canonization levels), the CAM family, and the comparison (occlusion, scores, deletion / insertion, cascading
randomisation). ImageNet weights cannot be downloaded here, so a random initialisation stands in (the speed is the
same). The phantom is written at CheXpert-small's size (``--width`` x ``--height``), or read from ``--data``.
Ends with the projected time of one epoch on the full CheXpert-small (191,027 frontal training images).

Run: ``python benchmarks/bench_gpu.py [--data FOLDER] [--n-train 2000] [--n-valid 200] [--out results.csv]``
(``make bench-gpu``). Needs a CUDA GPU for meaningful numbers; it runs anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import pandas as pd
import torch

from helpers import config, evaluate, labels, lrp, metrics, models, phantom, train
from helpers.run import Run

CHEXPERT_SMALL_TRAIN = 191_027
LRP_NAMES = [f"lrp_{c}" for c in lrp.COMPOSITES]
CAM_NAMES = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"]
SANITY_NAMES = ["gradcam", "lrp_epsilon_plus_flat", "lrp_alpha2_beta1", "lrp_deep_taylor"]


class Timer:
    """Collects (notebook, step, seconds, images) rows; waits for the GPU before reading the clock."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    @contextlib.contextmanager
    def step(self, notebook: str, name: str, images: int):
        self._sync()
        started = time.perf_counter()
        yield
        self._sync()
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

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def synthetic_steps(arch: str, batch: int, size: int, device: torch.device, steps: int = 20) -> float:
    """Training images/s on tensors already on the device (AMP, channels-last): the GPU's own ceiling."""
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


def paper_run(args) -> Run:
    """The paper profile (real-data layout, read from ``$CHEXPERT_ROOT``) with a random initialisation.

    ``--smoke`` shrinks the network and images so that the script itself can be checked on a CPU in a minute.
    """
    smoke = {"arch": "densenet_compact", "image_size": 64, "num_workers": 0} if args.smoke else {}
    profile = config.load_profile(
        "paper", weights=None, n_explain=args.n_explain, max_epochs=1, n_boot=args.n_boot, **smoke
    )
    return Run(profile)


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
    with timer.step("01", "validate + decode into the cache", rows):
        prepared = run.prepare(progress=False)
    print(prepared.summary().to_string())


def notebook_02(run: Run, timer: Timer) -> None:
    settings, size = run.profile.train, run.profile.image_size
    for batch in sorted({settings.batch_size, 64}):
        rate = synthetic_steps(settings.arch, batch, size, run.device)
        step = f"synthetic training steps, batch {batch}"
        timer.rows.append({"notebook": "02", "step": step, "seconds": float("nan"), "images": 0, "images_per_s": rate})
        print(f"02 | synthetic steps, batch {batch} | {rate:.0f} images/s", flush=True)
    n_train = len(run.data().split("train"))
    with timer.step("02", f"train 1 epoch (batch {settings.batch_size}, incl. validation)", n_train):
        model, meta, history = run.train(progress=False)
    epoch_seconds = float(history["train_seconds"].iloc[-1])
    timer.rows.append(
        {
            "notebook": "02",
            "step": "training epoch (DataLoader-fed, no validation)",
            "seconds": epoch_seconds,
            "images": n_train,
            "images_per_s": n_train / epoch_seconds,
        }
    )
    test_set = run.data().dataset("test", meta["policy"], meta["mean"], meta["std"])
    with timer.step("02", "test prediction + bootstrap AUROC", len(test_set)):
        probs = evaluate.predict(model, test_set)
        evaluate.evaluate(probs, test_set.targets, test_set.loss_mask, n_boot=run.profile.n_boot)


def notebook_03(run: Run, timer: Timer) -> None:
    model, meta = run.model()
    batch = run.explained()
    for name in LRP_NAMES:
        with timer.step("03", f"{name}, 14 pathologies", len(batch)):
            run.explain(name)
    with timer.step("03", "conservation table (7 composites x 3 levels, 4 images)", 4 * 21):
        lrp.conservation_table(model, batch.inputs[:4], list(lrp.COMPOSITES), mean=meta["mean"], std=meta["std"])
    with timer.step("03", "canonization levels (3, 4 images)", 12):
        for level in (1, 2, 3):
            run.explainer("lrp_epsilon_plus_flat", canonization=level).explain(model, batch.inputs[:4])


def notebook_04(run: Run, timer: Timer) -> None:
    batch = run.explained()
    for name in CAM_NAMES:
        with timer.step("04", f"{name}, 14 pathologies", len(batch)):
            run.explain(name)


def notebook_05(run: Run, timer: Timer, n_sanity: int = 8, steps: int = 10) -> None:
    model, _ = run.model()
    batch = run.explained()
    sets = run.heatmaps(["gradcam", *LRP_NAMES])
    with timer.step("05", "occlusion, 14 pathologies", len(batch)):
        sets["occlusion"] = run.explain("occlusion")
    with timer.step("05", "localisation + granularity scores", len(batch) * len(sets)):
        scores = pd.concat([metrics.score(s, batch.masks, codes=batch.codes) for s in sets.values()])
    pairs = batch.pairs()
    with timer.step("05", f"deletion / insertion, {len(pairs)} pairs x {len(sets)} methods", len(pairs) * len(sets)):
        faithfulness = [metrics.perturbation_scores(model, batch.inputs, s, pairs, steps=steps) for s in sets.values()]
    checked = batch.head(n_sanity)
    with timer.step("05", f"cascading randomisation, {len(SANITY_NAMES)} methods", n_sanity * len(SANITY_NAMES)):
        sanity = [
            metrics.cascading_randomisation(
                model, checked.inputs, run.explainer(m), checked.pairs(), image_ids=checked.image_ids
            )
            for m in SANITY_NAMES
        ]
    with timer.step("05", "bootstrap summary", 0):
        metrics.summarise(pd.concat([scores, *faithfulness, *sanity]), n_boot=run.profile.n_boot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an existing CheXpert-format folder (default: write a phantom)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-valid", type=int, default=200)
    parser.add_argument("--width", type=int, default=320, help="phantom width (CheXpert-small: about 320)")
    parser.add_argument("--height", type=int, default=390, help="phantom height (CheXpert-small: about 390)")
    parser.add_argument("--n-explain", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", help="also write the table as CSV here")
    parser.add_argument("--smoke", action="store_true", help="compact DenseNet at 64 px: checks the script on a CPU")
    args = parser.parse_args()
    run = paper_run(args)
    name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else str(run.device)
    print(f"device: {name}; torch {torch.__version__}; run folder {run.root}", flush=True)
    timer = Timer(run.device)
    notebook_01(run, timer, args)
    notebook_02(run, timer)
    for notebook in (notebook_03, notebook_04, notebook_05):
        notebook(run, timer)
    table = pd.DataFrame(timer.rows).assign(device=name)
    report(table, name)
    if args.out:
        table.to_csv(args.out, index=False)


def report(table: pd.DataFrame, device: str) -> None:
    """The table, the per-notebook totals, the feed ratio and the full-CheXpert epoch projection."""
    print(f"\n| notebook | step | seconds | images/s |  ({device})\n|---|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.notebook} | {row.step} | {row.seconds:.2f} | {row.images_per_s:.1f} |")
    totals = table.groupby("notebook")["seconds"].sum()
    print("\nseconds per notebook:", {k: round(v, 1) for k, v in totals.items()})
    print(f"notebooks 03-05 together: {totals[['03', '04', '05']].sum():.1f} s (target <= 120 s on an H100-class card)")
    synthetic = table[table["step"].str.startswith("synthetic")].set_index("step")["images_per_s"]
    epoch = table[table["step"].str.startswith("training epoch")]["images_per_s"].iloc[0]
    paper_batch = synthetic.iloc[0]  # the profile's own batch size comes first (sorted, 16 < 64)
    print(
        f"epoch throughput {epoch:.0f} images/s = {epoch / paper_batch:.2f} x the synthetic steps at batch 16 "
        f"(target >= 0.8)"
    )
    print(
        f"projected epoch on the full CheXpert-small ({CHEXPERT_SMALL_TRAIN:,} images): "
        f"{CHEXPERT_SMALL_TRAIN / epoch / 60:.1f} min at {epoch:.0f} images/s"
    )


if __name__ == "__main__":
    main()

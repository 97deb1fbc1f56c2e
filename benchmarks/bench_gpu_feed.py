"""The training feed apart from the kernels: DataLoader-fed epochs against synthetic steps, with deterministic
kernels (training's default) and with the fastest ones.

``bench_gpu.py`` compares a training epoch with synthetic steps on tensors already on the GPU; at batch 64 on an
H200 it measured 0.61 x, which alone cannot say whether the loader or the kernels fall short: training runs with
``torch.use_deterministic_algorithms`` (:attr:`helpers.config.TrainSettings.deterministic`), its synthetic
steps ran without. Here both sides run under both settings, on training's own loader and epoch
(``helpers.train._train_loader`` and ``_train_epoch``) over a memory-mapped uint8 array of random images of the
cache's shape, so no phantom needs writing: the feed's work per image (a memory-map read, collation, pinned
copy, normalisation on the device) does not depend on what the pixels show.

Run: ``python benchmarks/bench_gpu_feed.py [--arch densenet121] [--size 224] [--images 6400]`` on a GPU
(``--arch densenet_compact --size 64 --images 640`` checks it on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_gpu beside this file, however it is run

from bench_gpu import KERNELS, kernels, synthetic_steps  # noqa: E402

from helpers import config, models, train  # noqa: E402
from helpers.data.datasets import ChestXrayDataset  # noqa: E402


def random_dataset(images: int, size: int, folder: str) -> ChestXrayDataset:
    """``images`` random uint8 images of ``size`` px in a memory-mapped ``.npy`` (as the decoded cache), with
    random labels, all of them counted by the loss."""
    path = os.path.join(folder, "images.npy")
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, size, size))
    array[:] = np.random.default_rng(0).integers(0, 255, array.shape, dtype=np.uint8)
    array.flush()
    targets = (np.random.default_rng(1).random((images, 14)) < 0.3).astype(np.float32)
    return ChestXrayDataset(np.load(path, mmap_mode="r"), targets, np.ones_like(targets), [0.5] * 3, [0.25] * 3)


def fed_epochs(dataset, arch: str, batch: int, workers: int, device: torch.device, epochs: int = 2) -> list[float]:
    """Images/s of each of ``epochs`` training epochs through training's own loader and epoch loop, with
    whatever kernels torch is set to now."""
    settings = config.TrainSettings(arch=arch, batch_size=batch, num_workers=workers)
    model = models.build_model(arch).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loader = train._train_loader(dataset, settings, 0, device)
    feed = (device, dataset.mean, dataset.std)
    rates = []
    with tempfile.TemporaryDirectory() as out_dir:  # where a non-finite loss would point the user
        for epoch in range(1, epochs + 1):
            _synchronize(device)
            started = time.perf_counter()
            loader.sampler.set_epoch(epoch)
            train._train_epoch(model, loader, optimizer, scaler, epoch, feed, False, out_dir, epochs)
            _synchronize(device)
            rates.append(len(dataset) / (time.perf_counter() - started))
    return rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=6400, help="images per epoch (100 batches of 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8], help="DataLoader workers to try at 64")
    args = parser.parse_args()
    device = train.select_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    with tempfile.TemporaryDirectory() as folder:
        dataset = random_dataset(args.images, args.size, folder)
        print(f"device {name}; {args.arch} at {args.size} px; {args.images} images per epoch", flush=True)
        for deterministic in (False, True):
            for batch in (16, 64):
                rate = synthetic_steps(args.arch, batch, args.size, device, deterministic)
                print(f"{KERNELS[deterministic]}, batch {batch}: synthetic steps {rate:.0f} images/s", flush=True)
            for workers in args.workers:
                with kernels(deterministic):
                    rates = fed_epochs(dataset, args.arch, 64, workers, device)
                print(f"{KERNELS[deterministic]}, batch 64, {workers} workers: fed epochs {_listed(rates)} images/s")
        with kernels(True):
            rates = fed_epochs(dataset, args.arch, 16, args.workers[0], device, epochs=1)
        print(f"{KERNELS[True]}, batch 16, {args.workers[0]} workers: fed epoch {_listed(rates)} images/s")


def _listed(rates: list[float]) -> str:
    return ", ".join(f"{rate:.0f}" for rate in rates)


if __name__ == "__main__":
    main()

"""Is the data pipeline the bottleneck? Training images/s fed by the real Dataset + DataLoader, against
the same loop fed pre-made in-memory tensors (target: ratio >= 0.9).

Uses the profile's prepared training split (run notebook 01 first) and model. Run:
``python benchmarks/bench_training.py [--profile default] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from helpers import models, train
from helpers.run import Run


def images_per_second(model, batches, learning_rate: float) -> float:
    """Train on ``batches`` (an iterable of dicts) and return images per second, after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    seen, start = 0, None
    for step, batch in enumerate(batches):
        if step == 1:
            seen, start = 0, time.perf_counter()
        image = batch["image"].to(memory_format=torch.channels_last)
        loss = train.masked_bce(model(image), batch["target"], batch["loss_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(image)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    run = Run(args.profile, device="cpu")
    profile, cfg = run.profile, run.profile.train
    dataset = run.data().dataset("train", cfg.policy, profile.mean, profile.std)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, drop_last=True
    )
    in_memory = [next(iter(loader)) for _ in range(3)]  # pre-made tensors, no indexing or normalising
    rates = {}
    for name in ("in-memory tensors", "Dataset + DataLoader", "in-memory tensors (again)"):
        train.seed_everything(0)
        model = models.build_model(cfg.arch).to(memory_format=torch.channels_last)
        batches = (
            (in_memory[i % 3] for i in range(args.steps))
            if "memory" in name
            else (b for _, b in zip(range(args.steps), _cycle(loader)))
        )
        rates[name] = images_per_second(model, batches, cfg.learning_rate)
    reference = (rates["in-memory tensors"] + rates["in-memory tensors (again)"]) / 2
    print(f"| feed ({profile.name}, {profile.image_size} px, {cfg.arch}, batch {cfg.batch_size}) | images/s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(f"\nDataLoader / in-memory = {rates['Dataset + DataLoader'] / reference:.3f} (target >= 0.9)")


def _cycle(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    main()

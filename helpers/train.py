"""Fit, evaluate and checkpoint the multi-label classifier.

Multi-label BCE on logits with the policy's loss mask; Adam, learning rate x0.1 on a validation
plateau, early stopping and best-checkpoint selection on validation mean AUROC (never the test split).
Every epoch writes ``last.pt`` (everything needed to resume bit-for-bit on CPU) atomically, and
``best.pt`` when validation AUROC improves. Runs unchanged under ``torchrun`` (DistributedDataParallel,
DistributedSampler, only rank 0 writes): ``torchrun --nproc_per_node=N -m helpers.train --profile paper``.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from helpers import labels, models
from helpers.config import IMAGENET_MEAN, IMAGENET_STD

LAST, BEST = "last.pt", "best.pt"


class TrainingError(RuntimeError):
    """Training stopped (for example on a NaN loss); the message says why and which checkpoint is good."""


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint and compared on resume."""

    arch: str = "densenet_compact"
    weights: str | None = None
    image_size: int = 128
    labels: list[str] = field(default_factory=lambda: list(labels.PATHOLOGIES))
    policy: str = "u-ignore"
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_epochs: int = 10
    patience: int = 3
    lr_patience: int = 1
    lr_factor: float = 0.1
    seed: int = 0
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    profile: str = ""

    @classmethod
    def from_profile(cls, profile, **overrides) -> "TrainConfig":
        """The training settings of a :class:`helpers.config.Profile`."""
        keys = ("arch", "weights", "image_size", "policy", "batch_size", "learning_rate", "max_epochs",
                "patience", "seed", "num_workers")
        values = {key: getattr(profile, key) for key in keys}
        values.update(mean=list(profile.mean), std=list(profile.std), profile=profile.name)
        return cls(**{**values, **overrides})

    def meta(self) -> dict:
        """Plain-type description for checkpoints; ``input`` says how radiographs reach the network."""
        return {**asdict(self), "input": "grayscale replicated to 3 channels, then (x/255 - mean) / std"}


# --------------------------------------------------------------------------- environment


def select_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: CUDA has no deterministic adaptive-pooling backward, and must not crash for it
    torch.use_deterministic_algorithms(True, warn_only=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------- prediction and metrics


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 64, device: torch.device | None = None) -> np.ndarray:
    """Sigmoid probabilities ``(n, n_classes)`` for a dataset of items with an ``image`` key."""
    device = device or next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs = [torch.sigmoid(model(batch["image"].to(device))).float().cpu() for batch in loader]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, len(labels.PATHOLOGIES)), np.float32)


def save_predictions(path: str | os.PathLike, image_ids: Sequence[str], probs: np.ndarray) -> Path:
    """Write probabilities as CSV (``image_id`` + one column per pathology), atomically."""
    from helpers.data import atomic_path
    frame = pd.DataFrame(probs, columns=list(labels.PATHOLOGIES))
    frame.insert(0, "image_id", list(image_ids))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def per_class_auroc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """AUROC per class (NaN where a class lacks positives or negatives among unmasked rows)."""
    mask = np.ones_like(targets) if mask is None else mask
    scores = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        keep = mask[:, j] > 0
        y = targets[keep, j]
        if 0 < y.sum() < len(y):
            scores[j] = roc_auc_score(y, probs[keep, j])
    return scores


def evaluate(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
             pathologies: Sequence[str] = labels.PATHOLOGIES, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per-pathology AUROC and average precision with bootstrap 95% CIs, plus macro means.

    Returns a tidy DataFrame: ``pathology, metric, value, ci_low, ci_high, n_pos, n_neg, note``. The
    bootstrap resamples images (the same resample for every pathology, so macro means get CIs too).
    Macro rows: ``macro (14)`` over every pathology with both classes present and ``macro (competition)``
    over the five CheXpert competition pathologies. A pathology without positives (or negatives) is
    reported with a NaN value and a note, never an error.
    """
    mask = np.ones_like(targets) if mask is None else mask
    point = _metric_matrix(probs, targets, mask)
    rng = np.random.default_rng(seed)
    boots = np.stack([_metric_matrix(probs[i], targets[i], mask[i])
                      for i in (rng.integers(0, len(probs), len(probs)) for _ in range(n_boot))]) if n_boot else None
    rows = []
    for m, metric in enumerate(("AUROC", "AP")):
        for j, name in enumerate(pathologies):
            keep = mask[:, j] > 0
            n_pos, n_neg = int(targets[keep, j].sum()), int((1 - targets[keep, j]).sum())
            note = "" if n_pos and n_neg else ("missing: no positives" if not n_pos else "missing: no negatives")
            rows.append(_row(name, metric, point[m, j], None if boots is None else boots[:, m, j], n_pos, n_neg, note))
        for macro, members in (("macro (14)", pathologies), ("macro (competition)", labels.COMPETITION)):
            index = [list(pathologies).index(p) for p in members if p in pathologies]
            value = np.nanmean(point[m, index]) if np.isfinite(point[m, index]).any() else np.nan
            spread = None if boots is None else _nanmean_rows(boots[:, m, index])
            rows.append(_row(macro, metric, value, spread, None, None, ""))
    return pd.DataFrame(rows)


def _metric_matrix(probs, targets, mask) -> np.ndarray:
    auroc = per_class_auroc(probs, targets, mask)
    ap = np.full_like(auroc, np.nan)
    for j in np.flatnonzero(np.isfinite(auroc)):
        keep = mask[:, j] > 0
        ap[j] = average_precision_score(targets[keep, j], probs[keep, j])
    return np.stack([auroc, ap])


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _row(name, metric, value, boots, n_pos, n_neg, note) -> dict:
    low = high = np.nan
    if boots is not None and np.isfinite(value) and np.isfinite(boots).sum() >= 10:
        low, high = np.nanpercentile(boots, [2.5, 97.5])
    return {"pathology": name, "metric": metric, "value": value, "ci_low": low, "ci_high": high,
            "n_pos": n_pos, "n_neg": n_neg, "note": note}


#: Published numbers shown beside ours as context. They are on real CheXpert, not on the phantom.
REFERENCE_AUROC = {
    "Alam et al. 2022 (CBMS), weighted AUROC, real CheXpert": 0.76,
    "Irvin et al. 2019, DenseNet-121, mean AUROC of the 5 competition tasks, real CheXpert": 0.91,
}


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per-pathology AUROC with CI (one row each), macro rows last, and the published references below."""
    auroc = table[table["metric"] == "AUROC"].set_index("pathology")
    ours = pd.DataFrame({
        "AUROC": auroc["value"], "95% CI": [_ci_text(r) for _, r in auroc.iterrows()],
        "AP": table[table["metric"] == "AP"].set_index("pathology")["value"],
        "positives": auroc["n_pos"], "note": auroc["note"], "data": "this run"})
    references = pd.DataFrame({"AUROC": list(REFERENCE_AUROC.values()), "95% CI": "", "AP": np.nan,
                               "positives": None, "note": "", "data": "other data (published)"},
                              index=list(REFERENCE_AUROC))
    return pd.concat([ours, references])


def _ci_text(row) -> str:
    return "" if not np.isfinite(row["ci_low"]) else f"{row['ci_low']:.3f}-{row['ci_high']:.3f}"


# --------------------------------------------------------------------------- fitting


def fit(model: nn.Module, train_set, val_set, config: TrainConfig, out_dir: str | os.PathLike,
        resume: bool = True, progress: bool = True, stop_after_epoch: int | None = None) -> pd.DataFrame:
    """Train ``model`` and return the history (one row per epoch: loss, val AUROC, learning rate, seconds).

    Parameters
    ----------
    model : nn.Module
        From :func:`helpers.models.build_model`; seed before building it for reproducible initial weights.
    train_set, val_set : Dataset
        Items with ``image``, ``target`` and ``loss_mask`` (:class:`helpers.data.ChestXrayDataset`).
    config : TrainConfig
    out_dir : path-like
        Receives ``last.pt`` every epoch and ``best.pt`` on every validation improvement.
    resume : bool
        Continue from ``out_dir/last.pt`` when it exists; its config must equal ``config``.
    stop_after_epoch : int, optional
        Return after this epoch as if interrupted (used to test that resuming is exact).
    """
    out_dir = Path(out_dir)
    device = select_device()
    model = model.to(device, memory_format=torch.channels_last)  # ~15% faster convolutions on CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor,
                                                           patience=config.lr_patience)
    state = {"epoch": 0, "best": -np.inf, "stale": 0, "history": []}
    if resume and (out_dir / LAST).is_file():
        state = _restore(out_dir / LAST, model, optimizer, scheduler, config)
    network = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    val_targets, val_mask = val_set.targets, val_set.loss_mask
    for epoch in range(state["epoch"] + 1, config.max_epochs + 1):
        if state["stale"] >= config.patience:
            break
        started = time.perf_counter()
        loss = _train_epoch(network, train_set, optimizer, scaler, config, epoch, device, progress, out_dir)
        val_auroc = np.nanmean(per_class_auroc(predict(model, val_set, device=device), val_targets, val_mask))
        scheduler.step(val_auroc)
        improved = val_auroc > state["best"]
        state.update(epoch=epoch, best=max(state["best"], val_auroc), stale=0 if improved else state["stale"] + 1)
        state["history"].append({"epoch": epoch, "train_loss": loss, "val_mean_auroc": float(val_auroc),
                                 "learning_rate": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started})
        if _rank() == 0:
            meta = {**config.meta(), "epoch": epoch, "val_mean_auroc": float(val_auroc)}
            if improved:
                models.save_checkpoint(out_dir / BEST, model, meta)
            models.save_checkpoint(out_dir / LAST, model, meta, optimizer=optimizer.state_dict(),
                                   scheduler=scheduler.state_dict(), state=_plain_state(state))
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return pd.DataFrame(state["history"])


def _train_epoch(network, train_set, optimizer, scaler, config, epoch, device, progress, out_dir) -> float:
    network.train()
    loader = _train_loader(train_set, config, epoch)
    if progress and _rank() == 0:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=f"epoch {epoch}/{config.max_epochs}", leave=False)
    total, count = 0.0, 0
    for step, batch in enumerate(loader):
        target, weight = batch["target"].to(device), batch["loss_mask"].to(device)
        image = batch["image"].to(device, memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = network(image)
        loss = masked_bce(logits.float(), target, weight)
        if not torch.isfinite(loss):
            raise TrainingError(f"Loss became {loss.item()} at epoch {epoch}, step {step}; training stopped. "
                                f"The last good checkpoint is {out_dir / LAST} (if any epoch finished). Lower the "
                                f"learning rate or check the inputs for NaN.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total, count = total + loss.item() * len(image), count + len(image)
    return total / max(count, 1)


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits averaged over the entries the policy keeps (``weight`` 1)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def _train_loader(train_set, config: TrainConfig, epoch: int) -> DataLoader:
    """Shuffled by a generator seeded per epoch, so a resumed run sees the same batches."""
    if _distributed():
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
    else:
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        sampler = RandomSampler(train_set, generator=generator)
    return DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                      drop_last=len(train_set) > config.batch_size)


def _plain_state(state: dict) -> dict:
    return {**state, "best": float(state["best"]), "history": list(state["history"])}


def _restore(path: Path, model, optimizer, scheduler, config: TrainConfig) -> dict:
    payload = models.read_checkpoint(path)
    stored = {k: payload["meta"].get(k) for k in asdict(config)}
    models.check_meta(stored, path, **{k: v for k, v in asdict(config).items() if k not in ("max_epochs", "num_workers")})
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return dict(payload["state"])


# --------------------------------------------------------------------------- a profile's model


def train_or_load(profile, prepared, progress: bool = True) -> tuple[nn.Module, dict, pd.DataFrame]:
    """The profile's trained model: loaded from ``best.pt`` when a finished run with this config exists, else trained.

    Returns the model (eval mode, on CPU), the checkpoint metadata and the training history.
    """
    config = TrainConfig.from_profile(profile)
    out_dir = profile.run_dir / "model"
    history_file = out_dir / "history.csv"
    if not (history_file.is_file() and _finished_with(out_dir / LAST, config)):
        history_file.unlink(missing_ok=True)  # it marks a finished run; this one is not, yet
        seed_everything(config.seed)
        model = models.build_model(config.arch, len(config.labels), config.weights)
        train_set = prepared.dataset("train", config.policy, config.mean, config.std)
        val_set = prepared.dataset("val", config.policy, config.mean, config.std)
        history = fit(model, train_set, val_set, config, out_dir, progress=progress)
        if _rank() == 0:
            from helpers.data import atomic_path
            with atomic_path(history_file) as tmp:
                history.to_csv(tmp, index=False)
        if _distributed():
            dist.barrier()  # the other ranks read what rank 0 just wrote
    model, meta = models.load_checkpoint(out_dir / BEST, arch=config.arch, labels=config.labels,
                                         image_size=config.image_size)
    return model, meta, pd.read_csv(history_file)


def load_trained(profile) -> tuple[nn.Module, dict]:
    """The model notebook 02 trained for ``profile`` (its ``best.pt``), checked against the profile."""
    path = profile.run_dir / "model" / BEST
    if not path.is_file():
        raise FileNotFoundError(f"No trained model at {path}: run notebooks/02_train.ipynb first (same CHEXPLAIN_PROFILE).")
    config = TrainConfig.from_profile(profile)
    return models.load_checkpoint(path, arch=config.arch, labels=config.labels, image_size=config.image_size)


def _finished_with(last: Path, config: TrainConfig) -> bool:
    if not last.is_file():
        return False
    try:
        meta = models.read_checkpoint(last)["meta"]
    except models.CheckpointError:
        return False
    return all(meta.get(k) == v for k, v in asdict(config).items() if k != "num_workers")


def main(argv: list[str] | None = None) -> None:
    """Command line (also under torchrun): train a profile's model from notebook 01's prepared data."""
    from helpers import config as config_module
    from helpers import data
    parser = argparse.ArgumentParser(description="Train the chexplain classifier (torchrun-ready).")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        profile = config_module.load_profile(args.profile)
        if args.max_epochs:
            profile = config_module.load_profile(profile.name, max_epochs=args.max_epochs)
        train_or_load(profile, data.load_profile_data(profile), progress=_rank() == 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Fit and checkpoint the multi-label classifier (evaluation lives in :mod:`helpers.evaluate`).

Multi-label BCE on logits with the policy's loss mask; Adam, learning rate x0.1 on a validation
plateau, early stopping and best-checkpoint selection on validation mean AUROC (never the test split).
Every epoch writes ``last.pt`` (everything needed to resume bit-for-bit on CPU) atomically, and
``best.pt`` when validation AUROC improves. Runs unchanged under ``torchrun`` (DistributedDataParallel,
DistributedSampler, only rank 0 writes): ``torchrun --nproc_per_node=N -m helpers.train --profile paper``.
The evaluation names (``predict``, ``evaluate``, ``summary_table``, ...) are re-exported from
:mod:`helpers.evaluate` for callers that still use ``train.<name>``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from helpers import config, labels, models
from helpers.config import Profile, TrainSettings
from helpers.data import batch_inputs
from helpers.evaluate import REFERENCE_AUROC, evaluate, per_class_auroc, predict, save_predictions, summary_table
from helpers.io import atomic_path

__all__ = [
    "BEST",
    "DEVICE_ENV",
    "LAST",
    "REFERENCE_AUROC",
    "TrainingError",
    "checkpoint_meta",
    "evaluate",
    "fit",
    "load_trained",
    "main",
    "masked_bce",
    "per_class_auroc",
    "predict",
    "save_predictions",
    "seed_everything",
    "select_device",
    "summary_table",
    "train_or_load",
]

LAST, BEST, HISTORY = "last.pt", "best.pt", "history.csv"
#: Environment variable that forces a device: ``cpu``, ``cuda`` or ``mps``.
DEVICE_ENV = "CHEXPLAIN_DEVICE"
INPUT_DESCRIPTION = "grayscale replicated to 3 channels, then (x/255 - mean) / std"


class TrainingError(RuntimeError):
    """Training stopped (for example on a NaN loss); the message says why and which checkpoint is good."""


# --------------------------------------------------------------------------- environment


def select_device() -> torch.device:
    """``$CHEXPLAIN_DEVICE`` when set, else CUDA (this process's ``LOCAL_RANK``), then Apple MPS, then CPU.

    Raises
    ------
    ValueError
        If ``$CHEXPLAIN_DEVICE`` names no known device.
    RuntimeError
        If it names a device this machine does not have.
    """
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced:
        return _forced_device(forced)
    for name in ("cuda", "mps"):
        if _DEVICE_AVAILABLE[name]():
            return _device(name)
    return torch.device("cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


_DEVICE_AVAILABLE = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": _mps_available}


def _device(name: str) -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if name == "cuda" else torch.device(name)


def _forced_device(name: str) -> torch.device:
    if name not in _DEVICE_AVAILABLE:
        raise ValueError(
            f"{DEVICE_ENV}={name!r} is not a device chexplain knows; set it to one of "
            f"{sorted(_DEVICE_AVAILABLE)}, or unset it to pick the best available."
        )
    if not _DEVICE_AVAILABLE[name]():
        raise RuntimeError(
            f"{DEVICE_ENV}={name!r}, but this machine has no {name} device (or torch was built "
            f"without it); set {DEVICE_ENV}=cpu or unset it."
        )
    return _device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; deterministic kernels where torch has them, unless ``deterministic`` is
    False (:attr:`helpers.config.TrainSettings.deterministic`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: CUDA has no deterministic adaptive-pooling backward, and must not crash for it
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _distributed() -> bool:
    return _world_size() > 1


def checkpoint_meta(profile: Profile) -> dict:
    """Plain-type metadata every checkpoint of ``profile`` carries (flat keys, as older checkpoints have).

    :func:`helpers.config.resume_fields` plus ``max_epochs``, ``num_workers``, ``deterministic``, the profile's
    name and ``input`` (how radiographs reach the network).
    """
    return {
        **config.resume_fields(profile),
        "max_epochs": profile.train.max_epochs,
        "num_workers": profile.train.num_workers,
        "deterministic": profile.train.deterministic,
        "profile": profile.name,
        "input": INPUT_DESCRIPTION,
    }


# --------------------------------------------------------------------------- fitting


def fit(
    model: nn.Module,
    train_set,
    val_set,
    profile: Profile,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    device: torch.device | str | None = None,
    data: str | None = None,
) -> pd.DataFrame:
    """Train ``model`` and return the history (one row per epoch: loss, val AUROC, learning rate, seconds).

    Parameters
    ----------
    model : nn.Module
        From :func:`helpers.models.build_model`; seed before building it for reproducible initial weights.
    train_set, val_set : Dataset
        Items with ``image``, ``target`` and ``loss_mask`` (:class:`helpers.data.ChestXrayDataset`).
    profile : Profile
        ``profile.train`` says how to fit; :func:`checkpoint_meta` what the checkpoints record.
    out_dir : path-like
        Receives ``last.pt`` every epoch and ``best.pt`` on every validation improvement.
    resume : bool
        Continue from ``out_dir/last.pt`` when it exists; it must match :func:`helpers.config.resume_fields`.
    stop_after_epoch : int, optional
        Return after this epoch as if interrupted (used to test that resuming is exact).
    device : torch.device or str, optional
        Where to train; default :func:`select_device`.
    data : str, optional
        The fingerprint of the prepared data (:attr:`helpers.data.PreparedData.fingerprint`): recorded in the
        checkpoints, and a ``last.pt`` that records another is not continued.

    Raises
    ------
    helpers.models.CheckpointError
        If ``last.pt`` was written for other settings or data (the message names each difference).
    TrainingError
        If the loss stops being finite.
    """
    out_dir, settings = Path(out_dir), profile.train
    _check_normalisation(profile, {"train_set": train_set, "val_set": val_set})
    device = torch.device(device) if device is not None else select_device()
    model = model.to(device, memory_format=torch.channels_last)  # ~15% faster convolutions on CPU
    processes = _world_size()  # recorded: with lr_reference_batch the rate depends on it (the global batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.effective_learning_rate(processes))
    scheduler = _scheduler(optimizer, settings)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    state = {"epoch": 0, "best": -np.inf, "stale": 0, "history": []}
    if resume and (out_dir / LAST).is_file():
        state = _restore(out_dir / LAST, model, (optimizer, scheduler, scaler), profile, processes, data)
    network = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    val_targets, val_mask = val_set.targets, val_set.loss_mask
    _check_validation_defined(val_targets, val_mask)
    loader = _train_loader(train_set, settings, config.training_seed(profile), device)
    feed = (device, train_set.mean, train_set.std)
    for epoch in range(state["epoch"] + 1, settings.max_epochs + 1):
        if state["stale"] >= settings.patience:
            break
        started, learning_rate = time.perf_counter(), optimizer.param_groups[0]["lr"]  # the rate this epoch uses
        loader.sampler.set_epoch(epoch)
        loss = _train_epoch(network, loader, optimizer, scaler, epoch, feed, progress, out_dir, settings.max_epochs)
        train_seconds = time.perf_counter() - started
        val_auroc = np.nanmean(per_class_auroc(predict(model, val_set, device=device), val_targets, val_mask))
        scheduler.step(*([val_auroc] if settings.schedule == "plateau" else []))
        improved = val_auroc > state["best"]
        state.update(epoch=epoch, best=max(state["best"], val_auroc), stale=0 if improved else state["stale"] + 1)
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "val_mean_auroc": float(val_auroc),
                "learning_rate": learning_rate,
                "seconds": time.perf_counter() - started,
                "train_seconds": train_seconds,
            }
        )
        if _rank() == 0:
            meta = {
                **checkpoint_meta(profile),
                "epoch": epoch,
                "val_mean_auroc": float(val_auroc),
                "processes": processes,
                **({"data": data} if data else {}),
            }
            if improved:
                models.save_checkpoint(out_dir / BEST, model, meta)
            models.save_checkpoint(
                out_dir / LAST,
                model,
                meta,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),  # AMP's loss scale: a resumed CUDA run goes on with it, not from 65536
                state=_plain_state(state),
            )
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return pd.DataFrame(state["history"])


def _check_normalisation(profile: Profile, sets: dict) -> None:
    """Refuse sets normalised otherwise than ``profile`` says: the checkpoint records the profile's mean and std,
    and every explanation normalises its inputs with them (a model fitted on other inputs would be explained on
    inputs it never saw)."""
    expected = (list(profile.mean), list(profile.std))
    for name, dataset in sets.items():
        used = (list(dataset.mean), list(dataset.std))
        if not (np.allclose(used[0], expected[0]) and np.allclose(used[1], expected[1])):
            raise ValueError(
                f"{name} normalises with mean {used[0]} and std {used[1]}, profile {profile.name!r} with "
                f"{expected[0]} and {expected[1]} (what the checkpoint records): make the set with the profile's."
            )


def _check_validation_defined(targets: np.ndarray, mask: np.ndarray) -> None:
    """Refuse a validation split where no pathology has both positives and negatives: its AUROC would be undefined
    every epoch, no checkpoint would count as the best, and loading would later say "run notebook 02" instead."""
    counted = np.asarray(mask) > 0
    positives = (counted & (np.asarray(targets) == 1)).sum(axis=0)
    negatives = (counted & (np.asarray(targets) == 0)).sum(axis=0)
    if not ((positives > 0) & (negatives > 0)).any():
        raise TrainingError(
            f"The validation split ({len(targets)} images) has no pathology with both positive and negative labels, "
            f"so its AUROC is undefined and no model could be chosen: prepare more images (n_train) or a larger "
            f"val_fraction."
        )


def _scheduler(optimizer: torch.optim.Optimizer, settings) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule ``settings.schedule`` names (see :class:`helpers.config.TrainSettings`)."""
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.max_epochs)
    if settings.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=settings.lr_factor, patience=settings.lr_patience
        )
    raise ValueError(f"Unknown learning-rate schedule {settings.schedule!r}; choose 'plateau' or 'cosine'.")


def _train_epoch(network, loader, optimizer, scaler, epoch, feed, progress, out_dir, max_epochs) -> float:
    device = feed[0]
    network.train()
    if progress and _rank() == 0:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"epoch {epoch}/{max_epochs}", leave=False)
    running, count, step = torch.zeros((), device=device), 0, -1  # the loss sum stays on the device: no wait per step
    for step, batch in enumerate(loader):
        target, weight = batch["target"].to(device, non_blocking=True), batch["loss_mask"].to(device, non_blocking=True)
        image = batch_inputs(batch, *feed).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = network(image)
        loss = masked_bce(logits.float(), target, weight)
        running, count = running + loss.detach() * len(image), count + len(image)
        if device.type != "cuda" or step % FINITE_CHECK_STEPS == 0:
            _check_finite(running, epoch, step, out_dir)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _check_finite(running, epoch, step, out_dir)
    return float(running) / max(count, 1)


#: On a GPU the loss is checked for inf and NaN every this many steps (and after the last): each check waits
#: for the GPU, and at the paper's batch of 16 a wait per step leaves it idle while the next batch is queued.
FINITE_CHECK_STEPS = 16


def _check_finite(running: torch.Tensor, epoch: int, step: int, out_dir) -> None:
    """Stop training once the epoch's loss sum is inf or NaN (on a GPU, first seen at a checked step)."""
    if not torch.isfinite(running):
        raise TrainingError(
            f"Loss became {running.item()} at epoch {epoch}, step {step}; training stopped. "
            f"The last good checkpoint is {out_dir / LAST} (if any epoch finished). Lower the "
            f"learning rate or check the inputs for NaN."
        )


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits averaged over the entries the policy keeps (``weight`` 1)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def _train_loader(train_set, settings: TrainSettings, seed: int, device: torch.device) -> DataLoader:
    """One loader for the whole fit: raw uint8 items (normalised on the device), pinned memory on CUDA,
    workers kept alive across epochs; the sampler reshuffles per epoch (``set_epoch``), so a resumed run
    sees the same batches."""
    raw = train_set.as_raw() if hasattr(train_set, "as_raw") else train_set
    if _distributed():
        sampler = DistributedSampler(raw, shuffle=True, seed=seed)
    else:
        sampler = EpochSampler(len(raw), seed)
    return DataLoader(
        raw,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=settings.num_workers > 0,
        drop_last=len(raw) > settings.batch_size,
    )


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation per epoch from a generator seeded with ``seed * 1000 + epoch``.

    The same draw as ``RandomSampler(generator=torch.Generator().manual_seed(seed * 1000 + epoch))``, but
    reseeded by :meth:`set_epoch` so one DataLoader (and its persistent workers) serves every epoch.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def _plain_state(state: dict) -> dict:
    return {**state, "best": float(state["best"]), "history": list(state["history"])}


def _restore(path: Path, model, stateful: tuple, profile: Profile, processes: int, data: str | None) -> dict:
    """Weights, ``stateful`` (optimizer, scheduler, AMP scaler) and the loop's state from ``last.pt``."""
    payload = models.read_checkpoint(path)
    meta = _with_processes(payload["meta"])
    advice = (  # notebook 02 is what got here: "retrain" must say how
        f"It cannot be continued with these settings: delete {path.parent} to train again from the start, or "
        f"choose the profile it was trained with."
    )
    models.check_meta(meta, path, advice, **continuation_fields(profile, processes), **_recorded_data(meta, data))
    models.load_weights(model, payload["state_dict"], path)
    optimizer, scheduler, scaler = stateful
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if payload.get("scaler"):  # absent before it was saved, empty where AMP is off
        scaler.load_state_dict(payload["scaler"])
    return dict(payload["state"])


def continuation_fields(profile: Profile, processes: int) -> dict:
    """What a run continued from ``last.pt`` must share with it: :func:`helpers.config.resume_fields`, the number of
    processes (the global batch, and with ``lr_reference_batch`` the rate the restored optimizer carries) and, on a
    cosine schedule, ``max_epochs`` (its length, which the restored scheduler carries: a longer run would see the
    rate climb again)."""
    fields = {**config.resume_fields(profile), "processes": processes}
    if profile.train.schedule == "cosine":
        fields["max_epochs"] = profile.train.max_epochs
    return fields


def _with_processes(meta: dict) -> dict:
    """``meta`` with ``processes`` (checkpoints written before it was recorded trained on one process)."""
    return {"processes": 1, **meta}


def _recorded_data(meta: dict, data: str | None) -> dict:
    """``{"data": data}`` to compare where both the checkpoint and the caller know the data's fingerprint (older
    checkpoints do not record it: nothing to compare them by)."""
    return {"data": data} if data and "data" in meta else {}


# --------------------------------------------------------------------------- a profile's model


def train_or_load(
    profile: Profile,
    prepared,
    model_dir: str | os.PathLike,
    progress: bool = True,
    shuffle_labels: bool = False,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, dict, pd.DataFrame]:
    """The profile's trained model: loaded from ``model_dir/best.pt`` when a finished run of it exists, else trained.

    Parameters
    ----------
    profile : Profile
    prepared : helpers.data.PreparedData
        The profile's prepared splits (:func:`helpers.data.load_profile_data`).
    model_dir : path-like
        The run's model folder: ``last.pt``, ``best.pt`` and ``history.csv`` (which marks a finished run).
    progress : bool
        Show a progress bar per epoch.
    shuffle_labels : bool
        Train on the training split's label rows permuted with the profile's seed (Adebayo et al.'s data
        randomisation test: a model that cannot have learnt where findings are). Keep its ``model_dir`` apart.
    device : torch.device or str, optional
        Where to train and place the model; default :func:`select_device`.

    Returns
    -------
    model, meta, history
        The best model (eval mode, on ``device``), its checkpoint metadata, the training history.
    """
    model_dir = Path(model_dir)
    history_file = model_dir / HISTORY
    data = prepared.fingerprint
    if not (history_file.is_file() and _finished_with(model_dir / LAST, profile, data)):
        history_file.unlink(missing_ok=True)  # it marks a finished run; this one is not, yet
        _train(profile, prepared, model_dir, history_file, progress, shuffle_labels, device)
    model, meta = load_trained(profile, model_dir, device, data)
    return model, meta, pd.read_csv(history_file)


def _train(
    profile: Profile,
    prepared,
    model_dir: Path,
    history_file: Path,
    progress: bool,
    shuffle_labels: bool = False,
    device: torch.device | str | None = None,
) -> None:
    settings = profile.train
    seed_everything(config.training_seed(profile), settings.deterministic)
    model = models.build_model(settings.arch, len(labels.PATHOLOGIES), settings.weights)
    train_set = prepared.dataset("train", settings.policy, profile.mean, profile.std)
    val_set = prepared.dataset("val", settings.policy, profile.mean, profile.std)
    if settings.train_images is not None:
        train_set, val_set = sampled_splits(train_set, val_set, settings.train_images, profile.seed)
    if shuffle_labels:
        order = np.random.default_rng(profile.seed).permutation(len(train_set))
        train_set = replace(train_set, targets=train_set.targets[order], loss_mask=train_set.loss_mask[order])
    history = fit(
        model, train_set, val_set, profile, model_dir, progress=progress, device=device, data=prepared.fingerprint
    )
    if _rank() == 0:
        with atomic_path(history_file) as tmp:
            history.to_csv(tmp, index=False)
    if _distributed():
        dist.barrier()  # the other ranks read what rank 0 just wrote


#: The fewest validation images :func:`sampled_splits` keeps (all, where the split has fewer): with a handful,
#: every pathology's AUROC can be undefined and no checkpoint would ever count as the best.
MIN_VALIDATION_IMAGES = 64


def sampled_splits(train_set, val_set, n_train: int, seed: int):
    """At most ``n_train`` training images and the same share of the validation split (at least
    :data:`MIN_VALIDATION_IMAGES`), drawn with ``seed`` and kept in split order.

    Returns
    -------
    train_set, val_set
        Subsets (:meth:`helpers.data.ChestXrayDataset.subset`); the splits themselves when ``n_train`` covers the
        training split.
    """
    if n_train >= len(train_set):
        return train_set, val_set
    rng = np.random.default_rng(seed)
    share = math.ceil(len(val_set) * n_train / len(train_set))
    n_val = min(len(val_set), max(share, MIN_VALIDATION_IMAGES))
    return tuple(
        split.subset(np.sort(rng.choice(len(split), size=n, replace=False)))
        for split, n in ((train_set, n_train), (val_set, n_val))
    )


def load_trained(
    profile: Profile,
    model_dir: str | os.PathLike,
    device: torch.device | str | None = None,
    data: str | None = None,
) -> tuple[nn.Module, dict]:
    """The model trained for ``profile`` (``model_dir/best.pt``), in eval mode on ``device``.

    ``device`` defaults to :func:`select_device`. With ``data`` (the prepared data's fingerprint), a model that
    records another was trained on other data (prepared again since) and is refused.

    Raises
    ------
    FileNotFoundError
        If nothing was trained there yet (run notebook 02).
    helpers.models.CheckpointError
        If the checkpoint was trained with other settings (:func:`helpers.config.resume_fields`) or data.
    """
    path = Path(model_dir) / BEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No trained model at {path}: run notebooks/02_train.ipynb first "
            f"(same CHEXPLAIN_PROFILE, here {profile.name!r})."
        )
    model, meta = models.load_checkpoint(path, **config.resume_fields(profile))
    if _recorded_data(meta, data) and meta["data"] != data:
        raise models.CheckpointError(
            f"Checkpoint {path} was trained on other data (fingerprint {meta['data']}) than notebook 01 prepared "
            f"since ({data}): train again (notebook 02, profile {profile.name!r})."
        )
    last = path.parent / LAST
    unfinished = _not_ended(models.read_checkpoint(last), profile) if last.is_file() else None
    if unfinished:  # its best.pt is a model of an interrupted (or other) run, not the profile's trained model
        raise models.CheckpointError(
            f"{path} is from a run that has not finished as profile {profile.name!r} trains: {unfinished}. "
            f"Run notebooks/02_train.ipynb to finish it."
        )
    return model.to(device or select_device()).eval(), meta


def discard_other_settings(model_dir: str | os.PathLike, profile: Profile, data: str | None = None) -> list[str]:
    """Delete the checkpoints and history in ``model_dir`` when they were trained with other settings than
    ``profile``'s, so that a model derived from the run (the shuffled-label model) is trained again rather than
    refused. Returns the differing settings (none: nothing deleted)."""
    model_dir = Path(model_dir)
    if not (model_dir / LAST).is_file():
        return []
    try:
        meta = models.read_checkpoint(model_dir / LAST)["meta"]
    except models.CheckpointError as error:
        mismatches = [str(error)]
    else:
        meta = _with_processes(meta)
        mismatches = models.meta_mismatches(
            meta, **continuation_fields(profile, _world_size()), **_recorded_data(meta, data)
        )
    if mismatches:
        for name in (LAST, BEST, HISTORY):
            (model_dir / name).unlink(missing_ok=True)
    return mismatches


def _finished_with(last: Path, profile: Profile, data: str | None = None) -> bool:
    """Whether ``last`` ends a run of these settings that was meant to last ``max_epochs`` and ended (so it is done)."""
    if not last.is_file():
        return False
    try:
        payload = models.read_checkpoint(last)
    except models.CheckpointError:
        return False
    meta = payload["meta"]
    expected = {**config.resume_fields(profile), **_recorded_data(meta, data)}
    return not models.meta_mismatches(meta, **expected) and _not_ended(payload, profile) is None


def _not_ended(last: dict, profile: Profile) -> str | None:
    """Why the run whose ``last.pt`` payload is ``last`` has not ended as ``profile``'s would; None where it has:
    it was meant to last the profile's ``max_epochs`` and reached them, or stopped early (patience ran out)."""
    meta, state, settings = last["meta"], last.get("state", {}), profile.train
    if meta.get("max_epochs") != settings.max_epochs:
        return f"it was trained for max_epochs={meta.get('max_epochs')}, the profile has {settings.max_epochs}"
    epoch, stale = state.get("epoch", settings.max_epochs), state.get("stale", 0)  # older files: no state to read
    if epoch < settings.max_epochs and stale < settings.patience:
        return f"it stopped after epoch {epoch} of {settings.max_epochs} (interrupted?)"
    return None


def main(argv: list[str] | None = None) -> None:
    """Command line (also under torchrun): train a profile's model from notebook 01's prepared data."""
    from helpers.run import Run  # the run owns the paths; imported here, as the run itself imports this module

    parser = argparse.ArgumentParser(description="Train the chexplain classifier (torchrun-ready).")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = select_device()  # CHEXPLAIN_DEVICE=cpu on a CUDA machine trains on gloo, as it says
        if device.type == "cuda":
            torch.cuda.set_device(device)  # this rank's GPU, not GPU 0, for NCCL and the pinning thread
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        overrides = {"max_epochs": args.max_epochs} if args.max_epochs else {}
        profile = config.load_profile(args.profile, **overrides)
        run = Run(profile)
        train_or_load(profile, run.data(), run.model_dir, progress=_rank() == 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

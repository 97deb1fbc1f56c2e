"""Torch side of the data: network input normalisation and a Dataset over cached images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 grayscale ``(n, h, w)`` -> normalised float ``(n, 3, h, w)``.

    The single channel is replicated to three (what ImageNet-shaped networks take) and normalised
    per channel; every code path that feeds the network goes through here. The result lives on
    ``images``' device.

    Raises
    ------
    TypeError
        For any other dtype: a float image in [0, 1] would be divided by 255 again into a near-constant input.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_input takes uint8 images (0-255), got {images.dtype}: convert them first.")
    scaled = images.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    # made where the images live: a CPU constant would fail against CUDA/MPS (or meta) inputs
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (scaled - mean_t) / std_t


@dataclass
class ChestXrayDataset(torch.utils.data.Dataset):
    """Cached radiographs with targets, loss mask and (optionally) ground-truth masks.

    Items are dicts: ``image`` (3, h, w) normalised float32, ``target`` and ``loss_mask`` (14,)
    float32, ``index`` (row in the split) and, when ``masks`` is given, ``masks`` (14, h, w) bool.
    With ``raw=True`` an item carries ``pixels`` (h, w) uint8 instead of ``image``: a quarter of the bytes
    to move, normalised on the device by :func:`batch_inputs` with the same numbers.
    """

    images: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    mean: Sequence[float]
    std: Sequence[float]
    masks: np.ndarray | None = None
    raw: bool = False

    def __post_init__(self):
        if not len(self.images) == len(self.targets) == len(self.loss_mask):
            raise ValueError(
                f"images ({len(self.images)}), targets ({len(self.targets)}) and loss_mask "
                f"({len(self.loss_mask)}) must have the same length."
            )
        # every uint8 value's normalised 3-channel form, made by to_model_input itself: one lookup per
        # item instead of five array passes, with identical numbers
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
        self._lookup = to_model_input(levels, self.mean, self.std)[0, :, 0, :].contiguous()  # (3, 256)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray) -> ChestXrayDataset:
        """The items at ``rows``, in that order; the images are read through the rows, not copied."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            images=_Rows(self.images, rows),
            targets=self.targets[rows],
            loss_mask=self.loss_mask[rows],
            masks=None if self.masks is None else _Rows(self.masks, rows),
        )

    def as_raw(self) -> ChestXrayDataset:
        """The same data with uint8 ``pixels`` items (see :func:`batch_inputs`)."""
        return replace(self, raw=True)

    def __getitem__(self, index: int) -> dict:
        if self.raw:
            item = {"pixels": torch.from_numpy(np.array(self.images[index], dtype=np.uint8))}
        else:
            item = {"image": self._lookup[:, torch.from_numpy(np.asarray(self.images[index], dtype=np.int64))]}
        item |= {
            "target": torch.from_numpy(self.targets[index]),
            "loss_mask": torch.from_numpy(self.loss_mask[index]),
            "index": index,
        }
        if self.masks is not None:
            item["masks"] = torch.from_numpy(self.masks[index])
        return item


class _Rows:
    """Selected rows of an array (a memory map of the decoded cache) read one item at a time: a subset of a
    CheXpert-sized split without loading it."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[self.rows[index]]


def batch_inputs(batch: dict, device: torch.device, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A DataLoader batch's network input on ``device``.

    Raw ``pixels`` (uint8) are copied (asynchronously from pinned memory) and normalised on the device by
    :func:`to_model_input`; a ready ``image`` batch is moved as it is.
    """
    if "pixels" in batch:
        return to_model_input(batch["pixels"].to(device, non_blocking=True), mean, std)
    return batch["image"].to(device, non_blocking=True)

"""Counterfactual radiographs: a written phantom's images rendered again, with chosen findings removed.

A phantom's folder stores images, labels and masks, not the scenes behind them. Every random draw of the
phantom follows from the seed in its manifest (:func:`helpers.phantom.writer.sample_splits`), and rendering
draws only from each batch's own ``batch_seed``, so :func:`replay` recovers each image's scene and drawing
strengths without reading a pixel, and :func:`render_without` renders any image again as written and with
findings set to strength 0: the same radiograph (anatomy, exposure, texture, noise) without those findings.
That pair is ground truth of what a finding changes in the image, which no real dataset has.

Written by hand because no library renders these phantoms: the replay must consume the writer's random
stream in the writer's order, which only the writer's own code (shared here, not copied) can do.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from helpers.labels import PATHOLOGIES
from helpers.phantom.labels import FINDINGS
from helpers.phantom.writer import (
    MANIFEST,
    VERSION,
    SplitPlan,
    _image_id,
    default_threads,
    marker_rows,
    patient_batches,
    read_manifest,
    render_rows,
    sample_splits,
    threaded_map,
    to_uint8,
)

#: ``remove`` value meaning every finding.
ALL = "all"
#: ``remove`` value meaning the burned-in marker (phantoms written with one, :mod:`helpers.phantom.marker`).
MARKER = "marker"


class ReplayError(ValueError):
    """A folder that cannot be replayed: not a phantom, or written by another phantom version."""


class ReplayedImage(NamedTuple):
    """Where one written image comes from: its split, CSV row, rendering batch, scene and strengths.

    Attributes
    ----------
    split : str
        ``"train"`` or ``"valid"``.
    row : int
        Row of the split's CSV.
    batch : tuple of int
        ``(start, stop)`` rows rendered together with it (:func:`helpers.phantom.patient_batches`).
    scene : dict of numpy.ndarray
        Its scene parameters, each a ``(1, ...)`` array (a one-image scene).
    strength : numpy.ndarray
        ``(13,)`` drawing strengths in :data:`helpers.phantom.FINDINGS` order, 0 = absent.
    """

    split: str
    row: int
    batch: tuple[int, int]
    scene: dict[str, np.ndarray]
    strength: np.ndarray


@dataclass(frozen=True, eq=False, repr=False)
class PhantomReplay(Mapping):
    """A written phantom's scenes and strengths, replayed from its manifest: image id -> :class:`ReplayedImage`.

    Build it with :func:`replay`. Iterating gives the image ids (CheXlocalize's
    ``patientNNNNN_studyK_view1_frontal``), train rows first.

    Attributes
    ----------
    root : Path
        The phantom's folder.
    manifest : dict
        Its ``phantom.json``.
    plans : dict of SplitPlan
        Per split, every row's CSV fields, patient, scene and strengths.
    """

    root: Path
    manifest: dict
    plans: dict[str, SplitPlan]
    _index: dict[str, tuple[str, int, tuple[int, int]]] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", _build_index(self.plans))  # frozen: set once, here

    __eq__ = object.__eq__  # not Mapping's item-wise comparison (arrays inside)
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"PhantomReplay(root={str(self.root)!r}, images={len(self)})"

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the written images."""
        return (self.manifest.get("height", self.manifest["image_size"]), self.manifest["image_size"])

    @property
    def quality(self) -> int:
        """JPEG quality the images were written at."""
        return self.manifest["jpeg_quality"]

    def locate(self, image_id: str) -> tuple[str, int, tuple[int, int]]:
        """``(split, row, batch)`` of an image, without copying its scene."""
        return self._index[image_id]

    def __getitem__(self, image_id: str) -> ReplayedImage:
        split, row, batch = self._index[image_id]
        plan = self.plans[split]
        scene = {key: values[row : row + 1] for key, values in plan.scene.items()}
        return ReplayedImage(split, row, batch, scene, plan.strength[row].copy())

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def has_marker(self) -> bool:
        """Whether the phantom was written with a spurious marker (:mod:`helpers.phantom.marker`)."""
        return "marker" in self.manifest

    def marker_present(self, image_ids: Sequence[str]) -> np.ndarray:
        """Bool ``(n,)``: which images carry the marker (all False for a phantom without one)."""
        if not self.has_marker:
            return np.zeros(len(image_ids), bool)
        return np.array([self.plans[split].scene["marker"][row] > 0 for split, row, _ in map(self.locate, image_ids)])

    def marker_masks(self, image_ids: Sequence[str]) -> np.ndarray:
        """Bool ``(n, height, width)``: the marker's pixels in each image as written (empty where it has none)."""
        masks = np.zeros((len(image_ids), *self.shape), bool)
        for i, image_id in enumerate(image_ids):
            split, row, _ = self.locate(image_id)
            masks[i] = marker_rows(self.plans[split].scene, np.array([row]), self.shape)[0]
        return masks

    def render_batch(
        self,
        split: str,
        batch: tuple[int, int],
        strength: np.ndarray | None = None,
        without_marker: np.ndarray | None = None,
    ):
        """Float images ``(n, height, width)`` and masks ``(n, 13, height, width)`` of one batch, as written.

        ``strength`` ``(stop - start, 13)`` replaces the batch's drawing strengths (default: as written);
        ``without_marker`` (bool, one per row) leaves the marker out of those rows.
        """
        plan = self.plans[split]
        start, stop = batch
        full = plan.strength if strength is None else _with_rows(plan.strength, start, strength)
        scene = plan.scene
        if without_marker is not None and without_marker.any():
            scene = {
                **scene,
                "marker": _with_rows(scene["marker"], start, scene["marker"][start:stop] * ~without_marker),
            }
        return render_rows(scene, full, start, stop, self.shape)


def _with_rows(strength: np.ndarray, start: int, rows: np.ndarray) -> np.ndarray:
    replaced = strength.copy()
    replaced[start : start + len(rows)] = rows
    return replaced


def _build_index(plans: dict[str, SplitPlan]) -> dict[str, tuple[str, int, tuple[int, int]]]:
    index = {}
    for split, plan in plans.items():
        for start, stop in patient_batches(plan.patient):
            for row in range(start, stop):
                index[_image_id(plan.frame["Path"].iat[row])] = (split, row, (start, stop))
    return index


def replay(root: str | Path) -> PhantomReplay:
    """Replay a written phantom's scenes and strengths from its ``phantom.json`` (no image is read).

    Parameters
    ----------
    root : path-like
        A folder written by :func:`helpers.phantom.generate`.

    Returns
    -------
    PhantomReplay
        Image id -> :class:`ReplayedImage`; :meth:`PhantomReplay.render_batch` renders a batch again.

    Raises
    ------
    ReplayError
        If ``root`` has no readable manifest (not a phantom), was written by another phantom version, or its
        CSVs do not match the replayed rows (written by other code under the same version number).
    """
    root = Path(root)
    manifest = _read_manifest(root)
    plans = sample_splits(manifest)
    for split, plan in plans.items():
        _check_csv(root, split, plan.frame)
    return PhantomReplay(root, manifest, plans)


def _read_manifest(root: Path) -> dict:
    try:
        manifest = read_manifest(root)
    except ValueError as why:
        raise ReplayError(
            f"{root} is not a phantom: {why}. Only folders written by helpers.phantom.generate can be rendered again."
        ) from None
    if manifest.get("version") != VERSION:
        raise ReplayError(
            f"{root} was written by phantom version {manifest.get('version')}, this code renders version "
            f"{VERSION}: its scenes cannot be replayed. Generate it again (helpers.phantom.generate)."
        )
    return manifest


def _check_csv(root: Path, split: str, frame: pd.DataFrame) -> None:
    """The written CSV has the replayed paths and labels, or the replay is not of this folder."""
    try:
        written = pd.read_csv(root / f"{split}.csv")
    except FileNotFoundError:
        raise ReplayError(f"{root} has a {MANIFEST} but no {split}.csv: an incomplete phantom.") from None
    missing = [name for name in ("Path", *PATHOLOGIES) if name not in written.columns]
    if missing:
        raise ReplayError(f"{root}/{split}.csv has no column {', '.join(map(repr, missing))}: not the phantom's CSV.")
    same = (
        len(written) == len(frame)
        and (written["Path"].to_numpy() == frame["Path"].to_numpy()).all()
        and np.array_equal(written[list(PATHOLOGIES)].to_numpy(float), frame[list(PATHOLOGIES)].to_numpy(float), True)
    )
    if not same:
        raise ReplayError(
            f"{root}/{split}.csv differs from the rows its {MANIFEST} replays to: written by other phantom code "
            f"under version {VERSION}. Generate it again (helpers.phantom.generate)."
        )


class Counterfactual(NamedTuple):
    """Images as written and without the removed findings, and where they differ.

    Attributes
    ----------
    factual : numpy.ndarray
        uint8 ``(n, height, width)``: the images as written (the JPEG files' decoded pixels).
    counterfactual : numpy.ndarray
        uint8 ``(n, height, width)``: the same images without the removed findings, through the same JPEG
        encoding, so the two differ by the findings and by nothing else than JPEG's response to them.
    changed : numpy.ndarray
        bool ``(n, height, width)``: where the removal changes the rendered grey levels (before JPEG), i.e.
        the findings' footprint on the radiograph; all False where nothing was removed.
    """

    factual: np.ndarray
    counterfactual: np.ndarray
    changed: np.ndarray


def render_without(
    root: str | Path | PhantomReplay,
    image_ids: Sequence[str],
    remove: str | Sequence[str | Sequence[str]],
    *,
    jpeg: bool = True,
    threads: int | None = None,
) -> Counterfactual:
    """Render written phantom images again, as written and with findings removed (strength 0).

    Parameters
    ----------
    root : path-like or PhantomReplay
        The phantom's folder, or its :func:`replay` (to replay once for several calls).
    image_ids : sequence of str
        CheXlocalize ids (``patientNNNNN_studyK_view1_frontal``), in any order; an id may repeat (e.g. with
        another finding removed each time).
    remove : str or sequence
        One finding name (:data:`helpers.phantom.FINDINGS`), ``"all"`` (every finding) or ``"marker"`` (the
        burned-in marker of a phantom written with one) for every image; or one entry per image: a name,
        ``"all"``, ``"marker"``, or a list of names. Removing what an image does not have changes nothing.
    jpeg : bool
        Pass both images through the writer's JPEG encoding (default), so ``factual`` is the written file's
        pixels and the pair differs as two written files would. ``False`` returns the 8-bit renders before
        JPEG: the findings' own change, without JPEG's spread of it over the 8x8 blocks it touches.
    threads : int, optional
        Batches rendered side by side (default :func:`helpers.phantom.writer.default_threads`); the images are the
        same on any number.

    Returns
    -------
    Counterfactual
        ``(factual, counterfactual, changed)``, rows aligned with ``image_ids``.

    Notes
    -----
    Each batch of the writer is rendered once as written, and once more with the removals of every
    requested image in it (rows of a batch are rendered independently; an id repeated within one call
    costs one more render of its batch per repetition). Both go through the writer's 8-bit rounding and
    (``jpeg=True``) a JPEG encode/decode at the manifest's quality, so ``factual`` equals the files' decoded
    pixels (measured: identical). Hand-written, like the phantom: no library renders these scenes, and only
    the writer's own sampling and rendering code (shared, not copied) reproduces its images.
    """
    replayed = root if isinstance(root, PhantomReplay) else replay(root)
    image_ids = list(image_ids)
    unknown = [image_id for image_id in image_ids if image_id not in replayed]
    if unknown:
        raise ValueError(f"Not images of the phantom {replayed.root}: {unknown[:5]} ({len(unknown)} in all).")
    removed = _removed_columns(remove, len(image_ids))
    if removed[:, -1].any() and not replayed.has_marker:
        raise ValueError(f"Cannot remove the marker: the phantom {replayed.root} was written without one.")
    out = Counterfactual(*(np.zeros((len(image_ids), *replayed.shape), dtype) for dtype in (np.uint8, np.uint8, bool)))
    quality = replayed.quality if jpeg else None
    groups = _batch_rounds(replayed, image_ids).items()
    # numpy, scipy and PIL release the GIL in the rendering's array work: threads share it without a process pool
    for _ in threaded_map(
        lambda group: _render_batch_pairs(replayed, *group[0], group[1], removed, quality, out),
        groups,
        threads or default_threads(replayed.shape),
    ):
        pass  # each batch fills its own rows of out
    return out


def _removed_columns(remove, n: int) -> np.ndarray:
    """Bool ``(n, 14)``: which findings (columns 0-12) and whether the marker (column 13) to remove from each image."""
    per_image = [remove] * n if isinstance(remove, str) else _names(remove, "remove")
    if len(per_image) != n:
        raise ValueError(f"remove has {len(per_image)} entries for {n} images; give one per image, or one name.")
    columns = np.zeros((n, len(FINDINGS) + 1), bool)
    for i, names in enumerate(per_image):
        names = _checked(_names(names, f"remove[{i}]"))
        columns[i, :-1] = True if ALL in names else np.isin(FINDINGS, names)
        columns[i, -1] = MARKER in names
    return columns


def _names(value, what: str) -> list:
    """``value`` as a list of names: one name, or a sequence of them; a clear error for anything else."""
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"{what} must be a finding's name or a sequence of names; got {value!r}.") from None


def _checked(names: list[str]) -> list[str]:
    bad = [name for name in names if name not in (*FINDINGS, ALL, MARKER)]
    if bad:
        raise ValueError(
            f"Cannot remove {bad}: the phantom's findings are {list(FINDINGS)} (or {ALL!r}, or {MARKER!r})."
        )
    return names


def _batch_rounds(replayed: PhantomReplay, image_ids: list[str]) -> dict:
    """``{(split, batch): [[(position, row in batch), ...], ...]}``: the requests per batch, in rounds.

    A round holds each image once, so an id requested twice (other findings removed) goes to a second round.
    """
    groups: dict = {}
    for position, image_id in enumerate(image_ids):
        split, row, batch = replayed.locate(image_id)
        rounds = groups.setdefault((split, batch), [])
        free = next((r for r in rounds if all(image_ids[p] != image_id for p, _ in r)), None)
        if free is None:
            rounds.append(free := [])
        free.append((position, row - batch[0]))
    return groups


def _render_batch_pairs(replayed: PhantomReplay, split: str, batch, rounds, removed, quality, out) -> None:
    """Fill ``out`` for the requests of one batch: one render as written, one without per round of requests."""
    strength = replayed.plans[split].strength[batch[0] : batch[1]]
    factual = to_uint8(replayed.render_batch(split, batch)[0])
    for requests in rounds:
        without, no_marker = strength.copy(), np.zeros(len(strength), bool)
        for position, row in requests:
            without[row, removed[position, :-1]] = 0.0
            no_marker[row] = removed[position, -1]
        drawn = _marker_rows(replayed, split, batch)
        same = np.array_equal(without, strength) and not (no_marker & drawn).any()  # nothing present was removed
        counterfactual = factual if same else to_uint8(replayed.render_batch(split, batch, without, no_marker)[0])
        for position, row in requests:
            out.factual[position] = _jpeg_round_trip(factual[row], quality)
            out.counterfactual[position] = _jpeg_round_trip(counterfactual[row], quality)
            out.changed[position] = factual[row] != counterfactual[row]


def _marker_rows(replayed: PhantomReplay, split: str, batch: tuple[int, int]) -> np.ndarray:
    """Bool, one per row of the batch: where the marker is drawn."""
    if not replayed.has_marker:
        return np.zeros(batch[1] - batch[0], bool)
    return replayed.plans[split].scene["marker"][batch[0] : batch[1]] > 0


def _jpeg_round_trip(image: np.ndarray, quality: int | None) -> np.ndarray:
    """uint8 ``image`` encoded as the writer encodes it (PIL, ``quality``) and decoded again; None: as it is."""
    if quality is None:
        return image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"))

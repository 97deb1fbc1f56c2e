"""Writing a phantom dataset folder in the CheXpert-v1.0-small layout, with CheXlocalize masks.

The folder is built in a temporary sibling and renamed into place when complete, so an interrupted run
leaves nothing half-written; ``phantom.json`` records the parameters, so a matching phantom is reused.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as coco_mask

from helpers.io import new_folder
from helpers.labels import PATHOLOGIES
from helpers.phantom.labels import FINDINGS, chexpert_stats, drawing_strength, patients, sample_labels
from helpers.phantom.marker import STREAM, Marker, marker_masks, sample_marker
from helpers.phantom.render import render
from helpers.phantom.scene import study_scenes

MANIFEST = "phantom.json"
#: Bump when the same parameters would write other files, so existing phantoms are regenerated.
VERSION = 8
#: Rows rendered at once (a batch never splits a patient's studies).
BATCH = 16
#: Images of at most this many pixels are rendered on one thread: their rendering is mostly Python between small
#: array calls, which holds the GIL. Measured on 2 cores (``bench_phantom.py``, best / median of 3): two threads
#: wrote a 96 px phantom 9% / 15% slower than one, a 128 px one 10% faster in RAM and 11% slower on disk, a 224 px
#: one 1.6x faster.
THREADED_MIN_PIXELS = 128 * 128


def generate(
    root: str | Path,
    n_images: int,
    image_size: int,
    seed: int = 0,
    *,
    n_valid: int | None = None,
    min_prevalence: float = 0.0,
    jpeg_quality: int = 95,
    progress: bool = False,
    height: int | None = None,
    marker: Marker | None = None,
    threads: int | None = None,
) -> Path:
    """Write a phantom dataset in the CheXpert-v1.0-small layout and return its folder.

    Parameters
    ----------
    root : path-like
        Folder to create: ``train.csv``, ``valid.csv``, ``train/patientNNNNN/studyK/view1_frontal.jpg``,
        ``valid/...``, ``gt_segmentations.json`` (CheXlocalize format, every image, all 13 findings) and
        ``phantom.json`` (the parameters). An existing phantom with the same parameters is reused; one
        with other parameters is replaced; a folder that is not a phantom is never touched.
    n_images : int
        Rows of ``train.csv`` (frontal views; patients have several studies).
    image_size : int
        Width of the images, in pixels; also their height unless ``height`` is given.
    seed : int
        Everything (labels, anatomy, noise) follows from it.
    n_valid : int, optional
        Rows of ``valid.csv`` (default ``max(n_images // 5, 1)``); like CheXpert's, it has no -1 labels.
    min_prevalence : float
        Floor on each finding's positive rate (0 keeps CheXpert's rates).
    jpeg_quality : int
        Quality of the written JPEGs.
    progress : bool
        Show a progress bar per split.
    height : int, optional
        Height of the images, for non-square ones like CheXpert-v1.0-small's (about 320 wide and 390
        high: ``generate(root, n, 320, height=390)``). Each image is rendered square at the larger side
        and resized to ``height x image_size`` (bilinear); each mask is resized with it and keeps every
        pixel its finding contributes to (resized coverage > 0), so masks stay aligned with the image and
        thin findings keep their masks. The masks' RLE ``size`` is ``[height, image_size]``. Default (or
        ``height == image_size``): square, with the same files as before the option existed.
    marker : Marker, optional
        Draw a spurious burned-in marker that follows one pathology's label in ``train.csv`` and not in
        ``valid.csv`` (:mod:`helpers.phantom.marker`). The images are otherwise those of the same phantom without
        it. Default: none, the same files as before the option existed.
    threads : int, optional
        Batches rendered and written side by side (default :func:`default_threads`); the files are the same on
        any number.

    Notes
    -----
    Writing happens in a temporary sibling folder that is renamed into place when complete, so an
    interrupted run leaves nothing half-written.
    """
    root = Path(root)
    n_valid = max(n_images // 5, 1) if n_valid is None else n_valid
    height = image_size if height is None else height
    if n_images < 1 or n_valid < 1 or min(image_size, height) < 32:
        raise ValueError(
            f"Need n_images >= 1, n_valid >= 1 and image_size, height >= 32; "
            f"got {n_images}, {n_valid}, {image_size}, {height}."
        )
    manifest = {  # plain Python numbers: a numpy integer would fail in json.dumps only after the whole rendering
        "n_images": int(n_images),
        "n_valid": int(n_valid),
        "image_size": int(image_size),
        "seed": int(seed),
        "min_prevalence": float(min_prevalence),
        "jpeg_quality": int(jpeg_quality),
        "version": VERSION,
    }
    if height != image_size:  # only then: square phantoms keep their manifest, hence stay reused
        manifest["height"] = int(height)
    if marker is not None:  # likewise: phantoms without a marker keep their manifest
        manifest["marker"] = marker.to_dict()
    if _existing_manifest(root) == manifest:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder(root.parent, f".{root.name}.")
    try:
        _write_dataset(tmp, manifest, progress, threads or default_threads((height, image_size)))
        _replace_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_dataset(folder: Path, manifest: dict, progress: bool, threads: int) -> None:
    """Both splits, their CSVs, the masks and (last) the manifest, into the empty ``folder``."""
    shape = (manifest.get("height", manifest["image_size"]), manifest["image_size"])
    masks: dict[str, dict] = {}
    for split, plan in sample_splits(manifest).items():
        quality = manifest["jpeg_quality"]
        _write_split(folder, split, plan, masks, shape=shape, quality=quality, progress=progress, threads=threads)
        plan.frame.to_csv(folder / f"{split}.csv", index=False)
    (folder / "gt_segmentations.json").write_text(json.dumps(masks))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


@dataclass(frozen=True)
class SplitPlan:
    """One split as sampled before rendering: its CSV rows, and per row the patient, scene and strengths.

    Attributes
    ----------
    frame : DataFrame
        The split's CSV rows (``Path``, metadata and the 14 label codes).
    patient : numpy.ndarray
        0-based patient index per row (the batches of :func:`patient_batches` follow it).
    scene : dict of numpy.ndarray
        :func:`helpers.phantom.study_scenes` of the rows.
    strength : numpy.ndarray
        ``(n, 13)`` drawing strengths (:func:`helpers.phantom.drawing_strength`).
    """

    frame: pd.DataFrame
    patient: np.ndarray
    scene: dict[str, np.ndarray]
    strength: np.ndarray


def sample_splits(manifest: dict) -> dict[str, SplitPlan]:
    """``{"train": ..., "valid": ...}``: every random draw of a phantom, from its manifest, in the writer's order.

    Rendering draws from no shared generator (only from each scene's ``batch_seed``), so these plans are
    all a phantom's randomness: :func:`generate` renders them, and :mod:`helpers.phantom.counterfactual`
    replays them to render a written phantom's images again, with or without findings.
    """
    rng = np.random.default_rng(manifest["seed"])
    train = _sample_split("train", manifest["n_images"], 1, rng, manifest["min_prevalence"])
    first_valid_patient = int(train.frame["Path"].str.extract(r"patient(\d+)", expand=False).astype(int).max()) + 1
    valid = _sample_split("valid", manifest["n_valid"], first_valid_patient, rng, manifest["min_prevalence"])
    if "marker" in manifest:  # its own stream, drawn last: every other draw stays that of the phantom without it
        marker, marker_rng = Marker(**manifest["marker"]), np.random.default_rng((manifest["seed"], STREAM))
        for split, plan in (("train", train), ("valid", valid)):
            codes = plan.frame[list(PATHOLOGIES)].to_numpy(float)
            plan.scene.update(sample_marker(codes, split == "train", marker, marker_rng))
    return {"train": train, "valid": valid}


def _sample_split(split: str, n: int, first_patient: int, rng: np.random.Generator, min_prevalence: float) -> SplitPlan:
    """One split's rows, scenes and strengths (``valid`` has no uncertain labels, as CheXpert's)."""
    patient, study = patients(n, rng)
    frame = _metadata(split, patient + first_patient, study, rng)
    codes = sample_labels(n, rng, min_prevalence, allow_uncertain=split == "train")
    frame[list(PATHOLOGIES)] = codes
    scene = study_scenes(patient, rng, ap=frame["AP/PA"].to_numpy() == "AP")
    return SplitPlan(frame, patient, scene, drawing_strength(codes, rng))


def read_manifest(root: Path) -> dict:
    """``root``'s phantom manifest; :class:`ValueError` saying why where ``root`` holds none (no folder, no file,
    not JSON, or JSON that is not a phantom's manifest: a folder with another tool's ``phantom.json``)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as error:
        raise ValueError(f"no readable {MANIFEST} ({type(error).__name__})") from None
    if not isinstance(manifest, dict) or "version" not in manifest:  # every phantom version's manifest has one
        raise ValueError(f"its {MANIFEST} is not a phantom's (a JSON object with a version)")
    return manifest


def _existing_manifest(root: Path) -> dict | None:
    if not root.exists():
        return None
    try:
        return read_manifest(root)
    except ValueError as why:  # only a phantom is ever replaced: anything else may be someone's data
        raise FileExistsError(
            f"{root} exists and is not a complete phantom ({why}); refusing to overwrite it. Remove it or choose "
            f"another folder."
        ) from None


def _replace_folder(new: Path, root: Path) -> None:
    """Rename ``new`` onto ``root``, moving an older phantom aside first (a folder cannot be replaced in one rename)."""
    if root.exists():
        old = root.with_name(f".{root.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
        new.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(root)


def _write_split(
    folder: Path,
    split: str,
    plan: SplitPlan,
    masks: dict,
    *,
    shape: tuple[int, int],
    quality: int,
    progress: bool,
    threads: int,
) -> None:
    """Render and write one split's images, batches side by side; adds its masks to ``masks`` in row order.

    Threads, not processes: rendering, JPEG encoding and RLE are array work in numpy, scipy, PIL and pycocotools,
    which release the GIL. Each batch draws only from its own seed, so the files are the same on any number of
    threads, and the masks are added in row order (the JSON's order) whatever order the batches finish in.
    """
    batches = patient_batches(plan.patient)
    written = threaded_map(lambda rows: _write_batch(folder, plan, *rows, shape, quality), batches, threads)
    if progress:
        from tqdm.auto import tqdm

        written = tqdm(written, total=len(batches), desc=f"phantom {split}", unit="batch")
    for batch_masks in written:
        masks.update(batch_masks)


def threaded_map(function, items, threads: int):
    """``function`` of each item on ``threads`` threads, the results yielded in the items' order. An error (or
    an interrupt) re-raises here and cancels the tasks not yet started, so a failed render stops soon."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _write_batch(folder: Path, plan: SplitPlan, start: int, stop: int, shape, quality: int) -> dict:
    """Render rows ``start:stop`` and write their JPEGs; returns their masks by image id (COCO RLE)."""
    images, drawn = render_rows(plan.scene, plan.strength, start, stop, shape)
    masks = {}
    for row, image, image_masks in zip(range(start, stop), images, drawn):
        first_study = row == 0 or plan.patient[row] != plan.patient[row - 1]
        path = folder / Path(plan.frame["Path"].iat[row]).relative_to("CheXpert-v1.0-small")
        _save_jpeg(path, image, quality, first_study)
        masks[_image_id(plan.frame["Path"].iat[row])] = dict(zip(FINDINGS, _encode_stack(image_masks)))
    return masks


def default_threads(shape: tuple[int, int]) -> int:
    """Threads that render batches of images of ``shape`` side by side: one per core for images over
    :data:`THREADED_MIN_PIXELS`, else one."""
    return joblib.cpu_count() if shape[0] * shape[1] > THREADED_MIN_PIXELS else 1  # cores this process may use


def render_rows(
    scene: dict[str, np.ndarray], strength: np.ndarray, start: int, stop: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` (one of :func:`patient_batches`) rendered as :func:`generate` writes them.

    Float images ``(n, height, width)`` in [0, 1] and masks ``(n, 13, height, width)``: rendered square at
    the larger side of ``shape`` and resized to it when it is not square.
    """
    rows = slice(start, stop)
    images, drawn = render({k: v[rows] for k, v in scene.items()}, strength[rows], max(shape))
    if images.shape[1:] != shape:
        images, drawn = _resize_rendered(images, drawn, shape)
    return images, drawn


def marker_rows(scene: dict[str, np.ndarray], rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool ``(len(rows), height, width)``: the burned-in marker's pixels of the given rows as written (empty where
    an image has none, or the phantom no marker), rendered square and resized like :func:`render_rows`' masks."""
    masks = marker_masks({key: values[rows] for key, values in scene.items()}, max(shape))
    return masks if masks.shape[1:] == shape else _resize_masks(masks[:, None], shape)[:, 0]


def patient_batches(patient: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about :data:`BATCH` rows that never split a patient's studies."""
    bounds, start = [], 0
    while start < len(patient):
        stop = min(start + BATCH, len(patient))
        while stop < len(patient) and patient[stop] == patient[stop - 1]:
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def _resize_rendered(images: np.ndarray, masks: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Square renders resized to ``shape = (height, width)``: images ``(n, s, s)`` and masks ``(n, k, s, s)``.

    Images are resized bilinearly (PIL, which widens its kernel when shrinking, so nothing aliases).
    A mask is resized the same way and keeps every pixel with coverage > 0: the output pixels the
    finding's pixels contribute to in the resized image, so a thin line keeps a mask after shrinking.
    Empty masks stay empty without being resized (most are).
    """
    return np.stack([_resize_float(image, shape) for image in images]), _resize_masks(masks, shape)


def _resize_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Masks ``(n, k, s, s)`` resized to ``shape``, keeping each pixel with coverage > 0 (:func:`_resize_rendered`)."""
    resized = np.zeros((*masks.shape[:2], *shape), dtype=bool)
    for image, finding in zip(*np.nonzero(masks.any(axis=(2, 3)))):
        resized[image, finding] = _resize_float(masks[image, finding].astype(np.float32), shape) > 0
    return resized


def _resize_float(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    resized = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def _metadata(split: str, patient: np.ndarray, study: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """CheXpert's metadata columns: path, sex and age (per patient), frontal view, AP or PA (per image)."""
    views = chexpert_stats()["views"]
    n = len(patient)
    path = [f"CheXpert-v1.0-small/{split}/patient{p:05d}/study{s}/view1_frontal.jpg" for p, s in zip(patient, study)]
    sex_of_patient = np.where(rng.random(patient.max() + 1) < views["male"], "Male", "Female")
    age_of_patient = rng.normal(views["age_mean"], views["age_std"], patient.max() + 1).clip(18, 90)
    return pd.DataFrame(
        {
            "Path": path,
            "Sex": sex_of_patient[patient],
            "Age": np.round(age_of_patient[patient]).astype(int),
            "Frontal/Lateral": "Frontal",
            "AP/PA": np.where(rng.random(n) < views["ap_among_frontal"], "AP", "PA"),
        }
    )


def _image_id(path: str) -> str:
    """CheXlocalize's image id: ``patientNNNNN_studyK_view1_frontal``."""
    return "_".join(Path(path).with_suffix("").parts[-3:])


def _save_jpeg(path: Path, image: np.ndarray, quality: int, first_study: bool) -> None:
    if first_study:  # one mkdir per study and one per patient: metadata calls are slow on some disks
        path.parent.parent.mkdir(parents=True)
    path.parent.mkdir()
    Image.fromarray(to_uint8(image)).save(path, quality=quality)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Rendered float images in [0, 1] as the grey levels written to the JPEGs (rounded)."""
    return (images * 255.0 + 0.5).astype(np.uint8)


def _encode_stack(image_masks: np.ndarray) -> list[dict]:
    """COCO RLE of each of an image's masks, in one pycocotools call (one call per mask is 5x slower)."""
    encoded = coco_mask.encode(np.asfortranarray(image_masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]

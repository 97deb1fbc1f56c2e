"""Write the CheXlocalize sample fixture that ``tests/test_chexlocalize_sample.py`` reads.

Fetched data may not be committed to this repository, so the fixture is derived from a clone of CheXlocalize
(github.com/rajpurkarlab/cheXlocalize, MIT licence) wherever one is at hand, into
``../shared/fixtures/chexlocalize_sample`` by default:

- ``gt_segmentations_val.json``: the radiologists' masks, copied byte for byte;
- ``gradcam_maps_val.npz``: the 20 Grad-CAM maps (320 x 320, float32) with their image ids, tasks (CheXlocalize's
  names), probabilities and original sizes; the CheXpert image each pickle also holds is left out (CheXpert's
  licence does not allow redistributing it);
- ``LICENSE.md``: CheXlocalize's licence, and ``README.md``: where the files came from.

The maps are pickles of CUDA-era torch tensors. They are read by an unpickler that accepts only the three globals
such a pickle names (torch's tensor rebuild, its storage loader, ``OrderedDict``), each storage loaded on the CPU
with ``weights_only=True``: a pickle naming anything else is refused, so nothing in it runs. Written by hand
because neither torch nor CheXlocalize offers a restricted loader for these files.

Run: ``python scripts/chexlocalize_fixture.py PATH/TO/cheXlocalize [OUTPUT_FOLDER]``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from helpers import paths

DEFAULT_OUTPUT = paths.PROJECT_ROOT.parent / "shared" / "fixtures" / "chexlocalize_sample"
MASKS_JSON = "gt_segmentations_val.json"
MAPS_NPZ = "gradcam_maps_val.npz"
MAP_SUFFIX = "_map.pkl"


def _load_storage_on_cpu(serialised: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(serialised), map_location="cpu", weights_only=True)


class _TensorOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds torch tensors on the CPU and refuses every other global."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage_on_cpu,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a tensor function: refused") from None


def read_map_pickle(path: Path) -> dict:
    """One of CheXlocalize's ``*_map.pkl`` files as arrays: the map (320 x 320), task, probability, original size."""
    try:
        with open(path, "rb") as handle:
            content = _TensorOnlyUnpickler(handle).load()
        return {
            "map": content["map"].squeeze().numpy().astype(np.float32),
            "task": str(content["task"]),
            "prob": float(content["prob"]),
            "cxr_dims": tuple(int(side) for side in content["cxr_dims"]),
        }
    except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path} is not one of CheXlocalize's Grad-CAM map pickles ({error})") from error


def image_id(path: Path, task: str) -> str:
    """``patient64541_study1_view1_frontal`` from ``patient64541_study1_view1_frontal_<task>_map.pkl``."""
    return path.name.removesuffix(f"_{task}{MAP_SUFFIX}")


def write_fixture(clone: Path, output: Path = DEFAULT_OUTPUT) -> Path:
    """Derive the fixture from a CheXlocalize clone into ``output`` (written beside it, then renamed into place)."""
    sample = Path(clone) / "sample"
    pickles = sorted((sample / "gradcam_maps_val").glob(f"*{MAP_SUFFIX}"))
    if not pickles or not (sample / MASKS_JSON).is_file():
        raise FileNotFoundError(
            f"{sample} has no {MASKS_JSON} or gradcam_maps_val/*{MAP_SUFFIX}: is {clone} a clone "
            "of github.com/rajpurkarlab/cheXlocalize?"
        )
    maps = [read_map_pickle(path) for path in pickles]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        _write_files(staging, clone, sample, pickles, maps)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
    return output


def _write_files(staging: Path, clone: Path, sample: Path, pickles: list[Path], maps: list[dict]) -> None:
    staging.chmod(0o755)  # mkdtemp makes it private; the fixture is for every user of the machine
    np.savez_compressed(
        staging / MAPS_NPZ,
        image_ids=np.array([image_id(path, found["task"]) for path, found in zip(pickles, maps)]),
        tasks=np.array([found["task"] for found in maps]),
        maps=np.stack([found["map"] for found in maps]),
        probs=np.array([found["prob"] for found in maps]),
        cxr_dims=np.array([found["cxr_dims"] for found in maps]),
    )
    shutil.copyfile(sample / MASKS_JSON, staging / MASKS_JSON)
    shutil.copyfile(Path(clone) / "LICENSE.md", staging / "LICENSE.md")
    (staging / "README.md").write_text(_provenance(clone))


def _provenance(clone: Path) -> str:
    return (
        "# CheXlocalize's public sample, as chexplain's test fixture\n\n"
        f"Derived by `scripts/chexlocalize_fixture.py` from `{Path(clone).name}/sample/` of "
        "github.com/rajpurkarlab/cheXlocalize (MIT licence, see LICENSE.md; Copyright (c) 2022 Rajpurkar Lab).\n"
        f"`{MASKS_JSON}` is CheXlocalize's file unchanged; `{MAPS_NPZ}` holds the 20 Grad-CAM maps of its model as "
        "arrays, without the CheXpert images (CheXpert's licence does not allow redistributing them).\n"
    )


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    written = write_fixture(Path(argv[0]), *(Path(argv[1]),) if len(argv) == 2 else ())
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

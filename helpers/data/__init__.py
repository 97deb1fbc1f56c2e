"""Read, validate and serve CheXpert-format data (real CheXpert or the phantom, same layout).

The flow is: :func:`read_chexpert_csv` (validated labels) -> :func:`frontal_only` ->
:func:`split_by_patient` -> :func:`build_image_cache` (every image decoded once, in parallel, into a
memory-mapped cache)
-> :class:`ChestXrayDataset` (pure array indexing, so no DataLoader worker ever decodes a file).
:func:`prepare` runs that flow for a dataset folder and :func:`load_prepared` reads its result back.

Modules: ``chexpert`` (CSV reading, validation, patient splits), ``policy`` (uncertain labels),
``images`` (decoding), ``cache`` (the decoded-image cache), ``masks`` (CheXlocalize ground truth),
``datasets`` (torch inputs and Dataset), ``prepared`` (a profile's prepared splits). Every public name
is re-exported here, so ``helpers.data.<name>`` keeps working.
"""

from helpers.data.cache import build_image_cache
from helpers.data.chexpert import (
    DatasetError,
    chexpert_csv_from_torchxrayvision,
    frontal_only,
    image_ids,
    patient_ids,
    read_chexpert_csv,
    split_by_patient,
)
from helpers.data.datasets import ChestXrayDataset, batch_inputs, to_model_input
from helpers.data.images import (
    CHEXPERT_PREFIXES,
    DICOM_SUFFIXES,
    InputGeometry,
    audit_images,
    input_geometry,
    is_dicom,
    load_image,
    resize_to_input,
    resolve_image_path,
)
from helpers.data.masks import (
    ACCEPTED_NAMES,
    CHEXLOCALIZE_NAMES,
    MaskSet,
    decode_mask,
    encode_mask,
    load_masks,
    map_mask,
    mask_audit,
    mask_files,
    mask_mean,
    mask_stack,
    pathology_name,
)
from helpers.data.policy import POLICIES, apply_policy
from helpers.data.prepared import SPLITS, PreparedData, load_prepared, prepare
from helpers.io import atomic_path  # re-exported until every caller imports it from helpers.io

__all__ = [
    "ACCEPTED_NAMES",
    "CHEXLOCALIZE_NAMES",
    "DICOM_SUFFIXES",
    "InputGeometry",
    "is_dicom",
    "MaskSet",
    "input_geometry",
    "map_mask",
    "pathology_name",
    "CHEXPERT_PREFIXES",
    "POLICIES",
    "SPLITS",
    "DatasetError",
    "ChestXrayDataset",
    "PreparedData",
    "apply_policy",
    "atomic_path",
    "audit_images",
    "batch_inputs",
    "build_image_cache",
    "chexpert_csv_from_torchxrayvision",
    "decode_mask",
    "encode_mask",
    "frontal_only",
    "image_ids",
    "load_image",
    "resize_to_input",
    "load_masks",
    "mask_audit",
    "load_prepared",
    "mask_files",
    "mask_mean",
    "mask_stack",
    "patient_ids",
    "prepare",
    "read_chexpert_csv",
    "resolve_image_path",
    "split_by_patient",
    "to_model_input",
]

"""What the medcnn MONAI Label app decides, without MONAI Label: runs (and is unit-tested) in the main environment.

The MONAI Label task classes (:mod:`medcnn.monailabel.infer`) and the app (:mod:`medcnn.monailabel.app`) only
import MONAI Label and call into this module for everything they decide:

- **which config is served**: the bundle's ``configs/inference.json`` merged with its override config
  (:func:`override_files`, :func:`read_served_config`), the served dimension and labels (:func:`served_labels`);
- **which classifier decision and CAM rule**: :func:`medcnn.predict.bundle_cam_rule` and
  :func:`medcnn.predict.classify_with_cam`, the same functions ``medcnn predict`` runs, so the two cannot drift; a
  volume's slices are decided by the bundle's slice-scoring rule (:func:`served_slice_scorer`,
  :func:`medcnn.predict.decide_slices`);
- **what is accepted into the studies folder**: :func:`check_upload` (a readable NIfTI image of 2 to 4 dimensions,
  finite values) and :data:`STUDY_EXTENSIONS` (the datastore lists NIfTI only: a PNG would be handed to Slicer on
  a grid perpendicular to the image);
- **what the client is told**: :func:`http_error` (a bad request answers 4xx with the medcnn message naming the
  file, not "500 Internal Server Error" with the reason only in the server log);
- **how the result is written**: :func:`save_on_input_grid` (the input's own affine, qform/sform codes and units).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize

from medcnn.errors import user_error
from medcnn.predict import CLASSIFIER_TYPES, bundle_cam_rule, summarise_slices
from medcnn.transforms.validation import InvalidInputError

__all__ = [
    "OVERRIDES_DIR", "STUDY_EXTENSIONS", "NIFTI_EXT", "bundle_metadata", "is_classifier", "override_files",
    "override_settings", "read_served_config", "class_names", "served_cam_rule", "served_labels",
    "served_slice_scorer", "served_dimension", "label_array", "save_on_input_grid", "input_spatial_shape",
    "RestoreToInputd", "summarise_slices", "check_upload", "http_error",
]

logger = logging.getLogger(__name__)

OVERRIDES_DIR = Path(__file__).resolve().parent / "overrides"
NIFTI_EXT = (".nii", ".nii.gz")
# the datastore lists and accepts these only: the infer tasks write results on a NIfTI input's own grid
STUDY_EXTENSIONS = ["*.nii.gz", "*.nii"]


# ------------------------------------------------------------------------------------------------ served config
def bundle_metadata(path: str | os.PathLike) -> dict:
    """The bundle's ``configs/metadata.json`` as a dict."""
    with open(os.path.join(path, "configs", "metadata.json")) as f:
        return json.load(f)


def is_classifier(meta: dict) -> bool:
    """True when the bundle's first output is class probabilities / logits rather than a label image."""
    out = next(iter(meta.get("network_data_format", {}).get("outputs", {}).values()), {})
    return str(out.get("type", "image")).lower() in CLASSIFIER_TYPES


def override_files(bundle_path: str | os.PathLike, overrides_dir: str | os.PathLike = OVERRIDES_DIR) -> list[str]:
    """The MONAI Label override config of a bundle: its own ``configs/monailabel.json``, else
    ``<overrides_dir>/<served name>.json`` (the served name is the folder name, e.g. a variant's link name), else the
    bundle's ``configs/predict.json``, so that ``medcnn predict`` and MONAI Label run one configuration."""
    own = os.path.join(bundle_path, "configs", "monailabel.json")
    app = os.path.join(overrides_dir, f"{os.path.basename(os.path.normpath(bundle_path))}.json")
    predict = os.path.join(bundle_path, "configs", "predict.json")
    return [f for f in (own, app, predict) if os.path.isfile(f)][:1]


def override_settings(bundle_path: str | os.PathLike) -> dict:
    """The ``monailabel`` section of the bundle's override config ({} without one)."""
    files = override_files(bundle_path)
    if not files:
        return {}
    with open(files[0]) as f:
        return json.load(f).get("monailabel") or {}


def read_served_config(bundle_path: str | os.PathLike, config: str | os.PathLike | None = None) -> ConfigParser:
    """``inference.json`` (or ``config``) merged with the override config; top-level ids of the override win.

    A ``configs/predict.json`` whose preprocessing does not load the image (``medcnn predict`` hands it the loaded
    image, channel first) gets the loader MONAI Label needs in front: ``LoadImaged`` keeping the file's dtype, then
    the channel axis first (the last axis of a multi-channel image, else a new one), as ``medcnn predict`` does.
    """
    config = config or os.path.join(bundle_path, "configs", "inference.json")
    parser = ConfigParser()
    files = [str(config), *override_files(bundle_path)]
    parser.read_config(files)
    parser["bundle_root"] = str(bundle_path)
    if len(files) > 1:
        logger.info("bundle %s: inference config %s merged with %s", os.path.basename(bundle_path), config, files[1:])
    if len(files) > 1 and os.path.basename(files[1]) == "predict.json":
        steps = list(parser["preprocessing"]["transforms"])
        first = steps[0] if steps and isinstance(steps[0], dict) else {}
        if not str(first.get("_target_", "")).split(".")[-1].startswith("LoadImage"):
            inp = next(iter(bundle_metadata(bundle_path)["network_data_format"]["inputs"].values()))
            channel_dim = -1 if int(inp.get("num_channels", 1)) > 1 else "no_channel"
            parser["preprocessing#transforms"] = [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True, "dtype": None},
                {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": channel_dim},
                *steps,
            ]
    return parser


def class_names(meta: dict) -> dict[int, str]:
    """Class index -> name of a classifier bundle (its output's ``channel_def``)."""
    out = next(iter(meta.get("network_data_format", {}).get("outputs", {}).values()), {})
    return {int(k): str(v) for k, v in out.get("channel_def", {}).items()}


def served_cam_rule(bundle_path: str | os.PathLike, parser: ConfigParser) -> dict:
    """The CAM rule served for a classifier bundle: :func:`medcnn.predict.bundle_cam_rule` on the served config,
    checked by :class:`~medcnn.localisation.rule.CAMRule` so that a bad rule fails when the app starts."""
    from medcnn.localisation.rule import CAMRule

    rule = bundle_cam_rule(bundle_path, parser)
    rule.update(CAMRule.from_dict({k: v for k, v in rule.items() if k != "source"}).to_dict())
    return rule


def served_slice_scorer(parser: ConfigParser) -> Any:
    """The bundle's slice-scoring rule (its ``inferer`` when that is a
    :class:`medcnn.networks.SliceScoreInferer`), else None. A classifier served slice by slice scores each slice
    with its ``score`` and decides the volume's slices with :func:`medcnn.predict.decide_slices`, as ``medcnn
    predict`` does, so a slice is called positive iff the rule's probability reaches the decision threshold."""
    from medcnn.networks.slice_scoring import SliceScoreInferer

    spec = parser.get("inferer")
    if not isinstance(spec, dict) or not str(spec.get("_target_", "")).endswith("SliceScoreInferer"):
        return None
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    return inferer if isinstance(inferer, SliceScoreInferer) else None


def served_labels(labels: dict[str, int] | None) -> dict[str, int]:
    """Label name -> value as MONAI Label lists it: without value 0 (the background of a label map)."""
    return {str(k): int(v) for k, v in (labels or {}).items() if int(v) > 0}


def served_dimension(parser: ConfigParser, default: int) -> int:
    """The dimension Slicer is told: the override's ``monailabel.dimension`` or ``input_spatial_dims`` (e.g. a 2D
    network run slice by slice over a volume), else ``default`` (the network input's spatial rank)."""
    ml = parser.get("monailabel") or {}
    if ml.get("dimension"):
        return int(ml["dimension"])
    if parser.get("input_spatial_dims") is not None:  # the id medcnn predict reads (configs/predict.json)
        return int(parser.get_parsed_content("input_spatial_dims"))
    return int(default)


# ------------------------------------------------------------------------------------------------ results
def label_array(pred: Any, spatial_ndim: int) -> np.ndarray:
    """``pred`` (tensor/array, optional leading channel or one-hot channels) -> uint8 array of ``spatial_ndim``."""
    arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if arr.ndim == spatial_ndim + 1:
        arr = arr[0] if arr.shape[0] == 1 else np.argmax(arr, axis=0)
    if arr.ndim != spatial_ndim:
        raise ValueError(f"prediction of shape {arr.shape} does not have {spatial_ndim} spatial dimensions")
    return np.rint(arr).astype(np.uint8)


def save_on_input_grid(label: np.ndarray, ref: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Write ``label`` ``(*S)`` as NIfTI with the reference image's affine, qform/sform codes and units."""
    out = nib.Nifti1Image(label.astype(np.uint8), ref.affine)
    hdr = ref.header
    out.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
    out.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
    out.header.set_xyzt_units(*hdr.get_xyzt_units())
    out.set_data_dtype(np.uint8)
    nib.save(out, str(path))


def input_spatial_shape(image: Any) -> list[int]:
    """Spatial shape of the loaded input (before preprocessing), without its channel axis if it had one."""
    meta = image.meta if isinstance(image, MetaTensor) else {}
    shape = [int(v) for v in meta.get("spatial_shape", list(image.shape[1:]))]
    ch = meta.get("original_channel_dim", "no_channel")
    if isinstance(ch, (int, np.integer)) and not isinstance(ch, bool) and len(shape) > len(image.shape) - 1:
        del shape[int(ch)]
    return shape


class RestoreToInputd(MapTransform):
    """Resize ``keys`` ``(C, *S)`` (nearest) back to the input's spatial shape when preprocessing changed it.

    Unlike MONAI Label's ``Restored`` it knows the input's channel axis (``Restored`` takes the last spatial sides,
    which for a channel-last ``(H, W, C)`` slice gives ``(W, C)``).
    """

    def __init__(self, keys, ref_image: str = "image") -> None:
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data):
        d = dict(data)
        shape = input_spatial_shape(d[self.ref_image])
        for key in self.key_iterator(d):
            pred = d[key]
            if list(pred.shape[1:]) != shape:
                pred = Resize(spatial_size=shape, mode="nearest")(pred)
            d[key] = pred
        return d


# ------------------------------------------------------------------------------------------------ requests
def check_upload(path: str | os.PathLike, name: str | None = None) -> tuple[int, ...]:
    """Refuse an upload that the infer tasks cannot read, before it is stored; returns its shape.

    A NIfTI file (``.nii`` / ``.nii.gz``), fully readable (a truncated gzip fails here, not at inference), with 2 to
    4 dimensions, at least one voxel and finite values. :class:`InvalidInputError` naming ``name`` (the image id or
    the client's file name) and the problem otherwise.
    """
    name = name or os.path.basename(str(path))
    lower = str(path).lower()
    if not lower.endswith(NIFTI_EXT):
        raise InvalidInputError(f"{name}: only NIfTI images (.nii, .nii.gz) are served; got "
                                f"{Path(lower).suffix or 'no extension'} (convert it to NIfTI first, as 3D Slicer "
                                f"does when it uploads a volume)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a corrupt file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{name}: not a readable NIfTI image ({first})") from None
    if not 2 <= data.ndim <= 4 or data.size == 0:
        raise InvalidInputError(f"{name}: image of shape {data.shape}; expected a 2D, 3D or 4D (channels last) "
                                f"image with at least one voxel")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InvalidInputError(f"{name}: {bad} voxel(s) are NaN or infinite")
    return tuple(int(s) for s in data.shape)


def http_error(exc: BaseException) -> tuple[int, str] | None:
    """HTTP status and message for an error caused by the request (None: a server fault, answered 500).

    A medcnn input error anywhere in ``exc``'s chain (MONAI wraps a transform's error in ``RuntimeError``) -> 422 with
    its message, which names the file; an unknown model or image -> 404 with MONAI Label's message.
    """
    err = user_error(exc)
    if err is not None:
        return 422, str(err)
    if type(exc).__name__ in ("MONAILabelException", "ImageNotFoundException", "LabelNotFoundException"):
        msg = str(getattr(exc, "msg", exc))
        missing = type(exc).__name__ != "MONAILabelException" or "no model" in msg.lower()
        return (404 if missing else 400), msg
    return None


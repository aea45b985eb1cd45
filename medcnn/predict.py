"""``medcnn predict``: run a bundle's own inference on DICOM / NIfTI / TIFF / PNG inputs, results on their grid.

For each input the bundle's ``configs/inference.json`` pieces are used as they are: ``network_def`` with the
committed ``models/model.pt``, ``preprocessing``, ``inferer`` and ``postprocessing`` (its ``Invertd`` brings the
prediction back to the input grid). A bundle may ship ``configs/predict.json``, merged over ``inference.json``
(top-level ids replace, as with several ``--config_file`` of ``monai.bundle``), to adapt its pipeline to one image;
its ``input_spatial_dims`` id says what the input is when it is not the network's (a 2D network run over a volume).
The MONAI Label app serves the same ``predict.json`` when the bundle has no other override for it.
What predict does around those pieces, in one place:

- **loading**: a multi-channel input from DICOM is several series folders of one grid joined by ``+``
  (:func:`split_channels`; channels in the bundle's ``channel_def`` order), stacked like a 4D NIfTI.
  medcnn reads the input itself, with the reader for its kind (a DICOM series folder validated by
  :class:`medcnn.data.DicomSeriesReader`, NIfTI, a TIFF stack or PNG slice by :class:`medcnn.data.TiffStackReader`)
  and hands it to the bundle's preprocessing in place of the bundle's loader (its first transform when that is a
  ``LoadImaged``); a bundle whose preprocessing has no loader (in-memory classifiers) gets the image channel-first.
  A bundle that selects one slice of a stack (``SelectSliced``) is run slice by slice over the stack.
- **checks before anything is written**, naming the file: modality (DICOM ``Modality`` against the bundle's
  ``network_data_format`` input ``modality``), dimensionality and channel count against the bundle's input,
  several series / missing slices / non-image objects in a DICOM folder, an output folder equal to or inside an
  input folder, existing outputs.
- **classifiers** (output ``type`` ``probabilities``): the class probabilities, and the CAM region of the positive
  class thresholded with the bundle's CAM rule (:func:`bundle_cam_rule`), empty when the image is predicted negative.
  A ``score_network`` id (a callable, ``"_mode_": "callable"``, applied to the network) scores the images, as in
  MONAI Label; the CAM is taken on the network itself.
- **2D networks over volumes** (``slice_by_slice: true`` in ``predict.json``): the whole volume is normalised once
  by the ``volume_normalisation`` transform (channel first, e.g. :class:`medcnn.transforms.BrainZScore`), then
  every slice along the last spatial axis runs through the pipeline above; the per-slice masks are stacked on the
  input grid and a classifier's per-slice probabilities summarised by :func:`summarise_slices`.
- **outputs** per input in ``<output>/<case>/``: ``<case>_seg.nii.gz`` (label map with the input's affine),
  ``<case>_seg.dcm`` (DICOM SEG for DICOM input, segment codes from the bundle's ``dicom_seg`` metadata),
  ``<case>_report.pdf`` (:func:`medcnn.report.write_case_report`) and ``<case>_summary.json`` (probabilities,
  volumes in mL, model name and version, backend, timings).

``backend`` chooses how the network runs: ``torch`` (eager), ``torchscript`` or ``onnxruntime``
(:mod:`medcnn.networks.export`); CAM maps always use the eager network (they need gradients).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirst, Invertd, LoadImage, LoadImaged, Resize, SaveImaged
from monai.utils import get_equivalent_dtype
from tqdm import tqdm

from medcnn import __version__
from medcnn.config import flag
from medcnn.localisation.rule import RESULT_KEYS
from medcnn.networks.export import BACKENDS, backend_network
from medcnn.networks.slice_scoring import SliceScoreInferer
from medcnn.transforms.validation import InvalidInputError

__all__ = ["BundlePredictor", "PredictInput", "load_input", "bundle_cam_rule", "classify_with_cam", "normalise_volume",
           "summarise_slices", "predict", "add_parser", "apply_decision", "decide_slices"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
STACK_SUFFIXES = (".tif", ".tiff", ".png")
CLASSIFIER_TYPES = ("probabilities", "probability", "logits", "scores", "class")


# ----------------------------------------------------------------------------------------------------- inputs
@dataclass
class PredictInput:
    """One loaded input: ``image`` without channel axis (``(W, H, N)`` DICOM/NIfTI, ``(N, H, W)`` stacks) or with
    channels last (4D NIfTI), its kind (``dicom``, ``nifti``, ``stack``), source path and DICOM modality."""

    path: Path
    kind: str
    image: MetaTensor
    modality: str | None = None
    channels: int = 1
    case_id: str = ""
    channel_paths: list[Path] = field(default_factory=list)  # DICOM series stacked as channels, in order


CHANNEL_SEPARATOR = "+"


def split_channels(path: str | os.PathLike) -> list[Path]:
    """The DICOM series folders of one multi-channel input ``a+b`` (channels in the bundle's order), else ``[path]``.

    A path that exists as written is never split.
    """
    text = os.fspath(path)
    if CHANNEL_SEPARATOR not in text or Path(text).expanduser().exists():
        return [Path(text).expanduser()]
    return [Path(part).expanduser() for part in text.split(CHANNEL_SEPARATOR)]


def _load_channels(paths: Sequence[Path]) -> PredictInput:
    """Several DICOM series of one grid stacked as channels, ``(W, H, N, C)`` like a 4D NIfTI (SEG references the
    first series); :class:`InvalidInputError` naming the series that is not a DICOM series or not on the grid."""
    items = [load_input(p) for p in paths]
    first = items[0]
    for item in items:
        if item.kind != "dicom":
            raise InvalidInputError(f"{item.path}: channels joined by '{CHANNEL_SEPARATOR}' must be DICOM series "
                                    f"folders (a NIfTI input holds its channels as a 4th axis)")
        if tuple(item.image.shape) != tuple(first.image.shape) or not np.allclose(
                np.asarray(item.image.affine), np.asarray(first.image.affine), atol=1e-3):
            raise InvalidInputError(
                f"{item.path}: series grid {tuple(item.image.shape)} / affine differs from {first.path} "
                f"{tuple(first.image.shape)}; the channels of one input must be on one grid (resample it first)")
    modalities = {i.modality for i in items if i.modality}
    if len(modalities) > 1:
        raise InvalidInputError(f"{first.path}: channels of several modalities {sorted(modalities)}")
    image = MetaTensor(torch.stack([torch.as_tensor(i.image) for i in items], -1), meta=copy.deepcopy(
        first.image.meta))
    parents = {p.resolve().parent for p in paths}
    case_id = parents.pop().name if len(parents) == 1 else first.case_id
    return PredictInput(first.path, "dicom", image, first.modality, len(items), case_id, list(paths))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        if files and all(p.suffix.lower() in STACK_SUFFIXES for p in files):
            return "stack"
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(STACK_SUFFIXES):
        return "stack"
    if name.endswith((".dcm", ".dicom")):
        raise InvalidInputError(f"{path}: a single DICOM file; pass the folder holding the whole series")
    raise InvalidInputError(f"{path}: unsupported input (a DICOM series folder, .nii/.nii.gz, .tif/.tiff or .png)")


def load_input(path: str | os.PathLike) -> PredictInput:
    """Read one input with the reader for its kind; :class:`InvalidInputError` naming the file on any problem."""
    from medcnn.data.dicom import LoadDicomSeries
    from medcnn.data.tiff import TiffStackReader

    parts = split_channels(path)
    if len(parts) > 1:
        return _load_channels(parts)
    path = parts[0]
    if not path.exists():
        raise InvalidInputError(f"{path}: input not found")
    if path.is_dir():
        subdirs = sorted(p.name for p in path.iterdir() if p.is_dir())
        has_files = any(p.is_file() and not p.name.startswith(".") for p in path.iterdir())
        if subdirs and not has_files:
            raise InvalidInputError(
                f"{path}: holds {len(subdirs)} folder(s) {subdirs[:8]} and no image files; pass one series folder"
            )
    kind = _kind(path)
    case_id = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    if kind == "dicom":
        image = LoadDicomSeries()(str(path))
        return PredictInput(path, kind, image, str(image.meta.get("Modality", "")) or None, 1, case_id)
    if kind == "stack":
        if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):  # colour pages (e.g. the 3-channel LGG
            from medcnn.data.tiff_pages import TiffPagesReader  # slices): (N, H, W, C), channels last

            try:
                pages = LoadImage(reader=TiffPagesReader(), image_only=True, dtype=None)(str(path))
            except Exception as exc:  # MONAI wraps reader errors in RuntimeError
                cause = exc.__cause__ or exc
                raise InvalidInputError(f"{path}: cannot read TIFF ({str(cause).splitlines()[0]})") from exc
            if pages.ndim == 4:
                return PredictInput(path, kind, pages, None, int(pages.shape[-1]), case_id)
        image = LoadImage(reader=TiffStackReader(), image_only=True, dtype=None)(str(path))  # dtype kept, as LoadStackd
        return PredictInput(path, kind, image, None, 1, case_id)
    try:  # the file's own dtype: a bundle with a loader gets its loader's dtype (_network_input), one without the
        # file's (e.g. 8-bit images scaled to [0, 1] by the bundle, as its .npz reader does)
        image = LoadImage(reader="NibabelReader", image_only=True, dtype=None)(str(path))
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError
        raise InvalidInputError(f"{path}: cannot read NIfTI ({str(exc).splitlines()[0]})") from exc
    channels = int(image.shape[-1]) if image.ndim == 4 else 1
    return PredictInput(path, kind, image, None, channels, case_id)


# ----------------------------------------------------------------------------------------------------- bundle
def _positive_values(meta: dict) -> dict[int, str]:
    out = next(iter(meta.get("network_data_format", {}).get("outputs", {}).values()), {})
    return {int(k): str(v) for k, v in out.get("channel_def", {}).items()}


# keys of a bundle's results JSON (``cam_method``, ``cam_layer``, ...) -> keys of the CAM rule

def bundle_cam_rule(bundle_dir: str | os.PathLike, parser: ConfigParser) -> dict:
    """The CAM rule of a classifier bundle: method, layer, threshold, mode, largest component, class, decision.

    Looked up, later sources winning: defaults (Grad-CAM on the network's CAM layer, 0.5 of the maximum, class 1),
    the ``cam`` dict id, top-level ``cam_<key>`` ids (``cam_method``, ``cam_layer``, ``cam_threshold``,
    ``cam_threshold_mode``, ``cam_largest_component``, ...: :data:`~medcnn.localisation.rule.RESULT_KEYS`),
    ``decision_threshold``, then a rule the bundle chose on
    validation data: ``models/cam_rule.json`` or the JSON named by the ``cam_rule_file`` id (keys ``cam_method``,
    ``cam_layer``, ... as in the bundles' results files). The MONAI Label app reads the same sources.
    """
    rule: dict[str, Any] = {"method": "gradcam", "target_layer": None, "threshold": 0.5, "mode": "fraction",
                            "largest_component": False, "class_idx": 1, "decision_threshold": None}
    cam = parser.get("cam")
    if isinstance(cam, dict):
        rule.update({k: parser.get_parsed_content(f"cam#{k}") for k in rule if k in cam})
    for key, k in RESULT_KEYS.items():  # top-level ids as the bundles spell them: cam_layer, cam_threshold_mode, ...
        if parser.get(key) is not None:
            rule[k] = parser.get_parsed_content(key)
    if parser.get("decision_threshold") is not None:
        rule["decision_threshold"] = float(parser.get_parsed_content("decision_threshold"))
    files = [Path(bundle_dir) / "models" / "cam_rule.json"]
    if parser.get("cam_rule_file"):
        files.append(Path(parser.get_parsed_content("cam_rule_file")))
    for f in files:
        if f.is_file():
            found = json.loads(f.read_text())
            rule.update({k: v for k, v in found.items() if k in rule})
            rule.update({RESULT_KEYS[k]: v for k, v in found.items() if k in RESULT_KEYS})
            rule["source"] = os.path.relpath(f, bundle_dir)
            break
    return rule


EMPTY_CAM_MESSAGE = ("predicted {cls} (p={p:.3f}), but the {method} map of {cls} is zero everywhere, so the "
                     "localisation is empty: an empty region here does NOT mean {cls} is absent")


def classify_with_cam(network: torch.nn.Module, x: torch.Tensor, logits: Any, rule: dict,
                      class_names: dict[int, str], gate: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A classifier's decision and CAM region for one image, as ``medcnn predict`` and MONAI Label report them.

    ``x`` ``(1, C, *S)`` is the network input, ``logits`` ``(K,)`` (or ``(1,)`` for a sigmoid output) the network's
    scores for it, ``rule`` a CAM rule dict (:func:`bundle_cam_rule`). Returns the mask ``(1, *S)`` uint8 (the
    thresholded CAM of ``rule['class_idx']``, empty when the image is predicted another class), the heatmap
    ``(1, *S)`` and the result JSON: class probabilities, predicted class, the CAM rule, and, when the image is
    predicted positive but its CAM region is empty (a CAM that is zero everywhere), ``cam_region_empty: true``
    with a ``warning`` that says so, because an empty region otherwise reads as "negative" in a viewer.
    ``gate=False``: the mask is the CAM region whatever the decision (a slice of a volume whose decision waits for
    its neighbours' scores: :func:`decide_slices` gates it).
    """
    from medcnn.localisation import localise
    from medcnn.localisation.rule import CAMRule, CAMToMask

    typed = CAMRule.from_dict({k: v for k, v in rule.items() if k != "source"})
    heat = localise(network, x, method=typed.method, target_layer=typed.target_layer,
                    class_idx=typed.class_idx)[0].detach().cpu()  # (1, *S) on the network's grid
    mask = torch.as_tensor(CAMToMask(typed)(heat)).to(torch.uint8)
    if not gate:
        return mask, heat, apply_decision(mask, logits, rule, class_names)[1]
    mask, result = apply_decision(mask, logits, rule, class_names)
    return mask, heat, result


def apply_decision(mask: torch.Tensor, logits: Any, rule: dict, class_names: dict[int, str]) -> tuple[torch.Tensor,
                                                                                                      dict]:
    """The decision of one image from its ``logits`` ``(K,)`` and its CAM region ``mask`` kept or emptied by it.

    Returns the mask (empty unless ``rule['class_idx']`` is predicted: probability >= ``decision_threshold``, else
    arg-max) and the result JSON of :func:`classify_with_cam`.
    """
    from medcnn.localisation.rule import CAMRule

    scores = torch.as_tensor(logits).detach().float().reshape(-1).cpu()
    probs = torch.softmax(scores, 0) if scores.numel() > 1 else torch.cat([1 - scores.sigmoid(), scores.sigmoid()])
    typed = CAMRule.from_dict({k: v for k, v in rule.items() if k != "source"})
    pos = typed.class_idx
    rest = [i for i in range(len(probs)) if i != pos]
    predicted = pos if typed.present(probs) or not rest else max(rest, key=lambda i: float(probs[i]))
    mask = torch.as_tensor(mask)
    if predicted != pos:
        mask = torch.zeros_like(mask)
    name = class_names.get(pos, f"class {pos}")
    result: dict[str, Any] = {
        "class_probabilities": {class_names.get(i, f"class {i}"): round(float(p), 6) for i, p in enumerate(probs)},
        "predicted_class": class_names.get(predicted, f"class {predicted}"),
        "cam": {k: rule[k] for k in ("method", "target_layer", "threshold", "mode", "largest_component", "source")
                if k in rule},
        "decision_threshold": rule.get("decision_threshold"),
        "cam_region_empty": bool(predicted == pos and not mask.any()),
    }
    if result["cam_region_empty"]:
        result["warning"] = EMPTY_CAM_MESSAGE.format(cls=name, p=float(probs[pos]), method=typed.method)
    return mask.to(torch.uint8), result


def decide_slices(masks: Sequence[torch.Tensor], logits: torch.Tensor, rule: dict, class_names: dict[int, str],
                  scorer: Any = None) -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """The decisions of a volume's slices, in slice order, as ``medcnn predict`` and MONAI Label serve them.

    ``masks``: each slice's CAM region, not yet gated (:func:`classify_with_cam` with ``gate=False``); ``logits``
    ``(N, K)``: each slice's scores (a :class:`~medcnn.networks.SliceScoreInferer`'s ``score``, else the network's).
    With ``scorer`` (the bundle's :class:`~medcnn.networks.SliceScoreInferer`) the logits are first averaged over
    neighbouring slices (its ``smooth``, the slices numbered 0..N-1), so each slice is decided by the bundle's one
    slice-scoring rule, exactly as ``evaluate.json`` decides it. Returns the gated masks, the per-slice result JSONs
    and the logits the decisions were made on.
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    if len(masks) != logits.shape[0]:
        raise ValueError(f"decide_slices: {len(masks)} masks for {logits.shape[0]} slices of scores")
    if scorer is not None and hasattr(scorer, "smooth"):
        logits = scorer.smooth(logits, slice_index=torch.arange(logits.shape[0]))
    out_masks, results = [], []
    for mask, row in zip(masks, logits, strict=True):
        m, r = apply_decision(mask, row, rule, class_names)
        out_masks.append(m)
        results.append(r)
    return out_masks, results, logits


def summarise_slices(results: list[dict], positive: str | None = None) -> dict:
    """One result JSON for a stack run slice by slice by a 2D classifier (unchanged for a single slice).

    ``predicted_class`` / ``class_probabilities`` are those of the slice most likely positive; ``positive_slices``
    lists the slices (index along the last spatial axis) predicted positive; ``empty_cam_slices`` those predicted
    positive whose CAM region is empty; ``slices`` has every slice's result.
    """
    if len(results) == 1 or not all("class_probabilities" in r for r in results):
        return dict(results[-1]) if results else {}
    positive = positive or list(results[0]["class_probabilities"])[-1]
    best = max(range(len(results)), key=lambda k: results[k]["class_probabilities"][positive])
    out = {k: v for k, v in results[best].items() if k != "class_probabilities"}
    out["class_probabilities"] = results[best]["class_probabilities"]
    out["most_positive_slice"] = best
    out["positive_slices"] = [k for k, r in enumerate(results) if r.get("predicted_class") == positive]
    out["empty_cam_slices"] = [k for k, r in enumerate(results) if r.get("cam_region_empty")]
    out["slices"] = [{"slice": k, "predicted_class": r.get("predicted_class"),
                      "class_probabilities": r["class_probabilities"]} for k, r in enumerate(results)]
    return out


def normalise_volume(volume: Any, normaliser: Any) -> np.ndarray:
    """``volume`` ``(H, W, D)`` or channels last ``(H, W, D, C)`` normalised as a whole by ``normaliser`` (a
    channel-first transform such as :class:`medcnn.transforms.BrainZScore`); float32, same layout.

    A 2D network run slice by slice must see slices normalised with the statistics of the whole volume, as in
    training (the bundle's ``volume_normalisation`` id); ``medcnn predict`` and the MONAI Label app both call this.
    """
    arr = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume)
    first = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]
    first = np.asarray(torch.as_tensor(normaliser(np.ascontiguousarray(first, dtype=np.float32))))
    return np.ascontiguousarray(np.moveaxis(first, 0, -1) if arr.ndim == 4 else first[0], dtype=np.float32)


@dataclass
class BundlePredictor:
    """A bundle ready for prediction: its inference pieces, metadata and the network on the chosen backend."""

    bundle_dir: Path
    parser: ConfigParser
    meta: dict
    network: torch.nn.Module  # eager network with the committed weights
    model: torch.nn.Module  # the network on the chosen backend (a classifier: wrapped by its score_network id)
    preprocessing: Compose
    inferer: Any
    postprocessing: Compose | None
    device: torch.device
    backend: str
    has_loader: bool
    slice_key: str | None
    cam_rule: dict | None = None
    input_spec: dict = field(default_factory=dict)
    loader_dtype: Any = None  # dtype of the bundle's own loader (None: the file's), applied to NIfTI inputs
    slice_by_slice: bool = False  # a 2D network run by medcnn over the last spatial axis of a volume
    volume_normalisation: Any = None  # channel-first transform applied to the whole volume before slicing

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike,
        backend: str | None = None,
        device: str | torch.device | None = None,
        weights: str | os.PathLike | None = None,
        overrides: dict | None = None,
    ) -> BundlePredictor:
        """Load ``bundle_dir``'s inference config (+ ``configs/predict.json``), network and weights.

        ``backend`` None: the bundle's ``backend`` id in ``inference.json`` when it has one, else ``torch``.
        """
        from medcnn.transforms.stack import SelectSliced

        bundle_dir = Path(bundle_dir).expanduser().resolve()
        config = bundle_dir / "configs" / "inference.json"
        if not config.is_file():
            raise FileNotFoundError(f"bundle {bundle_dir}: configs/inference.json not found")
        meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
        parser = ConfigParser()
        files = [str(config)] + [str(p) for p in [bundle_dir / "configs" / "predict.json"] if p.is_file()]
        parser.read_config(files)
        parser["bundle_root"] = str(bundle_dir)
        dev = torch.device(device) if device else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        parser["device"] = f"$torch.device('{dev}')"
        for k, v in (overrides or {}).items():
            parser[k] = v
        backend = backend or (parser.get_parsed_content("backend") if parser.get("backend") else "torch")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        # the bundle's loader is replaced by medcnn's reader for the input's kind; its SaveImaged by predict's writers
        transforms = parser["preprocessing"]["transforms"]
        first = parser.get_parsed_content("preprocessing#transforms#0", instantiate=True)
        has_loader = isinstance(first, LoadImaged)
        loader_dtype = first._loader.dtype if has_loader else None  # MONAI keeps LoadImage's dtype there
        if has_loader:
            parser["preprocessing#transforms"] = transforms[1:]
        preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
        post = parser.get_parsed_content("postprocessing", instantiate=True) if parser.get("postprocessing") else None
        if post is not None:
            post = Compose([t for t in post.transforms if not isinstance(t, SaveImaged)])
        slice_key = next((t.index_key for t in preprocessing.transforms if isinstance(t, SelectSliced)), None)
        weights = Path(weights) if weights else bundle_dir / "models" / "model.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"bundle {bundle_dir}: weights {weights} not found")
        if parser.get("ckpt_path") is not None:  # a network_def that depends on its checkpoint (an ensemble's size)
            parser["ckpt_path"] = str(weights)
        network = parser.get_parsed_content("network_def", instantiate=True).to(dev)
        state = torch.load(weights, map_location=dev, weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        network.eval()
        inp = next(iter(meta["network_data_format"]["inputs"].values()))
        out = next(iter(meta["network_data_format"]["outputs"].values()))
        classifier = str(out.get("type", "image")).lower() in CLASSIFIER_TYPES
        model = backend_network(network, backend)
        if classifier and parser.get("score_network") is not None:  # e.g. a gate around the classifier; the CAM
            model = parser.get_parsed_content("score_network", instantiate=True)(model)  # stays on the network
        predictor = cls(
            bundle_dir=bundle_dir, parser=parser, meta=meta, network=network,
            model=model, preprocessing=preprocessing,
            inferer=parser.get_parsed_content("inferer", instantiate=True), postprocessing=post, device=dev,
            backend=backend, has_loader=has_loader, loader_dtype=loader_dtype, slice_key=slice_key,
            slice_by_slice=flag(parser.get_parsed_content("slice_by_slice"), f"{files[-1]}: slice_by_slice")
            if parser.get("slice_by_slice") is not None else False,
            volume_normalisation=parser.get_parsed_content("volume_normalisation", instantiate=True)
            if parser.get("volume_normalisation") is not None else None,
            cam_rule=bundle_cam_rule(bundle_dir, parser) if classifier else None,
            input_spec={"modality": inp.get("modality"), "num_channels": int(inp.get("num_channels", 1)),
                        # a 2D network run over a volume by its inferer (SliceInferer) takes volumes
                        "spatial_dims": int(parser.get_parsed_content("input_spatial_dims"))
                        if parser.get("input_spatial_dims") is not None else len(inp.get("spatial_shape", [])) or None},
        )
        return predictor

    # ------------------------------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The bundle's folder name."""
        return self.bundle_dir.name

    @property
    def is_classifier(self) -> bool:
        """True when the network outputs class scores (the result mask is then the CAM region)."""
        return self.cam_rule is not None

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name of the written mask (a classifier's mask has one label: its positive class)."""
        names = _positive_values(self.meta)
        if self.is_classifier:
            pos = int(self.cam_rule["class_idx"])
            return {1: names.get(pos, f"class {pos}")}
        return {k: v for k, v in names.items() if k > 0}

    def segment_codes(self) -> tuple[list[str], list[dict]] | None:
        """Names and DICOM SEG codes of label values 1..K from the bundle's ``dicom_seg`` metadata, or None."""
        segs = self.meta.get("dicom_seg")
        if not segs:
            return None
        keys = sorted(segs, key=int)
        if [int(k) for k in keys] != list(range(1, len(keys) + 1)):
            raise ValueError(f"bundle {self.bundle_dir}: dicom_seg must describe labels 1..K, got {keys}")
        return [segs[k]["label"] for k in keys], [{c: v for c, v in segs[k].items() if c != "label"} for k in keys]

    # ------------------------------------------------------------------------------------------ checks
    def check_input(self, item: PredictInput) -> None:
        """Refuse, naming the file, an input of the wrong modality, dimensionality or channel count."""
        want = self.input_spec
        modality = (want.get("modality") or "").upper()
        if item.kind == "dicom" and modality and item.modality and item.modality.upper() != modality:
            raise InvalidInputError(
                f"{item.path}: DICOM modality {item.modality}, but bundle {self.name} takes {modality} images"
            )
        if item.kind == "dicom" and self.segment_codes() is None:
            raise InvalidInputError(
                f"{item.path}: DICOM input, but bundle {self.name} declares no DICOM SEG segment codes "
                "(metadata.json 'dicom_seg'); convert the series to NIfTI to get a NIfTI result"
            )
        shape = tuple(item.image.shape)
        spatial = shape[:-1] if item.channels > 1 else shape
        if item.channels != want["num_channels"]:
            raise InvalidInputError(
                f"{item.path}: image has {item.channels} channel(s) (shape {shape}), bundle {self.name} takes "
                f"{want['num_channels']}"
            )
        dims = want.get("spatial_dims")
        if self.slice_by_slice:  # a 2D network run over the slices of a volume: a 2D image or a volume
            if len(spatial) not in (2, 3):
                raise InvalidInputError(f"{item.path}: a {len(spatial)}D image of shape {shape}; bundle {self.name} "
                                        "takes a 2D slice or a volume of slices (H, W, D), channels last")
            return
        if self.slice_key is not None:  # a 2D network run slice by slice over a stack: 2D images or stacks
            if item.kind != "stack" and len(spatial) != 3:
                raise InvalidInputError(f"{item.path}: shape {shape}; bundle {self.name} takes a 2D image or stack")
            return
        squeezed = [s for s in spatial if s > 1] if dims == 2 else list(spatial)
        if dims and len(squeezed) != dims:
            kind = "slices" if dims == 2 else "volumes"
            raise InvalidInputError(
                f"{item.path}: a {len(spatial)}D image of shape {shape}; bundle {self.name} takes {dims}D {kind}"
            )

    # ------------------------------------------------------------------------------------------ inference
    def _network_input(self, item: PredictInput) -> dict:
        image = item.image
        if self.has_loader:
            if item.kind == "nifti" and self.loader_dtype is not None:  # as the bundle's own loader reads it
                image = image.to(get_equivalent_dtype(self.loader_dtype, torch.Tensor))
            return {"image": image}
        if item.kind == "stack" or (self.input_spec.get("spatial_dims") == 2 and image.ndim == 3):
            image = image.reshape([s for s in image.shape if s > 1])  # (1, H, W) stack or (H, W, 1) -> (H, W)
        return {"image": EnsureChannelFirst(channel_dim="no_channel")(image)}

    def _run(self, data: dict) -> dict:
        try:
            d = self.preprocessing(data)
        except (KeyError, RuntimeError) as exc:  # MONAI wraps a transform's error in RuntimeError("applying ...")
            cause = exc
            while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, InvalidInputError):  # the bundle's own input checks: their message names the file
                raise cause from None
            if not isinstance(cause, KeyError):
                raise
            raise ValueError(
                f"bundle {self.name}: its preprocessing reads the data key {cause}, but medcnn predict passes one "
                "image as 'image'; the bundle needs a configs/predict.json that reads a single image"
            ) from exc
        x = torch.as_tensor(d["image"]).float()[None].to(self.device)
        with torch.no_grad():  # a slice-scoring rule: the slice's own score here, the neighbours' in decide_slices
            scorer = getattr(self.inferer, "score", None) if isinstance(self.inferer, SliceScoreInferer) else None
            out = scorer(x, self.model) if scorer is not None else self.inferer(x, self.model)
        image = d["image"]
        meta = copy.deepcopy(image.meta) if isinstance(image, MetaTensor) else {}
        ops = copy.deepcopy(image.applied_operations) if isinstance(image, MetaTensor) else []
        d["pred"] = MetaTensor(torch.as_tensor(out)[0].float().cpu(), meta=meta, applied_operations=ops)
        d["_x"] = x
        return d

    def _segment(self, d: dict) -> torch.Tensor:
        if self.postprocessing is not None:
            d = self.postprocessing(d)
        pred = torch.as_tensor(d["pred"])
        if pred.ndim == torch.as_tensor(d["image"]).ndim and pred.shape[0] > 1:  # probabilities left as channels
            pred = pred.argmax(0, keepdim=True)
        return pred.round().to(torch.uint8)

    def _classify(self, d: dict, gate: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
        mask, heat, result = classify_with_cam(self.network, d["_x"], d["pred"], self.cam_rule,
                                               _positive_values(self.meta), gate=gate)
        back = self._to_input_grid({"mask": mask.float(), "heat": heat}, d)
        return back["mask"].round().to(torch.uint8), back["heat"], result

    def _decide(self, masks: list, logits: list) -> tuple[list, list[dict], torch.Tensor]:
        """Each slice of a volume decided by the bundle's slice-scoring rule (:func:`decide_slices`)."""
        scorer = self.inferer if isinstance(self.inferer, SliceScoreInferer) else None
        return decide_slices(masks, torch.stack(logits), self.cam_rule, _positive_values(self.meta), scorer)

    def _to_input_grid(self, arrays: dict, d: dict) -> dict:
        """Invert the preprocessing's spatial transforms on ``arrays`` (``(1, *S)``), then resize if needed."""
        image = d["image"]
        out = {}
        for key, arr in arrays.items():
            mt = MetaTensor(arr, meta=copy.deepcopy(image.meta), applied_operations=copy.deepcopy(
                image.applied_operations)) if isinstance(image, MetaTensor) else arr
            if not (isinstance(image, MetaTensor) and image.applied_operations):
                out[key] = torch.as_tensor(arr)  # nothing spatial to undo
                continue
            try:
                arr = Invertd(keys="x", transform=self.preprocessing, orig_keys="image",
                              nearest_interp=key == "mask")({"x": mt, "image": image})["x"]
            except Exception as exc:  # noqa: BLE001 - a pipeline without invertible transforms: resize below
                logger.debug("no inverse for %s (%s)", key, exc)
            out[key] = torch.as_tensor(arr)
        return out

    def predict_item(self, item: PredictInput, progress: bool = False) -> dict:
        """Run the bundle on one loaded input: ``{"mask": (1, *S) uint8, "cam": (1, *S) | None, "result": {...}}``
        on the input's grid (``*S`` = the input's spatial shape)."""
        if self.slice_by_slice:
            return self._predict_slices(item, progress)
        base = self._network_input(item)
        spatial = tuple(base["image"].shape[1:]) if not self.has_loader else None
        if self.slice_key is not None:
            n = int(item.image.shape[0]) if item.kind == "stack" else int(item.image.shape[-1])
            spatial = _input_spatial(item)
            hw = spatial[1:] if item.kind == "stack" else spatial[:-1]  # one slice's (H, W)
            masks, heats, results, logits = [], [], [], []
            for k in tqdm(range(n), desc=f"{item.case_id} slices", disable=not progress or n < 2, leave=False):
                d = self._run(dict(base, **{self.slice_key: k}))
                if self.is_classifier:  # the slice's CAM region, back on the slice grid; decided below
                    m, heat, _ = self._classify(d, gate=False)
                    masks.append(torch.as_tensor(m).reshape(hw).to(torch.uint8))
                    heats.append(torch.as_tensor(heat).reshape(hw).float())
                    logits.append(torch.as_tensor(d["pred"]).float().reshape(-1))
                else:
                    masks.append(self._segment(d)[0])
            if self.is_classifier:  # every slice decided by the bundle's slice-scoring rule
                masks, results, _ = self._decide(masks, logits)
            axis = 0 if item.kind == "stack" else -1
            mask = torch.stack(masks, axis)[None]
            heat = torch.stack(heats, axis)[None] if heats else None
            positive = self.label_names.get(1) if self.is_classifier else None
            return {"mask": mask, "cam": heat, "result": summarise_slices(results, positive)}
        d = self._run(base)
        if self.is_classifier:
            mask, heat, result = self._classify(d)
        else:
            mask, heat, result = self._segment(d), None, {}
        target = spatial or _input_spatial(item)
        if tuple(mask.shape[1:]) != target:
            if mask[0].numel() == 0 or len(mask.shape[1:]) != len(target):
                raise RuntimeError(f"{item.path}: result shape {tuple(mask.shape)} cannot be mapped to {target}")
            mask = Resize(spatial_size=target, mode="nearest")(mask.float()).round().to(torch.uint8)
            heat = None if heat is None else Resize(spatial_size=target, mode="bilinear")(heat)
        shape = (1, *_input_spatial(item))  # e.g. a (1, H, W) PNG "stack" run as an (H, W) image
        heat = None if heat is None else torch.as_tensor(heat).reshape(shape)
        return {"mask": torch.as_tensor(mask).reshape(shape), "cam": heat, "result": result}


    def _predict_slices(self, item: PredictInput, progress: bool = False) -> dict:
        """A 2D network over the last spatial axis of a volume (``slice_by_slice``): the whole volume normalised
        once (``volume_normalisation``), then every slice through the bundle's preprocessing, network and, for a
        classifier, its CAM rule; the slice results stacked on the input grid, the per-slice results summarised
        by :func:`summarise_slices` (a 2D input is one slice)."""
        spatial = _input_spatial(item)
        hw = spatial[1:] if item.kind == "stack" and len(spatial) == 3 else spatial[:2]  # one slice's (H, W)
        volume = item.image
        if item.kind == "stack":  # (N, H, W) pages -> (H, W, N), the slice axis last as for NIfTI / DICOM
            volume = volume.permute(1, 2, 0) if volume.ndim == 3 else volume
        volume = np.asarray(torch.as_tensor(volume).cpu())
        if len(spatial) == 2:  # one slice: (H, W[, C]) -> (H, W, 1[, C])
            volume = volume[:, :, None]
        if self.volume_normalisation is not None:
            try:
                volume = normalise_volume(volume, self.volume_normalisation)
            except ValueError as exc:
                raise InvalidInputError(f"{item.path}: cannot normalise the volume ({exc})") from exc
        n = volume.shape[2]
        masks, heats, results, logits = [], [], [], []
        for k in tqdm(range(n), desc=f"{item.case_id} slices", disable=not progress or n < 2, leave=False):
            sl = volume[:, :, k].astype(np.float32) if self.volume_normalisation is not None else volume[:, :, k]
            data = {"image": MetaTensor(torch.as_tensor(np.ascontiguousarray(sl)))}
            if not self.has_loader:  # a bundle without a loader gets the image channel first
                data["image"] = EnsureChannelFirst(channel_dim=-1 if item.channels > 1 else "no_channel")(
                    data["image"])
            try:
                d = self._run(data)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{item.path} (slice {k} of {n}): {exc}") from exc
            if self.is_classifier:  # decided below, with the neighbours' scores
                mask, heat, _ = self._classify(d, gate=False)
                heats.append(torch.as_tensor(heat).reshape(hw).float())
                logits.append(torch.as_tensor(d["pred"]).float().reshape(-1))
            else:
                mask = self._segment(d)
            masks.append(torch.as_tensor(mask).reshape(hw))
        if self.is_classifier:
            masks, results, _ = self._decide(masks, logits)
        mask = torch.stack(masks, -1)[None].to(torch.uint8)
        heat = torch.stack(heats, -1)[None] if heats else None
        if len(spatial) == 2:
            mask, heat = mask[..., 0], None if heat is None else heat[..., 0]
        elif item.kind == "stack":  # back to the stack's (1, N, H, W)
            mask, heat = mask.permute(0, 3, 1, 2), None if heat is None else heat.permute(0, 3, 1, 2)
        positive = self.label_names.get(1) if self.is_classifier else None
        return {"mask": mask, "cam": heat, "result": summarise_slices(results, positive)}


def _input_spatial(item: PredictInput) -> tuple[int, ...]:
    """Spatial shape of a loaded input (without the channels of a 4D NIfTI)."""
    return tuple(int(s) for s in (item.image.shape[:-1] if item.channels > 1 else item.image.shape))


# ----------------------------------------------------------------------------------------------------- outputs
def _reference(item: PredictInput) -> MetaTensor:
    """The input as ``(C, *S)`` for writing results on its grid (channels of a 4D NIfTI: the first)."""
    img = item.image
    if item.channels > 1:
        img = img[..., 0]
    return EnsureChannelFirst(channel_dim="no_channel")(img)


def _volumes(mask: np.ndarray, spacing: Sequence[float], names: dict[int, str]) -> dict:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: {"label": k, "voxels": int((mask == k).sum()), "volume_ml": round(int((mask == k).sum()) *
                                                                                     voxel_ml, 4)}
            for k, name in names.items()}


def _check_outputs(inputs: Sequence[Path], output: Path) -> None:
    out = output.resolve()
    for p in inputs:
        if not p.is_dir():
            if out == p.resolve():
                raise InvalidInputError(f"{p}: the output folder is the input file itself; choose another one")
            continue
        folder = p.resolve()  # a series / stack folder is never written into
        if out == folder or folder in out.parents:
            raise InvalidInputError(
                f"{p}: the output folder {output} is {'the' if out == folder else 'inside the'} input folder "
                f"{folder}; choose another output folder (inputs are never written to)"
            )


def _case_ids(items: Sequence[PredictInput]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        base = item.case_id or "case"
        seen[base] = seen.get(base, 0) + 1
        item.case_id = base if seen[base] == 1 else f"{base}_{seen[base]}"


def write_case(predictor: BundlePredictor, item: PredictInput, pred: dict, output: Path, report: bool,
               seconds: float) -> dict:
    """Write the NIfTI mask, DICOM SEG (DICOM input), PDF report and summary JSON of one case; returns the summary."""
    from medcnn.data.dicom import save_like, write_dicom_seg
    from medcnn.report.pdf import write_case_report

    case = item.case_id
    final = output / case
    tmp = output / f".{case}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        ref = _reference(item)
        mask = pred["mask"]
        outputs = {"mask_nifti": f"{case}_seg.nii.gz"}
        save_like(mask, ref, tmp / outputs["mask_nifti"])
        names = predictor.label_names
        if item.kind == "dicom":
            seg_names, codes = predictor.segment_codes()
            if predictor.is_classifier:
                seg_names, codes = seg_names[:1], codes[:1]
            outputs["dicom_seg"] = f"{case}_seg.dcm"
            write_dicom_seg(mask, item.path, tmp / outputs["dicom_seg"], seg_names, segment_codes=codes,
                            series_description=f"{predictor.name} {predictor.meta.get('version', '')}".strip(),
                            algorithm_name=predictor.name, algorithm_version=str(predictor.meta.get("version", "")))
        spacing = [float(v) for v in ref.pixdim] if hasattr(ref, "pixdim") else [1.0] * (ref.ndim - 1)
        summary = {
            "input": CHANNEL_SEPARATOR.join(map(str, item.channel_paths)) if item.channel_paths else str(item.path),
            **({"channel_series": [str(c) for c in item.channel_paths]} if item.channel_paths else {}),
            "input_kind": item.kind,
            "modality": item.modality,
            "shape": [int(s) for s in ref.shape[1:]],
            "spacing_mm": [round(s, 6) for s in spacing],
            "model": {"bundle": predictor.name, "name": predictor.meta.get("name", predictor.name),
                      "version": predictor.meta.get("version"), "medcnn_version": __version__,
                      "backend": predictor.backend, "device": str(predictor.device)},
            "labels": _volumes(mask.numpy(), spacing, names),
            **pred["result"],
            "inference_seconds": round(seconds, 3),
        }
        if item.kind == "stack":
            summary["spacing_mm"] = None  # TIFF / PNG carry no physical spacing: volumes are in voxels only
            for v in summary["labels"].values():
                v["volume_ml"] = None
        if report:
            outputs["report"] = f"{case}_report.pdf"
            probability, per_slice, cam_name = None, None, "Grad-CAM"
            if predictor.is_classifier:
                from medcnn.localisation.methods import cam_display_name

                cam_name = cam_display_name(predictor.cam_rule.get("method"))
                pos = int(predictor.cam_rule["class_idx"])
                probability = float(list(pred["result"]["class_probabilities"].values())[pos])
                if pred["result"].get("slices"):  # each page's own probability, the one its decision was made on
                    per_slice = [float(list(s["class_probabilities"].values())[pos]) for s in pred["result"]["slices"]]
            finding = ", ".join(names.values())
            finding = finding if len(names) == 1 else f"segmented region ({finding})"
            show = [ref, mask, pred.get("cam")]
            if item.kind == "stack":  # (1, N, H, W) -> (1, H, W, N): the report pages through the last axis
                # plain arrays: TIFF / PNG carry no spacing, so areas are in pixels (not the MetaTensor's 1 mm)
                show = [None if a is None else np.asarray(torch.as_tensor(a).permute(0, 2, 3, 1)) for a in show]
            write_case_report(
                tmp / outputs["report"], show[0], show[1], cam=show[2], case_id=case,
                spacing=None if item.kind == "stack" else spacing,
                class_names=("background", finding), finding_name=finding, probability=probability,
                slice_probabilities=per_slice, cam_name=cam_name,
                metrics={f"{n} volume (mL)": v["volume_ml"] for n, v in summary["labels"].items()
                         if v["volume_ml"] is not None} or None,
                sources={"image": str(item.path), "model": f"{predictor.name} {summary['model']['version']}"},
                transpose=item.kind != "stack",
            )
        outputs["summary"] = f"{case}_summary.json"
        summary["outputs"] = {k: str(final / v) for k, v in outputs.items()}
        (tmp / outputs["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def predict(
    bundle: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    backend: str | None = None,
    device: str | None = None,
    report: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Run ``bundle`` on every input and write its results under ``output/<case>/``; returns the summaries.

    Every input is read and checked before anything is written, so a bad input leaves ``output`` untouched.
    """
    if not inputs:
        raise ValueError("no input given")
    output = Path(output).expanduser()
    paths = [Path(p).expanduser() for p in inputs]
    folders = [c for i in inputs for c in split_channels(i)]
    for p in folders:
        if not p.exists():
            raise InvalidInputError(f"{p}: input not found")
    _check_outputs(folders, output)
    predictor = BundlePredictor.from_bundle(bundle, backend=backend, device=device)
    items = []
    for p in paths:
        item = load_input(p)
        predictor.check_input(item)
        items.append(item)
    _case_ids(items)
    existing = [str(output / it.case_id) for it in items if (output / it.case_id).exists()]
    if existing:
        raise InvalidInputError(f"output {output}: results exist already for {existing}; nothing is overwritten")
    summaries = []
    for item in tqdm(items, desc=f"medcnn predict {predictor.name}", disable=not progress or len(items) < 2):
        start = time.perf_counter()
        pred = predictor.predict_item(item, progress=progress)
        summaries.append(write_case(predictor, item, pred, output, report, time.perf_counter() - start))
        logger.info("%s: %s", item.case_id, {k: v["volume_ml"] if v["volume_ml"] is not None else v["voxels"]
                                             for k, v in summaries[-1]["labels"].items()})
    return summaries


# ----------------------------------------------------------------------------------------------------- CLI
def run_predict(args) -> int:
    """``medcnn predict``: run a bundle on the inputs; prints the summary JSON paths."""
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied DICOM module otherwise
    summaries = predict(args.bundle, args.input, args.output, backend=args.backend, device=args.device,
                        report=not args.no_report, progress=not args.quiet)
    for s in summaries:
        print(s["outputs"]["summary"])
    return 0


def add_parser(parser) -> object:
    """Configure the ``medcnn predict`` subcommand."""
    parser.description = ("Run a bundle's own inference on DICOM series folders, NIfTI, TIFF stacks or PNG images; "
                          "write a NIfTI mask, a DICOM SEG (DICOM input), a PDF report and a summary JSON per input.")
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/hippocampus_segmentation")
    parser.add_argument("--input", "-i", required=True, nargs="+",
                        help="one or more inputs: DICOM series folder, .nii/.nii.gz, .tif/.tiff stack, .png; the "
                        "channels of a multi-channel bundle given as DICOM series folders joined by '+' in the "
                        "bundle's channel order (e.g. study/FLAIR+study/T1post)")
    parser.add_argument("--output", "-o", required=True, help="output folder (results in <output>/<case>/)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="how the network runs (default: the bundle's 'backend' id, else torch)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime CPU threads (default: torch's)")
    parser.add_argument("--no-report", dest="no_report", action="store_true", help="skip the PDF report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_predict)
    return run_predict

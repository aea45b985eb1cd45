"""MONAI Label infer tasks for the medcnn bundles (imports MONAI Label: runs inside its environment only).

The decisions (served config, labels, upload checks, CAM rule and classifier decision, result grid) live in
:mod:`medcnn.monailabel.adapter` and :mod:`medcnn.predict`, which run without MONAI Label; this module wires them
into MONAI Label's ``BundleInferTask``.

- :class:`MedcnnSegmentationTask`: a bundle whose output is a label image. MONAI Label's ``BundleInferTask``
  (the bundle's ``inference.json`` preprocessing, network, inferer and postprocessing, weights from
  ``models/model.pt``), plus two things 3D Slicer needs: the result NIfTI is written on the input's own grid
  (same shape, same affine and qform/sform as the uploaded image), and a 2D bundle accepts the 3D volume Slicer
  sends (a 2D image loaded in Slicer is an ``(H, W, 1)`` volume; a stack of slices is run slice by slice).
- :class:`MedcnnCAMTask`: a classifier bundle (its output is class probabilities). It appears in Slicer as a
  segmentation model whose one label is the positive class: the Grad-CAM region of that class, thresholded with
  the bundle's CAM rule, empty when the image is predicted negative. The class probabilities, the predicted class
  and the CAM rule are in the result JSON (``params`` of the response).

Single-image adaptation: MONAI Label gives a task one image file (what Slicer uploads). A bundle whose
``inference.json`` expects something else (a TIFF stack plus a slice index, two modality files, in-memory arrays)
is adapted by an override config merged on top of ``inference.json`` (top-level ids replace, as with several
``--config_file`` of ``monai.bundle``): the bundle's own ``configs/monailabel.json`` when it ships one, else
``medcnn/monailabel/overrides/<bundle name>.json``, else the bundle's ``configs/predict.json`` (the configuration
``medcnn predict`` runs; see :func:`medcnn.monailabel.adapter.read_served_config`). An override may also hold
``"monailabel": {"dimension": 3}`` (e.g. a 2D network run slice by slice over a volume by its ``SliceInferer``)
and, for a variant of a bundle served as a model of its own (``overrides/<variant>.json`` with
``"monailabel": {"variant_of": "<bundle>"}``), the weights file under ``models/`` (``"model_file": "model_3d.pt"``).

The CAM rule is read from the bundle: ``models/cam_rule.json`` (the dict of
``medcnn.localisation.calibrate_cam``) or the JSON named by a ``cam_rule_file`` id (e.g. the bundle's results
file with ``cam_method`` / ``cam_layer`` / ``cam_threshold`` / ...: the rule chosen on validation data) if
present, else the ``cam`` dict id (``method``, ``target_layer``,
``threshold``, ``mode``, ``largest_component``, ``class_idx``, as in the bundles' train.json) or top-level
``cam_method`` / ``cam_layer`` / ``cam_threshold`` / ... ids of the (merged) inference config, else Grad-CAM on the
network's ``cam_target_layer_name`` with threshold 0.5 of the maximum, class 1
(:func:`medcnn.predict.bundle_cam_rule`); the decision and the CAM region are
:func:`medcnn.predict.classify_with_cam`. A ``decision_threshold`` id (probability of
the positive class at or above which an image is called positive, chosen by the bundle on validation data)
replaces the arg-max decision, and a ``score_network`` id (a callable component, ``"_mode_": "callable"``, applied
to the loaded network) scores images for that decision while the CAM is taken on the network itself.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.post import Restored

from medcnn.errors import user_error
from medcnn.monailabel.adapter import (
    NIFTI_EXT,
    RestoreToInputd,
    bundle_metadata,
    class_names,
    is_classifier,
    label_array,
    override_settings,
    read_served_config,
    save_on_input_grid,
    served_cam_rule,
    served_dimension,
    served_labels,
    served_slice_scorer,
    summarise_slices,
)
from medcnn.predict import classify_with_cam, decide_slices, normalise_volume
from medcnn.transforms.validation import InvalidInputError

__all__ = ["make_infer_task", "MedcnnSegmentationTask", "MedcnnCAMTask", "MedcnnCAMGridTask"]

logger = logging.getLogger(__name__)


class _WeightsFile(BundleConstants):
    """Bundle constants with another weights file under models/ (a variant such as ``model_3d.pt``)."""

    def __init__(self, model_file: str) -> None:
        self.model_file = model_file

    def model_pytorch(self) -> str:
        return self.model_file


def make_infer_task(path: str, conf: dict) -> BundleInferTask:
    """The infer task for the bundle folder ``path``: CAM task for classifiers, segmentation task otherwise."""
    cls = MedcnnCAMGridTask if is_classifier(bundle_metadata(path)) else MedcnnSegmentationTask
    model_file = override_settings(path).get("model_file", "model.pt")
    task = cls(path, conf, const=_WeightsFile(model_file))  # the bundle's own weights file, never a client's
    if task.is_valid():  # BundleInferTask offers every models/*.pt to the client as "model_filename": withdraw it
        task._config.pop("model_filename", None)
    device = conf.get("device", "auto")
    if task.is_valid() and device and device != "auto":
        task._config["device"] = [device]
    return task


class _CommittedWeightsMixin:
    """Loads only the bundle's own weights file, with ``torch.load(..., weights_only=True)``.

    MONAI Label's ``_get_network`` calls ``torch.load`` without ``weights_only`` (safe only through torch's current
    default) and, when the ``model_filename`` config is set, loads a weights file named by the client's request. Here
    the file is always the bundle's ``models/<model_file>`` and is read by :func:`medcnn.networks.load_weights`
    (tensors only; a missing, empty or truncated file is an error naming it). TorchScript bundles keep MONAI Label's
    loader, without the request's data, so no client-chosen file either.
    """

    def _get_network(self, device, data):
        from medcnn.networks import load_weights

        path = self.get_path()
        if not path or self.network is None:
            return super()._get_network(device, None)
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == mtime:
            return cached[0]
        network = copy.deepcopy(self.network).to(torch.device(device))
        state = load_weights(path, map_location=torch.device(device), key=self.model_state_dict)
        network.load_state_dict(state, strict=self.load_strict)
        network.train() if self.train_mode else network.eval()
        self._networks[device] = (network, mtime)
        return network


class _BundleAdapterMixin:
    """Reads the override config, reports labels without index 0 (background in a label map) and the dimension."""

    def _load_bundle_config(self, path, config):
        return read_served_config(path, config)

    def _adapt_info(self) -> None:
        self.labels = served_labels(self.labels)
        self.dimension = served_dimension(self.bundle_config, self.dimension)


class _NiftiGridMixin:
    """Runs the task on NIfTI inputs so that the result is on the input's grid (2D bundles: slice by slice)."""

    dimension: int
    labels: Any

    def post_transforms(self, data=None):
        post = super().post_transforms(data)
        if data and data.get("medcnn_grid"):
            post = [t for t in post if not isinstance(t, Restored)]
            post.append(RestoreToInputd(keys=self.output_label_key, ref_image=self.input_key))
        return post

    def _run_one(self, request: dict, one_slice: bool = False) -> tuple[np.ndarray, dict]:
        # one_slice: a slice of a volume; a classifier leaves its decision to decide_slices (neighbours' scores)
        req = dict(request, skip_writer=True, medcnn_grid=True, medcnn_slice=one_slice)
        _, data = BundleInferTask.__call__(self, req)  # type: ignore[arg-type]
        return data["pred"], data

    def __call__(self, request, callbacks=None):
        path = request.get("image")
        if callbacks or not (isinstance(path, str) and path.lower().endswith(NIFTI_EXT) and os.path.isfile(path)):
            return BundleInferTask.__call__(self, request, callbacks)  # MONAI Label's own writer
        begin = time.time()
        ref = nib.load(path)
        shape = ref.shape
        result: dict = {}
        if self.dimension == 2 and len(shape) >= 3:
            if len(shape) > 4:
                raise InvalidInputError(f"{os.path.basename(path)}: a 2D model needs a 2D image, a stack of 2D slices "
                                 f"(H, W, D) or a multi-channel stack (H, W, D, C); got shape {shape}")
            slices, per_slice, logits = [], [], []
            with tempfile.TemporaryDirectory(prefix="medcnn-slice-") as tmp:
                volume = np.asanyarray(ref.dataobj)
                if self.bundle_config.get("volume_normalisation") is not None:  # per-volume statistics, then slices
                    norm = self.bundle_config.get_parsed_content("volume_normalisation", instantiate=True)
                    volume = normalise_volume(volume, norm)  # as medcnn predict does
                for k in range(shape[2]):  # slice k: (H, W) or, with channels last, (H, W, C)
                    f = os.path.join(tmp, f"slice_{k:04d}.nii.gz")
                    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume[:, :, k]), ref.affine), f)
                    try:
                        pred, data = self._run_one(dict(request, image=f), one_slice=True)
                    except Exception as e:  # name the uploaded file and slice, not the temporary slice file
                        err = user_error(e)
                        if err is None:
                            raise
                        raise InvalidInputError(f"{path} (slice {k} of {shape[2]}): "
                                                f"{str(err).replace(f + ': ', '')}") from e
                    slices.append(label_array(pred, 2))
                    per_slice.append(data.get("result") or {})
                    if data.get("medcnn_logits") is not None:
                        logits.append(torch.as_tensor(data["medcnn_logits"]).float().reshape(-1))
            if logits:  # a classifier: every slice decided by the bundle's slice-scoring rule, as medcnn predict does
                gated, per_slice, _ = decide_slices([torch.as_tensor(m) for m in slices], torch.stack(logits),
                                                    self.rule, self.class_names, self.slice_scorer)
                slices = [np.asarray(m, dtype=np.uint8) for m in gated]
            label = np.stack(slices, axis=2)
            result = summarise_slices(per_slice, getattr(self, "positive_name", None))
        else:
            pred, data = self._run_one(request)
            spatial = tuple(shape[:3]) if len(shape) > 3 else tuple(shape)  # 4D NIfTI: channels last
            label = label_array(pred, len(spatial))
            result = data.get("result") or {}
            if label.shape != spatial:
                raise ValueError(f"{os.path.basename(path)}: result shape {label.shape} differs from the input's "
                                 f"{spatial}; the bundle's postprocessing must invert its spatial transforms")
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        save_on_input_grid(label, ref, out)
        result_json = dict(result) if isinstance(result, dict) else {"result": result}
        result_json["label_names"] = self.labels
        result_json["latencies"] = {"total": round(time.time() - begin, 2)}
        logger.info("medcnn result %s: shape %s, labels present %s, %s", out, label.shape, np.unique(label).tolist(),
                    {k: v for k, v in result_json.items() if k not in ("label_names", "latencies")})
        return out, result_json


class MedcnnSegmentationTask(_NiftiGridMixin, _CommittedWeightsMixin, _BundleAdapterMixin, BundleInferTask):
    """A medcnn segmentation bundle as a MONAI Label segmentation model."""

    def __init__(self, path: str, conf: dict, const: BundleConstants | None = None):
        super().__init__(path, conf, const=const, type=InferType.SEGMENTATION, post_filter=[SaveImaged],
                         load_strict=True)
        if self.valid:
            self._adapt_info()


class MedcnnCAMTask(_CommittedWeightsMixin, _BundleAdapterMixin, BundleInferTask):
    """A medcnn classifier bundle served as the thresholded Grad-CAM region of its positive class."""

    def __init__(self, path: str, conf: dict, const: BundleConstants | None = None):
        super().__init__(path, conf, const=const, type=InferType.SEGMENTATION, post_filter=[SaveImaged],
                         load_strict=True)
        if not self.valid:
            return
        self.class_names = class_names(bundle_metadata(path))
        self.rule = served_cam_rule(path, self.bundle_config)
        self.slice_scorer = served_slice_scorer(self.bundle_config)  # the bundle's slice-scoring rule, or None
        pos = int(self.rule["class_idx"])
        self.positive_name = self.class_names.get(pos, f"class {pos}")
        self._adapt_info()
        self.labels = {self.positive_name: 1}
        self.description = (f"{self.description} [3D Slicer: the {self.rule['method']} region of class "
                            f"'{self.positive_name}'; class probabilities in the result JSON]")

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        network = self._get_network(device, data)
        image = data[self.input_key]
        x = torch.as_tensor(image).float()[None].to(torch.device(device))
        score_net = network  # a bundle may score images with a wrapper of its network (e.g. max over half-slices)
        if self.bundle_config.get("score_network") is not None:
            score_net = self.bundle_config.get_parsed_content("score_network", instantiate=True)(network)
        with torch.no_grad():  # with a slice-scoring rule: the slice's mirror mean (its neighbours: decide_slices)
            logits = (self.slice_scorer.score(x, score_net) if self.slice_scorer is not None else score_net(x))
            logits = logits.float()[0]
        # the decision, CAM region and result JSON of medcnn predict (one function, so the two cannot drift); a slice
        # of a volume is decided after all slices are scored (_NiftiGridMixin.__call__ -> decide_slices)
        one_slice = bool(data.get("medcnn_slice"))
        mask, _, result = classify_with_cam(network, x, logits, self.rule, self.class_names, gate=not one_slice)
        data["medcnn_logits"] = logits.detach().cpu()
        meta = copy.deepcopy(image.meta) if isinstance(image, MetaTensor) else {}
        ops = copy.deepcopy(image.applied_operations) if isinstance(image, MetaTensor) else []
        data[self.output_label_key] = MetaTensor(mask.float(), meta=meta, applied_operations=ops)
        data["result"] = result
        if result.get("warning"):
            logger.warning("%s: %s", self.positive_name, result["warning"])
        return data

    def post_transforms(self, data=None):
        pre = self.pre_transforms(data)
        post = []
        try:
            post.append(Invertd(keys=self.output_label_key, transform=Compose(pre), orig_keys=self.input_key,
                                nearest_interp=True))
        except Exception as e:  # noqa: BLE001 - a non-invertible pipeline falls back to resizing
            logger.warning("CAM mask: cannot invert preprocessing (%s); resizing only", e)
        post.append(Restored(keys=self.output_label_key, ref_image=self.input_key))
        return post


class MedcnnCAMGridTask(_NiftiGridMixin, MedcnnCAMTask):
    """:class:`MedcnnCAMTask` with the result written on the input's grid."""

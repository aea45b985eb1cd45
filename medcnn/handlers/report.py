"""Ignite handler: one PDF report per evaluated case (see :func:`medcnn.report.pdf.write_case_report`)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medcnn.report.pdf import load_json_or_none, write_case_report

__all__ = ["PDFReportHandler"]

logger = logging.getLogger(__name__)


def _items(output: Any) -> list[dict]:
    """Decollated list of dicts (MONAI evaluators) or a collated dict with a batch dimension -> list of dicts."""
    if isinstance(output, Mapping):
        n = next((len(v) for v in output.values() if isinstance(v, (torch.Tensor, np.ndarray, list))), 0)
        return [{k: (v[i] if isinstance(v, (torch.Tensor, np.ndarray, list)) and len(v) == n else v)
                 for k, v in output.items()} for i in range(n)]
    if isinstance(output, (list, tuple)) and all(isinstance(o, Mapping) for o in output):
        return [dict(o) for o in output]
    raise ValueError(f"PDFReportHandler: cannot read cases from an engine output of type {type(output).__name__}")


def _to_mask(x, threshold: float) -> np.ndarray:
    """``(C, *spatial)`` prediction/label -> ``(1, *spatial)`` 0/1: argmax > 0 if C > 1, else ``x > threshold``."""
    a = torch.as_tensor(x).detach().cpu().float()
    if a.ndim >= 3 and a.shape[0] > 1:
        return (a.argmax(0, keepdim=True) > 0).to(torch.uint8).numpy()
    return (a > threshold).to(torch.uint8).numpy()


def _scalar(value: Any) -> Any:
    """A collated one-element value (list, tensor) -> its element; anything else unchanged."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value


def _case_name(item: Mapping, image_key: str, index: int, name_key: str | None = None) -> str:
    """File-safe case name: ``item[name_key]`` when given and present, else the image's file stem."""
    if name_key and item.get(name_key) not in (None, ""):
        named = item[name_key]
        named = named[0] if isinstance(named, (list, tuple)) and named else named
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(named)) or f"case_{index:04d}"
    img = item.get(image_key)
    src = getattr(img, "meta", {}).get("filename_or_obj") if hasattr(img, "meta") else None
    if isinstance(src, (list, tuple)):
        src = src[0] if src else None
    stem = Path(str(src)).name if src else f"case_{index:04d}"
    stem = re.sub(r"\.(nii\.gz|nii|png|jpe?g|tiff?|dcm|npy|npz)$", "", stem, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or f"case_{index:04d}"


class PDFReportHandler:
    """Attach to an evaluator; at ``COMPLETED`` write ``<output_dir>/<case>_report.pdf`` for each case seen.

    Per iteration it keeps (on CPU) the image's first channel, the predicted mask, and optionally the reference
    mask and a CAM heatmap of every item of ``output_transform(engine.state.output)``; at completion the
    evaluator's metrics (plus ``metrics_json`` if given and present) and ``curves_json`` go into every report.

    Args:
        output_dir: folder for the PDFs (created).
        image_key, pred_key: keys of the image and the prediction in the engine output items.
        label_key: key of the reference mask, or ``None``.
        cam_key: key of a CAM heatmap ``(1, *spatial)``, or ``None``.
        metrics_json: a ``metrics.json`` path whose figures are added (engine metrics win on clashes).
        curves_json: a ``curves.json`` path (``TrainingCurvesHandler``) for the training-curves page.
        threshold: for one-channel predictions/labels (probabilities); multi-channel ones use argmax > 0.
        max_cases: keep at most this many cases (memory bound for slice-wise 2D evaluation); ``None`` = all.
        output_transform: maps ``engine.state.output`` to the items (default: identity). Keys missing from the
            output items are looked up in ``engine.state.batch`` (e.g. a classifier bundle's ``"mask"``).
        cam_method: ``callable(images (B, C, *S), class_idx) -> heatmaps (B, 1, *S)`` (a
            :class:`medcnn.localisation.methods.CAMMethod`), or ``None``.
        cam_handler: a :class:`medcnn.handlers.cam.CAMDiceHandler` whose CAM method and (calibrated) mask rule
            are reused; overrides ``cam_method`` / ``cam_threshold`` / ``cam_mode``.
        cam_threshold, cam_mode, cam_class_idx: rule turning the heatmap into the predicted mask when the
            prediction is not a mask (classifier bundles: ``pred`` holds class probabilities, reported as the
            probability of class ``cam_class_idx``).
        presence_threshold: a classifier probability below this means "absent": the CAM is still drawn, but
            the predicted region is empty, so the summary agrees with the classifier (the decision threshold of
            the :class:`medcnn.localisation.CAMRule` applied by :class:`medcnn.localisation.CAMToMask`).
        name_key: item key naming the case (e.g. a datalist's ``"case"``); default: the image's file name, which
            is ambiguous when every case folder holds the same file names (BraTS).
        display_channel: the image channel drawn (e.g. the centre slice of a 2.5D input).
        native_image_key, native_label_key: item keys of copies of the image / reference mask taken before
            resizing (``CopyItemsd``); the report draws on them. A CAM and its mask, computed on ``image_key`` at
            the network's input size, are mapped back onto that grid by inverting ``invert_transform``
            (the evaluation preprocessing, e.g. centre crop + resize) with :class:`monai.transforms.Invertd`.
        group_key, order_key: 2D items (slices) with the same ``item[group_key]`` (e.g. ``"case"``) are stacked into
            one volume, slice ``item[order_key]`` at that index along the last axis, and get one report; the
            classifier probability shown is the largest over the slices. ``max_cases`` then counts groups.
        class_names, finding_name, template, max_slices: passed to :func:`write_case_report`.

    In a bundle's ``evaluate.json`` (segmentation)::

        {"_target_": "medcnn.handlers.PDFReportHandler", "output_dir": "$@output_dir + '/reports'",
         "curves_json": "$@ckpt_dir + '/curves.json'", "max_cases": 10}

    and for a classifier with Grad-CAM (reference mask under ``"mask"``, the CAMDiceHandler listed before it)::

        {"_target_": "medcnn.handlers.PDFReportHandler", "output_dir": "$@output_dir + '/reports'",
         "label_key": "mask", "cam_handler": "@validate#handlers#1"}
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
        cam_key: str | None = None,
        metrics_json: str | os.PathLike | None = None,
        curves_json: str | os.PathLike | None = None,
        threshold: float = 0.5,
        max_cases: int | None = 20,
        output_transform: Callable[[Any], Any] | None = None,
        class_names: Sequence[str] = ("background", "tumour"),
        finding_name: str = "tumour-like region",
        template: str | None = None,
        max_slices: int = 6,
        cam_method: Callable[..., torch.Tensor] | None = None,
        cam_handler: Any = None,
        cam_threshold: float = 0.5,
        cam_mode: str = "fraction",
        cam_class_idx: int = 1,
        presence_threshold: float = 0.5,
        name_key: str | None = None,
        display_channel: int = 0,
        native_image_key: str | None = None,
        native_label_key: str | None = None,
        invert_transform: Callable | None = None,
        group_key: str | None = None,
        order_key: str = "slice_index",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.image_key, self.pred_key, self.label_key, self.cam_key = image_key, pred_key, label_key, cam_key
        self.metrics_json, self.curves_json = metrics_json, curves_json
        self.threshold = threshold
        self.max_cases = max_cases
        self.output_transform = output_transform or (lambda x: x)
        self.report_kwargs = {"class_names": tuple(class_names), "finding_name": finding_name,
                              "template": template, "max_slices": max_slices}
        self.cam_method, self.cam_handler = cam_method, cam_handler
        self.cam_threshold, self.cam_mode, self.cam_class_idx = cam_threshold, cam_mode, int(cam_class_idx)
        self.presence_threshold = float(presence_threshold)
        self.name_key = name_key
        self.display_channel = int(display_channel)
        self.native_image_key, self.native_label_key = native_image_key, native_label_key
        self.invert_transform = invert_transform
        self.group_key, self.order_key = group_key, order_key
        if invert_transform is not None and native_image_key is None:
            raise ValueError("PDFReportHandler: invert_transform needs native_image_key (the grid to draw on)")
        self.cases: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self._skipped = 0

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.cases, self.written, self._skipped = [], [], 0

    def _cam_rule(self) -> tuple[Any, Any]:
        """The CAM callable and the :class:`medcnn.localisation.CAMRule` (the handler's, when one is given)."""
        from medcnn.localisation.rule import CAMRule

        h = self.cam_handler
        if h is not None:
            return h.cam, CAMRule.from_dict(h.rule, decision_threshold=self.presence_threshold)
        rule = CAMRule(method=str(getattr(self.cam_method, "name", "custom")), class_idx=self.cam_class_idx,
                       threshold=self.cam_threshold, mode=self.cam_mode, decision_threshold=self.presence_threshold)
        return self.cam_method, rule

    def _collect(self, engine: Engine) -> None:
        items = _items(self.output_transform(engine.state.output))
        try:
            batch_items = _items(engine.state.batch) if engine.state.batch is not None else []
        except ValueError:
            batch_items = []
        if len(batch_items) == len(items):
            items = [{**b, **o} for b, o in zip(batch_items, items, strict=True)]
        from medcnn.localisation.rule import CAMToMask

        cam_fn, cam_rule = self._cam_rule()
        cam_cls = cam_rule.class_idx
        to_mask = CAMToMask(cam_rule)
        for item in items:
            group = _scalar(item.get(self.group_key)) if self.group_key else None
            n_seen = len({c["group"] for c in self.cases}) if self.group_key else len(self.cases)
            new_group = not self.group_key or group not in {c["group"] for c in self.cases}
            if self.max_cases is not None and new_group and n_seen >= self.max_cases:
                self._skipped += 1
                continue
            keys = (self.image_key, self.pred_key, self.native_image_key, self.group_key)
            for key in (k for k in keys if k):
                if key not in item:
                    raise KeyError(f"PDFReportHandler: engine output has no '{key}' (keys: {sorted(item)})")
            image = item[self.image_key]
            shown = item[self.native_image_key] if self.native_image_key else image
            spatial = torch.as_tensor(image).ndim - 1
            ch = self.display_channel
            if not 0 <= ch < torch.as_tensor(shown).shape[0]:
                raise ValueError(f"PDFReportHandler: display_channel {ch} is not a channel of '{self.image_key}' "
                                 f"(shape {tuple(torch.as_tensor(shown).shape)})")
            spacing = [float(v) for v in shown.pixdim] if hasattr(shown, "pixdim") else None
            case = {
                "name": _case_name(item, self.image_key, len(self.cases), self.name_key),
                "image": torch.as_tensor(shown).detach().cpu().float()[ch:ch + 1].numpy(),
                "spacing": spacing,
                "source": str(getattr(shown, "meta", {}).get("filename_or_obj", "")),
                "group": group,
                "order": int(_scalar(item.get(self.order_key, 0))) if self.group_key else 0,
            }
            pred = torch.as_tensor(item[self.pred_key]).detach().cpu().float()
            if pred.ndim > spatial:  # a (C, *spatial) segmentation output
                case["pred"] = _to_mask(pred, self.threshold)
            else:  # class scores of a classifier
                case["probability"] = float(pred.reshape(-1)[min(cam_cls, pred.numel() - 1)])
            label_key = self.native_label_key or self.label_key
            if label_key and label_key in item:
                label = torch.as_tensor(item[label_key])
                if label.ndim > spatial:
                    case["label"] = _to_mask(label, self.threshold)
            if self.cam_key and self.cam_key in item:
                case["cam"] = torch.as_tensor(item[self.cam_key]).detach().cpu().float()[:1].numpy()
            elif cam_fn is not None:
                heat = cam_fn(torch.as_tensor(image)[None].float(), cam_cls)
                case["cam"] = torch.as_tensor(heat).detach().cpu().float().reshape(1, *image.shape[1:]).numpy()
            if "pred" not in case:
                if "cam" not in case:
                    raise ValueError(
                        f"PDFReportHandler: '{self.pred_key}' of {case['source'] or case['name']} is not a mask "
                        f"(shape {tuple(pred.shape)}) and no CAM is available to derive one"
                    )
                # classifier says absent: the CAM is still drawn, the region is empty
                case["pred"] = to_mask(case["cam"], case["probability"])
                if self.invert_transform is not None:
                    self._to_native(case, image)
            self.cases.append(case)

    def _to_native(self, case: dict, image: Any) -> None:
        """Map ``case["cam"]`` / ``case["pred"]`` from the network input grid of ``image`` to the native grid."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        if not isinstance(image, MetaTensor):
            raise ValueError(f"PDFReportHandler: cannot invert the preprocessing of {case['name']}: "
                             f"'{self.image_key}' is not a MetaTensor with its applied operations")
        keys = [k for k in ("cam", "pred") if k in case]
        data = {self.image_key: image, **{k: MetaTensor(np.asarray(case[k], np.float32)) for k in keys}}
        inverted = Invertd(keys=keys, transform=self.invert_transform, orig_keys=self.image_key,
                           nearest_interp=[k == "pred" for k in keys], to_tensor=True)(data)
        for k in keys:
            arr = torch.as_tensor(inverted[k]).detach().cpu().float().numpy()
            case[k] = (arr > 0.5).astype(np.uint8) if k == "pred" else arr
            if case[k].shape[1:] != case["image"].shape[1:]:
                raise ValueError(f"PDFReportHandler: inverted {k} of {case['name']} has shape {case[k].shape}, "
                                 f"the native image {case['image'].shape}; is invert_transform the preprocessing?")

    def _grouped(self) -> list[dict]:
        """Cases as collected, or (``group_key``) one case per group with its slices stacked on the last axis."""
        if not self.group_key:
            return self.cases
        out = []
        for group in dict.fromkeys(c["group"] for c in self.cases):
            parts = sorted((c for c in self.cases if c["group"] == group), key=lambda c: c["order"])
            depth = max(c["order"] for c in parts) + 1
            merged = {"name": re.sub(r"[^A-Za-z0-9_.-]+", "_", str(group)), "spacing": None,
                      "source": parts[0]["source"]}
            for key in ("image", "pred", "cam", "label"):
                if all(key in c for c in parts):
                    vol = np.zeros((*parts[0][key].shape, depth), dtype=parts[0][key].dtype)
                    for c in parts:
                        vol[..., c["order"]] = c[key]
                    merged[key] = vol
            probs = [c["probability"] for c in parts if "probability" in c]
            if probs:
                merged["probability"] = float(max(probs))
            if parts[0]["spacing"]:
                # 2D slices carry their in-plane spacing only, not the distance between slices: areas are reported
                # in cm², the volume in voxels (never an assumed slice spacing)
                merged["spacing"] = list(parts[0]["spacing"][:2])
            out.append(merged)
        return out

    def _write(self, engine: Engine) -> None:
        metrics: dict[str, Any] = {}
        if self.metrics_json and Path(self.metrics_json).is_file():
            metrics.update(load_json_or_none(self.metrics_json, "metrics") or {})
        for key, value in engine.state.metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else value.tolist()
            metrics[key] = value
        curves = None
        if self.curves_json and Path(self.curves_json).is_file():
            curves = load_json_or_none(self.curves_json, "curves")
        names: dict[str, int] = {}
        for case in self._grouped():
            name = case["name"]
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}_{names[name]}"
            path = write_case_report(
                self.output_dir / f"{name}_report.pdf", case["image"], case["pred"], cam=case.get("cam"),
                label=case.get("label"), metrics=metrics, curves=curves, case_id=name, spacing=case["spacing"],
                sources={"image": case["source"]}, probability=case.get("probability"), **self.report_kwargs,
            )
            self.written.append(path)
        if self._skipped:
            logger.info("PDFReportHandler: %d cases beyond max_cases=%s got no report", self._skipped, self.max_cases)
        logger.info("PDFReportHandler: %d reports in %s", len(self.written), self.output_dir)

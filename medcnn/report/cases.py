"""What a PDF case report gathers per evaluated item: image, predicted mask, reference, CAM, probability.

:class:`ReportCases` turns engine output items (MONAI's decollated dicts) into report cases, mapping a CAM region
back onto the native grid and stacking the 2D slices of one case into a volume; it needs no Ignite engine. The
:class:`medcnn.handlers.PDFReportHandler` feeds it during an evaluation and hands the cases to
:func:`medcnn.report.pdf.write_case_reports`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ReportCases", "items_of"]


def items_of(output: Any) -> list[dict]:
    """Decollated list of dicts (MONAI evaluators) or a collated dict with a batch dimension -> list of dicts."""
    if isinstance(output, Mapping):
        n = next((len(v) for v in output.values() if isinstance(v, (torch.Tensor, np.ndarray, list))), 0)
        return [{k: (v[i] if isinstance(v, (torch.Tensor, np.ndarray, list)) and len(v) == n else v)
                 for k, v in output.items()} for i in range(n)]
    if isinstance(output, (list, tuple)) and all(isinstance(o, Mapping) for o in output):
        return [dict(o) for o in output]
    raise ValueError(f"PDF report: cannot read cases from an engine output of type {type(output).__name__}")


def as_mask(x, threshold: float) -> np.ndarray:
    """``(C, *spatial)`` prediction/label -> ``(1, *spatial)`` 0/1: argmax > 0 if C > 1, else ``x > threshold``."""
    a = torch.as_tensor(x).detach().cpu().float()
    if a.ndim >= 3 and a.shape[0] > 1:
        return (a.argmax(0, keepdim=True) > 0).to(torch.uint8).numpy()
    return (a > threshold).to(torch.uint8).numpy()


def scalar_of(value: Any) -> Any:
    """A collated one-element value (list, tensor) -> its element; anything else unchanged."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value


def case_name(item: Mapping, image_key: str, index: int, name_key: str | None = None) -> str:
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


class ReportCases:
    """Report cases ``{"name", "image" (1, *S), "pred" (1, *S), ["label"], ["cam"], ["probability"], "spacing", ...}``
    gathered item by item (the collection part of :class:`medcnn.handlers.PDFReportHandler`, built in a bundle
    config as its ``cases``).

    Args:
        image_key, pred_key: keys of the image and the prediction in the engine output items.
        label_key: key of the reference mask, or ``None``.
        cam_key: key of the CAM heatmap ``(1, *spatial)`` in the output items (e.g. put there by
            :class:`medcnn.handlers.cam.CAMDiceHandler` with ``output_key``: the CAM the figures were computed from;
            the report never computes one), or ``None``.
        threshold: for one-channel predictions/labels (probabilities); multi-channel ones use argmax > 0.
        max_cases: keep at most this many cases (memory bound for slice-wise 2D evaluation); ``None`` = all.
        name_key: item key naming the case (e.g. a datalist's ``"case"``); default: the image's file name, which
            is ambiguous when every case folder holds the same file names (BraTS).
        display_channel: the image channel drawn (e.g. the centre slice of a 2.5D input).
        native_image_key, native_label_key: item keys of copies of the image / reference mask taken before
            resizing (``CopyItemsd``); the report draws on them. A CAM and its mask, computed on ``image_key`` at
            the network's input size, are mapped back onto that grid by inverting ``invert_transform``
            (the evaluation preprocessing, e.g. centre crop + resize) with :class:`monai.transforms.Invertd`.
        group_key, order_key: 2D items (slices) with the same ``item[group_key]`` (e.g. ``"case"``) are stacked into
            one volume, slice ``item[order_key]`` at that index along the last axis, and get one report; the
            classifier probability of the summary is the largest over the slices, and each slice shown is titled
            with its own (``slice_probabilities``: the probability its decision was made on, e.g. the bundle's
            slice-scoring rule). ``max_cases`` then counts groups. The volume has the depth the slices'
            ``meta["volume_depth"]`` records (:class:`medcnn.transforms.SliceIterd` sets it), else the largest
            ``order_key`` + 1; slices not evaluated are left empty.
    """

    def __init__(
        self,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
        cam_key: str | None = None,
        threshold: float = 0.5,
        max_cases: int | None = 20,
        name_key: str | None = None,
        display_channel: int = 0,
        native_image_key: str | None = None,
        native_label_key: str | None = None,
        invert_transform: Callable | None = None,
        group_key: str | None = None,
        order_key: str = "slice_index",
    ) -> None:
        if invert_transform is not None and native_image_key is None:
            raise ValueError("PDF report: invert_transform needs native_image_key (the grid to draw on)")
        self.image_key, self.pred_key, self.label_key, self.cam_key = image_key, pred_key, label_key, cam_key
        self.threshold, self.max_cases, self.name_key = threshold, max_cases, name_key
        self.display_channel = int(display_channel)
        self.native_image_key, self.native_label_key = native_image_key, native_label_key
        self.invert_transform = invert_transform
        self.group_key, self.order_key = group_key, order_key
        self.cases: list[dict[str, Any]] = []
        self.skipped = 0

    def reset(self) -> None:
        """Forget every case (start of an evaluation)."""
        self.cases, self.skipped = [], 0

    def add(self, items: list[Mapping], cam_rule: Any, rule_on_native_grid: bool = False) -> None:
        """Gather the cases of ``items``; ``cam_rule`` (a :class:`medcnn.localisation.CAMRule`) turns a classifier's
        CAM into the predicted region. ``rule_on_native_grid``: the rule's figures were scored on the native grid
        (its ``smooth_sigma`` is in native pixels), so the CAM is first resized (bilinear, as the scoring does) to
        the native image and the rule applied there; otherwise the rule is applied on the network input grid and
        the region mapped back by ``invert_transform``."""
        from medcnn.localisation.rule import CAMToMask

        cam_cls = cam_rule.class_idx
        to_mask = CAMToMask(cam_rule)
        for item in items:
            group = scalar_of(item.get(self.group_key)) if self.group_key else None
            n_seen = len({c["group"] for c in self.cases}) if self.group_key else len(self.cases)
            new_group = not self.group_key or group not in {c["group"] for c in self.cases}
            if self.max_cases is not None and new_group and n_seen >= self.max_cases:
                self.skipped += 1
                continue
            keys = (self.image_key, self.pred_key, self.native_image_key, self.group_key)
            for key in (k for k in keys if k):
                if key not in item:
                    raise KeyError(f"PDF report: engine output has no '{key}' (keys: {sorted(item)})")
            image = item[self.image_key]
            shown = item[self.native_image_key] if self.native_image_key else image
            spatial = torch.as_tensor(image).ndim - 1
            ch = self.display_channel
            if not 0 <= ch < torch.as_tensor(shown).shape[0]:
                raise ValueError(f"PDF report: display_channel {ch} is not a channel of '{self.image_key}' "
                                 f"(shape {tuple(torch.as_tensor(shown).shape)})")
            spacing = [float(v) for v in shown.pixdim] if hasattr(shown, "pixdim") else None
            case = {
                "name": case_name(item, self.image_key, len(self.cases), self.name_key),
                "image": torch.as_tensor(shown).detach().cpu().float()[ch:ch + 1].numpy(),
                "spacing": spacing,
                "source": str(getattr(shown, "meta", {}).get("filename_or_obj", "")),
                "group": group,
                "order": int(scalar_of(item.get(self.order_key, 0))) if self.group_key else 0,
                # distance between slices, in mm, when the slice came from a volume (medcnn.transforms.SliceIterd)
                "slice_spacing": scalar_of(getattr(shown, "meta", {}).get("slice_spacing")),
                # the slice count of that volume (medcnn.transforms.volume_depth), kept slices or not
                "volume_depth": scalar_of(getattr(shown, "meta", {}).get("volume_depth")),
            }
            pred = torch.as_tensor(item[self.pred_key]).detach().cpu().float()
            if pred.ndim > spatial:  # a (C, *spatial) segmentation output
                case["pred"] = as_mask(pred, self.threshold)
            else:  # class scores of a classifier
                case["probability"] = float(pred.reshape(-1)[min(cam_cls, pred.numel() - 1)])
            label_key = self.native_label_key or self.label_key
            if label_key and label_key in item:
                label = torch.as_tensor(item[label_key])
                if label.ndim > spatial:
                    case["label"] = as_mask(label, self.threshold)
            if self.cam_key and self.cam_key in item:
                case["cam"] = torch.as_tensor(item[self.cam_key]).detach().cpu().float()[:1].numpy()
            if "pred" not in case:
                if "cam" not in case:
                    raise ValueError(
                        f"PDF report: '{self.pred_key}' of {case['source'] or case['name']} is not a mask "
                        f"(shape {tuple(pred.shape)}) and the output has no CAM under cam_key={self.cam_key!r} "
                        "(give the CAMDiceHandler listed before this handler output_key=cam_key)"
                    )
                # classifier says absent: the CAM is still drawn, the region is empty
                if rule_on_native_grid and self.native_image_key:  # the grid the rule was scored on
                    from medcnn.localisation.masks import resize_heatmaps

                    cam = resize_heatmaps(torch.as_tensor(case["cam"])[None], case["image"].shape[1:])[0]
                    case["cam"] = cam.numpy()
                    case["pred"] = np.asarray(to_mask(cam, case["probability"])).astype(np.uint8)
                else:
                    case["pred"] = to_mask(case["cam"], case["probability"])
                    if self.invert_transform is not None:
                        self._to_native(case, image)
            self.cases.append(case)

    def _to_native(self, case: dict, image: Any) -> None:
        """Map ``case["cam"]`` / ``case["pred"]`` from the network input grid of ``image`` to the native grid."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        if not isinstance(image, MetaTensor):
            raise ValueError(f"PDF report: cannot invert the preprocessing of {case['name']}: "
                             f"'{self.image_key}' is not a MetaTensor with its applied operations")
        keys = [k for k in ("cam", "pred") if k in case]
        data = {self.image_key: image, **{k: MetaTensor(np.asarray(case[k], np.float32)) for k in keys}}
        inverted = Invertd(keys=keys, transform=self.invert_transform, orig_keys=self.image_key,
                           nearest_interp=[k == "pred" for k in keys], to_tensor=True)(data)
        for k in keys:
            arr = torch.as_tensor(inverted[k]).detach().cpu().float().numpy()
            case[k] = (arr > 0.5).astype(np.uint8) if k == "pred" else arr
            if case[k].shape[1:] != case["image"].shape[1:]:
                raise ValueError(f"PDF report: inverted {k} of {case['name']} has shape {case[k].shape}, "
                                 f"the native image {case['image'].shape}; is invert_transform the preprocessing?")

    def grouped(self) -> list[dict]:
        """Cases as collected, or (``group_key``) one case per group with its slices stacked on the last axis."""
        if not self.group_key:
            return self.cases
        out = []
        for group in dict.fromkeys(c["group"] for c in self.cases):
            parts = sorted((c for c in self.cases if c["group"] == group), key=lambda c: c["order"])
            # the volume's own slice count when its slices recorded it (a case whose last slices were not kept is
            # still "slice z of 155"), else the last slice number + 1
            recorded = [int(c["volume_depth"]) for c in parts if c.get("volume_depth") is not None]
            depth = max([c["order"] + 1 for c in parts] + recorded)
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
                per_slice: list[float | None] = [None] * depth  # each slice's own (the decision's) probability
                for c in parts:
                    if "probability" in c:
                        per_slice[c["order"]] = float(c["probability"])
                merged["slice_probabilities"] = per_slice
            if parts[0]["spacing"]:
                # 2D slices carry their in-plane spacing; the distance between slices only when they were cut from a
                # volume that recorded it (``slice_spacing``): then the volume is in mL, else in voxels (never an
                # assumed slice spacing)
                merged["spacing"] = list(parts[0]["spacing"][:2])
                if parts[0].get("slice_spacing"):
                    merged["spacing"].append(float(parts[0]["slice_spacing"]))
            out.append(merged)
        return out

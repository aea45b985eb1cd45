"""Ignite handler: CAM localisation Dice (and optional heatmap / mask files) during an evaluation."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from medcnn.config import flag
from medcnn.localisation.masks import cam_dice, resize_heatmaps
from medcnn.localisation.pipeline import calibrate_cam
from medcnn.localisation.rule import CAMRule, CAMToMask

__all__ = ["CAMDiceHandler"]

logger = logging.getLogger(__name__)


def _batch_field(batch: Any, key: str) -> Any:
    """``batch[key]`` stacked over items, for a collated dict or a decollated list of dicts (MONAI)."""
    if isinstance(batch, dict):
        return batch.get(key)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):
        if key not in batch[0]:
            return None
        values = [item[key] for item in batch]
        if isinstance(values[0], (torch.Tensor, np.ndarray)):
            return torch.stack([torch.as_tensor(v) for v in values])
        return values
    raise ValueError(f"CAMDiceHandler: cannot read {key!r} from a batch of type {type(batch).__name__}")


class CAMDiceHandler:
    """Compute CAM heatmaps of every evaluation batch, threshold them and score them with Dice.

    The mask rule is one :class:`medcnn.localisation.CAMRule` (``rule``, or built from the keyword arguments
    below), applied by :class:`medcnn.localisation.CAMToMask`. On ``STARTED`` its threshold, mode and largest
    component are chosen on ``calibration_data`` when given (validation data, never the test set; see
    :func:`medcnn.localisation.calibrate_cam`). On every iteration the images with label 1 (``positive_label``) and
    a mask
    are localised and scored; with ``output_dir`` every image's heatmap and mask are saved
    (:func:`medcnn.localisation.io.save_localisation`) with a ``localisation.json`` index.
    On ``EPOCH_COMPLETED`` ``state.metrics`` gets
    ``<prefix>dice``, ``<prefix>dice_std``, ``<prefix>threshold``, ``<prefix>threshold_mode``,
    ``<prefix>largest_component``, ``<prefix>method``, ``<prefix>layer`` and ``<prefix>n_images``.

    Args:
        network: the classifier (the evaluator's network).
        method: CAM method name (``medcnn.localisation.CAM_METHODS``).
        target_layer: module name, ``None`` = the network's ``cam_target_layer_name``.
        threshold, mode, largest_component: the mask rule (see :func:`medcnn.localisation.cam_to_mask`).
        calibration_data: validation samples to choose the rule on, or ``None``.
        class_idx: the class whose evidence is mapped (1 = object present).
        keys: batch keys of image, label, mask.
        output_dir: folder for heatmap / mask files, or ``None``.
        prefix: prefix of the metric names.
        positive_label: label of the images that contain the object (scored with Dice).
        min_probability: the rule's decision threshold: saved masks are empty for images whose predicted
            probability of ``class_idx`` (the evaluator's ``pred`` output) is below this (the heatmap is still
            saved); Dice is unaffected.
        rule: a :class:`medcnn.localisation.CAMRule` or a dict of its fields; replaces ``method``,
            ``target_layer``, ``threshold``, ``mode``, ``largest_component``, ``class_idx`` and ``min_probability``.
        group_key: batch key grouping the images (e.g. ``"patient"``); when given, ``state.metrics`` also gets
            ``<prefix>dice_per_<group_key>``: ``{group: mean Dice of its positive images}``.
        output_key: when given, every image's heatmap ``(1, *S)`` (all images, not only the scored ones) is added to
            its item of the evaluator's output under this key, so later handlers (the PDF report) show the CAM the
            figures were computed from instead of computing it again.
        native_mask_key: batch key of the reference mask on the image's native grid (e.g. a ``CopyItemsd`` copy
            made before ``Resized``); when given, Dice is scored there: each heatmap ``(1, h, w)`` is resized
            (bilinear) to the native mask's ``(1, H, W)`` before the rule thresholds it. The network-grid
            ``keys[2]`` mask is then unused for Dice. Only for pipelines whose spatial change is a pure resize.
        smooth_sigma: the rule's Gaussian smoothing of the heatmap before thresholding, in pixels of the grid
            Dice is scored on (0 = none).
    """

    def __init__(
        self,
        network: nn.Module,
        method: str = "gradcam",
        target_layer: str | None = None,
        threshold: float = 0.5,
        mode: str = "fraction",
        largest_component: bool = False,
        calibration_data: Any = None,
        class_idx: int = 1,
        keys: Sequence[str] = ("image", "label", "mask"),
        output_dir: str | os.PathLike | None = None,
        prefix: str = "cam_",
        positive_label: int = 1,
        min_probability: float = 0.5,
        rule: CAMRule | dict | None = None,
        group_key: str | None = None,
        output_key: str | None = None,
        native_mask_key: str | None = None,
        smooth_sigma: float = 0.0,
    ) -> None:
        self.network = network
        self.output_key = output_key
        self.native_mask_key = native_mask_key
        if rule is None:
            rule = CAMRule(method=str(method), target_layer=target_layer, class_idx=int(class_idx),
                           threshold=float(threshold), mode=str(mode),
                           largest_component=flag(largest_component, "CAMDiceHandler: largest_component"),
                           decision_threshold=float(min_probability), smooth_sigma=float(smooth_sigma))
        rule = CAMRule.from_dict(rule)
        self.cam = rule.cam(network)
        self.rule = CAMRule.from_dict(rule, target_layer=self.cam.target_layer)
        self.calibration_data = calibration_data
        self.keys = tuple(keys)
        self.output_dir = output_dir
        self.prefix = prefix
        self.positive_label = int(positive_label)
        self.group_key = group_key
        self._groups: list[str] = []
        self._dice: list[float] = []
        self._records: list[dict] = []
        self._count = 0
        self.calibration: dict | None = None

    # the rule's fields under the names this handler has always exposed (read by PDFReportHandler and bundles)
    method = property(lambda self: self.rule.method)
    target_layer = property(lambda self: self.rule.target_layer)
    threshold = property(lambda self: self.rule.threshold)
    mode = property(lambda self: self.rule.mode)
    largest_component = property(lambda self: self.rule.largest_component)
    class_idx = property(lambda self: self.rule.class_idx)
    min_probability = property(lambda self: self.rule.decision_threshold)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._calibrate)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _calibrate(self, engine: Engine) -> None:
        if self.calibration_data is None or self.calibration is not None:
            return
        rule = calibrate_cam(self.network, self.calibration_data, self.method, self.target_layer,
                             class_idx=self.class_idx, keys=self.keys)
        self.rule = CAMRule.from_dict(self.rule, threshold=0.5 if rule["threshold"] is None else rule["threshold"],
                                      mode=rule["mode"], largest_component=bool(rule["largest_component"]),
                                      smooth_sigma=float(rule.get("smooth_sigma", 0.0)))
        self.calibration = {k: v for k, v in rule.items() if k != "table"}
        logger.info("CAM rule chosen on %d validation images: %s", rule["n_images"], self.calibration)

    def _reset(self, engine: Engine) -> None:
        self._dice, self._records, self._count, self._groups = [], [], 0, []

    def _collect(self, engine: Engine) -> None:
        image_key, label_key, mask_key = self.keys
        batch = engine.state.batch
        images = torch.as_tensor(_batch_field(batch, image_key))
        labels = _batch_field(batch, label_key)
        if labels is None:  # unlabelled images (localisation only)
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        labels = torch.as_tensor(np.asarray([int(torch.as_tensor(v).reshape(-1)[0]) for v in labels]))
        masks = _batch_field(batch, mask_key if self.native_mask_key is None else self.native_mask_key)
        save = self.output_dir is not None
        every = save or self.output_key is not None
        select = torch.ones_like(labels, dtype=torch.bool) if every else labels == self.positive_label
        if not bool(select.any()):
            return
        heatmaps = self.cam(images[select], self.class_idx).cpu()
        if self.output_key is not None:
            self._publish_heatmaps(engine, heatmaps)
        if self.native_mask_key is not None and masks is not None:
            heatmaps = resize_heatmaps(heatmaps, torch.as_tensor(masks).shape[2:])
        pred = CAMToMask(self.rule)(heatmaps)  # Dice scores the CAM region itself, whatever the classifier says
        sel_labels = labels[select]
        dice = torch.full((len(sel_labels),), float("nan"))
        if masks is not None:
            true = torch.as_tensor(masks)[select].cpu()
            pos = sel_labels == self.positive_label
            if bool(pos.any()):
                dice[pos] = cam_dice(pred[pos], true[pos])
                self._dice += dice[pos].tolist()
                if self.group_key is not None:
                    groups = _batch_field(batch, self.group_key)
                    sel = torch.nonzero(select).reshape(-1)[pos].tolist()
                    self._groups += [str(groups[i]) for i in sel]
        if save:
            true_sel = None if masks is None else torch.as_tensor(masks)[select]
            shown = images[select].cpu()
            if tuple(shown.shape[2:]) != tuple(heatmaps.shape[2:]):  # native-grid Dice: show the image there too
                shown = torch.nn.functional.interpolate(shown.float(), size=tuple(heatmaps.shape[2:]),
                                                        mode="bilinear" if heatmaps.ndim == 4 else "trilinear")
            self._save(engine, shown, heatmaps, pred, true_sel, torch.nonzero(select).reshape(-1).tolist(),
                       sel_labels, dice)
        self._count += int(select.sum())

    def _publish_heatmaps(self, engine: Engine, heatmaps: torch.Tensor) -> None:
        """Add each item's heatmap ``(1, *S)`` to the evaluator's decollated output under ``output_key``."""
        output = engine.state.output
        if not (isinstance(output, list) and len(output) == len(heatmaps) and all(isinstance(o, dict) for o in output)):
            raise ValueError(f"CAMDiceHandler: output_key needs the evaluator's decollated output (a list of one dict "
                             f"per image, {len(heatmaps)} here), got {type(output).__name__}")
        for item, heat in zip(output, heatmaps, strict=True):
            item[self.output_key] = heat

    def _save(self, engine, images, heatmaps, pred, true, index, labels, dice) -> None:
        from medcnn.localisation.io import save_localisation

        ids = _batch_field(engine.state.batch, "id")
        probs = None
        try:
            probs = _batch_field(engine.state.output, "pred")
        except ValueError:
            pass
        for j, i in enumerate(index):
            name = str(ids[i]) if ids is not None else f"image_{self._count + j:05d}"
            p = None if probs is None else self._probability(probs[i])
            mask_j = pred[j] if self.rule.present(p) else torch.zeros_like(pred[j])  # absent: keep the heatmap only
            title = f"{name} label {int(labels[j])}" + ("" if p is None else f" p={p:.2f}")
            if not np.isnan(float(dice[j])):
                title += f" Dice {float(dice[j]):.2f}"
            files = save_localisation(self.output_dir, name, images[j], heatmaps[j], mask_j,
                                      None if true is None else true[j], title=title)
            self._records.append({"id": name, "label": int(labels[j]), "prob": p,
                                  "dice": None if np.isnan(float(dice[j])) else float(dice[j]),
                                  "mask_voxels": int(mask_j.sum()), "files": [f.name for f in files]})

    def _probability(self, pred: Any) -> float | None:
        """Probability of ``class_idx`` from one item's ``pred`` (class vector, or one positive probability)."""
        try:
            v = torch.as_tensor(pred).detach().float().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            return None
        if v.numel() == 1:
            return float(v[0])
        return float(v[self.class_idx]) if self.class_idx < v.numel() else None

    def _publish(self, engine: Engine) -> None:
        dice = np.asarray(self._dice, dtype=float)
        p = self.prefix
        engine.state.metrics.update({
            p + "dice": float(dice.mean()) if dice.size else float("nan"),
            p + "dice_std": float(dice.std()) if dice.size else float("nan"),
            p + "n_images": int(dice.size),
            p + "threshold": self.threshold,
            p + "threshold_mode": self.mode,
            p + "largest_component": self.largest_component,
            p + "method": self.method,
            p + "layer": self.target_layer,
            p + "smooth_sigma": self.rule.smooth_sigma,
        })
        if self.group_key is not None:
            groups = np.asarray(self._groups)
            engine.state.metrics[f"{p}dice_per_{self.group_key}"] = {
                g: float(dice[groups == g].mean()) for g in sorted(set(self._groups))}
        if self.output_dir is not None:
            from medcnn.handlers.metrics_json import write_metrics_json

            write_metrics_json({"rule": self.rule.to_dict(), "images": self._records},
                               os.path.join(self.output_dir, "localisation.json"))
        if not dice.size:
            logger.debug("no reference masks in this evaluation: CAM Dice not computed")
            return
        logger.info("CAM Dice %.4f +- %.4f on %d positive images (%s at %s, %s %.2f, lcc %s)",
                    engine.state.metrics[p + "dice"], engine.state.metrics[p + "dice_std"], dice.size, self.method,
                    self.target_layer, self.mode, self.threshold, self.largest_component)

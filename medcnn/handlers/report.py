"""Ignite handler: one PDF report per evaluated case (see :func:`medcnn.report.pdf.write_case_report`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medcnn.report.cases import ReportCases, items_of
from medcnn.report.pdf import load_json_or_none, write_case_reports

__all__ = ["PDFReportHandler"]

logger = logging.getLogger(__name__)


class PDFReportHandler:
    """Attach to an evaluator; at ``COMPLETED`` write ``<output_dir>/<case>_report.pdf`` for each case seen.

    Per iteration it keeps (on CPU) the image's first channel, the predicted mask, and optionally the reference
    mask and a CAM heatmap of every item of ``output_transform(engine.state.output)``; at completion the
    evaluator's metrics (plus ``metrics_json`` if given and present) and ``curves_json`` go into every report.

    Args:
        output_dir: folder for the PDFs (created).
        image_key, pred_key: keys of the image and the prediction in the engine output items.
        label_key: key of the reference mask, or ``None``.
        cam_key: key of the CAM heatmap ``(1, *spatial)`` in the output items (e.g. put there by
            :class:`medcnn.handlers.cam.CAMDiceHandler` with ``output_key``: the CAM the figures were computed from;
            the report never computes one), or ``None``.
        metrics_json: a ``metrics.json`` path whose figures are added (engine metrics win on clashes).
        curves_json: a ``curves.json`` path (``TrainingCurvesHandler``) for the training-curves page.
        threshold: for one-channel predictions/labels (probabilities); multi-channel ones use argmax > 0.
        max_cases: keep at most this many cases (memory bound for slice-wise 2D evaluation); ``None`` = all.
        output_transform: maps ``engine.state.output`` to the items (default: identity). Keys missing from the
            output items are looked up in ``engine.state.batch`` (e.g. a classifier bundle's ``"mask"``).
        cam_handler: the :class:`medcnn.handlers.cam.CAMDiceHandler` listed before this handler with
            ``output_key=cam_key``: its (calibrated) mask rule turns the CAM into the predicted region.
        cam_rule: a fixed :class:`medcnn.localisation.CAMRule` (or dict of its fields) instead of ``cam_handler``.
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
         "label_key": "mask", "cam_key": "cam", "cam_handler": "@cam_dice"}

    with ``"output_key": "cam"`` given to that ``CAMDiceHandler``.
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
        cam_handler: Any = None,
        cam_rule: Any = None,
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
        self.metrics_json, self.curves_json = metrics_json, curves_json
        self.output_transform = output_transform or (lambda x: x)
        self.report_kwargs = {"class_names": tuple(class_names), "finding_name": finding_name,
                              "template": template, "max_slices": max_slices}
        self.cam_handler, self.cam_rule = cam_handler, cam_rule
        self.presence_threshold = float(presence_threshold)
        self.collector = ReportCases(
            image_key=image_key, pred_key=pred_key, label_key=label_key, cam_key=cam_key, threshold=threshold,
            max_cases=max_cases, name_key=name_key, display_channel=display_channel,
            native_image_key=native_image_key, native_label_key=native_label_key, invert_transform=invert_transform,
            group_key=group_key, order_key=order_key,
        )
        self.written: list[Path] = []

    @property
    def cases(self) -> list[dict[str, Any]]:
        """The cases gathered so far (one per item; slices of a group are stacked only when written)."""
        return self.collector.cases

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.collector.reset()
        self.written = []

    def _rule(self) -> Any:
        """The :class:`medcnn.localisation.CAMRule` turning a CAM into the predicted region (the handler's, live)."""
        from medcnn.localisation.rule import CAMRule

        source = self.cam_handler.rule if self.cam_handler is not None else (self.cam_rule or {})
        return CAMRule.from_dict(source, decision_threshold=self.presence_threshold)

    def _collect(self, engine: Engine) -> None:
        items = items_of(self.output_transform(engine.state.output))
        try:
            batch_items = items_of(engine.state.batch) if engine.state.batch is not None else []
        except ValueError:
            batch_items = []
        if len(batch_items) == len(items):  # keys missing from the output (e.g. the reference "mask"): the batch's
            items = [{**b, **o} for b, o in zip(batch_items, items, strict=True)]
        native = getattr(self.cam_handler, "native_mask_key", None) is not None  # its Dice was scored natively
        self.collector.add(items, self._rule(), rule_on_native_grid=native)

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
        self.written = write_case_reports(self.collector.grouped(), self.output_dir, metrics, curves,
                                          **self.report_kwargs)
        if self.collector.skipped:
            logger.info("PDFReportHandler: %d items beyond max_cases=%s got no report", self.collector.skipped,
                        self.collector.max_cases)
        logger.info("PDFReportHandler: %d reports in %s", len(self.written), self.output_dir)

"""Ignite handler: one PDF report per evaluated case (see :func:`medcnn.report.pdf.write_case_report`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medcnn.report.cases import ReportCases, items_of
from medcnn.report.pdf import load_json_or_none, write_case_reports

__all__ = ["PDFReportHandler"]

logger = logging.getLogger(__name__)

# write_case_report's options that are the same for every case of an evaluation (the rest come from each case)
PAGE_OPTIONS = ("class_names", "finding_name", "template", "max_slices", "transpose", "font_type", "cam_name")


class PDFReportHandler:
    """Attach to an evaluator; at ``COMPLETED`` write ``<output_dir>/<case>_report.pdf`` for each case seen.

    The handler only wires three parts, each configured in one place: ``cases``, a
    :class:`medcnn.report.cases.ReportCases` that gathers (on CPU) the image, predicted mask, reference mask and
    CAM of every item of ``output_transform(engine.state.output)`` (its arguments: which keys, native grid,
    slice grouping, ``max_cases``); the CAM rule that turns a classifier's CAM into the predicted region; and
    :func:`medcnn.report.pdf.write_case_reports`, given the evaluator's metrics (plus ``metrics_json``),
    ``curves_json`` and ``page_options``.

    Args:
        output_dir: folder for the PDFs (created).
        cases: the :class:`~medcnn.report.cases.ReportCases` collection (default: ``ReportCases()``, i.e. keys
            ``"image"`` / ``"pred"`` / ``"label"``, at most 20 cases).
        page_options: options of :func:`medcnn.report.pdf.write_case_report` shared by every case
            (``class_names``, ``finding_name``, ``template``, ``max_slices``, ``transpose``, ``font_type``).
        metrics_json: a ``metrics.json`` path whose figures are added (engine metrics win on clashes).
        curves_json: a ``curves.json`` path (``TrainingCurvesHandler``) for the training-curves page.
        output_transform: maps ``engine.state.output`` to the items (default: identity). Keys missing from the
            output items are looked up in ``engine.state.batch`` (e.g. a classifier bundle's ``"mask"``).
        cam_handler: the :class:`medcnn.handlers.cam.CAMDiceHandler` listed before this handler with
            ``output_key`` equal to the collection's ``cam_key``: its (calibrated) rule turns the CAM into the
            predicted region.
        cam_rule: a fixed :class:`medcnn.localisation.CAMRule` (or dict of its fields) instead of ``cam_handler``.
        presence_threshold: a classifier probability below this means "absent": the CAM is still drawn, but
            the predicted region is empty, so the summary agrees with the classifier (the decision threshold of
            the :class:`medcnn.localisation.CAMRule` applied by :class:`medcnn.localisation.CAMToMask`).

    In a bundle's ``evaluate.json`` (segmentation)::

        {"_target_": "medcnn.handlers.PDFReportHandler", "output_dir": "$@output_dir + '/reports'",
         "cases": {"_target_": "medcnn.report.cases.ReportCases", "max_cases": 10},
         "curves_json": "$@ckpt_dir + '/curves.json'", "page_options": {"finding_name": "tumour region"}}

    and for a classifier with Grad-CAM (reference mask under ``"mask"``, the CAMDiceHandler listed before it
    with ``"output_key": "cam"``)::

        {"_target_": "medcnn.handlers.PDFReportHandler", "output_dir": "$@output_dir + '/reports'",
         "cases": {"_target_": "medcnn.report.cases.ReportCases", "label_key": "mask", "cam_key": "cam"},
         "cam_handler": "@cam_dice"}
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        cases: ReportCases | None = None,
        page_options: Mapping[str, Any] | None = None,
        metrics_json: str | os.PathLike | None = None,
        curves_json: str | os.PathLike | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        cam_handler: Any = None,
        cam_rule: Any = None,
        presence_threshold: float = 0.5,
    ) -> None:
        if cases is not None and not isinstance(cases, ReportCases):
            raise TypeError(f"PDF report: cases must be a medcnn.report.cases.ReportCases, not {type(cases).__name__}")
        unknown = sorted(set(page_options or {}) - set(PAGE_OPTIONS))
        if unknown:
            raise ValueError(f"PDF report: page_options {unknown} are not options of write_case_report "
                             f"(known: {list(PAGE_OPTIONS)})")
        self.output_dir = Path(output_dir)
        self.collector = cases if cases is not None else ReportCases()
        self.page_options = dict(page_options or {})
        self.metrics_json, self.curves_json = metrics_json, curves_json
        self.output_transform = output_transform or (lambda x: x)
        self.cam_handler, self.cam_rule = cam_handler, cam_rule
        self.presence_threshold = float(presence_threshold)
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
        from medcnn.localisation.methods import cam_display_name

        options = dict(self.page_options)
        if "cam_name" not in options and self._rule().method:  # the legend names the method the CAM came from
            options["cam_name"] = cam_display_name(self._rule().method)
        self.written = write_case_reports(self.collector.grouped(), self.output_dir, metrics, curves, **options)
        if self.collector.skipped:
            logger.info("PDFReportHandler: %d items beyond max_cases=%s got no report", self.collector.skipped,
                        self.collector.max_cases)
        logger.info("PDFReportHandler: %d reports in %s", len(self.written), self.output_dir)

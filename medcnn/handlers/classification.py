"""Collect class probabilities over an evaluation and publish the clinical classification report."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers.utils import from_engine

from medcnn.metrics.classification import binary_classification_report

__all__ = ["ClassificationReportHandler"]


class ClassificationReportHandler:
    """Add accuracy, AUC, sensitivity, specificity, PPV, NPV, F1 and the confusion matrix to ``state.metrics``.

    ``output_transform`` maps ``engine.state.output`` to ``(preds, labels)``: lists of per-item tensors, where a
    prediction is the class-probability vector ``(C,)`` (C = 2, positive class index 1) or a single positive
    probability ``(1,)``, and a label is the class index (or a one-hot vector). Figures are stored under
    ``prefix + name`` so several reports can share one engine.
    """

    def __init__(
        self,
        output_transform: Callable = from_engine(["pred", "label"]),
        threshold: float = 0.5,
        prefix: str = "",
    ) -> None:
        self.output_transform = output_transform
        self.threshold = threshold
        self.prefix = prefix
        self._scores: list[float] = []
        self._labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._scores, self._labels = [], []

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        for p, y in zip(preds, labels, strict=True):
            p = torch.as_tensor(p).detach().float().flatten().cpu()
            y = torch.as_tensor(y).detach().flatten().cpu()
            self._scores.append(float(p[1] if p.numel() == 2 else p[0]))
            self._labels.append(int(y.argmax()) if y.numel() > 1 else int(y.item()))

    def _publish(self, engine: Engine) -> None:
        report = binary_classification_report(self._labels, self._scores, self.threshold)
        engine.state.metrics.update({self.prefix + k: v for k, v in report.items()})

"""The clinical classification report as an Ignite metric of an evaluator (MONAI's confusion-matrix and ROC AUC
computations, all-gathered across ``torchrun`` ranks)."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise, MetricUsage
from monai.handlers.utils import from_engine

from medcnn.metrics.classification import BinaryClassificationMetric

__all__ = ["ClassificationReport", "youden_threshold"]


def youden_threshold(y_true, y_score) -> float:
    """Decision threshold on ``y_score`` maximising sensitivity + specificity - 1 (midpoint between scores;
    among equally good thresholds the middle one)."""
    import numpy as np

    t, s = np.asarray(y_true).astype(int).ravel(), np.asarray(y_score, dtype=float).ravel()
    if len(np.unique(t)) != 2:
        raise ValueError("youden_threshold needs both classes in y_true")
    values = np.unique(s)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    j = np.asarray([(s[t == 1] >= c).mean() + (s[t == 0] < c).mean() - 1 for c in candidates])
    best = np.flatnonzero(j >= j.max() - 1e-12)
    # ties (e.g. perfectly separated validation scores): the middle of the optimal range, the largest margin
    return float(np.median(candidates[best])) if best.size % 2 else float(candidates[best[best.size // 2]])


class ClassificationReport(Metric):
    """Accuracy, AUC, sensitivity, specificity, PPV, NPV, F1 and the confusion matrix of an evaluation, as one
    Ignite metric whose figures land flat in ``engine.state.metrics`` under ``prefix + name``.

    ``output_transform`` maps ``engine.state.output`` to ``(preds, labels)``: per-item tensors (MONAI's decollated
    output) where a prediction is the class-probability vector ``(C,)`` (C = 2, positive class index 1) or a single
    positive probability ``(1,)``, and a label is the class index (or a one-hot vector). The items are accumulated
    by :class:`medcnn.metrics.classification.BinaryClassificationMetric` (a MONAI cumulative metric), so under
    ``torchrun`` the report spans every rank's share of the data; every rank must therefore run it.

    Attach it as an evaluator's ``additional_metrics`` entry or list it among the evaluator's handlers
    (``attach(engine)`` then uses the name ``classification_report``).
    """

    def __init__(
        self,
        output_transform: Callable = from_engine(["pred", "label"]),
        threshold: float = 0.5,
        prefix: str = "",
    ) -> None:
        self.metric_fn = BinaryClassificationMetric(threshold)
        self.prefix = prefix
        self._scores: list[float] = []
        self._labels: list[int] = []
        super().__init__(output_transform=output_transform, metrics_result_mode="flatten")

    @property
    def threshold(self) -> float:
        """Decision threshold on the positive-class probability."""
        return self.metric_fn.threshold

    @property
    def labels(self) -> list[int]:
        """True class of every item of the last computed epoch (all ranks), in order."""
        return list(self._labels)

    @property
    def scores(self) -> list[float]:
        """Positive-class probability of every item of the last computed epoch (all ranks), in order."""
        return list(self._scores)

    def reset(self) -> None:
        self.metric_fn.reset()

    def update(self, output) -> None:
        preds, labels = output
        self.metric_fn(y_pred=preds, y=labels)

    def compute(self) -> dict:
        self._scores, self._labels = self.metric_fn.scores_and_labels()
        report = self.metric_fn.aggregate()
        return {self.prefix + k: v for k, v in report.items()}

    def attach(  # type: ignore[override]
        self, engine: Engine, name: str = "classification_report", usage: str | MetricUsage = EpochWise()
    ) -> None:
        """Attach like any Ignite metric; the default ``name`` lets MONAI workflows attach it from a handler list."""
        super().attach(engine, name, usage)

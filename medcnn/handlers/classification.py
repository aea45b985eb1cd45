"""Collect class probabilities over an evaluation and publish the clinical classification report."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers.utils import from_engine

from medcnn.distributed import gather_lists
from medcnn.metrics.classification import binary_classification_report

__all__ = ["ClassificationReportHandler", "youden_threshold"]


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
        calibration_data=None,
        network: torch.nn.Module | None = None,
        batch_size: int = 32,
        keys: tuple[str, str] = ("image", "label"),
    ) -> None:
        self.output_transform = output_transform
        self.threshold = threshold
        self.prefix = prefix
        self.calibration_data = calibration_data
        self.network = network
        self.batch_size = batch_size
        self.keys = keys
        self._scores: list[float] = []
        self._labels: list[int] = []

    @property
    def labels(self) -> list[int]:
        """True class of every item seen in the last (or current) epoch, in order."""
        return list(self._labels)

    @property
    def scores(self) -> list[float]:
        """Positive-class probability of every item seen in the last (or current) epoch, in order."""
        return list(self._scores)

    def attach(self, engine: Engine) -> None:
        if self.calibration_data is not None:
            if self.network is None:
                raise ValueError("ClassificationReportHandler: calibration_data needs the network")
            engine.add_event_handler(Events.STARTED, self._calibrate)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _calibrate(self, engine: Engine) -> None:
        """Optional: choose the decision threshold on ``calibration_data`` (validation items, never the test set)
        as the one maximising Youden's J (sensitivity + specificity - 1) of the network's positive probability."""
        from monai.data import DataLoader

        image_key, label_key = self.keys
        device = next(self.network.parameters()).device
        mode = self.network.training
        self.network.eval()
        scores, labels = [], []
        with torch.no_grad():
            for batch in DataLoader(self.calibration_data, batch_size=self.batch_size, shuffle=False, num_workers=0):
                prob = torch.softmax(self.network(torch.as_tensor(batch[image_key]).to(device)), dim=1)[:, 1]
                scores += prob.cpu().tolist()
                labels += torch.as_tensor(batch[label_key]).reshape(-1).tolist()
        self.network.train(mode)
        self.threshold = youden_threshold(labels, scores)

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
        # under torchrun every rank saw its share of the data: the report spans all of it
        labels, scores = gather_lists(self._labels, self._scores)
        report = binary_classification_report([int(y) for y in labels], scores, self.threshold)
        engine.state.metrics.update({self.prefix + k: v for k, v in report.items()})

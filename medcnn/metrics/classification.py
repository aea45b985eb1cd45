"""Binary classification report: the figures a clinician reads (sensitivity, specificity, PPV, NPV, AUC).

Counts and ratios come from MONAI (``get_confusion_matrix`` / ``compute_confusion_matrix_metric``, ``compute_roc_auc``);
:class:`BinaryClassificationMetric` accumulates per-item scores the MONAI way (a ``CumulativeIterationMetric``, so
its buffer is all-gathered across ``torchrun`` ranks) and reports them with :func:`binary_classification_report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import (
    CumulativeIterationMetric,
    compute_confusion_matrix_metric,
    compute_roc_auc,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot

__all__ = ["BinaryClassificationMetric", "binary_classification_report", "confusion_counts"]


def _binary(values, name: str) -> torch.Tensor:
    """``values`` as a flat long tensor of 0/1, or ``ValueError`` naming ``name`` and the offending values."""
    t = torch.as_tensor(np.asarray(values)).reshape(-1).long()
    bad = sorted(set(torch.unique(t).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"binary {name} must be 0 or 1, got {bad}")
    return t


def _per_class_counts(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """MONAI's ``(tp, fp, tn, fn)`` summed over items, one row per class: ``(2, 4)`` from flat 0/1 labels ``(N,)``."""
    cm = get_confusion_matrix(one_hot(y_pred[:, None], 2, dim=1), one_hot(y_true[:, None], 2, dim=1))
    return cm.sum(0).long()


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` for binary labels in {0, 1} (1 = positive)."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.numel()} labels but y_pred has {p.numel()}")
    tp, fp, tn, fn = _per_class_counts(t, p)[1].tolist()
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def binary_classification_report(
    y_true: Sequence[int], y_score: Sequence[float], threshold: float = 0.5
) -> dict[str, float | int | list]:
    """Accuracy, AUC, sensitivity, specificity, PPV, NPV, per-class F1 and the confusion matrix.

    ``y_score`` is the probability of the positive class. The confusion matrix is ``[[tn, fp], [fn, tp]]``
    (rows = true class 0/1, columns = predicted class 0/1). Undefined ratios are NaN; AUC is NaN when only
    one class is present.
    """
    t = _binary(y_true, "y_true")
    s = torch.as_tensor(np.asarray(y_score, dtype=float)).reshape(-1)
    if t.numel() != s.numel():
        raise ValueError(f"y_true has {t.numel()} labels but y_score has {s.numel()} scores")
    if t.numel() == 0:
        raise ValueError("empty classification input")
    if not torch.isfinite(s).all():
        raise ValueError("y_score contains NaN or infinite values")
    counts = _per_class_counts(t, (s >= threshold).long())  # rows: class 0 (negative), class 1 (positive)
    negative, positive = counts[0], counts[1]
    tp, fp, tn, fn = positive.tolist()

    def figure(name: str, c: torch.Tensor) -> float:
        return float(compute_confusion_matrix_metric(name, c.float()))  # NaN where the denominator is 0

    auc = float(compute_roc_auc(s, t)) if t.unique().numel() == 2 else math.nan
    return {
        "accuracy": figure("accuracy", positive),
        "auc": auc,
        "sensitivity": figure("sensitivity", positive),
        "specificity": figure("specificity", positive),
        "ppv": figure("precision", positive),
        "npv": figure("negative predictive value", positive),
        "f1_positive": figure("f1 score", positive),
        "f1_negative": figure("f1 score", negative),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": float(threshold),
        "n_images": int(t.numel()),
        "n_positive": int(t.sum()),
    }


class BinaryClassificationMetric(CumulativeIterationMetric):
    """Accumulate each item's positive-class probability and true class; ``aggregate`` returns the
    :func:`binary_classification_report` over every item seen (all ranks under ``torchrun``).

    ``y_pred`` is ``(B, 2)`` class probabilities (positive class index 1) or ``(B, 1)`` positive probabilities;
    ``y`` is ``(B,)`` / ``(B, 1)`` class indices or ``(B, 2)`` one-hot.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``(B, 2)`` rows of (positive score, class) from one batch."""
        if y is None:
            raise ValueError("BinaryClassificationMetric needs the labels y")
        p = torch.as_tensor(y_pred).detach().float().reshape(len(y_pred), -1).cpu()
        label = torch.as_tensor(y).detach().reshape(len(y), -1).cpu()
        if p.shape[1] not in (1, 2):
            raise ValueError(
                f"predictions must be (B, 2) class probabilities or (B, 1) scores, got {tuple(y_pred.shape)}")
        score = p[:, -1]
        label = label.argmax(1) if label.shape[1] > 1 else label[:, 0]
        return torch.stack([score, label.float()], dim=1)

    def scores_and_labels(self) -> tuple[list[float], list[int]]:
        """Positive-class scores and true classes of every item so far (gathered across ranks), in order."""
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            return [], []
        buffer = torch.as_tensor(buffer).reshape(-1, 2)
        return buffer[:, 0].tolist(), [int(v) for v in buffer[:, 1].tolist()]

    def aggregate(self) -> dict[str, float | int | list]:  # type: ignore[override]
        """The classification report over every accumulated item."""
        scores, labels = self.scores_and_labels()
        return binary_classification_report(labels, scores, self.threshold)

"""Binary classification report: the figures a clinician reads (sensitivity, specificity, PPV, NPV, AUC)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc

__all__ = ["confusion_counts", "binary_classification_report"]


def _ratio(num: float, den: float) -> float:
    """``num / den``, or NaN when the denominator is zero (undefined, not 0)."""
    return float(num) / float(den) if den else math.nan


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` for binary labels in {0, 1} (1 = positive)."""
    t = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_pred).astype(int).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    bad = set(np.unique(np.concatenate([t, p])).tolist()) - {0, 1}
    if bad:
        raise ValueError(f"binary labels must be 0 or 1, got {sorted(bad)}")
    return {
        "tp": int(((t == 1) & (p == 1)).sum()),
        "fp": int(((t == 0) & (p == 1)).sum()),
        "tn": int(((t == 0) & (p == 0)).sum()),
        "fn": int(((t == 1) & (p == 0)).sum()),
    }


def binary_classification_report(
    y_true: Sequence[int], y_score: Sequence[float], threshold: float = 0.5
) -> dict[str, float | int | list]:
    """Accuracy, AUC, sensitivity, specificity, PPV, NPV, per-class F1 and the confusion matrix.

    ``y_score`` is the probability of the positive class. The confusion matrix is ``[[tn, fp], [fn, tp]]``
    (rows = true class 0/1, columns = predicted class 0/1). Undefined ratios are NaN; AUC is NaN when only
    one class is present.
    """
    t = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if t.size != s.size:
        raise ValueError(f"y_true has {t.size} labels but y_score has {s.size} scores")
    if t.size == 0:
        raise ValueError("empty classification input")
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score contains NaN or infinite values")
    c = confusion_counts(t, (s >= threshold).astype(int))
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    auc = (
        float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(t))) if len(np.unique(t)) == 2 else math.nan
    )
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    return {
        "accuracy": _ratio(tp + tn, t.size),
        "auc": auc,
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1_positive": _ratio(2 * tp, 2 * tp + fp + fn),
        "f1_negative": _ratio(2 * tn, 2 * tn + fn + fp),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": float(threshold),
        "n_images": int(t.size),
        "n_positive": int((t == 1).sum()),
    }

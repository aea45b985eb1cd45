"""Pixel-level segmentation figures for C classes: confusion matrix, accuracy, per-class precision/recall/F1/Dice.

Everything starts from a ``(C, C)`` pixel confusion matrix (rows = true class, columns = predicted class), so
figures can be accumulated over many images by summing matrices, and every report is reproducible from the
matrix alone. Undefined ratios (a class absent from both truth and prediction) are NaN, never 0.

**Empty references.** A case whose reference has no voxel of a class has no defined Dice or HD95 for that class:
the value is NaN, it is left out of every mean, and it is counted in ``n_empty_reference`` (cases with at least
one empty foreground class) and ``n_empty_reference_<class>`` in metrics.json, so ``n_cases`` minus those counts
is the number of cases behind each mean. A mean over no defined value is NaN (``null`` in metrics.json), never 0.
A case whose prediction of a class is empty while its reference is not has no finite HD95 (it is left out of
``hd95_*`` and counted in ``n_empty_prediction_<class>``; its Dice, 0, is kept). Pooled pixel figures (the
confusion matrix of EM / BraTS slices) sum pixels over cases, so an empty slice still counts its pixels; a pooled
score whose pooled reference lacks a class is NaN. See :func:`empty_classes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "pixel_confusion_matrix",
    "normalise_confusion_matrix",
    "pixel_accuracy",
    "per_class_scores",
    "segmentation_report",
    "adapted_rand_error_2d",
    "threshold_counts",
    "max_f_pixel_error",
    "empty_classes",
]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pixel_confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 pixel counts; ``cm[i, j]`` = pixels of true class ``i`` predicted as ``j``.

    ``y_true`` and ``y_pred`` are class-index maps of the same shape (any shape, e.g. ``(H, W)``, ``(1, H, W)``,
    ``(B, 1, H, W, D)``; numpy or torch). Values must be integers in ``[0, num_classes)``.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t, p = _to_numpy(y_true), _to_numpy(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (np.issubdtype(a.dtype, np.floating) and not np.all(np.mod(a, 1) == 0)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    t, p = t.astype(np.int64).ravel(), p.astype(np.int64).ravel()
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = sorted(set(np.unique(a[(a < 0) | (a >= num_classes)]).tolist()))
            raise ValueError(f"{name} has class indices {bad[:10]} outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalise_confusion_matrix(cm, mode: str = "all") -> np.ndarray:
    """Float confusion matrix: ``"all"`` divides by the total (entries sum to 1), ``"true"`` by each row's
    total (rows sum to 1, diagonal = recall), ``"pred"`` by each column's total (diagonal = precision).
    Empty rows/columns give NaN."""
    cm = _to_numpy(cm).astype(np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode == "all":
            total = cm.sum()
            return cm / total if total else np.full_like(cm, np.nan)
        if mode == "true":
            return cm / cm.sum(axis=1, keepdims=True)
        if mode == "pred":
            return cm / cm.sum(axis=0, keepdims=True)
    raise ValueError(f"mode must be 'all', 'true' or 'pred', got {mode!r}")


def pixel_accuracy(cm) -> float:
    """Fraction of pixels whose predicted class equals the true class (trace / total); NaN for no pixels."""
    cm = _to_numpy(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan


def per_class_scores(cm) -> dict[str, list[float]]:
    """Per-class ``precision``, ``recall``, ``f1``, ``dice`` and ``iou`` (lists of length C) from a confusion matrix.

    Pixel F1 and Dice are the same quantity, ``2 TP / (2 TP + FP + FN)``; both names are given because
    segmentation papers say Dice and classification papers say F1.
    """
    cm = _to_numpy(cm).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp

    def ratio(num: np.ndarray, den: np.ndarray) -> list[float]:
        return [float(n / d) if d else math.nan for n, d in zip(num, den, strict=True)]

    dice = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": dice,
        "dice": list(dice),
        "iou": ratio(tp, tp + fp + fn),
    }


def segmentation_report(cm, class_names: Sequence[str]) -> dict[str, float | list]:
    """Flat dict of figures for a metrics.json: ``pixel_accuracy``, ``<name>_{dice,precision,recall,iou}``
    per class, ``mean_dice`` (over classes with a defined Dice), ``confusion_matrix`` (counts) and
    ``confusion_matrix_normalised`` (fractions of all pixels)."""
    cm = _to_numpy(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    scores = per_class_scores(cm)
    report: dict[str, float | list] = {"pixel_accuracy": pixel_accuracy(cm)}
    for i, name in enumerate(class_names):
        for key in ("dice", "precision", "recall", "iou"):
            report[f"{name}_{key}"] = scores[key][i]
    defined = [d for d in scores["dice"] if not math.isnan(d)]
    report["mean_dice"] = float(np.mean(defined)) if defined else math.nan
    report["confusion_matrix"] = cm.astype(np.int64).tolist()
    report["confusion_matrix_normalised"] = normalise_confusion_matrix(cm, "all").tolist()
    return report


def adapted_rand_error_2d(true_boundary, pred_boundary, connectivity: int = 1) -> tuple[float, float, float]:
    """Adapted Rand error of the regions enclosed by boundary masks ``(H, W)`` (1 = boundary/membrane).

    The ISBI 2012 neuron-segmentation score: the non-boundary pixels of each mask are split into connected
    components (4-connectivity by default), and ``skimage.metrics.adapted_rand_error`` compares the two
    region labellings, ignoring pixels that are boundary in the ground truth. Returns
    ``(error, precision, recall)``; 0 error = the same regions.
    """
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error

    t, p = _to_numpy(true_boundary).squeeze(), _to_numpy(pred_boundary).squeeze()
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"boundary masks must be two (H, W) arrays of one shape, got {t.shape} and {p.shape}")
    true_regions = label(t == 0, connectivity=connectivity)
    pred_regions = label(p == 0, connectivity=connectivity)
    if not true_regions.any():
        return math.nan, math.nan, math.nan
    err, prec, rec = adapted_rand_error(true_regions, pred_regions, ignore_labels=(0,))
    return float(err), float(prec), float(rec)


ISBI_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))  # Fiji's default sweep: 0.0, 0.1, ..., 1.0


def threshold_counts(probability, truth, thresholds: Sequence[float] = ISBI_THRESHOLDS) -> np.ndarray:
    """``(T, 3)`` counts ``[tp, fp, fn]`` of ``probability > t`` against the binary ``truth`` for every threshold.

    ``probability`` and ``truth`` are arrays of one shape (a class's probability map and its reference mask).
    Counts add up over images, so a sweep over a whole evaluation is the sum of the per-image sweeps.
    """
    prob, true = _to_numpy(probability).astype(np.float64, copy=False), _to_numpy(truth) > 0
    if prob.shape != true.shape:
        raise ValueError(f"probability {prob.shape} and reference {true.shape} differ in shape")
    if not np.isfinite(prob).all():
        raise ValueError("probability map contains NaN or infinite values")
    n_true = int(true.sum())
    out = np.zeros((len(thresholds), 3), np.int64)
    for i, t in enumerate(thresholds):
        pred = prob > t
        tp = int(np.count_nonzero(pred & true))
        out[i] = (tp, int(np.count_nonzero(pred)) - tp, n_true - tp)
    return out


def max_f_pixel_error(counts, thresholds: Sequence[float] = ISBI_THRESHOLDS) -> tuple[float, float]:
    """The ISBI 2012 challenge's *pixel error*: ``1 - max_t F1`` over the threshold sweep of
    :func:`threshold_counts` (the challenge scores the cell-interior pixels, label > 0, of a cell-probability
    map, thresholds 0.0-1.0 in steps of 0.1, as Fiji's ``PixelError.getPixelErrorMaximalFScore`` does).

    This is not ``1 - pixel accuracy``: it is an F-score of one class, maximised over thresholds on the scored
    data itself. Returns ``(error, best threshold)``; NaN when neither truth nor prediction has a positive pixel.
    """
    c = _to_numpy(counts).astype(np.float64)
    if c.ndim != 2 or c.shape != (len(thresholds), 3):
        raise ValueError(f"expected ({len(thresholds)}, 3) counts [tp, fp, fn], got shape {c.shape}")
    den = 2 * c[:, 0] + c[:, 1] + c[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(den > 0, 2 * c[:, 0] / den, np.nan)
    if np.isnan(f1).all():
        return math.nan, math.nan
    best = int(np.nanargmax(f1))
    return float(1.0 - f1[best]), float(thresholds[best])


def empty_classes(y, num_classes: int, include_background: bool = False, one_hot: bool | None = None) -> list[int]:
    """Classes with no voxel in ``y``: one-hot ``(C, *spatial)`` (C = ``num_classes``) or a class-index map.

    ``one_hot=None`` takes ``y`` as one-hot when its first axis has ``num_classes`` > 1 entries. Background
    (class 0) is skipped unless ``include_background``.
    """
    a = _to_numpy(y)
    first = 0 if include_background else 1
    if one_hot is None:
        one_hot = a.ndim >= 2 and a.shape[0] == num_classes and num_classes > 1
    if one_hot:
        present = a.reshape(num_classes, -1).any(axis=1)
    else:
        present = np.isin(np.arange(num_classes), np.unique(a.astype(np.int64)))
    return [c for c in range(first, num_classes) if not present[c]]

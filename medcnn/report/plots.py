"""Figures for model cards and reports: confusion matrices, training curves, ROC, error and mask overlays.

All functions write a PNG with matplotlib's non-interactive Agg backend and return nothing or a figure value.
Images are 2D arrays ``(H, W)``; masks are 0/1 arrays of the same shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_roc", "save_error_overlay", "save_mask_overlay"]


def _as2d(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a).squeeze()
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D array (H, W) after squeezing, got shape {a.shape}")
    return a


def _save(fig, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(
    cm: Sequence[Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalise: bool = True,
    title: str | None = None,
) -> None:
    """Heatmap of a confusion matrix (rows = true class, columns = predicted class); counts shown in cells."""
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1e-12) if normalise else cm
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(class_names), 1.2 + 1.1 * len(class_names)))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    fig.colorbar(im, ax=ax, fraction=0.046)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.3f}" if normalise else f"{cm[i, j]:g}"
            if normalise and float(cm[i, j]).is_integer():
                text += f"\n({int(cm[i, j])})"
            ax.text(j, i, text, ha="center", va="center", color="white" if shown[i, j] > 0.5 * shown.max() else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalise else "confusion matrix"))
    _save(fig, path)


def plot_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike, x_key: str = "epoch", title: str | None = None
) -> None:
    """One panel per series in ``history`` (except ``x_key``), plotted against ``history[x_key]``.

    Series shorter than the x axis (validation every k epochs) are plotted against their own x values when
    ``history`` holds ``"<name>_x"``, else against the first entries of the x axis.
    """
    series = [k for k in history if k != x_key and not k.endswith("_x") and len(history[k])]
    if not series:
        raise ValueError("history has no series to plot")
    x_all = list(history.get(x_key, []))
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.0), squeeze=False)
    for ax, key in zip(axes[0], series, strict=True):
        y = list(history[key])
        x = list(history.get(f"{key}_x", x_all[: len(y)] or range(1, len(y) + 1)))
        ax.plot(x, y, marker="o", ms=2.5)
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_roc(
    y_true: Sequence[int], y_score: Sequence[float], path: str | os.PathLike, title: str | None = None
) -> float:
    """ROC curve of a binary classifier; returns the AUC (trapezoidal, ties handled by score grouping)."""
    t = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if t.size != s.size or len(np.unique(t)) != 2:
        raise ValueError("plot_roc needs as many scores as labels and both classes present")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), t.size - 1]
    tps = np.cumsum(t_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / t.sum()]
    fpr = np.r_[0.0, fps / (t.size - t.sum())]
    auc = float(np.trapezoid(tpr, fpr))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_title(title or "ROC curve")
    ax.legend(loc="lower right")
    _save(fig, path)
    return auc


def save_error_overlay(image2d, pred2d, label2d, path: str | os.PathLike, title: str | None = None) -> float:
    """The image in grey with wrongly predicted pixels in red; returns the fraction of wrong pixels."""
    image, pred, label = _as2d(image2d, "image"), _as2d(pred2d, "pred"), _as2d(label2d, "label")
    if not image.shape == pred.shape == label.shape:
        raise ValueError(f"image {image.shape}, pred {pred.shape} and label {label.shape} must have the same shape")
    wrong = pred.astype(bool) != label.astype(bool)
    frac = float(wrong.mean())
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[wrong] = [1.0, 0.0, 0.0]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(rgb)
    ax.axis("off")
    ax.set_title(f"{title + ': ' if title else ''}{100 * frac:.2f}% of pixels wrong (red)")
    _save(fig, path)
    return frac


def save_mask_overlay(image2d, mask2d, path: str | os.PathLike, heatmap2d=None, title: str | None = None) -> None:
    """The image with a mask outline (green) and, optionally, a heatmap (jet, semi-transparent) on top."""
    image, mask = _as2d(image2d, "image"), _as2d(mask2d, "mask")
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(image, cmap="gray")
    if heatmap2d is not None:
        heat = _as2d(heatmap2d, "heatmap")
        if heat.shape != image.shape:
            raise ValueError(f"heatmap {heat.shape} and image {image.shape} must have the same shape")
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=max(float(heat.max()), 1e-8))
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
    ax.axis("off")
    if title:
        ax.set_title(title)
    _save(fig, path)

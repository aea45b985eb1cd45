"""Heatmap -> binary mask -> Dice, and the choice of the threshold on validation data.

Thresholds: ``mode="fraction"`` keeps voxels ``>= threshold * max`` of each heatmap (heatmaps from
:func:`medcnn.localisation.localise` are min-max normalised, so this is ``>= threshold``); ``mode="otsu"``
uses Otsu's threshold of each heatmap (scikit-image), ``threshold`` is then ignored; ``mode="probability"`` keeps
voxels ``>= threshold`` of maps that are probabilities already (a segmenter's softmax, e.g. a second round of
pseudo-masks), whatever their maximum. Dice comes from MONAI's ``DiceMetric``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.transforms import GaussianSmooth, KeepLargestConnectedComponent

__all__ = ["MASK_MODES", "THRESHOLD_MODES", "cam_to_mask", "cam_dice", "resize_heatmaps", "select_threshold"]

logger = logging.getLogger(__name__)

#: the threshold modes chosen among for CAM heatmaps (:func:`select_threshold`)
THRESHOLD_MODES = ("fraction", "otsu")
#: every mode :func:`cam_to_mask` applies: the CAM modes and ``"probability"`` (an absolute threshold)
MASK_MODES = (*THRESHOLD_MODES, "probability")


def _as_batch(x: torch.Tensor | np.ndarray, name: str) -> tuple[torch.Tensor, bool]:
    """``(B, 1, *S)`` float tensor from ``(B, 1, *S)`` or one ``(1, *S)`` map; flag whether it was unbatched."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if hasattr(t, "as_tensor"):
        t = t.as_tensor()
    if t.ndim in (3, 4) and t.shape[0] == 1:
        return t[None].float(), True
    if t.ndim in (4, 5) and t.shape[1] == 1:
        return t.float(), False
    raise ValueError(f"{name} must be (B, 1, H, W[, D]) or (1, H, W[, D]), got shape {tuple(t.shape)}")


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if np.ptp(values) <= 0:
        return float(values.max()) + 1.0  # constant map: empty mask
    return float(threshold_otsu(values))


def resize_heatmaps(heatmaps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Heatmaps ``(B, 1, *S)`` resized (bilinear in 2D, trilinear in 3D; values kept in [0, 1]) to ``size``.

    Maps a CAM computed at the network's input size back to the grid of the reference mask (e.g. the native
    256 x 256 slice when the network sees 128 x 128), so Dice is scored on the mask as annotated.
    """
    if tuple(heatmaps.shape[2:]) == tuple(int(v) for v in size):
        return heatmaps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return torch.nn.functional.interpolate(torch.as_tensor(heatmaps).float(), size=tuple(int(v) for v in size),
                                           mode=mode, align_corners=False).clamp_(0.0, 1.0)


def cam_to_mask(
    heatmap: torch.Tensor | np.ndarray,
    threshold: float = 0.5,
    mode: str = "fraction",
    largest_component: bool = False,
    smooth_sigma: float = 0.0,
) -> torch.Tensor:
    """Binary masks (uint8, same shape) from heatmaps ``(B, 1, *S)`` or ``(1, *S)``.

    Args:
        heatmap: non-negative maps (any scale for ``"fraction"``; it is relative to each map's max).
        threshold: fraction of each map's maximum (``"fraction"``) or a probability (``"probability"``), in (0, 1];
            ignored for ``"otsu"``.
        mode: ``"fraction"``, ``"otsu"`` or ``"probability"``.
        largest_component: keep only the largest connected component of each mask.
        smooth_sigma: Gaussian smoothing of each map before thresholding (MONAI ``GaussianSmooth``), in pixels
            of the map's grid; 0 = none. Suppresses the checkerboard / speckle of fine-layer CAMs.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {MASK_MODES}")
    if mode != "otsu" and not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a fraction of the maximum or a probability in (0, 1], got {threshold!r}")
    if float(smooth_sigma) < 0:
        raise ValueError(f"smooth_sigma must be >= 0 pixels, got {smooth_sigma!r}")
    maps, unbatched = _as_batch(heatmap, "heatmap")
    if float(smooth_sigma) > 0:
        smooth = GaussianSmooth(float(smooth_sigma))
        maps = torch.stack([torch.as_tensor(smooth(m.float())) for m in maps])
    masks = torch.zeros_like(maps, dtype=torch.uint8)
    for i, m in enumerate(maps):
        if mode == "fraction":
            peak = float(m.max())
            masks[i] = (m >= float(threshold) * peak) & (m > 0) if peak > 0 else torch.zeros_like(m, dtype=torch.bool)
        elif mode == "probability":
            masks[i] = m >= float(threshold)
        else:
            masks[i] = m > _otsu(m.cpu().numpy())
    if largest_component:
        keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=None)
        masks = torch.stack([torch.as_tensor(keep(m)).to(torch.uint8) for m in masks])
    return masks[0] if unbatched else masks


def cam_dice(pred_masks: torch.Tensor | np.ndarray, true_masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-image Dice ``(B,)`` of binary masks ``(B, 1, *S)`` with MONAI's ``DiceMetric``.

    Both masks empty gives Dice 1 (nothing to find, nothing found); only one empty gives 0.
    """
    pred, _ = _as_batch(pred_masks, "pred_masks")
    true, _ = _as_batch(true_masks, "true_masks")
    if pred.shape != true.shape:
        raise ValueError(f"pred_masks {tuple(pred.shape)} and true_masks {tuple(true.shape)} differ in shape")
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    scores = metric((pred > 0).float(), (true > 0).float())
    return scores.reshape(-1).float()


def select_threshold(
    heatmaps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    modes: Sequence[str] = THRESHOLD_MODES,
    fractions: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
    largest_component: bool | Sequence[bool] = (False, True),
    smooth_sigmas: Sequence[float] = (0.0,),
) -> dict:
    """Choose the mask rule with the best mean Dice on validation heatmaps / masks ``(B, 1, *S)``.

    Tries every ``mode`` (fractions of the max for ``"fraction"``, the per-map Otsu threshold for ``"otsu"``)
    with and without the largest connected component, and returns
    ``{"mode", "threshold", "largest_component", "dice", "dice_std", "table"}`` where ``table`` lists the mean
    Dice of every candidate (and ``smooth_sigma``, tried from ``smooth_sigmas``). Use images that contain the
    object (positives) only, and never the test set.
    """
    maps, _ = _as_batch(heatmaps, "heatmaps")
    true, _ = _as_batch(masks, "masks")
    if maps.shape != true.shape:
        raise ValueError(f"heatmaps {tuple(maps.shape)} and masks {tuple(true.shape)} differ in shape")
    if maps.shape[0] == 0:
        raise ValueError("select_threshold needs at least one validation heatmap")
    lcc_options = [largest_component] if isinstance(largest_component, bool) else list(largest_component)
    candidates = []
    for mode in modes:
        thresholds = list(fractions) if mode == "fraction" else [None]
        for t in thresholds:
            for lcc in lcc_options:
                candidates.append((mode, t, bool(lcc)))
    table = []
    best = None
    for sigma in smooth_sigmas:
        smoothed = maps
        if float(sigma) > 0:
            smooth = GaussianSmooth(float(sigma))
            smoothed = torch.stack([torch.as_tensor(smooth(m.float())) for m in maps])
        for mode, t, lcc in candidates:
            dice = cam_dice(cam_to_mask(smoothed, 0.5 if t is None else t, mode, lcc), true)
            row = {"mode": mode, "threshold": t, "largest_component": lcc, "smooth_sigma": float(sigma),
                   "dice": float(dice.mean()), "dice_std": float(dice.std(unbiased=False))}
            table.append(row)
            if best is None or row["dice"] > best["dice"] + 1e-9:
                best = row
    assert best is not None
    logger.info("select_threshold: %s threshold %s lcc %s -> validation Dice %.3f",
                best["mode"], best["threshold"], best["largest_component"], best["dice"])
    return {**best, "table": table}

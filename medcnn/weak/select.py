"""Choose the refinement of pseudo-masks on validation data (never on the training masks, never on the test set)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcnn.localisation.masks import cam_dice
from medcnn.localisation.rule import CAMRule
from medcnn.weak.pseudo import compute_pseudo_masks
from medcnn.weak.refine import PseudoMaskRefiner

__all__ = ["pseudo_mask_quality", "select_refinement"]

logger = logging.getLogger(__name__)


def pseudo_mask_quality(records: Sequence[Mapping[str, Any]], true_masks: Sequence[Any]) -> dict[str, float]:
    """Quality of pseudo-masks (``records`` of :func:`compute_pseudo_masks`) against reference masks ``(1, *S)``.

    ``dice``: mean Dice over the positive images; ``kept_accuracy``: fraction of the weighted (used) pixels of
    positive images whose pseudo-label is right; ``ignored_fraction``: fraction of their pixels with weight 0.
    """
    dice, right, kept, ignored, total = [], 0.0, 0.0, 0.0, 0.0
    for r, t in zip(records, true_masks, strict=True):
        if r["class"] != 1:
            continue
        true = torch.as_tensor(t).reshape(r["label"].shape) > 0
        dice.append(float(cam_dice(r["label"][None], true[None].to(torch.uint8))[0]))
        used = r["weight"] > 0
        right += float(((r["label"] > 0) == true)[used].sum())
        kept += float(used.sum())
        ignored += float((~used).sum())
        total += float(used.numel())
    if not dice:
        raise ValueError("pseudo_mask_quality: no positive images")
    return {"dice": float(sum(dice) / len(dice)), "kept_accuracy": right / max(kept, 1.0),
            "ignored_fraction": ignored / max(total, 1.0), "n_images": len(dice)}


def select_refinement(
    network: nn.Module,
    val_data: Sequence[Mapping[str, Any]],
    rule: CAMRule | Mapping[str, Any],
    candidates: Mapping[str, Sequence[PseudoMaskRefiner | Mapping[str, Any]]],
    mask_key: str = "mask",
    preprocessing: Callable | None = None,
    keys: Sequence[str] = ("image", "label"),
    heatmap: str = "cam",
    ignore_empty_positives: bool = False,
) -> dict[str, Any]:
    """Pseudo-mask quality of each candidate refinement chain on validation data; the best by Dice.

    ``candidates`` maps a name to a chain (``[]`` = the raw CAM masks). The validation reference masks
    (``mask_key``) are read here only, to score the candidates. ``heatmap``, ``ignore_empty_positives``: as
    :func:`compute_pseudo_masks`.
    Returns ``{"best", "table"}``.
    """
    positives = [d for d in val_data if int(torch.as_tensor(d[keys[1]]).reshape(-1)[0]) == 1]
    if not positives:
        raise ValueError("select_refinement: the validation data has no positive images")
    if any(mask_key not in d for d in positives):
        raise ValueError(f"select_refinement: validation items need reference masks under {mask_key!r}")
    table = []
    for name, chain in candidates.items():
        records = list(compute_pseudo_masks(network, positives, rule, chain, preprocessing, keys=keys,
                                            heatmap=heatmap, ignore_empty_positives=ignore_empty_positives))
        row = {"name": name, **pseudo_mask_quality(records, [d[mask_key] for d in positives])}
        table.append(row)
        logger.info("refinement %s: validation pseudo-mask Dice %.4f (kept-pixel accuracy %.4f, %.1f%% ignored)",
                    name, row["dice"], row["kept_accuracy"], 100 * row["ignored_fraction"])
    best = max(table, key=lambda r: r["dice"])
    return {"best": best["name"], "table": table}

"""Spread of a per-item figure (e.g. per-image Dice): the mean hides a bimodal 'found / missed' distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["per_group_mean", "per_item_summary"]


def per_item_summary(values: Sequence[float] | np.ndarray | torch.Tensor, name: str) -> dict[str, float]:
    """``{name_mean, name_std, name_min, name_q25, name_median, name_q75, name_max, name_n, name_below_0.5}``.

    ``values`` holds one figure per item (any shape; NaN entries, e.g. Dice of an item without foreground, are
    left out and counted in ``name_n_nan``).
    """
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float).ravel()
    valid = arr[~np.isnan(arr)]
    out: dict[str, float] = {f"{name}_n": int(valid.size), f"{name}_n_nan": int(arr.size - valid.size)}
    if valid.size == 0:
        for key in ("mean", "std", "min", "q25", "median", "q75", "max", "below_0.5"):
            out[f"{name}_{key}"] = math.nan
        return out
    q25, med, q75 = np.percentile(valid, [25, 50, 75])
    out.update({
        f"{name}_mean": float(valid.mean()), f"{name}_std": float(valid.std(ddof=1)) if valid.size > 1 else 0.0,
        f"{name}_min": float(valid.min()), f"{name}_q25": float(q25), f"{name}_median": float(med),
        f"{name}_q75": float(q75), f"{name}_max": float(valid.max()),
        f"{name}_below_0.5": float((valid < 0.5).mean()),
    })
    return out


def per_group_mean(
    values: Sequence[float] | np.ndarray | torch.Tensor, groups: Sequence[str],
) -> dict[str, float | None]:
    """Mean of ``values`` per group (e.g. per-slice Dice -> per patient), NaN entries left out; ``None`` for a group
    with no valid value. ``values`` and ``groups`` are in the same (evaluation) order.

    Raises:
        ValueError: when the two lengths differ (the figures would be attributed to the wrong group).
    """
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    arr = arr.reshape(len(arr), -1)[:, 0] if arr.ndim > 1 else arr
    if len(arr) != len(groups):
        raise ValueError(f"per_group_mean: {len(arr)} values for {len(groups)} group labels")
    out: dict[str, float | None] = {}
    for g in dict.fromkeys(groups):
        v = arr[[i for i, x in enumerate(groups) if x == g]]
        v = v[~np.isnan(v)]
        out[str(g)] = float(v.mean()) if v.size else None
    return out

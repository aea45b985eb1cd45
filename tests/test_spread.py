"""medcnn.metrics.spread: per-group means of a per-item figure (per-slice Dice -> per patient)."""

from __future__ import annotations

import math

import pytest
import torch

from medcnn.metrics.spread import per_group_mean


def test_per_group_mean_leaves_out_nan_items_and_keeps_the_group_order():
    # (N, 1) as MONAI's metric buffers: tumour-free slices give NaN and are not part of a patient's mean
    dice = torch.tensor([[0.5], [float("nan")], [0.7], [0.2], [float("nan")]])
    out = per_group_mean(dice, ["p2", "p2", "p2", "p1", "p3"])
    assert list(out) == ["p2", "p1", "p3"]
    assert out["p2"] == pytest.approx(0.6) and out["p1"] == pytest.approx(0.2)
    assert out["p3"] is None  # a patient without a tumour slice has no Dice, not 0


def test_per_group_mean_refuses_lengths_that_differ():
    with pytest.raises(ValueError, match="3 values for 2 group labels"):
        per_group_mean([0.1, 0.2, math.nan], ["a", "b"])

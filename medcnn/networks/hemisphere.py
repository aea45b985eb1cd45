"""Whole-slice scores from a classifier trained on half-slices (left / right hemispheres)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HemisphereMaxClassifier"]


class HemisphereMaxClassifier(nn.Module):
    """Run ``classifier`` on both halves of ``(B, C, H, W)`` along ``axis`` and keep, per image, the logits
    ``(B, num_classes)`` of the half with the larger ``positive_class`` probability.

    A classifier trained on half-slices (:func:`medcnn.data.brats_hemispheres`) sees inputs of the size and
    content it was trained on, so its probabilities stay calibrated; applied to a whole slice, global average
    pooling dilutes a one-sided tumour's evidence over both halves. The wrapped ``classifier`` keeps its own
    parameter names, so its checkpoint loads into it unchanged and CAM target layers are addressed on it.
    """

    def __init__(self, classifier: nn.Module, axis: int = 2, positive_class: int = 1) -> None:
        super().__init__()
        if axis < 2:
            raise ValueError(f"HemisphereMaxClassifier: axis must be a spatial axis (>= 2), got {axis}")
        self.classifier = classifier
        self.axis = int(axis)
        self.positive_class = int(positive_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W[, D])`` -> logits ``(B, num_classes)`` of the more tumour-like half of each image."""
        size = x.shape[self.axis]
        if size < 2:
            raise ValueError(f"HemisphereMaxClassifier: axis {self.axis} has size {size}, cannot split it in two")
        half = size // 2
        first = self.classifier(x.narrow(self.axis, 0, half))
        second = self.classifier(x.narrow(self.axis, half, size - half))
        p_first = torch.softmax(first, dim=1)[:, self.positive_class]
        p_second = torch.softmax(second, dim=1)[:, self.positive_class]
        return torch.where((p_first >= p_second)[:, None], first, second)

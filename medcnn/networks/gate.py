"""A brain-fraction gate for slice classifiers: a slice with (almost) no brain is never called positive."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BrainFractionGate", "brain_fraction", "slice_classifier"]


def brain_fraction(x: torch.Tensor, background: float = 0.0, atol: float = 1e-6) -> torch.Tensor:
    """Per image of ``(B, C, *spatial)``, the fraction ``(B,)`` of pixels where a channel differs from ``background``.

    After :class:`medcnn.transforms.BrainZScore` everything outside the brain is exactly 0, so this is the brain's
    share of the network input (resampling blends the brain's edge, which still counts as brain).
    """
    if x.ndim < 3:
        raise ValueError(f"brain_fraction: expected (B, C, *spatial), got shape {tuple(x.shape)}")
    inside = ((x - background).abs() > atol).any(dim=1)
    return inside.flatten(1).float().mean(dim=1)


class BrainFractionGate(nn.Module):
    """Run ``classifier`` on ``(B, C, H, W)`` and force a negative answer on images whose brain fraction
    (:func:`brain_fraction`) is below ``min_brain_fraction``: the ``positive_class`` logit is set ``margin`` below the
    largest other logit (probability about ``exp(-margin)``), other images keep their logits ``(B, num_classes)``.

    A classifier trained on brain slices has never seen an empty slice and answers anything there (p = 0.66 for
    every empty BraTS slice of the brain-tumour localiser); a tumour cannot lie outside the brain, so the gate is a
    rule, not a learnt score. The wrapped ``classifier`` keeps its parameter names, so its checkpoint loads into it
    unchanged and CAM target layers are addressed on it.
    """

    def __init__(
        self,
        classifier: nn.Module,
        min_brain_fraction: float = 0.005,
        positive_class: int = 1,
        background: float = 0.0,
        margin: float = 30.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(min_brain_fraction) <= 1.0:
            raise ValueError(f"BrainFractionGate: min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
        if margin <= 0:
            raise ValueError(f"BrainFractionGate: margin must be > 0, got {margin}")
        self.classifier = classifier
        self.min_brain_fraction = float(min_brain_fraction)
        self.positive_class = int(positive_class)
        self.background = float(background)
        self.margin = float(margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W[, D])`` -> logits ``(B, num_classes)``, the negative answer where there is no brain."""
        logits = self.classifier(x)
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"BrainFractionGate: the classifier must give (B, num_classes >= 2) logits, got shape "
                             f"{tuple(logits.shape)}")
        empty = brain_fraction(x, self.background) < self.min_brain_fraction
        pos = self.positive_class
        others = torch.cat([logits[:, :pos], logits[:, pos + 1:]], dim=1).max(dim=1).values
        gated = torch.where(empty, others - self.margin, logits[:, pos])
        return torch.cat([logits[:, :pos], gated[:, None], logits[:, pos + 1:]], dim=1)


def slice_classifier(
    classifier: nn.Module, slice_score: str = "whole", min_brain_fraction: float = 0.005, positive_class: int = 1
) -> nn.Module:
    """The network that scores a brain slice ``(B, C, H, W)``: ``classifier`` on the whole slice (``"whole"``) or the
    more tumour-like half (``"hemisphere_max"``, :class:`~medcnn.networks.hemisphere.HemisphereMaxClassifier` along
    the first spatial axis), behind a :class:`BrainFractionGate` (``min_brain_fraction`` 0 disables the gate)."""
    from medcnn.networks.hemisphere import HemisphereMaxClassifier

    if slice_score == "whole":
        scorer = classifier
    elif slice_score == "hemisphere_max":
        scorer = HemisphereMaxClassifier(classifier, axis=2, positive_class=positive_class)
    else:
        raise ValueError(f"slice_score must be 'whole' or 'hemisphere_max', got {slice_score!r}")
    if not min_brain_fraction:
        return scorer
    return BrainFractionGate(scorer, min_brain_fraction=min_brain_fraction, positive_class=positive_class)

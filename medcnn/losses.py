"""Losses that MONAI's trainers can call as ``loss(pred, target)`` while carrying extra per-pixel information."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["PixelWeightedDiceCELoss"]


class PixelWeightedDiceCELoss(nn.Module):
    """``lambda_ce * mean(w * CE) + lambda_dice * Dice`` with the pixel weights ``w`` as the target's second channel.

    ``input`` ``(B, C, *S)`` logits; ``target`` ``(B, 2, *S)``: channel 0 the class index, channel 1 the weight
    map (e.g. :class:`medcnn.transforms.BorderWeightMapd` joined to the label with MONAI's ``ConcatItemsd``).
    ``SupervisedTrainer`` passes only ``(pred, label)`` to its loss, and MONAI's ``DiceCELoss`` has per-class, not
    per-pixel, CE weights; carrying the map in the label keeps the stock trainer. With all weights 1 this equals
    ``DiceCELoss(to_onehot_y=True, softmax=True)`` with the same lambdas.
    """

    def __init__(self, lambda_dice: float = 0.5, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        if target.ndim != input.ndim or target.shape[1] != 2 or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"PixelWeightedDiceCELoss: target must be (B, 2, *S) = class index and weight map for logits "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        label, weight = target[:, :1], target[:, 1]
        ce = F.cross_entropy(input, label[:, 0].long(), reduction="none")
        return self.lambda_ce * (ce * weight).mean() + self.lambda_dice * self.dice(input, label)

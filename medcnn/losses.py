"""Losses that MONAI's trainers can call as ``loss(pred, target)`` while carrying extra per-pixel information."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, MaskedDiceLoss
from torch import nn

__all__ = ["PixelWeightedDiceCELoss"]


class PixelWeightedDiceCELoss(nn.Module):
    """``lambda_ce * mean(w * CE) + lambda_dice * Dice`` with the pixel weights ``w`` as the target's second channel.

    ``input`` ``(B, C, *S)`` logits; ``target`` ``(B, 2, *S)``: channel 0 the class index, channel 1 the weight
    map (e.g. :class:`medcnn.transforms.BorderWeightMapd` joined to the label with MONAI's ``ConcatItemsd``).
    ``SupervisedTrainer`` passes only ``(pred, label)`` to its loss, and MONAI's ``DiceCELoss`` has per-class, not
    per-pixel, CE weights; carrying the map in the label keeps the stock trainer. With all weights 1 this equals
    ``DiceCELoss(to_onehot_y=True, softmax=True)`` with the same lambdas.

    With ``mask_dice=True`` the pixels of weight 0 are left out of the Dice term too (MONAI's ``MaskedDiceLoss``),
    so an ignore band of noisy pseudo-labels (:class:`medcnn.weak.IgnoreBand`) is ignored by both terms.
    """

    def __init__(self, lambda_dice: float = 0.5, lambda_ce: float = 1.0, mask_dice: bool = False) -> None:
        super().__init__()
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.mask_dice = bool(mask_dice)
        # the masked Dice takes a one-hot target, so that ignored pixels are zero in every channel of both tensors
        self.dice = MaskedDiceLoss(softmax=True) if self.mask_dice else DiceLoss(to_onehot_y=True, softmax=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        if target.ndim != input.ndim or target.shape[1] != 2 or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"PixelWeightedDiceCELoss: target must be (B, 2, *S) = class index and weight map for logits "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        label, weight = target[:, :1], target[:, 1]
        ce = F.cross_entropy(input, label[:, 0].long(), reduction="none")
        if self.mask_dice:
            onehot = F.one_hot(label[:, 0].long(), input.shape[1]).movedim(-1, 1).to(input.dtype)
            dice = self.dice(input, onehot, mask=(weight[:, None] > 0).to(input.dtype))
        else:
            dice = self.dice(input, label)
        return self.lambda_ce * (ce * weight).mean() + self.lambda_dice * dice

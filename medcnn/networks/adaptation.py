"""Test-time adaptation of batch normalisation to one group of images (AdaBN).

Li, Wang, Shi, Hou, Liu: "Adaptive batch normalization for practical domain adaptation", Pattern Recognition 80
(2018) 109-117. A network trained with batch norm normalises every layer with the training population's running
statistics; a scanner or patient whose intensities sit elsewhere is normalised with the wrong ones. AdaBN replaces
them by the statistics of the new images themselves (here: one patient's slices), with no labels and no training.

MONAI has no such step; in PyTorch it is a few lines that are easy to get subtly wrong (a forward in ``train()``
mode also turns dropout on and updates the statistics with momentum 0.1, i.e. 10 % adaptation per batch), so medcnn
keeps one tested version. Measured on the LGG bundle's patient CV (its model card, "Domain-adversarial training on
the institution"): it helps the institution-offset fold and hurts another; not a bundle default.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["adapt_batch_norm"]


def adapt_batch_norm(net: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> nn.Module:
    """A copy of ``net`` (eval mode) whose batch-norm layers hold the mean and variance of ``images``.

    Args:
        net: any network; it is not modified.
        images: ``(N, C, *S)``, the group to adapt to (e.g. every slice of one patient).
        batch_size: images per forward pass; ``None`` = all in one pass, which gives each layer the exact
            mean and (unbiased) variance of the group. With smaller batches the layers hold the average of the
            batches' statistics (``momentum=None``), which is close for batches of similar images.

    Raises:
        ValueError: a network without batch norm, or no images.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ValueError(f"adapt_batch_norm: {type(net).__name__} has no batch-norm layer to adapt")
    if images.ndim < 3 or images.shape[0] < 1:
        raise ValueError(f"adapt_batch_norm: needs a batch (N, C, *S) of at least one image, got {tuple(images.shape)}")
    adapted = copy.deepcopy(net).eval()
    for m in adapted.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the exact statistics of all images
            m.train()
    with torch.no_grad():
        step = images.shape[0] if batch_size is None else max(1, int(batch_size))
        for start in range(0, images.shape[0], step):
            adapted(images[start:start + step])
    return adapted.eval()

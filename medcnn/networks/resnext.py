"""A ResNeXt50 (32x4d) encoder for MONAI's ``FlexibleUNet``: the "ResNeXt50-based U-Net" of 2D tumour studies.

MONAI's ``FlexibleUNet`` ships EfficientNet and ResNet encoders, not ResNeXt. :class:`ResNeXtEncoder` wraps
torchvision's ``resnext50_32x4d`` (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks",
CVPR 2017), built without weights (nothing is downloaded; pretrained ImageNet weights are refused), as a
``monai.networks.blocks.BaseEncoder`` returning the five feature maps ``FlexibleUNet``'s decoder expects
(strides 2, 4, 8, 16, 32). :func:`register_resnext_backbones` adds it to ``FLEXUNET_BACKBONE`` as
``"resnext50_32x4d"``; :func:`medcnn.networks.build_segmentation_network` calls it for ``"resnext_unet"``.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import BaseEncoder
from torch import nn

__all__ = ["ResNeXtEncoder", "register_resnext_backbones"]

_ENCODERS = {"resnext50_32x4d": (64, 256, 512, 1024, 2048)}


class ResNeXtEncoder(BaseEncoder, nn.Module):
    """torchvision ResNeXt as a 2D ``FlexibleUNet`` encoder: ``(B, C, H, W)`` -> 5 maps at 1/2 ... 1/32 of H, W."""

    def __init__(
        self, name: str = "resnext50_32x4d", spatial_dims: int = 2, in_channels: int = 1, pretrained: bool = False
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"ResNeXtEncoder: torchvision ResNeXt is 2D only, got spatial_dims={spatial_dims}")
        if pretrained:
            raise ValueError("ResNeXtEncoder: pretrained weights are not supported (medcnn downloads nothing)")
        if name not in _ENCODERS:
            raise ValueError(f"ResNeXtEncoder: unknown encoder {name!r}; valid: {sorted(_ENCODERS)}")
        from torchvision import models

        net = getattr(models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = [x]
        x = self.pool(x)
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"name": n, "spatial_dims": 2, "in_channels": 3, "pretrained": False} for n in _ENCODERS]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [c for c in _ENCODERS.values()]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(c) for c in _ENCODERS.values()]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(_ENCODERS)


def register_resnext_backbones() -> None:
    """Add the ResNeXt encoders to MONAI's ``FLEXUNET_BACKBONE`` registry (idempotent)."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    if not all(n in FLEXUNET_BACKBONE.register_dict for n in _ENCODERS):
        FLEXUNET_BACKBONE.register_class(ResNeXtEncoder)

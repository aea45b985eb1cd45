"""ResUNet++ (Jha et al. 2019) built from MONAI blocks, for 2D or 3D segmentation.

Reference: D. Jha, P. H. Smedsrud, M. A. Riegler, D. Johansen, T. de Lange, P. Halvorsen, H. D. Johansen,
"ResUNet++: An Advanced Architecture for Medical Image Segmentation", IEEE International Symposium on
Multimedia (ISM) 2019, pp. 225-230, doi:10.1109/ISM46123.2019.00049 (arXiv:1911.07067).

The paper's network is a residual U-Net with three additions, all kept here:

- squeeze-and-excitation after each encoder residual block (MONAI ``ChannelSELayer``);
- atrous spatial pyramid pooling (ASPP) as the bridge and before the output head (MONAI ``SimpleASPP``);
- an attention block on each skip connection, which gates the decoder features with the encoder features
  before upsampling.

MONAI ships none of these as one network (its ``UNet`` with residual units has no SE, ASPP or this attention;
``AttentionUnet`` has a different gate and no residual encoder), hence this module. Differences from the paper,
chosen for CPU training of small 2D images: batch norm + ReLU as in the paper, but the ASPP dilations default
to ``(1, 2, 4, 6)`` rather than ``(6, 12, 18)`` because the bridge of a 128x128 input is only 16x16 pixels,
and ``features`` (default: the paper's ``(32, 64, 128, 256, 512)``) is configurable; the registry entry
``build_segmentation_network("resunetpp", ...)`` uses a quarter of those widths for CPU training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, SimpleASPP
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["ResUNetPlusPlus"]


def _bn_relu_conv(spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """Pre-activation 3x3 convolution (BN -> ReLU -> conv) as used throughout ResUNet++."""
    return nn.Sequential(
        Norm[Norm.BATCH, spatial_dims](in_ch),
        nn.ReLU(inplace=True),
        Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
    )


class _ResidualBlock(nn.Module):
    """Two pre-activation 3x3 convolutions (the first with ``stride``) plus a 1x1 projection shortcut."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_bn_relu_conv(spatial_dims, in_ch, out_ch, stride),
                                  _bn_relu_conv(spatial_dims, out_ch, out_ch))
        self.shortcut = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
            Norm[Norm.BATCH, spatial_dims](out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _Stem(nn.Module):
    """First block: conv -> BN -> ReLU -> conv, plus a 1x1 shortcut (no pre-activation on the raw image)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = nn.Sequential(conv(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                                  _bn_relu_conv(spatial_dims, out_ch, out_ch))
        self.shortcut = nn.Sequential(conv(in_ch, out_ch, kernel_size=1, bias=False),
                                      Norm[Norm.BATCH, spatial_dims](out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _SkipAttention(nn.Module):
    """ResUNet++ attention: ``conv(skip)`` max-pooled to the decoder's grid plus ``conv(x)``, gated onto ``x``."""

    def __init__(self, spatial_dims: int, skip_ch: int, x_ch: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(_bn_relu_conv(spatial_dims, skip_ch, x_ch), Pool[Pool.MAX, spatial_dims](2))
        self.x = _bn_relu_conv(spatial_dims, x_ch, x_ch)
        self.gate = _bn_relu_conv(spatial_dims, x_ch, x_ch)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.skip(skip) + self.x(x)) * x


class _ASPP(nn.Module):
    """MONAI ``SimpleASPP`` (parallel dilated convolutions, concatenated) followed by a 1x1 fusion convolution."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, dilations: Sequence[int]) -> None:
        super().__init__()
        n = len(dilations)
        branch_ch = max(1, out_ch // n)
        self.aspp = SimpleASPP(spatial_dims, in_ch, branch_ch, kernel_sizes=[1] + [3] * (n - 1),
                               dilations=list(dilations), norm_type="BATCH", acti_type="RELU")
        self.fuse = Conv[Conv.CONV, spatial_dims](branch_ch * n, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.aspp(x))


class ResUNetPlusPlus(nn.Module):
    """ResUNet++: ``(B, in_channels, *S)`` -> logits ``(B, out_channels, *S)``; each side of ``S`` divisible by 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input channels and number of classes (logits, no activation).
        features: channels of the stem, the three strided encoder levels and the ASPP bridge
            (5 values; the paper uses ``(32, 64, 128, 256, 512)``).
        dilations: ASPP dilation rates (the first branch is a 1x1 convolution).
        se_reduction: squeeze-and-excitation reduction ratio.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dilations: Sequence[int] = (1, 2, 4, 6),
        se_reduction: int = 8,
    ) -> None:
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"ResUNetPlusPlus: features needs 5 channel counts, got {tuple(features)}")
        f = [int(c) for c in features]
        sd = spatial_dims
        self.stem = _Stem(sd, in_channels, f[0])
        self.se = nn.ModuleList([ChannelSELayer(sd, c, r=min(se_reduction, c)) for c in f[:3]])
        self.down = nn.ModuleList([_ResidualBlock(sd, f[i], f[i + 1], stride=2) for i in range(3)])
        self.bridge = _ASPP(sd, f[3], f[4], dilations)
        # decoder level k (k = 0 deepest): attention(skip_k, x) -> upsample -> concat(skip_k) -> residual block
        skips = [f[2], f[1], f[0]]
        x_ch = [f[4], f[3], f[2]]
        out_ch = [f[3], f[2], f[1]]
        self.attention = nn.ModuleList([_SkipAttention(sd, s, c) for s, c in zip(skips, x_ch, strict=True)])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decode = nn.ModuleList([_ResidualBlock(sd, c + s, o) for c, s, o in zip(x_ch, skips, out_ch,
                                                                                    strict=True)])
        self.head_aspp = _ASPP(sd, f[1], f[0], dilations)
        self.head = Conv[Conv.CONV, sd](f[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dim in x.shape[2:]:
            if dim % 8:
                raise ValueError(f"ResUNetPlusPlus: spatial sides must be divisible by 8, got {tuple(x.shape[2:])}")
        e = [self.stem(x)]  # full resolution
        for se, down in zip(self.se, self.down, strict=True):
            e.append(down(se(e[-1])))  # 1/2, 1/4, 1/8
        d = self.bridge(e[3])
        for k, (att, dec) in enumerate(zip(self.attention, self.decode, strict=True)):
            skip = e[2 - k]
            d = dec(torch.cat([self.up(att(skip, d)), skip], dim=1))
        return self.head(self.head_aspp(d))

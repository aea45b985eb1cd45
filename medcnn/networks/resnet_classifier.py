"""The custom ResNet-style classifier of the weakly supervised localisation study, for 2D and 3D images.

Layout (``num_blocks`` stages, 8 by default as in the study)::

    input (B, C_in, *S)
      blocks.0 = conv (stride-2 conv -> batch norm -> dropout -> activation) + identity (residual same-size conv)
      blocks.1 = ...
      ...
      global average pooling -> fc1 -> activation -> dropout -> fc2 -> logits (B, num_classes)

Stage ``i`` (module name ``blocks.i``) has stride ``2 ** (i + 1)`` relative to the input until the
feature map reaches 1 voxel; a stride-2, padding-1, 3-wide convolution never makes a side smaller than 1,
so small inputs (e.g. 28x28 with 8 blocks: 14, 7, 4, 2, 1, 1, 1, 1) work. With batch size 1 and a 1-voxel
feature map, batch norm cannot train (PyTorch raises); use a batch of at least 2 or fewer blocks / smaller
strides (``strides``) for tiny inputs.

Global average pooling before the fully connected head keeps the gradient that reaches every stage
spatially meaningful, so any ``blocks.i`` can serve as a CAM target layer; shallow stages (stride 4)
give the finer heatmaps (see ``cam_target_layer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm, split_args
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = ["ResNetClassifier", "ResNetStage", "IdentityBlock"]


class IdentityBlock(nn.Module):
    """Same-size residual convolution: ``act(x + dropout(norm(conv(x))))``, shape ``(B, C, *S)`` kept."""

    __jit_unused_properties__ = ["norm"]

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel_size: int = 3,
        act: str | tuple = Act.RELU,
        norm: str | tuple = Norm.BATCH,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = Convolution(
            spatial_dims, channels, channels, strides=1, kernel_size=kernel_size, act=None, norm=norm,
            dropout=dropout, adn_ordering="ND", bias=False,
        )
        self.act = get_act_layer(act)

    @property
    def norm(self) -> nn.Module | None:
        """The residual branch's normalisation layer (its scale is zeroed by ``zero_init_residual``), if any."""
        adn = getattr(self.conv, "adn", None)
        return getattr(adn, "N", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv(x))


class ResNetStage(nn.Module):
    """One stage: ``conv`` (strided conv, norm, dropout, activation) then ``identity`` (:class:`IdentityBlock`)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        kernel_size: int = 3,
        act: str | tuple = Act.RELU,
        norm: str | tuple = Norm.BATCH,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = Convolution(
            spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size, act=act, norm=norm,
            dropout=dropout, adn_ordering="NDA", bias=False,
        )
        self.identity = IdentityBlock(spatial_dims, out_channels, kernel_size, act, norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.identity(self.conv(x))


class ResNetClassifier(nn.Module):
    """ResNet-style image classifier for 2D or 3D inputs ``(B, in_channels, H, W[, D])`` -> logits ``(B, num_classes)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output logits (use 2 with softmax / cross-entropy for a present/absent task).
        num_blocks: number of stages (conv block + identity block), 8 by default as in the study.
        channels: channels of the first stage (doubled every stage up to ``max_channels``), or one value per stage.
        max_channels: cap for the doubling when ``channels`` is an int.
        strides: stride of each stage's first convolution: an int for all stages or one value per stage.
        kernel_size: convolution kernel size.
        dropout: dropout probability inside the blocks.
        fc_hidden: width of the first fully connected layer of the head.
        fc_dropout: dropout between the two fully connected layers.
        act: activation (MONAI factory name or ``(name, kwargs)``).
        norm: normalisation (MONAI factory name or ``(name, kwargs)``), batch norm by default.
        zero_init_residual: start every identity block as the identity (its batch-norm scale at 0, ResNet practice:
            Goyal et al. 2017, "Accurate, large minibatch SGD", section 5.1); off by default (the study's network).
        paired_stem: initialise the first convolution's filters in sign pairs (filter ``k + C // 2`` = minus filter
            ``k``), so that every input direction starts with filters of both polarities. With few first-stage
            filters a random draw can leave none that brightens with an input channel (on the LGG slices: seed 1's
            8 filters all respond negatively to FLAIR, the tumour signal, and that network stays 0.07 AUC behind in
            patient cross-validation); every other weight is drawn as without it. Off by default.
        cam_layer: name of the default CAM target layer (a module name such as ``"blocks.1"`` or
            ``"blocks.1.identity"``); exposed as ``cam_target_layer_name`` / ``cam_target_layer``.

    Raises:
        ValueError: for an unsupported ``spatial_dims``, non-positive sizes, per-stage lists of the wrong
            length or an unknown ``cam_layer``.
    """

    __jit_unused_properties__ = ["cam_target_layer", "embedding_size"]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_blocks: int = 8,
        channels: int | Sequence[int] = 16,
        max_channels: int = 128,
        strides: int | Sequence[int] = 2,
        kernel_size: int = 3,
        dropout: float = 0.1,
        fc_hidden: int = 64,
        fc_dropout: float = 0.2,
        act: str | tuple = Act.RELU,
        norm: str | tuple = Norm.BATCH,
        cam_layer: str = "blocks.1",
        zero_init_residual: bool = False,
        paired_stem: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ResNetClassifier: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("num_blocks", num_blocks),
                            ("fc_hidden", fc_hidden), ("kernel_size", kernel_size)):
            if int(value) < 1:
                raise ValueError(f"ResNetClassifier: {name} must be >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= fc_dropout < 1.0:
            raise ValueError(f"ResNetClassifier: dropout / fc_dropout must be in [0, 1), got {dropout}, {fc_dropout}")
        if isinstance(channels, int):
            chans = [min(channels * 2**i, max(max_channels, channels)) for i in range(num_blocks)]
        else:
            chans = [int(c) for c in channels]
        stride_list = [int(strides)] * num_blocks if isinstance(strides, int) else [int(s) for s in strides]
        for name, seq in (("channels", chans), ("strides", stride_list)):
            if len(seq) != num_blocks:
                raise ValueError(f"ResNetClassifier: {name} needs one value per block ({num_blocks}), got {len(seq)}")
            if min(seq) < 1:
                raise ValueError(f"ResNetClassifier: {name} must be >= 1, got {seq}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = tuple(chans)
        self.strides = tuple(stride_list)

        stages = []
        c_in = in_channels
        for c_out, s in zip(chans, stride_list, strict=True):
            stages.append(ResNetStage(spatial_dims, c_in, c_out, s, kernel_size, act, norm, dropout))
            c_in = c_out
        self.blocks = nn.Sequential(*stages)
        pool_type = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        self.pool = pool_type(1)
        self.fc1 = nn.Linear(c_in, fc_hidden)
        self.fc_act = get_act_layer(act)
        self.fc_dropout = nn.Dropout(fc_dropout)
        self.fc2 = nn.Linear(fc_hidden, num_classes)
        self._init_weights(act)
        if paired_stem:
            self._pair_stem_filters()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IdentityBlock):
                    if getattr(m.norm, "weight", None) is None:
                        raise ValueError("ResNetClassifier: zero_init_residual needs a normalisation layer with a "
                                         f"scale in the identity blocks, got norm={norm!r}")
                    nn.init.zeros_(m.norm.weight)

        modules = dict(self.named_modules())
        if cam_layer not in modules:
            raise ValueError(
                f"ResNetClassifier: unknown cam_layer {cam_layer!r}; choose one of {self.cam_layer_names()}"
            )
        self.cam_target_layer_name = cam_layer

    def _init_weights(self, act: str | tuple) -> None:
        """Kaiming (He) initialisation of convolutions and linear layers, unit/zero batch-norm affine."""
        act_name, _ = split_args(act)
        nonlinearity = "leaky_relu" if str(act_name).lower() in ("leakyrelu", "prelu") else "relu"
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity=nonlinearity)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
                if getattr(m, "weight", None) is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _pair_stem_filters(self) -> None:
        """Filters ``C // 2 ..`` of the first convolution := minus filters ``0 .. C // 2 - 1`` (odd ``C``: the last
        filter keeps its draw)."""
        stem = next(m for m in self.blocks[0].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        half = stem.out_channels // 2
        with torch.no_grad():
            stem.weight[half: 2 * half] = -stem.weight[:half]
            if stem.bias is not None:
                stem.bias[half: 2 * half] = -stem.bias[:half]

    def cam_layer_names(self) -> list[str]:
        """Module names usable as CAM target layers: ``blocks.i``, ``blocks.i.conv``, ``blocks.i.identity``."""
        names = []
        for i in range(len(self.blocks)):
            names += [f"blocks.{i}", f"blocks.{i}.conv", f"blocks.{i}.identity"]
        return names

    @property
    def cam_target_layer(self) -> nn.Module:
        """The default CAM target module (``cam_target_layer_name``, ``blocks.1`` = stride 4 by default)."""
        return self.get_submodule(self.cam_target_layer_name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map ``(B, channels[-1], *S')``."""
        return self.blocks(x)

    @property
    def embedding_size(self) -> int:
        """Length of :meth:`embed`'s vectors (the last stage's channels)."""
        return self.fc1.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> globally pooled features ``(B, embedding_size)``, the head's input."""
        return torch.flatten(self.pool(self.blocks(x)), 1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, embedding_size)`` -> logits ``(B, num_classes)``."""
        return self.fc2(self.fc_dropout(self.fc_act(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(x))

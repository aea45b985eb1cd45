"""A small registry of MONAI segmentation networks, selectable by name from a bundle config override.

Every entry builds a network mapping ``(B, in_channels, *S)`` to logits ``(B, out_channels, *S)`` for 2D or 3D
images (``spatial_dims`` 2 or 3), with compact defaults sized for CPU training on small volumes (e.g. the
~35x50x36 hippocampus crops); any keyword argument of the MONAI class overrides a default::

    net = build_segmentation_network("segresnet", spatial_dims=3, in_channels=1, out_channels=3, init_filters=16)

``segmentation_divisor(name)`` gives the factor every spatial side must be divisible by (use it for
``DivisiblePad``). ``segresnet_ds`` returns a list of outputs (full resolution first) in training mode; wrap the
loss in :class:`monai.losses.DeepSupervisionLoss` (see :func:`deep_supervision_loss`). In eval mode it returns
a plain tensor like every other entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer
from monai.losses import DeepSupervisionLoss
from monai.networks.nets import AttentionUnet, BasicUNet, DynUNet, FlexibleUNet, SegResNet, SegResNetDS, UNet
from torch import nn

__all__ = [
    "SEGMENTATION_NETWORKS",
    "SEGMENTATION_NETWORKS_3D",
    "build_segmentation_network",
    "segmentation_divisor",
    "deep_supervision_loss",
    "FlipEnsembleInferer",
    "DihedralEnsembleInferer",
]


def _unet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    args = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2, "norm": "batch"}
    args.update(kw)
    return UNet(spatial_dims, in_channels, out_channels, **args)


def _segresnet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    args = {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "norm": "batch"}
    args.update(kw)
    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _segresnet_ds(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    args = {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "dsdepth": 3, "norm": "batch"}
    args.update(kw)
    return SegResNetDS(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _dynunet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    strides = kw.pop("strides", (1, 2, 2, 2))
    args = {
        "kernel_size": [3] * len(strides),
        "strides": strides,
        "upsample_kernel_size": list(strides[1:]),
        "filters": (16, 32, 64, 128)[: len(strides)] if len(strides) <= 4 else None,
        "norm_name": "batch",
        "res_block": True,
    }
    args.update(kw)
    return DynUNet(spatial_dims, in_channels, out_channels, **args)


def _basicunet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    args = {"features": (16, 16, 32, 64, 128, 16), "norm": "batch"}
    args.update(kw)
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _attention_unet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    args = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)}
    args.update(kw)
    return AttentionUnet(spatial_dims, in_channels, out_channels, **args)


def _flexible_unet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    if kw.get("pretrained"):
        raise ValueError("flexible_unet: pretrained encoder weights are not supported (no downloads)")
    args = {"backbone": "resnet18", "pretrained": False, "decoder_channels": (128, 64, 32, 16, 16)}
    args.update(kw)
    return FlexibleUNet(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **args)


def _resnext_unet(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    from medcnn.networks.resnext import register_resnext_backbones

    if kw.get("pretrained"):
        raise ValueError("resnext_unet: pretrained encoder weights are not supported (no downloads)")
    register_resnext_backbones()
    args = {"backbone": "resnext50_32x4d", "pretrained": False, "decoder_channels": (256, 128, 64, 32, 16)}
    args.update(kw)
    return FlexibleUNet(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **args)


def _resunetpp(spatial_dims: int, in_channels: int, out_channels: int, **kw) -> nn.Module:
    from medcnn.networks.resunetpp import ResUNetPlusPlus

    args = {"features": (8, 16, 32, 64, 128)}  # a quarter of the paper's widths: CPU-sized like the other entries
    args.update(kw)
    return ResUNetPlusPlus(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _stride_divisor(strides) -> int:
    """Product of per-level strides (an int or a per-axis sequence: the largest factor is taken)."""
    return math.prod(max(s) if isinstance(s, (list, tuple)) else int(s) for s in strides)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "segresnet": _segresnet,
    "segresnet_ds": _segresnet_ds,
    "dynunet": _dynunet,
    "basicunet": _basicunet,
    "attention_unet": _attention_unet,
    "flexible_unet": _flexible_unet,
    "resnext_unet": _resnext_unet,
    "resunetpp": _resunetpp,
}

_DIVISORS: dict[str, Callable[[dict], int]] = {
    "unet": lambda kw: _stride_divisor(kw.get("strides", (2, 2, 2))),
    "segresnet": lambda kw: 2 ** (len(kw.get("blocks_down", (1, 2, 2, 4))) - 1),
    "segresnet_ds": lambda kw: 2 ** (len(kw.get("blocks_down", (1, 2, 2, 4))) - 1),
    "dynunet": lambda kw: _stride_divisor(kw.get("strides", (1, 2, 2, 2))),
    "basicunet": lambda kw: 16,
    "attention_unet": lambda kw: _stride_divisor(kw.get("strides", (2, 2, 2))),
    "flexible_unet": lambda kw: 32,
    "resnext_unet": lambda kw: 32,
    "resunetpp": lambda kw: 8,
}

#: Names accepted by :func:`build_segmentation_network` (2D and 3D).
SEGMENTATION_NETWORKS: tuple[str, ...] = tuple(_BUILDERS)
#: The entries meant for volumetric training (``flexible_unet`` is the 2D ResNet-encoder entry; it builds in 3D
#: too but is an order of magnitude larger, so the 3D comparison leaves it out; ``resnext_unet`` is 2D only;
#: ``resunetpp`` builds in 3D but has not been trained on volumes here).
SEGMENTATION_NETWORKS_3D: tuple[str, ...] = tuple(
    n for n in SEGMENTATION_NETWORKS if n not in ("flexible_unet", "resnext_unet", "resunetpp")
)


def _check_name(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown segmentation network '{name}'; valid names: {', '.join(SEGMENTATION_NETWORKS)}")
    return key


def build_segmentation_network(
    name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kwargs
) -> nn.Module:
    """Build registry entry ``name``: ``(B, in_channels, *S)`` -> logits ``(B, out_channels, *S)``.

    ``spatial_dims`` is 2 or 3; sides of ``S`` must be divisible by :func:`segmentation_divisor`. ``kwargs``
    override the compact defaults (keyword arguments of the MONAI class). Raises ``ValueError`` naming the valid
    names for an unknown ``name``.
    """
    key = _check_name(name)
    if spatial_dims not in (2, 3):
        raise ValueError(f"segmentation network '{name}': spatial_dims must be 2 or 3, got {spatial_dims}")
    return _BUILDERS[key](int(spatial_dims), int(in_channels), int(out_channels), **kwargs)


def segmentation_divisor(name: str, **kwargs) -> int:
    """Factor each input side must be divisible by for network ``name`` built with ``kwargs``."""
    return int(_DIVISORS[_check_name(name)](kwargs))


class _FloatTargetDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's DeepSupervisionLoss with the target cast to float (nearest resizing of integer labels fails)."""

    def forward(self, input, target):  # noqa: A002 - MONAI's signature
        return super().forward(input, target.float() if not target.is_floating_point() else target)


def deep_supervision_loss(loss: nn.Module, weight_mode: str = "exp") -> nn.Module:
    """Wrap ``loss`` so it accepts a deep-supervision list of outputs (or a single tensor) against one target.

    Each output ``(B, C, *S_k)`` is scored against the target ``(B, 1, *S)`` resized (nearest) to ``S_k``;
    the losses are summed with weights halving per level (``weight_mode="exp"``).
    """
    return _FloatTargetDeepSupervisionLoss(loss, weight_mode=weight_mode)


def _run(base: Inferer | None, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs):
    """``base(inputs, network)`` when a base inferer is given (e.g. sliding window), else ``network(inputs)``."""
    if base is None:
        return network(inputs, *args, **kwargs)
    return base(inputs, network, *args, **kwargs)


class FlipEnsembleInferer(Inferer):
    """Test-time augmentation by mirroring: mean logits of ``network(x)`` and of the un-flipped ``network(flip(x))``.

    ``inputs`` ``(B, C, *S)`` -> logits ``(B, out_channels, *S)``; ``spatial_axes`` counts spatial axes from 0
    (0 = the first spatial axis, i.e. tensor dim 2). Use only axes along which the anatomy is mirror-symmetric
    (e.g. left-right), so a flipped label keeps its meaning. ``base_inferer`` (e.g. a
    :class:`monai.inferers.SlidingWindowInferer`) runs each view; without it the network sees the whole input.
    """

    def __init__(self, spatial_axes: Sequence[int] = (0,), base_inferer: Inferer | None = None) -> None:
        super().__init__()
        self.dims = [int(a) + 2 for a in spatial_axes]
        self.base_inferer = base_inferer

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        out = _run(self.base_inferer, inputs, network, *args, **kwargs)
        for d in self.dims:
            view = _run(self.base_inferer, torch.flip(inputs, dims=[d]), network, *args, **kwargs)
            out = out + torch.flip(view, dims=[d])
        return out / (1 + len(self.dims))


class DihedralEnsembleInferer(Inferer):
    """Test-time augmentation over the 8 symmetries of the square (4 rotations x mirror) in one spatial plane.

    For images without a preferred in-plane orientation (EM sections, histology): the mean of the outputs of the
    eight rotated/mirrored views, each mapped back; logits by default (so a bundle's softmax post-processing
    stays as it is), probabilities with ``activation="softmax"`` or ``"sigmoid"``.
    ``inputs`` ``(B, C, *S)``; ``plane`` names two spatial axes (0-based) whose sizes may differ (rotations of
    a non-square input are run on the rotated shape). MONAI's ``TestTimeAugmentation`` draws random
    transforms per call and inverts them through the transform stack; this is the deterministic, exhaustive
    dihedral group with no metadata bookkeeping, cheap enough for every evaluation.
    """

    def __init__(
        self, base_inferer: Inferer | None = None, plane: Sequence[int] = (0, 1), activation: str | None = None
    ) -> None:
        super().__init__()
        if len(plane) != 2 or plane[0] == plane[1]:
            raise ValueError(f"DihedralEnsembleInferer: plane must name two different spatial axes, got {plane}.")
        if activation not in (None, "softmax", "sigmoid"):
            raise ValueError(f"DihedralEnsembleInferer: activation must be None, softmax or sigmoid, not {activation}.")
        self.base_inferer = base_inferer
        self.dims = (int(plane[0]) + 2, int(plane[1]) + 2)
        self.activation = activation

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return torch.softmax(x, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        return x

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        total = None
        for k in range(4):
            for mirror in (False, True):
                view = torch.rot90(inputs, k, self.dims)
                view = torch.flip(view, dims=[self.dims[1]]) if mirror else view
                out = self._act(_run(self.base_inferer, view, network, *args, **kwargs))
                out = torch.flip(out, dims=[self.dims[1]]) if mirror else out
                out = torch.rot90(out, -k, self.dims)
                total = out if total is None else total + out
        return total / 8

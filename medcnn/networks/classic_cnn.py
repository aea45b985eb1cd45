"""The classic small-image CNN recipe: 5 conv layers with max-pooling, 2 FC layers, batch norm, dropout, Kaiming init.

The recipe comes from a 99.2 %-test-accuracy MNIST study (Adam, batch 64, StepLR x0.2 every 8 epochs, ~26 epochs,
early stopping) and is applied here to small medical images such as the 28x28 MedMNIST sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["ClassicCNN", "SMALL_IMAGE_CLASSIFIERS", "small_image_classifier"]


class ClassicCNN(nn.Module):
    """Classic CNN classifier: ``(B, in_channels, *spatial_size)`` -> logits ``(B, out_channels)``.

    Five ``conv 3x3 -> batch norm -> ReLU`` blocks with channels ``channels``; a 2x2 max-pooling follows every block
    whose index is in ``pool_after`` (default: after blocks 2, 4 and 5, so 28 -> 14 -> 7 -> 3). The features are
    flattened into ``FC(hidden) -> batch norm -> ReLU -> dropout -> FC(out_channels)``; dropout (25 %) is also applied
    after each pooling. Convolutions and linear layers use Kaiming-normal initialisation (ReLU gain), batch norms
    start at weight 1 / bias 0. The last convolution block is ``features.block5`` (its ReLU is ``features.block5.act``,
    the usual Grad-CAM target layer).

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: input channels (1 for grey-level X-ray).
        out_channels: number of classes (logits, no softmax).
        spatial_size: input size the FC layer is built for, e.g. ``(28, 28)``.
        channels: output channels of the 5 convolution blocks (the default is sized for 28x28 inputs on a CPU:
            ~5.5 M multiply-adds per image; the MNIST study's wider (32, 32, 64, 64, 128) costs 4x more).
        pool_after: 1-based indices of the blocks followed by max-pooling.
        hidden: width of the first fully connected layer.
        dropout: dropout probability (0.25 in the recipe).
        cam_layer: default CAM target layer (``cam_target_layer_name``), ``features.block5`` by default.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        spatial_size: Sequence[int] | int = 28,
        channels: Sequence[int] = (16, 16, 32, 32, 64),
        pool_after: Sequence[int] = (2, 4, 5),
        hidden: int = 128,
        dropout: float = 0.25,
        cam_layer: str = "features.block5",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ClassicCNN: spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) != 5:
            raise ValueError(f"ClassicCNN: channels must list 5 convolution widths, got {list(channels)}")
        size = [int(spatial_size)] * spatial_dims if isinstance(spatial_size, int) else [int(s) for s in spatial_size]
        if len(size) != spatial_dims:
            raise ValueError(f"ClassicCNN: spatial_size {list(size)} does not have {spatial_dims} dimensions")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ClassicCNN: dropout must be in [0, 1), got {dropout}")
        bad_pool = [p for p in pool_after if not 1 <= p <= 5]
        if bad_pool:
            raise ValueError(f"ClassicCNN: pool_after indices must be in 1..5, got {bad_pool}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.spatial_size = list(size)
        conv_t, norm_t = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        pool_t = Pool[Pool.MAX, spatial_dims]
        drop_t = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d

        layers: list[tuple[str, nn.Module]] = []
        c_in = in_channels
        for i, c_out in enumerate(channels, start=1):
            block = nn.Sequential()
            block.add_module("conv", conv_t(c_in, c_out, kernel_size=3, padding=1, bias=False))
            block.add_module("norm", norm_t(c_out))
            block.add_module("act", nn.ReLU(inplace=False))
            layers.append((f"block{i}", block))
            if i in pool_after:
                if min(size) < 2:
                    raise ValueError(
                        f"ClassicCNN: spatial_size {self.spatial_size} is too small for pooling after block {i}"
                    )
                size = [s // 2 for s in size]
                layers.append((f"pool{i}", pool_t(kernel_size=2)))
                layers.append((f"drop{i}", drop_t(dropout)))
            c_in = c_out
        self.features = nn.Sequential()
        for name, module in layers:
            self.features.add_module(name, module)
        n_flat = c_in
        for s in size:
            n_flat *= s
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(n_flat, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_channels),
        )
        self._init_weights()
        if cam_layer not in dict(self.named_modules()):
            raise ValueError(f"ClassicCNN: unknown cam_layer {cam_layer!r}; choose one of {self.cam_layer_names()}")
        self.cam_target_layer_name = cam_layer

    def cam_layer_names(self) -> list[str]:
        """Module names usable as CAM target layers: the convolution blocks ``features.block1`` .. ``block5``."""
        return [f"features.{name}" for name, _ in self.features.named_children() if name.startswith("block")]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels)`` for a batch ``(B, in_channels, *spatial_size)``."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels or list(x.shape[2:]) != self.spatial_size:
            raise ValueError(
                f"ClassicCNN: expected input (B, {self.in_channels}, {self.spatial_size}), got {list(x.shape)}"
            )
        return self.classifier(self.features(x))


SMALL_IMAGE_CLASSIFIERS = ("classic_cnn", "resnet")


def small_image_classifier(
    name: str = "classic_cnn",
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_size: Sequence[int] | int = 28,
    **kwargs,
) -> nn.Module:
    """The classifier a bundle selects by name (``--network_name``): ``classic_cnn`` or ``resnet``.

    ``classic_cnn`` is :class:`ClassicCNN`; ``resnet`` is :class:`medcnn.networks.ResNetClassifier` with 4 stages
    (28 -> 14 -> 7 -> 4 -> 2), 32 channels doubling to 256 and a GAP head, sized for 28x28 inputs. ``kwargs`` go to
    the network's constructor and override these defaults. Raises ``ValueError`` for an unknown name.
    """
    if name == "classic_cnn":
        return ClassicCNN(spatial_dims, in_channels, num_classes, spatial_size=spatial_size, **kwargs)
    if name == "resnet":
        from medcnn.networks.resnet_classifier import ResNetClassifier

        options = {"num_blocks": 4, "channels": 32, "max_channels": 256, "fc_hidden": 128, "cam_layer": "blocks.1"}
        options.update(kwargs)
        return ResNetClassifier(spatial_dims, in_channels, num_classes, **options)
    raise ValueError(f"unknown network name {name!r}; choose one of {list(SMALL_IMAGE_CLASSIFIERS)}")

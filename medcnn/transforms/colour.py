"""Colour -> grey level for scans exported as RGB (JPEG/PNG exports of MRI, X-ray, ...): array + dictionary.

Many public 2D datasets store grey-level scans as 3-channel RGB images (Roboflow and Kaggle exports, screen
captures). A network trained on one channel is 3x cheaper in its first layer and cannot learn from colour
artefacts of the export. MONAI has no RGB -> grey transform; :class:`ToGrey` applies the ITU-R BT.601 luma
weights (the same as Pillow's ``convert("L")``) to a channel-first image and keeps the MetaTensor's metadata.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["ToGrey", "ToGreyd", "BT601_WEIGHTS"]

#: ITU-R BT.601 luma weights (R, G, B), as used by Pillow's ``Image.convert("L")``.
BT601_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


class ToGrey(Transform):
    """``(3, *spatial)`` RGB or ``(4, *spatial)`` RGBA -> ``(1, *spatial)`` grey; ``(1, *spatial)`` passes through.

    Args:
        weights: per-channel weights (R, G, B); the alpha channel of RGBA is dropped.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, weights: Sequence[float] = BT601_WEIGHTS) -> None:
        if len(weights) != 3:
            raise ValueError(f"ToGrey: weights needs 3 values (R, G, B), got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def __call__(self, img, name: str | None = None) -> torch.Tensor:
        """``img`` ``(C, *spatial)`` with C in {1, 3, 4} -> ``(1, *spatial)`` float32, metadata kept."""
        name = name or source_name(img, "image")
        if img.ndim < 3 or img.shape[0] not in (1, 3, 4):
            raise InvalidInputError(
                f"{name}: expected a channel-first grey, RGB or RGBA image (1|3|4, *spatial), got shape "
                f"{tuple(img.shape)}"
            )
        t = convert_to_tensor(img, track_meta=True)
        if t.shape[0] == 1:
            return t.float()
        w = torch.tensor(self.weights, dtype=torch.float32, device=t.device).reshape(3, *([1] * (t.ndim - 1)))
        grey = (t[:3].float() * w).sum(0, keepdim=True)
        if isinstance(img, MetaTensor) and not isinstance(grey, MetaTensor):
            grey = MetaTensor(grey, meta=img.meta, affine=img.affine)
        return grey


class ToGreyd(MapTransform):
    """Dictionary version of :class:`ToGrey`."""

    backend = ToGrey.backend

    def __init__(
        self, keys: KeysCollection, weights: Sequence[float] = BT601_WEIGHTS, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToGrey(weights)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d

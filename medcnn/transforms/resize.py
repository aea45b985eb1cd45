"""Resize one item to the spatial shape another item of the same dictionary has at run time.

MONAI's ``Resized`` needs its ``spatial_size`` when the transform is built, and ``Invertd`` undoes a resize with the
forward mode (``"area"`` down-sampling comes back as a nearest-neighbour up-sampling, blocky at the mask's edges).
Scoring a prediction on the grid each mask was annotated on, when the masks of one dataset differ in size, needs the
target size from the item itself: :class:`ResizeToMatchd` reads it from the reference key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["ResizeToMatchd"]


class ResizeToMatchd(MapTransform):
    """Resize ``keys`` (channel first) to the spatial shape of ``reference_key`` (e.g. class probabilities of a
    down-sampled image back to the native mask before the arg-max).

    Args:
        keys: items to resize (channel first, 2D or 3D).
        reference_key: the item whose spatial shape (all but the first axis) is the target.
        mode: ``torch.nn.functional.interpolate`` mode, one per key or one for all (``"bilinear"`` for 2D
            probabilities, ``"trilinear"`` for 3D, ``"nearest"`` for labels).
        allow_missing_keys: as MONAI's.

    Raises:
        ValueError: naming the item's file when the reference has another number of spatial axes than the item.
    """

    def __init__(self, keys: KeysCollection, reference_key: str, mode: str | Sequence[str] = "bilinear",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"ResizeToMatchd: {len(modes)} modes for {len(self.keys)} keys")
        self.modes = dict(zip(self.keys, modes, strict=True))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        target = tuple(int(s) for s in d[self.reference_key].shape[1:])
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim - 1 != len(target):
                name = getattr(x, "meta", {}).get("filename_or_obj", key) if isinstance(x, MetaTensor) else key
                raise ValueError(f"{name}: {key!r} has {x.ndim - 1} spatial axes, reference {self.reference_key!r} "
                                 f"has {len(target)}: cannot resize one to the other")
            if tuple(x.shape[1:]) == target:
                continue
            plain = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            mode = self.modes[key]
            kw = {} if mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
            d[key] = torch.nn.functional.interpolate(plain[None].float(), size=target, mode=mode, **kw)[0]
        return d

"""Binary masks and the slice label they imply, the MONAI way (array + dictionary versions).

- :class:`BinaryMask` checks that a mask is stored as 0/1 or 0/255 (or one ``foreground`` value) and returns it as
  0/1; any other value raises :class:`medcnn.transforms.InvalidInputError` naming the file.
- :class:`MaskPresence` turns a mask ``(1, H, W[, D])`` into the image-level label "object present"
  (1 when at least ``min_pixels`` foreground pixels), the weak label a CAM classifier is trained on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["BinaryMask", "BinaryMaskd", "MaskPresence", "MaskPresenced"]


class BinaryMask(Transform):
    """Validate a mask ``(C, *spatial)`` stored with one foreground value and return it as 0/1 (same dtype).

    Args:
        foreground: accepted foreground values; a mask may use one of them (``{0, 1}`` or ``{0, 255}`` by default),
            never a mixture, and no other value.
        name: what the mask is, used in messages.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, foreground: Sequence[float] = (1, 255), name: str = "mask") -> None:
        self.foreground = tuple(float(v) for v in foreground)
        if not self.foreground or 0.0 in self.foreground:
            raise ValueError(f"foreground values must be non-zero, got {foreground}")
        self.name = name

    def __call__(self, mask):
        src = source_name(mask)
        t = convert_to_tensor(mask, track_meta=isinstance(mask, MetaTensor))
        values = torch.unique(t.detach()).cpu().double().numpy()
        if np.any(~np.isfinite(values)):
            raise InvalidInputError(f"{src}: {self.name} contains NaN or infinite values")
        fg = values[values != 0]
        allowed = ", ".join(f"0/{v:g}" for v in self.foreground)
        if fg.size > 1 or (fg.size == 1 and float(fg[0]) not in self.foreground):
            shown = ", ".join(f"{v:g}" for v in values[:10]) + (" ..." if values.size > 10 else "")
            raise InvalidInputError(f"{src}: {self.name} has values {{{shown}}}; expected a binary mask ({allowed})")
        if fg.size and float(fg[0]) != 1.0:
            t = (t != 0).to(t.dtype)
        return t


class BinaryMaskd(MapTransform):
    """Dictionary version of :class:`BinaryMask`."""

    backend = BinaryMask.backend

    def __init__(self, keys: KeysCollection, foreground: Sequence[float] = (1, 255),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BinaryMask(foreground)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.converter.name = str(key)
            d[key] = self.converter(d[key])
        return d


class MaskPresence(Transform):
    """Image-level label of a mask ``(C, *spatial)``: ``tensor(1)`` with >= ``min_pixels`` foreground pixels, else 0."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_pixels: int = 1) -> None:
        if int(min_pixels) < 1:
            raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
        self.min_pixels = int(min_pixels)

    def __call__(self, mask) -> torch.Tensor:
        count = int(torch.count_nonzero(convert_to_tensor(mask, track_meta=False)))
        return torch.tensor(int(count >= self.min_pixels), dtype=torch.long)


class MaskPresenced(MapTransform):
    """Dictionary version of :class:`MaskPresence`: ``data[label_key]`` = presence label of ``data[mask_key]``."""

    backend = MaskPresence.backend

    def __init__(self, keys: KeysCollection = "mask", label_key: str = "label", min_pixels: int = 1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"MaskPresenced reads one mask key, got {self.keys}")
        self.label_key = label_key
        self.presence = MaskPresence(min_pixels)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = self.presence(d[key])
        return d

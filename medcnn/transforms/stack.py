"""Pick one 2D slice out of a stack: ``(C, N, H, W)`` -> ``(C, H, W)``, the MONAI way (array + dictionary)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SqueezeDim, Transform
from monai.utils import convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["SelectSlice", "SelectSliced"]


class SelectSlice(Transform):
    """Return slice ``index`` of spatial axis ``dim`` (0 = the stack axis) of a channel-first ``(C, N, H, W)`` array.

    The result is ``(C, H, W)``; a MetaTensor keeps its metadata, its affine loses the selected axis (as
    ``SqueezeDim(update_meta=True)`` does) and ``meta["slice_index"]`` records ``index``.
    An index outside the stack raises :class:`InvalidInputError` naming the source file.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, dim: int = 0) -> None:
        self.dim = dim

    def __call__(self, img, index: int):
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        axis = self.dim + 1
        if img.ndim < axis + 2:
            raise InvalidInputError(
                f"{source_name(img)}: expected a channel-first stack (C, N, H, W), got shape {tuple(img.shape)}"
            )
        n = img.shape[axis]
        index = int(index)
        if not -n <= index < n:
            raise InvalidInputError(f"{source_name(img)}: slice {index} is outside the stack of {n} slices")
        index %= n
        out = SqueezeDim(dim=axis, update_meta=True)(img.narrow(axis, index, 1))
        if isinstance(out, MetaTensor):
            out.meta["slice_index"] = index
        return out


class SelectSliced(MapTransform):
    """Dictionary version of :class:`SelectSlice`: the index is read from ``data[index_key]`` (default ``"slice"``)."""

    backend = SelectSlice.backend

    def __init__(
        self, keys: KeysCollection, index_key: str = "slice", dim: int = 0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key = index_key
        self.selector = SelectSlice(dim=dim)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.index_key not in d:
            raise InvalidInputError(f"data has no '{self.index_key}' entry naming the slice to select")
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key], d[self.index_key])
        return d

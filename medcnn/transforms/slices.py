"""Slice-level operations on volumes, the MONAI way (array + dictionary): keep a block split of the slices.

A 2D slice model trained on a few cases needs its validation slices carved out of the training cases. Keeping
them in contiguous blocks (``(z // block) % every == offset`` validates) puts neighbouring, nearly identical
slices on the same side, so validation is less optimistic than a random slice split. As a transform on the
volume, the split costs no memory per slice and the training and validation pipelines read the same files.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["SliceBlocks", "SliceBlocksd", "slice_block_indices"]


def slice_block_indices(n: int, block: int = 10, every: int = 4, offset: int = 2, validation: bool = False) -> list:
    """Indices ``z < n`` on the validation side (``(z // block) % every == offset``) or the training side."""
    if block < 1 or every < 2 or not 0 <= offset < every:
        raise ValueError(f"slice blocks: need block >= 1, every >= 2, 0 <= offset < every; got {block}, {every}, "
                         f"{offset}")
    return [z for z in range(n) if ((z // block) % every == offset) == validation]


class SliceBlocks(Transform):
    """Keep the training or validation slices of a channel-first volume ``(C, H, W, D)`` along spatial axis ``dim``.

    Returns ``(C, H, W, D')`` with the slices of :func:`slice_block_indices` in their original order; a MetaTensor
    keeps its metadata and records the kept indices in ``meta["slice_indices"]`` (the affine no longer maps the
    sliced axis: use the result for 2D slice training and validation, not for writing volumes).
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, block: int = 10, every: int = 4, offset: int = 2, validation: bool = False, dim: int = -1):
        slice_block_indices(1, block, every, offset, validation)  # checks the arguments
        self.block, self.every, self.offset, self.validation, self.dim = block, every, offset, validation, dim

    def __call__(self, img):
        """``img`` (C, *spatial) -> the same with only the kept slices along ``dim``."""
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        if img.ndim < 3:
            raise InvalidInputError(f"{source_name(img)}: expected a channel-first volume (C, H, W, D), got shape "
                                    f"{tuple(img.shape)}")
        axis = self.dim if self.dim >= 0 else img.ndim + self.dim
        if axis < 1:
            raise ValueError(f"SliceBlocks: dim {self.dim} is not a spatial axis of shape {tuple(img.shape)}")
        keep = slice_block_indices(img.shape[axis], self.block, self.every, self.offset, self.validation)
        if not keep:
            side = "validation" if self.validation else "training"
            raise InvalidInputError(f"{source_name(img)}: no {side} slices among its {img.shape[axis]} slices "
                                    f"(block {self.block}, every {self.every}, offset {self.offset})")
        out = img.index_select(axis, torch.as_tensor(keep, device=img.device))
        if isinstance(out, MetaTensor):
            out.meta["slice_indices"] = keep
        return out


class SliceBlocksd(MapTransform):
    """Dictionary version of :class:`SliceBlocks`: the same slices of every key (image, label, brain mask)."""

    backend = SliceBlocks.backend

    def __init__(
        self,
        keys: KeysCollection,
        block: int = 10,
        every: int = 4,
        offset: int = 2,
        validation: bool = False,
        dim: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.splitter = SliceBlocks(block, every, offset, validation, dim)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.splitter(d[key])
        return d

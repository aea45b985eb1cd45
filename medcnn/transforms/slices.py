"""Slice-level operations on volumes, the MONAI way (array + dictionary): choose, split and sample axial slices.

A 2D slice model trained on a few cases needs its validation slices carved out of the training cases. Keeping
them in contiguous blocks (``(z // block) % every == offset`` validates) puts neighbouring, nearly identical
slices on the same side, so validation is less optimistic than a random slice split. As a transform on the
volume, the split costs no memory per slice and the training and validation pipelines read the same files.

The other pieces turn a cached volume into 2D items without a Python list of slices:

- :class:`SelectSlicesd` keeps the slices with enough brain and drops *ambiguous* ones (a few label pixels: neither
  clearly "tumour" nor "no tumour"); :class:`HemisphereStackd` puts the left and right halves of every slice side by
  side along the slice axis. Every selection records the original slice numbers in ``meta["slice_indices"]``, so
  a later :class:`SliceBlocks` split and the slice items still speak of the volume's own slice numbers.
- :class:`RandSliceByPosNegd` samples training slices by *slice* class (mask not empty / empty), which MONAI's
  ``RandCropByPosNegLabeld`` with a one-slice ROI does not: it picks a voxel, so a slice is drawn in proportion
  to its tumour area and a "negative" draw can land on a tumour slice.
- :class:`SliceIterd` is the ``patch_iter`` of ``monai.data.GridPatchDataset`` that yields every slice of a volume
  as a 2D item ``(C, H, W)`` with its original ``slice_index``. MONAI's ``PatchIterd`` deep-copies every other
  key of the volume into each slice, keeps the size-1 slice axis and loses the original slice number.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = [
    "HemisphereStack",
    "HemisphereStackd",
    "KeepSlices",
    "RandSliceByPosNegd",
    "SelectSlicesd",
    "SliceBlocks",
    "SliceBlocksd",
    "SliceIterd",
    "brain_slice_indices",
    "original_slice_indices",
    "slice_block_indices",
    "unambiguous_slice_indices",
    "volume_depth",
]


def slice_block_indices(n: int, block: int = 10, every: int = 4, offset: int = 2, validation: bool = False) -> list:
    """Indices ``z < n`` on the validation side (``(z // block) % every == offset``) or the training side."""
    if block < 1 or every < 2 or not 0 <= offset < every:
        raise ValueError(f"slice blocks: need block >= 1, every >= 2, 0 <= offset < every; got {block}, {every}, "
                         f"{offset}")
    return [z for z in range(n) if ((z // block) % every == offset) == validation]


def original_slice_indices(img, axis: int = -1) -> list[int]:
    """The volume's own slice numbers of the slices of ``img`` along ``axis``: ``meta["slice_indices"]`` recorded by
    an earlier selection, else ``0 ... n - 1``."""
    n = img.shape[axis]
    recorded = img.meta.get("slice_indices") if isinstance(img, MetaTensor) else None
    if recorded is not None and len(recorded) == n:
        return [int(z) for z in recorded]
    return list(range(n))


def volume_depth(img, axis: int = -1) -> int:
    """The slice count along ``axis`` of the volume ``img`` was cut from: ``meta["volume_depth"]`` recorded by an
    earlier selection (:class:`KeepSlices`, :class:`HemisphereStack`), else the last recorded original slice number
    + 1, else ``img.shape[axis]``. A report of the slices kept from a 155-slice case says "of 155", not the number of
    the last kept slice."""
    meta = img.meta if isinstance(img, MetaTensor) else {}
    if meta.get("volume_depth") is not None:
        return int(meta["volume_depth"])
    recorded = meta.get("slice_indices")
    if recorded is not None and len(recorded) == img.shape[axis]:
        return max(int(z) for z in recorded) + 1 if len(recorded) else 0
    return int(img.shape[axis])


def _axis(img, dim: int) -> int:
    axis = dim if dim >= 0 else img.ndim + dim
    if img.ndim < 3 or not 1 <= axis < img.ndim:
        raise InvalidInputError(f"{source_name(img)}: expected a channel-first volume (C, H, W, D) with slice axis "
                                f"{dim}, got shape {tuple(img.shape)}")
    return axis


class KeepSlices(Transform):
    """Keep the slices ``positions`` (positions along axis ``dim`` of ``(C, *spatial)``), in the given order.

    A MetaTensor keeps its metadata, ``meta["slice_indices"]`` holds the kept slices' original numbers (composed
    with an earlier selection) and ``meta["volume_depth"]`` the original volume's slice count (:func:`volume_depth`);
    the affine no longer maps the sliced axis: use the result for 2D slice items.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def __call__(self, img, positions: Sequence[int]):
        """``img`` (C, *spatial) -> the same with only ``positions`` along ``dim``."""
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        axis = _axis(img, self.dim)
        original = original_slice_indices(img, axis)
        depth = volume_depth(img, axis)
        out = img.index_select(axis, torch.as_tensor(list(positions), dtype=torch.long, device=img.device))
        if isinstance(out, MetaTensor):
            out.meta["slice_indices"] = [original[p] for p in positions]
            out.meta["volume_depth"] = depth
        return out


class SliceBlocks(Transform):
    """Keep the training or validation slices of a channel-first volume ``(C, H, W, D)`` along spatial axis ``dim``.

    Returns ``(C, H, W, D')`` with the slices of :func:`slice_block_indices` in their original order. The block rule
    applies to the volume's own slice numbers (``meta["slice_indices"]`` when an earlier selection kept only some
    slices), so selecting brain slices first does not shift the blocks; ``meta["slice_indices"]`` records the kept
    numbers (the affine no longer maps the sliced axis: use the result for 2D slice training and validation).
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, block: int = 10, every: int = 4, offset: int = 2, validation: bool = False, dim: int = -1):
        slice_block_indices(1, block, every, offset, validation)  # checks the arguments
        self.block, self.every, self.offset, self.validation, self.dim = block, every, offset, validation, dim

    def positions(self, img) -> list[int]:
        """Positions along ``dim`` of the slices on this side of the split."""
        axis = _axis(img, self.dim)
        original = original_slice_indices(img, axis)
        wanted = set(slice_block_indices(max(original) + 1 if original else 0, self.block, self.every, self.offset,
                                         self.validation))
        return [p for p, z in enumerate(original) if z in wanted]

    def __call__(self, img):
        """``img`` (C, *spatial) -> the same with only the kept slices along ``dim``."""
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        keep = self.positions(img)
        if not keep:
            side = "validation" if self.validation else "training"
            raise InvalidInputError(f"{source_name(img)}: no {side} slices among its {img.shape[self.dim]} slices "
                                    f"(block {self.block}, every {self.every}, offset {self.offset})")
        return KeepSlices(self.dim)(img, keep)


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


def _slice_areas(img, axis: int) -> torch.Tensor:
    """Foreground pixels per slice of ``img`` (C, *spatial) along ``axis``: pixels where some channel is non-zero."""
    x = convert_to_tensor(img, track_meta=False) != 0
    x = x.any(dim=0)  # (*spatial)
    x = x.movedim(axis - 1, -1)
    return x.reshape(-1, x.shape[-1]).sum(dim=0)


def brain_slice_indices(image, min_fraction: float = 0.1, dim: int = -1, background: float = 0.0) -> list[int]:
    """Positions of the slices of ``image`` (C, *spatial) whose brain area (pixels where some channel differs from
    ``background``, e.g. 0 after :class:`~medcnn.transforms.BrainZScore`) is > 0 and >= ``min_fraction`` of the
    largest slice's."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    axis = _axis(image, dim)
    x = convert_to_tensor(image, track_meta=False)
    area = _slice_areas(x - background if background else x, axis)
    keep = (area > 0) & (area >= min_fraction * area.max())
    return torch.nonzero(keep).flatten().tolist()


def unambiguous_slice_indices(label, min_pixels: int = 50, dim: int = -1) -> list[int]:
    """Positions of the slices of ``label`` (1, *spatial) with no foreground or >= ``min_pixels`` foreground pixels
    (slices with 1 ... ``min_pixels - 1`` are neither clearly positive nor negative)."""
    if int(min_pixels) < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    area = _slice_areas(label, _axis(label, dim))
    return torch.nonzero((area == 0) | (area >= int(min_pixels))).flatten().tolist()


class SelectSlicesd(MapTransform):
    """Keep the slices of every key that have enough brain (``image_key``) and are not ambiguous (``label_key``).

    ``min_brain_fraction`` (with ``image_key``): :func:`brain_slice_indices`; ``min_label_pixels`` (with
    ``label_key``): :func:`unambiguous_slice_indices`. Either criterion is skipped when its key is ``None`` or
    absent from the data (an unlabelled case). Raises :class:`InvalidInputError` naming the image file when no
    slice is left.
    """

    backend = KeepSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str | None = "image",
        label_key: str | None = "label",
        min_brain_fraction: float = 0.1,
        min_label_pixels: int = 50,
        background: float = 0.0,
        dim: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key = image_key, label_key
        self.min_brain_fraction, self.min_label_pixels = float(min_brain_fraction), int(min_label_pixels)
        self.background, self.dim = background, dim
        self.keeper = KeepSlices(dim)

    def positions(self, data: Mapping) -> list[int]:
        """Positions (along ``dim``) of the slices to keep."""
        first = data[self.image_key] if self.image_key in data else data[self.first_key(data)]
        keep = set(range(first.shape[self.dim]))
        if self.image_key is not None and self.image_key in data:
            keep &= set(brain_slice_indices(data[self.image_key], self.min_brain_fraction, self.dim, self.background))
        if self.label_key is not None and self.label_key in data:
            keep &= set(unambiguous_slice_indices(data[self.label_key], self.min_label_pixels, self.dim))
        return sorted(keep)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keep = self.positions(d)
        if not keep:
            name = source_name(d.get(self.image_key), str(self.image_key))
            raise InvalidInputError(f"{name}: no slice with brain (>= {self.min_brain_fraction:g} of the largest "
                                    f"slice's brain area) and without an ambiguous label area")
        for key in self.key_iterator(d):
            d[key] = self.keeper(d[key], keep)
        return d


class HemisphereStack(Transform):
    """Left and right halves of every slice of ``(C, H, W, D)`` side by side: ``(C, H // 2, W, 2 D)``.

    The halves are taken along spatial axis ``axis`` (1 = the first spatial axis, left-right in BraTS); slices
    ``0 ... D - 1`` of the result are the first halves, ``D ... 2 D - 1`` the second halves. A MetaTensor records
    ``meta["slice_indices"]`` (each original slice number twice) and ``meta["hemisphere"]`` (``"L"`` / ``"R"``).
    Used to train a slice classifier on half-slices: the contralateral half of a tumour slice is a tumour-free
    image at the same level.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, axis: int = 1) -> None:
        if axis < 1:
            raise ValueError(f"HemisphereStack: axis must be a spatial axis (>= 1), got {axis}")
        self.axis = axis

    def __call__(self, img):
        """``img`` (C, H, W, D) -> (C, H // 2, W, 2 D)."""
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        if img.ndim != 4 or self.axis > 2:
            raise InvalidInputError(f"{source_name(img)}: HemisphereStack needs (C, H, W, D) and a split axis 1 or 2,"
                                    f" got shape {tuple(img.shape)} and axis {self.axis}")
        original = original_slice_indices(img)
        depth = volume_depth(img)
        h = img.shape[self.axis] // 2
        first, second = img.narrow(self.axis, 0, h), img.narrow(self.axis, h, h)
        out = torch.cat([first, second], dim=-1)
        if isinstance(out, MetaTensor):
            out.meta["slice_indices"] = original + original
            out.meta["volume_depth"] = depth
            out.meta["hemisphere"] = ["L"] * len(original) + ["R"] * len(original)
        return out


class HemisphereStackd(MapTransform):
    """Dictionary version of :class:`HemisphereStack`."""

    backend = HemisphereStack.backend

    def __init__(self, keys: KeysCollection, axis: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = HemisphereStack(axis)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


_VOLUME_META = ("slice_indices", "hemisphere")


def _slice_spacing(volume, axis: int) -> float | None:
    """Spacing (mm) along tensor axis ``axis`` of a MetaTensor volume whose affine maps all its spatial axes."""
    if not isinstance(volume, MetaTensor) or volume.affine.shape[-1] - 1 != volume.ndim - 1:
        return None
    return float(affine_to_spacing(volume.affine, r=volume.ndim - 1)[axis - 1])


def _slice_item(d: Mapping, keys: Sequence[str], axis: int, position: int, original: Sequence[int]) -> dict:
    """One 2D item: ``keys`` sliced at ``position`` (slice axis removed), other keys shared, ``slice_index``; a
    MetaTensor slice records its volume's ``volume_depth`` (reports number slices "z of depth")."""
    item = {k: v for k, v in d.items() if k not in keys}  # shared, not copied: names, paths, scalars
    for key in keys:
        item[key] = d[key].select(axis, position)
        if isinstance(item[key], MetaTensor):  # per-volume lists do not collate across cases of different depth
            item[key].meta = {k: v for k, v in item[key].meta.items() if k not in _VOLUME_META}
            item[key].meta["volume_depth"] = volume_depth(d[key], axis)
            spacing = _slice_spacing(d[key], axis)
            if spacing is not None:  # the distance between slices, for volumes in mL in reports (medcnn.report)
                item[key].meta["slice_spacing"] = spacing
    item["slice_index"] = int(original[position])
    return item


class RandSliceByPosNegd(RandomizableTransform, MapTransform):
    """Sample ``num_samples`` 2D slices ``(C, H, W)`` of a volume ``(C, H, W, D)``, positive with probability
    ``pos / (pos + neg)``: positive = the slice of ``label_key`` is not empty.

    Returns a list of dicts (the ``patch_func`` of ``monai.data.PatchDataset``); each has the sampled slice of every
    key and ``slice_index`` (the volume's own number when recorded, else the position). When a volume has only
    positive or only negative slices, every sample comes from the class it has.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, keys: KeysCollection, label_key: str = "label", num_samples: int = 1, pos: float = 1.0,
                 neg: float = 1.0, dim: int = -1, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if pos < 0 or neg < 0 or pos + neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.label_key, self.num_samples, self.dim = label_key, int(num_samples), dim
        self.pos_ratio = pos / (pos + neg)
        self._positions: list[int] = []

    def randomize(self, presence: np.ndarray) -> None:  # type: ignore[override]
        """Choose the slice positions from the per-slice presence vector ``(D,)``."""
        positive, negative = np.flatnonzero(presence), np.flatnonzero(~presence)
        picks = []
        for _ in range(self.num_samples):
            want_positive = self.R.rand() < self.pos_ratio
            pool = positive if (want_positive and len(positive)) or not len(negative) else negative
            picks.append(int(pool[self.R.randint(len(pool))]))
        self._positions = picks

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        label = d[self.label_key]
        axis = _axis(label, self.dim)
        if label.shape[axis] == 0:
            raise InvalidInputError(f"{source_name(label, self.label_key)}: no slices to sample from")
        presence = (_slice_areas(label, axis) > 0).cpu().numpy()
        self.randomize(presence)
        keys = list(self.key_iterator(d))
        original = original_slice_indices(label, axis)
        return [_slice_item(d, keys, axis, p, original) for p in self._positions]


class SliceIterd:
    """Every slice of the volumes under ``keys`` as a 2D item ``(C, H, W)``: the ``patch_iter`` of
    ``monai.data.GridPatchDataset`` (yields ``(item, position)``).

    Each item holds the slice of every key, the other keys of the volume's dict shared (not deep-copied),
    ``slice_index`` (the original slice number recorded by :class:`SelectSlicesd` / :class:`SliceBlocks`, else the
    position) and, with ``id_format``, an ``id`` such as ``"{case}_slice{slice_index:03d}"``.
    """

    def __init__(self, keys: KeysCollection, dim: int = -1, id_format: str | None = None) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.dim, self.id_format = dim, id_format

    def __call__(self, data: Mapping[Hashable, object]) -> Iterator[tuple[dict, int]]:
        d = dict(data)
        first = d[self.keys[0]]
        axis = _axis(first, self.dim)
        original = original_slice_indices(first, axis)
        keys = [k for k in self.keys if k in d]
        for position in range(first.shape[axis]):
            item = _slice_item(d, keys, axis, position, original)
            if self.id_format:
                item["id"] = self.id_format.format(**item)
            yield item, position

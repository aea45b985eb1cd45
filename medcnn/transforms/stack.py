"""Pick one 2D slice out of a stack: ``(C, N, H, W)`` -> ``(C, H, W)``, the MONAI way (array + dictionary).

With ``context=k`` the slice comes with its ``k`` neighbours on either side as extra channels (2.5D input):
``(C, N, H, W)`` -> ``(C * (2k + 1), H, W)``, ordered from ``index - k`` to ``index + k`` for each channel.
Neighbours beyond the first or last slice repeat the edge slice, so every slice of a stack gets the same
number of channels and a network trained on the middle of a stack runs on its ends.

When the slices are separate files (a folder of slice TIFFs), the datalist names each slice's neighbours
(``[[file, page], ...]``, see :func:`medcnn.data.lgg.add_slice_neighbours`) and :class:`LoadNeighbourSlicesd`
reads them and appends them with :class:`StackSlices`: ``(C, H, W)`` -> ``(C * (1 + n), H, W)``, the slice's own
channels first (so channel ``c`` is still sequence ``c`` of the slice itself), then the neighbours in the listed
order. The same datalist function names pages of a multi-page volume, so slice files and a volume give the same
input.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, SqueezeDim, Transform
from monai.utils import convert_to_tensor, ensure_tuple_rep

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["SelectSlice", "SelectSliced", "StackSlices", "LoadNeighbourSlicesd"]


class SelectSlice(Transform):
    """Return slice ``index`` of spatial axis ``dim`` (0 = the stack axis) of a channel-first ``(C, N, H, W)`` array.

    The result is ``(C, H, W)``, or ``(C * (2 * context + 1), H, W)`` with ``context`` neighbours on either
    side (edge slices repeated at the ends of the stack); a MetaTensor keeps its metadata, its affine loses
    the selected axis (as ``SqueezeDim(update_meta=True)`` does) and ``meta["slice_index"]`` records ``index``.
    An index outside the stack raises :class:`InvalidInputError` naming the source file.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, dim: int = 0, context: int = 0) -> None:
        if int(context) < 0:
            raise ValueError(f"context must be >= 0 neighbouring slices, got {context}")
        if dim not in (0, 1, 2):
            raise ValueError(f"dim must be a spatial axis 0, 1 or 2 of a (C, N, H, W) stack, got {dim}")
        self.dim = dim
        self.context = int(context)

    def __call__(self, img, index: int):
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        axis = self.dim + 1
        if img.ndim != 4:
            raise InvalidInputError(
                f"{source_name(img)}: expected a channel-first stack of 2D slices (C, N, H, W), "
                f"got shape {tuple(img.shape)}"
            )
        n = img.shape[axis]
        index = int(index)
        if not -n <= index < n:
            raise InvalidInputError(f"{source_name(img)}: slice {index} is outside the stack of {n} slices")
        index %= n
        out = SqueezeDim(dim=axis, update_meta=True)(img.narrow(axis, index, 1))
        if self.context:
            # neighbours index-k..index+k clamped to the stack; (C, 2k+1, H, W) -> (C * (2k+1), H, W)
            order = torch.arange(index - self.context, index + self.context + 1, device=img.device).clamp(0, n - 1)
            window = torch.movedim(convert_to_tensor(img, track_meta=False).index_select(axis, order), axis, 1)
            window = window.reshape(-1, *window.shape[2:])
            if isinstance(out, MetaTensor):
                window = MetaTensor(window, meta=out.meta, applied_operations=out.applied_operations)
            out = window
        if isinstance(out, MetaTensor):
            out.meta["slice_index"] = index
        return out


class SelectSliced(MapTransform):
    """Dictionary version of :class:`SelectSlice`: the index is read from ``data[index_key]`` (default ``"slice"``).

    ``context`` is one number for all keys or one per key, e.g. ``context=[1, 0]`` for keys ``["image", "label"]``
    gives a three-channel 2.5D image and the single label slice that goes with it.
    """

    backend = SelectSlice.backend

    def __init__(
        self,
        keys: KeysCollection,
        index_key: str = "slice",
        dim: int = 0,
        context: int | Sequence[int] = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key = index_key
        self.selectors = [SelectSlice(dim=dim, context=c) for c in ensure_tuple_rep(context, len(self.keys))]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.index_key not in d:
            raise InvalidInputError(f"data has no '{self.index_key}' entry naming the slice to select")
        for key, selector in self.key_iterator(d, self.selectors):
            d[key] = selector(d[key], d[self.index_key])
        return d


class StackSlices(Transform):
    """Append neighbouring slices to a slice as channels: ``(C, H, W)`` + n x ``(C, H, W)`` -> ``(C * (1 + n), H, W)``.

    The slice's own channels come first, then each neighbour's in the given order (only ``channels`` of each
    neighbour when given, e.g. ``[1]`` for the FLAIR of an LGG slice: ``(C + n * len(channels), H, W)``); a
    MetaTensor keeps the slice's metadata. A neighbour of another shape (size or number of channels) raises
    :class:`InvalidInputError` naming the neighbour's file and the slice's file.
    """

    backend = [torch.Tensor.__name__]

    def __init__(self, channels: Sequence[int] | None = None) -> None:
        self.channels = None if channels is None else [int(c) for c in channels]

    def __call__(self, img, neighbours: Sequence) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        parts = [convert_to_tensor(img, track_meta=False)]
        for nb in neighbours:
            t = convert_to_tensor(nb, track_meta=False)
            if tuple(t.shape) != tuple(img.shape):
                raise InvalidInputError(
                    f"{source_name(nb)}: neighbouring slice has shape {tuple(t.shape)} (channel-first) but the "
                    f"slice {source_name(img)} has {tuple(img.shape)}; neighbours must match the slice"
                )
            if self.channels is not None:
                t = t[self.channels]
            parts.append(t.to(dtype=parts[0].dtype, device=parts[0].device))
        out = torch.cat(parts, dim=0)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out


class LoadNeighbourSlicesd(MapTransform):
    """Read the neighbouring slices named in ``data[neighbours_key]`` and append them to ``data[key]`` as channels.

    ``data[neighbours_key]`` is a list of ``[file, page]`` pairs (a slice file has page 0, a page of a multi-page
    volume its index), read with :class:`medcnn.data.TiffPagesReader` (channel-first, ``SelectSlice`` of the page)
    and stacked by :class:`StackSlices` (``channels``: the neighbours' channels kept); the entry is then removed.
    Items without the entry pass unchanged, so a 2D pipeline (``context`` 0) and a 2.5D one share this list. A
    missing, corrupt or mismatched neighbour raises an error naming its file.
    """

    backend = StackSlices.backend

    def __init__(self, keys: KeysCollection = "image", neighbours_key: str = "image_neighbours",
                 channels: Sequence[int] | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from medcnn.data.tiff_pages import TiffPagesReader  # medcnn.data imports this module

        self.neighbours_key = neighbours_key
        self.reader = TiffPagesReader()
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)
        self.select = SelectSlice()
        self.stack = StackSlices(channels)

    def _load(self, file: str, page: int):
        return self.select(self.loader(str(file), reader=self.reader), int(page))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        listed = d.pop(self.neighbours_key, None)
        if not listed:
            return d
        try:
            pairs = [(str(f), int(p)) for f, p in listed]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"'{self.neighbours_key}' must list [file, page] pairs, got {listed!r}") from exc
        neighbours = [self._load(f, p) for f, p in pairs]
        for key in self.key_iterator(d):
            d[key] = self.stack(d[key], neighbours)
        return d

"""A Compose whose random tail runs on plain tensors: file-checked MetaTensor steps first, augmentation untracked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["PlainTailCompose"]


class PlainTailCompose(Compose):
    """``Compose`` that runs its transforms from ``untracked_from`` on with MetaTensor tracking off.

    Training pipelines cache their deterministic, file-checked steps (which need metadata: channel layout, file
    names in errors) and augment per sample. Augmenting MetaTensors costs per-operation metadata handling and feeds
    the network MetaTensors; ``monai.data.set_track_meta(False)`` around the whole run avoids that but also strips
    metadata from uncached loading (``cache_rate`` < 1) and from validation. This class turns tracking off only
    for its tail — by default from the first random transform, where ``CacheDataset``'s cache ends — and restores
    the previous setting afterwards, so the tail's outputs are plain tensors. The transform list stays flat, so
    ``set_random_state`` seeds every transform exactly as a plain ``Compose`` of the same list would.

    The switch is process-global: use it with ``DataLoader`` (workers are processes), not with loaders that run
    transforms in threads while the main thread needs metadata.
    """

    def __init__(
        self,
        transforms: Sequence[Callable] | Callable | None = None,
        untracked_from: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(transforms, **kwargs)
        if untracked_from is None:
            first = self.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
            untracked_from = len(self.transforms) if first is None else first
        if not 0 <= untracked_from <= len(self.transforms):
            raise ValueError(f"untracked_from={untracked_from} is outside 0..{len(self.transforms)} transforms")
        self.untracked_from = int(untracked_from)

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False,
                 lazy: bool | None = None) -> Any:
        """Apply ``transforms[start:end]``: those before ``untracked_from`` as usual, the rest without tracking."""
        end = len(self.transforms) if end is None else end
        split = min(max(self.untracked_from, start), end)
        data = input_
        if start < split:
            data = super().__call__(data, start=start, end=split, threading=threading, lazy=lazy)
        if split < end:
            previous = get_track_meta()
            set_track_meta(False)
            try:
                data = super().__call__(data, start=split, end=end, threading=threading, lazy=lazy)
            finally:
                set_track_meta(previous)
        return data

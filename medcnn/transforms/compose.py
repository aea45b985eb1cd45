"""A Compose whose random tail runs on plain tensors: file-checked MetaTensor steps first, augmentation untracked."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["PlainTailCompose", "untracked"]

_lock = threading.Lock()
_depth = 0  # untracked sections running now, in any thread of this process
_saved = True  # the tracking setting before the first of them


@contextmanager
def untracked() -> Iterator[None]:
    """MetaTensor tracking off while any thread of the process is inside this block; the setting from before the
    first block is restored when the last one ends (also on an error).

    ``monai.data.set_track_meta`` is process-wide: a save / set / restore per block would, with blocks overlapping
    in several loader threads (``ThreadDataLoader``, ``use_thread_workers``), restore the value another block set
    and could leave tracking off for good. Counting the blocks under a lock restores exactly once.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = get_track_meta()
            set_track_meta(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                set_track_meta(_saved)


class PlainTailCompose(Compose):
    """``Compose`` that runs its transforms from ``untracked_from`` on with MetaTensor tracking off.

    Training pipelines cache their deterministic, file-checked steps (which need metadata: channel layout, file
    names in errors) and augment per sample. Augmenting MetaTensors costs per-operation metadata handling and feeds
    the network MetaTensors; ``monai.data.set_track_meta(False)`` around the whole run avoids that but also strips
    metadata from uncached loading (``cache_rate`` < 1) and from validation. This class turns tracking off only
    for its tail — by default from the first random transform, where ``CacheDataset``'s cache ends — and restores
    the previous setting afterwards, so the tail's outputs are plain tensors. The transform list stays flat, so
    ``set_random_state`` seeds every transform exactly as a plain ``Compose`` of the same list would.

    This is medcnn's one way to train on plain tensors (every bundle's ``train#preprocessing``), rather than turning
    tracking off around ``trainer.run()``: that also stripped the metadata of uncached loading (``cache_rate`` < 1:
    ``EnsureChannelFirstd`` needs it) and of the validation runs inside training. Under ``torchrun`` each rank is
    a process with its own setting. The switch itself is process-wide (MONAI has no per-thread setting): while a
    tail runs in a loader thread (``ThreadDataLoader``) the main thread's training step also runs untracked, which
    it does on plain tensors anyway; overlapping tails are counted (:func:`untracked`), so tracking comes back
    when the last one ends. Do not run such a loader while another thread needs metadata.
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
            with untracked():
                data = super().__call__(data, start=split, end=end, threading=threading, lazy=lazy)
        return data

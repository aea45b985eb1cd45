"""MONAI's checkpoint handlers, made safe: file-named load errors, atomic saves (a killed run leaves no half file)."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from medcnn.networks.weights import load_weights

__all__ = ["CheckpointLoader", "CheckpointSaver"]


class CheckpointLoader(_MonaiCheckpointLoader):
    """``monai.handlers.CheckpointLoader`` that first checks the file with :func:`medcnn.networks.load_weights`.

    A zero-byte or truncated ``model.pt`` otherwise stops a bundle with a bare ``EOFError`` or a zip-format
    ``RuntimeError``; here it raises :class:`medcnn.networks.CheckpointError` naming the file and the problem.
    Arguments are those of MONAI's loader (``load_path``, ``load_dict``, ``map_location``, ``strict``, ...).
    """

    def __call__(self, engine: Engine) -> None:
        load_weights(self.load_path, map_location="cpu")  # raises CheckpointError naming the file
        super().__call__(engine)


class CheckpointSaver(_MonaiCheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically (temporary file, then rename).

    MONAI's saver writes in place (``atomic=False``, for file permissions Ignite now sets itself), so a run killed
    while saving leaves a truncated ``model.pt`` where the previous best was. Here every file (final, key-metric,
    interval) goes through Ignite's atomic ``DiskSaver`` path, and a fixed-name file (``key_metric_filename`` /
    ``final_filename``) is not removed before its replacement is written: the previous best stays whole until the
    new one is complete. Files stay readable by group and others. Arguments are MONAI's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            handler = getattr(checkpoint, "save_handler", None)
            if handler is not None and hasattr(handler, "_atomic"):
                handler._atomic = True
            if handler is not None and getattr(handler, "filename", None) is not None:
                # a fixed name (model.pt): Ignite removes the old file before writing the new one, which would
                # leave no weights at all if the run is killed in between; the atomic rename replaces it instead
                handler.remove = _keep_until_replaced


def _keep_until_replaced(filename: str) -> None:
    """``remove`` of a fixed-name saver: nothing to do, the next atomic save replaces the file."""

"""MONAI's ``CheckpointLoader`` with a file-named error for a missing, empty, truncated or unsafe weights file."""

from __future__ import annotations

from ignite.engine import Engine
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader

from medcnn.networks.weights import load_weights

__all__ = ["CheckpointLoader"]


class CheckpointLoader(_MonaiCheckpointLoader):
    """``monai.handlers.CheckpointLoader`` that first checks the file with :func:`medcnn.networks.load_weights`.

    A zero-byte or truncated ``model.pt`` otherwise stops a bundle with a bare ``EOFError`` or a zip-format
    ``RuntimeError``; here it raises :class:`medcnn.networks.CheckpointError` naming the file and the problem.
    Arguments are those of MONAI's loader (``load_path``, ``load_dict``, ``map_location``, ``strict``, ...).
    """

    def __call__(self, engine: Engine) -> None:
        load_weights(self.load_path, map_location="cpu")  # raises CheckpointError naming the file
        super().__call__(engine)

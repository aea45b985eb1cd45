"""Weights files: load a state dict safely (``weights_only=True``) with an error that names the file.

``torch.load`` on a zero-byte file raises a bare ``EOFError``, on a truncated one a ``RuntimeError`` about a zip
central directory, and on a pickle holding code an ``UnpicklingError`` about PyTorch 2.6 defaults; none says which
file. :func:`load_weights` turns each into a :class:`CheckpointError` naming the file and the problem, and never
unpickles arbitrary objects. :class:`medcnn.handlers.CheckpointLoader` uses it in the bundles, and the MONAI Label
app uses it to serve the bundle weights. :func:`load_pretrained` initialises a network from another run's weights
(pre-training -> fine-tuning) and refuses a state dict that does not fit it, naming the file and the tensors.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_weights", "load_pretrained"]


class CheckpointError(ValueError):
    """A weights file is missing, empty, truncated, not a PyTorch file, or holds more than tensors."""


def load_weights(
    path: str | os.PathLike, map_location: Any = "cpu", key: str | None = None
) -> Mapping[str, Any]:
    """The checkpoint at ``path`` as a mapping, loaded with ``torch.load(..., weights_only=True)``.

    With ``key`` (e.g. ``"model"``), ``checkpoint[key]`` is returned when the checkpoint has that key (a full
    training checkpoint), else the checkpoint itself (a bare state dict). Raises :class:`CheckpointError` naming
    the file when it is missing, empty, truncated or corrupt, or refused by ``weights_only`` (it holds objects
    other than tensors and plain containers).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: weights file is empty (0 bytes); was a copy or a training run interrupted?")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises EOFError, RuntimeError, IndexError, UnpicklingError, ...
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            reason = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("WeightsUnpickler")), "")
            raise CheckpointError(
                f"{path}: refused, the file holds objects other than tensors (only weights are loaded, "
                f"weights_only=True){': ' + reason if reason else ''}"
            ) from exc
        first = text.splitlines()[0].split(". ")[0] if text else "unexpected end of data"
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({size} bytes; truncated or corrupt?): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(checkpoint)}")
    if key is not None and isinstance(checkpoint.get(key), Mapping):
        checkpoint = checkpoint[key]
    return checkpoint


def load_pretrained(
    network: torch.nn.Module, path: str | os.PathLike, map_location: Any = "cpu", key: str | None = "model"
) -> torch.nn.Module:
    """``network`` with the weights of ``path`` loaded strictly (every tensor present, same names, same shapes).

    For initialising a network before training from another run's weights (e.g. pre-training on another dataset,
    then fine-tuning): a bundle overrides its ``network`` id with this call, so a ``--resume`` of the fine-tuning
    run (the training checkpoint, loaded when the trainer starts) still replaces these weights. Why not MONAI's
    ``CheckpointLoader``: it is an engine handler that loads when the trainer starts (a bundle would have to
    repeat its whole ``train#handlers`` list to put it before the resume handler), and a state dict of the wrong
    architecture stops it with PyTorch's ``RuntimeError`` listing every tensor but not the file. Here a wrong
    state dict raises :class:`CheckpointError` naming the file, the number of tensors that do not fit and the first
    few of them (missing, unexpected, or ``name: file shape vs network shape``); nothing is loaded then.
    """
    path = Path(path).expanduser()
    state = load_weights(path, map_location=map_location, key=key)
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the network" for k in own
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + wrong
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems) - 4} more)" if len(problems) > 4 else "")
        raise CheckpointError(f"{path}: the weights do not fit the network {type(network).__name__} "
                              f"({len(problems)} tensor(s): {shown}); was it trained with another network_def "
                              f"(channels, stages, classes)?")
    network.load_state_dict(state, strict=True)
    return network

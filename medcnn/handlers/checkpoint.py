"""Checkpoints that lose nothing: the resumable training state (:class:`TrainingCheckpoint`, written atomically every
epoch), MONAI's best-weights saver made atomic (:class:`CheckpointSaver`), and a loader whose errors name the file
(:class:`CheckpointLoader`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from medcnn.networks.weights import load_weights

__all__ = [
    "CheckpointLoader",
    "CheckpointSaver",
    "TrainingCheckpoint",
    "TrainingCheckpointError",
    "atomic_torch_save",
]

logger = logging.getLogger(__name__)


class TrainingCheckpointError(RuntimeError):
    """A training state file cannot be used to resume (missing, truncated, or from another network / recipe)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``.

    A process killed at any moment leaves either the previous complete file or the new complete one, never a
    truncated file (``os.replace`` is atomic within a file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module of a (Distributed)DataParallel network, so the state loads with or without the wrapper."""
    return network.module if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) \
        else network


def _plain(value: Any) -> Any:
    """Numbers from metrics (tensor, numpy scalar) as Python floats, so the state loads with ``weights_only``."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return float(value)


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


class TrainingCheckpoint:
    """Attach to a trainer: after every epoch (after validation, if the validation handler is attached first) write
    everything needed to continue the run to ``path``; with ``resume=True`` load it when the run starts.

    The state holds the network, optimizer, LR scheduler, the trainer's counters (epoch, iteration), the early
    stopping counter and best score, the evaluator's best metric and the best-checkpoint saver's record of it, so a
    resumed run ends after the same number of epochs and keeps the best weights of the whole run, not only of the
    part after the restart. An interrupted epoch is repeated from its start.

    Why not MONAI's ``CheckpointSaver`` / ``CheckpointLoader``: the saver writes non-atomically (``atomic=False``),
    so a kill during saving can leave a truncated file, and neither records the early-stopping and best-metric
    state; this handler does both and reports an unusable file by name before anything is overwritten.

    Args:
        path: the training state file (e.g. ``<ckpt_dir>/training_state.pt``); only rank 0 writes it.
        network, optimizer: what the trainer updates (a DDP-wrapped network is saved without its wrapper).
        lr_scheduler: optional LR scheduler.
        evaluator: optional validation engine; its ``best_metric`` / ``best_metric_epoch`` are kept.
        validation_handlers: the validation engine's handlers (``@validate#handlers``): the MONAI
            ``EarlyStopHandler`` (counter, best score) and the key-metric ``CheckpointSaver`` (its record of the best
            weights) among them are kept. Found by type, so a config that replaces the list (e.g. ``evaluate.json``)
            does not break the reference.
        resume: load ``path`` at the start of the run; a missing or unreadable file is an error naming it.
        map_location: passed to ``torch.load`` (e.g. the ``device`` of the bundle), so a GPU run resumes on CPU.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        validation_handlers: Sequence | None = None,
        resume: bool = False,
        map_location: Any = None,
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        from monai.handlers import CheckpointSaver, EarlyStopHandler

        handlers = list(validation_handlers or [])
        self.early_stop = next((h for h in handlers if isinstance(h, EarlyStopHandler)), None)
        self.best_checkpoint = next((h for h in handlers if isinstance(h, CheckpointSaver)
                                     and getattr(h, "_key_metric_checkpoint", None) is not None), None)
        self.resume = bool(resume)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # -- the parts MONAI keeps in private attributes (checked by tests/test_training_checkpoint.py) -----------------
    def _early_stopping(self):
        """The Ignite ``EarlyStopping`` inside MONAI's ``EarlyStopHandler`` (created by ``set_trainer``)."""
        return getattr(self.early_stop, "_handler", None) if self.early_stop is not None else None

    def _best_saver(self):
        """The Ignite ``Checkpoint`` that MONAI's ``CheckpointSaver`` uses for the key-metric file (MONAI offers
        ``load_state_dict`` for it but no ``state_dict``)."""
        return getattr(self.best_checkpoint, "_key_metric_checkpoint", None) if self.best_checkpoint else None

    def state_dict(self, engine: Engine) -> dict:
        """Everything :meth:`load` restores, as plain tensors and numbers (loadable with ``weights_only=True``)."""
        state: dict[str, Any] = {
            "format": "medcnn.training_state/1",
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dict(engine.state_dict()),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.evaluator is not None:
            state["evaluator"] = {"best_metric": float(self.evaluator.state.best_metric),
                                  "best_metric_epoch": int(self.evaluator.state.best_metric_epoch)}
        if self._early_stopping() is not None:
            state["early_stop"] = {k: _plain(v) for k, v in self._early_stopping().state_dict().items()}
        if self._best_saver() is not None:
            saved = self._best_saver().state_dict()["_saved"]
            state["best_checkpoint"] = {"_saved": [(float(p), str(f)) for p, f in saved]}
        return state

    def save(self, engine: Engine) -> None:
        """Write the training state atomically (rank 0 only)."""
        if _is_main_process():
            atomic_torch_save(self.state_dict(engine), self.path)

    def load(self, engine: Engine) -> None:
        """Restore the training state from :attr:`path` into the network, optimizer, trainer and handlers."""
        if not self.path.is_file():
            raise TrainingCheckpointError(f"{self.path}: no training state to resume from (resume was requested; "
                                          "start without resume, or point ckpt_dir at the interrupted run's folder)")
        try:
            state = torch.load(self.path, map_location=self.map_location, weights_only=True)
        except Exception as exc:  # truncated, zero bytes, not a torch file, or unsafe pickle content
            raise TrainingCheckpointError(f"{self.path}: not a readable training state ({type(exc).__name__}: "
                                          f"{exc}); it was left untouched") from exc
        if not isinstance(state, dict) or state.get("format") != "medcnn.training_state/1":
            raise TrainingCheckpointError(f"{self.path}: not a medcnn training state file (weights only? use "
                                          "CheckpointLoader for those)")
        try:
            _unwrap(self.network).load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_scheduler is not None and "lr_scheduler" in state:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingCheckpointError(f"{self.path}: does not match this bundle's network / optimizer "
                                          f"({exc})") from exc
        trainer = dict(state["trainer"])
        max_epochs = engine.state.max_epochs
        done = int(trainer["iteration"]) // max(1, int(trainer["epoch_length"]))
        if done >= max_epochs:
            raise TrainingCheckpointError(f"{self.path}: the run already completed {done} of "
                                          f"max_epochs={max_epochs} epochs; raise max_epochs to train further")
        if int(trainer["epoch_length"]) != engine.state.epoch_length:
            raise TrainingCheckpointError(f"{self.path}: saved with {trainer['epoch_length']} iterations per epoch, "
                                          f"this run has {engine.state.epoch_length} (different data or batch size)")
        trainer["max_epochs"] = max_epochs
        engine.load_state_dict(trainer)
        if self.evaluator is not None and "evaluator" in state:
            self.evaluator.state.best_metric = state["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        if self._early_stopping() is not None and "early_stop" in state:
            self._early_stopping().load_state_dict(state["early_stop"])
        if self.best_checkpoint is not None and "best_checkpoint" in state:
            self.best_checkpoint.load_state_dict(state["best_checkpoint"])
        logger.info("resumed from %s after epoch %d of %d", self.path, done, max_epochs)


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

"""Checkpoints that lose nothing: the resumable training state (:class:`TrainingCheckpoint`, written atomically every
epoch), MONAI's best-weights saver made atomic (:class:`CheckpointSaver`), and a loader whose errors name the file
(:class:`CheckpointLoader`)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from medcnn.config import flag
from medcnn.networks.weights import CheckpointError, load_weights

__all__ = [
    "CheckpointLoader",
    "CheckpointSaver",
    "TrainingCheckpoint",
    "TrainingCheckpointError",
    "atomic_torch_save",
    "capture_random_state",
    "restore_random_state",
    "training_state_completed",
]

logger = logging.getLogger(__name__)


_FORMAT = "medcnn.training_state/2"  # /1 lacked the random state; still loadable


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


# attributes that hold data, not random generators: never walked (a cache can hold thousands of volumes)
_NOT_WALKED = frozenset({"data", "_cache", "_hash_keys", "_read_env", "_cache_other"})
_LEAVES = (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray, torch.nn.Module)


def _generators(roots: dict[str, Any], max_depth: int = 12) -> dict[str, Any]:
    """Every random generator (NumPy ``RandomState``, ``torch.Generator``, ``random.Random``) reachable from the
    ``roots`` through attributes, lists and dicts, once each, keyed by its attribute path, in a fixed order.

    MONAI gives each random transform its own ``RandomState`` ``R``, and nested ones their own (``RandAffined`` ->
    ``RandAffine`` -> ``RandAffineGrid``); ``Compose.set_random_state`` only re-seeds them, it cannot read them back,
    so the walk mirrors ``monai.data.utils.set_rnd`` but goes inside randomizable objects too.
    """
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        if depth > max_depth or id(obj) in seen:
            return
        if isinstance(obj, (np.random.RandomState, torch.Generator, random.Random)):
            seen.add(id(obj))
            found[path] = obj
            return
        if isinstance(obj, _LEAVES) or isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{path}.{i}", depth + 1)
        elif isinstance(obj, dict):
            for key, item in obj.items():
                if isinstance(key, str):
                    visit(item, f"{path}.{key}", depth + 1)
        elif hasattr(obj, "__dict__"):
            attrs = dict(vars(obj))
            if isinstance(getattr(obj, "R", None), np.random.RandomState):
                attrs.setdefault("R", obj.R)  # a transform never re-seeded uses the class-level RandomState
            for key, item in attrs.items():
                if key not in _NOT_WALKED and not key.startswith("__"):
                    visit(item, f"{path}.{key}", depth + 1)

    for name, root in roots.items():
        visit(root, name, 0)
    return found


def _numpy_state(state: tuple) -> dict:
    """A NumPy ``RandomState.get_state()`` tuple as tensors and numbers (``torch.load(weights_only=True)`` reads it)."""
    name, keys, pos, has_gauss, cached = state
    return {"numpy": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_tuple(state: dict) -> tuple:
    """The inverse of :func:`_numpy_state`."""
    return (state["numpy"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


def _generator_state(gen: Any) -> Any:
    """The state of one generator as tensors and numbers (``torch.load(weights_only=True)`` reads it back)."""
    if isinstance(gen, np.random.RandomState):
        return _numpy_state(gen.get_state())
    if isinstance(gen, torch.Generator):
        return gen.get_state()
    return gen.getstate()  # random.Random: (version, tuple of ints, gauss_next)


def _set_generator_state(gen: Any, state: Any) -> None:
    if isinstance(gen, np.random.RandomState):
        gen.set_state(_numpy_tuple(state))
    elif isinstance(gen, torch.Generator):
        gen.set_state(state)
    else:
        gen.setstate(state)


def _loader_generators(dataloader: Any) -> dict[str, Any]:
    """The generators a training data loader draws from: its dataset's transforms, sampler and own generator."""
    if dataloader is None:
        return {}
    return _generators({name: getattr(dataloader, name, None)
                        for name in ("dataset", "sampler", "batch_sampler", "generator")})


def capture_random_state(dataloader: Any = None) -> dict:
    """Every random state a training epoch draws from, as tensors and numbers: Python's ``random``, NumPy's and
    torch's global generators (CUDA's too when initialised), and each generator inside ``dataloader`` (the
    ``RandomState`` of every MONAI random transform of its dataset, the sampler's / loader's ``torch.Generator``).

    With ``num_workers > 0`` (not persistent) the workers re-seed their transforms at every epoch from torch's global
    generator, which is captured; a ``DistributedSampler`` shuffles from its seed and the epoch number, which the
    trainer state holds.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "loader": {path: _generator_state(gen) for path, gen in _loader_generators(dataloader).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict, dataloader: Any = None) -> list[str]:
    """Put back what :func:`capture_random_state` recorded; returns the generator paths of ``dataloader`` that did
    not match the record (added or removed transforms), which keep their current state."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("loader", {})
    current = _loader_generators(dataloader)
    for path, gen in current.items():
        if path in saved:
            _set_generator_state(gen, saved[path])
    return sorted(set(current) ^ set(saved))


def _dataloader(engine: Engine) -> Any:
    """The training data loader of ``engine`` (MONAI workflows keep it as ``data_loader``)."""
    loader = getattr(engine, "data_loader", None)
    return loader if loader is not None else getattr(engine.state, "dataloader", None)


def _gather_to_all(obj: Any) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class TrainingCheckpoint:
    """Attach to a trainer: after every epoch (after validation, if the validation handler is attached first) write
    everything needed to continue the run to ``path``; with ``resume=True`` load it when the run starts.

    The state holds the network, optimizer, LR scheduler, the trainer's counters (epoch, iteration), the early
    stopping counter and best score, the evaluator's best metric and the best-checkpoint saver's record of it, so a
    resumed run ends after the same number of epochs and keeps the best weights of the whole run, not only of the
    part after the restart. It also holds every random state the next epoch draws from (:func:`capture_random_state`
    of every rank: global generators, each random transform's ``RandomState``, the loader's generators), so the
    resumed epochs shuffle and augment exactly as the uninterrupted run would have: on the same device and thread
    count a resumed run ends with the same weights. An interrupted epoch is repeated from its start.

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
        self.resume = flag(resume, "TrainingCheckpoint: resume")
        self.map_location = map_location
        self._completed = False

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.mark_completed)

    def mark_completed(self, engine: Engine) -> None:
        """Write the state once more with ``"completed": True`` when the run ends (all epochs, or stopped early).

        Without it, a run stopped early looks like an interrupted one: resuming it would train past the early stop
        and end with other weights than the run that stopped.
        """
        self._completed = True
        self.save(engine)

    # -- the parts MONAI keeps in private attributes (checked by tests/test_training_checkpoint.py) -----------------
    def _early_stopping(self):
        """The Ignite ``EarlyStopping`` inside MONAI's ``EarlyStopHandler`` (created by ``set_trainer``)."""
        return getattr(self.early_stop, "_handler", None) if self.early_stop is not None else None

    def _best_saver(self):
        """The Ignite ``Checkpoint`` that MONAI's ``CheckpointSaver`` uses for the key-metric file (MONAI offers
        ``load_state_dict`` for it but no ``state_dict``)."""
        return getattr(self.best_checkpoint, "_key_metric_checkpoint", None) if self.best_checkpoint else None

    def state_dict(self, engine: Engine, random_states: list | None = None) -> dict:
        """Everything :meth:`load` restores, as plain tensors and numbers (loadable with ``weights_only=True``);
        ``random_states``: :func:`capture_random_state` of every rank, in rank order."""
        state: dict[str, Any] = {
            "format": _FORMAT,
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dict(engine.state_dict()),
        }
        if random_states is not None:
            state["random_state"] = random_states
        scaler = getattr(engine, "scaler", None)  # MONAI's trainers keep the AMP GradScaler here
        if scaler is not None and scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
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
        if self._completed:
            state["completed"] = True
        return state

    def save(self, engine: Engine) -> None:
        """Write the training state atomically (rank 0 only, with the random state of every rank)."""
        random_states = _gather_to_all(capture_random_state(_dataloader(engine)))  # a collective: every rank joins
        if _is_main_process():
            atomic_torch_save(self.state_dict(engine, random_states), self.path)

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
        if not isinstance(state, dict) or state.get("format") not in (_FORMAT, "medcnn.training_state/1"):
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
        if state.get("completed"):
            raise TrainingCheckpointError(f"{self.path}: the run already ended after epoch {done} of {max_epochs} "
                                          "(stopped early); resuming would train past its early stop. Its best "
                                          "weights are in place; start a new run to train again")
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
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and scaler.is_enabled() and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        self._restore_random_state(state.get("random_state"), engine)
        logger.info("resumed from %s after epoch %d of %d", self.path, done, max_epochs)

    def _restore_random_state(self, random_states: list | None, engine: Engine) -> None:
        """This rank's random state as it was after the saved epoch, so the resumed epochs draw the same shuffles
        and augmentations as an uninterrupted run; a warning says when that cannot be done."""
        world = torch.distributed.get_world_size() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 1
        if random_states is None:
            logger.warning("%s: holds no random state (written by an older medcnn): the resumed epochs shuffle and "
                           "augment differently from the interrupted run", self.path)
            return
        if len(random_states) != world:
            logger.warning("%s: written by %d process(es), this run has %d: the random state is not restored, the "
                           "resumed epochs shuffle and augment differently", self.path, len(random_states), world)
            return
        rank = torch.distributed.get_rank() if world > 1 else 0
        unmatched = restore_random_state(random_states[rank], _dataloader(engine))
        if unmatched:
            logger.warning("%s: the augmentation pipeline changed since it was written; these random generators "
                           "were not restored: %s", self.path, ", ".join(unmatched))


def training_state_completed(path: str | os.PathLike) -> bool:
    """Whether the training state file ``path`` records a run that ended (all epochs or an early stop).

    Raises:
        TrainingCheckpointError: naming the file when it is not a readable medcnn training state.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, zero bytes, not a torch file
        raise TrainingCheckpointError(f"{path}: not a readable training state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "trainer" not in state:
        raise TrainingCheckpointError(f"{path}: not a medcnn training state file")
    trainer = state["trainer"]
    done = int(trainer["iteration"]) // max(1, int(trainer["epoch_length"]))
    return bool(state.get("completed")) or done >= int(trainer.get("max_epochs") or done + 1)


class CheckpointLoader(_MonaiCheckpointLoader):
    """``monai.handlers.CheckpointLoader`` that first checks the file with :func:`medcnn.networks.load_weights`.

    A zero-byte or truncated ``model.pt`` otherwise stops a bundle with a bare ``EOFError`` or a zip-format
    ``RuntimeError``, and weights of another network (e.g. ``--ckpt_path`` of a 3-channel model) with PyTorch's
    ``size mismatch`` list; here both raise :class:`medcnn.networks.CheckpointError` naming the file and the problem.
    Arguments are those of MONAI's loader (``load_path``, ``load_dict``, ``map_location``, ``strict``, ...).
    """

    def __call__(self, engine: Engine) -> None:
        load_weights(self.load_path, map_location="cpu")  # raises CheckpointError naming the file
        try:
            super().__call__(engine)
        except RuntimeError as exc:  # torch's load_state_dict: "Error(s) in loading state_dict ..." (size mismatch)
            if "state_dict" not in str(exc):
                raise
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            shown = "; ".join(lines[1:4]) + (f"; ... ({len(lines) - 4} more)" if len(lines) > 4 else "")
            raise CheckpointError(f"{self.load_path}: the weights do not fit the network ({shown}); was it trained "
                                  "with another network_def (channels, stages, classes)?") from exc


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

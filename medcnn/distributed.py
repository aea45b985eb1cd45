"""Multi-process training with ``torchrun``: the few helpers every bundle's ``configs/multi_gpu_train.json`` uses.

torch.distributed (launched by ``torchrun``) is the engine; these functions only choose the backend and device
from the environment ``torchrun`` sets, decide which handlers run on which rank, and gather per-rank lists for
figures that span the whole dataset. Outside a ``torchrun`` launch every function is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from medcnn.config import flag

__all__ = [
    "destroy_process_group",
    "gather_lists",
    "handlers_for_this_rank",
    "init_process_group",
    "is_distributed",
    "local_device",
    "rank",
    "sync_batchnorm",
]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_device(prefer_cuda: bool = True) -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (``LOCAL_RANK`` is set by ``torchrun``)."""
    if prefer_cuda and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_process_group(device: torch.device | str, quiet_other_ranks: bool = True) -> None:
    """Join the process group ``torchrun`` describes: NCCL for CUDA devices, Gloo on the CPU; sets the CUDA device,
    and with ``quiet_other_ranks`` lets only rank 0 log below WARNING, so the log reads like a one-process run.

    Raises ``RuntimeError`` naming the missing variables when the process was not started by ``torchrun``.
    """
    device = torch.device(device)
    if dist.is_initialized():
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"multi_gpu_train.json must be launched with torchrun (missing environment {missing}); "
                           "e.g. torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run ...")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if quiet_other_ranks and dist.get_rank() > 0:
        # epoch summaries and progress come from rank 0; other ranks report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).setLevel(logging.WARNING)


def sync_batchnorm(network: torch.nn.Module, enabled: bool | str, device: torch.device | str) -> torch.nn.Module:
    """``network`` with every ``BatchNorm*d`` replaced by ``torch.nn.SyncBatchNorm`` when ``enabled`` (statistics over
    the whole global batch rather than each rank's share: what small per-GPU batches need), else unchanged.

    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does the conversion; this only refuses it on the CPU, where
    torch's ``SyncBatchNorm`` raises in the first training step of a multi-process run ("expected input tensor to
    be on GPU", torch 2.14 with Gloo), so a user learns it before the data is loaded. Bundles set
    ``sync_batchnorm`` to ``$@device.type == 'cuda'`` in ``configs/multi_gpu_train.json``.
    """
    if not flag(enabled, "sync_batchnorm"):
        return network
    device = torch.device(device)
    if device.type == "cpu":
        raise ValueError("sync_batchnorm: torch.nn.SyncBatchNorm needs GPU (CUDA) inputs and this run is on the CPU "
                         "(Gloo backend); set --sync_batchnorm false to keep each rank's own BatchNorm statistics")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)


def destroy_process_group() -> None:
    """Leave the process group (end of ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _every_rank_types() -> tuple[type, ...]:
    from ignite.metrics import Metric
    from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

    from medcnn.handlers.checkpoint import TrainingCheckpoint

    # validation, LR schedule and early stopping must advance identically on all ranks (the early-stopping score
    # is an all-reduced metric); the training state is loaded by every rank and written by rank 0 only; the
    # metrics listed as handlers (e.g. the classification report) gather across ranks, a collective every rank joins
    return (ValidationHandler, LrScheduleHandler, EarlyStopHandler, TrainingCheckpoint, Metric)


def handlers_for_this_rank(handlers: Sequence | None) -> list:
    """All ``handlers`` on rank 0; on other ranks only those that must run everywhere (validation, LR schedule,
    early stopping, training state, gathered reports), so logs, TensorBoard files, curves and checkpoints are
    written once."""
    handlers = list(handlers or [])
    if rank() == 0:
        return handlers
    keep = _every_rank_types()
    for handler in handlers:
        if not isinstance(handler, keep):
            _discard_event_file(handler)
    return [h for h in handlers if isinstance(h, keep)]


def _discard_event_file(handler) -> None:
    """A TensorBoard handler opens its event file when it is built, before the rank filter runs: close it and
    remove the (empty) file this process created, so only rank 0 leaves files behind."""
    from monai.handlers import TensorBoardHandler

    if not isinstance(handler, TensorBoardHandler) or not handler.internal_writer:
        return
    writer = handler._writer  # MONAI keeps its SummaryWriter here (checked by tests/test_distributed.py)
    log_dir = Path(writer.log_dir)
    writer.close()
    for path in log_dir.glob(f"events.out.tfevents.*.{os.getpid()}.*"):
        path.unlink(missing_ok=True)


def gather_lists(*values: Sequence[float]) -> tuple[list[float], ...]:
    """Concatenate per-rank lists of numbers over all ranks (rank order; ranks may hold different counts, but the
    lists of one call are equally long on each rank); unchanged outside DDP.

    Used by handlers whose figure spans the dataset (AUC, confusion counts) and which collect per-item values on
    each rank's share of the data.
    """
    if not is_distributed():
        return tuple(list(v) for v in values)
    from monai.utils import evenly_divisible_all_gather

    out = []
    for v in values:
        t = torch.as_tensor(list(v), dtype=torch.float64).reshape(-1, 1)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        out.append(evenly_divisible_all_gather(t, concat=True).reshape(-1).cpu().tolist())
    return tuple(out)

"""An ensemble of independently trained classifiers that behaves like one classifier.

Why medcnn has its own: MONAI's ``monai.transforms.MeanEnsembled`` averages predictions that a workflow produced
with several networks, one evaluator pass per network; the classifiers here are also read by the slice-scoring
inferer, the CAM handlers, the PDF report, ``medcnn predict``, the MONAI Label model and the TorchScript / ONNX
export, which all take *one* ``nn.Module``. :class:`ClassifierEnsemble` is that module: one state dict
(``members.<k>.<member key>``), one forward pass returning the mean of the members' logits (for a two-class
softmax the log-odds of the mean logits are the mean of the members' log-odds), and a CAM that is one chosen
member's or the mean of the members' CAMs at the same layer (see :func:`medcnn.localisation.methods.get_cam_method`).

The members are trained one by one by the bundle's own ``train.json`` at different seeds and put together with
:func:`assemble_ensemble` (``medcnn train-ensemble``, :mod:`medcnn.train_ensemble`, does both).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ClassifierEnsemble", "ensemble_or_member", "assemble_ensemble", "checkpoint_members"]


class ClassifierEnsemble(nn.Module):
    """``num_members`` copies of ``member`` (each with its own weights) whose logits are averaged.

    Args:
        member: the network of one member (``(B, C, *S) -> (B, num_classes)`` logits); it is deep-copied, so the
            members start from the same weights until a checkpoint is loaded.
        num_members: how many members (>= 2; use :func:`ensemble_or_member` for "1 means the member itself").
        cam_member: the member whose CAM is the ensemble's CAM; ``None`` = the mean of all members' CAMs. Averaging
            is not always better: a member trained from an unlucky seed can classify acceptably while its CAM marks
            nothing useful, and the mean then inherits that (measured on the LGG bundle's validation patients, its
            model card); which member localises is then a choice made on validation data like the CAM method.

    The CAM target layer is named as in the member (``cam_target_layer_name``, e.g. ``"blocks.0"``).
    """

    def __init__(self, member: nn.Module, num_members: int, cam_member: int | None = None) -> None:
        super().__init__()
        if int(num_members) < 2:
            raise ValueError(f"ClassifierEnsemble: num_members must be >= 2, got {num_members!r}")
        if cam_member is not None and not 0 <= int(cam_member) < int(num_members):
            raise ValueError(f"ClassifierEnsemble: cam_member must be None or 0 .. {int(num_members) - 1}, "
                             f"got {cam_member!r}")
        self.members = nn.ModuleList([copy.deepcopy(member) for _ in range(int(num_members))])
        self.cam_member = None if cam_member is None else int(cam_member)
        layer = getattr(member, "cam_target_layer_name", None)
        self.cam_target_layer_name = None if layer is None else str(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: list[torch.Tensor] = []
        for m in self.members:
            logits.append(m(x))
        return torch.stack(logits).mean(dim=0)

    def cam_layer_names(self) -> list[str]:
        first = self.members[0]
        if hasattr(first, "cam_layer_names"):
            return first.cam_layer_names()
        return [n for n, _ in first.named_modules() if n]


def ensemble_or_member(member: nn.Module, num_members: int = 1, cam_member: int | None = None) -> nn.Module:
    """``member`` itself when ``num_members`` is 1 (a network trained once by ``train.json``), otherwise a
    :class:`ClassifierEnsemble` of ``num_members`` copies (the state dict of :func:`assemble_ensemble`) whose CAM
    is member ``cam_member``'s (``None``: the mean of all members')."""
    if int(num_members) < 1:
        raise ValueError(f"ensemble_or_member: num_members must be >= 1, got {num_members!r}")
    return member if int(num_members) == 1 else ClassifierEnsemble(member, int(num_members), cam_member)


def checkpoint_members(path: str | os.PathLike | None, default: int = 1) -> int:
    """How many members the checkpoint at ``path`` holds: ``K`` for the state dict of a :class:`ClassifierEnsemble`
    of ``K`` members, 1 for one network (e.g. a ``train.json`` run); ``default`` when there is no readable file at
    ``path`` (the checkpoint loader then reports the problem, naming the file). Bundles use it so that the same
    ``evaluate.json`` / ``inference.json`` load the committed ensemble and a user's single training alike."""
    from medcnn.networks.weights import CheckpointError, load_weights

    if path is None:
        return int(default)
    try:
        state = load_weights(path, key="model")
    except CheckpointError:  # missing or unreadable: the checkpoint loader raises the file-named error later
        return int(default)
    members = {k.split(".")[1] for k in state if isinstance(k, str) and k.startswith("members.")}
    return len(members) if members else 1


def assemble_ensemble(member_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> dict:
    """Write the state dict of a :class:`ClassifierEnsemble` made of the members' ``model.pt`` files to
    ``out_path`` and return it. Every member must be a state dict (or ``{"model": state dict}``) with the same
    keys and shapes; anything else is an error naming the file. ``out_path`` must not exist yet: an ensemble never
    replaces weights silently."""
    from medcnn.networks.weights import CheckpointError

    if len(member_paths) < 2:
        raise ValueError(f"assemble_ensemble: needs at least two member checkpoints, got {list(member_paths)}")
    out_path = os.fspath(out_path)
    if os.path.exists(out_path):
        raise FileExistsError(f"assemble_ensemble: {out_path} exists; remove it or choose another path")
    merged: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] | None = None
    for k, path in enumerate(member_paths):
        path = os.fspath(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: member checkpoint not found") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one message naming it
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
        if isinstance(state, dict) and set(state) == {"model"}:
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: expected a state dict of one network, got {type(state).__name__}")
        if first is None:
            first = state
        elif {n: tuple(v.shape) for n, v in state.items()} != {n: tuple(v.shape) for n, v in first.items()}:
            raise CheckpointError(f"{path}: its keys / shapes differ from {os.fspath(member_paths[0])}'s: "
                                  "members must be the same network")
        merged.update({f"members.{k}.{n}": v for n, v in state.items()})
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(merged, out_path)
    return merged

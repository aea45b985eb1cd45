"""Running the bundles' Ignite engines."""

from __future__ import annotations

from typing import Any

from monai.data import get_track_meta, set_track_meta


def run_trainer(trainer: Any, track_meta: bool = True) -> None:
    """Run ``trainer`` with MONAI's MetaTensor tracking set to ``track_meta``, restoring the previous setting after
    the run, also when it fails.

    Training on plain tensors spares the per-sample metadata work of MONAI's random transforms and of every network
    operation (see docs/benchmarks/README.md); the setting is process-wide, so a run that stopped on an error must not
    leave the caller's later transforms (an evaluation, a notebook cell, the next test) without their metadata.
    """
    previous = get_track_meta()
    set_track_meta(bool(track_meta))
    try:
        trainer.run()
    finally:
        set_track_meta(previous)

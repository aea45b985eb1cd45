"""Record training curves (loss, validation metrics, wall time) and write them as JSON and PNG."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from medcnn.handlers.metrics_json import to_jsonable
from medcnn.report.plots import plot_curves

__all__ = ["TrainingCurvesHandler"]


class TrainingCurvesHandler:
    """Attach to a trainer; per epoch record mean loss and wall time, per validation the evaluator's metrics.

    Writes ``<output_dir>/curves.json`` after every epoch and validation, so an interrupted run still leaves its
    curves, and draws ``curves.png`` when training completes (and every ``plot_interval`` epochs if > 0: drawing
    costs seconds on a busy CPU). ``curves.json`` holds ``epoch``, ``time_s`` (seconds since training started),
    ``loss``, and for every validation metric ``<name>`` its values plus ``<name>_x`` (epochs) and ``<name>_time_s``:
    the time-to-accuracy / time-to-Dice figures of the model cards are read from there.

    Args:
        output_dir: folder for the files.
        evaluator: the validation engine (``validate#evaluator``); its ``state.metrics`` are read after each
            validation. ``None`` records only the training loss.
        metric_names: which evaluator metrics to record (default: every scalar metric).
        loss_transform: maps ``engine.state.output`` of one iteration to the loss value (default: ``output[0]
            ["loss"]`` for MONAI's decollated trainer output, or the output itself if it is a number).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        evaluator: Engine | None = None,
        metric_names: Sequence[str] | None = None,
        loss_transform=None,
        plot_interval: int = 0,
    ) -> None:
        if plot_interval < 0:
            raise ValueError(f"plot_interval must be >= 0, got {plot_interval}")
        self.plot_interval = plot_interval
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.metric_names = metric_names
        self.loss_transform = loss_transform or _default_loss
        self.history: dict[str, list] = {"epoch": [], "time_s": [], "loss": []}
        self._start = time.perf_counter()
        self._epoch_losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.write(plot=True))
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._validated)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _epoch_started(self, engine: Engine) -> None:
        """On the first epoch of a resumed run, continue the interrupted run's ``curves.json`` instead of restarting."""
        done = engine.state.epoch - 1
        if self.history["epoch"] or done <= 0:
            return
        path = self.output_dir / "curves.json"
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # no readable curves of the interrupted run: record from here on
        keep = [i for i, e in enumerate(previous.get("epoch", [])) if e <= done]
        history: dict[str, list] = {k: [previous[k][i] for i in keep] for k in ("epoch", "time_s", "loss")
                                    if len(previous.get(k, [])) == len(previous.get("epoch", []))}
        if set(history) != {"epoch", "time_s", "loss"}:
            return
        for key, xs in previous.items():
            if key.endswith("_x") and key[:-2] in previous:
                name = key[:-2]
                idx = [i for i, e in enumerate(xs) if e <= done]
                history[name] = [previous[name][i] for i in idx]
                history[key] = [xs[i] for i in idx]
                if f"{name}_time_s" in previous:
                    history[f"{name}_time_s"] = [previous[f"{name}_time_s"][i] for i in idx]
        self.history = history
        self._start = time.perf_counter() - (history["time_s"][-1] if history["time_s"] else 0.0)

    def _iteration(self, engine: Engine) -> None:
        loss = self.loss_transform(engine.state.output)
        if loss is not None:
            self._epoch_losses.append(float(loss))

    def _epoch(self, engine: Engine) -> None:
        self.history["epoch"].append(engine.state.epoch)
        self.history["time_s"].append(round(time.perf_counter() - self._start, 3))
        self.history["loss"].append(float(np.mean(self._epoch_losses)) if self._epoch_losses else float("nan"))
        self._epoch_losses = []
        self.write()

    def _validated(self, evaluator: Engine) -> None:
        epoch = self._trainer.state.epoch
        for name, value in evaluator.state.metrics.items():
            if self.metric_names is not None and name not in self.metric_names:
                continue
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            if not isinstance(value, (int, float)):
                continue
            self.history.setdefault(name, []).append(float(value))
            self.history.setdefault(f"{name}_x", []).append(epoch)
            self.history.setdefault(f"{name}_time_s", []).append(round(time.perf_counter() - self._start, 3))
        self.write()

    def write(self, plot: bool | None = None) -> None:
        """Write ``curves.json``; redraw ``curves.png`` when ``plot`` (default: every ``plot_interval`` epochs)."""
        if plot is None:
            n = len(self.history["epoch"])
            plot = bool(self.plot_interval) and n > 0 and n % self.plot_interval == 0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "curves.json").write_text(json.dumps(to_jsonable(self.history), indent=1) + "\n")
        plottable = {k: v for k, v in self.history.items() if not k.endswith("_time_s") and k != "time_s"}
        if plot and self.history["epoch"]:
            plot_curves(plottable, self.output_dir / "curves.png", x_key="epoch", title="training curves")


def _default_loss(output) -> float | None:
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return float(output.detach().mean())
    return float(output) if isinstance(output, (int, float)) else None

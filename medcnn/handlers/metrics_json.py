"""Write an engine's final figures as one flat ``metrics.json`` (the bundle contract's evaluation output)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["MetricsJSONWriter", "write_metrics_json", "to_jsonable"]

logger = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Convert tensors / numpy values to plain JSON values; NaN and infinities become ``null``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist()) if value.ndim else to_jsonable(value.item())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as indented JSON to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(dict(metrics)), indent=2, sort_keys=True) + "\n")
    return path


class MetricsJSONWriter:
    """On ``COMPLETED``, write ``engine.state.metrics`` (plus ``extra``) to ``<output_dir>/<filename>``.

    Args:
        output_dir: folder for the file (created).
        filename: file name, ``metrics.json`` by default.
        metric_names: keep only these keys of ``engine.state.metrics`` (all when ``None``).
        extra: constant figures to add (e.g. ``{"cam_method": "gradcam"}``) or a callable ``engine -> dict``
            evaluated at completion (e.g. the number of cases).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "metrics.json",
        metric_names: list[str] | None = None,
        extra: Mapping[str, Any] | Callable[[Engine], Mapping[str, Any]] | None = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.metric_names = metric_names
        self.extra = extra

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = dict(engine.state.metrics)
        if self.metric_names is not None:
            metrics = {k: metrics[k] for k in self.metric_names if k in metrics}
        extra = self.extra(engine) if callable(self.extra) else self.extra
        metrics.update(extra or {})
        write_metrics_json(metrics, self.path)
        logger.info("metrics written to %s", self.path)

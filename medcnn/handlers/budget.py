"""Stop training after a wall-clock budget: equal-time comparisons of networks on a shared CPU."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["TrainingTimeLimit"]

logger = logging.getLogger(__name__)


class TrainingTimeLimit:
    """Terminate the trainer after the first iteration that ends more than ``limit_s`` seconds after it started.

    Ignite's ``TimeLimit`` does the same but is not a MONAI-style handler (no ``attach``), so it cannot be listed
    in a bundle's ``train#handlers``. ``limit_s`` ``None`` or <= 0 means no limit. The time includes validation
    runs triggered by the trainer. The number of iterations and epochs done is logged when the limit hits.
    """

    def __init__(self, limit_s: float | None = None) -> None:
        self.limit_s = float(limit_s) if limit_s else 0.0
        self._start = time.perf_counter()
        self.stopped = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _started(self, engine: Engine) -> None:
        self._start, self.stopped = time.perf_counter(), False

    def _check(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self._start
        if self.limit_s > 0 and elapsed > self.limit_s and not self.stopped:
            self.stopped = True
            logger.info("training time budget of %.0f s reached after %.0f s (epoch %d, iteration %d): stopping",
                        self.limit_s, elapsed, engine.state.epoch, engine.state.iteration)
            engine.terminate()

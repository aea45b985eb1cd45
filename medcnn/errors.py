"""Show a user the file-named error first, not MONAI's wrapper around it.

medcnn's readers, transforms and handlers raise errors that start with the file and say the problem
(:class:`medcnn.transforms.InvalidInputError`, :class:`medcnn.data.StackReadError`,
:class:`medcnn.networks.CheckpointError`, ...). Inside a MONAI pipeline they arrive wrapped:
``RuntimeError("applying transform ...")`` from ``Compose``, then ``RuntimeError("Failed to evaluate
ConfigExpression ...")`` from the bundle runner, so the last line of the trace names neither the file nor the
problem. :func:`user_error` finds the medcnn error in the exception chain; :func:`install_error_handler`
(called by every bundle's ``initialize``, and used by the ``medcnn`` command line) makes an uncaught one print as
a single ``error: <file>: <problem>`` line, with the full trace only when ``MEDCNN_TRACEBACK=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = ["OutputCollisionError", "user_error", "format_user_error", "install_error_handler"]

TRACEBACK_ENV = "MEDCNN_TRACEBACK"


class OutputCollisionError(ValueError):
    """An output would overwrite an input, land inside an input folder, or be written twice by different inputs."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error(exc: BaseException) -> BaseException | None:
    """The innermost exception of ``exc``'s chain raised as a medcnn error type (its class lives in ``medcnn``)."""
    found = None
    for e in _chain(exc):
        if type(e).__module__.split(".")[0] == "medcnn":
            found = e
    return found


def format_user_error(exc: BaseException) -> str | None:
    """``"error: <message>"`` for a medcnn error in ``exc``'s chain (None when there is none)."""
    err = user_error(exc)
    if err is None:
        return None
    return f"error: {err}" + (f" ({type(err).__name__})" if not str(err) else "")


def _hook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, previous=sys.__excepthook__
) -> None:
    message = format_user_error(exc)
    if message is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        previous(exc_type, exc, tb)
    if message is not None:
        if os.environ.get(TRACEBACK_ENV, "") in ("", "0"):
            where = "".join(traceback.format_exception_only(exc_type, exc)).strip().splitlines()[0]
            print(f"({where[:200]}; set {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
        print(message, file=sys.stderr)


def install_error_handler() -> None:
    """Make an uncaught medcnn error print as one ``error: <file>: <problem>`` line (idempotent).

    Other exceptions keep Python's (or the previously installed) handler. Set ``MEDCNN_TRACEBACK=1`` to get the full
    chained traceback as well, followed by the same line.
    """
    current = sys.excepthook
    if getattr(current, "_medcnn", False):
        return

    def hook(exc_type, exc, tb):
        _hook(exc_type, exc, tb, previous=current)

    hook._medcnn = True  # type: ignore[attr-defined]
    sys.excepthook = hook

"""Values of bundle config ids as a user types them on the command line.

``python -m monai.bundle run ... --dihedral_tta false`` hands the config the string ``'false'``: python-fire parses
only ``False`` / ``True`` as bools, and ``bool('false')`` is True, so a config that uses ``@dihedral_tta`` as it is
silently keeps the option on. Every bundle reads its bool ids through :func:`flag` instead
(``"$medcnn.config.flag(@amp, 'amp') and ..."``), and medcnn classes that take a bool from a config parse it the
same way. Neither MONAI's ``ConfigParser`` nor fire offers such a parser (MONAI's ``look_up_option`` matches
strings, it does not read booleans), hence this one.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["FlagError", "flag", "TRUE_WORDS", "FALSE_WORDS"]

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


class FlagError(ValueError):
    """A bool config id (or argument) was given a value that is neither true nor false."""


def flag(value: Any, name: str) -> bool:
    """``value`` of the bool id ``name`` as a bool.

    Accepts a bool, the strings ``true`` / ``false`` / ``yes`` / ``no`` / ``1`` / ``0`` (any case, surrounding
    blanks ignored) and the integers 0 / 1 (numpy's too). Anything else raises :class:`FlagError` naming ``name``
    and the value: ``'flase'`` must not silently switch an option on.
    """
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    elif isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise FlagError(f"{name} must be true or false (or yes / no, 1 / 0), got {value!r}")

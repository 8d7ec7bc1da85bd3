"""Argument checks shared by every head: one wording, one place.

Each returns the value as a plain Python ``int`` / ``float`` / ``bool`` or raises ``ValueError``
naming the argument, what it got and what it needs. Integers may be any integral type (``int``,
numpy or 0-dim integer tensors: anything with ``__index__``) but never ``bool``, which Python
counts as an int and which is always a mistake for a size.
"""

from __future__ import annotations

import math
import operator
from typing import Any


def check_int(name: str, value: Any, *, minimum: int | None = None, hint: str = "") -> int:
    """``value`` as an ``int`` (``≥ minimum`` when given)."""
    need = "an int" if minimum is None else f"an int ≥ {minimum}"
    try:
        if _is_bool(value):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {number}")
    return number


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` (``> 0`` if ``positive``; within ``[minimum, maximum]``)."""
    if positive:
        need = "a positive finite number"
    elif minimum is not None and maximum is not None:
        need = f"a number in [{minimum}, {maximum}]"
    elif minimum is not None:
        need = f"a finite number ≥ {minimum}"
    else:
        need = "a finite number"
    if _is_bool(value):
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}")
    try:
        number = float(operator.index(value))  # ints, numpy and tensor integers
    except TypeError:
        if not isinstance(value, float) and type(value).__module__ != "numpy":
            raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}") from None
        number = float(value)
    out_of_range = (
        not math.isfinite(number)
        or (positive and not number > 0)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    )
    if out_of_range:
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}")
    return number


def check_bool(name: str, value: Any, *, hint: str = "") -> bool:
    """``value`` if it is a ``bool`` (ints are refused: ``gram=0`` is more likely a typo)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False{_hint(hint)}, got {value!r}")
    return value


def _is_bool(value: Any) -> bool:
    # Python's bool and numpy's (``numpy.bool`` / ``numpy.bool_``), without importing numpy.
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""

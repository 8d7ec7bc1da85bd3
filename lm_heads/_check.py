"""Argument checks shared by every head: one wording, one place.

Each returns the value as a plain Python ``int`` / ``float`` / ``bool`` or raises ``ValueError``
naming the argument, what it got and what it needs. Integers may be any integral type (``int``,
numpy or 0-dim integer tensors: anything with ``__index__``) but never ``bool``, which Python
counts as an int and which is always a mistake for a size. Reals may also be numpy or 0-dim
tensor floats; a float32 (or narrower) one becomes the shortest decimal it rounds from
(``np.float32(0.1)`` → ``0.1``, not ``0.10000000149011612``): what the user wrote, so that a
head stores, prints and compares the option as it was meant (:func:`plain_float`).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch


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
    number = plain_float(value)
    if number is None:
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}")
    out_of_range = (
        not math.isfinite(number)
        or (positive and not number > 0)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    )
    if out_of_range:
        raise ValueError(f"{name} must be {need}{_hint(hint)}, got {value!r}")
    return number


def plain_float(value: Any) -> float | None:
    """``value`` as a Python ``float`` if it is one real number (Python, numpy or a 0-dim
    tensor, integral or not, never ``bool``), else ``None``.

    A float narrower than float64 becomes the shortest decimal that rounds to it in its own
    dtype: ``float(np.float32(0.1))`` is ``0.10000000149011612``, which would be stored,
    compared and printed as another value than the ``0.1`` the user meant."""
    if _is_bool(value):
        return None
    try:
        return float(operator.index(value))  # ints, numpy and tensor integers
    except TypeError:
        pass
    if isinstance(value, float):
        return float(value)
    if type(value).__module__ == "numpy" or isinstance(value, torch.Tensor):
        tensor = torch.as_tensor(value).detach()
        if tensor.dim() != 0 or not tensor.is_floating_point():
            return None  # arrays, complex numbers, bools
        return _shortest(tensor.cpu())
    return None


def _shortest(number: torch.Tensor) -> float:
    exact = number.item()
    if number.dtype == torch.float64 or not math.isfinite(exact):
        return float(exact)
    for digits in range(1, 18):
        candidate = float(f"{exact:.{digits}g}")
        if torch.tensor(candidate, dtype=number.dtype).item() == exact:
            return candidate
    return float(exact)


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

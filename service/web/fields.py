"""Request fields checked in one place: integers, numbers and strings from JSON or a query.

Each limit is the one the field's store and meaning allow: an integer fits SQLite's INTEGER
(64 bits) and the range its use needs, a number is finite, a string is bounded. A bad value is
a 400 naming the field, never an exception further in (an ``OverflowError`` from SQLite, a
``ValueError`` from ``int()`` on 5,000 digits or on ``"²"``).
"""
from __future__ import annotations

import math
import re
from typing import Any

from ..errors import InvalidInput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)  # at most 19 digits: fits 64 bits
_SHOWN_CHARS = 40  # of a bad value, in the message


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length (huge strings and integers stay out)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


def integer(value: Any, name: str, low: int = INT64_MIN, high: int = INT64_MAX,
            code: str = "bad_parameter", decimal_text: bool = True) -> int | None:
    """``value`` in ``[low, high]``; None if absent. ``decimal_text``: "12" (a query's or a
    form's value) counts as 12; JSON fields that must be numbers pass False."""
    if value is None or value == "":
        return None
    if decimal_text and isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {shown(value)}.", code)
    if not low <= value <= high:
        wanted = ("a 64-bit integer" if (low, high) == (INT64_MIN, INT64_MAX)
                  else f"an integer from {low} to {high}")
        raise InvalidInput(f"{name} must be {wanted}, got {shown(value)}.", code)
    return value


def number(value: Any, name: str) -> float | None:
    """A finite float (an int, a float, or a numeric string); None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or isinstance(value, str) and len(value) > _SHOWN_CHARS:
        raise InvalidInput(f"{name} must be a number, got {shown(value)}.", "bad_parameter")
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{name} must be a number, got {shown(value)}.",
                           "bad_parameter") from None
    if not math.isfinite(result):
        raise InvalidInput(f"{name} must be a finite number.", "bad_parameter")
    return result


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def boolean(value: Any, name: str) -> bool | None:
    """JSON true/false, or (from a query or a form) true/false, 1/0, yes/no, on/off."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise InvalidInput(f"{name} must be true or false, got {shown(value)}.", "bad_parameter")


def text(value: Any, name: str, max_chars: int, code: str = "bad_parameter") -> str | None:
    """A non-empty string of at most ``max_chars``; None if absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {shown(value)}.", code)
    if len(value) > max_chars:
        raise InvalidInput(f"{name} must be at most {max_chars} characters, got "
                           f"{len(value)}.", code)
    return value

"""argparse types whose errors read as one line: ``argument --lr: expected ...``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str, expected: str, ok: Callable[[float], bool]) -> float:
    """``text`` as a float for which ``ok`` holds; otherwise "expected ``expected``"."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _number(text, "a positive finite number", lambda v: math.isfinite(v) and v > 0)


def alphas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,1,2, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def fraction(text: str) -> float:
    return _number(text, "a number in (0, 1)", lambda v: 0 < v < 1)


def finite_float(text: str) -> float:
    """Any finite number (a negative one too)."""
    return _number(text, "a finite number", math.isfinite)

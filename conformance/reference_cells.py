"""The cells of the reference checks (``reference_checks``, ``run_checks``): core's NumPy
float64 on the CPU held to the plain reference, each a row of ``conform``'s table."""

from __future__ import annotations

import math
from collections.abc import Callable

from rosetta_rnn.core.errors import first_line

from .checks import Cell

SUBJECT = "core"
DTYPE = "float64"


def cell(name: str, err: float, tol: float, message: str = "", model: str | None = "rnn") -> Cell:
    """The row ``reference/NAME``: passed when ``err`` is within ``tol``. ``model``: the
    recurrent cell it is about (None: a check whose name says it)."""
    passed = err <= tol
    return Cell(f"reference/{name}", SUBJECT, DTYPE, "cpu", err, tol, passed, message, model)


def exact(name: str, mismatches: list[str], model: str | None = "rnn") -> Cell:
    """An integer check: every mismatch is named (the first few) and the error is their count."""
    return cell(name, float(len(mismatches)), 0.0, "; ".join(mismatches[:3]), model)


def guarded(name: str, run: Callable[[], Cell], model: str | None = "rnn") -> Cell:
    """A check that raises fails with the error as its message: it never silently passes."""
    try:
        return run()
    except Exception as e:  # any failure of core or of the check is the cell's result
        return cell(name, math.inf, 0.0, f"{type(e).__name__}: {first_line(e)}", model)

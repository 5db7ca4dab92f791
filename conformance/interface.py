"""The ``interface`` cell: every backend implements every operation of the tensor interface."""

from __future__ import annotations

from typing import Any

from rosetta_rnn.core.ops import OPERATIONS


def missing_operations(ops: Any) -> list[str]:
    """The names of ``core.ops.OPERATIONS`` that ``ops`` lacks or has as non-callables."""
    return [name for name in OPERATIONS if not callable(getattr(ops, name, None))]

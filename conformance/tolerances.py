"""The one tolerance table. Errors are max|a - b| / max|reference|; NumPy float64 is the
reference. Values and gradients are kept apart; ``train`` bounds a trajectory of SGD steps.

Never widen a number here to make a backend pass: a cell that cannot meet it fails, and the
README's table shows the measured figure and the cause.
"""

from __future__ import annotations

TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"values": 1e-12, "grads": 1e-12, "train": 1e-9, "fd": 1e-7},
    "float32": {"values": 1e-5, "grads": 1e-5, "train": 1e-5, "fd": 1e-7},
}

TRAIN_STEPS = {"float64": 100, "float32": 1}
"""SGD steps in the training check: 100 in float64 (≤1e-9); a single step in float32 (≤1e-5)."""


def tolerance(dtype: str, kind: str) -> float:
    return TOLERANCES[dtype][kind]

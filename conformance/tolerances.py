"""The one tolerance table. Errors are max|a - b| / max|reference|; NumPy float64 is the
reference. Values and gradients are kept apart; ``train`` bounds a trajectory of SGD steps.

Never widen a number here to make a backend pass: a cell that cannot meet it fails, and the
conformance page's table (docs/conformance.md) shows the measured figure and the cause.
"""

from __future__ import annotations

TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"values": 1e-12, "grads": 1e-12, "train": 1e-9, "fd": 1e-7, "epochs": 1e-9},
    "float32": {"values": 1e-5, "grads": 1e-5, "train": 1e-5, "fd": 1e-7, "epochs": 1e-4},
}
"""``epochs`` bounds the per-epoch perplexities of whole ``rosetta-rnn train`` runs (20 epochs of
the chapter, 160 SGD steps; tests/test_agreement.py, which prints the measured figures, and
docs/conformance.md, which quotes them: float64 about 1e-15, float32 a few 1e-6). float32
rounding depends on the BLAS kernel the CPU selects and compounds over the run, so the float32
bound keeps a margin of about 40× over the largest figure measured on a 2-core x86 CPU."""

TRAIN_STEPS = {"float64": 100, "float32": 1}
"""SGD steps in the training check: 100 in float64 (≤1e-9); a single step in float32 (≤1e-5)."""


REPLICA_COUNTS = (2, 4)
"""The replica counts of the data-parallel checks (``train/replicas``, ``grads/replicas``): float64
only, ``TRAIN_STEPS["float64"]`` steps each, with clipping acting on most of them."""


def tolerance(dtype: str, kind: str) -> float:
    return TOLERANCES[dtype][kind]

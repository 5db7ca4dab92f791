"""Check 10 of the conformance suite: every backend implements every operation of the interface."""

from __future__ import annotations

import pytest

from rosetta_rnn import backends
from rosetta_rnn.conformance.interface import missing_operations
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.ops import OPERATIONS, Ops


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_backend_has_every_operation(name: str) -> None:
    try:
        mod = backends.load(name)
    except BackendUnavailable as e:
        pytest.skip(f"{name} not installed: {e}")
    for dtype in ("float32", "float64"):
        ops = mod.make_ops(dtype, "cpu")
        assert missing_operations(ops) == []
        assert isinstance(ops, Ops)
        assert ops.dtype == dtype and ops.name == name
    for attr in (
        "NAME",
        "FRAMEWORK",
        "GRAD_MODES",
        "COMPILE_MODES",
        "version",
        "devices",
        "supports_float64",
        "make_ops",
        "make_train_step",
    ):
        assert hasattr(mod, attr), attr


def test_missing_operations_names_what_is_missing() -> None:
    class Partial:
        def matmul(self, a, b):
            return a @ b

        tanh = 3  # not callable

    missing = missing_operations(Partial())
    assert "tanh" in missing and "matmul" not in missing
    assert len(missing) == len(OPERATIONS) - 1

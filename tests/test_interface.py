"""Check 10 of the conformance suite: every backend implements every operation of the interface."""

from __future__ import annotations

from typing import Any

import pytest

from rosetta_rnn import backends
from rosetta_rnn.conformance.interface import missing_operations
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.ops import OPERATIONS, Ops


def _load_or_skip(name: str) -> Any:
    try:
        return backends.load(name)
    except BackendUnavailable as e:
        pytest.skip(f"{name} not installed: {e}")


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_backend_has_every_operation(name: str) -> None:
    mod = _load_or_skip(name)
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


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("cpu", 2, "cpu"),
        ("auto", 0, "cpu"),
        ("auto", 2, "gpu:0"),
        ("gpu", 2, "gpu:0"),
        ("gpu:1", 2, "gpu:1"),
        ("gpu:2", 2, "no gpu:2"),
        ("gpu", 0, "no gpu:0"),
        ("gpu:x", 2, "unknown device"),
        ("gpu:-1", 2, "unknown device"),
        ("tpu", 2, "unknown device"),
    ],
)
def test_device_resolution_is_shared(device: str, gpus: int, expected: str) -> None:
    try:
        got = backends.resolve_device(device, lambda: gpus, "Framework")
    except BackendUnavailable as e:
        assert expected in str(e) and "\n" not in str(e)
    else:
        assert got == expected


def test_device_resolution_says_how_to_get_a_gpu() -> None:
    with pytest.raises(BackendUnavailable, match="install a GPU build"):
        backends.resolve_device("gpu", lambda: 0, "F", no_gpu="F sees no GPU; install a GPU build")


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_every_backend_refuses_an_unknown_gradient_engine_in_one_line(name: str) -> None:
    mod = _load_or_skip(name)
    ops = mod.make_ops("float64", "cpu")
    with pytest.raises(
        BackendUnavailable, match=f"the {name} backend has no --grad 'nope'; it has"
    ):
        mod.make_train_step(ops, grad="nope")
    for grad in mod.GRAD_MODES:
        assert callable(mod.make_value_and_grad(ops, grad))


def test_numpy_has_no_autograd(capsys: pytest.CaptureFixture[str]) -> None:
    from rosetta_rnn.cli import main

    assert main(["train", "--grad", "autograd"]) == 2
    err = capsys.readouterr().err
    assert err == "rosetta-rnn: error: the numpy backend has no --grad 'autograd'; it has bptt\n"

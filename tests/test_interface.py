"""The interface check's own diagnosis, and the device resolution every backend shares (each
backend against the contract: tests/test_backends.py)."""

from __future__ import annotations

import pytest

from rosetta_rnn.backends import rules
from rosetta_rnn.conformance.interface import missing_operations
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.ops import OPERATIONS


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
        got = rules.resolve_device(device, lambda: gpus, "Framework")
    except BackendUnavailable as e:
        assert expected in str(e) and "\n" not in str(e)
    else:
        assert got == expected


def test_device_resolution_says_how_to_get_a_gpu() -> None:
    with pytest.raises(BackendUnavailable, match="install a GPU build"):
        rules.resolve_device("gpu", lambda: 0, "F", no_gpu="F sees no GPU; install a GPU build")


def test_numpy_has_no_autograd(capsys: pytest.CaptureFixture[str]) -> None:
    from rosetta_rnn.cli import main

    assert main(["train", "--grad", "autograd"]) == 2
    err = capsys.readouterr().err
    assert err == "rosetta-rnn: error: the numpy backend has no --grad 'autograd'; it has bptt\n"

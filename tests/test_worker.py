"""Frameworks in environments of their own: the wire format (no pickle), the worker process
that answers over it, and the environments ``rosetta-rnn backends --setup`` creates.

The worker tests run a worker in this environment's own interpreter, serving
``tests/worker_handlers.py``; MXNet's environment has its own tests, ``test_mxnet_worker.py``."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn.backends import environments, wire
from rosetta_rnn.backends.worker import RemoteError, Worker, one_line
from rosetta_rnn.core.errors import BackendUnavailable, UserError

HERE = Path(__file__).parent


def _round_trip(value: object) -> object:
    return wire.read(io.BytesIO(wire.encode(value)))


def test_the_wire_carries_nested_values_and_every_dtype_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f4": rng.standard_normal((3, 4)).astype(np.float32),
        "f8": rng.standard_normal((2, 0, 5)),  # empty
        "i8": rng.integers(-(2**40), 2**40, (7,)),
        "i4": np.arange(6, dtype=np.int32).reshape(2, 3).T,  # not contiguous
        "b": np.array([True, False]),
        "scalar": np.array(np.pi),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0]),
        "big-endian": np.arange(4, dtype=">f8"),
    }
    value = {"arrays": arrays, "pair": (1, "two", [3.5, None, True]), "np": np.float32(0.25)}
    got = _round_trip(value)
    assert isinstance(got, dict) and got["pair"] == (1, "two", [3.5, None, True])
    assert got["np"] == 0.25 and type(got["np"]) is float
    for name, want in arrays.items():
        have = got["arrays"][name]
        assert have.shape == want.shape and have.dtype.name == want.dtype.name, name
        assert have.dtype.isnative and have.flags.writeable, name
        assert have.tobytes() == np.ascontiguousarray(want).astype(want.dtype.name).tobytes(), name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([1 + 2j]), "dtype complex128 cannot be sent"),
        (np.array(["a"], dtype=object), "dtype object cannot be sent"),
        ({1: "x"}, "only dicts with string keys"),
        ({"__array__": 0}, "may not be __array__"),
        ({"a": {1, 2}}, "a set cannot be sent"),
        (b"bytes", "a bytes cannot be sent"),
        (np.complex128(1 + 2j), "a complex128 scalar cannot be sent"),
        (np.float16(1), "a float16 scalar cannot be sent"),
        (np.datetime64("2026-12-06"), "a datetime64.* scalar cannot be sent"),
        ([0.5] * (wire.MAX_HEADER // 4), "a header of .* bytes is more than this format allows"),
    ],
)
def test_the_wire_refuses_what_it_cannot_carry(value: object, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.encode(value)


def test_a_cut_or_hostile_stream_is_a_wire_error() -> None:
    whole = wire.encode({"x": np.zeros(8)})
    for cut in (0, 3, 10, len(whole) - 1):
        with pytest.raises(wire.WireError, match="the stream ended"):
            wire.read(io.BytesIO(whole[:cut]))
    with pytest.raises(wire.WireError, match="more than this format allows"):
        wire.read(io.BytesIO(struct.pack(">I", wire.MAX_HEADER + 1)))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"body": {"__array__": 0}, "arrays": [{"dtype": "object", "shape": [1]}]}, "not part of"),
        ({"body": {"__array__": 0}, "arrays": [{"dtype": "float64", "shape": [-1]}]}, "sizes >= 0"),
        (
            {"body": {"__array__": 0}, "arrays": [{"dtype": "float64", "shape": [2.5]}]},
            "sizes >= 0",
        ),
        ({"body": {"__array__": 0}, "arrays": [{"dtype": "int64", "shape": [True]}]}, "sizes >= 0"),
        ({"body": 0, "arrays": [{"dtype": "int64", "shape": [2**40, 2**10]}]}, "more than this"),
        ({"body": {"__array__": -1}, "arrays": []}, "names no array"),
        ({"body": {"__array__": "0"}, "arrays": []}, "names no array"),
        ({"body": 1}, "malformed message: KeyError"),
        ({"body": 1, "arrays": [7]}, "malformed message: TypeError"),
        ("{not json", "malformed message: JSONDecodeError"),
    ],
)
def test_a_hostile_message_is_a_wire_error_before_anything_is_read_for_it(
    header: object, message: str
) -> None:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    with pytest.raises(wire.WireError, match=message):
        wire.read(io.BytesIO(struct.pack(">I", len(raw)) + raw))


def test_one_line_of_a_framework_traceback_is_its_error() -> None:
    mxnet_like = ValueError(
        'Traceback (most recent call last):\n  File "src/operator/x.cc", line 9\n'
        "[bt] (0) libmxnet.so(+0x12) [0x7f]\nMXNetError: Check failed: a == b: shapes differ"
    )
    assert one_line(mxnet_like) == "MXNetError: Check failed: a == b: shapes differ"
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(KeyError()) == "KeyError"


@pytest.fixture()
def worker() -> Worker:
    env = {"PYTHONPATH": str(HERE)}
    with Worker(sys.executable, "worker_handlers", name="test", env=env) as w:
        yield w


def test_a_worker_answers_with_the_arrays_it_was_sent(worker: Worker) -> None:
    assert worker.ready["pid"] != os.getpid()  # another process
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    got = worker.call("echo", x, (1, 2), flag=True, state=(x, x.T))
    assert got["args"][1] == (1, 2) and got["kwargs"]["flag"] is True
    assert got["args"][0].tobytes() == x.tobytes()
    assert got["kwargs"]["state"][1].tobytes() == np.ascontiguousarray(x.T).tobytes()
    # what a library prints in the worker goes to its stderr, not into the answers
    assert worker.call("chatty", x).tobytes() == (x * 2).tobytes()


def test_a_worker_failure_is_one_line_and_the_worker_goes_on(worker: Worker) -> None:
    with pytest.raises(RemoteError, match=r"^test: bad input$") as caught:
        worker.call("fail", "bad input\nsecond line")
    assert caught.value.kind == "ValueError" and isinstance(caught.value, UserError)
    with pytest.raises(RemoteError, match="the worker has no request 'nope'; it has describe"):
        worker.call("nope")
    with pytest.raises(RemoteError, match="the answer to 'unsendable' cannot be sent: a set"):
        worker.call("unsendable", "set")
    with pytest.raises(RemoteError, match="cannot be sent: a complex128 scalar cannot be sent"):
        worker.call("unsendable", "complex")
    assert worker.call("echo", 1)["args"] == (1,)  # still serving


def test_a_worker_that_dies_is_one_line_with_its_exit_code(worker: Worker) -> None:
    with pytest.raises(
        BackendUnavailable, match="the test worker exited with code 3 during die: dying on purpose"
    ):
        worker.call("die", 3)
    with pytest.raises(BackendUnavailable, match="exited with code 3 during echo"):
        worker.call("echo", 1)


def test_a_closed_worker_says_so_and_closes_once(worker: Worker) -> None:
    worker.close()
    worker.close()
    with pytest.raises(BackendUnavailable, match=r"^the test worker is closed; it cannot do echo$"):
        worker.call("echo", 1)


def test_a_worker_that_cannot_start_says_why() -> None:
    env = {"PYTHONPATH": str(HERE)}
    with pytest.raises(
        BackendUnavailable,
        match="the test worker exited with code 1 during start: ModuleNotFoundError: "
        "No module named 'no_such_handlers'",
    ):
        Worker(sys.executable, "no_such_handlers", name="test", env=env)
    with pytest.raises(BackendUnavailable, match="the test worker cannot start"):
        Worker("/nonexistent/python", "worker_handlers", name="test")


def test_an_environment_not_set_up_says_how_to_set_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    assert environments.root() == tmp_path and environments.status("mxnet") == "missing"
    with pytest.raises(
        BackendUnavailable,
        match=r"^the mxnet environment is missing; set it up with: rosetta-rnn backends "
        r"--setup mxnet$",
    ):
        environments.start("mxnet")
    with pytest.raises(UserError, match="no environment 'caffe'; rosetta-rnn can set up: mxnet"):
        environments.get("caffe")


def test_a_failed_setup_leaves_the_previous_environment_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requirement pip cannot find (no index: nothing is fetched): the setup fails in one
    line, pip's own, nothing half-made stays, and the environment that was ready still is."""
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    bad = environments.Environment(
        "broken", "nothing", ("rosetta-rnn-no-such-package==0.0.1",), ("json",), "x"
    )
    monkeypatch.setitem(environments.ENVIRONMENTS, "broken", bad)
    previous = tmp_path / "broken"
    (previous / "bin").mkdir(parents=True)
    (previous / "bin" / "python").symlink_to(sys.executable)
    (previous / "ready.json").write_text(json.dumps(environments._record(bad)))
    assert environments.status("broken") == "ready"
    said: list[str] = []
    with pytest.raises(
        UserError,
        match=r"^setting up broken failed to install rosetta-rnn-no-such-package==0.0.1: "
        r"Could not find a version that satisfies the requirement",
    ):
        environments.setup("broken", say=said.append)
    assert said == ["broken: create the virtual environment", f"broken: install {bad[2][0]}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    assert environments.status("broken") == "ready"


def test_a_setup_on_a_newer_python_than_the_wheels_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    old = environments.ENVIRONMENTS["mxnet"]._replace(newest_python=(3, 8))
    monkeypatch.setitem(environments.ENVIRONMENTS, "mxnet", old)
    with pytest.raises(
        UserError,
        match=r"^mxnet's environment needs Python 3.8 or older \(its requirements have no "
        r"wheels for newer\); this is Python 3\.\d+$",
    ):
        environments.setup("mxnet", say=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_the_backends_command_lists_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "environment of its own: mxnet, MXNet 1.9.1, its last release" in out
    assert out.rstrip().endswith("missing: rosetta-rnn backends --setup mxnet")
    assert main(["backends", "--setup", "caffe"]) == 2
    err = capsys.readouterr().err.strip()  # Python 3.12.8+ leaves the choices unquoted
    assert re.fullmatch(
        r"rosetta-rnn: error: argument --setup: invalid choice: 'caffe' \(choose from '?mxnet'?\)",
        err,
    )

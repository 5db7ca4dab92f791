"""The ``mxnet`` backend: core's math computed by MXNet in its own environment, reached through
arrays held by its worker (``backends.remote``).

The generic part (``Store``, ``store_handlers``, ``RemoteOps``) is tested here in-process on
NumPy arrays, so a mistake in the mechanism shows without MXNet. The MXNet part: each gradient
engine in each compile mode against NumPy float64, ``hybridize`` seen to have built MXNet's
graphs (and ``eager`` seen not to), arrays released in the worker, and the errors a user can
cause (a missing environment, a GPU) as one line. Agreement of whole runs and checkpoints is
``test_agreement``'s and ``test_conformance``'s (every registered backend)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from cli_run import run_cli

from rosetta_rnn import backends
from rosetta_rnn.backends import environments, remote
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.problems import CELLS, Problem
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, model
from rosetta_rnn.core.errors import BackendUnavailable

# --- the mechanism, in-process on NumPy ----------------------------------------------------


class _InProcess:
    """A worker answered in this process by ``store_handlers`` over NumPy arrays, through the
    wire format (what crosses is encoded and decoded as between two processes)."""

    def __init__(self) -> None:
        from rosetta_rnn.backends import wire

        self.wire = wire
        self.store = remote.Store(
            lambda x: isinstance(x, np.ndarray | np.generic), lambda x: x.dtype.name
        )
        self.handlers = remote.store_handlers(
            self.store, lambda dtype: numpy_backend.make_ops(dtype, "cpu"), np.asarray
        )
        self.requests: list[str] = []

    def call(self, op: str, *args: Any) -> Any:
        self.requests.append(op)
        decoded = self.wire.read(_Bytes(self.wire.encode(list(args))))
        answer = self.handlers[op](*decoded)
        return self.wire.read(_Bytes(self.wire.encode(answer)))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.at : self.at + n]
        self.at += n
        return out


@pytest.fixture
def numpy_remote() -> remote.RemoteOps:
    return remote.RemoteOps(_InProcess(), "numpy-in-a-store", "float64")


def test_remote_ops_compute_core_math_as_numpy_does(numpy_remote: remote.RemoteOps) -> None:
    """core's forward loss and BPTT on arrays held by a store give NumPy's own numbers, bit
    for bit (the same operations on the same arrays): every operation, operator and index key
    crossed the wire and came back."""
    ops, ref = numpy_remote, numpy_backend.make_ops("float64", "cpu")
    for cell in CELLS:
        params, inputs, labels, state = Problem(cell=cell, seed=5).draw()
        want = cells.bptt_value_and_grad(ref, "tanh", cell)(params, inputs, labels, state)
        P = model.to_backend(ops, params)
        S = tuple(map(ops.asarray, state)) if isinstance(state, tuple) else ops.asarray(state)
        loss, grads, final = cells.bptt_value_and_grad(ops, "tanh", cell)(
            P, ops.asarray(inputs), ops.asarray(labels), S
        )
        assert isinstance(loss, remote.RemoteArray) and loss.shape == ()
        assert float(ops.to_numpy(loss)) == float(want[0])
        for k in params:
            np.testing.assert_array_equal(ops.to_numpy(grads[k]), want[1][k], err_msg=k)
        got_final = final if isinstance(final, tuple) else (final,)
        want_final = want[2] if isinstance(want[2], tuple) else (want[2],)
        for g, w in zip(got_final, want_final, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w)


def test_index_keys_slices_and_ellipsis_cross_the_wire(numpy_remote: remote.RemoteOps) -> None:
    ops = numpy_remote
    x = np.arange(24.0).reshape(2, 3, 4)
    a = ops.asarray(x)
    for key in [1, (1, ...), (slice(None), 2), (slice(-2, None), slice(1, 3), 0), (..., 1)]:
        np.testing.assert_array_equal(ops.to_numpy(a[key]), x[key], err_msg=str(key))
    np.testing.assert_array_equal(ops.to_numpy(1.0 - a / 2), 1.0 - x / 2)
    np.testing.assert_array_equal(ops.to_numpy(a > 5), x > 5)
    assert a.shape == (2, 3, 4) and a.ndim == 3 and len(a) == 2


def test_dropped_arrays_are_released_in_the_worker(numpy_remote: remote.RemoteOps) -> None:
    """The store holds an array until its reference is dropped here; then it goes, in batches
    of FREE_EVERY."""
    ops = numpy_remote
    worker = ops.worker
    kept = ops.asarray(np.ones(3))
    for _ in range(remote.FREE_EVERY + 1):
        ops.asarray(np.zeros(2))  # dropped at once
    gc.collect()
    ops.asarray(np.zeros(1))  # the request that sends the batch of releases
    assert "free" in worker.requests
    assert len(worker.store) < remote.FREE_EVERY  # the dropped ones went; ``kept`` stayed
    np.testing.assert_array_equal(ops.to_numpy(kept), np.ones(3))


def test_a_released_or_foreign_array_is_an_error_not_a_wrong_answer(
    numpy_remote: remote.RemoteOps,
) -> None:
    store = numpy_remote.worker.store
    with pytest.raises(KeyError, match="no array 999"):
        store.resolve({remote.REF: 999})
    other = remote.RemoteOps(_InProcess(), "another", "float64")
    with pytest.raises(ValueError, match="lives in another worker"):
        numpy_remote.matmul(other.asarray(np.eye(2)), numpy_remote.asarray(np.eye(2)))
    with pytest.raises(TypeError, match="no truth value"):
        bool(numpy_remote.asarray(np.ones(1)))


def test_the_worker_applies_only_the_interface(numpy_remote: remote.RemoteOps) -> None:
    handlers = numpy_remote.worker.handlers
    with pytest.raises(ValueError, match="not an operation"):
        handlers["apply"]("float64", "__class__", [], {})
    with pytest.raises(ValueError, match="not an array operator"):
        handlers["operator"]("__setitem__", [])


# --- MXNet ---------------------------------------------------------------------------------

DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def mx() -> Any:
    return backends.load("mxnet")


def _problem(cell: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, Any]:
    params, inputs, labels, state = Problem(cell=cell, seed=11).draw()
    assert all(np.any(v != 0) for v in params.values())  # nonzero biases: nothing hidden
    return params, inputs, labels, state


@pytest.mark.mxnet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["hybridize", "eager"])
@pytest.mark.parametrize("grad", ["autograd", "bptt"])
@pytest.mark.parametrize("cell", CELLS)
def test_each_engine_and_mode_steps_as_numpy_float64(
    mx: Any, cell: str, grad: str, mode: str, dtype: str
) -> None:
    """One training step (gradients, d2l's clipping at a θ below the norm, SGD) in the
    worker: the new parameters, the loss, the norm and the final state within the table."""
    params, inputs, labels, state = _problem(cell)
    ref = numpy_backend.make_ops("float64", "cpu")
    want = numpy_backend.make_train_step(ref, cell=cell)(params, inputs, labels, state, 0.5, 0.1)
    assert float(want[3]) > 0.1  # the clip acts
    ops = mx.make_ops(dtype)
    step = mx.make_train_step(ops, grad, mode, cell=cell)
    P = model.to_backend(ops, {k: v.astype(dtype) for k, v in params.items()})
    S = tuple(map(ops.asarray, state)) if isinstance(state, tuple) else ops.asarray(state)
    new, final, loss, norm = step(P, ops.asarray(inputs), ops.asarray(labels), S, 0.5, 0.1)
    values = tolerance(dtype, "values")
    assert max_error(model.to_numpy(ops, new), want[0]) <= values
    assert abs(float(np.asarray(loss)) - float(want[2])) <= values * max(1.0, abs(float(want[2])))
    assert abs(float(np.asarray(norm)) - float(want[3])) <= tolerance(dtype, "grads") * float(
        want[3]
    )
    got = final if isinstance(final, tuple) else (final,)
    wanted = want[1] if isinstance(want[1], tuple) else (want[1],)
    for g, w in zip(got, wanted, strict=True):
        assert max_error({"s": np.asarray(g)}, {"s": w}) <= values


@pytest.mark.mxnet
def test_hybridize_builds_mxnets_graphs_and_eager_does_not(mx: Any) -> None:
    """What says the compiled mode ran: the worker's hybridized blocks, one per kind, model and
    dtype asked for; an eager step adds none."""
    params, inputs, labels, state = _problem("lstm")
    ops = mx.make_ops("float64")
    P = model.to_backend(ops, params)
    X, Y = ops.asarray(inputs), ops.asarray(labels)
    S = tuple(map(ops.asarray, state))
    assert ops.worker.call("programs", forget=True) == []
    mx.make_train_step(ops, "autograd", "eager", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    mx.make_forward(ops, "eager", cell="lstm")(P, X, Y, S)
    assert ops.worker.call("programs") == []
    mx.make_train_step(ops, "bptt", "hybridize", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    assert ops.worker.call("programs") == ["bptt lstm tanh float64"]
    mx.make_forward(ops, "hybridize", cell="lstm")(P, X, Y, S)
    mx.make_train_step(ops, "autograd", "hybridize", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    assert ops.worker.call("programs") == ["bptt lstm tanh float64", "forward lstm tanh float64"]


@pytest.mark.mxnet
def test_decoding_in_the_worker_equals_numpys_host_loop(mx: Any) -> None:
    """``ops.decode`` (core's loop run in the worker) and NumPy's host loop: the same tokens,
    greedy and with the same uniforms at a temperature."""
    from rosetta_rnn.core import sampling

    params, _, _, _ = _problem("gru/reset-after")
    ref = numpy_backend.make_ops("float64", "cpu")
    ops = mx.make_ops("float64")
    P = model.to_backend(ops, params)
    for temperature in (None, 0.7):
        want = sampling.predict(
            ref,
            params,
            [3, 1, 4],
            30,
            temperature=temperature,
            rng=np.random.default_rng(2),
            compiled=False,
        )
        got = sampling.predict(
            ops, P, [3, 1, 4], 30, temperature=temperature, rng=np.random.default_rng(2)
        )
        assert got == want


@pytest.mark.mxnet
def test_the_worker_releases_what_the_main_process_dropped(mx: Any) -> None:
    ops = mx.make_ops("float32")
    held = ops.worker.call("free", [])
    for _ in range(3 * remote.FREE_EVERY):
        ops.asarray(np.ones((4, 4)))
    gc.collect()
    ops.asarray(np.ones(1))
    assert ops.worker.call("free", []) < held + remote.FREE_EVERY


@pytest.mark.mxnet
def test_a_missing_environment_or_a_gpu_is_one_line(
    mx: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BackendUnavailable, match="has no CUDA"):
        mx.make_ops("float32", "gpu")
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    assert environments.status("mxnet") == "missing"
    with pytest.raises(BackendUnavailable, match="rosetta-rnn backends --setup mxnet"):
        backends.load("mxnet")
    assert "--setup mxnet" in backends.info("mxnet")["error"]


@pytest.mark.mxnet
def test_train_without_the_environment_says_how_to_make_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    code, out, err = run_cli(capsys, "train", "--backend", "mxnet", "--epochs", "1")
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and "rosetta-rnn backends --setup mxnet" in err

"""The general mechanism of a backend whose framework runs in another environment
(``backends.remote``): ``Store`` and ``store_handlers`` on the worker's side, ``RemoteOps`` and
``RemoteArray`` on the main process's, tested in this process on NumPy arrays through the wire
format, so a mistake in it shows without MXNet (``test_backend_mxnet`` runs it on MXNet)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.backends import remote
from rosetta_rnn.conformance.problems import CELLS, Problem
from rosetta_rnn.core import cells, model


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


def test_arrays_dropped_by_a_replaced_ops_are_released_by_the_next() -> None:
    """The dropped references are the worker's, not one ops object's: an ops made afresh
    (as every ``make_ops`` is) releases what an earlier one left."""
    worker = _InProcess()
    for _ in range(4):
        ops = remote.RemoteOps(worker, "numpy-in-a-store", "float64")
        kept = [ops.asarray(np.ones(2)) for _ in range(remote.FREE_EVERY // 2)]
        del kept
    gc.collect()
    ops = remote.RemoteOps(worker, "numpy-in-a-store", "float64")
    ops.release_dropped()
    assert len(worker.store) == 0

"""What is TensorFlow's own in the TensorFlow backend: dense tape gradients, one trace for any
learning rate, the carried state cut from the graph, scan as a graph ``while_loop``, argmax ties
inside ``tf.function``, and devices. Agreement with NumPy in every mode is tests/test_backends.py's;
the quantities, tests/test_conformance.py's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from rnn_problems import Problem, random_problem  # noqa: E402

from rosetta_rnn.backends import numpy as numpy_backend  # noqa: E402
from rosetta_rnn.backends import tensorflow as tf_backend  # noqa: E402
from rosetta_rnn.core import model  # noqa: E402
from rosetta_rnn.core.errors import BackendUnavailable  # noqa: E402
from rosetta_rnn.core.ops import python_scan  # noqa: E402

REF = numpy_backend.make_ops("float64", "cpu")
COMPILED = {"tf.function": True, "eager": False}


def _problem(vocab: int, hidden: int, batch: int, steps: int, seed: int) -> Problem:
    """Weights with σ = 0.3, nonzero biases and a nonzero initial state, all float64."""
    return random_problem(np.random.default_rng(seed), vocab, hidden, batch, steps)


def _problems() -> list[tuple[int, int, int, int, int]]:
    """(vocab, hidden, batch, steps, seed): the one-step edge case plus random small shapes."""
    rng = np.random.default_rng(2024)
    shapes = [(5, 4, 1, 1, 0)]
    for seed in range(1, 4):
        v, h, b, s = (int(rng.integers(lo, hi + 1)) for lo, hi in ((5, 8), (4, 16), (1, 3), (1, 6)))
        shapes.append((v, h, b, s, seed))
    return shapes


PROBLEMS = _problems()


def _inputs(ops: tf_backend.TensorFlowOps, problem: Problem) -> tuple[Any, ...]:
    params, inputs, labels, state = problem
    return (
        model.to_backend(ops, params),
        ops.asarray(inputs),
        ops.asarray(labels),
        ops.asarray(state),
    )


# --- the train step in a graph -----------------------------------------------------------------


def test_tape_gradients_are_dense() -> None:
    """W_xh's gradient through the gather arrives as IndexedSlices; the engine densifies it."""
    ops = tf_backend.make_ops("float64", "cpu")
    _, grads, _ = tf_backend.make_value_and_grad(ops, "autograd")(
        *_inputs(ops, _problem(*PROBLEMS[1]))
    )
    assert all(isinstance(g, tf.Tensor) for g in grads.values())


@pytest.mark.parametrize("compiled", list(COMPILED), ids=list(COMPILED))
def test_new_lr_and_theta_do_not_retrace(compiled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    traces = []

    def counting_train_step(*args: Any) -> Any:
        traces.append(1)  # runs once per trace in tf.function, once per call eagerly
        return model.train_step(*args)

    monkeypatch.setattr(tf_backend, "train_step", counting_train_step)
    ops = tf_backend.make_ops("float64", "cpu")
    step = tf_backend.make_train_step(ops, mode=compiled)
    params, inputs, labels, state = _inputs(ops, _problem(5, 4, 2, 3, 0))
    for lr, theta in ((1.0, 1.0), (0.5, 0.1), (0.25, math.inf)):
        params, state, _, _ = step(params, inputs, labels, state, lr, theta)
    assert len(traces) == (1 if COMPILED[compiled] else 3)


@pytest.mark.parametrize("compiled", list(COMPILED), ids=list(COMPILED))
def test_returned_state_is_cut_from_the_graph(compiled: str) -> None:
    ops = tf_backend.make_ops("float64", "cpu")
    step = tf_backend.make_train_step(ops, mode=compiled)
    params, inputs, labels, state = _inputs(ops, _problem(5, 4, 2, 3, 0))
    with tf.GradientTape() as tape:
        tape.watch([params, state])
        _, new_state, _, _ = step(params, inputs, labels, state, 1.0, 1.0)
        total = tf.reduce_sum(new_state)
    # eager gives None; a tf.function's gradient function gives zeros for a cut output
    for g in tape.gradient(total, [params["W_hh"], state]):
        assert g is None or not np.any(ops.to_numpy(g))


# --- scan and argmax --------------------------------------------------------------------------


def _scan_problem() -> tuple[Callable[[Any, Any], tuple[Any, Any]], np.ndarray, tuple[Any, ...]]:
    """A carry pair, tuple xs and tuple ys: every structure scan has to keep."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 3))

    def fn(carry: Any, x: Any) -> tuple[Any, Any]:
        h, n = carry
        x_a, x_b = x
        h = h * 0.5 + x_a * x_b
        return (h, n + 1.0), (h * 2.0, x_b - n)

    return fn, rng.standard_normal((2, 3)), (a, b)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("compiled", list(COMPILED), ids=list(COMPILED))
def test_scan_equals_python_scan(compiled: str, reverse: bool) -> None:
    fn, h0, xs = _scan_problem()
    (ref_h, ref_n), (ref_y0, ref_y1) = python_scan(REF, fn, (h0, 0.0), xs, reverse)

    ops = tf_backend.make_ops("float64", "cpu")

    def run(h: Any, a: Any, b: Any) -> Any:
        return ops.scan(fn, (h, tf.constant(0.0, tf.float64)), (a, b), reverse=reverse)

    if COMPILED[compiled]:
        run = tf.function(run)
    (h, n), (y0, y1) = run(*(ops.asarray(v) for v in (h0, *xs)))
    assert y0.shape == (6, 2, 3) and y1.shape == (6, 3)
    for got, ref in ((h, ref_h), (n, ref_n), (y0, ref_y0), (y1, ref_y1)):
        assert np.allclose(ops.to_numpy(got), ref, rtol=1e-15, atol=1e-15)


def test_scan_inside_tf_function_is_a_graph_loop() -> None:
    """Tracing builds one while loop instead of unrolling num_steps copies of the body."""
    ops = tf_backend.make_ops("float32", "cpu")
    fn, h0, xs = _scan_problem()
    graph = (
        tf.function(lambda h, a, b: ops.scan(fn, (h, 0.0), (a, b)))
        .get_concrete_function(*(ops.asarray(v) for v in (h0, *xs)))
        .graph
    )
    assert any("While" in op.type for op in graph.get_operations())


@pytest.mark.parametrize("compiled", list(COMPILED), ids=list(COMPILED))
def test_argmax_ties_go_to_the_lowest_index(compiled: str) -> None:
    ops = tf_backend.make_ops("float32", "cpu")
    argmax = tf.function(ops.argmax, reduce_retracing=True) if COMPILED[compiled] else ops.argmax
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    assert ops.to_numpy(argmax(ops.asarray(x), 1)).tolist() == [1, 0, 2]
    assert ops.to_numpy(argmax(ops.asarray(x), -1)).tolist() == [1, 0, 2]
    assert ops.to_numpy(argmax(ops.asarray(x), 0)).tolist() == [1, 0, 2, 2]
    many_ties = np.random.default_rng(0).integers(0, 3, (50, 40)).astype(np.float64)
    for axis in (0, 1):
        got = ops.to_numpy(argmax(ops.asarray(many_ties), axis))
        assert np.array_equal(got, np.argmax(many_ties, axis=axis))  # NumPy: the first maximum


# --- devices ----------------------------------------------------------------------------------


def test_cpu_device() -> None:
    ops = tf_backend.make_ops("float32", "cpu")
    assert ops.device == "cpu" and ops.tf_device == "/CPU:0"
    assert ops.asarray(np.ones(2)).device.endswith("CPU:0")
    devices = tf_backend.devices()
    assert devices[0] == "cpu" and tf_backend.resolve_device("auto") in devices
    assert all(tf_backend.supports_float64(d) for d in devices)


@pytest.mark.parametrize("device", ["gpu", "gpu:0", "gpu:3"])
def test_gpu_without_a_gpu_is_a_one_line_error(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf_backend, "_gpu_count", lambda: 0)
    with pytest.raises(BackendUnavailable, match="TensorFlow sees no GPU") as e:
        tf_backend.make_ops("float32", device)
    assert "\n" not in str(e.value)
    assert tf_backend.resolve_device("auto") == "cpu"
    assert tf_backend.devices() == ["cpu"]


@pytest.mark.parametrize("device", ["tpu", "gpu:x", "cuda", "gpu:-1"])
def test_unknown_device(device: str) -> None:
    with pytest.raises(BackendUnavailable, match="unknown device") as e:
        tf_backend.resolve_device(device)
    assert "\n" not in str(e.value)


def test_gpu_branch_with_two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf_backend, "_gpu_count", lambda: 2)
    assert tf_backend.devices() == ["cpu", "gpu:0", "gpu:1"]
    assert tf_backend.resolve_device("auto") == "gpu:0"
    assert tf_backend.resolve_device("gpu") == "gpu:0"
    assert tf_backend.resolve_device("gpu:1") == "gpu:1"
    assert tf_backend.resolve_device("cpu") == "cpu"
    with pytest.raises(BackendUnavailable, match=r"sees 2 GPU.*no gpu:3"):
        tf_backend.resolve_device("gpu:3")
    assert tf_backend.TensorFlowOps("float32", "gpu:1").tf_device == "/GPU:1"

"""What is JAX's own in the JAX backend: ``lax.scan`` when traced and a Python loop when not,
no retracing for a new learning rate, ``stop_gradient``, and devices. Agreement with NumPy in
every mode is tests/test_backends.py's; the quantities, tests/test_conformance.py's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax backend needs JAX: pip install 'rosetta-rnn[jax]'")

from rnn_problems import Problem, random_problem  # noqa: E402

from rosetta_rnn.backends import jax as jax_backend  # noqa: E402
from rosetta_rnn.backends import numpy as numpy_backend  # noqa: E402
from rosetta_rnn.conformance.checks import max_error  # noqa: E402
from rosetta_rnn.core import model  # noqa: E402
from rosetta_rnn.core.errors import BackendUnavailable  # noqa: E402
from rosetta_rnn.core.ops import python_scan  # noqa: E402

REF = numpy_backend.make_ops("float64", "cpu")


def problem(seed: int) -> Problem:
    """A random small problem in float64: parameters σ = 0.3, nonzero biases and state."""
    rng = np.random.default_rng(seed)
    vocab, hidden = int(rng.integers(5, 9)), int(rng.integers(4, 17))
    batch, steps = int(rng.integers(1, 4)), int(rng.integers(1, 7))
    return random_problem(rng, vocab, hidden, batch, steps, bias=0.3)


def to_jax(
    ops: jax_backend.JaxOps,
    params: dict[str, np.ndarray],
    inputs: np.ndarray,
    labels: np.ndarray,
    state: np.ndarray,
) -> tuple[Any, ...]:
    """A NumPy problem as backend arrays (parameters already in the dtype wanted)."""
    return (
        model.to_backend(ops, params),
        ops.asarray(inputs),
        ops.asarray(labels),
        ops.asarray(state),
    )


def test_new_lr_or_theta_does_not_retrace(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = []

    def counting_train_step(*args: Any) -> Any:
        traces.append(1)
        return model.train_step(*args)

    monkeypatch.setattr(jax_backend, "train_step", counting_train_step)
    ops = jax_backend.make_ops("float32", "cpu")
    args = to_jax(ops, *problem(1))
    step = jax_backend.make_train_step(ops, mode="jit")
    for lr, theta in [(1.0, 1.0), (0.5, 1.0), (0.25, math.inf)]:
        step(*args, lr, theta)
    assert len(traces) == 1


# --- operations ---------------------------------------------------------------------------


def _scan_fn(carry: Any, x: tuple[Any, Any]) -> tuple[Any, tuple[Any, Any]]:
    a, b = x
    carry = 0.5 * carry + a * b
    return carry, (carry * a, b - carry)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("traced", [True, False], ids=["lax-scan", "python-loop"])
def test_scan_equals_python_scan(reverse: bool, traced: bool) -> None:
    rng = np.random.default_rng(0)
    a, b, c0 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    ref_carry, (ref_y1, ref_y2) = python_scan(REF, _scan_fn, c0, (a, b), reverse)

    ops = jax_backend.make_ops("float64", "cpu")

    def run(c: Any, a: Any, b: Any) -> Any:
        return ops.scan(_scan_fn, c, (a, b), reverse=reverse)

    args = (ops.asarray(c0), ops.asarray(a), ops.asarray(b))
    if traced:
        assert "scan" in str(jax.make_jaxpr(run)(*args))  # the traced path is lax.scan
        run = jax.jit(run)
    carry, (y1, y2) = run(*args)
    got = {"carry": carry, "y1": y1, "y2": y2}
    assert max_error(got, {"carry": ref_carry, "y1": ref_y1, "y2": ref_y2}) <= 1e-15


def test_eager_step_ops_loop_in_python() -> None:
    ops = jax_backend.JaxOps("float64", "cpu", eager_loops=True)
    xs = ops.asarray(np.arange(4.0))
    jaxpr = str(jax.make_jaxpr(lambda c, x: ops.scan(lambda c, x: (c + x, c * x), c, x))(0.0, xs))
    assert "scan" not in jaxpr
    carry, ys = ops.scan(lambda c, x: (c + x, c * x), ops.zeros(()), xs)
    assert float(carry) == 6.0 and np.array_equal(np.asarray(ys), [0.0, 0.0, 2.0, 9.0])


def test_stop_gradient_cuts_the_graph() -> None:
    ops = jax_backend.make_ops("float64", "cpu")
    grad = jax.grad(lambda x: ops.sum(x * ops.stop_gradient(x)))(ops.asarray(np.arange(3.0)))
    assert np.asarray(grad).tolist() == [0.0, 1.0, 2.0]


# --- devices ------------------------------------------------------------------------------


def test_module_names_and_cpu() -> None:
    assert jax_backend.GRAD_MODES[0] == "autograd"
    assert jax_backend.COMPILE_MODES == ("jit", "eager")
    assert jax_backend.version() == jax.__version__
    assert jax_backend.devices()[0] == "cpu"
    assert jax_backend.supports_float64("cpu")
    assert jax_backend.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device", ["gpu", "gpu:3"])
def test_gpu_without_a_gpu_is_one_line(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jax_backend, "_gpu_devices", lambda: [])
    with pytest.raises(BackendUnavailable, match="JAX sees no GPU") as e:
        jax_backend.make_ops("float32", device)
    assert "\n" not in str(e.value)
    assert jax_backend.resolve_device("auto") == "cpu"
    assert jax_backend.devices() == ["cpu"]


@pytest.mark.parametrize("device", ["tpu", "cuda:0", "gpu:x", ""])
def test_unknown_device(device: str) -> None:
    with pytest.raises(BackendUnavailable, match="unknown device") as e:
        jax_backend.resolve_device(device)
    assert "\n" not in str(e.value)


def test_gpu_branch_with_two_stand_in_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu:N code path, run on CPU: two CPU devices stand in for two GPUs."""
    cpu = jax.devices("cpu")[0]
    monkeypatch.setattr(jax_backend, "_gpu_devices", lambda: [cpu, cpu])
    assert jax_backend.devices() == ["cpu", "gpu:0", "gpu:1"]
    assert jax_backend.resolve_device("auto") == "gpu:0"
    assert jax_backend.resolve_device("gpu") == "gpu:0"
    assert jax_backend.resolve_device("gpu:1") == "gpu:1"
    with pytest.raises(BackendUnavailable, match=r"sees 2 GPU.*no gpu:2") as e:
        jax_backend.resolve_device("gpu:2")
    assert "\n" not in str(e.value)
    ops = jax_backend.make_ops("float64", "gpu:1")
    assert ops.device == "gpu:1"
    x = ops.asarray(np.ones(2))
    assert x.devices() == {cpu} and ops.zeros((2,)).devices() == {cpu}

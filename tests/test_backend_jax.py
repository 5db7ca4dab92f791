"""The JAX backend against the NumPy reference: dtypes, gradients, the train step, scan, devices,
and the CLI. NumPy float64 BPTT is the reference for every comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax backend needs JAX: pip install 'rosetta-rnn[jax]'")

from rnn_problems import Problem, random_problem  # noqa: E402

from rosetta_rnn.backends import jax as jax_backend  # noqa: E402
from rosetta_rnn.backends import numpy as numpy_backend  # noqa: E402
from rosetta_rnn.cli import main  # noqa: E402
from rosetta_rnn.core import model  # noqa: E402
from rosetta_rnn.core.errors import BackendUnavailable  # noqa: E402
from rosetta_rnn.core.ops import python_scan  # noqa: E402

REF = numpy_backend.make_ops("float64", "cpu")
DTYPES = ("float32", "float64")
GRADS = jax_backend.GRAD_MODES
COMPILED = {"jit": True, "eager": False}
# max|a - b| / max|ref| against NumPy float64; float32 is compared with the float64 reference
TOL = {"float32": 1e-5, "float64": 1e-12}
# eager JAX compiles every operation for every new shape: fewer problems there
SEEDS = {True: range(4), False: range(2)}

dtype_param = pytest.mark.parametrize("dtype", DTYPES)
grad_param = pytest.mark.parametrize("grad", GRADS)
compiled_param = pytest.mark.parametrize("compiled", list(COMPILED.values()), ids=list(COMPILED))


def rel_err(a: Any, ref: np.ndarray) -> float:
    """max|a - ref| / max|ref|, in float64."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-300))


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


# --- dtypes -------------------------------------------------------------------------------


@dtype_param
def test_arrays_have_the_asked_dtype(dtype: str) -> None:
    ops = jax_backend.make_ops(dtype, "cpu")
    assert ops.dtype == dtype and ops.device == "cpu" and ops.name == "jax"
    assert ops.asarray(np.ones(3)).dtype == dtype  # float64 NumPy -> dtype
    assert ops.asarray(np.ones(3, np.float32)).dtype == dtype
    assert ops.asarray(np.arange(3)).dtype == np.int64  # integers stay integers
    assert ops.zeros((2, 3)).dtype == dtype
    assert ops.one_hot(ops.asarray(np.arange(3)), 4).dtype == dtype
    x = ops.asarray(np.array([0.5, 2.0]))
    assert ops.cast(x > 1).dtype == dtype
    assert ops.minimum(1.0, x).dtype == dtype and ops.minimum(x, 1.0).dtype == dtype
    assert ops.minimum(1.0, 2.0).dtype == dtype
    assert (1.0 - x * x).dtype == dtype  # Python scalars are weakly typed


# --- against the NumPy reference ----------------------------------------------------------


def _worst_against_numpy(
    dtype: str, grad: str, compiled: bool, seeds: range, activation: str = "tanh"
) -> float:
    """The largest relative error of loss, H_T and the five gradients over ``seeds``."""
    ops = jax_backend.make_ops(dtype, "cpu")
    value_and_grad = jax_backend.make_value_and_grad(ops, grad, activation, compiled=compiled)
    worst = 0.0
    for seed in seeds:
        params, inputs, labels, state = problem(seed)
        ref_loss, ref_grads, ref_H, _ = model.bptt(REF, params, inputs, labels, state, activation)
        args = to_jax(ops, {k: v.astype(dtype) for k, v in params.items()}, inputs, labels, state)
        loss, grads, H_T = value_and_grad(*args)
        assert loss.dtype == H_T.dtype == dtype
        errors = [rel_err(loss, ref_loss), rel_err(H_T, ref_H)]
        errors += [rel_err(grads[k], ref_grads[k]) for k in model.PARAM_NAMES]
        worst = max(worst, *errors)
    return worst


@compiled_param
@grad_param
@dtype_param
def test_grads_match_numpy(dtype: str, grad: str, compiled: bool) -> None:
    assert _worst_against_numpy(dtype, grad, compiled, SEEDS[compiled]) <= TOL[dtype]


@grad_param
def test_relu_grads_match_numpy(grad: str) -> None:
    assert _worst_against_numpy("float64", grad, True, range(2), activation="relu") <= 1e-12


@compiled_param
@grad_param
@dtype_param
def test_train_step_matches_numpy(dtype: str, grad: str, compiled: bool) -> None:
    params, inputs, labels, state = problem(7)
    _, ref_grads, _, _ = model.bptt(REF, params, inputs, labels, state)
    unclipped = float(model.global_norm(REF, ref_grads))
    ref_step = numpy_backend.make_train_step(REF)
    ops = jax_backend.make_ops(dtype, "cpu")
    step = jax_backend.make_train_step(ops, grad=grad, compiled=compiled)
    args = to_jax(ops, {k: v.astype(dtype) for k, v in params.items()}, inputs, labels, state)
    # θ = half the norm: the clipping halves every gradient; θ = inf: no clipping
    for theta in (unclipped / 2, math.inf):
        ref_params, ref_H, ref_loss, ref_norm = ref_step(params, inputs, labels, state, 2.0, theta)
        new_params, H_T, loss, norm = step(*args, 2.0, theta)
        assert {k: v.dtype for k, v in new_params.items()} == dict.fromkeys(ref_params, dtype)
        assert H_T.dtype == loss.dtype == norm.dtype == dtype and loss.shape == norm.shape == ()
        errors = [rel_err(loss, ref_loss), rel_err(H_T, ref_H), rel_err(norm, ref_norm)]
        errors += [rel_err(new_params[k], ref_params[k]) for k in model.PARAM_NAMES]
        if dtype == "float64":  # the update alone, p_new - p, without the parameters around it
            errors += [
                rel_err(new_params[k] - args[0][k], ref_params[k] - params[k])
                for k in model.PARAM_NAMES
            ]
        assert max(errors) <= TOL[dtype], theta


def test_new_lr_or_theta_does_not_retrace(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = []

    def counting_train_step(*args: Any) -> Any:
        traces.append(1)
        return model.train_step(*args)

    monkeypatch.setattr(jax_backend, "train_step", counting_train_step)
    ops = jax_backend.make_ops("float32", "cpu")
    args = to_jax(ops, *problem(1))
    step = jax_backend.make_train_step(ops, compiled=True)
    for lr, theta in [(1.0, 1.0), (0.5, 1.0), (0.25, math.inf)]:
        step(*args, lr, theta)
    assert len(traces) == 1


def test_unknown_grad_is_one_line() -> None:
    ops = jax_backend.make_ops("float64", "cpu")
    with pytest.raises(BackendUnavailable, match="autograd or bptt") as e:
        jax_backend.make_train_step(ops, grad="finite-differences")
    assert "\n" not in str(e.value)


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
    for got, ref in [(carry, ref_carry), (y1, ref_y1), (y2, ref_y2)]:
        assert rel_err(got, ref) <= 1e-15


def test_eager_step_ops_loop_in_python() -> None:
    ops = jax_backend.JaxOps("float64", "cpu", eager_loops=True)
    xs = ops.asarray(np.arange(4.0))
    jaxpr = str(jax.make_jaxpr(lambda c, x: ops.scan(lambda c, x: (c + x, c * x), c, x))(0.0, xs))
    assert "scan" not in jaxpr
    carry, ys = ops.scan(lambda c, x: (c + x, c * x), ops.zeros(()), xs)
    assert float(carry) == 6.0 and np.array_equal(np.asarray(ys), [0.0, 0.0, 2.0, 9.0])


def test_argmax_ties_go_to_the_lowest_index() -> None:
    ops = jax_backend.make_ops("float32", "cpu")
    x = ops.asarray(np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 0.0, 1.0]]))
    assert np.asarray(ops.argmax(x, axis=1)).tolist() == [1, 0, 1]
    assert np.asarray(ops.argmax(x, axis=0)).tolist() == [1, 0, 0, 1]


@dtype_param
def test_operations_match_numpy(dtype: str) -> None:
    ops = jax_backend.make_ops(dtype, "cpu")
    ref = numpy_backend.make_ops(dtype, "cpu")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype)
    ids = rng.integers(0, 3, (2, 5))
    ja, jb, jids = ops.asarray(a), ops.asarray(b), ops.asarray(ids)
    pairs = [
        (ops.matmul(ja, jb), ref.matmul(a, b)),
        (ops.one_hot(jids, 3), ref.one_hot(ids, 3)),
        (ops.gather(ja, jids), ref.gather(a, ids)),
        (ops.gather(ja, jids), ref.one_hot(ids, 3) @ a),  # a gather is one_hot @ table
        (ops.tanh(ja), ref.tanh(a)),
        (ops.relu(ja), ref.relu(a)),
        (ops.exp(ja), ref.exp(a)),
        (ops.log(ops.exp(ja)), a),
        (ops.sqrt(ja * ja), np.abs(a)),
        (ops.minimum(0.1, ja), ref.minimum(0.1, a)),
        (ops.max(ja, axis=-1, keepdims=True), ref.max(a, axis=-1, keepdims=True)),
        (ops.sum(ja), ref.sum(a)),
        (ops.sum(ja, axis=0, keepdims=True), ref.sum(a, axis=0, keepdims=True)),
        (ops.reshape(ja, (2, 6)), ref.reshape(a, (2, 6))),
        (ops.transpose(ja), ref.transpose(a)),
        (ops.stack([ja, ja], axis=1), ref.stack([a, a], axis=1)),
        (ops.concat([ja, ja]), ref.concat([a, a])),
        (ops.stop_gradient(ja), a),
        (ops.to_numpy(ja), a),
    ]
    for got, want in pairs:
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=10 * float(np.finfo(dtype).eps))
    assert isinstance(ops.to_numpy(ja), np.ndarray)


def test_stop_gradient_cuts_the_graph() -> None:
    ops = jax_backend.make_ops("float64", "cpu")
    grad = jax.grad(lambda x: ops.sum(x * ops.stop_gradient(x)))(ops.asarray(np.arange(3.0)))
    assert np.asarray(grad).tolist() == [0.0, 1.0, 2.0]


# --- devices ------------------------------------------------------------------------------


def test_module_names_and_cpu() -> None:
    assert (jax_backend.NAME, jax_backend.FRAMEWORK, jax_backend.EXTRA) == ("jax", "JAX", "jax")
    assert jax_backend.GRAD_MODES[0] == "autograd"
    assert jax_backend.COMPILE_MODES == ("jit", "eager")
    assert jax_backend.version() == jax.__version__
    assert jax_backend.devices()[0] == "cpu"
    assert jax_backend.supports_float64("cpu")
    assert jax_backend.resolve_device("cpu") == "cpu"
    assert jax.config.jax_enable_x64


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


# --- through the CLI ----------------------------------------------------------------------

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16", "--epochs", "5"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("the time traveller was expounding a recondite matter to us\n" * 10)
    return path


def _train(corpus: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    argv = ["train", "--corpus", str(corpus), *SMALL, "--dtype", "float64", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "extra",
    [[], ["--eager"], ["--grad", "bptt"]],
    ids=["autograd-jit", "autograd-eager", "bptt-jit"],
)
def test_cli_train_matches_numpy(
    extra: list[str], tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = _train(tiny_corpus, capsys, "--backend", "numpy")
    doc = _train(tiny_corpus, capsys, "--backend", "jax", *extra)
    assert doc["backend"] == "jax" and doc["dtype"] == "float64"
    assert doc["grad"] == ("bptt" if "bptt" in extra else "autograd")
    got = [h["perplexity"] for h in doc["history"]]
    want = [h["perplexity"] for h in ref["history"]]
    assert len(got) == len(want) == 5
    assert got == pytest.approx(want, rel=1e-9, abs=0)
    assert doc["samples"] == ref["samples"]

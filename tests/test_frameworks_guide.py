"""One small test per claim of docs/frameworks.md, "How the four frameworks differ on exactly
this model": each shows a framework's own behaviour next to what our backends do about it.

Timings are in the doc, with the commands that measure them; tests check structure only (a
scan in the jaxpr, a While op in the graph), never a time.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from rnn_problems import Problem, random_problem

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.backends import rules
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, data, model, sampling
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.ops import python_scan

Arrays = dict[str, np.ndarray]
REF = numpy_backend.make_ops("float64", "cpu")
V, H, B, T = 6, 5, 3, 4  # vocab_size, num_hiddens, batch_size, num_steps of the small problems


def _problem(seed: int = 0, steps: int = T) -> Problem:
    """float64 parameters with σ = 0.3 and nonzero biases, inputs, labels, a nonzero state."""
    return random_problem(np.random.default_rng(seed), V, H, B, steps, bias=0.3)


def _core_hidden(params: dict[str, np.ndarray], inputs: np.ndarray, state: np.ndarray) -> Any:
    return model.rnn_forward(REF, params, inputs, state)[0]


def _close(a: Any, b: Any, tol: float = 1e-12) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol * max(np.abs(b).max(), 1.0)


def _torch() -> Any:
    return pytest.importorskip("torch", reason="PyTorch not installed")


def _jax() -> Any:
    return pytest.importorskip("jax", reason="JAX not installed")


def _tf() -> Any:
    return pytest.importorskip("tensorflow", reason="TensorFlow not installed")


# --- 1. autodiff: four mechanisms -------------------------------------------------------------


def test_numpy_gradients_are_the_hand_written_bptt() -> None:
    assert numpy_backend.GRAD_MODES == ("bptt",)
    with pytest.raises(BackendUnavailable, match="no --grad 'autograd'; it has bptt"):
        numpy_backend.make_value_and_grad(REF, "autograd")
    params, inputs, labels, state = _problem()
    _, grads, _, _ = model.bptt(REF, params, inputs, labels, state)
    for name, index in [("W_xh", (2, 1)), ("W_hh", (0, 3)), ("b_h", (4,)), ("W_hq", (1, 5))]:
        eps = 1e-6  # central difference of the loss
        up, down = ({**params, name: params[name].copy()} for _ in range(2))
        up[name][index] += eps
        down[name][index] -= eps
        fd = (
            model.forward_loss(REF, up, inputs, labels, state)[0]
            - model.forward_loss(REF, down, inputs, labels, state)[0]
        ) / (2 * eps)
        assert abs(grads[name][index] - fd) <= 1e-8


def _count_nodes(grad_fn: Any, kind: str) -> int:
    """How many nodes of one kind (e.g. TanhBackward0) the recorded autograd graph holds."""
    seen: set[int] = set()
    stack, count = [grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        count += node.name() == kind
        stack.extend(child for child, _ in node.next_functions)
    return count


@pytest.mark.parametrize("steps", [1, 4, 9])
def test_torch_autograd_records_the_graph_as_the_loop_runs(steps: int) -> None:
    torch = _torch()
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    ops = torch_backend.make_ops("float64", "cpu")
    params, inputs, labels, state = _problem(steps=steps)
    leaves = {k: ops.asarray(v).requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss, _ = model.forward_loss(
            ops, leaves, ops.asarray(inputs), ops.asarray(labels), ops.asarray(state)
        )
    # the Python loop ran `steps` times, so the graph recorded `steps` tanh nodes
    assert _count_nodes(loss.grad_fn, "TanhBackward0") == steps
    (dW_hh,) = torch.autograd.grad(loss, [leaves["W_hh"]])
    _, grads, _, _ = model.bptt(REF, params, inputs, labels, state)
    assert _close(dW_hh.numpy(), grads["W_hh"])


def test_jax_value_and_grad_transforms_the_function() -> None:
    jax = _jax()
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    ops = jax_backend.make_ops("float64", "cpu")
    params, inputs, labels, state = _problem()

    def loss_fn(p: Any, x: Any, y: Any, s: Any) -> Any:
        return model.forward_loss(ops, p, x, y, s)

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)  # a new function, no tape
    args = (model.to_backend(ops, params), *(ops.asarray(a) for a in (inputs, labels, state)))
    _, grads = value_and_grad(*args)
    assert set(grads) == set(params)  # the gradient has the structure of the argument (pytree)
    _, ref, _, _ = model.bptt(REF, params, inputs, labels, state)
    assert all(_close(grads[k], ref[k]) for k in model.PARAM_NAMES)
    # the derived program: the forward lax.scan and the reverse scan JAX wrote for the backward
    jaxpr = str(jax.make_jaxpr(value_and_grad)(*args))
    assert jaxpr.count("scan[") == 2
    assert "reverse=False" in jaxpr and "reverse=True" in jaxpr


def test_tensorflow_tape_records_only_what_it_watches() -> None:
    tf = _tf()
    tf_backend = pytest.importorskip("rosetta_rnn.backends.tensorflow")
    x = tf.constant([1.0, 2.0], tf.float64)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(x * x)
    assert tape.gradient(y, x) is None  # a plain tensor is not watched: nothing recorded
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(x * x)
    assert tape.gradient(y, x).numpy().tolist() == [2.0, 4.0]
    # our backend watches the parameter dict, then asks the tape
    ops = tf_backend.make_ops("float64", "cpu")
    params, inputs, labels, state = _problem()
    vg = tf_backend.make_value_and_grad(ops, "autograd")
    _, grads, _ = vg(
        model.to_backend(ops, params), *(ops.asarray(a) for a in (inputs, labels, state))
    )
    _, ref, _, _ = model.bptt(REF, params, inputs, labels, state)
    assert all(_close(grads[k], ref[k]) for k in model.PARAM_NAMES)


# --- 2 and 3. torch.nn.RNN and Keras SimpleRNN: biases and weight layouts ---------------------


def _torch_rnn_hidden(
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray,
    bias_hh: np.ndarray,
    inputs: np.ndarray,
    state: np.ndarray,
) -> tuple[Any, Any]:
    """torch.nn.RNN loaded with the four tensors given: (hidden states (T, B, H), the layer)."""
    torch = _torch()
    rnn = torch.nn.RNN(V, H, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        for tensor, value in [
            (rnn.weight_ih_l0, weight_ih),
            (rnn.weight_hh_l0, weight_hh),
            (rnn.bias_ih_l0, bias_ih),
            (rnn.bias_hh_l0, bias_hh),
        ]:
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    X = torch.nn.functional.one_hot(torch.from_numpy(inputs), V).to(torch.float64)
    Hs, _ = rnn(X, torch.from_numpy(state)[None])
    return Hs, rnn


def test_torch_rnn_has_two_biases_and_only_their_sum_matters() -> None:
    torch = _torch()
    params, inputs, _, state = _problem()
    shapes = {n: tuple(p.shape) for n, p in torch.nn.RNN(V, H).named_parameters()}
    assert shapes == {
        "weight_ih_l0": (H, V),
        "weight_hh_l0": (H, H),
        "bias_ih_l0": (H,),
        "bias_hh_l0": (H,),
    }
    W_ih, W_hh, b_h = params["W_xh"].T, params["W_hh"].T, params["b_h"]
    split = np.random.default_rng(1).standard_normal(H)
    Hs, rnn = _torch_rnn_hidden(W_ih, W_hh, b_h - split, split, inputs, state)
    assert _close(Hs.detach().numpy(), _core_hidden(params, inputs, state))  # any split works
    Hs.sum().backward()
    assert _close(rnn.bias_ih_l0.grad, rnn.bias_hh_l0.grad)  # both get ∂loss/∂b_h
    doubled, _ = _torch_rnn_hidden(W_ih, W_hh, b_h, b_h, inputs, state)
    assert not _close(doubled.detach().numpy(), _core_hidden(params, inputs, state), 1e-3)


def test_torch_weights_are_transposed_and_a_square_one_fits_either_way() -> None:
    params, inputs, _, state = _problem()
    zero = np.zeros(H)
    want = _core_hidden(params, inputs, state)
    right, _ = _torch_rnn_hidden(
        params["W_xh"].T, params["W_hh"].T, params["b_h"], zero, inputs, state
    )
    assert _close(right.detach().numpy(), want)
    # W_hh is (H, H): loading it untransposed raises nothing and computes something else
    wrong, _ = _torch_rnn_hidden(
        params["W_xh"].T, params["W_hh"], params["b_h"], zero, inputs, state
    )
    assert not _close(wrong.detach().numpy(), want, 1e-3)
    with pytest.raises(RuntimeError):  # W_xh is (V, H): only the rectangular one is caught
        _torch_rnn_hidden(params["W_xh"], params["W_hh"].T, params["b_h"], zero, inputs, state)


def test_keras_simple_rnn_has_one_bias_and_our_layout() -> None:
    _tf()
    keras = pytest.importorskip("keras", reason="Keras not installed")
    from rosetta_rnn.conformance.subjects import KerasRNNOracle

    rnn = keras.layers.SimpleRNN(H, dtype="float64")
    rnn.build((None, None, V))
    assert [(w.name, tuple(w.shape)) for w in rnn.weights] == [
        ("kernel", (V, H)),  # W_xh as it is
        ("recurrent_kernel", (H, H)),  # W_hh as it is
        ("bias", (H,)),  # b_h, the only bias
    ]
    params, inputs, _, state = _problem()
    got = KerasRNNOracle("float64").forward(params, inputs, state)["hidden"]
    assert _close(got, _core_hidden(params, inputs, state))


# --- 4. dtypes: defaults and promotion --------------------------------------------------------


def test_numpy_and_torch_promote_float32_with_float64() -> None:
    torch = _torch()
    assert np.zeros(2).dtype == np.float64 and torch.zeros(2).dtype == torch.float32  # defaults
    assert (np.ones(2, np.float32) + np.ones(2, np.float64)).dtype == np.float64
    assert (torch.ones(2) + torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    # Python floats are weak in both; torch also lets a 0-d float64 tensor take the array's dtype
    assert (np.ones(2, np.float32) * 0.5).dtype == np.float32
    assert (torch.ones(2) * torch.tensor(0.5, dtype=torch.float64)).dtype == torch.float32


def test_tensorflow_never_promotes() -> None:
    tf = _tf()
    a, b = tf.constant([1.0]), tf.constant([1.0], tf.float64)
    assert a.dtype == tf.float32  # the default float
    with pytest.raises(tf.errors.InvalidArgumentError, match="double tensor"):
        a + b  # eager
    with pytest.raises(TypeError, match="float64 that does not match type float32"):
        tf.function(lambda x, y: x + y, autograph=False)(a, b)  # while tracing
    assert (a * 0.5).dtype == tf.float32  # a Python float converts to the tensor's dtype


def test_jax_is_float32_unless_x64_is_on() -> None:
    jax = _jax()
    jnp = jax.numpy
    with jax.enable_x64(False):
        assert jnp.zeros(2).dtype == jnp.float32
        assert jnp.asarray(np.ones(2)).dtype == jnp.float32  # float64 NumPy arrives as float32
        with pytest.warns(UserWarning, match="truncated to dtype float32"):
            assert jnp.ones(2, dtype=jnp.float64).dtype == jnp.float32
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    with jax.enable_x64(True):  # what a float64 run turns on (tests/test_backends.py) ...
        assert jnp.zeros(2).dtype == jnp.float64  # ... makes the default float float64,
        ops = jax_backend.make_ops("float32", "cpu")  # so every array names its dtype
        assert ops.zeros((2,)).dtype == jnp.float32
        assert ops.asarray(np.ones(2)).dtype == jnp.float32
        assert (jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.float64)).dtype == jnp.float64


# --- 5. TF32 ------------------------------------------------------------------------------------

_TF32_DEFAULTS = {
    "torch": (
        "import torch; state = lambda: [torch.backends.cuda.matmul.allow_tf32, "
        "torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()]",
        # what make_ops calls for a float32 run on a CUDA device
        "import rosetta_rnn.backends.torch as b; b.full_float32()",
    ),
    "jax": (
        "import jax; state = lambda: [jax.config.jax_default_matmul_precision]",
        "import rosetta_rnn.backends.jax as b; b.make_ops('float32')",
    ),
    "tensorflow": (
        "import tensorflow as tf; "
        "state = lambda: [tf.config.experimental.tensor_float_32_execution_enabled()]",
        "import rosetta_rnn.backends.tensorflow as b; b.make_ops('float32')",
    ),
}
_TF32_WANT = {
    "torch": ([False, True, "highest"], [False, False, "highest"]),
    "jax": ([None], [None]),  # unchanged: each of our matmuls asks for precision="highest"
    "tensorflow": ([True], [False]),
}


@pytest.mark.parametrize("framework", list(_TF32_DEFAULTS))
def test_tf32_defaults_and_what_our_float32_runs_set(framework: str) -> None:
    pytest.importorskip(framework, reason=f"{framework} not installed")
    default, ours = _TF32_WANT[framework]
    setup, run = _TF32_DEFAULTS[framework]
    # the framework's own defaults, then what a float32 run of ours leaves, in a fresh process
    code = f"import json; {setup}; before = state(); {run}; print(json.dumps([before, state()]))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [default, ours]


def test_our_jax_matmuls_ask_for_the_highest_precision() -> None:
    jax = _jax()
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    ops = jax_backend.make_ops("float32", "cpu")
    x = ops.asarray(np.ones((2, 2)))
    assert "Precision.HIGHEST" in str(jax.make_jaxpr(ops.matmul)(x, x))


# --- 6. random numbers ------------------------------------------------------------------------


def _jax_float64_normals(jax: Any) -> np.ndarray:
    with jax.enable_x64(True):  # as our backend runs: float64 draws from the same key
        return np.asarray(jax.random.normal(jax.random.key(0), (3,), dtype="float64"))


def test_the_same_seed_gives_different_normals_in_every_framework() -> None:
    torch, jax, tf = _torch(), _jax(), _tf()
    draws = {
        "numpy": np.random.default_rng(0).standard_normal(3),
        "numpy-legacy": np.random.RandomState(0).standard_normal(3),
        "torch": torch.randn(3, generator=torch.Generator().manual_seed(0)).numpy(),
        "jax": np.asarray(jax.random.normal(jax.random.key(0), (3,), dtype="float32")),
        "jax-float64": _jax_float64_normals(jax),
        "tf": tf.random.Generator.from_seed(0).normal((3,)).numpy(),
        "tf-stateless": tf.random.stateless_normal((3,), seed=[0, 0]).numpy(),
    }
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(draws[a], draws[b], atol=1e-3), (a, b)
    # each is reproducible on its own: seeding works within a framework, never across
    again = torch.randn(3, generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(again, draws["torch"])
    assert np.allclose(draws["numpy"], [0.12573022, -0.13210486, 0.64042265])


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_core_draws_everything_from_one_numpy_generator(backend: str) -> None:
    module = pytest.importorskip(f"rosetta_rnn.backends.{backend}")
    ops = module.make_ops("float64", "cpu")
    ref = model.init_params(V, H, np.random.default_rng(0), "float64")
    got = model.to_numpy(ops, model.to_backend(ops, ref))
    assert all(np.array_equal(got[k], ref[k]) for k in ref)  # bit for bit: drawn once, in NumPy
    sharp = {k: v * 30 if k.startswith("W") else v for k, v in ref.items()}  # worth sampling
    sampled, want = (
        sampling.predict(o, p, [1, 2], 20, temperature=1.0, rng=np.random.default_rng(7))
        for o, p in [(ops, model.to_backend(ops, sharp)), (REF, sharp)]
    )
    assert sampled == want  # the uniforms come from the core generator, not the framework


# --- 7. clipping --------------------------------------------------------------------------------


def _core_scale(g: np.ndarray, theta: float) -> float:
    clipped, _ = model.clip_by_global_norm(REF, {"W_xh": g}, theta)
    return float(clipped["W_xh"][0] / g[0])


@pytest.mark.parametrize(
    ("norm", "theta", "torch_scale", "exact_scale"),
    [
        (2.0, 1.0, 1.0 / (2.0 + 1e-6), 0.5),  # 0.49999975: off by 5e-7 relative
        (2e-6, 1e-6, 1e-6 / 3e-6, 0.5),  # small gradients: a third instead of a half
        (1e-6, 1e-6, 0.5, 1.0),  # at the threshold torch still halves, d2l leaves it
    ],
)
def test_torch_clip_grad_norm_adds_an_epsilon(
    norm: float, theta: float, torch_scale: float, exact_scale: float
) -> None:
    torch = _torch()
    g = np.array([0.6, 0.8]) * norm  # ‖g‖ = norm
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([p], max_norm=theta)
    assert p.grad.numpy()[0] / g[0] == pytest.approx(torch_scale, rel=1e-12)
    assert _core_scale(g, theta) == pytest.approx(exact_scale, rel=1e-15)  # d2l: min(1, θ/‖g‖)


@pytest.mark.parametrize(("norm", "theta"), [(2.0, 1.0), (2e-6, 1e-6), (1e-6, 1e-6), (0.5, 1.0)])
def test_tensorflow_clip_by_global_norm_is_d2l(norm: float, theta: float) -> None:
    tf = _tf()
    g = np.array([0.6, 0.8]) * norm
    (clipped,), global_norm = tf.clip_by_global_norm([tf.constant(g)], theta)
    assert float(global_norm) == pytest.approx(norm, rel=1e-15)
    assert clipped.numpy()[0] / g[0] == pytest.approx(_core_scale(g, theta), rel=1e-15)


# --- 8. argmax ties -----------------------------------------------------------------------------

TIES = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
FIRST = [1, 0, 2]


def _framework_argmax(framework: str) -> Callable[[np.ndarray], list[int]]:
    if framework == "numpy":
        return lambda x: np.argmax(x, axis=1).tolist()
    if framework == "torch":
        torch = _torch()
        return lambda x: torch.argmax(torch.from_numpy(x), dim=1).tolist()
    if framework == "jax":
        jnp = _jax().numpy
        return lambda x: np.asarray(jnp.argmax(jnp.asarray(x), axis=1)).tolist()
    tf = _tf()
    return lambda x: tf.math.argmax(tf.constant(x), axis=1).numpy().tolist()


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax", "tensorflow"])
def test_argmax_ties_go_to_the_first_index_on_cpu(framework: str) -> None:
    argmax = _framework_argmax(framework)
    assert argmax(TIES) == FIRST
    many = np.random.default_rng(0).integers(0, 3, (200, 28)).astype(np.float32)
    assert argmax(many) == [int(np.flatnonzero(r == r.max())[0]) for r in many]


def test_greedy_choice_is_where_the_tie_rule_lives() -> None:
    # sampling decides in NumPy, from the logits the backend hands over
    assert [sampling.greedy_choice(row) for row in TIES] == FIRST
    assert sampling.greedy_choice(np.zeros((1, 28))) == 0


# --- 9. label layout (d2l-en #1349) -------------------------------------------------------------


def test_labels_must_be_transposed_to_time_major() -> None:
    rng = np.random.default_rng(0)
    steps = batch = 5  # batch == steps: a forgotten transpose cannot show up as a shape error
    corpus = rng.integers(0, V, 400)
    X, Y = next(data.seq_data_iter_sequential(corpus, batch, steps, rng))
    assert X.shape == Y.shape == (batch, steps)  # d2l's iterators are batch-major
    params = model.init_params(V, H, rng, "float64", sigma=0.5)
    Hs, _ = model.rnn_forward(REF, params, X.T, np.zeros((batch, H)))  # the model is time-major
    logits = model.output_layer(REF, params, Hs)  # rows in (t, b) order
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean([log_p[t * batch + b, Y[b, t]] for t in range(steps) for b in range(batch)])
    assert model.cross_entropy(REF, logits, Y.T) == pytest.approx(want, rel=1e-12)
    # Y as it comes: flattened in (b, t) order against (t, b) rows; nothing raises
    assert model.cross_entropy(REF, logits, Y) != pytest.approx(want, rel=1e-3)


# --- 10. scan vs an unrolled loop ---------------------------------------------------------------


def _jaxpr_lines(step: Any, ops: Any, steps: int) -> tuple[int, str]:
    jax = _jax()
    params, inputs, labels, state = _problem(steps=steps)
    args = (
        model.to_backend(ops, {k: v.astype(ops.dtype) for k, v in params.items()}),
        *(ops.asarray(a) for a in (inputs, labels, state)),
    )
    text = str(jax.make_jaxpr(step)(*args, 1.0, 1.0))
    return len(text.splitlines()), text


def test_jax_jit_step_is_one_scan_whatever_num_steps() -> None:
    _jax()
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    ops = jax_backend.make_ops("float32", "cpu")
    ours = jax_backend.make_train_step(ops, mode="jit")  # what `train` runs
    (short, text), (long, _) = (_jaxpr_lines(ours, ops, n) for n in (3, 12))
    assert "scan[" in text and short == long  # the program does not grow with num_steps
    unrolled = jax_backend.make_train_step(ops, mode="eager")  # the eager step: a Python loop
    (short, text), (long, _) = (_jaxpr_lines(unrolled, ops, n) for n in (3, 12))
    assert "scan[" not in text and long > short + 9 * 5  # traced under jit, it unrolls


def _graph_ops(ops: Any, steps: int) -> list[str]:
    tf = _tf()
    tf_backend = pytest.importorskip("rosetta_rnn.backends.tensorflow")
    params, inputs, labels, state = _problem(steps=steps)
    vg = tf.function(tf_backend.make_value_and_grad(ops, "autograd"), autograph=False)
    args = (model.to_backend(ops, params), *(ops.asarray(a) for a in (inputs, labels, state)))
    return [op.type for op in vg.get_concrete_function(*args).graph.get_operations()]


def test_tensorflow_traced_step_is_one_while_loop_whatever_num_steps() -> None:
    _tf()
    tf_backend = pytest.importorskip("rosetta_rnn.backends.tensorflow")
    ops = tf_backend.make_ops("float64", "cpu")
    short, long = _graph_ops(ops, 3), _graph_ops(ops, 12)
    assert any("While" in t for t in short) and len(short) == len(long)

    base: Any = tf_backend.TensorFlowOps

    class UnrolledOps(base):
        """scan as a Python loop even while tracing: num_steps copies of the body."""

        def scan(self, fn: Any, carry: Any, xs: Any, reverse: bool = False) -> tuple[Any, Any]:
            return python_scan(self, fn, carry, xs, reverse)

    unrolled = UnrolledOps("float64", "cpu")
    short, long = _graph_ops(unrolled, 3), _graph_ops(unrolled, 12)
    assert not any("While" in t for t in short) and len(long) > len(short) + 9 * 5


# --- 13. the training step, four ways -------------------------------------------------------

STEP_SOURCES = [
    "core/model.py",
    "backends/numpy.py",
    "backends/torch.py",
    "backends/jax.py",
    "backends/tensorflow.py",
]


def _guide_section(number: int) -> str:
    """The text of the guide's section ``## <number>.``, up to the next ``## ``."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _shown_code(section: str) -> list[tuple[str, str]]:
    """(source file, code) for each ```python block, named by the `path` on the line above; a
    block inside a framework's tab (``=== "JAX"``) is indented by the tab's four spaces."""
    found = re.findall(
        r"^( *)`([\w/]+\.py)`[^\n]*\n\n?\1```python\n(.*?)^\1```", section, re.M | re.S
    )
    return [(path, textwrap.dedent(code)) for _, path, code in found]


@pytest.mark.parametrize("source", STEP_SOURCES)
def test_the_training_steps_shown_are_the_source(source: str) -> None:
    section = _guide_section(13)
    shown = _shown_code(section)
    assert len(shown) == section.count("```python")  # every block names its file
    blocks = [code for path, code in shown if path == source]
    assert blocks, f"section 13 shows nothing from {source}"
    text = (GUIDE.parent.parent / source).read_text(encoding="utf-8")
    for code in blocks:
        code = textwrap.dedent(code)
        # literally in the file, at some common indentation (blank lines carry none)
        assert any(textwrap.indent(code, " " * n) in text for n in range(0, 13, 4)), code


@pytest.mark.parametrize(
    ("backend", "default"),
    [("numpy", "eager"), ("torch", "eager"), ("jax", "jit"), ("tensorflow", "tf.function")],
)
def test_only_jax_and_tensorflow_compile_the_step_by_default(backend: str, default: str) -> None:
    module = pytest.importorskip(f"rosetta_rnn.backends.{backend}")
    assert rules.pick_mode(backend, "compile mode", None, module.COMPILE_MODES) == default
    if backend == "jax":  # the default step is a jitted function
        ops = module.make_ops("float32", "cpu")
        assert hasattr(module.make_train_step(ops), "lower")


# --- 14. the hidden state between minibatches -------------------------------------------------


def _two_minibatches() -> tuple[Arrays, list[np.ndarray], Arrays, Arrays]:
    """Two sequential minibatches: (params, [X1, Y1, X2, Y2, s0], the gradient of minibatch 2's
    loss with its initial state H1 taken as a constant, the same through both minibatches)."""
    params, X1, Y1, s0 = _problem(0)
    _, X2, Y2, _ = _problem(1)
    _, H1 = model.rnn_forward(REF, params, X1, s0)
    _, truncated, _, _ = model.bptt(REF, params, X2, Y2, H1)
    # through both: minibatch 2's loss over the 2T steps that start from s0
    _, full, _, _ = model.bptt(REF, params, np.concatenate([X1, X2]), Y2, s0)
    assert not _close(full["W_hh"], truncated["W_hh"], 1e-3)  # the two differ
    return params, [X1, Y1, X2, Y2, s0], truncated, full


def _all_close(grads: Any, ref: Arrays) -> bool:
    return all(_close(np.asarray(grads[k]), ref[k]) for k in model.PARAM_NAMES)


def test_torch_needs_detach_between_minibatches() -> None:
    torch = _torch()
    ops = pytest.importorskip("rosetta_rnn.backends.torch").make_ops("float64", "cpu")
    params, arrays, truncated, full = _two_minibatches()
    X1, Y1, X2, Y2, s0 = (ops.asarray(a) for a in arrays)
    leaves = {k: ops.asarray(v).requires_grad_(True) for k, v in params.items()}
    names = list(model.PARAM_NAMES)

    def grads_of(loss: Any) -> dict[str, Any]:
        return dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names]), strict=True))

    loss1, H1 = model.forward_loss(ops, leaves, X1, Y1, s0)
    loss1.backward()  # minibatch 1's graph is freed; H1 still points into it
    assert H1.grad_fn is not None
    loss2, _ = model.forward_loss(ops, leaves, X2, Y2, H1)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        grads_of(loss2)
    loss2, _ = model.forward_loss(ops, leaves, X2, Y2, H1.detach())
    assert _all_close(grads_of(loss2), truncated)
    # with minibatch 1's graph kept, the gradient goes on into minibatch 1
    loss1, H1 = model.forward_loss(ops, leaves, X1, Y1, s0)
    loss1.backward(retain_graph=True)
    loss2, _ = model.forward_loss(ops, leaves, X2, Y2, H1)
    assert _all_close(grads_of(loss2), full)


def test_jax_grad_takes_a_given_state_as_a_constant() -> None:
    jax = _jax()
    ops = pytest.importorskip("rosetta_rnn.backends.jax").make_ops("float64", "cpu")
    params, arrays, truncated, full = _two_minibatches()
    X1, _, X2, Y2, s0 = (ops.asarray(a) for a in arrays)
    p = model.to_backend(ops, params)
    _, H1 = model.rnn_forward(ops, p, X1, s0)  # a value: it does not remember how it was made
    grads = jax.grad(lambda p: model.forward_loss(ops, p, X2, Y2, H1)[0])(p)
    assert _all_close(grads, truncated)

    def both(p: Any) -> Any:  # through minibatch 1 only when one function computes both
        _, H1 = model.rnn_forward(ops, p, X1, s0)
        return model.forward_loss(ops, p, X2, Y2, H1)[0]

    assert _all_close(jax.grad(both)(p), full)


def test_tensorflow_tape_sees_nothing_computed_before_it() -> None:
    tf = _tf()
    ops = pytest.importorskip("rosetta_rnn.backends.tensorflow").make_ops("float64", "cpu")
    params, arrays, truncated, full = _two_minibatches()
    X1, _, X2, Y2, s0 = (ops.asarray(a) for a in arrays)
    p = model.to_backend(ops, params)
    _, H1 = model.rnn_forward(ops, p, X1, s0)  # before the tape: not recorded
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss2, _ = model.forward_loss(ops, p, X2, Y2, H1)
    grads = {k: tf.convert_to_tensor(g) for k, g in tape.gradient(loss2, p).items()}
    assert _all_close(grads, truncated)
    with tf.GradientTape() as tape:  # the same two lines inside the tape
        tape.watch(p)
        _, H1 = model.rnn_forward(ops, p, X1, s0)
        loss2, _ = model.forward_loss(ops, p, X2, Y2, H1)
    grads = {k: tf.convert_to_tensor(g) for k, g in tape.gradient(loss2, p).items()}
    assert _all_close(grads, full)


def _step_args(ops: Any) -> tuple[dict[str, Any], Any, Any, np.ndarray]:
    params, inputs, labels, state = _problem()
    return model.to_backend(ops, params), ops.asarray(inputs), ops.asarray(labels), state


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_the_state_our_step_returns_has_no_gradient_path(backend: str) -> None:
    module = pytest.importorskip(f"rosetta_rnn.backends.{backend}")
    ops = module.make_ops("float64", "cpu")
    step = module.make_train_step(ops)  # the default mode: what `train` runs
    params, inputs, labels, state = _step_args(ops)
    if backend == "torch":
        s = ops.asarray(state).requires_grad_(True) * 1.0  # with a history, like an H_T
        assert s.grad_fn is not None
        _, H_T, _, _ = step(params, inputs, labels, s, 0.1, 1.0)
        _, again, _, _ = step(params, inputs, labels, s, 0.1, 1.0)  # a second time: no error
        assert H_T.grad_fn is None and not H_T.requires_grad
        assert np.array_equal(H_T.numpy(), again.numpy())
    elif backend == "jax":
        jax = _jax()

        def carried(s: Any) -> Any:
            return jax.numpy.sum(step(params, inputs, labels, s, 0.1, 1.0)[1])

        assert not np.any(np.asarray(jax.grad(carried)(ops.asarray(state))))
    else:
        tf = _tf()
        s = ops.asarray(state)
        with tf.GradientTape() as tape:
            tape.watch(s)
            _, H_T, _, _ = step(params, inputs, labels, s, 0.1, 1.0)
            total = tf.reduce_sum(H_T)
        g = tape.gradient(total, s)
        assert g is None or not np.any(g.numpy())


# --- 15. updating the parameters --------------------------------------------------------------


def test_torch_updates_a_leaf_in_place_only_under_no_grad() -> None:
    torch = _torch()
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"leaf Variable that requires grad .* in-place"):
        p -= 0.1 * g
    storage = p.data_ptr()
    with torch.no_grad():
        p -= 0.1 * g  # the same tensor, still a leaf that requires grad
    assert p.data_ptr() == storage and p.is_leaf and p.requires_grad
    assert p.tolist() == [-0.1] * 3
    q = p - 0.1 * g  # outside no_grad: a new tensor, recorded as a node of the graph
    assert not q.is_leaf and q.grad_fn is not None


def test_jax_arrays_are_immutable() -> None:
    jnp = _jax().numpy
    x = jnp.zeros(3)
    with pytest.raises(TypeError, match="immutable"):
        x[0] = 1.0
    y = x.at[0].set(1.0)  # a new array; x is unchanged
    assert y is not x
    assert np.asarray(x).tolist() == [0.0] * 3 and np.asarray(y).tolist() == [1.0, 0.0, 0.0]


def test_tensorflow_variables_update_in_place_with_assign_sub() -> None:
    tf = _tf()
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    same = v
    v.assign_sub([0.5, 0.5])  # in place
    assert same is v and v.numpy().tolist() == [0.5, 1.5]
    assert not hasattr(tf.constant([1.0]), "assign_sub")  # a plain tensor cannot be updated
    w = v - 0.5  # not an update: a new plain tensor, which no tape watches by itself
    assert not isinstance(w, tf.Variable)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(w * w)
    assert tape.gradient(y, w) is None


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "tensorflow"])
def test_our_steps_return_new_parameters(backend: str) -> None:
    module = pytest.importorskip(f"rosetta_rnn.backends.{backend}")
    ops = module.make_ops("float64", "cpu")
    params, inputs, labels, state = _step_args(ops)
    before = {k: v.copy() for k, v in model.to_numpy(ops, params).items()}
    new, _, _, _ = module.make_train_step(ops)(params, inputs, labels, ops.asarray(state), 0.1, 1.0)
    assert all(new[k] is not params[k] for k in model.PARAM_NAMES)
    after = model.to_numpy(ops, params)
    assert all(np.array_equal(after[k], before[k]) for k in model.PARAM_NAMES)  # untouched
    moved = model.to_numpy(ops, new)
    assert all(not np.array_equal(moved[k], before[k]) for k in model.PARAM_NAMES)
    if backend == "torch":  # computed under torch.no_grad(): no graph, no grad attached
        assert not any(new[k].requires_grad for k in model.PARAM_NAMES)


# --- 16. loss functions: two traps ------------------------------------------------------------


def _mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The right value: mean of -log softmax(logits)[label] over the rows."""
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_keras_sparse_cross_entropy_wants_probabilities_by_default() -> None:
    _tf()
    keras = pytest.importorskip("keras", reason="Keras not installed")
    for api in (
        keras.losses.SparseCategoricalCrossentropy,
        keras.losses.sparse_categorical_crossentropy,
    ):
        assert inspect.signature(api).parameters["from_logits"].default is False
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((12, V)), rng.integers(0, V, 12)
    want = _mean_cross_entropy(logits, labels)

    def loss(**kwargs: Any) -> float:
        per_row = keras.losses.sparse_categorical_crossentropy(labels, logits, **kwargs)
        return float(np.mean(keras.ops.convert_to_numpy(per_row)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently: no warning, no error, a finite number
        wrong = loss()
    assert np.isfinite(wrong) and wrong != pytest.approx(want, rel=0.1)
    assert loss(from_logits=True) == pytest.approx(want, rel=1e-12)
    for from_logits, value in [(False, wrong), (True, want)]:  # the class: float32 inside
        layer = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        assert float(layer(labels, logits)) == pytest.approx(value, rel=1e-6)


def test_torch_cross_entropy_wants_the_class_axis_second() -> None:
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    Y = rng.integers(0, V, (B, T))  # as d2l's iterators yield it
    logits = torch.from_numpy(rng.standard_normal((T, B, V)))  # time-major, as the model
    labels = torch.from_numpy(Y.T.copy())  # (T, B), rows in the same (t, b) order
    want = _mean_cross_entropy(logits.reshape(T * B, V).numpy(), Y.T.reshape(-1))
    assert float(F.cross_entropy(logits.reshape(T * B, V), labels.reshape(-1))) == (
        pytest.approx(want, rel=1e-12)
    )
    assert float(F.cross_entropy(logits.permute(0, 2, 1), labels)) == (  # (T, V, B)
        pytest.approx(want, rel=1e-12)
    )
    with pytest.raises(RuntimeError, match=rf"Expected target size \[{T}, {V}\], got \[{T}, {B}\]"):
        F.cross_entropy(logits, labels)  # (T, B, V): B is taken as the class axis
    square = torch.from_numpy(rng.standard_normal((T, V, V)))  # batch_size == vocab_size
    labels = torch.from_numpy(rng.integers(0, V, (T, V)))
    want = _mean_cross_entropy(square.reshape(T * V, V).numpy(), labels.reshape(-1).numpy())
    assert float(F.cross_entropy(square, labels)) != pytest.approx(want, rel=1e-3)  # no error


# --- 17. clipping in JAX: clip_grads and optax -------------------------------------------------


def _optax_clip(g: np.ndarray, g_norm: float, max_norm: float) -> np.ndarray:
    """optax.clip_by_global_norm's clip_fn, transcribed to NumPy:
    ``jax.lax.select(g_norm < max_norm, t, (t / g_norm) * max_norm)``."""
    return g if g_norm < max_norm else (g / g_norm) * max_norm


@pytest.mark.parametrize(
    ("scale", "theta"),
    [(1.0, 1.0), (1.0, 0.25), (2.0**-3, 1.0), (1.0, 2.0), (2.0**-20, 2.0**-21)],
)
def test_optax_clip_by_global_norm_is_d2l_without_an_epsilon(scale: float, theta: float) -> None:
    g = np.full(4, scale)  # ‖g‖ = 2·scale: every norm and ratio here is a power of two
    clipped, norm = model.clip_by_global_norm(REF, {"W_xh": g}, theta)
    assert float(norm) == 2 * scale
    ours = clipped["W_xh"]
    assert np.array_equal(ours, g * min(1.0, theta / (2 * scale)))  # d2l
    assert np.array_equal(_optax_clip(g, float(norm), theta), ours)  # bit for bit here
    assert np.array_equal(g * theta / max(float(norm), theta), ours)  # TensorFlow's form


def test_optax_and_d2l_clipping_round_differently() -> None:
    g = np.array([3.0, 4.0])  # ‖g‖ = 5, θ = 1
    clipped, norm = model.clip_by_global_norm(REF, {"W_xh": g}, 1.0)
    ours, optax_like = clipped["W_xh"], _optax_clip(g, float(norm), 1.0)
    assert ours[0] == 3.0 * (1.0 / 5.0) == 0.6000000000000001  # g · (θ/‖g‖)
    assert optax_like[0] == 3.0 / 5.0 == 0.6  # (g / ‖g‖) · θ
    assert np.all(np.abs(ours - optax_like) <= np.spacing(optax_like))  # one unit in the last place


@pytest.mark.parametrize("theta", [1.0, 0.3, 10.0])
def test_jax_example_clip_grads_is_d2l_bit_for_bit(theta: float) -> None:
    jax = _jax()
    from jax.example_libraries import optimizers

    g = np.array([3.0, 4.0])  # ‖g‖ = 5 exactly, in both norms
    clipped, _ = model.clip_by_global_norm(REF, {"W_xh": g}, theta)
    with jax.enable_x64(True):
        theirs = np.asarray(optimizers.clip_grads({"W_xh": jax.numpy.asarray(g)}, theta)["W_xh"])
    assert theirs.dtype == np.float64 and np.array_equal(theirs, clipped["W_xh"])


# --- 18. timing: wait for the result before reading the clock ----------------------------------


def test_jax_dispatches_asynchronously_on_the_cpu_too() -> None:
    jax = _jax()
    assert jax.config.values["jax_cpu_enable_async_dispatch"] is True  # JAX's default
    x = {"loss": jax.numpy.ones(3)}
    assert jax.block_until_ready(x)["loss"] is x["loss"] and x["loss"].is_ready()
    out = jax.jit(lambda a: a @ a)(jax.numpy.ones((64, 64)))
    assert np.asarray(out)[0, 0] == 64.0 and out.is_ready()  # reading the value waited for it


def test_tensorflow_cpu_is_synchronous_and_gpus_are_not() -> None:
    tf = _tf()
    assert tf.config.experimental.get_synchronous_execution() is True  # the CPU default
    doc = " ".join(tf.test.experimental.sync_devices.__doc__.split())
    assert "By default, GPUs run asynchronously." in doc
    assert "Non-GPU devices can also be made to run asynchronously" in doc
    assert "blocks until pending ops have finished executing" in doc


class _Calls:
    """A spy: records the arguments of every call."""

    def __init__(self) -> None:
        self.args: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.args.append(args)


def test_our_numpy_sync_waits_for_cupy_only() -> None:
    numpy_backend.sync(REF, np.ones(2))  # NumPy: finished arrays, nothing to wait for
    synchronize = _Calls()
    device = _Calls()

    class FakeDevice:
        def __init__(self, index: int) -> None:
            device(index)

        def synchronize(self) -> None:
            synchronize()

    cupy_like = SimpleNamespace(cuda=SimpleNamespace(Device=FakeDevice))
    numpy_backend.sync(SimpleNamespace(xp=cupy_like, device="gpu:1"), None)
    assert device.args == [(1,)] and synchronize.args == [()]


def test_our_torch_sync_waits_for_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = _torch()
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    doc = " ".join(torch.cuda.synchronize.__doc__.split())
    assert "Wait for all kernels in all streams on a CUDA device to complete." in doc
    spy = _Calls()
    monkeypatch.setattr(torch.cuda, "synchronize", spy)
    torch_backend.sync(torch_backend.make_ops("float32", "cpu"), torch.ones(2))
    assert spy.args == []  # CPU ops return finished
    torch_backend.sync(torch_backend.TorchOps("float32", "gpu:1"), None)  # no GPU needed
    assert spy.args == [(torch.device("cuda", 1),)]


def test_our_jax_sync_blocks_until_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    jax = _jax()
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    spy = _Calls()
    monkeypatch.setattr(jax, "block_until_ready", spy)
    out = {"loss": jax.numpy.ones(2)}
    jax_backend.sync(jax_backend.make_ops("float32", "cpu"), out)
    assert spy.args == [(out,)]  # on the CPU too: the whole pytree the step returned


def test_our_tensorflow_sync_waits_for_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    tf = _tf()
    tf_backend = pytest.importorskip("rosetta_rnn.backends.tensorflow")
    spy = _Calls()
    monkeypatch.setattr(tf.test.experimental, "sync_devices", spy)
    tf_backend.sync(tf_backend.make_ops("float32", "cpu"), tf.ones(2))
    assert spy.args == [()]


def test_the_benchmark_syncs_before_every_clock_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from rosetta_rnn.benchmarks import timing, workloads

    log: list[str] = []
    ticks = iter(range(1000))

    def clock() -> float:
        log.append("clock")
        return float(next(ticks))  # one second per read: every interval is positive

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock, sleep=lambda s: None))

    def build() -> tuple[Callable[[], Any], Callable[[Any], None]]:
        log.append("build")
        return (lambda: log.append("call")), (lambda out: log.append("sync"))

    row = timing.prepare("row", build, min_time=2.0, warmup_time=0.0)
    # setup and first call (tracing, compiling) are timed on their own, then the warm-up calls
    first, warm = ["clock", "build", "call", "sync", "clock"], ["clock", "call", "sync", "clock"]
    assert log[:5] == first and log[5:] == warm * row.warm_calls and row.warm_calls >= 1
    assert row.samples == []  # neither is a sample
    log.clear()
    timing.time_block(row, pause=0.0)
    # a timed block: the previous output waited for, the clock, the calls, a wait, the clock
    assert log == ["sync", "clock", *["call"] * row.calls, "sync", "clock"]
    assert len(row.samples) == 1
    spy = _Calls()
    monkeypatch.setattr(numpy_backend, "sync", spy)
    workloads.syncer("numpy", REF)("out")  # the wait the harness uses: the backend's own sync
    assert spy.args == [(REF, "out")]


# --- 19 to 23. gated cells: GRU and LSTM in torch, Keras and d2l -------------------------------

SAME = tolerance("float64", "values")  # one model, two implementations: float64 agreement
APART = tolerance("float32", "values")  # two models: apart by more than float32's tolerance


def _keras() -> Any:
    _tf()
    return pytest.importorskip("keras", reason="Keras not installed")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _keras_gated(
    layer: str, weights: list[np.ndarray], xs: np.ndarray, state: list[np.ndarray], **options: Any
) -> list[np.ndarray]:
    """Keras GRU or LSTM in float64 holding ``weights`` (``get_weights()`` order), run over
    ``xs`` (T, B, in) from ``state`` ([H] or [H, C]): [outputs (T, B, H), *final state]."""
    keras = _keras()
    units = weights[1].shape[0]
    rnn = getattr(keras.layers, layer)(
        units, dtype="float64", return_sequences=True, return_state=True, **options
    )
    rnn.build((None, None, xs.shape[-1]))
    rnn.set_weights(weights)
    out = [keras.ops.convert_to_numpy(a) for a in rnn(np.swapaxes(xs, 0, 1), initial_state=state)]
    return [np.swapaxes(out[0], 0, 1), *out[1:]]  # Keras is batch-major


def _torch_gated(
    layer: str, weights: list[np.ndarray], xs: np.ndarray, state: list[np.ndarray]
) -> tuple[list[Any], Any]:
    """torch.nn.GRU or LSTM in float64 holding [weight_ih, weight_hh, bias_ih, bias_hh], run
    over ``xs`` (T, B, in) from ``state``: ([outputs (T, B, H), *final state], the layer)."""
    torch = _torch()
    rnn = getattr(torch.nn, layer)(xs.shape[-1], weights[1].shape[1], dtype=torch.float64)
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    with torch.no_grad():
        for name, value in zip(names, weights, strict=True):
            getattr(rnn, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    hx = tuple(torch.from_numpy(s)[None] for s in state)
    out, final = rnn(torch.from_numpy(xs), hx if layer == "LSTM" else hx[0])
    return [out, *(f[0] for f in (final if layer == "LSTM" else (final,)))], rnn


def _numpy(tensors: list[Any]) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors]


GATES = {
    "GRU": ("update", "reset", "candidate"),
    "LSTM": ("input", "forget", "candidate", "output"),
}


def _one_step_with_one_gate_moved(
    layer: str, s: np.ndarray, c: np.ndarray, a: np.ndarray
) -> dict[str, list[np.ndarray]]:
    """Per gate, what one step from (s, c) gives when every recurrent block is the identity and
    ``a`` is added to that gate's pre-activation alone: [h'] for the GRU (d2l 9.1), [h', c']
    for the LSTM (d2l 9.2). With identity blocks r ⊙ (I s) = I (r ⊙ s): both GRUs agree."""
    out = {}
    for gate in GATES[layer]:
        pre = {g: s + (a if g == gate else 0) for g in GATES[layer]}
        if layer == "GRU":
            z, r = _sigmoid(pre["update"]), _sigmoid(pre["reset"])
            h_tilde = np.tanh(pre["candidate"] - s + r * s)
            out[gate] = [z * s + (1 - z) * h_tilde]
        else:
            i, f, o = (_sigmoid(pre[g]) for g in ("input", "forget", "output"))
            c_new = f * c + i * np.tanh(pre["candidate"])
            out[gate] = [o * np.tanh(c_new), c_new]
    return out


@pytest.mark.parametrize(
    ("framework", "layer", "options", "order"),
    [
        ("torch", "GRU", {}, ("reset", "update", "candidate")),  # (r, z, n)
        ("keras", "GRU", {"reset_after": True}, ("update", "reset", "candidate")),  # (z, r, h)
        ("keras", "GRU", {"reset_after": False}, ("update", "reset", "candidate")),
        ("torch", "LSTM", {}, ("input", "forget", "candidate", "output")),  # (i, f, g, o)
        ("keras", "LSTM", {}, ("input", "forget", "candidate", "output")),  # (i, f, c, o)
    ],
    ids=[
        "torch-GRU",
        "keras-GRU-reset_after",
        "keras-GRU-reset_before",
        "torch-LSTM",
        "keras-LSTM",
    ],
)
def test_each_weight_block_drives_the_gate_its_order_names(
    framework: str, layer: str, options: dict[str, Any], order: tuple[str, ...]
) -> None:
    G, units, n_in, j = len(GATES[layer]), 3, 4, 2
    s, c, a = np.array([0.6, -0.4, 0.9]), np.array([0.3, 0.8, -0.5]), np.array([1.5, -2.0, 0.7])
    xs = np.zeros((1, 1, n_in))
    xs[0, 0, j] = 1.0  # one step whose input is feature j
    state = [s[None], c[None]][: 1 if layer == "GRU" else 2]
    want = _one_step_with_one_gate_moved(layer, s, c, a)
    found = []
    for k in range(G):  # `a` in feature j's weights to block k; every other input weight 0
        block, identity = slice(k * units, (k + 1) * units), np.eye(units)
        if framework == "torch":
            W_ih = np.zeros((G * units, n_in))
            W_ih[block, j] = a  # (out, in): a gate is a block of rows
            zero = np.zeros(G * units)
            weights = [W_ih, np.tile(identity, (G, 1)), zero, zero]
            got = _numpy(_torch_gated(layer, weights, xs, state)[0][1:])
        else:
            kernel = np.zeros((n_in, G * units))
            kernel[j, block] = a  # (in, out): a gate is a block of columns
            bias = np.zeros((2, G * units) if options.get("reset_after") else G * units)
            weights = [kernel, np.tile(identity, (1, G)), bias]
            got = _keras_gated(layer, weights, xs, state, **options)[1:]
        found += [
            g
            for g, w in want.items()
            if all(_close(x[0], y, SAME) for x, y in zip(got, w, strict=True))
        ]
    assert tuple(found) == order


def test_gated_weights_are_out_by_in_in_torch_and_in_by_out_in_keras() -> None:
    torch, keras = _torch(), _keras()

    def torch_shapes(layer: Any) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in layer(V, H).parameters()]

    def keras_shapes(layer: Any) -> list[tuple[int, ...]]:
        layer.build((None, None, V))
        return [tuple(w.shape) for w in layer.weights]

    assert torch_shapes(torch.nn.GRU) == [(3 * H, V), (3 * H, H), (3 * H,), (3 * H,)]
    assert torch_shapes(torch.nn.LSTM) == [(4 * H, V), (4 * H, H), (4 * H,), (4 * H,)]
    assert keras_shapes(keras.layers.GRU(H)) == [(V, 3 * H), (H, 3 * H), (2, 3 * H)]
    assert keras_shapes(keras.layers.GRU(H, reset_after=False)) == [
        (V, 3 * H),
        (H, 3 * H),
        (3 * H,),
    ]
    assert keras_shapes(keras.layers.LSTM(H)) == [(V, 4 * H), (H, 4 * H), (4 * H,)]
    # d2l keeps a triple per gate, in the order its get_params draws them
    triples = {cells.GRU_RESET_BEFORE: "zrh", cells.LSTM: "ifoc"}  # Z, R, H̃; I, F, O, C̃
    for cell, gates in triples.items():
        names = tuple(f"{w}{g}" for g in gates for w in ("W_x", "W_h", "b_"))
        assert cells.param_names(cell)[: len(names)] == names


def _gru_weights(rng: np.random.Generator, n_in: int, units: int) -> list[np.ndarray]:
    """Keras' layout, (z, r, h): kernel (in, 3H), recurrent kernel (H, 3H), bias (3H,)."""
    return [
        rng.standard_normal((n_in, 3 * units)) * 0.5,
        rng.standard_normal((units, 3 * units)) * 0.5,
        rng.standard_normal(3 * units) * 0.3,
    ]


def _torch_gates_to_keras(m: np.ndarray) -> np.ndarray:
    """The guide's section 19: torch's (r, z, n) row blocks to Keras' (z, r, h) column blocks."""
    r, z, n = np.split(m, 3)
    return np.concatenate([z, r, n]).T


def test_reset_before_and_reset_after_are_different_grus() -> None:
    torch, keras = _torch(), _keras()
    rng = np.random.default_rng(0)
    n_in, units = 5, 4
    xs, s = rng.standard_normal((T, B, n_in)), rng.standard_normal((B, units)) * 0.5
    W_ih, W_hh = (rng.standard_normal((3 * units, m)) * 0.5 for m in (n_in, units))
    b_ih, b_hh = (rng.standard_normal(3 * units) * 0.3 for _ in "ih")
    torch_gru = _numpy(_torch_gated("GRU", [W_ih, W_hh, b_ih, b_hh], xs, [s])[0])[0]
    body = inspect.getsource(_torch_gates_to_keras).split('"""')[-1].strip()
    assert body in _guide_section(19)  # the conversion the guide shows is the one tested
    kernel, recurrent, b, b_rec = map(_torch_gates_to_keras, (W_ih, W_hh, b_ih, b_hh))
    keras_gru = _keras_gated("GRU", [kernel, recurrent, np.stack([b, b_rec])], xs, [s])[0]
    assert _close(torch_gru, keras_gru, SAME)  # torch's GRU is Keras' reset_after=True
    zero = np.zeros(3 * units)  # from here on no recurrent bias: b_hn = 0

    def both(kernel: np.ndarray, recurrent: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return (
            _keras_gated("GRU", [kernel, recurrent, b], xs, [s], reset_after=False)[0],
            _keras_gated("GRU", [kernel, recurrent, np.stack([b, zero])], xs, [s])[0],
        )

    before, after = both(kernel, recurrent, b)
    assert not _close(before, after, APART)  # the same weights, two models
    # They agree where moving r past W_hh changes nothing: r = 1 ...
    r_gate = slice(units, 2 * units)
    k1, r1, b1 = kernel.copy(), recurrent.copy(), b.copy()
    k1[:, r_gate], r1[:, r_gate], b1[r_gate] = 0.0, 0.0, 40.0  # σ(40) rounds to 1
    assert _close(*both(k1, r1, b1), SAME)
    # ... or a diagonal W_hh: r ⊙ (h D) = (r ⊙ h) D
    r2 = recurrent.copy()
    r2[:, 2 * units :] = np.diag(rng.standard_normal(units))
    assert _close(*both(kernel, r2, b), SAME)
    # torch has no reset-before GRU, on purpose; Keras resets after by default ...
    assert "This implementation differs on purpose for efficiency." in " ".join(
        torch.nn.GRU.__doc__.split()
    )
    with pytest.raises(TypeError, match="reset_after"):
        torch.nn.GRU(n_in, units, reset_after=False)
    assert inspect.signature(keras.layers.GRU).parameters["reset_after"].default is True
    # ... with one matmul for the three gates' recurrent products, while its docstring still
    # calls reset-before the default
    call = " ".join(inspect.getsource(keras.layers.GRUCell.call).split())
    assert "matrix_inner = ops.matmul(h_tm1, self.recurrent_kernel)" in call
    assert (
        "The default one is based on [v3](https://arxiv.org/abs/1406.1078v3) and has reset "
        "gate applied to hidden state before matrix multiplication."
    ) in " ".join(keras.layers.GRU.__doc__.split())


def test_no_reset_before_weights_compute_a_reset_after_gru() -> None:
    """A converter keeps the gates and looks for the candidate's W_hh and b: from one step of
    each layer, solve for them by least squares. Reset-before outputs fit exactly; reset-after
    outputs fit no W_hh, with b_hn = 0 too."""
    rng = np.random.default_rng(0)
    n_in, units, n = 5, 4, 40
    x, S = rng.standard_normal(n_in), rng.standard_normal((n, units))  # one input, 40 states
    xs = np.broadcast_to(x, (1, n, n_in)).copy()
    kernel, recurrent, b = _gru_weights(rng, n_in, units)
    z, r = (
        _sigmoid(x @ kernel[:, g] + S @ recurrent[:, g] + b[g])
        for g in (slice(0, units), slice(units, 2 * units))
    )

    def misfit(h_new: np.ndarray) -> float:
        # H' = Z ⊙ H + (1 − Z) ⊙ tanh(A): the candidate's pre-activation A the layer computed
        A = np.arctanh((h_new - z * S) / (1 - z)) - x @ kernel[:, 2 * units :]
        M = np.hstack([r * S, np.ones((n, 1))])  # A = (R ⊙ H) W_hh + b, if any W_hh and b fit
        fit = M @ np.linalg.lstsq(M, A, rcond=None)[0]
        return float(np.abs(fit - A).max() / np.abs(A).max())

    before = _keras_gated("GRU", [kernel, recurrent, b], xs, [S], reset_after=False)[1]
    after = _keras_gated("GRU", [kernel, recurrent, np.stack([b, 0 * b])], xs, [S])[1]
    assert misfit(before) <= SAME  # exact, to float64 rounding
    assert round(misfit(after), 2) == 0.31  # no W_hh and b come near, though b_hn = 0


def test_torch_gru_biases_count_summed_except_the_candidates() -> None:
    rng = np.random.default_rng(1)
    n_in, units = 5, 4
    xs, s = rng.standard_normal((T, B, n_in)), rng.standard_normal((B, units)) * 0.5
    W_ih, W_hh = (
        rng.standard_normal((3 * units, n_in)) * 0.5,
        rng.standard_normal((3 * units, units)) * 0.5,
    )
    b_ih, b_hh = rng.standard_normal(3 * units) * 0.3, rng.standard_normal(3 * units) * 0.3
    rz, n = slice(0, 2 * units), slice(2 * units, None)  # torch's (r, z, n)

    def run(b_ih: np.ndarray, b_hh: np.ndarray) -> list[np.ndarray]:
        (out, _), rnn = _torch_gated("GRU", [W_ih, W_hh, b_ih, b_hh], xs, [s])
        out.sum().backward()
        return [out.detach().numpy(), rnn.bias_ih_l0.grad.numpy(), rnn.bias_hh_l0.grad.numpy()]

    want, d_ih, d_hh = run(b_ih, b_hh)
    shift = np.zeros(3 * units)
    shift[rz] = rng.standard_normal(2 * units)
    assert _close(run(b_ih + shift, b_hh - shift)[0], want, SAME)  # r, z: any split of the sum
    assert _close(d_ih[rz], d_hh[rz], SAME)  # and both get the same gradient
    assert not _close(d_ih[n], d_hh[n], APART)  # n: b_hn sits inside r ⊙ (W_hn h + b_hn)
    merged_ih, merged_hh = b_ih.copy(), b_hh.copy()
    merged_ih[n], merged_hh[n] = b_ih[n] + b_hh[n], 0.0  # b_hn moved into b_in: coremltools #1124
    assert not _close(run(merged_ih, merged_hh)[0], want, APART)


def test_torch_lstm_biases_only_count_summed() -> None:
    rng = np.random.default_rng(2)
    n_in, units = 5, 4
    xs = rng.standard_normal((T, B, n_in))
    state = [rng.standard_normal((B, units)) * 0.5 for _ in "hc"]
    W_ih, W_hh = (
        rng.standard_normal((4 * units, n_in)) * 0.5,
        rng.standard_normal((4 * units, units)) * 0.5,
    )
    b_ih, b_hh = rng.standard_normal(4 * units) * 0.3, rng.standard_normal(4 * units) * 0.3
    want = _numpy(_torch_gated("LSTM", [W_ih, W_hh, b_ih, b_hh], xs, state)[0])
    summed = _numpy(_torch_gated("LSTM", [W_ih, W_hh, b_ih + b_hh, 0 * b_hh], xs, state)[0])
    assert all(_close(a, b, SAME) for a, b in zip(summed, want, strict=True))


def test_keras_gru_keeps_two_bias_rows_only_when_the_reset_is_after() -> None:
    rng = np.random.default_rng(3)
    n_in, units = 5, 4
    xs, s = rng.standard_normal((T, B, n_in)), rng.standard_normal((B, units)) * 0.5
    kernel, recurrent, b_in = _gru_weights(rng, n_in, units)
    b_rec = rng.standard_normal(3 * units) * 0.3
    want = _keras_gated("GRU", [kernel, recurrent, np.stack([b_in, b_rec])], xs, [s])[0]
    zr, h = slice(0, 2 * units), slice(2 * units, None)  # Keras' (z, r, h)
    moved = np.stack([b_in, b_rec])
    moved[0, zr], moved[1, zr] = b_in[zr] + b_rec[zr], 0.0  # z, r: only the sum counts
    assert _close(_keras_gated("GRU", [kernel, recurrent, moved], xs, [s])[0], want, SAME)
    moved[0, h], moved[1, h] = b_in[h] + b_rec[h], 0.0  # h: the recurrent row is inside r ⊙ (…)
    assert not _close(_keras_gated("GRU", [kernel, recurrent, moved], xs, [s])[0], want, APART)
    # (2, 3H), not CuDNNGRU's (6H,): on purpose, so that loaded weights tell the layers apart
    source = " ".join(inspect.getsource(_keras().layers.GRUCell.build).replace("#", "").split())
    assert "the shape is intentionally different from CuDNNGRU biases" in source


def _keras_lstm_of(
    params: Arrays,
    inputs: np.ndarray,
    state: list[np.ndarray],
    bias: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """Keras LSTM holding d2l's LSTM parameters (its bias unless ``bias`` is given): the hidden
    states (T, B, H) over one-hot ``inputs`` (T, B)."""
    kernel, recurrent = (
        np.concatenate([params[f"W_{k}{g}"] for g in "ifco"], axis=1) for k in "xh"
    )
    if bias is None:
        bias = np.concatenate([params[f"b_{g}"] for g in "ifco"])
    xs = np.eye(V)[inputs]
    return _keras_gated("LSTM", [kernel, recurrent, bias], xs, state, **options)[0]


def test_keras_lstm_starts_the_forget_bias_at_one() -> None:
    keras = _keras()
    assert inspect.signature(keras.layers.LSTM).parameters["unit_forget_bias"].default is True
    built = {}
    for unit_forget_bias, f_block in [(True, 1.0), (False, 0.0)]:
        rnn = keras.layers.LSTM(H, unit_forget_bias=unit_forget_bias, dtype="float64")
        rnn.build((None, None, V))
        built[unit_forget_bias] = rnn.get_weights()[2]
        assert built[unit_forget_bias].tolist() == [0.0] * H + [f_block] * H + [0.0] * 2 * H
    # the docstring says it adds 1 and forces a zero bias_initializer; the code sets f to 1
    doc = " ".join(keras.layers.LSTM.__doc__.split())
    assert "add 1 to the bias of the forget gate at initialization" in doc
    assert 'Setting it to `True` will also force `bias_initializer="zeros"`' in doc
    rnn = keras.layers.LSTM(H, bias_initializer=keras.initializers.Constant(0.5))
    rnn.build((None, None, V))
    assert rnn.get_weights()[2].tolist() == [0.5] * H + [1.0] * H + [0.5] * 2 * H
    # d2l's LSTM (b_f = 0) and the same weights with b_f = 1, as Keras starts it
    rng = np.random.default_rng(0)
    inputs, state = rng.integers(0, V, (T, B)), [rng.standard_normal((B, H)) * 0.5 for _ in "hc"]
    d2l, keras_start = (
        cells.init_params(cells.LSTM, V, H, np.random.default_rng(1), sigma=0.3, forget_bias=f)
        for f in (0.0, 1.0)
    )
    want = cells.cell_forward(REF, cells.LSTM, d2l, inputs, tuple(state))[0]
    assert _close(_keras_lstm_of(d2l, inputs, state), want, SAME)  # bias carried: d2l's model
    forgot = _keras_lstm_of(d2l, inputs, state, bias=built[True])  # bias left as Keras built it
    assert not _close(forgot, want, APART)
    assert _close(
        forgot, cells.cell_forward(REF, cells.LSTM, keras_start, inputs, tuple(state))[0], SAME
    )


def test_torch_and_d2l_start_the_forget_bias_elsewhere() -> None:
    torch = _torch()
    assert "init.uniform_(weight, -stdv, stdv)" in inspect.getsource(torch.nn.LSTM.reset_parameters)
    bound = 1 / np.sqrt(H)  # stdv: every parameter, biases included, from U(-1/√H, 1/√H)
    lstm = torch.nn.LSTM(V, H)
    assert all(float(p.detach().abs().max()) <= bound for p in lstm.parameters())
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()[H : 2 * H]  # torch's (i, f, g, o)
    assert float(forget.abs().max()) <= 2 * bound < 1  # never 1: the pair sums to at most 2/√H
    d2l = cells.init_params(cells.LSTM, V, H, np.random.default_rng(0))
    assert all(not d2l[f"b_{g}"].any() for g in "ifoc")  # d2l 9.2: every bias zero


def test_keras_gated_layers_default_to_d2ls_sigmoid() -> None:
    torch, keras, tf = _torch(), _keras(), _tf()
    assert tf.keras.layers.LSTM is keras.layers.LSTM  # TensorFlow 2.21's tf.keras is Keras 3
    for layer in (keras.layers.GRU, keras.layers.LSTM, keras.layers.GRUCell, keras.layers.LSTMCell):
        assert inspect.signature(layer).parameters["recurrent_activation"].default == "sigmoid"
    with pytest.raises(TypeError, match="recurrent_activation"):
        torch.nn.LSTM(V, H, recurrent_activation="sigmoid")  # torch: σ, no option
    rng = np.random.default_rng(0)
    inputs, state = rng.integers(0, V, (T, B)), [rng.standard_normal((B, H)) * 0.5 for _ in "hc"]
    d2l = cells.init_params(cells.LSTM, V, H, np.random.default_rng(1), sigma=0.3)
    want = cells.cell_forward(REF, cells.LSTM, d2l, inputs, tuple(state))[0]
    assert _close(_keras_lstm_of(d2l, inputs, state), want, SAME)  # the default: d2l's σ
    hard = _keras_lstm_of(d2l, inputs, state, recurrent_activation="hard_sigmoid")
    assert not _close(hard, want, APART)  # the same weights, another model


def _keras_2_hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 2's ``hard_sigmoid`` (``keras/backend.py``), transcribed to NumPy:
    ``x * 0.2 + 0.5``, then ``clip_by_value(x, 0., 1.)``."""
    return np.clip(x * 0.2 + 0.5, 0.0, 1.0)


def test_keras_3_hard_sigmoid_is_not_keras_2s() -> None:
    keras = _keras()
    x = np.linspace(-4.0, 4.0, 33)  # steps of 0.25: ±3, ±2.5, ±1 and 0 among them

    def keras_3(x: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.activations.hard_sigmoid(x))

    assert _close(keras_3(x), np.clip(x + 3, 0, 6) / 6, SAME)  # relu6(x + 3) / 6
    at_one = [float(f(np.array([1.0]))[0]) for f in (keras_3, _keras_2_hard_sigmoid)]
    assert at_one == [pytest.approx(2 / 3, rel=SAME), pytest.approx(0.7, rel=SAME)]
    gap = np.abs(keras_3(x) - _keras_2_hard_sigmoid(x))
    assert gap.max() == pytest.approx(1 / 12, rel=SAME)  # at ±2.5: 1/12 vs 0, 11/12 vs 1
    assert x[gap >= gap.max() - SAME].tolist() == [-2.5, 2.5]
    # keras.ops.hard_sigmoid computes Keras 3's, while its docstring still gives Keras 2's
    doc = " ".join(keras.ops.hard_sigmoid.__doc__.split())
    assert "(0.2 * x) + 0.5" in doc and "array([0.3, 0.5, 0.7]" in doc
    example = keras.ops.convert_to_numpy(keras.ops.hard_sigmoid(np.array([-1.0, 0.0, 1.0])))
    assert _close(example, [1 / 3, 0.5, 2 / 3], SAME)


# --- 24. data parallelism ------------------------------------------------------------------------


def _replica_grads(rows: list[slice], theta: float | None = None) -> tuple[Arrays, list[Arrays]]:
    """The one-device gradient of a 4-sequence minibatch, and each replica's mean-loss
    gradient on ``rows`` of it (clipped on the replica when ``theta`` is given)."""
    params, inputs, labels, state = random_problem(np.random.default_rng(3), V, H, 4, T, bias=0.3)
    value_and_grad = numpy_backend.make_value_and_grad(REF)
    _, whole, _ = value_and_grad(params, inputs, labels, state)
    parts = []
    for r in rows:
        _, g, _ = value_and_grad(params, inputs[:, r], labels[:, r], state[r])
        parts.append(g if theta is None else model.clip_by_global_norm(REF, g, theta)[0])
    return whole, parts


def _mean(parts: list[Arrays], weights: list[float] | None = None) -> Arrays:
    w = weights or [1 / len(parts)] * len(parts)
    return {k: sum(wi * p[k] for wi, p in zip(w, parts, strict=True)) for k in parts[0]}


def test_the_mean_of_equal_shards_gradients_is_the_minibatch_gradient() -> None:
    """Two shards of 2 sequences: the mean of their mean-loss gradients is the minibatch's. A
    3 + 1 split is not (the lone sequence counts as much as the three) unless weighted by
    rows, which is why --replicas insists on equal shards."""
    whole, equal = _replica_grads([slice(0, 2), slice(2, 4)])
    assert all(_close(_mean(equal)[k], whole[k]) for k in whole)
    _, uneven = _replica_grads([slice(0, 3), slice(3, 4)])
    off = max(float(np.abs(_mean(uneven)[k] - whole[k]).max()) for k in whole)
    assert off > 1e-3
    assert all(_close(_mean(uneven, [3 / 4, 1 / 4])[k], whole[k]) for k in whole)


def test_clipping_belongs_after_the_all_reduce() -> None:
    """θ = 0.05, below every gradient's norm: clipping the combined gradient is the one-device
    step; clipping each replica's gradient first and then averaging is another direction and
    another length."""
    theta = 0.05
    whole, parts = _replica_grads([slice(0, 2), slice(2, 4)])
    assert float(model.global_norm(REF, whole)) > 4 * theta
    one_device, _ = model.clip_by_global_norm(REF, whole, theta)
    after, _ = model.clip_by_global_norm(REF, _mean(parts), theta)
    assert all(_close(after[k], one_device[k]) for k in whole)
    _, clipped_first = _replica_grads([slice(0, 2), slice(2, 4)], theta)
    before = _mean(clipped_first)
    off = max(float(np.abs(before[k] - one_device[k]).max()) for k in whole)
    assert off > 1e-3 * theta
    assert float(model.global_norm(REF, before)) < theta * (1 - 1e-6)  # shorter than θ


def _run_python(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# four examples of a linear loss mean(x @ w) with w = (1, 1): the one-device gradient is the
# examples' mean, (1.875, 1.75); two replicas take two examples each
_X = [[1.0, 2.0], [2.0, 3.0], [0.5, 1.0], [4.0, 1.0]]
_ONE_DEVICE = [1.875, 1.75]

_DDP = """
    import json, os, sys, torch, torch.distributed as dist
    rank, init = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    x = torch.tensor(EXAMPLES, dtype=torch.float64)[2 * rank : 2 * rank + 2]

    def linear():
        m = torch.nn.Linear(2, 1, bias=False).double()
        torch.nn.init.ones_(m.weight)
        return m

    ddp = torch.nn.parallel.DistributedDataParallel(linear())
    ddp(x).mean().backward()
    plain = linear()
    plain(x).mean().backward()
    summed = plain.weight.grad.clone()
    dist.all_reduce(summed)  # the default op is SUM
    print(json.dumps({"ddp": ddp.module.weight.grad[0].tolist(), "all_reduce": summed[0].tolist()}))
    sys.stdout.flush()
    # Both ranks done before either leaves, then no teardown: gloo's pair threads torn down
    # while the peer is still closing can abort the process ("terminate called without an
    # active exception") after the figures are out.
    dist.barrier()
    os._exit(0)
""".replace("EXAMPLES", repr(_X))


def test_ddp_averages_the_replicas_gradients_an_all_reduce_sums_them(tmp_path: Path) -> None:
    """Two gloo processes, each with the mean loss of its two examples: DDP's gradient is the
    one-device gradient (it divides by the world size), a plain ``all_reduce`` gives twice it."""
    _torch()
    init = f"file://{tmp_path / 'rendezvous'}"
    code = textwrap.dedent(_DDP)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    other = subprocess.Popen([sys.executable, "-c", code, "1", init], env=env)
    try:
        got = _run_python(code, "0", init)
    finally:
        other.wait(timeout=300)
    assert other.returncode == 0
    assert got == {"ddp": _ONE_DEVICE, "all_reduce": [2 * g for g in _ONE_DEVICE]}


_SHARD_MAP = """
    import json, jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((2,), ("r",))
    w = jax.device_put(jnp.ones(2), NamedSharding(mesh, P()))  # replicated
    x = jax.device_put(jnp.array(EXAMPLES), NamedSharding(mesh, P("r")))  # two rows per device
    loss = lambda w, x: jnp.mean(x @ w)

    def on_devices(per_device, check_vma):
        f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("r")), out_specs=P(),
                          check_vma=check_vma)
        return jax.jit(f)(w, x).tolist()

    pmean_of_grad = lambda w, x: jax.lax.pmean(jax.grad(loss)(w, x), "r")
    grad_of_pmean = jax.grad(lambda w, x: jax.lax.pmean(loss(w, x), "r"))
    print(json.dumps({
        "pmean of grad, check_vma=True": on_devices(pmean_of_grad, True),
        "pmean of grad, check_vma=False": on_devices(pmean_of_grad, False),
        "grad of pmean, check_vma=True": on_devices(grad_of_pmean, True),
    }))
""".replace("EXAMPLES", repr(_X))


def test_jax_shard_map_sums_a_replicated_parameters_gradient_unless_told_not_to() -> None:
    """With ``check_vma=True`` (the default) the gradient of a replicated parameter comes back
    already summed over the devices, so the usual ``pmean`` after it gives twice the one-device
    gradient; ``check_vma=False`` (our engine) gives each device's own, which ``pmean``
    averages; with the checks on, the gradient of the ``pmean``'d loss is right."""
    _jax()
    got = _run_python(_SHARD_MAP)
    assert got == {
        "pmean of grad, check_vma=True": [2 * g for g in _ONE_DEVICE],
        "pmean of grad, check_vma=False": _ONE_DEVICE,
        "grad of pmean, check_vma=True": _ONE_DEVICE,
    }


_MIRRORED = """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    X = tf.constant(EXAMPLES, tf.float64)
    w = tf.ones(2, tf.float64)
    rows = strategy.experimental_distribute_values_from_function(
        lambda ctx: X[2 * ctx.replica_id_in_sync_group : 2 * ctx.replica_id_in_sync_group + 2]
    )
    losses = {
        "local mean": lambda per: tf.reduce_mean(per),
        "compute_average_loss(global_batch_size=4)": (
            lambda per: tf.nn.compute_average_loss(per, global_batch_size=4)
        ),
        "compute_average_loss": lambda per: tf.nn.compute_average_loss(per),
    }

    def summed_gradient(x, loss):
        with tf.GradientTape() as tape:
            tape.watch(w)
            value = loss(tf.linalg.matvec(x, w))
        g = tape.gradient(value, w)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, g)

    out = {}
    for name, loss in losses.items():
        step = tf.function(lambda x: summed_gradient(x, loss))
        got = strategy.run(step, args=(rows,))
        out[name] = strategy.experimental_local_results(got)[0].numpy().tolist()
    print(json.dumps(out))
""".replace("EXAMPLES", repr(_X))


def test_tf_replicas_sum_gradients_so_the_loss_divides_by_the_global_batch() -> None:
    """Under MirroredStrategy over two logical CPUs, gradients summed across replicas (as
    Keras' optimizers aggregate them) are the one-device gradient only when each replica's loss
    is divided by the global batch: ``compute_average_loss`` does that (by default it takes
    the local batch × replicas); a local ``reduce_mean`` gives twice it."""
    _tf()
    got = _run_python(_MIRRORED)
    assert got == {
        "local mean": [2 * g for g in _ONE_DEVICE],
        "compute_average_loss(global_batch_size=4)": _ONE_DEVICE,
        "compute_average_loss": _ONE_DEVICE,
    }


# --- the guide itself ---------------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "frameworks.md"


def test_every_test_the_guide_names_exists() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    named = re.findall(r"`(tests/\w+\.py)::(\w+)(?:\[[^\]`]*\])?`", text)
    assert len(named) >= 30
    root = GUIDE.parent.parent
    for path, name in named:
        assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), f"{path}::{name}"
    here = {name for path, name in named if path == "tests/test_frameworks_guide.py"}
    mine = {n for n in globals() if n.startswith("test_")} - {
        "test_every_test_the_guide_names_exists"
    }
    assert mine <= here, f"tests the guide does not cite: {sorted(mine - here)}"
    # MXNet's claims live in their own file (its environment); the guide cites every one
    mxnet_file = root / "tests" / "test_mxnet_guide.py"
    mxnet = set(re.findall(r"^def (test_\w+)\(", mxnet_file.read_text(), re.M))
    cited = {name for path, name in named if path == "tests/test_mxnet_guide.py"}
    assert mxnet and mxnet <= cited, f"MXNet tests the guide does not cite: {mxnet - cited}"


def test_the_summary_table_has_a_column_per_framework() -> None:
    """The table at the top: one column per framework, MXNet's included, on every row."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("\n| # | Point |") + 1
    rows = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    header = rows[0]
    assert header[:6] == ["#", "Point", "NumPy", "PyTorch", "JAX", "TensorFlow"]
    assert header[6].startswith("MXNet") and len(header) == 7
    assert all(len(row) == len(header) for row in rows), [r[0] for r in rows]
    numbers = [int(row[0]) for row in rows[2:]]
    assert numbers == sorted(numbers) and len(numbers) >= 20
    filled = [row for row in rows[2:] if row[6]]
    assert len(filled) == len(rows) - 3  # every point but 9, which is d2l's, not a framework's


def test_gpu_figures_are_the_committed_h100_run() -> None:
    """Point 12, the TF32 figures of point 5 and the benchmarks page's GPU summary quote
    benchmarks/results/h100/: each quoted figure is recomputed from those files here."""
    root = GUIDE.parent.parent
    results = root / "benchmarks" / "results" / "h100"
    bench = json.loads((results / "results.json").read_text())
    probes = json.loads((results / "probes.json").read_text())
    chapter = json.loads((results / "chapter.json").read_text())
    conform = json.loads((results / "conform.json").read_text())
    guide = GUIDE.read_text(encoding="utf-8")
    page = (root / "docs" / "benchmarks.md").read_text(encoding="utf-8")

    def train_ms(name: str) -> float:
        (row,) = [
            r
            for r in bench["rows"]
            if r["name"] == name and r["workload"] == "train" and r["sweep"] is None
        ]
        return float(row["ms_per_step"])

    assert f"{train_ms('torch bptt/reduce-overhead'):.2f} ms" in guide  # 0.71 ms
    assert f"{train_ms('torch autograd/eager'):.1f} ms per step" in guide  # 8.6
    assert f"{train_ms('torch.nn.RNN'):.1f} ms for cuDNN" in guide  # 3.0
    assert f"({train_ms('torch bptt/torch.compile'):.1f} ms with bptt)" in guide  # 3.9
    assert f"NumPy-on-CuPy, launch per call from Python, is {train_ms('numpy bptt/eager'):.1f}" in (
        " ".join(guide.split())
    )
    ratios = {t["target"]: t["value"] for t in bench["targets"]}
    assert f"{ratios['torch ≥ 1.00× torch.nn.RNN']:.2f}× cuDNN" in page  # 4.30×
    assert f"{ratios['jax ≥ 1.00× jax.lax.scan']:.2f}× its `lax.scan` peer" in page  # 1.22×

    tf32 = probes["tf32"]
    for key, text in (
        ("torch matmul, default", "1.5e-6 with torch's and CuPy's defaults"),
        ("torch matmul, allow_tf32=True", "3.3e-4 with TF32 on"),
        ("jax matmul, default precision", "3.3e-4 with JAX's default precision"),
        ("jax matmul, precision=highest", "5.1e-7 with"),
        ("cuDNN RNN, allow_tf32=True", "cuDNN's RNN gives 4.3e-4"),
        ("cuDNN RNN, allow_tf32=False", "3.1e-7 with it off"),
    ):
        short = f"{tf32[key]:.1e}".replace("e-0", "e-")  # 1.5e-06 as the guide writes it
        assert short in text and text in " ".join(guide.split()), key

    determinism = probes["determinism"]
    jax_autograd = determinism.pop("jax/autograd")
    assert jax_autograd["loss equal"]
    assert [k for k, same in jax_autograd["grads equal"].items() if not same] == ["W_xh"]
    for runs in [*determinism.values(), *probes[next(k for k in probes if "xla" in k)].values()]:
        assert runs["loss equal"] and all(runs["grads equal"].values())

    assert conform["passed"] and not conform["skipped"] and len(conform["cells"]) == 121
    assert "121 cells" in page
    perplexities = [f"{chapter[k]['perplexity']:.3f}" for k in ("torch", "jax", "numpy")]
    assert f"perplexity {' / '.join(perplexities)}" in " ".join(page.split())


def test_gated_gpu_figures_are_the_committed_h100_run() -> None:
    """The benchmarks page's GRU/LSTM GPU summary quotes benchmarks/results/h100/gated/: each
    figure is recomputed from those files here."""
    root = GUIDE.parent.parent
    gated = root / "benchmarks" / "results" / "h100" / "gated"
    page = " ".join((root / "docs" / "benchmarks.md").read_text(encoding="utf-8").split())

    cells = []
    for cell in ("gru-reset-before", "gru-reset-after", "lstm"):
        conform = json.loads((gated / f"conform-{cell}.json").read_text())
        assert conform["passed"] and not conform["skipped"], cell
        assert {c["cell"] for c in conform["cells"]} == {cell, None}
        cells += conform["cells"]
    assert f"{len(cells)} cells, all passing" in page  # 571
    on_gpu = [c for c in cells if c["device"] == "gpu:0" and c["max_error"] is not None]

    def worst(dtype: str, oracle: bool) -> float:
        return max(
            c["max_error"]
            for c in on_gpu
            if c["dtype"] == dtype and c["backend"].startswith("oracle:") == oracle
        )

    assert f"float64 ≤ {worst('float64', False):.1e}".replace("e-0", "e-") in page
    assert f"float32 ≤ {worst('float32', False):.1e}".replace("e-0", "e-") in page
    oracles = [
        max(
            c["max_error"]
            for c in on_gpu
            if c["backend"] == f"oracle:torch.nn.{layer}" and c["dtype"] == "float32"
        )
        for layer in ("GRU", "LSTM")
    ]
    for layer, err in zip(("GRU", "LSTM"), oracles, strict=True):
        assert f"`nn.{layer}` {err:.1e}".replace("e-0", "e-") in page

    runs = [json.loads(line) for line in (gated / "chapter.jsonl").read_text().splitlines()]
    assert all(r["rc"] == 0 and r["device"] == "gpu:0" and r["epochs"] == 500 for r in runs)

    def span(cell: str) -> str:
        ppl = sorted(r["perplexity"] for r in runs if r["key"].split("/")[0] == cell)
        return f"{ppl[0]:.3f}–{ppl[-1]:.3f}"

    assert f"GRU {span('gru')}, LSTM {span('lstm')}" in page

    lstm = json.loads((gated / "results.json").read_text())
    (target,) = [t for t in lstm["targets"] if t["target"] == "torch ≥ 1.00× torch.nn.LSTM"]
    assert f"**{target['value']:.2f}× cuDNN `nn.LSTM`**" in page  # 1.74×
    log = (gated / "bench-gru-log.txt").read_text()

    def logged(name: str) -> float:
        (m,) = re.findall(rf"^\s+{re.escape(name)}\s+([\d,]+) tokens/s", log, re.M)
        return float(m.replace(",", ""))

    ratio = logged("torch bptt/reduce-overhead") / logged("torch.nn.GRU")
    assert f"**{ratio:.2f}× cuDNN `nn.GRU`**" in page  # 2.25×
    jax_lstm = next(r for r in lstm["rows"] if r["name"] == "jax bptt/jit")["tokens_per_sec"]
    assert f"{logged('jax bptt/jit') / 1e3:.0f}k and {jax_lstm / 1e3:.0f}k tokens/s" in page

    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())  # point 12
    assert f"{ratio:.2f}× `nn.GRU` and {target['value']:.2f}× `nn.LSTM`" in guide
    (lstm_eager,) = [r for r in lstm["rows"] if r["name"] == "torch bptt/eager"]
    (cudnn_lstm,) = [r for r in lstm["rows"] if r["name"] == "torch.nn.LSTM"]
    eager = (
        logged("torch bptt/eager") / logged("torch.nn.GRU"),
        lstm_eager["tokens_per_sec"] / cudnn_lstm["tokens_per_sec"],
    )
    assert f"gets {eager[0]:.2f}× and {eager[1]:.2f}×" in guide  # 0.13×, 0.11×
    assert f"{logged('jax bptt/jit') / 1e3:.0f}k and {jax_lstm / 1e3:.0f}k tokens/s" in guide
    within = "within {:.1e} (GRU) and {:.1e} (LSTM)".format(*oracles).replace("e-0", "e-")
    assert within in guide

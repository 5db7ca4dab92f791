"""core.cells: the GRU (reset-before, reset-after) and the LSTM, written once against Ops.

The hand-written BPTT is checked against central finite differences and against every
framework's autodiff of the same forward; the forward itself against independent pins that
share no code with core: torch.nn.GRU / torch.nn.LSTM, Keras' GRU / LSTM, and plain per-step
NumPy loops written from d2l's equations. Small float64 problems with moderate weights
(normal × 0.3, recurrent spectral radius < 1), nonzero biases and a nonzero initial state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rosetta_rnn import backends
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells
from rosetta_rnn.core.errors import BackendUnavailable, UserError

V, H, B, T = 5, 4, 3, 6  # vocab_size, num_hiddens, batch_size, num_steps
NP = numpy_backend.make_ops("float64", "cpu")
CELLS = cells.CELLS
LOSS_STEPS = {"all-steps": T, "last-step": 1}
Problem = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, Any]


def problem(cell: str, loss_steps: int = T, seed: int = 0, embed_dim: int | None = None) -> Problem:
    """(params, inputs, labels, state), float64: weights normal × 0.3 from the cell's own init
    (with a learned embedding E of ``embed_dim`` columns), biases normal × 0.3, state normal ×
    0.5 (a pair for the LSTM)."""
    rng = np.random.default_rng(seed)
    params = cells.init_params(cell, V, H, rng, sigma=0.3, embed_dim=embed_dim)
    for name, value in params.items():
        if name.startswith("b"):
            params[name] = rng.standard_normal(value.shape) * 0.3
        elif name.startswith("W_h") and name != "W_hq":
            assert max(abs(np.linalg.eigvals(value))) < 1, f"{name} would make the problem chaotic"
    inputs = rng.integers(0, V, (T, B))
    labels = rng.integers(0, V, (loss_steps, B))
    H0 = rng.standard_normal((B, H)) * 0.5
    state = (H0, rng.standard_normal((B, H)) * 0.5) if cell == cells.LSTM else H0
    return params, inputs, labels, state


def to_ops(ops: Any, state: Any) -> Any:
    """A NumPy state (an array or the LSTM's pair) as ``ops`` arrays."""
    return tuple(ops.asarray(s) for s in state) if isinstance(state, tuple) else ops.asarray(state)


def state_arrays(ops: Any, state: Any) -> dict[str, np.ndarray]:
    """A state (or its gradient) as named NumPy arrays: H, and C for the LSTM."""
    parts = state if isinstance(state, tuple) else (state,)
    return {f"state_{'HC'[i]}": ops.to_numpy(s) for i, s in enumerate(parts)}


def reference_bptt(cell: str, p: Problem) -> dict[str, np.ndarray]:
    """NumPy float64 BPTT: every parameter's gradient and the initial state's, and the loss."""
    params, inputs, labels, state = p
    loss, grads, _, dstate = cells.bptt(NP, cell, params, inputs, labels, state)
    return {**grads, **state_arrays(NP, dstate), "loss": np.asarray(loss)}


def one_hot(inputs: np.ndarray) -> np.ndarray:
    return np.eye(V)[inputs]


# --- init: the one table ---------------------------------------------------------------------

D2L_NAMES = {
    "gru/reset-before": "W_xz W_hz b_z W_xr W_hr b_r W_xh W_hh b_h W_hq b_q",
    "gru/reset-after": "W_xz W_hz b_z W_xr W_hr b_r W_xh W_hh b_xh b_hh W_hq b_q",
    "lstm": "W_xi W_hi b_i W_xf W_hf b_f W_xo W_ho b_o W_xc W_hc b_c W_hq b_q",
}


@pytest.mark.parametrize("cell", CELLS)
def test_init_names_shapes_and_zero_biases(cell: str) -> None:
    params = cells.init_params(cell, V, H, np.random.default_rng(1))
    assert tuple(params) == cells.param_names(cell) == tuple(D2L_NAMES[cell].split())
    for name, value in params.items():
        if name in ("W_hq", "b_q"):
            expected = (H, V) if name == "W_hq" else (V,)
        else:
            expected = {"W_x": (V, H), "W_h": (H, H)}.get(name[:3], (H,))
        assert value.shape == expected == cells.param_shapes(cell, V, H)[name], name
        assert value.dtype == np.float64
        if name.startswith("b"):
            assert not value.any(), f"{name} starts at zero"
        else:
            assert 0 < np.abs(value).max() < 0.1, f"{name} is normal × 0.01"


@pytest.mark.parametrize("cell", CELLS)
def test_init_draws_the_weights_in_table_order_and_float32_rounds_them(cell: str) -> None:
    first = cells.init_params(cell, V, H, np.random.default_rng(7))
    again = cells.init_params(cell, V, H, np.random.default_rng(7))
    single = cells.init_params(cell, V, H, np.random.default_rng(7), dtype="float32")
    rng = np.random.default_rng(7)
    for name in D2L_NAMES[cell].split():
        assert np.array_equal(first[name], again[name])
        assert single[name].dtype == np.float32
        assert np.array_equal(single[name], first[name].astype(np.float32))
        if not name.startswith("b"):  # the order of d2l's get_params, biases drawing nothing
            drawn = rng.standard_normal(first[name].shape) * 0.01
            assert np.array_equal(first[name], drawn), name


def test_both_grus_draw_the_same_weights() -> None:
    before = cells.init_params(cells.GRU_RESET_BEFORE, V, H, np.random.default_rng(3))
    after = cells.init_params(cells.GRU_RESET_AFTER, V, H, np.random.default_rng(3))
    for name in before:
        if name.startswith("W"):
            assert np.array_equal(before[name], after[name]), name


def test_forget_bias() -> None:
    params = cells.init_params(cells.LSTM, V, H, np.random.default_rng(0), forget_bias=1.0)
    assert np.array_equal(params["b_f"], np.ones(H))
    for name in ("b_i", "b_o", "b_c", "b_q"):
        assert not params[name].any(), name
    with pytest.raises(UserError, match="forget_bias"):
        cells.init_params(cells.GRU_RESET_AFTER, V, H, np.random.default_rng(0), forget_bias=1.0)


def test_unknown_cell_is_one_line() -> None:
    with pytest.raises(UserError, match="unknown cell 'rnn'; choose from gru/reset-before"):
        cells.param_names("rnn")


@pytest.mark.parametrize("cell", CELLS)
def test_begin_state(cell: str) -> None:
    state = cells.begin_state(NP, cell, B, H)
    parts = state if cell == cells.LSTM else (state,)
    assert len(parts) == (2 if cell == cells.LSTM else 1)
    assert all(s.shape == (B, H) and not s.any() for s in parts)


def test_sigmoid_by_tanh_is_the_logistic_function() -> None:
    x = np.linspace(-40, 40, 801)
    got = cells.sigmoid(NP, x)
    assert np.max(np.abs(got - 1 / (1 + np.exp(-x)))) <= 2 * np.finfo(np.float64).eps
    assert got.min() >= 0 and got.max() <= 1


# --- BPTT against finite differences and against each framework's autodiff -------------------


def finite_differences(cell: str, p: Problem, h: float = 1e-3) -> dict[str, np.ndarray]:
    """∂loss/∂θ for every parameter and state entry θ by the five-point central difference
    (f(θ-2h) - 8 f(θ-h) + 8 f(θ+h) - f(θ+2h)) / 12h of core's forward_loss: truncation
    O(h⁴) and rounding ε·loss/h both near 1e-13, so each gradient is checked on its own."""
    params, inputs, labels, state = p
    targets = {**params, **state_arrays(NP, state)}  # the same arrays, perturbed in place
    parts = tuple(targets[k] for k in state_arrays(NP, state))
    live_state = parts if cell == cells.LSTM else parts[0]

    def loss() -> float:
        return float(cells.forward_loss(NP, cell, params, inputs, labels, live_state)[0])

    numeric = {}
    for name, value in targets.items():
        numeric[name] = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            f = {}
            for k in (-2, -1, 1, 2):
                value[idx] = old + k * h
                f[k] = loss()
            value[idx] = old
            numeric[name][idx] = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
    return numeric


@pytest.mark.parametrize("window", [*LOSS_STEPS, "learned-embedding"])
@pytest.mark.parametrize("cell", CELLS)
def test_bptt_matches_finite_differences(cell: str, window: str) -> None:
    if window == "learned-embedding":
        p = problem(cell, T, embed_dim=3)
        assert p[0]["E"].shape == (V, 3) and p[0][
            "W_xo" if cell == cells.LSTM else "W_xh"
        ].shape == (3, H)
    else:
        p = problem(cell, LOSS_STEPS[window])
    ours = reference_bptt(cell, p)
    ours.pop("loss")
    numeric = finite_differences(cell, p)
    assert set(ours) == set(numeric)
    for name, g in ours.items():  # every term matters: no gradient is (nearly) zero
        assert np.abs(g).max() > 1e-4, name
        assert max_error({name: g}, {name: numeric[name]}) <= tolerance("float64", "fd"), name


def _autodiff_torch(cell: str, p: Problem) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    ops = backends.load("torch").make_ops("float64", "cpu")
    params, inputs, labels, state = p
    leaves = {k: ops.asarray(v).requires_grad_() for k, v in params.items()}
    state_t = to_ops(ops, state)
    state_leaves = state_t if isinstance(state_t, tuple) else (state_t,)
    for s in state_leaves:
        s.requires_grad_()
    loss, _ = cells.forward_loss(
        ops, cell, leaves, ops.asarray(inputs), ops.asarray(labels), state_t
    )
    got = torch.autograd.grad(loss, [*leaves.values(), *state_leaves])
    names = [*leaves, *state_arrays(NP, state)]
    return {**{n: g.numpy() for n, g in zip(names, got, strict=True)}, "loss": loss.detach()}


def _autodiff_jax(cell: str, p: Problem) -> dict[str, np.ndarray]:
    jax = pytest.importorskip("jax")
    ops = backends.load("jax").make_ops("float64", "cpu")  # turns on x64
    params, inputs, labels, state = p
    X, Y = ops.asarray(inputs), ops.asarray(labels)

    def loss_fn(params: Any, state: Any) -> Any:
        return cells.forward_loss(ops, cell, params, X, Y, state)[0]

    p_j = {k: ops.asarray(v) for k, v in params.items()}
    loss, (dparams, dstate) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p_j, to_ops(ops, state))
    return {**{k: np.asarray(v) for k, v in dparams.items()}, **state_arrays(ops, dstate)} | {
        "loss": np.asarray(loss)
    }


def _autodiff_tensorflow(cell: str, p: Problem) -> dict[str, np.ndarray]:
    tf = pytest.importorskip("tensorflow")
    ops = backends.load("tensorflow").make_ops("float64", "cpu")
    params, inputs, labels, state = p
    p_t = {k: ops.asarray(v) for k, v in params.items()}
    state_t = to_ops(ops, state)
    with tf.GradientTape() as tape:
        tape.watch((p_t, state_t))  # plain tensors, not Variables
        loss, _ = cells.forward_loss(
            ops, cell, p_t, ops.asarray(inputs), ops.asarray(labels), state_t
        )
    dparams, dstate = tape.gradient(loss, (p_t, state_t))
    # ∂/∂W_x· through the gather arrives as IndexedSlices: make it dense
    dense = {k: tf.convert_to_tensor(v).numpy() for k, v in dparams.items()}
    return {**dense, **state_arrays(ops, dstate), "loss": loss.numpy()}


AUTODIFF = {"torch": _autodiff_torch, "jax": _autodiff_jax, "tensorflow": _autodiff_tensorflow}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("framework", AUTODIFF)
def test_bptt_matches_autodiff(framework: str, cell: str) -> None:
    p = problem(cell, loss_steps=2)
    theirs = AUTODIFF[framework](cell, p)
    ours = reference_bptt(cell, p)
    assert set(theirs) == set(ours)
    assert max_error(theirs, ours) <= tolerance("float64", "grads")


# --- the forward against independent pins ----------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def d2l_gru(params: dict[str, np.ndarray], inputs: np.ndarray, H: np.ndarray) -> np.ndarray:
    """d2l 9.1's ``gru``, step by step in plain NumPy: the hidden state after every step."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h = (
        params[k] for k in "W_xz W_hz b_z W_xr W_hr b_r W_xh W_hh b_h".split()
    )
    outputs = []
    for X in one_hot(inputs):
        Z = _sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
        R = _sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
        H_tilda = np.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)
        H = Z * H + (1 - Z) * H_tilda
        outputs.append(H)
    return np.stack(outputs)


def d2l_lstm(
    params: dict[str, np.ndarray], inputs: np.ndarray, H: np.ndarray, C: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """d2l 9.2's ``lstm``, step by step in plain NumPy: (every H, the last C)."""
    p = params
    outputs = []
    for X in one_hot(inputs):
        I = _sigmoid((X @ p["W_xi"]) + (H @ p["W_hi"]) + p["b_i"])
        F = _sigmoid((X @ p["W_xf"]) + (H @ p["W_hf"]) + p["b_f"])
        O = _sigmoid((X @ p["W_xo"]) + (H @ p["W_ho"]) + p["b_o"])
        C_tilda = np.tanh((X @ p["W_xc"]) + (H @ p["W_hc"]) + p["b_c"])
        C = F * C + I * C_tilda
        H = O * np.tanh(C)
        outputs.append(H)
    return np.stack(outputs), C


def ours(cell: str, p: Problem) -> dict[str, np.ndarray]:
    """core's forward on NumPy float64: Hs and the final state."""
    params, inputs, _, state = p
    Hs, final = cells.cell_forward(NP, cell, params, inputs, state)
    return {"Hs": Hs, **state_arrays(NP, final)}


def test_reset_before_is_d2l_9_1() -> None:
    p = problem(cells.GRU_RESET_BEFORE)
    Hs = d2l_gru(p[0], p[1], p[3])
    theirs = {"Hs": Hs, "state_H": Hs[-1]}
    assert max_error(ours(cells.GRU_RESET_BEFORE, p), theirs) <= tolerance("float64", "values")


def test_lstm_is_d2l_9_2() -> None:
    p = problem(cells.LSTM)
    Hs, C = d2l_lstm(p[0], p[1], *p[3])
    theirs = {"Hs": Hs, "state_H": Hs[-1], "state_C": C}
    assert max_error(ours(cells.LSTM, p), theirs) <= tolerance("float64", "values")


def test_torch_gru_is_reset_after() -> None:
    torch = pytest.importorskip("torch")
    p = problem(cells.GRU_RESET_AFTER)
    params, inputs, _, state = p
    gru = torch.nn.GRU(V, H, dtype=torch.float64)
    split = np.random.default_rng(5).standard_normal((2, H))  # any split of b_r, b_z will do
    with torch.no_grad():  # gates (r, z, n), weights (out, in)
        gru.weight_ih_l0.copy_(torch.from_numpy(np.hstack([params[f"W_x{g}"] for g in "rzh"]).T))
        gru.weight_hh_l0.copy_(torch.from_numpy(np.hstack([params[f"W_h{g}"] for g in "rzh"]).T))
        b_ih = np.concatenate([params["b_r"] - split[0], params["b_z"] - split[1], params["b_xh"]])
        b_hh = np.concatenate([split[0], split[1], params["b_hh"]])
        gru.bias_ih_l0.copy_(torch.from_numpy(b_ih))
        gru.bias_hh_l0.copy_(torch.from_numpy(b_hh))
        out, h_n = gru(torch.from_numpy(one_hot(inputs)), torch.from_numpy(state)[None])
    theirs = {"Hs": out.numpy(), "state_H": h_n[0].numpy()}
    assert max_error(ours(cells.GRU_RESET_AFTER, p), theirs) <= tolerance("float64", "values")


def test_torch_lstm() -> None:
    torch = pytest.importorskip("torch")
    p = problem(cells.LSTM)
    params, inputs, _, (H0, C0) = p
    lstm = torch.nn.LSTM(V, H, dtype=torch.float64)
    bias = np.concatenate([params[f"b_{g}"] for g in "ifco"])
    split = np.random.default_rng(5).standard_normal(4 * H)
    with torch.no_grad():  # gates (i, f, g, o), g the candidate
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.hstack([params[f"W_x{g}"] for g in "ifco"]).T))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.hstack([params[f"W_h{g}"] for g in "ifco"]).T))
        lstm.bias_ih_l0.copy_(torch.from_numpy(bias - split))
        lstm.bias_hh_l0.copy_(torch.from_numpy(split))
        state = (torch.from_numpy(H0)[None], torch.from_numpy(C0)[None])
        out, (h_n, c_n) = lstm(torch.from_numpy(one_hot(inputs)), state)
    theirs = {"Hs": out.numpy(), "state_H": h_n[0].numpy(), "state_C": c_n[0].numpy()}
    assert max_error(ours(cells.LSTM, p), theirs) <= tolerance("float64", "values")


def _keras() -> Any:
    pytest.importorskip("tensorflow")  # Keras 3 runs here on its TensorFlow backend
    return pytest.importorskip("keras")


@pytest.mark.parametrize("cell", [cells.GRU_RESET_BEFORE, cells.GRU_RESET_AFTER])
def test_keras_gru(cell: str) -> None:
    keras = _keras()
    p = problem(cell)
    params, inputs, _, state = p
    reset_after = cell == cells.GRU_RESET_AFTER
    layer = keras.layers.GRU(
        H, reset_after=reset_after, return_sequences=True, return_state=True, dtype="float64"
    )
    layer.build((B, T, V))
    if reset_after:  # input row and recurrent row; z and r only count summed
        split = np.random.default_rng(5).standard_normal((2, H))
        bias = np.stack(
            [
                np.concatenate(
                    [params["b_z"] - split[0], params["b_r"] - split[1], params["b_xh"]]
                ),
                np.concatenate([split[0], split[1], params["b_hh"]]),
            ]
        )
    else:
        bias = np.concatenate([params[f"b_{g}"] for g in "zrh"])
    layer.set_weights(  # gates (z, r, h), weights (in, out) as ours
        [
            np.hstack([params[f"W_x{g}"] for g in "zrh"]),
            np.hstack([params[f"W_h{g}"] for g in "zrh"]),
            bias,
        ]
    )
    seq, h = layer(one_hot(inputs).transpose(1, 0, 2), initial_state=[state])
    theirs = {"Hs": np.asarray(seq).transpose(1, 0, 2), "state_H": np.asarray(h)}
    assert max_error(ours(cell, p), theirs) <= tolerance("float64", "values")


def test_keras_lstm() -> None:
    keras = _keras()
    p = problem(cells.LSTM)
    params, inputs, _, (H0, C0) = p
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, dtype="float64")
    layer.build((B, T, V))
    layer.set_weights(  # gates (i, f, c, o), weights (in, out) as ours
        [
            np.hstack([params[f"W_x{g}"] for g in "ifco"]),
            np.hstack([params[f"W_h{g}"] for g in "ifco"]),
            np.concatenate([params[f"b_{g}"] for g in "ifco"]),
        ]
    )
    seq, h, c = layer(one_hot(inputs).transpose(1, 0, 2), initial_state=[H0, C0])
    theirs = {
        "Hs": np.asarray(seq).transpose(1, 0, 2),
        "state_H": np.asarray(h),
        "state_C": np.asarray(c),
    }
    assert max_error(ours(cells.LSTM, p), theirs) <= tolerance("float64", "values")


def test_keras_unit_forget_bias_is_forget_bias_one() -> None:
    keras = _keras()
    layer = keras.layers.LSTM(H, unit_forget_bias=True, dtype="float64")
    layer.build((B, T, V))
    keras_bias = np.asarray(layer.get_weights()[2])  # gates (i, f, c, o)
    params = cells.init_params(cells.LSTM, V, H, np.random.default_rng(0), forget_bias=1.0)
    assert np.array_equal(keras_bias, np.concatenate([params[f"b_{g}"] for g in "ifco"]))


def test_reset_before_and_after_are_different_models() -> None:
    """The same weights, b_hh = 0 (so b_xh = b_h is the only candidate bias): only where the
    reset applies differs, (R ⊙ H) W_hh against R ⊙ (H W_hh), and the states part; with
    W_hh = 0 the two are the same model and agree."""
    params, inputs, labels, state = problem(cells.GRU_RESET_BEFORE)
    after = {k: v for k, v in params.items() if k != "b_h"}
    after.update(b_xh=params["b_h"], b_hh=np.zeros(H))
    before_Hs = ours(cells.GRU_RESET_BEFORE, (params, inputs, labels, state))["Hs"]
    after_Hs = ours(cells.GRU_RESET_AFTER, (after, inputs, labels, state))["Hs"]
    assert np.abs(before_Hs - after_Hs).max() > 1e-3
    params["W_hh"] = after["W_hh"] = np.zeros((H, H))
    before_Hs = ours(cells.GRU_RESET_BEFORE, (params, inputs, labels, state))["Hs"]
    after_Hs = ours(cells.GRU_RESET_AFTER, (after, inputs, labels, state))["Hs"]
    assert np.abs(before_Hs - after_Hs).max() <= 1e-15


# --- every backend runs the same cells -------------------------------------------------------


def _ops(name: str, dtype: str) -> Any:
    try:
        return backends.load(name).make_ops(dtype, "cpu")
    except BackendUnavailable as e:
        pytest.skip(f"not installed: {e}")


def _rounded(p: Problem, dtype: str) -> Problem:
    """Parameters and state rounded to ``dtype`` (held as float64): the reference starts from
    the numbers a float32 backend sees."""
    params, inputs, labels, state = p

    def r(a: np.ndarray) -> np.ndarray:
        return a.astype(dtype).astype(np.float64)

    state = tuple(r(s) for s in state) if isinstance(state, tuple) else r(state)
    return {k: r(v) for k, v in params.items()}, inputs, labels, state


def run_on(ops: Any, cell: str, p: Problem) -> tuple[dict[str, np.ndarray], ...]:
    """(forward: Hs and final state, bptt: loss, grads and dstate) on ``ops``, as NumPy."""
    params, inputs, labels, state = p
    args = (
        {k: ops.asarray(v) for k, v in params.items()},
        ops.asarray(inputs),
        ops.asarray(labels),
        to_ops(ops, state),
    )
    Hs, final = cells.cell_forward(ops, cell, args[0], args[1], args[3])
    loss, grads, _, dstate = cells.bptt(ops, cell, *args)
    forward = {"Hs": ops.to_numpy(Hs), **state_arrays(ops, final)}
    grads_np = {k: ops.to_numpy(v) for k, v in grads.items()}
    return forward, {**grads_np, **state_arrays(ops, dstate), "loss": ops.to_numpy(loss)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_every_backend_matches_numpy(backend: str, dtype: str, cell: str) -> None:
    ops = _ops(backend, dtype)
    p = _rounded(problem(cell, loss_steps=2), dtype)
    forward, grads = run_on(ops, cell, p)
    ref_forward, ref_grads = run_on(NP, cell, p)
    assert all(np.asarray(a).dtype == np.dtype(dtype) for a in forward.values())
    assert max_error(forward, ref_forward) <= tolerance(dtype, "values")
    assert max_error(grads, ref_grads) <= tolerance(dtype, "grads")


def _jitted_jax(cell: str, p: Problem) -> tuple[dict[str, np.ndarray], ...]:
    jax = pytest.importorskip("jax")
    ops = backends.load("jax").make_ops("float64", "cpu")
    forward = jax.jit(lambda *a: cells.cell_forward(ops, cell, *a))
    grads = jax.jit(lambda *a: cells.bptt(ops, cell, *a))
    return _compiled(ops, cell, p, forward, grads)


def _tf_function(cell: str, p: Problem) -> tuple[dict[str, np.ndarray], ...]:
    tf = pytest.importorskip("tensorflow")
    ops = backends.load("tensorflow").make_ops("float64", "cpu")
    forward = tf.function(lambda *a: cells.cell_forward(ops, cell, *a))
    grads = tf.function(lambda *a: cells.bptt(ops, cell, *a))
    return _compiled(ops, cell, p, forward, grads)


def _compiled(ops: Any, cell: str, p: Problem, forward: Any, grads: Any) -> tuple[Any, ...]:
    params, inputs, labels, state = p
    params_b = {k: ops.asarray(v) for k, v in params.items()}
    X, Y, s = ops.asarray(inputs), ops.asarray(labels), to_ops(ops, state)
    Hs, final = forward(params_b, X, s)
    loss, g, _, dstate = grads(params_b, X, Y, s)
    return (
        {"Hs": ops.to_numpy(Hs), **state_arrays(ops, final)},
        {
            **{k: ops.to_numpy(v) for k, v in g.items()},
            **state_arrays(ops, dstate),
            "loss": ops.to_numpy(loss),
        },
    )


COMPILED = {"jax-jit": _jitted_jax, "tensorflow-tf.function": _tf_function}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("compiled", COMPILED)
def test_compiled_scans_match_numpy(compiled: str, cell: str) -> None:
    """Traced, the scans are lax.scan and TensorFlow's graph loop, with tuple carries for the
    LSTM: the same numbers as NumPy's Python loop."""
    p = problem(cell, loss_steps=2)
    forward, grads = COMPILED[compiled](cell, p)
    ref_forward, ref_grads = run_on(NP, cell, p)
    assert max_error(forward, ref_forward) <= tolerance("float64", "values")
    assert max_error(grads, ref_grads) <= tolerance("float64", "grads")

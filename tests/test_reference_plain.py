"""The plain reference (conformance/reference.py) checked on its own, never against the library."""

from __future__ import annotations

import ast
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn.conformance import reference as ref
from rosetta_rnn.conformance.tolerances import tolerance

REFERENCE_PY = Path(__file__).resolve().parent.parent / "conformance" / "reference.py"


# ---------------------------------------------------------------------------------------------
# Independence
# ---------------------------------------------------------------------------------------------


def test_reference_imports_only_stdlib_and_numpy() -> None:
    tree = ast.parse(REFERENCE_PY.read_text(encoding="utf-8"))
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would reach into the package"
            modules.append(node.module or "")
    assert modules, "the walk found no imports at all"
    for name in modules:
        assert "rosetta_rnn" not in name
        top = name.split(".")[0]
        assert top == "numpy" or top in sys.stdlib_module_names, name


# ---------------------------------------------------------------------------------------------
# Gradients against central finite differences
# ---------------------------------------------------------------------------------------------


def _params(rng: np.random.Generator, V: int, H: int, D: int | None) -> dict[str, np.ndarray]:
    """Parameters at a moderate scale, so that the gradients are not tiny."""
    D_in = V if D is None else D
    params = {
        "W_xh": rng.standard_normal((D_in, H)) * 0.5,
        "W_hh": rng.standard_normal((H, H)) * 0.5,
        "b_h": rng.standard_normal(H) * 0.5,
        "W_hq": rng.standard_normal((H, V)) * 0.5,
        "b_q": rng.standard_normal(V) * 0.5,
    }
    if D is not None:
        params["E"] = rng.standard_normal((V, D)) * 0.5
    return params


def _pre_activation_margin(params: dict[str, np.ndarray], inputs: np.ndarray, state) -> float:
    """The smallest |pre-activation| of a relu forward pass, written out here on its own."""
    V = params["W_hq"].shape[1]
    H = state
    margin = math.inf
    for t in range(inputs.shape[0]):
        X = params["E"][inputs[t]] if "E" in params else np.eye(V)[inputs[t]]
        Z = X @ params["W_xh"] + H @ params["W_hh"] + params["b_h"]
        margin = min(margin, float(np.abs(Z).min()))
        H = np.maximum(Z, 0.0)
    return margin


def _problem(activation: str, embed: bool, T: int, w: int):
    V, H, B = 5, 4, 3
    D = 3 if embed else None
    for seed in range(200):
        rng = np.random.default_rng(seed)
        params = _params(rng, V, H, D)
        inputs = rng.integers(0, V, size=(T, B))
        labels = rng.integers(0, V, size=(w, B))
        state = rng.standard_normal((B, H)) * 0.5
        if activation == "tanh" or _pre_activation_margin(params, inputs, state) > 1e-3:
            return params, inputs, labels, state
    raise AssertionError("no seed keeps the relu pre-activations away from 0")


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("embed", [False, True], ids=["one_hot", "embedding"])
@pytest.mark.parametrize(("T", "w"), [(4, 4), (4, 1), (7, 3)])
def test_loss_and_grads_match_finite_differences(activation: str, embed: bool, T: int, w: int):
    params, inputs, labels, state = _problem(activation, embed, T, w)
    _, grads, H_T = ref.loss_and_grads(params, inputs, labels, state, activation)
    assert set(grads) == set(params)
    _, H_final, _ = ref.rnn(inputs, state, params, activation)
    np.testing.assert_array_equal(H_T, H_final)

    eps = 1e-6
    for name, p in params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            f_plus = ref.loss_and_grads(plus, inputs, labels, state, activation)[0]
            f_minus = ref.loss_and_grads(minus, inputs, labels, state, activation)[0]
            numeric[idx] = (f_plus - f_minus) / (2 * eps)
        scale = max(np.linalg.norm(numeric), np.linalg.norm(grads[name]))
        assert scale > 1e-4, f"{name}: gradient too small to test"
        rel = np.linalg.norm(numeric - grads[name]) / scale
        assert rel <= 1e-6, f"{name}: relative error {rel:.2e}"


def test_loss_is_mean_cross_entropy_of_last_steps() -> None:
    params, inputs, labels, state = _problem("tanh", False, 7, 3)
    loss, _, _ = ref.loss_and_grads(params, inputs, labels, state)
    outputs, _, _ = ref.rnn(inputs, state, params)
    B = inputs.shape[1]
    logits = outputs[4 * B :]
    y = labels.reshape(-1)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_p[np.arange(len(y)), y].mean(), rel=1e-13)


def test_rnn_rejects_unknown_activation() -> None:
    params = ref.get_params(4, 3, np.random.default_rng(0))
    with pytest.raises(ValueError):
        ref.rnn(np.zeros((2, 1), dtype=np.int64), ref.init_rnn_state(1, 3), params, "sigmoid")


def test_get_params_draws_in_the_books_order() -> None:
    params = ref.get_params(5, 3, np.random.default_rng(7), embed_dim=2)
    rng = np.random.default_rng(7)
    expected = {
        "W_xh": rng.standard_normal((2, 3)) * 0.01,
        "W_hh": rng.standard_normal((3, 3)) * 0.01,
        "W_hq": rng.standard_normal((3, 5)) * 0.01,
        "E": rng.standard_normal((5, 2)) * 0.01,
    }
    assert list(params) == ["W_xh", "W_hh", "b_h", "W_hq", "b_q", "E"]
    for name, value in expected.items():
        np.testing.assert_array_equal(params[name], value)
    assert not params["b_h"].any() and not params["b_q"].any()
    assert all(p.dtype == np.float64 for p in params.values())


# ---------------------------------------------------------------------------------------------
# Iterators
# ---------------------------------------------------------------------------------------------

CORPUS = list(range(100))


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_sequential_iterator(offset: int) -> None:
    batches = ref.seq_data_iter_sequential(CORPUS, 3, 5, offset)
    assert batches
    for X, Y in batches:
        assert X.shape == Y.shape == (3, 5) and X.dtype == np.int64
        np.testing.assert_array_equal(Y, X + 1)
    for (X0, _), (X1, _) in itertools.pairwise(batches):
        np.testing.assert_array_equal(X1[:, 0], X0[:, -1] + 1)
    assert batches[0][0][0, 0] == offset


@pytest.mark.parametrize("offset", [0, 2, 4])
def test_random_iterator_follows_the_given_order(offset: int) -> None:
    num_steps, batch_size = 5, 3
    num_subseqs = (len(CORPUS) - offset - 1) // num_steps
    order = list(np.random.default_rng(offset).permutation(num_subseqs))
    batches = ref.seq_data_iter_random(CORPUS, batch_size, num_steps, offset, order)
    assert len(batches) == num_subseqs // batch_size
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (batch_size, num_steps)
        np.testing.assert_array_equal(Y, X + 1)
        for row in X:
            np.testing.assert_array_equal(row, np.arange(row[0], row[0] + num_steps))
        starts += [int(s) for s in X[:, 0]]
    assert len(set(starts)) == len(starts)
    assert starts == [offset + num_steps * int(k) for k in order[: len(starts)]]


def test_iterators_reject_bad_draws() -> None:
    with pytest.raises(ValueError):
        ref.seq_data_iter_sequential(CORPUS, 2, 5, 6)
    with pytest.raises(ValueError):
        ref.seq_data_iter_sequential(CORPUS, 2, 5, -1)
    ref.seq_data_iter_sequential(CORPUS, 2, 5, 5)  # randint(0, num_steps) includes num_steps
    num_subseqs = (len(CORPUS) - 1) // 5
    with pytest.raises(ValueError):
        ref.seq_data_iter_random(CORPUS, 2, 5, 5, list(range(num_subseqs)))
    with pytest.raises(ValueError):
        ref.seq_data_iter_random(CORPUS, 2, 5, 0, [0, *range(num_subseqs - 1)])
    with pytest.raises(ValueError):
        ref.seq_data_iter_random(CORPUS, 2, 5, 0, list(range(num_subseqs + 1)))


# ---------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------


def _grads(scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"a": rng.standard_normal((3, 4)) * scale, "b": rng.standard_normal(5) * scale}


def _global_norm(grads: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float((g**2).sum()) for g in grads.values()))


def test_grad_clipping() -> None:
    big = _grads(10.0)
    clipped, norm = ref.grad_clipping(big, 1.0)
    assert norm == pytest.approx(_global_norm(big), rel=1e-15)
    assert norm > 1.0
    assert abs(_global_norm(clipped) - 1.0) <= 1e-12
    for name in big:
        np.testing.assert_allclose(clipped[name], big[name] / norm, rtol=1e-14)

    small = _grads(0.01)
    clipped, norm = ref.grad_clipping(small, 1.0)
    assert norm < 1.0
    for name in small:
        np.testing.assert_array_equal(clipped[name], small[name])

    clipped, _ = ref.grad_clipping(big, math.inf)
    for name in big:
        np.testing.assert_array_equal(clipped[name], big[name])
    assert clipped["a"] is not big["a"]


# ---------------------------------------------------------------------------------------------
# The book's printed figures on The Time Machine
# ---------------------------------------------------------------------------------------------


def test_the_books_figures(timemachine: Path) -> None:
    lines = ref.read_time_machine(timemachine)
    assert lines[0] == "the time machine by h g wells"
    assert lines[10] == "twinkled and his usually pale face was flushed and animated the"

    corpus, vocab = ref.load_corpus_time_machine(timemachine)
    assert (len(corpus), len(vocab)) == (170580, 28)

    words = ref.Vocab(ref.tokenize(lines, "word"))
    assert len(words) == 4580
    assert list(words.token_to_idx.items())[:10] == [
        ("<unk>", 0),
        ("the", 1),
        ("i", 2),
        ("and", 3),
        ("of", 4),
        ("a", 5),
        ("to", 6),
        ("was", 7),
        ("in", 8),
        ("that", 9),
    ]
    assert words["the"] == 1 and words["no-such-word"] == words.unk == 0
    assert words[["the", "i"]] == [1, 2]
    assert words.to_tokens([1, 2]) == ["the", "i"]


def test_vocab_ties_keep_first_seen_order_and_min_freq() -> None:
    vocab = ref.Vocab([["b", "a", "c", "a", "b", "d"]], min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "b", "a"]
    assert vocab.token_freqs == [("b", 2), ("a", 2), ("c", 1), ("d", 1)]
    with pytest.raises(ValueError):
        ref.tokenize(["a b"], "byte")


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def _constant_params(b_q: np.ndarray, H: int = 2) -> dict[str, np.ndarray]:
    """Zero weights: the logits are b_q at every step."""
    V = len(b_q)
    return {
        "W_xh": np.zeros((V, H)),
        "W_hh": np.zeros((H, H)),
        "b_h": np.zeros(H),
        "W_hq": np.zeros((H, V)),
        "b_q": np.asarray(b_q, dtype=np.float64),
    }


def test_predict_greedy_successor_model() -> None:
    V = 3
    successor = np.roll(np.eye(V), 1, axis=1)  # hidden unit i votes for token i + 1
    params = {
        "W_xh": 5.0 * np.eye(V),
        "W_hh": np.zeros((V, V)),
        "b_h": np.zeros(V),
        "W_hq": successor,
        "b_q": np.zeros(V),
    }
    assert ref.predict([0], 5, params) == [0, 1, 2, 0, 1, 2]
    assert ref.predict([2, 0], 3, params) == [2, 0, 1, 2, 0]  # warm-up, then from the last


def test_predict_greedy_ties_go_to_lowest_index() -> None:
    assert ref.predict([0], 3, _constant_params(np.array([0.0, 2.0, 1.0]))) == [0, 1, 1, 1]
    assert ref.predict([2], 2, _constant_params(np.array([0.0, 1.0, 1.0]))) == [2, 1, 1]


def test_predict_samples_by_inverse_cdf() -> None:
    params = _constant_params(np.log([0.1, 0.2, 0.7]))
    got = ref.predict([1], 3, params, temperature=1.0, uniforms=[0.05, 0.25, 0.95])
    assert got == [1, 0, 1, 2]
    got = ref.predict([1], 3, params, alpha=1.0, uniforms=[0.05, 0.25, 0.95])
    assert got == [1, 0, 1, 2]


def test_predict_alpha_one_equals_temperature_one() -> None:
    rng = np.random.default_rng(11)
    params = _params(rng, 6, 5, None)
    uniforms = list(rng.random(40))
    by_t = ref.predict([0, 3], 40, params, temperature=1.0, uniforms=uniforms)
    by_a = ref.predict([0, 3], 40, params, alpha=1.0, uniforms=uniforms)
    assert by_t == by_a
    assert by_t[:2] == [0, 3]


def test_predict_rejects_bad_sampling_arguments() -> None:
    params = _constant_params(np.log([0.1, 0.2, 0.7]))
    with pytest.raises(ValueError):
        ref.predict([0], 2, params, temperature=1.0)
    with pytest.raises(ValueError):
        ref.predict([0], 2, params, temperature=1.0, uniforms=[0.5])
    with pytest.raises(ValueError):
        ref.predict([0], 2, params, temperature=1.0, alpha=1.0, uniforms=[0.5, 0.5])


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

TRAIN_CORPUS = [0, 1, 2, 3, 4, 2, 1, 0, 3, 4, 1, 2] * 5  # 60 ids, V = 5


def _train(epochs: int, **kwargs) -> list[float]:
    params = ref.get_params(5, 8, np.random.default_rng(0))
    perplexities = []
    for _ in range(epochs):
        params, ppl, history = ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 0.5, 1.0, **kwargs)
        assert all(math.isfinite(loss) and norm >= 0 for loss, norm in history)
        perplexities.append(ppl)
    return perplexities


def test_train_epoch_loss_decreases() -> None:
    ppl = _train(8)
    assert ppl[-1] < ppl[0]
    assert ppl[0] == pytest.approx(5.0, rel=0.05)  # near-uniform at the start


def test_train_epoch_variants_run_and_learn() -> None:
    num_subseqs = (len(TRAIN_CORPUS) - 1) // 4
    order = list(range(num_subseqs))[::-1]
    for kwargs in (
        {"sampling": "random", "order": order},
        {"detach": False},
        {"last_step": True},
        {"reset_state": True, "activation": "relu"},
    ):
        ppl = _train(8, **kwargs)
        assert ppl[-1] < ppl[0], kwargs


def test_train_epoch_detach_false_first_minibatch_is_the_same() -> None:
    params = ref.get_params(5, 8, np.random.default_rng(1))
    _, _, h_detached = ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 0.5, 1.0)
    _, _, h_full = ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 0.5, 1.0, detach=False)
    assert h_detached[0] == h_full[0]
    assert h_detached[1] != h_full[1]


def test_train_epoch_carries_the_state_sequentially() -> None:
    params = ref.get_params(5, 8, np.random.default_rng(2))
    _, _, history = ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 0.5, math.inf)
    (X0, Y0), (X1, Y1) = ref.seq_data_iter_sequential(TRAIN_CORPUS, 2, 4, 0)[:2]
    loss0, grads0, H = ref.loss_and_grads(params, X0.T, Y0.T, ref.init_rnn_state(2, 8))
    params1 = ref.sgd(params, grads0, 0.5)
    loss1, _, _ = ref.loss_and_grads(params1, X1.T, Y1.T, H)
    assert history[0][0] == loss0 and history[1][0] == loss1


def test_train_epoch_rejects_detach_false_with_random_sampling() -> None:
    params = ref.get_params(5, 8, np.random.default_rng(0))
    order = list(range((len(TRAIN_CORPUS) - 1) // 4))
    with pytest.raises(ValueError):
        ref.train_epoch(
            params, TRAIN_CORPUS, 2, 4, 0.5, 1.0, sampling="random", order=order, detach=False
        )
    with pytest.raises(ValueError):
        ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 0.5, 1.0, reset_state=True, detach=False)


# ---------------------------------------------------------------------------------------------
# The gated cells: d2l 9.1's GRU (and the reset-after candidate), d2l 9.2's LSTM
# ---------------------------------------------------------------------------------------------

GATED = ("gru-reset-before", "gru-reset-after", "lstm")


def _gated_problem(cell: str, embed: bool, T: int, w: int, seed: int = 0, scale: float = 0.5):
    """Parameters (biases too) at ``scale``, a non-zero state ((H, C) for the LSTM), ids."""
    V, H, B = 5, 4, 3
    rng = np.random.default_rng(seed)
    shapes = ref.get_cell_params(cell, V, H, rng, embed_dim=3 if embed else None)
    params = {k: rng.standard_normal(v.shape) * scale for k, v in shapes.items()}
    inputs = rng.integers(0, V, size=(T, B))
    labels = rng.integers(0, V, size=(w, B))
    H_0 = rng.standard_normal((B, H)) * 0.5
    state = (H_0, rng.standard_normal((B, H)) * 0.5) if cell == "lstm" else H_0
    return params, inputs, labels, state


@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("embed", [False, True], ids=["one_hot", "embedding"])
@pytest.mark.parametrize(("T", "w"), [(7, 3), (4, 1)])
def test_gated_grads_match_finite_differences(cell: str, embed: bool, T: int, w: int) -> None:
    """The per-step backward against central differences (h = 1e-5) of the reference's own loss,
    as max|a − b| / max|fd| over all parameters together (a parameter with a tiny gradient
    has a difference made of rounding); every parameter's gradient is far from 0, so an
    error of its own size would show."""
    params, inputs, labels, state = _gated_problem(cell, embed, T, w)
    _, grads, final = ref.loss_and_grads(params, inputs, labels, state, cell=cell)
    assert list(grads) == list(params)
    _, forward_final = ref.forward(inputs, state, params, cell)
    np.testing.assert_array_equal(np.asarray(final), np.asarray(forward_final))  # (H, C) stacked

    h = 1e-5
    diff, scale = 0.0, 0.0
    for name, p in params.items():
        assert np.abs(grads[name]).max() > 1e-3, f"{name}: gradient too small to test"
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = ref.loss_and_grads(params, inputs, labels, state, cell=cell)[0]
            p[idx] = old - h
            down = ref.loss_and_grads(params, inputs, labels, state, cell=cell)[0]
            p[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        diff = max(diff, float(np.abs(numeric - grads[name]).max()))
        scale = max(scale, float(np.abs(numeric).max()))
    assert diff / scale <= tolerance("float64", "fd"), f"{diff / scale:.2e}"


def test_gated_cells_are_the_books_equations_step_by_step() -> None:
    """One step of each cell written out here, from the equations, on the same numbers."""
    params, inputs, _, state = _gated_problem("gru-reset-before", False, 1, 1)
    X = np.eye(5)[inputs[0]]

    def s(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-x))

    p = params
    Z = s(X @ p["W_xz"] + state @ p["W_hz"] + p["b_z"])
    R = s(X @ p["W_xr"] + state @ p["W_hr"] + p["b_r"])
    H_tilde = np.tanh(X @ p["W_xh"] + (R * state) @ p["W_hh"] + p["b_h"])
    H = Z * state + (1 - Z) * H_tilde
    outputs, H_1, _ = ref.gru(inputs, state, params)
    np.testing.assert_allclose(H_1, H, rtol=1e-14, atol=0)
    np.testing.assert_allclose(outputs, H @ p["W_hq"] + p["b_q"], rtol=1e-14, atol=1e-15)

    p, inputs, _, state = _gated_problem("gru-reset-after", False, 1, 1)
    X = np.eye(5)[inputs[0]]
    Z = s(X @ p["W_xz"] + state @ p["W_hz"] + p["b_z"])
    R = s(X @ p["W_xr"] + state @ p["W_hr"] + p["b_r"])
    H_tilde = np.tanh(X @ p["W_xh"] + p["b_xh"] + R * (state @ p["W_hh"] + p["b_hh"]))
    _, H_1, _ = ref.gru(inputs, state, p, reset_after=True)
    np.testing.assert_allclose(H_1, Z * state + (1 - Z) * H_tilde, rtol=1e-14, atol=0)

    p, inputs, _, (H_0, C_0) = _gated_problem("lstm", False, 1, 1)
    X = np.eye(5)[inputs[0]]
    gate = {g: X @ p[f"W_x{g}"] + H_0 @ p[f"W_h{g}"] + p[f"b_{g}"] for g in "ifoc"}
    C = s(gate["f"]) * C_0 + s(gate["i"]) * np.tanh(gate["c"])
    _, (H_1, C_1), _ = ref.lstm(inputs, (H_0, C_0), p)
    np.testing.assert_allclose(C_1, C, rtol=1e-14, atol=0)
    np.testing.assert_allclose(H_1, s(gate["o"]) * np.tanh(C), rtol=1e-14, atol=0)


def test_gru_params_draw_three_per_gate_in_the_books_order() -> None:
    rng = np.random.default_rng(7)
    V, H = 5, 3

    def three() -> list[np.ndarray]:
        return [rng.standard_normal((V, H)) * 0.01, rng.standard_normal((H, H)) * 0.01]

    W_xz, W_hz = three()
    W_xr, W_hr = three()
    W_xh, W_hh = three()
    W_hq = rng.standard_normal((H, V)) * 0.01
    expected = dict(W_xz=W_xz, W_hz=W_hz, W_xr=W_xr, W_hr=W_hr, W_xh=W_xh, W_hh=W_hh, W_hq=W_hq)

    before = ref.get_gru_params(V, H, np.random.default_rng(7))
    after = ref.get_gru_params(V, H, np.random.default_rng(7), reset_after=True)
    assert list(before) == [
        *("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h", "W_hq", "b_q")
    ]
    assert list(after) == [
        *("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_xh", "b_hh"),
        *("W_hq", "b_q"),
    ]
    for params in (before, after):
        for name, value in expected.items():
            np.testing.assert_array_equal(params[name], value)
        assert not any(params[b].any() for b in params if b.startswith("b_"))


def _book_lstm_draws(V: int, H: int, D: int | None) -> dict[str, np.ndarray]:
    """The weights as d2l 9.2 draws them (seed 7): three() per gate, in the order input,
    forget, output gate, candidate memory cell; then W_hq; then E (with an embedding)."""
    rng = np.random.default_rng(7)
    draws = {}
    for g in "ifoc":
        draws[f"W_x{g}"] = rng.standard_normal((D or V, H)) * 0.01
        draws[f"W_h{g}"] = rng.standard_normal((H, H)) * 0.01
    draws["W_hq"] = rng.standard_normal((H, V)) * 0.01
    if D is not None:
        draws["E"] = rng.standard_normal((V, D)) * 0.01
    return draws


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
@pytest.mark.parametrize("D", [None, 2], ids=["one_hot", "embedding"])
def test_lstm_params_draw_i_f_o_c_then_the_output_layer(forget_bias: float, D: int | None):
    params = ref.get_lstm_params(
        5, 3, np.random.default_rng(7), forget_bias=forget_bias, embed_dim=D
    )
    names = [f"{w}{g}" for g in "ifoc" for w in ("W_x", "W_h", "b_")]
    assert list(params) == [*names, "W_hq", "b_q", *(["E"] if D else [])]
    for name, value in _book_lstm_draws(5, 3, D).items():
        np.testing.assert_array_equal(params[name], value)
    np.testing.assert_array_equal(params["b_f"], np.full(3, forget_bias))
    assert not any(params[b].any() for b in ("b_i", "b_o", "b_c", "b_q"))


def test_gated_cells_refuse_what_they_do_not_have() -> None:
    params = ref.get_gru_params(4, 3, np.random.default_rng(0))
    ids = np.zeros((2, 1), dtype=np.int64)
    with pytest.raises(ValueError):
        ref.loss_and_grads(
            params, ids, ids, ref.init_state("gru-reset-before", 1, 3), "relu", "gru-reset-before"
        )
    with pytest.raises(ValueError):
        ref.forward(ids, ref.init_gru_state(1, 3), params, "gru")
    with pytest.raises(ValueError):
        ref.get_cell_params("gru-reset-after", 4, 3, np.random.default_rng(0), forget_bias=1.0)


@pytest.mark.parametrize("cell", GATED)
def test_gated_train_epoch_learns_and_carries_the_state(cell: str) -> None:
    params = ref.get_cell_params(cell, 5, 8, np.random.default_rng(0))
    params = {k: v * 10 for k, v in params.items()}
    perplexities = []
    for _ in range(8):
        params, ppl, history = ref.train_epoch(params, TRAIN_CORPUS, 2, 4, 1.0, 1.0, cell=cell)
        assert all(math.isfinite(loss) for loss, _ in history)
        perplexities.append(ppl)
    assert perplexities[-1] < perplexities[0]

    # the second minibatch starts from the first one's final state, (H, C) for the LSTM
    start = ref.get_cell_params(cell, 5, 8, np.random.default_rng(2))
    _, _, history = ref.train_epoch(start, TRAIN_CORPUS, 2, 4, 0.5, math.inf, cell=cell)
    (X0, Y0), (X1, Y1) = ref.seq_data_iter_sequential(TRAIN_CORPUS, 2, 4, 0)[:2]
    zeros = ref.init_state(cell, 2, 8)
    loss0, grads0, state = ref.loss_and_grads(start, X0.T, Y0.T, zeros, cell=cell)
    assert isinstance(state, tuple) == (cell == "lstm")
    loss1, _, _ = ref.loss_and_grads(ref.sgd(start, grads0, 0.5), X1.T, Y1.T, state, cell=cell)
    assert history[0][0] == loss0 and history[1][0] == loss1


@pytest.mark.parametrize("cell", GATED)
def test_gated_predict_carries_the_state_between_single_steps(cell: str) -> None:
    """Tokens predicted one step at a time, greedy and sampled, are the choices the logits of
    one pass over all of them (from zeros) make: the state, (H, C) for the LSTM, is carried."""
    params, _, _, _ = _gated_problem(cell, False, 1, 1, seed=3, scale=1.0)
    H = params["W_hq"].shape[0]

    def one_pass(tokens: list[int]) -> np.ndarray:
        ids = np.array(tokens[:-1]).reshape(-1, 1)
        return ref.forward(ids, ref.init_state(cell, 1, H), params, cell)[0][2:]

    greedy = ref.predict([1, 4, 0], 12, params, cell=cell)
    assert greedy[3:] == [int(np.argmax(row)) for row in one_pass(greedy)]

    uniforms = np.random.default_rng(0).random(12)
    sampled = ref.predict([1, 4, 0], 12, params, cell=cell, temperature=1.0, uniforms=uniforms)
    assert sampled[:3] == [1, 4, 0] and len(set(sampled[3:])) > 2
    for token, row, u in zip(sampled[3:], one_pass(sampled), uniforms, strict=True):
        cdf = np.cumsum(np.exp(row - row.max()))
        assert token == int(np.argmax(cdf > u * cdf[-1]))


# ---------------------------------------------------------------------------------------------
# The gated cells pinned to the frameworks' own layers (nobody here wrote those)
# ---------------------------------------------------------------------------------------------


def _pin_problem(cell: str):
    """Non-zero biases and state; T = 6 steps of B = 3 one-hot rows over V = 5 tokens."""
    params, inputs, _, state = _gated_problem(cell, False, 6, 1, seed=5)
    return params, inputs, state, np.eye(5)[inputs]  # X (T, B, V)


def _hidden_states(cell: str, params, inputs, state) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's H after every step (T, B, H), and the LSTM's final C."""
    if cell == "lstm":
        _, (_, C), steps = ref.lstm(inputs, state, params)
        return np.stack([s["H"] for s in steps]), C
    _, _, steps = ref.gru(inputs, state, params, reset_after=cell == "gru-reset-after")
    return np.stack([s["H"] for s in steps]), None


def _close(got: np.ndarray, want: np.ndarray) -> None:
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err <= tolerance("float64", "values"), f"{err:.2e}"


@pytest.mark.parametrize("cell", ["gru-reset-after", "lstm"])
def test_torch_layers_agree_with_the_reference(cell: str) -> None:
    """torch.nn.GRU (reset-after, gates r, z, n) and torch.nn.LSTM (gates i, f, g, o), weights
    (out, in): the reference's W_x· and W_h· transposed and stacked in torch's gate order."""
    torch = pytest.importorskip("torch")
    p, inputs, state, X = _pin_problem(cell)
    H = p["W_hq"].shape[0]
    zeros = np.zeros(H)
    if cell == "lstm":
        layer = torch.nn.LSTM(5, H, dtype=torch.float64)
        gates = "ifco"
        b_ih = np.concatenate([p[f"b_{g}"] for g in gates])
        b_hh = np.zeros(4 * H)
    else:
        layer = torch.nn.GRU(5, H, dtype=torch.float64)
        gates = "rzh"
        b_ih = np.concatenate([p["b_r"], p["b_z"], p["b_xh"]])
        b_hh = np.concatenate([zeros, zeros, p["b_hh"]])  # n's recurrent bias sits inside R ⊙ ·
    weights = {
        "weight_ih_l0": np.concatenate([p[f"W_x{g}"] for g in gates], axis=1).T,
        "weight_hh_l0": np.concatenate([p[f"W_h{g}"] for g in gates], axis=1).T,
        "bias_ih_l0": b_ih,
        "bias_hh_l0": b_hh,
    }
    layer.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    with torch.no_grad():
        if cell == "lstm":
            h0, c0 = (torch.tensor(s[None]) for s in state)
            out, (_, c_T) = layer(torch.tensor(X), (h0, c0))
        else:
            out, _ = layer(torch.tensor(X), torch.tensor(state[None]))
    want, C = _hidden_states(cell, p, inputs, state)
    _close(out.numpy(), want)
    if C is not None:
        _close(c_T.numpy()[0], C)


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")  # Keras 3 on its TensorFlow backend
    return pytest.importorskip("keras")


@pytest.mark.parametrize("cell", GATED)
def test_keras_layers_agree_with_the_reference(cell: str, keras) -> None:
    """Keras GRU(reset_after=False) is d2l's GRU, GRU(reset_after=True) torch's; weights
    (in, out) as here, stacked in Keras' gate order (z, r, h) or (i, f, c, o)."""
    p, inputs, state, X = _pin_problem(cell)
    H = p["W_hq"].shape[0]
    if cell == "lstm":
        layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, dtype="float64")
        gates = "ifco"
        bias = np.concatenate([p[f"b_{g}"] for g in gates])
        initial = [state[0], state[1]]
    else:
        reset_after = cell == "gru-reset-after"
        layer = keras.layers.GRU(
            H, return_sequences=True, return_state=True, reset_after=reset_after, dtype="float64"
        )
        gates = "zrh"
        if reset_after:  # rows: input biases, recurrent biases (h's inside R ⊙ ·)
            bias = np.stack(
                [
                    np.concatenate([p["b_z"], p["b_r"], p["b_xh"]]),
                    np.concatenate([np.zeros(2 * H), p["b_hh"]]),
                ]
            )
        else:
            bias = np.concatenate([p["b_z"], p["b_r"], p["b_h"]])
        initial = [state]
    batch_major = np.transpose(X, (1, 0, 2))  # (B, T, V)
    layer.build(batch_major.shape)
    layer.set_weights(
        [
            np.concatenate([p[f"W_x{g}"] for g in gates], axis=1),
            np.concatenate([p[f"W_h{g}"] for g in gates], axis=1),
            bias,
        ]
    )
    out, *final = layer(batch_major, initial_state=initial)
    want, C = _hidden_states(cell, p, inputs, state)
    _close(np.transpose(np.asarray(out), (1, 0, 2)), want)
    if C is not None:
        _close(np.asarray(final[1]), C)


def test_forget_bias_one_is_keras_unit_forget_bias(keras) -> None:
    layer = keras.layers.LSTM(3, unit_forget_bias=True, dtype="float64")
    layer.build((None, 2, 5))
    keras_bias = np.asarray(layer.get_weights()[2])  # gates (i, f, c, o)
    params = ref.get_lstm_params(5, 3, np.random.default_rng(0), forget_bias=1.0)
    ours = np.concatenate([params[f"b_{g}"] for g in "ifco"])
    np.testing.assert_array_equal(keras_bias, ours)


# ---------------------------------------------------------------------------------------------
# The current edition (d2l 1.0, 9.5): the whole text, the sorted vocabulary, every window
# ---------------------------------------------------------------------------------------------


def test_current_editions_text_vocab_and_windows(timemachine: Path) -> None:
    assert len(ref.read_time_machine_whole(timemachine)) == 173428
    assert len("".join(ref.read_time_machine(timemachine))) == 170580

    corpus, vocab = ref.load_corpus_time_machine(timemachine, text="whole", vocab_order="sorted")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert vocab.idx_to_token == [" ", "<unk>", *letters]
    assert (vocab[" "], vocab.unk, vocab["a"], vocab["z"], vocab["#"]) == (0, 1, 2, 27, 1)
    assert len(corpus) == 173428

    num_steps = 32
    assert len(corpus) - num_steps == 173396  # the windows, one at each start
    ref.seq_data_iter_windows(corpus, 1, num_steps, [173395])
    with pytest.raises(ValueError):
        ref.seq_data_iter_windows(corpus, 1, num_steps, [173396])

    run = ref.plain_run(
        timemachine, 1, max_tokens=-1, text="whole", vocab_order="sorted", sampling="windows",
        num_hiddens=4, batch_size=1024, num_steps=num_steps,
    )  # fmt: skip
    epoch = run["epochs"][0]
    assert [x.shape for x, _ in epoch["minibatches"]] == [(32, 1024)] * 9 + [(32, 784)]
    validation = ref.window_batches(range(10000, 15000), 1024)
    assert [len(b) for b in validation] == [1024] * 4 + [904]
    assert validation[0][0] == 10000 and validation[-1][-1] == 14999


def test_window_batches_keep_the_last_partial_minibatch() -> None:
    assert [len(b) for b in ref.window_batches(range(10000), 1024)] == [1024] * 9 + [784]
    assert ref.window_batches([4, 0, 3, 1, 2], 2) == [[4, 0], [3, 1], [2]]
    X, Y = ref.seq_data_iter_windows(CORPUS, 2, 5, [7, 94])[0]
    np.testing.assert_array_equal(X, [np.arange(7, 12), np.arange(94, 99)])
    np.testing.assert_array_equal(Y, X + 1)


SMALL_TEXT = "The Time-Machine, by H. G. Wells!\nA tale of time;\n\nand of a machine.\n" * 3


def _small_run(tmp_path: Path, epochs: int, **kwargs) -> tuple[Path, dict]:
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    settings = dict(
        max_tokens=-1, text="whole", vocab_order="sorted", sampling="windows", num_train=7,
        num_val=5, num_hiddens=4, batch_size=3, num_steps=3, lr=2.0, theta=0.5, seed=3,
    )  # fmt: skip
    settings.update(kwargs)
    return path, ref.plain_run(path, epochs, **settings)


def test_windows_run_by_hand(tmp_path: Path) -> None:
    """Two epochs written out here: the draws, the minibatches, the steps and both figures."""
    path, run = _small_run(tmp_path, 2)
    text = ref.read_time_machine_whole(path)
    assert "\n" not in text and text.startswith("the time machine by h g wells a tale")
    corpus, vocab = ref.load_corpus_time_machine(path, text="whole", vocab_order="sorted")
    assert run["vocab"] == vocab.idx_to_token == sorted(set(text) | {"<unk>"})

    rng = np.random.default_rng(3)
    params = ref.get_params(len(vocab), 4, rng)
    for name, value in params.items():
        np.testing.assert_array_equal(run["init"][name], value)

    def window(i: int) -> tuple[list[int], list[int]]:
        return corpus[i : i + 3], corpus[i + 1 : i + 4]

    for epoch in run["epochs"]:
        order = rng.permutation(7)  # one draw per epoch, right after the parameters
        assert [x.shape[1] for x, _ in epoch["minibatches"]] == [3, 3, 1]
        losses, counts = [], []
        for k, (inputs, labels) in enumerate(epoch["minibatches"]):
            starts = order[3 * k : 3 * k + 3]
            np.testing.assert_array_equal(inputs.T, [window(i)[0] for i in starts])
            np.testing.assert_array_equal(labels.T, [window(i)[1] for i in starts])
            zeros = ref.init_rnn_state(len(starts), 4)
            loss, grads, _ = ref.loss_and_grads(params, inputs, labels, zeros)
            params = ref.sgd(params, ref.grad_clipping(grads, 0.5)[0], 2.0)
            losses.append(loss)
            counts.append(labels.size)
        for name, value in params.items():
            np.testing.assert_array_equal(epoch["params"][name], value)
        weighted = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
        assert epoch["perplexity"] == pytest.approx(math.exp(weighted), rel=1e-13)
        book = sum(math.exp(loss) for loss in losses) / len(losses)
        assert epoch["book_perplexity"] == pytest.approx(book, rel=1e-13)

        val_losses = []  # windows 7..11 in order, 3 then 2, from zeros, the epoch's parameters
        for starts in ([7, 8, 9], [10, 11]):
            X = np.array([window(i)[0] for i in starts]).T
            Y = np.array([window(i)[1] for i in starts]).T
            val_losses.append(
                ref.loss_and_grads(params, X, Y, ref.init_rnn_state(len(starts), 4))[0]
            )
        validation = epoch["validation"]
        weighted = (val_losses[0] * 9 + val_losses[1] * 6) / 15
        assert validation["perplexity"] == pytest.approx(math.exp(weighted), rel=1e-13)
        book = (math.exp(val_losses[0]) + math.exp(val_losses[1])) / 2
        assert validation["book_perplexity"] == pytest.approx(book, rel=1e-13)
        assert validation["perplexity"] != validation["book_perplexity"]
        assert epoch["heldout"] is None
        assert list(epoch) == [
            *("minibatches", "perplexity", "book_perplexity", "params", "heldout", "validation")
        ]
    assert ref.perplexities([0.0, math.log(3.0)], [1, 3]) == pytest.approx(
        (3.0**0.75, 2.0), rel=1e-15
    )


def test_windows_last_step_labels(tmp_path: Path) -> None:
    _, run = _small_run(tmp_path, 1, last_step=True)
    _, full = _small_run(tmp_path, 1)
    for (inputs, labels), (same, all_labels) in zip(
        run["epochs"][0]["minibatches"], full["epochs"][0]["minibatches"], strict=True
    ):
        np.testing.assert_array_equal(inputs, same)
        np.testing.assert_array_equal(labels, all_labels[-1:])
    assert run["epochs"][0]["perplexity"] != full["epochs"][0]["perplexity"]


@pytest.mark.parametrize("cell", ["rnn", *GATED])
def test_windows_run_with_every_cell_and_no_clipping(tmp_path: Path, cell: str) -> None:
    _, run = _small_run(tmp_path, 2, cell=cell, theta=math.inf, lr=1.0)
    for epoch in run["epochs"]:
        figures = [epoch["perplexity"], epoch["book_perplexity"], *epoch["validation"].values()]
        assert all(math.isfinite(f) and f > 1.0 for f in figures)
    assert set(run["epochs"][0]["params"]) == set(run["init"])


def test_windows_run_refusals_and_the_other_samplings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):  # too few windows: 186 ids, 183 windows of 4
        _small_run(tmp_path, 1, num_train=179, num_val=5)
    with pytest.raises(ValueError):
        _small_run(tmp_path, 1, train_fraction=0.9)
    with pytest.raises(ValueError):
        _small_run(tmp_path, 1, text="pages")
    _, run = _small_run(tmp_path, 1, num_train=178, num_val=5)
    assert [x.shape[1] for x, _ in run["epochs"][0]["minibatches"]][-2:] == [3, 1]

    for sampling in ("sequential", "random"):
        _, run = _small_run(tmp_path, 1, sampling=sampling, batch_size=2)
        assert run["vocab"][:2] == [" ", "<unk>"]
        assert list(run["epochs"][0]) == ["minibatches", "perplexity", "params", "heldout"]

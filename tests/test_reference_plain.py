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

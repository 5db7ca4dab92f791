"""core's math on the NumPy reference: shapes, loss, BPTT against finite differences, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rnn_problems import random_problem

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.checks import finite_difference_error
from rosetta_rnn.core import cells, model

OPS64 = numpy_backend.make_ops("float64", "cpu")


def _problem(vocab: int, hidden: int, batch: int, steps: int, seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return random_problem(rng, vocab, hidden, batch, steps, sigma=0.01 * scale * 30)


def test_init_params_shapes_and_draws() -> None:
    p = model.init_params(28, 512, np.random.default_rng(0), "float32")
    assert {k: v.shape for k, v in p.items()} == model.param_shapes(28, 512)
    assert all(v.dtype == np.float32 for v in p.values())
    assert not p["b_h"].any() and not p["b_q"].any()
    assert abs(p["W_hh"].std() - 0.01) < 5e-4
    p64 = model.init_params(28, 512, np.random.default_rng(0), "float64")
    assert (p64["W_xh"].astype(np.float32) == p["W_xh"]).all()  # float32 = rounded float64 draw


def test_forward_shapes_and_time_major_order() -> None:
    params, inputs, _, state = _problem(7, 5, 3, 4, 0)
    Hs, H_T = model.rnn_forward(OPS64, params, inputs, state)
    assert Hs.shape == (4, 3, 5) and H_T.shape == (3, 5)
    assert np.array_equal(Hs[-1], H_T)
    logits = model.output_layer(OPS64, params, Hs)
    assert logits.shape == (4 * 3, 7)
    # row t*B + b is step t of sequence b
    assert np.allclose(logits[1 * 3 + 2], Hs[1, 2] @ params["W_hq"] + params["b_q"])
    # step by step equals the scan
    H = state
    for t in range(4):
        H = np.tanh(params["W_xh"][inputs[t]] + params["b_h"] + H @ params["W_hh"])
        assert np.allclose(H, Hs[t], rtol=0, atol=1e-15)


def test_cross_entropy_matches_direct_formula() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((12, 9)) * 4
    labels = rng.integers(0, 9, 12)
    direct = -np.mean(np.log(np.exp(logits[np.arange(12), labels]) / np.exp(logits).sum(1)))
    got = float(model.cross_entropy(OPS64, logits, labels))
    assert got == pytest.approx(direct, rel=1e-13)
    assert model.perplexity(got) == pytest.approx(math.exp(direct))


def test_uniform_prediction_has_perplexity_vocab_size() -> None:
    logits = np.zeros((6, 28))
    assert model.perplexity(
        float(model.cross_entropy(OPS64, logits, np.arange(6)))
    ) == pytest.approx(28)


def test_softmax_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0]])
    assert np.allclose(model.softmax(OPS64, logits), [[0.5, 0.5, 0.0]])
    assert np.isfinite(model.log_softmax(OPS64, logits)[0, :2]).all()


def _loss(params, inputs, labels, state, activation="tanh") -> float:
    loss, _ = model.forward_loss(OPS64, params, inputs, labels, state, activation)
    return float(loss)


def _finite_difference_check(params, inputs, labels, state, activation="tanh"):
    return finite_difference_error(params, inputs, labels, state, activation)


@given(
    vocab=st.integers(1, 6),
    hidden=st.integers(1, 5),
    batch=st.integers(1, 3),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
)
def test_bptt_matches_central_finite_differences(vocab, hidden, batch, steps, seed, scale) -> None:
    params, inputs, labels, state = _problem(vocab, hidden, batch, steps, seed, scale)
    assert _finite_difference_check(params, inputs, labels, state) <= 1e-7


@given(
    embed_dim=st.integers(1, 4),
    window=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_bptt_matches_finite_differences_with_embedding_and_loss_window(
    embed_dim: int, window: int, seed: int
) -> None:
    """A learned embedding E, and a loss over only the last ``window`` steps."""
    params, inputs, labels, state = _problem(6, 4, 2, 4, seed, 1.0)
    rng = np.random.default_rng(seed)
    params["E"] = rng.standard_normal((6, embed_dim))
    params["W_xh"] = rng.standard_normal((embed_dim, 4)) * 0.5
    assert _finite_difference_check(params, inputs, labels[4 - window :], state) <= 1e-7


def test_bptt_matches_finite_differences_for_relu() -> None:
    params, inputs, labels, state = _problem(5, 4, 2, 3, 11)
    assert _finite_difference_check(params, inputs, labels, state, "relu") <= 1e-7


def test_bptt_loss_and_state_equal_the_forward() -> None:
    params, inputs, labels, state = _problem(6, 4, 2, 5, 2)
    loss, _, H_T, _ = model.bptt(OPS64, params, inputs, labels, state)
    ref_loss, ref_H = model.forward_loss(OPS64, params, inputs, labels, state)
    assert float(loss) == float(ref_loss)
    assert np.array_equal(H_T, ref_H)


def _grads(norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    g = {k: rng.standard_normal(s) for k, s in model.param_shapes(4, 3).items()}
    total = math.sqrt(sum(float((v * v).sum()) for v in g.values()))
    return {k: v * (norm / total) for k, v in g.items()}


def test_clipping_above_theta_scales_to_theta() -> None:
    g = _grads(5.0)
    clipped, norm = model.clip_by_global_norm(OPS64, g, 1.0)
    assert float(norm) == pytest.approx(5.0, rel=1e-14)
    assert float(model.global_norm(OPS64, clipped)) == pytest.approx(1.0, rel=1e-14)
    for k in g:
        assert np.array_equal(clipped[k], g[k] * (1.0 / float(norm)))  # no epsilon


def test_clipping_below_theta_leaves_gradients_unchanged() -> None:
    g = _grads(0.5)
    clipped, norm = model.clip_by_global_norm(OPS64, g, 1.0)
    assert float(norm) == pytest.approx(0.5)
    assert all(np.array_equal(clipped[k], g[k]) for k in g)


def test_clipping_with_infinite_theta_is_no_clipping() -> None:
    g = _grads(1e6)
    clipped, norm = model.clip_by_global_norm(OPS64, g, math.inf)
    assert float(norm) == pytest.approx(1e6)
    assert all(np.array_equal(clipped[k], g[k]) for k in g)


def test_sgd_step() -> None:
    params, inputs, labels, state = _problem(5, 4, 2, 3, 0)
    new, _, loss, _ = model.train_step(
        OPS64, cells.bptt_value_and_grad(OPS64), params, inputs, labels, state, 0.5, math.inf
    )
    _, grads, _, _ = model.bptt(OPS64, params, inputs, labels, state)
    for k in model.PARAM_NAMES:
        assert np.array_equal(new[k], params[k] - 0.5 * grads[k])
    assert _loss(new, inputs, labels, state) < float(loss)  # a small step goes downhill


def test_python_scan_with_tuple_outputs_and_one_step() -> None:
    from rosetta_rnn.core.ops import python_scan

    xs = np.arange(3.0).reshape(1, 3)
    carry, (a, b) = python_scan(OPS64, lambda c, x: (c + x, (x, 2 * x)), np.zeros(3), xs)
    assert np.array_equal(carry, xs[0]) and np.array_equal(a, xs) and np.array_equal(b, 2 * xs)


def test_eval_needs_two_tokens() -> None:
    from rosetta_rnn.core.evaluation import perplexity_on

    params = model.to_backend(OPS64, model.init_params(4, 3, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity_on(OPS64, params, np.array([1]))
    assert perplexity_on(OPS64, params, np.array([1, 2]))[1] == 1


def test_activation_names_built_at_run_time() -> None:
    z = np.linspace(-2, 2, 7)
    tanh, relu = "".join(["ta", "nh"]), "".join(["re", "lu"])
    assert np.array_equal(model.activate(OPS64, tanh, z), np.tanh(z))
    assert np.array_equal(model.activate(OPS64, relu, z), np.maximum(z, 0))
    H = np.tanh(z)
    assert np.array_equal(model.activation_grad(OPS64, tanh, H), 1 - H * H)
    assert np.array_equal(model.activation_grad(OPS64, relu, np.maximum(z, 0)), (z > 0) * 1.0)


def test_an_unknown_activation_is_refused_not_taken_for_relu() -> None:
    from rosetta_rnn.core.errors import UserError
    from rosetta_rnn.core.training import TrainConfig

    z = np.array([-1.0, 2.0])
    assert np.array_equal(model.activate(OPS64, "relu", z), [0.0, 2.0])
    for fn in (model.activate, model.activation_grad):
        with pytest.raises(UserError, match="unknown activation 'sigmoid'; choose from tanh, relu"):
            fn(OPS64, "sigmoid", z)
    with pytest.raises(UserError, match="unknown activation 'gelu'"):
        TrainConfig(activation="gelu")

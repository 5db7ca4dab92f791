"""Greedy and temperature sampling: ties, reproducibility from the core generator, warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import model, sampling

OPS = numpy_backend.make_ops("float64", "cpu")


def test_greedy_breaks_ties_towards_the_lowest_index() -> None:
    assert sampling.greedy_choice(np.array([[1.0, 3.0, 3.0, 2.0]])) == 1
    assert sampling.greedy_choice(np.zeros(5)) == 0


def test_inverse_cdf_choice() -> None:
    p = np.array([0.1, 0.0, 0.6, 0.3])
    assert sampling.inverse_cdf_choice(p, 0.0) == 0
    assert sampling.inverse_cdf_choice(p, 0.0999) == 0
    assert sampling.inverse_cdf_choice(p, 0.1) == 2  # zero-probability index 1 is never picked
    assert sampling.inverse_cdf_choice(p, 0.7) == 3
    assert sampling.inverse_cdf_choice(p, 0.999999) == 3


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    return model.init_params(6, 8, np.random.default_rng(seed), "float64", sigma=0.5)


def test_temperature_sampling_is_reproducible_from_the_seed() -> None:
    params = _params()
    runs = [
        sampling.predict(OPS, params, [1, 2], 30, temperature=1.0, rng=np.random.default_rng(s))
        for s in (5, 5, 6)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_low_temperature_approaches_greedy() -> None:
    params = _params(1)
    greedy = sampling.predict(OPS, params, [3], 20)
    cold = sampling.predict(OPS, params, [3], 20, temperature=1e-3, rng=np.random.default_rng(0))
    assert greedy == cold


def test_greedy_draws_nothing_from_the_generator() -> None:
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    sampling.predict(OPS, _params(), [1, 2, 3], 10, rng=rng)
    assert rng.bit_generator.state == before


def test_predict_is_d2ls_warm_up_then_predict() -> None:
    params = _params(2)
    prefix = [1, 4, 2]
    out = sampling.predict(OPS, params, prefix, 5)
    assert out[:3] == prefix and len(out) == 8
    # by hand: feed every token one step at a time, starting from zeros
    H = np.zeros((1, 8))
    seq = list(prefix)
    for i in range(len(prefix) - 1 + 5):
        H = np.tanh(params["W_xh"][[seq[i]]] + params["b_h"] + H @ params["W_hh"])
        if i >= len(prefix) - 1:
            seq.append(int(np.argmax(H @ params["W_hq"] + params["b_q"])))
    assert out == seq


def test_predict_needs_a_prefix() -> None:
    with pytest.raises(ValueError):
        sampling.predict(OPS, _params(), [], 3)


def test_next_distribution_is_softmax_of_alpha_logits_after_the_prefix() -> None:
    from rosetta_rnn.conformance import reference

    rng = np.random.default_rng(3)
    params = {k: v * 30 for k, v in model.init_params(6, 5, rng, "float64").items()}
    ops = numpy_backend.make_ops("float64", "cpu")
    prefix = [2, 0, 4]
    for alpha in (0.5, 1.0, 3.0):
        q = sampling.next_distribution(ops, model.to_backend(ops, params), prefix, alpha)
        logits, _, _ = reference.rnn(np.array(prefix).reshape(-1, 1), np.zeros((1, 5)), params)
        z = alpha * logits[-1]
        want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert q.shape == (6,) and np.allclose(q, want, rtol=1e-12, atol=0)


def test_inverse_cdf_choice_never_leaves_the_vocabulary() -> None:
    probs = np.array([0.2, 0.3, 0.5])
    assert sampling.inverse_cdf_choice(probs, 1.0) == 2  # u = 1: clamped to the last index
    assert type(sampling.inverse_cdf_choice(probs, 1.0)) is int


def test_inverse_cdf_choice_scales_u_by_the_total() -> None:
    weights = np.array([1.0, 1.0, 2.0])  # not normalised: u is a fraction of the total, 4
    assert [sampling.inverse_cdf_choice(weights, u) for u in (0.2, 0.3, 0.6)] == [0, 1, 2]


def test_next_distribution_defaults_to_alpha_one() -> None:
    params = model.to_backend(OPS, model.init_params(5, 4, np.random.default_rng(2), "float64"))
    assert np.array_equal(
        sampling.next_distribution(OPS, params, [1, 2]),
        sampling.next_distribution(OPS, params, [1, 2], alpha=1.0),
    )


def test_a_two_token_prefix_is_read_before_sampling() -> None:
    """Untrained moderate weights, so the state after the warm-up shapes every probability."""
    from rosetta_rnn.conformance import reference

    params = {k: v * 100 for k, v in model.init_params(6, 5, np.random.default_rng(4)).items()}
    P = model.to_backend(OPS, params)
    for prefix in ([3, 1], [0, 5], [2, 2]):
        got = sampling.predict(OPS, P, prefix, 30, temperature=1.0, rng=np.random.default_rng(9))
        uniforms = np.random.default_rng(9).random(30).tolist()
        want = reference.predict(prefix, 30, params, temperature=1.0, uniforms=uniforms)
        assert got == want

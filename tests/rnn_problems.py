"""The small float64 problem the backend and model tests share: parameters, inputs, labels and a
nonzero initial state, drawn from one generator in a fixed order."""

from __future__ import annotations

import numpy as np

from rosetta_rnn.core import model

Problem = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]


def random_problem(
    rng: np.random.Generator,
    vocab: int,
    hidden: int,
    batch: int,
    steps: int,
    sigma: float = 0.3,
    bias: float = 0.1,
) -> Problem:
    """Weights normal × ``sigma``, biases normal × ``bias``, a state normal × 0.5; float64."""
    params = model.init_params(vocab, hidden, rng, "float64", sigma=sigma)
    params["b_h"] = rng.standard_normal(hidden) * bias
    params["b_q"] = rng.standard_normal(vocab) * bias
    inputs = rng.integers(0, vocab, (steps, batch))
    labels = rng.integers(0, vocab, (steps, batch))
    state = rng.standard_normal((batch, hidden)) * 0.5
    return params, inputs, labels, state

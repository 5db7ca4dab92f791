"""Greedy and temperature sampling, d2l's warm-up-then-predict loop (``predict_ch8``).

The choice of each next token happens here, in NumPy, from the backend's logits: greedy picks
the lowest index among the maxima, and temperature sampling inverts the cumulative
distribution at a uniform drawn from the core generator. No framework RNG decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .cells import any_forward, initial_state
from .model import output_layer, softmax
from .ops import Ops, Tensor


def greedy_choice(logits: np.ndarray) -> int:
    """argmax with ties broken towards the lowest index (the same on every backend):
    ``np.argmax`` returns the first occurrence of the maximum, as its documentation says."""
    return int(np.argmax(np.asarray(logits).reshape(-1)))


def inverse_cdf_choice(probs: np.ndarray, u: float) -> int:
    """The first index whose cumulative probability exceeds ``u * total`` (u in [0, 1))."""
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64).reshape(-1))
    index = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(index, cdf.size - 1)


class Drawn:
    """Uniforms core drew beforehand (``rng.random(n)``), handed out one at a time as its
    generator would hand them: what a backend's decoder passes to ``next_token``."""

    def __init__(self, uniforms: np.ndarray) -> None:
        self._next = iter(np.asarray(uniforms, dtype=np.float64).tolist())

    def random(self) -> float:
        return float(next(self._next))


def next_token(
    ops: Ops,
    logits: Tensor,
    temperature: float | None,
    rng: np.random.Generator | Drawn | None,
) -> int:
    """Pick one token from ``(1, vocab_size)`` logits: greedy when ``temperature`` is None/0."""
    if not temperature:
        return greedy_choice(ops.to_numpy(logits))
    if rng is None:
        raise ValueError("temperature sampling needs the core generator")
    probs = ops.to_numpy(softmax(ops, logits / temperature))
    return inverse_cdf_choice(probs, float(rng.random()))


def warm_up(
    ops: Ops, params: Mapping[str, Tensor], prefix: Sequence[int], activation: str = "tanh"
) -> Tensor:
    """The logits of the token after the whole prefix, read from a zero state: (1, vocab)."""
    state = initial_state(ops, params, 1)
    x = ops.asarray(np.asarray(prefix, dtype=np.int64).reshape(-1, 1))
    Hs, _ = any_forward(ops, params, x, state, activation)
    return output_layer(ops, params, Hs[-1:, ...])


def next_distribution(
    ops: Ops,
    params: Mapping[str, Tensor],
    prefix: Sequence[int],
    alpha: float = 1.0,
    activation: str = "tanh",
) -> np.ndarray:
    """q ∝ P^α of the token after ``prefix`` (α = 1/temperature): softmax(α · logits)."""
    logits = warm_up(ops, params, prefix, activation)
    return ops.to_numpy(softmax(ops, logits * alpha)).reshape(-1)


def predict(
    ops: Ops,
    params: Mapping[str, Tensor],
    prefix: Sequence[int],
    num_preds: int,
    *,
    temperature: float | None = None,
    rng: np.random.Generator | None = None,
    activation: str = "tanh",
    cell: str | None = None,
    compiled: bool = True,
) -> list[int]:
    """d2l's ``predict_ch8`` on token ids: warm up on the prefix, then predict ``num_preds``.
    ``cell``: the model, as a built run says it; None reads it from the parameters' names.
    A backend whose ops offer ``decode`` predicts every token in one call from the uniforms
    drawn here: JAX and TensorFlow in one compiled program, torch in a loop whose tokens stay on
    the device (plain or under ``torch.compile``), NumPy the chapter's RNN in a lean loop
    (``decodes`` says which models; ``compiled=False``: the host loop, one token a call); each
    token is chosen by the rule of ``next_token``.

    Returns the prefix ids followed by the predicted ids.
    """
    if not prefix:
        raise ValueError("the prefix needs at least one token")
    if temperature and rng is None:
        raise ValueError("temperature sampling needs the core generator")
    state = initial_state(ops, params, 1, cell)  # (H, C) for the LSTM
    outputs = list(prefix)
    if len(prefix) > 1:  # warm-up: feed prefix[:-1], keep only the state
        warm = ops.asarray(np.asarray(prefix[:-1], dtype=np.int64).reshape(-1, 1))
        _, state = any_forward(ops, params, warm, state, activation, cell)
    decode = getattr(ops, "decode", None) if compiled else None
    decodes = getattr(ops, "decodes", None)
    if decode is not None and decodes is not None and not decodes(params, cell):
        decode = None  # a model this backend's decoder does not run: the host loop
    if decode is not None and num_preds > 0:
        # one compiled program for all the tokens; the uniforms are the ones the host loop
        # would draw one at a time (Generator.random(n) gives the same n numbers)
        uniforms = rng.random(num_preds) if temperature and rng is not None else None
        tokens = decode(
            params, state, outputs[-1], num_preds, temperature, uniforms, activation, cell
        )
        return outputs + [int(t) for t in tokens]
    for _ in range(num_preds):
        x = ops.asarray(np.asarray([[outputs[-1]]], dtype=np.int64))
        Hs, state = any_forward(ops, params, x, state, activation, cell)
        outputs.append(next_token(ops, output_layer(ops, params, Hs), temperature, rng))
    return outputs

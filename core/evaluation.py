"""Perplexity on a text: one pass, the state carried from chunk to chunk, every next token
predicted (no random offset, nothing dropped)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .cells import any_forward_loss as forward_loss  # any cell's: the RNN's or a gated one's
from .cells import initial_state
from .ops import Ops, Tensor


def perplexity_on(
    ops: Ops,
    params: Mapping[str, Tensor],
    ids: np.ndarray,
    num_steps: int = 35,
    activation: str = "tanh",
    cell: str | None = None,
) -> tuple[float, int]:
    """exp(mean cross-entropy) of predicting ids[1:] from ids[:-1]; returns (perplexity, n).
    ``cell``: the model, as a built run says it; None reads it from the parameters' names."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("a text of at least 2 tokens is needed for a perplexity")
    state = initial_state(ops, params, 1, cell)  # any cell's: (H, C) for the LSTM
    total, n = 0.0, 0
    for start in range(0, len(ids) - 1, num_steps):
        y = ids[start + 1 : start + 1 + num_steps]
        x = ids[start : start + len(y)]
        loss, state = forward_loss(
            ops,
            params,
            ops.asarray(x.reshape(-1, 1)),
            ops.asarray(y.reshape(-1, 1)),
            state,
            activation,
            cell,
        )
        total += float(ops.to_numpy(loss)) * len(y)
        n += len(y)
    return math.exp(total / n), n

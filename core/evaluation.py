"""Perplexity on a text: one pass, the state carried from chunk to chunk, every next token
predicted (no random offset, nothing dropped).

A backend whose ops offer ``forward_loss`` runs each chunk through it: JAX and TensorFlow as one
compiled program per chunk shape (``compiled=False``: core's ``any_forward_loss`` op by op)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .cells import any_forward_loss as forward_loss  # any cell's: the RNN's or a gated one's
from .cells import initial_state
from .data import window_batches
from .ops import Ops, Tensor


def _chunk_loss(ops: Ops, compiled: bool) -> Callable[..., tuple[Any, Any]]:
    """(params, inputs, labels, state, activation, cell) -> (mean loss, final state): the
    backend's compiled ``forward_loss`` where it has one and ``compiled``, else core's."""
    own = getattr(ops, "forward_loss", None) if compiled else None
    if own is not None:
        return own
    return lambda *args: forward_loss(ops, *args)


def perplexity_on(
    ops: Ops,
    params: Mapping[str, Tensor],
    ids: np.ndarray,
    num_steps: int = 35,
    activation: str = "tanh",
    cell: str | None = None,
    compiled: bool = True,
) -> tuple[float, int]:
    """exp(mean cross-entropy) of predicting ids[1:] from ids[:-1]; returns (perplexity, n).
    ``cell``: the model, as a built run says it; None reads it from the parameters' names."""
    chunk_loss = _chunk_loss(ops, compiled)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("a text of at least 2 tokens is needed for a perplexity")
    state = initial_state(ops, params, 1, cell)  # any cell's: (H, C) for the LSTM
    total, n = 0.0, 0
    for start in range(0, len(ids) - 1, num_steps):
        y = ids[start + 1 : start + 1 + num_steps]
        x = ids[start : start + len(y)]
        loss, state = chunk_loss(
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


def window_perplexity(
    ops: Ops,
    params: Mapping[str, Tensor],
    ids: np.ndarray,
    starts: np.ndarray,
    batch_size: int,
    num_steps: int,
    activation: str = "tanh",
    cell: str | None = None,
    last_step: bool = False,
    compiled: bool = True,
) -> tuple[float, float]:
    """d2l 1.0's validation: the windows starting at ``starts``, in order, ``batch_size`` at a
    time (the last partial), each minibatch from a zero state. Returns (exp of the
    token-weighted mean loss, the plain mean of exp(each minibatch's mean loss): the book's
    plotted figure). ``last_step``: only each window's last label, as the loss trained."""
    chunk_loss = _chunk_loss(ops, compiled)
    total, n, exps, batches = 0.0, 0, 0.0, 0
    for X, Y in window_batches(ids, starts, batch_size, num_steps):
        labels = Y.T[-1:] if last_step else Y.T  # time-major, as training
        loss, _ = chunk_loss(
            params,
            ops.asarray(X.T),
            ops.asarray(labels),
            initial_state(ops, params, X.shape[0], cell),
            activation,
            cell,
        )
        mean = float(ops.to_numpy(loss))
        total += mean * labels.size
        n += labels.size
        exps += math.exp(mean) if mean < 700 else math.inf
        batches += 1
    if batches == 0:
        raise ValueError("no windows to evaluate")
    return math.exp(total / n), exps / batches

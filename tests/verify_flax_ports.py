"""Flax language models written as Flax users write them, for ``tests/test_verify.py``: a linen
model driving its cell with ``nn.RNN``, an nnx model stepping its cell in a loop; ids in, one-hot
inside, a dense output. None of it uses rosetta-rnn."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

V, H = 11, 6


class LinenLM(nn.Module):
    cell: str = "gru"

    @nn.compact
    def __call__(self, X: Any) -> Any:
        cells = {"rnn": nn.SimpleCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
        outputs = nn.RNN(cells[self.cell](H))(jax.nn.one_hot(X, V))
        return nn.Dense(V)(outputs)


class NnxLM(nnx.Module):
    def __init__(self, cell: str, rngs: nnx.Rngs) -> None:
        cells = {
            "rnn": nnx.SimpleCell,
            "gru": nnx.GRUCell,
            "lstm": nnx.LSTMCell,
            "optimized-lstm": nnx.OptimizedLSTMCell,
        }
        self.cell = cells[cell](V, H, rngs=rngs)
        self.out = nnx.Linear(H, V, rngs=rngs)

    def __call__(self, X: Any) -> Any:
        x = jax.nn.one_hot(X, V)
        zeros = jnp.zeros((X.shape[0], H), x.dtype)
        carry = (
            (zeros, zeros)
            if isinstance(self.cell, (nnx.LSTMCell, nnx.OptimizedLSTMCell))
            else zeros
        )
        outputs = []
        for t in range(X.shape[1]):
            carry, y = self.cell(carry, x[:, t])
            outputs.append(self.out(y))
        return jnp.stack(outputs, 1)

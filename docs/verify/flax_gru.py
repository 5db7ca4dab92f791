"""A GRU language model in Flax linen: nn.RNN drives the cell, a Dense reads every step."""

import flax.linen as nn
import jax

vocab_size, num_hiddens = 28, 32


class GRULM(nn.Module):
    @nn.compact
    def __call__(self, X):
        outputs = nn.RNN(nn.GRUCell(num_hiddens))(jax.nn.one_hot(X, vocab_size))
        return nn.Dense(vocab_size)(outputs)


model = GRULM()

"""The same model in Flax nnx, its GRUCell stepped in a loop."""

import jax
import jax.numpy as jnp
from flax import nnx

vocab_size, num_hiddens = 28, 32


class GRULM(nnx.Module):
    def __init__(self, rngs):
        self.cell = nnx.GRUCell(vocab_size, num_hiddens, rngs=rngs)
        self.out = nnx.Linear(num_hiddens, vocab_size, rngs=rngs)

    def __call__(self, X):
        H = jnp.zeros((X.shape[0], num_hiddens))
        outputs = []
        for x in jnp.swapaxes(jax.nn.one_hot(X, vocab_size), 0, 1):
            H, y = self.cell(H, x)
            outputs.append(self.out(y))
        return jnp.stack(outputs, 1)


model = GRULM(nnx.Rngs(0))

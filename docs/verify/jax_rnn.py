"""The chapter's RNN in JAX, under lax.scan: X (batch, steps) ids, logits (batch, steps, vocab)."""

import jax
import jax.numpy as jnp


def forward(params, X, H):
    def step(H, x):
        H = jnp.tanh(params["W_xh"][x] + H @ params["W_hh"] + params["b_h"])
        return H, H @ params["W_hq"] + params["b_q"]

    H, outputs = jax.lax.scan(step, H, X.T)
    return jnp.swapaxes(outputs, 0, 1), H

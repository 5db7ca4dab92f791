"""The chapter's model, written once against the tensor interface ``ops``.

Shapes, time-major as inside the model (d2l-en #1349 is what happens otherwise):
    inputs, labels  (num_steps, batch_size)              integer token ids
    Hs              (num_steps, batch_size, num_hiddens) hidden state after every step
    logits          (num_steps * batch_size, vocab_size) rows in time-major order
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .ops import Ops, Tensor

PARAM_NAMES: tuple[str, ...] = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu")

Params = dict[str, Tensor]
ValueAndGrad = Callable[[Params, Tensor, Tensor, Tensor], tuple[Tensor, Params, Tensor]]


def param_shapes(vocab_size: int, num_hiddens: int) -> dict[str, tuple[int, ...]]:
    """The shapes of ``W_xh, W_hh, b_h, W_hq, b_q``."""
    V, H = vocab_size, num_hiddens
    return {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}


def init_params(
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    dtype: str = "float64",
    sigma: float = 0.01,
) -> dict[str, np.ndarray]:
    """d2l's ``get_params``: weights ``normal * sigma``, biases zero, drawn W_xh, W_hh, W_hq.

    Drawn in float64 from the core generator and then cast, so every backend and dtype starts
    from the same numbers (float32 is the rounding of the float64 draw).
    """
    shapes = param_shapes(vocab_size, num_hiddens)
    params: dict[str, np.ndarray] = {}
    for name in PARAM_NAMES:
        if name.startswith("W"):
            params[name] = rng.standard_normal(shapes[name]) * sigma
        else:
            params[name] = np.zeros(shapes[name])
    return {name: params[name].astype(dtype) for name in PARAM_NAMES}


def begin_state(ops: Ops, batch_size: int, num_hiddens: int) -> Tensor:
    """The initial hidden state: zeros ``(batch_size, num_hiddens)``."""
    return ops.zeros((batch_size, num_hiddens))


def activate(ops: Ops, activation: str, z: Tensor) -> Tensor:
    """φ: tanh (the chapter) or relu (an exercise)."""
    return ops.tanh(z) if activation == "tanh" else ops.relu(z)


def activation_grad(ops: Ops, activation: str, H: Tensor) -> Tensor:
    """φ'(z) written in terms of the output H = φ(z): 1 - H² for tanh, [H > 0] for relu."""
    return 1 - H * H if activation == "tanh" else ops.cast(H > 0)


def embed(ops: Ops, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
    """one_hot(inputs) @ W_xh, computed as a row gather (exactly equal): (T, B, H)."""
    return ops.gather(params["W_xh"], inputs)


def rnn_forward(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    state: Tensor,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """H_t = φ(X_t W_xh + b_h + H_{t-1} W_hh) for t = 1..T. Returns (Hs, H_T)."""
    W_hh = params["W_hh"]
    XW = embed(ops, params, inputs) + params["b_h"]

    def step(H: Tensor, xw: Tensor) -> tuple[Tensor, Tensor]:
        H = activate(ops, activation, xw + ops.matmul(H, W_hh))
        return H, H

    H_T, Hs = ops.scan(step, state, XW)
    return Hs, H_T


def output_layer(ops: Ops, params: Mapping[str, Tensor], Hs: Tensor) -> Tensor:
    """Y_t = H_t W_hq + b_q for every step at once: (T * B, V)."""
    T, B, H = (int(n) for n in Hs.shape)
    return ops.matmul(ops.reshape(Hs, (T * B, H)), params["W_hq"]) + params["b_q"]


def log_softmax(ops: Ops, logits: Tensor) -> Tensor:
    """z - max z - log Σ exp(z - max z) along the last axis (the max is a constant)."""
    z = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    return z - ops.log(ops.sum(ops.exp(z), axis=-1, keepdims=True))


def softmax(ops: Ops, logits: Tensor) -> Tensor:
    """exp(z - max z) / Σ exp(z - max z) along the last axis."""
    e = ops.exp(logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True)))
    return e / ops.sum(e, axis=-1, keepdims=True)


def cross_entropy(ops: Ops, logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over all num_steps × batch_size predictions of -log softmax(logits)[label]."""
    n, vocab_size = (int(d) for d in logits.shape)
    picked = ops.one_hot(ops.reshape(labels, (n,)), vocab_size) * log_softmax(ops, logits)
    return -ops.sum(picked) / n


def perplexity(mean_cross_entropy: float) -> float:
    """exp of the mean cross-entropy per token."""
    return float(np.exp(mean_cross_entropy))


def forward_loss(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """The training objective for autodiff: (mean cross-entropy, H_T)."""
    Hs, H_T = rnn_forward(ops, params, inputs, state, activation)
    return cross_entropy(ops, output_layer(ops, params, Hs), labels), H_T


def bptt(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
    activation: str = "tanh",
) -> tuple[Tensor, Params, Tensor, Tensor]:
    """Hand-written backpropagation through time: cache the forward, walk it backwards.

    Returns (loss, grads, H_T, dstate) with ``dstate`` = ∂loss/∂state. Only the recurrence
    ``dH_{t-1} = dZ_t W_hhᵀ`` runs per step; the weight gradients are one matmul each after
    the loop.
    """
    W_hh, W_hq = params["W_hh"], params["W_hq"]
    T, B = (int(n) for n in inputs.shape)
    H = int(W_hh.shape[0])
    V = int(W_hq.shape[1])
    N = T * B

    Hs, H_T = rnn_forward(ops, params, inputs, state, activation)
    logits = output_layer(ops, params, Hs)
    loss = cross_entropy(ops, logits, labels)

    # ∂loss/∂logits of the mean cross-entropy: (softmax - one_hot) / N
    dlogits = (softmax(ops, logits) - ops.one_hot(ops.reshape(labels, (N,)), V)) / N
    Hs_flat = ops.reshape(Hs, (N, H))
    dW_hq = ops.matmul(ops.transpose(Hs_flat), dlogits)
    db_q = ops.sum(dlogits, axis=0)
    dHs = ops.reshape(ops.matmul(dlogits, ops.transpose(W_hq)), (T, B, H))

    W_hh_T = ops.transpose(W_hh)

    def back(dH_next: Tensor, xs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        dH_out, H_t = xs
        dZ = (dH_out + dH_next) * activation_grad(ops, activation, H_t)  # ∂/∂(pre-activation)
        return ops.matmul(dZ, W_hh_T), dZ

    dstate, dZ = ops.scan(back, ops.zeros((B, H)), (dHs, Hs), reverse=True)

    dZ_flat = ops.reshape(dZ, (N, H))
    H_prev = ops.reshape(ops.concat([ops.reshape(state, (1, B, H)), Hs[:-1]]), (N, H))
    X_flat = ops.one_hot(ops.reshape(inputs, (N,)), V)
    grads = {
        "W_xh": ops.matmul(ops.transpose(X_flat), dZ_flat),  # Xᵀ dZ (a scatter-add of rows)
        "W_hh": ops.matmul(ops.transpose(H_prev), dZ_flat),  # H_{t-1}ᵀ dZ over all steps
        "b_h": ops.sum(dZ_flat, axis=0),
        "W_hq": dW_hq,
        "b_q": db_q,
    }
    return loss, grads, H_T, dstate


def bptt_value_and_grad(ops: Ops, activation: str = "tanh") -> ValueAndGrad:
    """core's BPTT as a ``(params, inputs, labels, state) -> (loss, grads, H_T)`` function."""

    def value_and_grad(
        params: Params, inputs: Tensor, labels: Tensor, state: Tensor
    ) -> tuple[Tensor, Params, Tensor]:
        loss, grads, H_T, _ = bptt(ops, params, inputs, labels, state, activation)
        return loss, grads, H_T

    return value_and_grad


def global_norm(ops: Ops, grads: Mapping[str, Tensor]) -> Tensor:
    """‖g‖ over all parameters together: sqrt(Σ_params Σ g²)."""
    total = None
    for name in PARAM_NAMES:
        g = grads[name]
        s = ops.sum(g * g)
        total = s if total is None else total + s
    return ops.sqrt(total)


def clip_by_global_norm(
    ops: Ops, grads: Mapping[str, Tensor], theta: float
) -> tuple[Params, Tensor]:
    """d2l's clipping g ← g·min(1, θ/‖g‖), no epsilon; θ = inf leaves g as it is.

    Returns (clipped grads, the norm before clipping).
    """
    norm = global_norm(ops, grads)
    scale = ops.minimum(1.0, theta / norm)
    return {name: grads[name] * scale for name in PARAM_NAMES}, norm


def sgd(ops: Ops, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: float) -> Params:
    """d2l's ``sgd(params, lr, batch_size=1)``: p ← p - lr·g."""
    return {name: params[name] - lr * grads[name] for name in PARAM_NAMES}


def train_step(
    ops: Ops,
    value_and_grad: ValueAndGrad,
    params: Params,
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
    lr: float,
    theta: float,
) -> tuple[Params, Tensor, Tensor, Tensor]:
    """One SGD step with global-norm clipping: (new params, H_T, loss, gradient norm)."""
    loss, grads, H_T = value_and_grad(params, inputs, labels, state)
    clipped, norm = clip_by_global_norm(ops, grads, theta)
    return sgd(ops, params, clipped, lr), H_T, loss, norm


def to_backend(ops: Ops, params: Mapping[str, np.ndarray]) -> Params:
    """NumPy parameters -> backend arrays of ``ops.dtype``."""
    return {name: ops.asarray(np.asarray(params[name])) for name in PARAM_NAMES}


def to_numpy(ops: Ops, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Backend parameters -> NumPy arrays."""
    return {name: ops.to_numpy(params[name]) for name in PARAM_NAMES}

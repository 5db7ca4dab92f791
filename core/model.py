"""The chapter's model, written once against the tensor interface ``ops``.

Shapes, time-major as inside the model (d2l-en #1349 is what happens otherwise):
    inputs          (num_steps, batch_size)              integer token ids
    labels          (loss_steps, batch_size)             ids of the next token for the last
                                                         loss_steps steps (all steps: the
                                                         chapter; 1: last-step loss)
    Hs              (num_steps, batch_size, num_hiddens) hidden state after every step
    logits          (loss_steps * batch_size, vocab_size) rows in time-major order

With a learned embedding (an exercise) the parameters gain E (vocab_size, embed_dim) and
W_xh becomes (embed_dim, num_hiddens): X_t W_xh with X_t = E[x_t] instead of one_hot(x_t).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import UserError
from .ops import Ops, Tensor

PARAM_NAMES: tuple[str, ...] = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
EMBEDDING = "E"
ALL_PARAM_NAMES: tuple[str, ...] = (EMBEDDING, *PARAM_NAMES)
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu")

Params = dict[str, Tensor]
ValueAndGrad = Callable[[Params, Tensor, Tensor, Tensor], tuple[Tensor, Params, Tensor]]


def param_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The parameters present, in canonical order: the chapter's (E only with a learned
    embedding), or, for a gated cell's (core.cells: W_x·, W_h·, b_·), sorted by name. Other
    entries (a checkpoint's saved state) are left out."""
    names = [name for name in params if name == EMBEDDING or name.startswith(("W_", "b_"))]
    if set(names) <= set(ALL_PARAM_NAMES):
        return tuple(name for name in ALL_PARAM_NAMES if name in params)
    return tuple(sorted(names))


def param_shapes(
    vocab_size: int, num_hiddens: int, embed_dim: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The shapes of ``W_xh, W_hh, b_h, W_hq, b_q`` (and ``E`` with a learned embedding)."""
    V, H = vocab_size, num_hiddens
    shapes = {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}
    if embed_dim:
        shapes = {EMBEDDING: (V, embed_dim), **shapes, "W_xh": (embed_dim, H)}
    return shapes


def init_params(
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    dtype: str = "float64",
    sigma: float = 0.01,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """d2l's ``get_params``: weights ``normal * sigma``, biases zero, drawn W_xh, W_hh, W_hq
    (then E, for a learned embedding).

    Drawn in float64 from the core generator and then cast, so every backend and dtype starts
    from the same numbers (float32 is the rounding of the float64 draw).
    """
    shapes = param_shapes(vocab_size, num_hiddens, embed_dim)
    params: dict[str, np.ndarray] = {}
    for name in (*PARAM_NAMES, EMBEDDING):
        if name not in shapes:
            continue
        if name.startswith("b"):
            params[name] = np.zeros(shapes[name])
        else:
            params[name] = rng.standard_normal(shapes[name]) * sigma
    return {name: params[name].astype(dtype) for name in param_names(params)}


def begin_state(ops: Ops, batch_size: int, num_hiddens: int) -> Tensor:
    """The initial hidden state: zeros ``(batch_size, num_hiddens)``."""
    return ops.zeros((batch_size, num_hiddens))


def activation_fn(ops: Ops, activation: str) -> Callable[[Tensor], Tensor]:
    """φ as a function: tanh (the chapter) or relu (an exercise); any other name is a one-line
    error."""
    if activation == "tanh":
        return ops.tanh
    if activation == "relu":
        return ops.relu
    raise UserError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")


def activate(ops: Ops, activation: str, z: Tensor) -> Tensor:
    """φ(z), with φ named by ``activation_fn``."""
    return activation_fn(ops, activation)(z)


def activation_grad(ops: Ops, activation: str, H: Tensor) -> Tensor:
    """φ'(z) written in terms of the output H = φ(z): 1 - H² for tanh, [H > 0] for relu."""
    if activation == "tanh":
        return 1 - H * H
    if activation == "relu":
        return ops.cast(H > 0)
    raise UserError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")


def embed(ops: Ops, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
    """X_t W_xh for every step: (T, B, H). One-hot inputs make it a row gather of W_xh
    (exactly equal to the matmul); a learned embedding gathers rows of E first."""
    if EMBEDDING not in params:
        return ops.gather(params["W_xh"], inputs)
    T, B = (int(n) for n in inputs.shape)
    X = ops.reshape(ops.gather(params[EMBEDDING], inputs), (T * B, int(params[EMBEDDING].shape[1])))
    return ops.reshape(ops.matmul(X, params["W_xh"]), (T, B, int(params["W_xh"].shape[1])))


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


def output_step(ops: Ops, params: Mapping[str, Tensor], H: Tensor) -> Tensor:
    """Y = H W_hq + b_q for one step's states ``(B, num_hiddens)``: (B, V)."""
    return ops.matmul(H, params["W_hq"]) + params["b_q"]


def output_layer(ops: Ops, params: Mapping[str, Tensor], Hs: Tensor) -> Tensor:
    """Y_t = H_t W_hq + b_q for every step at once: (T * B, V)."""
    T, B, H = Hs.shape
    return output_step(ops, params, ops.reshape(Hs, (T * B, H)))


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


def loss_window(Hs: Tensor, labels: Tensor) -> Tensor:
    """The hidden states the loss sees: the last ``len(labels)`` steps."""
    T, w = int(Hs.shape[0]), int(labels.shape[0])
    if not 1 <= w <= T:
        raise ValueError(f"labels cover {w} steps, the inputs {T}")
    return Hs if w == T else Hs[T - w :, ...]


def output_loss(ops: Ops, params: Mapping[str, Tensor], Hs: Tensor, labels: Tensor) -> Tensor:
    """The mean cross-entropy of the output layer over the labelled last steps of ``Hs``;
    the same for the RNN and every gated cell (core.cells)."""
    return cross_entropy(ops, output_layer(ops, params, loss_window(Hs, labels)), labels)


def output_backward(
    ops: Ops, params: Mapping[str, Tensor], Hs: Tensor, labels: Tensor
) -> tuple[Tensor, Params, Tensor]:
    """The loss and its backward through the output layer: (loss, {W_hq, b_q} grads, dHs) with
    dHs = ∂loss/∂H_t for every step (zero before the labelled window). The start of every
    hand-written BPTT, the RNN's and the gated cells'."""
    T, B, H = (int(n) for n in Hs.shape)
    V = int(params["W_hq"].shape[1])
    w = int(labels.shape[0])  # the loss sees the last w steps
    M = w * B
    Hs_seen = loss_window(Hs, labels)
    log_probs = log_softmax(ops, output_layer(ops, params, Hs_seen))
    targets = ops.one_hot(ops.reshape(labels, (M,)), V)
    loss = -ops.sum(targets * log_probs) / M  # cross_entropy's, its softmax kept for dlogits
    # ∂loss/∂logits of the mean cross-entropy: (softmax - one_hot) / M
    dlogits = (ops.exp(log_probs) - targets) / M
    grads = {
        "W_hq": ops.matmul(ops.transpose(ops.reshape(Hs_seen, (M, H))), dlogits),
        "b_q": ops.sum(dlogits, axis=0),
    }
    dHs = ops.reshape(ops.matmul(dlogits, ops.transpose(params["W_hq"])), (w, B, H))
    if w < T:  # steps before the window get no gradient from the output layer
        dHs = ops.concat([ops.zeros((T - w, B, H)), dHs])
    return loss, grads, dHs


def forward_loss(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """The training objective for autodiff: (mean cross-entropy over the labelled last
    steps, H_T)."""
    Hs, H_T = rnn_forward(ops, params, inputs, state, activation)
    return output_loss(ops, params, Hs, labels), H_T


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
    W_hh = params["W_hh"]
    T, B = (int(n) for n in inputs.shape)
    H = int(W_hh.shape[0])
    V = int(params["W_hq"].shape[1])
    N = T * B

    Hs, H_T = rnn_forward(ops, params, inputs, state, activation)
    loss, output_grads, dHs = output_backward(ops, params, Hs, labels)

    W_hh_T = ops.transpose(W_hh)

    def back(dH_next: Tensor, xs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        dH_out, H_t = xs
        dZ = (dH_out + dH_next) * activation_grad(ops, activation, H_t)  # ∂/∂(pre-activation)
        return ops.matmul(dZ, W_hh_T), dZ

    dstate, dZ = ops.scan(back, ops.zeros((B, H)), (dHs, Hs), reverse=True)

    dZ_flat = ops.reshape(dZ, (N, H))
    # H_{t-1}ᵀ dZ_t over all steps: the state's step, then the rest as one matmul (the
    # previous states are Hs[:-1], with no (T, B, H) copy of them)
    dW_hh = ops.matmul(ops.transpose(state), dZ[0, ...])
    if T > 1:
        rest = (N - B, H)
        H_prev, dZ_rest = ops.reshape(Hs[:-1, ...], rest), ops.reshape(dZ[1:, ...], rest)
        dW_hh = dW_hh + ops.matmul(ops.transpose(H_prev), dZ_rest)
    one_hot_flat = ops.one_hot(ops.reshape(inputs, (N,)), V)
    grads = {
        "W_hh": dW_hh,
        "b_h": ops.sum(dZ_flat, axis=0),
        **output_grads,
    }
    if EMBEDDING in params:
        E = params[EMBEDDING]
        X_flat = ops.reshape(ops.gather(E, inputs), (N, int(E.shape[1])))
        grads["W_xh"] = ops.matmul(ops.transpose(X_flat), dZ_flat)  # Xᵀ dZ
        dX = ops.matmul(dZ_flat, ops.transpose(params["W_xh"]))  # dZ W_xhᵀ
        grads[EMBEDDING] = ops.matmul(ops.transpose(one_hot_flat), dX)  # scatter-add into E
    else:
        grads["W_xh"] = ops.matmul(ops.transpose(one_hot_flat), dZ_flat)  # one_hotᵀ dZ
    return loss, {name: grads[name] for name in param_names(params)}, H_T, dstate


def global_norm(ops: Ops, grads: Mapping[str, Tensor]) -> Tensor:
    """‖g‖ over all parameters together: sqrt(Σ_params Σ g²)."""
    total = None
    for name in param_names(grads):
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
    return {name: grads[name] * scale for name in param_names(grads)}, norm


def sgd(ops: Ops, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: float) -> Params:
    """d2l's ``sgd(params, lr, batch_size=1)``: p ← p - lr·g."""
    return {name: params[name] - lr * grads[name] for name in param_names(params)}


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
    return {name: ops.asarray(np.asarray(params[name])) for name in param_names(params)}


def to_numpy(ops: Ops, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Backend parameters -> NumPy arrays."""
    return {name: ops.to_numpy(params[name]) for name in param_names(params)}

"""Ports of the chapter's model written as their authors would write them, for
``tests/test_verify.py``: a forward and a training step in PyTorch for every cell, each with a
switch that plants one known mistake the way it shows up in real ports; the book's own
PyTorch models (d2l 0.17's ``RNNModel``, d2l 1.0's ``RNNLM`` and ``RNNLMScratch``, a loop over
``nn.GRUCell``); a forward each in NumPy, JAX and TensorFlow. None of it uses rosetta-rnn."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _gate(x: Any, kind: str) -> Any:
    if kind == "hard-sigmoid":  # Keras 3
        return torch.clamp(x + 3, 0, 6) / 6
    if kind == "hard-sigmoid-keras2":
        return torch.clamp(0.2 * x + 0.5, 0, 1)
    return torch.sigmoid(x)


def port_forward(params: dict, X: Any, state: Any, cell: str = "rnn", mistake: str = "") -> Any:
    """X: (steps, batch) ids, time-major; returns ((steps · batch, vocab) logits, state)."""
    p = dict(params)
    V = p["W_hq"].shape[1]
    dtype = p["W_hq"].dtype
    if mistake == "float32-leak":
        p = {k: v.float() for k, v in p.items()}
        dtype = torch.float32
    if mistake == "transposed-recurrent":
        p = {k: (v.T if k.startswith("W_h") and k != "W_hq" else v) for k, v in p.items()}
    if mistake == "no-layer-bias":
        p = {k: (v * 0 if k.startswith("b_") and k != "b_q" else v) for k, v in p.items()}
    if mistake == "gate-biases-twice":
        p = {k: (2 * v if k.startswith("b_") and k != "b_q" else v) for k, v in p.items()}
    if mistake == "gate-order-zr":
        for a in ("W_x", "W_h", "b_"):
            p[f"{a}z"], p[f"{a}r"] = p[f"{a}r"], p[f"{a}z"]
    if mistake == "gate-order-oc":
        for a in ("W_x", "W_h", "b_"):
            p[f"{a}o"], p[f"{a}c"] = p[f"{a}c"], p[f"{a}o"]
    if mistake == "lstm-gates-ifco":  # torch's i, f, g, o stack read in ONNX's i, o, f, c
        for a in ("W_x", "W_h", "b_"):
            p[f"{a}o"], p[f"{a}f"], p[f"{a}c"] = p[f"{a}f"], p[f"{a}c"], p[f"{a}o"]
    if mistake == "candidate-biases-swapped":
        p["b_xh"], p["b_hh"] = p["b_hh"], p["b_xh"]
    if mistake == "forget-bias-one":
        p["b_f"] = p["b_f"] + 1
    gate = lambda x: _gate(x, mistake)  # noqa: E731
    H = state[0] if cell == "lstm" else state
    C = state[1] if cell == "lstm" else None
    H, C = H.to(dtype), (C.to(dtype) if C is not None else None)
    outputs = []
    for x in X:
        xs = F.one_hot(x, V).to(dtype)
        if cell == "rnn":
            bias = 2 * p["b_h"] if mistake == "second-bias" else p["b_h"]
            H = torch.tanh(xs @ p["W_xh"] + H @ p["W_hh"] + bias)
        elif cell in ("gru", "gru-reset-after"):
            Z = gate(xs @ p["W_xz"] + H @ p["W_hz"] + p["b_z"])
            R = gate(xs @ p["W_xr"] + H @ p["W_hr"] + p["b_r"])
            if cell == "gru":
                if mistake == "reset-other-form":  # computed as torch's GRU does
                    H_tilde = torch.tanh(xs @ p["W_xh"] + p["b_h"] + R * (H @ p["W_hh"]))
                else:
                    H_tilde = torch.tanh(xs @ p["W_xh"] + (R * H) @ p["W_hh"] + p["b_h"])
            elif mistake == "bhn-outside":
                H_tilde = torch.tanh(xs @ p["W_xh"] + p["b_xh"] + p["b_hh"] + R * (H @ p["W_hh"]))
            elif mistake == "no-bhn":  # as Flax's nnx.GRUCell: no recurrent bias
                H_tilde = torch.tanh(xs @ p["W_xh"] + p["b_xh"] + R * (H @ p["W_hh"]))
            elif mistake == "reset-other-form":  # computed as d2l's GRU does
                b = p["b_xh"] + p["b_hh"]
                H_tilde = torch.tanh(xs @ p["W_xh"] + (R * H) @ p["W_hh"] + b)
            else:
                H_tilde = torch.tanh(xs @ p["W_xh"] + p["b_xh"] + R * (H @ p["W_hh"] + p["b_hh"]))
            H = Z * H + (1 - Z) * H_tilde
        else:
            I = gate(xs @ p["W_xi"] + H @ p["W_hi"] + p["b_i"])
            Fg = gate(xs @ p["W_xf"] + H @ p["W_hf"] + p["b_f"])
            O = gate(xs @ p["W_xo"] + H @ p["W_ho"] + p["b_o"])
            C_tilde = torch.tanh(xs @ p["W_xc"] + H @ p["W_hc"] + p["b_c"])
            C = Fg * C + I * C_tilde
            H = O * torch.tanh(C)
        outputs.append(H @ p["W_hq"] + p["b_q"])
    if mistake == "logits-batch-major":  # stacked batch-major, flattened (d2l-en #1349)
        logits = torch.stack(outputs, 1).reshape(-1, V)
    else:
        logits = torch.cat(outputs, 0)
    return logits, ((H, C) if cell == "lstm" else H)


def port_step(
    params: dict,
    X: Any,
    Y: Any,
    state: Any,
    lr: float,
    theta: float,
    cell: str = "rnn",
    mistake: str = "",
) -> Any:
    """One training step as the chapter takes it: the mean cross-entropy, its gradient,
    clipping over all parameters together, SGD; the state detached for the next minibatch."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    if mistake == "state-not-carried":
        state = tuple(s * 0 for s in state) if isinstance(state, tuple) else state * 0
    logits, final = port_forward(leaves, X, state, cell, mistake)
    labels = Y.T.reshape(-1) if mistake == "labels-batch-major" else Y.reshape(-1)
    if mistake == "loss-over-batch-only":
        loss = F.cross_entropy(logits, labels, reduction="sum") / Y.shape[1]
    else:
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
    if mistake == "clip-per-parameter":
        grads = {k: g * min(1.0, theta / float(torch.sqrt((g**2).sum()))) for k, g in grads.items()}
    elif mistake == "clip-epsilon":  # torch's clip_grad_norm_
        grads = {k: g * min(1.0, theta / (float(norm) + 1e-6)) for k, g in grads.items()}
    elif float(norm) > theta:
        grads = {k: g * theta / norm for k, g in grads.items()}
    new = {k: (params[k] - lr * grads[k]).detach() for k in params}
    final = tuple(s.detach() for s in final) if isinstance(final, tuple) else final.detach()
    return new, final, loss.detach()


def port_predict(
    params: dict,
    prefix: list,
    num_preds: int,
    temperature: Any,
    uniforms: Any,
    cell: str = "rnn",
    mistake: str = "",
) -> list:
    """d2l's predict: warm up on the prefix, then each token greedy, or drawn from
    softmax(logits / τ) by inverting its cumulative sum at the given uniform."""
    H = params["W_hq"].shape[0]
    zeros = torch.zeros((1, H), dtype=params["W_hq"].dtype)
    state = (zeros, zeros) if cell == "lstm" else zeros
    outputs = [prefix[0]]
    for y in prefix[1:]:
        _, state = port_forward(params, torch.tensor([[outputs[-1]]]), state, cell)
        outputs.append(y)
    for i in range(num_preds):
        logits, state = port_forward(params, torch.tensor([[outputs[-1]]]), state, cell)
        if not temperature:
            outputs.append(int(logits.argmax()))
            continue
        scaled = logits * temperature if mistake == "temperature-inverted" else logits / temperature
        probs = torch.softmax(scaled, -1)[0]
        if mistake == "framework-rng":
            outputs.append(int(torch.multinomial(probs, 1)))
            continue
        cdf = torch.cumsum(probs, 0)
        outputs.append(min(int((cdf <= uniforms[i] * cdf[-1]).sum()), len(probs) - 1))
    return outputs


def predict_for(cell: str, mistake: str = "") -> Any:
    def predict(params: dict, prefix: list, n: int, temperature: Any, uniforms: Any) -> list:
        return port_predict(params, prefix, n, temperature, uniforms, cell, mistake)

    return predict


def forward_for(cell: str, mistake: str = "") -> Any:
    def forward(params: dict, X: Any, state: Any) -> Any:
        return port_forward(params, X, state, cell, mistake)

    return forward


def step_for(cell: str, mistake: str = "") -> Any:
    def step(params: dict, X: Any, Y: Any, state: Any, lr: float, theta: float) -> Any:
        return port_step(params, X, Y, state, lr, theta, cell, mistake)

    return step


# --- the book's models ------------------------------------------------------------------------


class RNNModel(torch.nn.Module):
    """d2l 0.17's concise model (8.6): X (batch, steps) -> (steps · batch, vocab), state."""

    def __init__(self, rnn_layer: Any, vocab_size: int) -> None:
        super().__init__()
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        self.linear = torch.nn.Linear(
            self.num_hiddens, self.vocab_size, dtype=rnn_layer.weight_hh_l0.dtype
        )

    def forward(self, inputs: Any, state: Any) -> Any:
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(self.linear.weight.dtype)
        Y, state = self.rnn(X, state)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state


class D2lRNN(torch.nn.Module):
    """d2l 1.0's ``d2l.RNN``/``d2l.GRU``/``d2l.LSTM`` wrapper: the layer as ``self.rnn``."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, inputs: Any, H: Any = None) -> Any:
        return self.rnn(inputs, H)


class RNNLM(torch.nn.Module):
    """d2l 1.0's concise ``RNNLM`` (9.6): forward(X, state=None) -> (batch, steps, vocab)
    logits, no state returned."""

    def __init__(self, rnn: Any, vocab_size: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.vocab_size = vocab_size
        dtype = rnn.rnn.weight_hh_l0.dtype
        self.linear = torch.nn.Linear(rnn.rnn.hidden_size, vocab_size, dtype=dtype)

    def one_hot(self, X: Any) -> Any:
        return F.one_hot(X.T, self.vocab_size).to(self.linear.weight.dtype)

    def forward(self, X: Any, state: Any = None) -> Any:
        rnn_outputs, _ = self.rnn(self.one_hot(X), state)
        return self.linear(rnn_outputs).swapaxes(0, 1)


class RNNScratch(torch.nn.Module):
    """d2l 1.0's ``RNNScratch`` (9.5), its weights initialised as the book does."""

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> None:
        super().__init__()
        self.W_xh = torch.nn.Parameter(
            torch.randn(num_inputs, num_hiddens, dtype=torch.float64) * sigma
        )
        self.W_hh = torch.nn.Parameter(
            torch.randn(num_hiddens, num_hiddens, dtype=torch.float64) * sigma
        )
        self.b_h = torch.nn.Parameter(torch.zeros(num_hiddens, dtype=torch.float64))
        self.num_hiddens = num_hiddens

    def forward(self, inputs: Any, state: Any = None) -> Any:
        if state is None:
            state = torch.zeros((inputs.shape[1], self.num_hiddens), dtype=inputs.dtype)
        outputs = []
        for X in inputs:
            state = torch.tanh(X @ self.W_xh + state @ self.W_hh + self.b_h)
            outputs.append(state)
        return outputs, state


class RNNLMScratch(torch.nn.Module):
    """d2l 1.0's ``RNNLMScratch``: forward(X, state=None) -> (batch, steps, vocab)."""

    def __init__(self, rnn: RNNScratch, vocab_size: int, sigma: float = 0.01) -> None:
        super().__init__()
        self.rnn = rnn
        self.vocab_size = vocab_size
        H = rnn.num_hiddens
        self.W_hq = torch.nn.Parameter(torch.randn(H, vocab_size, dtype=torch.float64) * sigma)
        self.b_q = torch.nn.Parameter(torch.zeros(vocab_size, dtype=torch.float64))

    def forward(self, X: Any, state: Any = None) -> Any:
        embs = F.one_hot(X.T, self.vocab_size).to(self.W_hq.dtype)
        rnn_outputs, _ = self.rnn(embs, state)
        outputs = [H @ self.W_hq + self.b_q for H in rnn_outputs]
        return torch.stack(outputs, 1)


class GRUCellLoop(torch.nn.Module):
    """A port that steps ``nn.GRUCell`` itself: forward(X, H) -> (steps · batch, vocab), H."""

    def __init__(self, vocab_size: int, num_hiddens: int) -> None:
        super().__init__()
        self.cell = torch.nn.GRUCell(vocab_size, num_hiddens, dtype=torch.float64)
        self.out = torch.nn.Linear(num_hiddens, vocab_size, dtype=torch.float64)
        self.vocab_size = vocab_size

    def forward(self, X: Any, H: Any) -> Any:
        outputs = []
        for x in X.T:
            H = self.cell(F.one_hot(x, self.vocab_size).to(torch.float64), H)
            outputs.append(self.out(H))
        return torch.cat(outputs, 0), H


class Wrapper(torch.nn.Module):
    """A user's module holding the model deeper down."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.body = torch.nn.ModuleDict({"lm": inner})

    def forward(self, X: Any, state: Any) -> Any:
        return self.body["lm"](X, state)


# --- other frameworks ---------------------------------------------------------------------------


def numpy_forward(params: dict, X: Any, state: Any) -> Any:
    """The chapter's RNN in NumPy: X (steps, batch) ids."""
    H = state
    outputs = []
    for x in X:
        H = np.tanh(params["W_xh"][x] + H @ params["W_hh"] + params["b_h"])
        outputs.append(H @ params["W_hq"] + params["b_q"])
    return np.concatenate(outputs), H


def jax_forward(params: dict, X: Any, state: Any) -> Any:
    """The chapter's RNN under ``lax.scan``: X (batch, steps) ids, logits (batch, steps, V)."""
    import jax
    import jax.numpy as jnp

    def step(H: Any, x: Any) -> Any:
        H = jnp.tanh(params["W_xh"][x] + H @ params["W_hh"] + params["b_h"])
        return H, H @ params["W_hq"] + params["b_q"]

    H, outputs = jax.lax.scan(step, state, X.T)
    return jnp.swapaxes(outputs, 0, 1), H


def tf_forward(params: list, X: Any, state: Any) -> Any:
    """d2l 0.17's TensorFlow ``rnn()``: one-hot time-major inputs, params as a list, state (H,)."""
    import tensorflow as tf

    W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = state
    outputs = []
    for x in X:
        H = tf.tanh(tf.matmul(x, W_xh) + tf.matmul(H, W_hh) + b_h)
        outputs.append(tf.matmul(H, W_hq) + b_q)
    return tf.concat(outputs, axis=0), (H,)


def unexplained_forward(params: dict, X: Any, state: Any) -> Any:
    """Right, except that the third step's logits are off by 0.01 (no known mistake)."""
    logits, H = port_forward(params, X, state)
    B = X.shape[1]
    shift = torch.zeros_like(logits)
    shift[2 * B : 3 * B] = 0.01
    return logits + shift, H


def wrong_shape_forward(params: dict, X: Any, state: Any) -> Any:
    logits, H = port_forward(params, X, state)
    return logits[:-1], H


def missing_name_forward(params: dict, X: Any, state: Any) -> Any:
    return params["U"] @ X, state

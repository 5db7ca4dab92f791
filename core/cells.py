"""Gated cells (d2l 9.1 GRU, 9.2 LSTM), written once against the tensor interface ``ops``.

Cells, with d2l's names and orientation (``X W``, weights ``(in, num_hiddens)``):
    gru/reset-before  d2l 9.1 (Cho et al. v3; Keras ``reset_after=False``):
                      R = σ(X W_xr + H W_hr + b_r), Z = σ(X W_xz + H W_hz + b_z),
                      H̃ = tanh(X W_xh + (R ⊙ H) W_hh + b_h), H' = Z ⊙ H + (1 − Z) ⊙ H̃
    gru/reset-after   torch.nn.GRU, cuDNN, Keras ``reset_after=True``: R and Z as above,
                      H̃ = tanh(X W_xh + b_xh + R ⊙ (H W_hh + b_hh)), H' as above
    lstm              d2l 9.2: I, F, O = σ(X W_x· + H W_h· + b_·), C̃ = tanh(X W_xc + H W_hc + b_c),
                      C' = F ⊙ C + I ⊙ C̃, H' = O ⊙ tanh(C'); the state is the pair (H, C)
Every cell ends in d2l's output layer ``W_hq, b_q``. Inputs are one-hot (``vocab_size`` in), or
with a learned embedding the rows E[x_t] (``embed_dim`` in; E drawn after the cell's weights).

Shapes, time-major as in core.model:
    inputs  (num_steps, batch_size)               integer token ids
    labels  (loss_steps, batch_size)              next-token ids for the last loss_steps steps
    Hs      (num_steps, batch_size, num_hiddens)  hidden state after every step
    state   (batch_size, num_hiddens); for the LSTM the tuple (H, C) of two such arrays

Biases of reset-after. Only the candidate keeps two biases (b_xh outside the reset, b_hh inside
it: R ⊙ b_hh is not a constant). torch's r and z gates have b_i· and b_h·, which only ever
appear summed, so here each has one (b_r, b_z): two copies would be the same model with a
redundant parameter whose two gradients are always equal.

Other frameworks' conventions (their weights are ours concatenated along the gate axis):
    torch.nn.GRU (reset-after), gates (r, z, n), weights (out, in) so transposed:
        weight_ih_l0 = [W_xr | W_xz | W_xh]ᵀ (3H, V), weight_hh_l0 = [W_hr | W_hz | W_hh]ᵀ
        bias_ih_l0 + bias_hh_l0 = [b_r, b_z, ·] summed over r and z; bias_ih_l0[n] = b_xh,
        bias_hh_l0[n] = b_hh (kept apart: the n gate's recurrent bias is inside the reset)
    torch.nn.LSTM, gates (i, f, g, o), g the candidate C̃:
        weight_ih_l0 = [W_xi | W_xf | W_xc | W_xo]ᵀ (4H, V), weight_hh_l0 likewise from W_h·,
        bias_ih_l0 + bias_hh_l0 = [b_i, b_f, b_c, b_o]
    Keras GRU, gates (z, r, h), weights (in, 3H) as here: kernel = [W_xz | W_xr | W_xh],
        recurrent_kernel = [W_hz | W_hr | W_hh]; reset_after=False (reset-before):
        bias = [b_z, b_r, b_h]; reset_after=True: bias (2, 3H) with input row [b_z, b_r, b_xh]
        and recurrent row [0, 0, b_hh] (the rows' z and r entries only count summed)
    Keras LSTM, gates (i, f, c, o): kernel = [W_xi | W_xf | W_xc | W_xo], recurrent_kernel
        likewise, bias = [b_i, b_f, b_c, b_o]; unit_forget_bias=True is ``forget_bias=1``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import model
from .errors import UserError
from .model import Params, ValueAndGrad
from .ops import Ops, Tensor

RNN = "rnn"  # the chapter's RNN (core.model), for ``cell_of``
GRU_RESET_BEFORE = "gru/reset-before"
GRU_RESET_AFTER = "gru/reset-after"
LSTM = "lstm"
CELLS: tuple[str, ...] = (GRU_RESET_BEFORE, GRU_RESET_AFTER, LSTM)

State = Any
"""A GRU's state is H (batch_size, num_hiddens); an LSTM's the tuple (H, C)."""

_V, _H = "vocab_size", "num_hiddens"
_OUTPUT = (("W_hq", (_H, _V)), ("b_q", (_V,)))


def _gate(g: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """d2l's ``three()``: W_xg (vocab_size, num_hiddens), W_hg (num_hiddens, num_hiddens), b_g."""
    return ((f"W_x{g}", (_V, _H)), (f"W_h{g}", (_H, _H)), (f"b_{g}", (_H,)))


PARAMS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    GRU_RESET_BEFORE: (*_gate("z"), *_gate("r"), *_gate("h"), *_OUTPUT),
    GRU_RESET_AFTER: (
        *_gate("z"),
        *_gate("r"),
        ("W_xh", (_V, _H)),
        ("W_hh", (_H, _H)),
        ("b_xh", (_H,)),
        ("b_hh", (_H,)),
        *_OUTPUT,
    ),
    LSTM: (*_gate("i"), *_gate("f"), *_gate("o"), *_gate("c"), *_OUTPUT),
}
"""The one table: per cell, every parameter's name and symbolic shape in d2l's ``get_params``
order, which is also the order the weights are drawn in (both GRUs draw the same weights)."""


def check_cell(cell: str) -> str:
    """``cell`` if it names a cell, else a one-line error listing them."""
    if cell not in PARAMS:
        raise UserError(f"unknown cell {cell!r}; choose from {', '.join(CELLS)}")
    return cell


def param_names(cell: str) -> tuple[str, ...]:
    """The cell's parameters in the table's order."""
    return tuple(name for name, _ in PARAMS[check_cell(cell)])


def param_shapes(
    cell: str, vocab_size: int, num_hiddens: int, embed_dim: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The shapes of the cell's parameters, from the table. With a learned embedding the inputs
    are rows of E (vocab_size, embed_dim), so every W_x· is (embed_dim, num_hiddens)."""
    size = {_V: vocab_size, _H: num_hiddens}
    shapes = {name: tuple(size[s] for s in shape) for name, shape in PARAMS[check_cell(cell)]}
    if embed_dim:
        for name in shapes:
            if name.startswith("W_x"):
                shapes[name] = (embed_dim, num_hiddens)
        shapes[model.EMBEDDING] = (vocab_size, embed_dim)
    return shapes


def init_params(
    cell: str,
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    dtype: str = "float64",
    sigma: float = 0.01,
    forget_bias: float = 0.0,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """d2l's ``get_params``: weights ``normal * sigma`` drawn in the table's order, biases zero
    except the LSTM's b_f = ``forget_bias`` (0: d2l; 1: Keras' unit_forget_bias); a learned
    embedding's E is drawn last, as core.model draws the RNN's.

    Drawn in float64 and then cast, as core.model.init_params: float32 is the rounding of the
    float64 draw. The one initialisation of every model: ``RNN`` is the chapter's, drawn by
    core.model.init_params.
    """
    if forget_bias != 0.0 and cell != LSTM:
        raise UserError(f"forget_bias is the LSTM's forget-gate bias; cell {cell!r} has none")
    if cell == RNN:
        return model.init_params(vocab_size, num_hiddens, rng, dtype, sigma, embed_dim)
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(cell, vocab_size, num_hiddens, embed_dim).items():
        if name.startswith("b"):
            params[name] = np.full(shape, forget_bias if name == "b_f" else 0.0)
        else:
            params[name] = rng.standard_normal(shape) * sigma
    return {name: value.astype(dtype) for name, value in params.items()}


def begin_state(ops: Ops, cell: str, batch_size: int, num_hiddens: int) -> State:
    """Zeros: H for a GRU, the pair (H, C) for the LSTM."""
    if check_cell(cell) == LSTM:
        return ops.zeros((batch_size, num_hiddens)), ops.zeros((batch_size, num_hiddens))
    return ops.zeros((batch_size, num_hiddens))


def sigmoid(ops: Ops, x: Tensor) -> Tensor:
    """σ(x) = 1 / (1 + e^-x) = (1 + tanh(x/2)) / 2, an exact identity: Ops has no sigmoid, and
    tanh never overflows where e^-x would (x ≪ 0). Accurate to an ulp of 1 (a gate's scale);
    below about x = -37 it is 0 where σ is under 1e-16."""
    return 0.5 * (1 + ops.tanh(0.5 * x))


def _inputs(ops: Ops, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor | None:
    """The learned embedding's X_t = E[x_t] for every step, (T, B, embed_dim); None for
    one-hot inputs, which are never formed: X W_xg is then a row gather of W_xg."""
    if model.EMBEDDING not in params:
        return None
    return ops.gather(params[model.EMBEDDING], inputs)


def _projection(
    ops: Ops, params: Mapping[str, Tensor], inputs: Tensor, X: Tensor | None, g: str, bias: str
) -> Tensor:
    """X_t W_xg + b for every step at once, (T, B, H)."""
    W = params[f"W_x{g}"]
    if X is None:
        return ops.gather(W, inputs) + params[bias]
    T, B = (int(n) for n in inputs.shape)
    XW = ops.matmul(_flat(ops, X), W)
    return ops.reshape(XW, (T, B, int(W.shape[1]))) + params[bias]


def _forward(
    ops: Ops, cell: str, params: Mapping[str, Tensor], inputs: Tensor, state: State
) -> tuple[State, tuple[Tensor, ...]]:
    """Run the recurrence: (final state, the per-step cache stacked over time, Hs first).

    The cache holds what the backward pass needs of every step: for a GRU (Hs, Z, R, H̃, G)
    with G = R ⊙ H_{t-1} (reset-before) or G = H_{t-1} W_hh + b_hh (reset-after); for the LSTM
    (Hs, Cs, I, F, O, C̃, tanh C).
    """
    if check_cell(cell) == LSTM:
        return _lstm_forward(ops, params, inputs, state)
    return _gru_forward(ops, params, inputs, state, reset_after=cell == GRU_RESET_AFTER)


def _gru_forward(
    ops: Ops, params: Mapping[str, Tensor], inputs: Tensor, state: Tensor, reset_after: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    W_hz, W_hr, W_hh = params["W_hz"], params["W_hr"], params["W_hh"]
    X = _inputs(ops, params, inputs)
    xs = (
        _projection(ops, params, inputs, X, "z", "b_z"),
        _projection(ops, params, inputs, X, "r", "b_r"),
        _projection(ops, params, inputs, X, "h", "b_xh" if reset_after else "b_h"),
    )
    b_hh = params["b_hh"] if reset_after else None

    def step(H: Tensor, x: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        xz, xr, xh = x
        Z = sigmoid(ops, xz + ops.matmul(H, W_hz))  # update gate
        R = sigmoid(ops, xr + ops.matmul(H, W_hr))  # reset gate
        if reset_after:
            G = ops.matmul(H, W_hh) + b_hh  # reset applied after the recurrent matmul
            H_tilde = ops.tanh(xh + R * G)
        else:
            G = R * H  # reset applied to the state before the matmul
            H_tilde = ops.tanh(xh + ops.matmul(G, W_hh))
        H = Z * H + (1 - Z) * H_tilde
        return H, (H, Z, R, H_tilde, G)

    return ops.scan(step, state, xs)


def _lstm_forward(
    ops: Ops, params: Mapping[str, Tensor], inputs: Tensor, state: tuple[Tensor, Tensor]
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
    W_hi, W_hf, W_ho, W_hc = (params[f"W_h{g}"] for g in "ifoc")
    X = _inputs(ops, params, inputs)
    xs = tuple(_projection(ops, params, inputs, X, g, f"b_{g}") for g in "ifoc")

    def step(
        carry: tuple[Tensor, Tensor], x: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
        H, C = carry
        xi, xf, xo, xc = x
        I = sigmoid(ops, xi + ops.matmul(H, W_hi))  # input gate
        F = sigmoid(ops, xf + ops.matmul(H, W_hf))  # forget gate
        O = sigmoid(ops, xo + ops.matmul(H, W_ho))  # output gate
        C_tilde = ops.tanh(xc + ops.matmul(H, W_hc))  # candidate memory
        C = F * C + I * C_tilde
        tanh_C = ops.tanh(C)
        H = O * tanh_C
        return (H, C), (H, C, I, F, O, C_tilde, tanh_C)

    return ops.scan(step, (state[0], state[1]), xs)


def cell_forward(
    ops: Ops, cell: str, params: Mapping[str, Tensor], inputs: Tensor, state: State
) -> tuple[Tensor, State]:
    """The cell over t = 1..T: (Hs, final state); the final state is (H_T, C_T) for the LSTM."""
    final, cache = _forward(ops, cell, params, inputs, state)
    return cache[0], final


def forward_loss(
    ops: Ops,
    cell: str,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: State,
) -> tuple[Tensor, State]:
    """The training objective for autodiff: (mean cross-entropy over the labelled last steps,
    final state), core.model's output layer and loss on the cell's hidden states."""
    Hs, final = cell_forward(ops, cell, params, inputs, state)
    return model.output_loss(ops, params, Hs, labels), final


def _previous(ops: Ops, initial: Tensor, seq: Tensor) -> Tensor:
    """The value before every step: (initial, seq_1, ..., seq_{T-1}), (T, B, H)."""
    B, H = (int(n) for n in initial.shape)
    return ops.concat([ops.reshape(initial, (1, B, H)), seq[:-1, ...]])


def _shape(a: Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in a.shape)


def _flat(ops: Ops, a: Tensor) -> Tensor:
    """(T, B, n) -> (T·B, n): every step's rows stacked."""
    T, B, n = (int(d) for d in a.shape)
    return ops.reshape(a, (T * B, n))


def _weight_grad(ops: Ops, a: Tensor, dA: Tensor) -> Tensor:
    """For A_t = a_t W summed over every step: Σ_t a_tᵀ dA_t as one matmul."""
    return ops.matmul(ops.transpose(_flat(ops, a)), _flat(ops, dA))


def _bias_grad(ops: Ops, dA: Tensor) -> Tensor:
    """For A_t = ... + b: Σ over every step and batch row of dA_t."""
    return ops.sum(_flat(ops, dA), axis=0)


def bptt(
    ops: Ops,
    cell: str,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: State,
) -> tuple[Tensor, Params, State, State]:
    """Hand-written backpropagation through time: cache the forward, walk it backwards.

    Returns (loss, grads, final state, dstate): ``grads`` named as the parameters, ``dstate``
    = ∂loss/∂state (a pair for the LSTM). Only the recurrence (dH, and dC for the LSTM) runs
    per step; it emits each gate's pre-activation gradient dA_g, and after the walk every
    weight gradient is one matmul over all steps: ∂W_xg = Xᵀ dA_g, ∂W_hg = H_prevᵀ dA_g.
    """
    final, cache = _forward(ops, cell, params, inputs, state)
    loss, grads, dHs = model.output_backward(ops, params, cache[0], labels)
    V = int(params["W_hq"].shape[1])
    one_hot = ops.one_hot(inputs, V)  # (T, B, V)
    embedded = _inputs(ops, params, inputs)
    X = one_hot if embedded is None else embedded
    if cell == LSTM:
        gate_grads, dstate, dAs = _lstm_backward(ops, params, X, state, cache, dHs)
    else:
        reset_after = cell == GRU_RESET_AFTER
        gate_grads, dstate, dAs = _gru_backward(ops, params, X, state, cache, dHs, reset_after)
    grads.update(gate_grads)
    if embedded is not None:  # X_t = E[x_t] feeds every gate: dX = Σ_g dA_g W_xgᵀ
        terms = [
            ops.matmul(_flat(ops, dA), ops.transpose(params[f"W_x{g}"])) for g, dA in dAs.items()
        ]
        dX = terms[0]
        for term in terms[1:]:
            dX = dX + term
        grads[model.EMBEDDING] = ops.matmul(ops.transpose(_flat(ops, one_hot)), dX)  # into E's rows
    names = (*param_names(cell), *([model.EMBEDDING] if embedded is not None else []))
    return loss, {name: grads[name] for name in names}, final, dstate


def _gru_backward(
    ops: Ops,
    params: Mapping[str, Tensor],
    X: Tensor,
    state: Tensor,
    cache: tuple[Tensor, ...],
    dHs: Tensor,
    reset_after: bool,
) -> tuple[Params, Tensor, dict[str, Tensor]]:
    """(grads of the GRU's parameters, dstate, each gate's pre-activation gradient dA_g)."""
    Hs, Zs, Rs, H_tildes, Gs = cache
    H_prevs = _previous(ops, state, Hs)
    W_hz_T, W_hr_T, W_hh_T = (ops.transpose(params[f"W_h{g}"]) for g in "zrh")

    def back(dH_next: Tensor, x: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        dH_out, H_prev, Z, R, H_tilde, G = x
        dH = dH_out + dH_next
        # H' = Z ⊙ H + (1 − Z) ⊙ H̃ with σ' = σ(1 − σ), tanh' = 1 − tanh²
        dA_z = dH * (H_prev - H_tilde) * Z * (1 - Z)
        dA_h = dH * (1 - Z) * (1 - H_tilde * H_tilde)
        if reset_after:  # A_h = X W_xh + b_xh + R ⊙ G, G = H W_hh + b_hh
            dG = dA_h * R
            dA_r = dA_h * G * R * (1 - R)
            dH_candidate = ops.matmul(dG, W_hh_T)
        else:  # A_h = X W_xh + G W_hh + b_h, G = R ⊙ H
            dG = ops.matmul(dA_h, W_hh_T)
            dA_r = dG * H_prev * R * (1 - R)
            dH_candidate = dG * R
        # H reaches H' directly (Z ⊙ H), through both gates and through the candidate
        dH_prev = dH * Z + ops.matmul(dA_z, W_hz_T) + ops.matmul(dA_r, W_hr_T) + dH_candidate
        return dH_prev, (dA_z, dA_r, dA_h, dG)

    xs = (dHs, H_prevs, Zs, Rs, H_tildes, Gs)
    dstate, (dA_z, dA_r, dA_h, dG) = ops.scan(back, ops.zeros(_shape(state)), xs, reverse=True)
    grads = {
        "W_xz": _weight_grad(ops, X, dA_z),
        "W_hz": _weight_grad(ops, H_prevs, dA_z),
        "b_z": _bias_grad(ops, dA_z),
        "W_xr": _weight_grad(ops, X, dA_r),
        "W_hr": _weight_grad(ops, H_prevs, dA_r),
        "b_r": _bias_grad(ops, dA_r),
        "W_xh": _weight_grad(ops, X, dA_h),
    }
    if reset_after:  # G = H W_hh + b_hh: W_hh and b_hh see dG; b_xh sees dA_h
        grads.update(
            W_hh=_weight_grad(ops, H_prevs, dG),
            b_xh=_bias_grad(ops, dA_h),
            b_hh=_bias_grad(ops, dG),
        )
    else:  # the candidate's recurrent input is G = R ⊙ H
        grads.update(W_hh=_weight_grad(ops, Gs, dA_h), b_h=_bias_grad(ops, dA_h))
    return grads, dstate, {"z": dA_z, "r": dA_r, "h": dA_h}


def _lstm_backward(
    ops: Ops,
    params: Mapping[str, Tensor],
    X: Tensor,
    state: tuple[Tensor, Tensor],
    cache: tuple[Tensor, ...],
    dHs: Tensor,
) -> tuple[Params, tuple[Tensor, Tensor], dict[str, Tensor]]:
    """(grads of the LSTM's parameters, (dH, dC) of the state, each gate's dA_g)."""
    Hs, Cs, Is, Fs, Os, C_tildes, tanh_Cs = cache
    H_prevs = _previous(ops, state[0], Hs)
    C_prevs = _previous(ops, state[1], Cs)
    W_hi_T, W_hf_T, W_ho_T, W_hc_T = (ops.transpose(params[f"W_h{g}"]) for g in "ifoc")

    def back(
        carry: tuple[Tensor, Tensor], x: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...]]:
        dH_next, dC_next = carry
        dH_out, C_prev, I, F, O, C_tilde, tanh_C = x
        dH = dH_out + dH_next
        # H' = O ⊙ tanh(C'): C' gets the carried dC plus what flows through tanh
        dA_o = dH * tanh_C * O * (1 - O)
        dC = dC_next + dH * O * (1 - tanh_C * tanh_C)
        # C' = F ⊙ C + I ⊙ C̃ with σ' = σ(1 − σ), tanh' = 1 − tanh²
        dA_f = dC * C_prev * F * (1 - F)
        dA_i = dC * C_tilde * I * (1 - I)
        dA_c = dC * I * (1 - C_tilde * C_tilde)
        dH_prev = (
            ops.matmul(dA_i, W_hi_T)
            + ops.matmul(dA_f, W_hf_T)
            + ops.matmul(dA_o, W_ho_T)
            + ops.matmul(dA_c, W_hc_T)
        )
        return (dH_prev, dC * F), (dA_i, dA_f, dA_o, dA_c)

    xs = (dHs, C_prevs, Is, Fs, Os, C_tildes, tanh_Cs)
    zeros = (ops.zeros(_shape(state[0])), ops.zeros(_shape(state[1])))
    dstate, dAs = ops.scan(back, zeros, xs, reverse=True)
    grads: Params = {}
    for g, dA in zip("ifoc", dAs, strict=True):
        grads[f"W_x{g}"] = _weight_grad(ops, X, dA)
        grads[f"W_h{g}"] = _weight_grad(ops, H_prevs, dA)
        grads[f"b_{g}"] = _bias_grad(ops, dA)
    return grads, (dstate[0], dstate[1]), dict(zip("ifoc", dAs, strict=True))


# --- any model, told apart by its parameters --------------------------------------------------
# The callers that hold parameters (the backends' gradients and forward, the trainer, sampling,
# evaluation) go through these: core.model's RNN or a gated cell, no cell argument needed.


def cell_of(params: Mapping[str, Any]) -> str:
    """Which model a parameter (or gradient) dict is: W_xz… a GRU (with b_xh the reset-after
    form), W_xi… the LSTM, anything else the chapter's RNN (``RNN``)."""
    if "W_xz" in params:
        return GRU_RESET_AFTER if "b_xh" in params else GRU_RESET_BEFORE
    if "W_xi" in params:
        return LSTM
    return RNN


def _gated(params: Mapping[str, Tensor], activation: str, cell: str | None = None) -> str | None:
    """The gated cell the model is, or None for the RNN; a gated cell's φ is fixed. ``cell``:
    the model as the run was built (``core.run``), told once; None reads it from the
    parameters' names (a caller that holds parameters alone)."""
    cell = cell or cell_of(params)
    if cell == RNN:
        return None
    if activation != "tanh":
        raise UserError(f"--activation {activation} is the RNN's; the {cell} cell uses σ and tanh")
    return cell


def initial_state(
    ops: Ops, params: Mapping[str, Tensor], batch_size: int, cell: str | None = None
) -> State:
    """Zeros for the model: H (batch_size, num_hiddens), (H, C) for the LSTM. ``cell`` as in
    ``any_forward_loss``."""
    num_hiddens = int(params["W_hq"].shape[0])
    cell = cell or cell_of(params)
    if cell == RNN:
        return ops.zeros((batch_size, num_hiddens))
    return begin_state(ops, cell, batch_size, num_hiddens)


def any_forward(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    state: State,
    activation: str = "tanh",
    cell: str | None = None,
) -> tuple[Tensor, State]:
    """(Hs, final state) of any model: core.model's ``rnn_forward`` or ``cell_forward``."""
    cell = _gated(params, activation, cell)
    if cell is None:
        return model.rnn_forward(ops, params, inputs, state, activation)
    return cell_forward(ops, cell, params, inputs, state)


def any_forward_loss(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: State,
    activation: str = "tanh",
    cell: str | None = None,
) -> tuple[Tensor, State]:
    """(mean cross-entropy, final state) of any model: core.model's or a cell's
    ``forward_loss``; what the frameworks' autodiff differentiates. ``cell``: the model, as
    the run was built; None reads it from the parameters' names."""
    cell = _gated(params, activation, cell)
    if cell is None:
        return model.forward_loss(ops, params, inputs, labels, state, activation)
    return forward_loss(ops, cell, params, inputs, labels, state)


def any_bptt(
    ops: Ops,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    state: State,
    activation: str = "tanh",
    cell: str | None = None,
) -> tuple[Tensor, Params, State, State]:
    """(loss, grads, final state, dstate) of any model by its hand-written BPTT."""
    cell = _gated(params, activation, cell)
    if cell is None:
        return model.bptt(ops, params, inputs, labels, state, activation)
    return bptt(ops, cell, params, inputs, labels, state)


def bptt_value_and_grad(
    ops: Ops, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """Any model's hand-written BPTT as ``(params, inputs, labels, state) -> (loss, grads,
    final state)``, the ``--grad bptt`` engine of every backend; ``cell`` as in
    ``any_forward_loss``."""

    def value_and_grad(
        params: Params, inputs: Tensor, labels: Tensor, state: State
    ) -> tuple[Tensor, Params, State]:
        loss, grads, final, _ = any_bptt(ops, params, inputs, labels, state, activation, cell)
        return loss, grads, final

    return value_and_grad

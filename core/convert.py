"""Exact weight conversion between core's parameters and the frameworks' own layers: the one
place that knows each framework's names, gate order, orientation and bias pairs. Pure NumPy.

A torch model is d2l's concise model, ``rnn`` + ``linear``, as a state dict::

    rnn.weight_ih_l0 (G·H, V)   rnn.weight_hh_l0 (G·H, H)   weights (out, in): ours transposed
    rnn.bias_ih_l0 (G·H,)       rnn.bias_hh_l0 (G·H,)       an input and a recurrent bias
    linear.weight (V, H)        linear.bias (V,)

with the gates stacked in torch's order: ``nn.RNN`` one block, ``nn.GRU`` (r, z, n), ``nn.LSTM``
(i, f, g, o). A Keras model is ``layer.get_weights()`` of the recurrent layer and the Dense::

    rnn.kernel (V, G·H)   rnn.recurrent_kernel (H, G·H)   weights (in, out) as ours
    rnn.bias (G·H,), or (2, G·H) for GRU(reset_after=True): an input row and a recurrent row
    dense.kernel (H, V)   dense.bias (V,)

with Keras' order: ``SimpleRNN`` one block, ``GRU`` (z, r, h), ``LSTM`` (i, f, c, o).

Every conversion goes through ``Layer``: per gate, the input and recurrent weights and the pair
of biases. torch keeps both biases of every gate; Keras keeps both only in GRU(reset_after=True);
core keeps both only for the reset-after candidate (``b_xh``, ``b_hh``), because everywhere else
the two only ever appear summed. Reading a pair into one bias sums it; writing one bias into a
pair puts it in the input bias and zero in the recurrent one. A zero recurrent bias is never
added (``x + 0`` would turn a ``-0.0`` into ``+0.0``), so core → torch → core, core → Keras →
core and torch ↔ Keras GRU(reset_after=True) are bit-identical round trips; torch → core (or
Keras LSTM) → torch sums each nonzero pair once, which is the same model up to one rounding.

The reset-before GRU (d2l 9.1, Keras reset_after=False) and the reset-after GRU (torch, cuDNN,
Keras' default) are different models: no weights make one compute the other, so a conversion
between them is refused (``ConversionError``), as is one into a layer that cannot hold the model
(a learned embedding; torch has no reset-before GRU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN, cell_of
from .errors import UserError

Arrays = dict[str, np.ndarray]

FRAMEWORKS = ("torch", "keras")

OUR_GATES: dict[str, tuple[str, ...]] = {
    RNN: ("h",),
    GRU_RESET_BEFORE: ("z", "r", "h"),
    GRU_RESET_AFTER: ("z", "r", "h"),
    LSTM: ("i", "f", "c", "o"),
}
"""Each cell's gates under core's names (the letter in ``W_x·``)."""

TORCH_GATES: dict[str, tuple[str, ...]] = {
    RNN: ("h",),
    GRU_RESET_AFTER: ("r", "z", "h"),  # torch's (r, z, n)
    LSTM: ("i", "f", "c", "o"),  # torch's (i, f, g, o)
}
"""The order torch stacks the gates in, under core's names; torch has no reset-before GRU."""

KERAS_GATES: dict[str, tuple[str, ...]] = {
    RNN: ("h",),
    GRU_RESET_BEFORE: ("z", "r", "h"),
    GRU_RESET_AFTER: ("z", "r", "h"),
    LSTM: ("i", "f", "c", "o"),
}
"""The order Keras stacks the gates in, under core's names."""

TORCH_NAMES = (
    "rnn.weight_ih_l0",
    "rnn.weight_hh_l0",
    "rnn.bias_ih_l0",
    "rnn.bias_hh_l0",
    "linear.weight",
    "linear.bias",
)
KERAS_NAMES = ("rnn.kernel", "rnn.recurrent_kernel", "rnn.bias", "dense.kernel", "dense.bias")

TORCH_LAYER = {RNN: "nn.RNN", GRU_RESET_AFTER: "nn.GRU", LSTM: "nn.LSTM"}
KERAS_LAYER = {
    RNN: "SimpleRNN",
    GRU_RESET_BEFORE: "GRU(reset_after=False)",
    GRU_RESET_AFTER: "GRU(reset_after=True)",
    LSTM: "LSTM",
}


NO_TORCH_RESET_BEFORE = (
    "torch.nn.GRU computes the reset-after GRU (r applied after the recurrent matmul); no "
    "weights make it the reset-before GRU of d2l 9.1. Convert to keras (GRU(reset_after=False)), "
    "or train with --gru reset-after"
)


class ConversionError(UserError):
    """A conversion that has no exact answer, or a file that is not the layer it claims."""


@dataclass
class Layer:
    """A recurrent layer and its output layer in core's orientation, gate by gate:
    ``W_x[g]`` (V, H), ``W_h[g]`` (H, H), the biases ``b_x[g]`` (input) and ``b_h[g]``
    (recurrent), ``W_hq`` (H, V), ``b_q`` (V,)."""

    cell: str
    W_x: dict[str, np.ndarray]
    W_h: dict[str, np.ndarray]
    b_x: dict[str, np.ndarray]
    b_h: dict[str, np.ndarray]
    W_hq: np.ndarray
    b_q: np.ndarray

    @property
    def num_hiddens(self) -> int:
        return int(self.W_hq.shape[0])


def _sum(b_x: np.ndarray, b_h: np.ndarray) -> np.ndarray:
    """One bias from a pair: the input bias where the recurrent one is zero (bit for bit,
    ``-0.0`` included), their sum elsewhere."""
    return np.where(b_h == 0, b_x, b_x + b_h).astype(b_x.dtype)


def _split(gates: tuple[str, ...], W: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    parts = np.split(W, len(gates), axis=axis)
    return {g: np.ascontiguousarray(p) for g, p in zip(gates, parts, strict=True)}


def _stack(gates: tuple[str, ...], parts: Mapping[str, np.ndarray], axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([parts[g] for g in gates], axis=axis))


# --- core's parameters ---------------------------------------------------------------------


def from_params(params: Mapping[str, np.ndarray]) -> Layer:
    """``Layer`` of core's parameters (a model of any cell, from ``cell_of``)."""
    if "E" in params:
        raise ConversionError(
            "a learned embedding (E) has no place in the frameworks' recurrent layers, which "
            "read one-hot inputs; only one-hot models convert"
        )
    cell = cell_of(params)
    gates = OUR_GATES[cell]
    zero = np.zeros_like(params["W_hq"][:, 0])
    if cell == RNN:
        b_x = {"h": params["b_h"]}
    elif cell == GRU_RESET_AFTER:
        b_x = {"z": params["b_z"], "r": params["b_r"], "h": params["b_xh"]}
    else:
        b_x = {g: params[f"b_{g}"] for g in gates}
    b_h = {g: zero for g in gates}
    if cell == GRU_RESET_AFTER:
        b_h["h"] = params["b_hh"]
    return Layer(
        cell,
        {g: params[f"W_x{g}"] for g in gates},
        {g: params[f"W_h{g}"] for g in gates},
        b_x,
        b_h,
        params["W_hq"],
        params["b_q"],
    )


def to_params(layer: Layer) -> Arrays:
    """core's parameters of ``layer``, in the order core draws them (cells.PARAMS)."""
    from . import cells, model

    cell = layer.cell
    out: Arrays = {}
    for g in OUR_GATES[cell]:
        out[f"W_x{g}"] = layer.W_x[g]
        out[f"W_h{g}"] = layer.W_h[g]
        if cell == GRU_RESET_AFTER and g == "h":
            out["b_xh"], out["b_hh"] = layer.b_x[g], layer.b_h[g]
        else:
            out[f"b_{g}"] = _sum(layer.b_x[g], layer.b_h[g])
    out["W_hq"], out["b_q"] = layer.W_hq, layer.b_q
    names = model.param_names(out) if cell == RNN else cells.param_names(cell)
    return {name: np.ascontiguousarray(out[name]) for name in names}


def grads_to_params(layer: Layer) -> Arrays:
    """core's gradients from a ``Layer`` of gradients (a framework's ``.grad`` read through
    ``from_torch`` or ``from_keras``). A bias core keeps once where the framework keeps a pair
    enters the model as their sum, so its gradient is either one's, the input bias's; the
    reset-after candidate's pair stays apart."""
    cell = layer.cell
    zeros = {g: np.zeros_like(b) for g, b in layer.b_h.items()}
    if cell == GRU_RESET_AFTER:
        zeros["h"] = layer.b_h["h"]
    return to_params(Layer(cell, layer.W_x, layer.W_h, layer.b_x, zeros, layer.W_hq, layer.b_q))


# --- torch ---------------------------------------------------------------------------------


def to_torch(layer: Layer) -> Arrays:
    """The state dict of d2l's concise model (``TORCH_NAMES``) holding ``layer``."""
    if layer.cell not in TORCH_GATES:
        raise ConversionError(NO_TORCH_RESET_BEFORE)
    gates = TORCH_GATES[layer.cell]
    return {
        "rnn.weight_ih_l0": _stack(gates, layer.W_x, axis=1).T.copy(),
        "rnn.weight_hh_l0": _stack(gates, layer.W_h, axis=1).T.copy(),
        "rnn.bias_ih_l0": _stack(gates, layer.b_x, axis=0),
        "rnn.bias_hh_l0": _stack(gates, layer.b_h, axis=0),
        "linear.weight": np.ascontiguousarray(layer.W_hq.T),
        "linear.bias": np.ascontiguousarray(layer.b_q),
    }


def _require(names: tuple[str, ...], arrays: Mapping[str, np.ndarray], what: str) -> None:
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing:
        raise ConversionError(f"{what} lacks {', '.join(missing)}")
    if extra:
        raise ConversionError(
            f"{what} has tensors this conversion does not know: {', '.join(extra[:4])}"
            + (" ..." if len(extra) > 4 else "")
            + " (one layer, one direction, and d2l's rnn + linear names are supported)"
        )


def torch_cell(state: Mapping[str, np.ndarray], what: str = "the torch state dict") -> str:
    """The cell a torch state dict holds, from its shapes: 1, 3 or 4 stacked gates."""
    _require(TORCH_NAMES, state, what)
    rows, H = (int(n) for n in np.shape(state["rnn.weight_hh_l0"]))
    cells = {1: RNN, 3: GRU_RESET_AFTER, 4: LSTM}
    if H == 0 or rows % H or rows // H not in cells:
        raise ConversionError(
            f"{what}: rnn.weight_hh_l0 has shape {[rows, H]}, not (G·H, H) for G = 1, 3 or 4 "
            "(nn.RNN, nn.GRU, nn.LSTM)"
        )
    return cells[rows // H]


def from_torch(state: Mapping[str, np.ndarray], what: str = "the torch state dict") -> Layer:
    """``Layer`` of a torch state dict (``TORCH_NAMES``), checked for consistent shapes."""
    cell = torch_cell(state, what)
    gates = TORCH_GATES[cell]
    s = {k: np.asarray(v) for k, v in state.items()}
    H = int(s["rnn.weight_hh_l0"].shape[1])
    V = int(s["linear.weight"].shape[0])
    G = len(gates)
    _shapes(
        what,
        {
            "rnn.weight_ih_l0": (G * H, V),
            "rnn.weight_hh_l0": (G * H, H),
            "rnn.bias_ih_l0": (G * H,),
            "rnn.bias_hh_l0": (G * H,),
            "linear.weight": (V, H),
            "linear.bias": (V,),
        },
        s,
    )
    return Layer(
        cell,
        _split(gates, s["rnn.weight_ih_l0"].T, axis=1),
        _split(gates, s["rnn.weight_hh_l0"].T, axis=1),
        _split(gates, s["rnn.bias_ih_l0"], axis=0),
        _split(gates, s["rnn.bias_hh_l0"], axis=0),
        np.ascontiguousarray(s["linear.weight"].T),
        np.ascontiguousarray(s["linear.bias"]),
    )


# --- Keras ---------------------------------------------------------------------------------


def to_keras(layer: Layer) -> Arrays:
    """``KERAS_NAMES`` for ``layer``: the arrays ``get_weights()`` gives of the Keras layer
    ``KERAS_LAYER[layer.cell]`` and its Dense."""
    gates = KERAS_GATES[layer.cell]
    if layer.cell == GRU_RESET_AFTER:
        bias = np.stack([_stack(gates, layer.b_x, axis=0), _stack(gates, layer.b_h, axis=0)])
    else:
        bias = _stack(gates, {g: _sum(layer.b_x[g], layer.b_h[g]) for g in gates}, axis=0)
    return {
        "rnn.kernel": _stack(gates, layer.W_x, axis=1),
        "rnn.recurrent_kernel": _stack(gates, layer.W_h, axis=1),
        "rnn.bias": bias,
        "dense.kernel": np.ascontiguousarray(layer.W_hq),
        "dense.bias": np.ascontiguousarray(layer.b_q),
    }


def keras_cell(weights: Mapping[str, np.ndarray], what: str = "the Keras weights") -> str:
    """The cell Keras weights hold, from their shapes: 1, 3 or 4 stacked gates, and for a GRU
    one bias row (reset_after=False) or two (reset_after=True)."""
    _require(KERAS_NAMES, weights, what)
    H, cols = (int(n) for n in np.shape(weights["rnn.recurrent_kernel"]))
    cells = {1: RNN, 3: GRU_RESET_BEFORE, 4: LSTM}
    if H == 0 or cols % H or cols // H not in cells:
        raise ConversionError(
            f"{what}: rnn.recurrent_kernel has shape {[H, cols]}, not (H, G·H) for G = 1, 3 or "
            "4 (SimpleRNN, GRU, LSTM)"
        )
    cell = cells[cols // H]
    if cell == GRU_RESET_BEFORE and np.ndim(weights["rnn.bias"]) == 2:
        cell = GRU_RESET_AFTER
    return cell


def from_keras(weights: Mapping[str, np.ndarray], what: str = "the Keras weights") -> Layer:
    """``Layer`` of Keras weights (``KERAS_NAMES``), checked for consistent shapes."""
    cell = keras_cell(weights, what)
    gates = KERAS_GATES[cell]
    w = {k: np.asarray(v) for k, v in weights.items()}
    H = int(w["rnn.recurrent_kernel"].shape[0])
    V = int(w["dense.kernel"].shape[1])
    G = len(gates)
    _shapes(
        what,
        {
            "rnn.kernel": (V, G * H),
            "rnn.recurrent_kernel": (H, G * H),
            "rnn.bias": (2, G * H) if cell == GRU_RESET_AFTER else (G * H,),
            "dense.kernel": (H, V),
            "dense.bias": (V,),
        },
        w,
    )
    if cell == GRU_RESET_AFTER:
        b_x = _split(gates, w["rnn.bias"][0], axis=0)
        b_h = _split(gates, w["rnn.bias"][1], axis=0)
    else:
        b_x = _split(gates, w["rnn.bias"], axis=0)
        b_h = {g: np.zeros_like(b) for g, b in b_x.items()}
    return Layer(
        cell,
        _split(gates, w["rnn.kernel"], axis=1),
        _split(gates, w["rnn.recurrent_kernel"], axis=1),
        b_x,
        b_h,
        np.ascontiguousarray(w["dense.kernel"]),
        np.ascontiguousarray(w["dense.bias"]),
    )


def _shapes(what: str, expected: Mapping[str, tuple[int, ...]], arrays: Arrays) -> None:
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ConversionError(
                f"{what}: {name} has shape {list(arrays[name].shape)}, expected {list(shape)}"
            )
    dtypes = {str(a.dtype) for a in arrays.values()}
    if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
        raise ConversionError(
            f"{what}: tensors are {', '.join(sorted(dtypes))}; float32 or float64 throughout "
            "converts"
        )


# --- between formats -------------------------------------------------------------------------


def same_model(source: str, target: str) -> None:
    """Refuse a conversion between the two GRU formulations, which are different models."""
    forms = {GRU_RESET_BEFORE, GRU_RESET_AFTER}
    if source != target and {source, target} <= forms:
        raise ConversionError(
            f"the {source} GRU and the {target} GRU are different models (the reset gate "
            "multiplies the state before the recurrent matmul, or its product after it): no "
            f"weights make one compute the other. Keep {source} (torch and Keras "
            "GRU(reset_after=True) hold reset-after; Keras GRU(reset_after=False) reset-before), "
            f"or train a {target} model with --gru {target.split('/')[1]}"
        )

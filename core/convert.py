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

An MXNet model is Gluon 1.9's ``rnn.RNN``/``GRU``/``LSTM`` (one layer, ``TNC``) and its
``nn.Dense``, under their attribute paths in d2l's MXNet ``RNNModel`` (``rnn``, ``dense``)::

    rnn.l0_i2h_weight (G·H, V)   rnn.l0_h2h_weight (G·H, H)   torch's weight_ih_l0, weight_hh_l0
    rnn.l0_i2h_bias (G·H,)       rnn.l0_h2h_bias (G·H,)       torch's bias_ih_l0, bias_hh_l0
    dense.weight (V, H)          dense.bias (V,)              torch's linear.weight, linear.bias

torch's arrays under Gluon's names: the same shapes and gate order (``GRU`` r, z, n and
reset-after; ``LSTM`` i, f, g, o). ``save_parameters`` names the recurrent layer's
``rnn._unfused.0.i2h_weight`` ... (``MXNET_SAVED``), which are read too. Gluon's ``rnn.RNN``
computes relu unless built with ``activation='tanh'``, so an RNN's file must say which.

The book's current edition (d2l 1.0, PyTorch) keeps two more state dicts. Its concise models
(``RNNLM`` with ``d2l.RNN``/``d2l.GRU``/``d2l.LSTM``) hold the torch layer one module deeper,
so they are the torch format with ``rnn.`` renamed ``rnn.rnn.`` (``d2l-concise``, read and
written by the torch functions with ``module="rnn.rnn"``). Its scratch models
(``RNNLMScratch`` around ``RNNScratch``/``GRUScratch``/``LSTMScratch``) hold core's own
parameters, the output layer's ``W_hq``, ``b_q`` at the top and the cell's under ``rnn.``
(``rnn.W_xh`` ...) (``d2l-scratch``); ``GRUScratch`` is the reset-before GRU.

Every conversion goes through ``Layer``: per gate, the input and recurrent weights and the pair
of biases. torch keeps both biases of every gate; Keras keeps both only in GRU(reset_after=True);
core keeps both only for the reset-after candidate (``b_xh``, ``b_hh``), because everywhere else
the two only ever appear summed. Reading a pair into one bias sums it; writing one bias into a
pair puts it in the input bias and zero in the recurrent one. A zero recurrent bias is never
added (``x + 0`` would turn a ``-0.0`` into ``+0.0``), so core → torch → core, core → Keras →
core and torch ↔ Keras GRU(reset_after=True) are bit-identical round trips; torch → core (or
Keras LSTM) → torch sums each nonzero pair once, which is the same model up to one rounding.

The reset-before GRU (d2l 9.1, Keras reset_after=False) and the reset-after GRU (torch, cuDNN,
Keras' default) are different models: beyond degenerate cases (a reset gate stuck at 1, a
diagonal candidate matrix with b_hn = 0) no weights that keep the gates make one compute the
other (docs/frameworks.md point 20 shows it by a least-squares search), so a conversion between
them is refused (``ConversionError``), as is one into a layer that cannot hold the model
(a learned embedding; torch has no reset-before GRU).

Files (``rosetta-rnn convert``): ``read(path, fmt)`` gives the ``Weights`` of a checkpoint, a
torch state dict or Keras weights saved as safetensors (no metadata of ours needed),
``write(path, fmt, weights)`` writes one atomically, and ``convert_file`` is the two with the
command's checks. A native file we write records in its metadata what the tensors cannot say
(cell, activations, vocabulary, the checkpoint's metadata), so it converts back to the same
checkpoint, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, model
from .cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN, cell_of
from .errors import ConversionError, UserError

Arrays = dict[str, np.ndarray]

FRAMEWORKS = ("torch", "keras", "mxnet")
BOOK = ("d2l-scratch", "d2l-concise")
"""The state dicts of the book's current edition (d2l 1.0, PyTorch): its scratch models, and its
concise ones (torch's layer inside d2l's wrapper)."""
NATIVE = (*FRAMEWORKS, *BOOK)
"""Every format but ours: what a converted-weights file (``NATIVE_FORMAT``) records."""

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


def torch_names(module: str = "rnn") -> tuple[str, ...]:
    """A torch state dict's names, the recurrent layer being the submodule ``module``: ``rnn``
    in d2l 0.17's concise model, ``rnn.rnn`` in d2l 1.0's (``RNNLM`` holds ``d2l.GRU`` ... as
    ``rnn``, which holds ``nn.GRU`` as ``rnn``)."""
    layer = tuple(f"{module}.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    return (*layer, "linear.weight", "linear.bias")


TORCH_MODULE = {"torch": "rnn", "d2l-concise": "rnn.rnn"}
"""Where each torch format keeps the recurrent layer."""
TORCH_NAMES = torch_names(TORCH_MODULE["torch"])
D2L_CONCISE_NAMES = torch_names(TORCH_MODULE["d2l-concise"])
KERAS_NAMES = ("rnn.kernel", "rnn.recurrent_kernel", "rnn.bias", "dense.kernel", "dense.bias")
MXNET_NAMES = (
    "rnn.l0_i2h_weight",
    "rnn.l0_h2h_weight",
    "rnn.l0_i2h_bias",
    "rnn.l0_h2h_bias",
    "dense.weight",
    "dense.bias",
)
"""Gluon's names, in ``TORCH_NAMES``' order: the attribute paths of the layers' parameters in
d2l's MXNet ``RNNModel`` (``net.rnn.l0_i2h_weight`` ... ``net.dense.bias``)."""
MXNET_SAVED = {
    f"rnn._unfused.0.{part}": f"rnn.l0_{part}"
    for part in ("i2h_weight", "h2h_weight", "i2h_bias", "h2h_bias")
}
"""The names ``save_parameters`` gives the recurrent layer's parameters (Gluon 1.x keeps its
cells' old names there) -> ``MXNET_NAMES``: a ``.params`` file's arrays read as they are."""

TORCH_LAYER = {RNN: "nn.RNN", GRU_RESET_AFTER: "nn.GRU", LSTM: "nn.LSTM"}
D2L_CONCISE_LAYER = {RNN: "d2l.RNN", GRU_RESET_AFTER: "d2l.GRU", LSTM: "d2l.LSTM"}
D2L_SCRATCH_LAYER = {RNN: "RNNScratch", GRU_RESET_BEFORE: "GRUScratch", LSTM: "LSTMScratch"}
D2L_SCRATCH_OUTPUT = ("W_hq", "b_q")
"""The scratch model's own parameters (``RNNLMScratch``): the rest are the cell's, under
``rnn.``."""
MXNET_LAYER = {RNN: "gluon.rnn.RNN", GRU_RESET_AFTER: "gluon.rnn.GRU", LSTM: "gluon.rnn.LSTM"}
KERAS_LAYER = {
    RNN: "SimpleRNN",
    GRU_RESET_BEFORE: "GRU(reset_after=False)",
    GRU_RESET_AFTER: "GRU(reset_after=True)",
    LSTM: "LSTM",
}


NO_TORCH_RESET_BEFORE = (
    "torch.nn.GRU (so d2l 1.0's d2l.GRU) computes the reset-after GRU (r applied after the "
    "recurrent matmul); in general no weights make it the reset-before GRU of d2l 9.1. "
    "Convert to keras (GRU(reset_after=False)) or d2l-scratch (d2l 1.0's GRUScratch), or "
    "train with --gru reset-after"
)
NO_MXNET_RESET_BEFORE = (
    "MXNet Gluon's rnn.GRU computes the reset-after GRU (r applied after the recurrent matmul, "
    "as torch's nn.GRU); in general no weights make it the reset-before GRU of d2l 9.1. "
    "Convert to keras (GRU(reset_after=False)) or d2l-scratch (d2l 1.0's GRUScratch), or "
    "train with --gru reset-after"
)
NO_MXNET_ACTIVATION = (
    "an MXNet Gluon rnn.RNN computes relu unless built with activation='tanh' (torch's nn.RNN: "
    "tanh), and this file does not record which: pass --activation relu or --activation tanh, "
    "as the layer was built"
)
NO_SCRATCH_RESET_AFTER = (
    "d2l 1.0's GRUScratch computes the reset-before GRU (R * H before the recurrent matmul), "
    "the book's only scratch GRU; in general no weights make it the reset-after GRU. Convert to "
    "d2l-concise (d2l.GRU is nn.GRU, reset-after), torch or keras (GRU(reset_after=True)), or "
    "train with --gru reset-before"
)


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
    E: np.ndarray | None = None  # a learned embedding (V, D): only ONNX holds one

    @property
    def num_hiddens(self) -> int:
        return int(self.W_hq.shape[0])


def _one_hot_only(layer: Layer, fmt: str) -> None:
    """Refuse a learned embedding where the layer reads one-hot inputs (all but ONNX)."""
    if layer.E is not None:
        raise ConversionError(
            f"a learned embedding (E) has no place in {fmt}'s recurrent layers, which read "
            "one-hot inputs; only one-hot models convert to it (ONNX holds E as a Gather: "
            "--to onnx)"
        )


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
    """``Layer`` of core's parameters (a model of any cell, from ``cell_of``; a learned
    embedding's E is kept, and refused by every layout but ONNX's)."""
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
        params.get(model.EMBEDDING),
    )


def to_params(layer: Layer) -> Arrays:
    """core's parameters of ``layer``, in the order core draws them (cells.PARAMS)."""
    from . import cells

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
    if layer.E is not None:
        out[model.EMBEDDING] = layer.E
        names = model.param_names(out) if cell == RNN else (*names, model.EMBEDDING)
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
    return to_params(
        Layer(cell, layer.W_x, layer.W_h, layer.b_x, zeros, layer.W_hq, layer.b_q, layer.E)
    )


# --- torch ---------------------------------------------------------------------------------


def to_torch(layer: Layer, module: str = "rnn") -> Arrays:
    """The state dict of d2l's concise model (``TORCH_NAMES``; ``module="rnn.rnn"``: d2l 1.0's,
    ``D2L_CONCISE_NAMES``) holding ``layer``."""
    if layer.cell not in TORCH_GATES:
        raise ConversionError(NO_TORCH_RESET_BEFORE)
    _one_hot_only(layer, "torch")
    gates = TORCH_GATES[layer.cell]
    arrays = (
        _stack(gates, layer.W_x, axis=1).T.copy(),
        _stack(gates, layer.W_h, axis=1).T.copy(),
        _stack(gates, layer.b_x, axis=0),
        _stack(gates, layer.b_h, axis=0),
        np.ascontiguousarray(layer.W_hq.T),
        np.ascontiguousarray(layer.b_q),
    )
    return dict(zip(torch_names(module), arrays, strict=True))


def _require(
    names: tuple[str, ...],
    arrays: Mapping[str, np.ndarray],
    what: str,
    supported: str = "d2l's rnn + linear names",
) -> None:
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing:
        raise ConversionError(f"{what} lacks {', '.join(missing)}")
    if extra:
        raise ConversionError(
            f"{what} has tensors this conversion does not know: {', '.join(extra[:4])}"
            + (" ..." if len(extra) > 4 else "")
            + f" (one layer, one direction, and {supported} are supported)"
        )


def _matrix_shape(what: str, name: str, a: Any) -> tuple[int, int]:
    shape = tuple(int(n) for n in np.shape(a))
    if len(shape) != 2:
        raise ConversionError(f"{what}: {name} has shape {list(shape)}, not a matrix")
    return shape[0], shape[1]


def torch_cell(
    state: Mapping[str, np.ndarray], what: str = "the torch state dict", module: str = "rnn"
) -> str:
    """The cell a torch state dict holds (the layer under ``module``, see ``torch_names``), from
    its shapes: 1, 3 or 4 stacked gates."""
    supported = "d2l's rnn + linear names" if module == "rnn" else "d2l 1.0's RNNLM names"
    return _stacked_cell(state, what, torch_names(module), supported, TORCH_LAYER)


def _stacked_cell(
    state: Mapping[str, np.ndarray],
    what: str,
    names: tuple[str, ...],
    supported: str,
    layers: Mapping[str, str],
) -> str:
    """The cell of a layer stored as torch stores it (``names`` in ``TORCH_NAMES``' order),
    from its shapes: 1, 3 or 4 stacked gates (``layers`` names the three)."""
    _require(names, state, what, supported)
    rows, H = _matrix_shape(what, names[1], state[names[1]])
    cells = {1: RNN, 3: GRU_RESET_AFTER, 4: LSTM}
    if H == 0 or rows % H or rows // H not in cells:
        raise ConversionError(
            f"{what}: {names[1]} has shape {[rows, H]}, not (G·H, H) for G = 1, 3 or 4 "
            f"({', '.join(layers[c] for c in (RNN, GRU_RESET_AFTER, LSTM))})"
        )
    return cells[rows // H]


def from_torch(
    state: Mapping[str, np.ndarray], what: str = "the torch state dict", module: str = "rnn"
) -> Layer:
    """``Layer`` of a torch state dict (``TORCH_NAMES``; ``module="rnn.rnn"``: d2l 1.0's,
    ``D2L_CONCISE_NAMES``), checked for consistent shapes."""
    return _from_stacked(state, what, torch_names(module), torch_cell(state, what, module))


def _from_stacked(
    state: Mapping[str, np.ndarray], what: str, names: tuple[str, ...], cell: str
) -> Layer:
    """``Layer`` of ``cell`` stored as torch stores it, under ``names`` (``TORCH_NAMES``'
    order), checked for consistent shapes."""
    gates = TORCH_GATES[cell]
    ih, hh, b_ih, b_hh, weight, bias = names
    s = {k: np.asarray(v) for k, v in state.items()}
    H = int(s[hh].shape[1])
    V = _matrix_shape(what, weight, s[weight])[0]
    G = len(gates)
    _shapes(
        what,
        {
            ih: (G * H, V),
            hh: (G * H, H),
            b_ih: (G * H,),
            b_hh: (G * H,),
            weight: (V, H),
            bias: (V,),
        },
        s,
    )
    return Layer(
        cell,
        _split(gates, s[ih].T, axis=1),
        _split(gates, s[hh].T, axis=1),
        _split(gates, s[b_ih], axis=0),
        _split(gates, s[b_hh], axis=0),
        np.ascontiguousarray(s[weight].T),
        np.ascontiguousarray(s[bias]),
    )


# --- MXNet Gluon ---------------------------------------------------------------------------


def to_mxnet(layer: Layer) -> Arrays:
    """``MXNET_NAMES`` for ``layer``: Gluon's ``MXNET_LAYER[layer.cell]`` and its ``nn.Dense``,
    torch's arrays under Gluon's names (the same shapes and gate order)."""
    if layer.cell not in TORCH_GATES:
        raise ConversionError(NO_MXNET_RESET_BEFORE)
    _one_hot_only(layer, "MXNet Gluon")
    arrays = to_torch(layer)
    return {m: arrays[t] for t, m in zip(TORCH_NAMES, MXNET_NAMES, strict=True)}


def mxnet_names(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``arrays`` under ``MXNET_NAMES``: ``save_parameters``' names (``MXNET_SAVED``) renamed,
    unless the file holds a parameter under both."""
    out = {MXNET_SAVED.get(k, k): v for k, v in arrays.items()}
    if len(out) != len(arrays):
        both = sorted(k for k in arrays if k in MXNET_SAVED and MXNET_SAVED[k] in arrays)
        raise ConversionError(
            f"{what} holds {both[0]} and {MXNET_SAVED[both[0]]}, one Gluon parameter twice"
        )
    return out


def from_mxnet(arrays: Mapping[str, np.ndarray], what: str = "the Gluon parameters") -> Layer:
    """``Layer`` of Gluon's parameters (``MXNET_NAMES``, or ``save_parameters``' names for the
    recurrent layer), checked for consistent shapes."""
    a = mxnet_names(arrays, what)
    supported = "d2l's MXNet RNNModel names, rnn.l0_i2h_weight ... dense.bias,"
    cell = _stacked_cell(a, what, MXNET_NAMES, supported, MXNET_LAYER)
    return _from_stacked(a, what, MXNET_NAMES, cell)


# --- d2l 1.0's scratch models ----------------------------------------------------------------


def _core_names(cell: str) -> tuple[str, ...]:
    """core's parameters of a one-hot model of ``cell``, in the order core draws them."""
    if cell == RNN:
        return tuple(model.param_shapes(1, 1))
    from . import cells

    return cells.param_names(cell)


def d2l_scratch_name(name: str) -> str:
    """The name d2l 1.0's ``RNNLMScratch`` gives core's parameter ``name``: the output layer's
    as they are, the cell's under its ``rnn``."""
    return name if name in D2L_SCRATCH_OUTPUT else f"rnn.{name}"


def d2l_scratch_names(cell: str) -> tuple[str, ...]:
    """A scratch model's state dict, in torch's order: the model's own, then its ``rnn``'s."""
    names = [d2l_scratch_name(n) for n in _core_names(cell)]
    return (*D2L_SCRATCH_OUTPUT, *(n for n in names if n not in D2L_SCRATCH_OUTPUT))


def to_d2l_scratch(layer: Layer) -> Arrays:
    """The state dict of d2l 1.0's ``RNNLMScratch`` around ``D2L_SCRATCH_LAYER[layer.cell]``
    holding ``layer``: core's parameters (``to_params``), renamed."""
    if layer.cell not in D2L_SCRATCH_LAYER:
        raise ConversionError(NO_SCRATCH_RESET_AFTER)
    _one_hot_only(layer, "d2l 1.0's scratch models")
    params = to_params(layer)
    return {d2l_scratch_name(n): params[n] for n in (*D2L_SCRATCH_OUTPUT, *_core_names(layer.cell))}


def d2l_scratch_cell(
    state: Mapping[str, np.ndarray], what: str = "the d2l scratch state dict"
) -> str:
    """The cell a scratch model's state dict holds, from its names: ``rnn.W_hz`` a GRU,
    ``rnn.W_hi`` an LSTM, ``rnn.W_hh`` alone the RNN."""
    if "rnn.W_hz" in state:
        if "rnn.b_xh" in state or "rnn.b_hh" in state:
            raise ConversionError(f"{what}: {NO_SCRATCH_RESET_AFTER}")
        cell = GRU_RESET_BEFORE
    elif "rnn.W_hi" in state:
        cell = LSTM
    else:
        cell = RNN
    _require(d2l_scratch_names(cell), state, what, "d2l 1.0's RNNLMScratch names")
    return cell


def from_d2l_scratch(
    state: Mapping[str, np.ndarray], what: str = "the d2l scratch state dict"
) -> Layer:
    """``Layer`` of a state dict of d2l 1.0's ``RNNLMScratch`` (``d2l_scratch_names``), checked
    for consistent shapes."""
    from . import cells

    cell = d2l_scratch_cell(state, what)
    s = {k: np.asarray(v) for k, v in state.items()}
    H, V = _matrix_shape(what, "W_hq", s["W_hq"])
    shapes = model.param_shapes(V, H) if cell == RNN else cells.param_shapes(cell, V, H)
    _shapes(what, {d2l_scratch_name(n): shape for n, shape in shapes.items()}, s)
    return from_params({n: s[d2l_scratch_name(n)] for n in _core_names(cell)})


# --- Keras ---------------------------------------------------------------------------------


def to_keras(layer: Layer) -> Arrays:
    """``KERAS_NAMES`` for ``layer``: the arrays ``get_weights()`` gives of the Keras layer
    ``KERAS_LAYER[layer.cell]`` and its Dense."""
    _one_hot_only(layer, "Keras")
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


# --- ONNX ----------------------------------------------------------------------------------

ONNX_GATES: dict[str, tuple[str, ...]] = {
    RNN: ("h",),
    GRU_RESET_BEFORE: ("z", "r", "h"),
    GRU_RESET_AFTER: ("z", "r", "h"),
    LSTM: ("i", "o", "f", "c"),
}
"""The order ONNX's ``RNN``, ``GRU`` and ``LSTM`` operators stack the gates in, under core's
names (the operators' own: GRU ``z, r, h``; LSTM ``i, o, f, c``)."""
ONNX_LAYER = {
    RNN: "RNN",
    GRU_RESET_BEFORE: "GRU(linear_before_reset=0)",
    GRU_RESET_AFTER: "GRU(linear_before_reset=1)",
    LSTM: "LSTM",
}
ONNX_NAMES = ("W", "R", "B", "W_hq", "b_q")
"""The fused form's tensors: the operator's ``W`` (1, G·H, I), ``R`` (1, G·H, H) and ``B``
(1, 2·G·H: the input biases ``Wb`` of every gate, then the recurrent ones ``Rb``), and the
output layer as core keeps it (``logits = hidden W_hq + b_q``); ``E`` too for a learned
embedding."""


def to_onnx(layer: Layer) -> Arrays:
    """The fused form's tensors (``ONNX_NAMES``) holding ``layer``: weights (out, in) as the
    operators read them, one direction, the biases as ``[Wb; Rb]``. The GRU's formulation is
    the operator's ``linear_before_reset`` (1: reset-after), which the graph carries."""
    gates = ONNX_GATES[layer.cell]
    out = {
        "W": _stack(gates, layer.W_x, axis=1).T[None].copy(),
        "R": _stack(gates, layer.W_h, axis=1).T[None].copy(),
        "B": np.concatenate([_stack(gates, layer.b_x, axis=0), _stack(gates, layer.b_h, axis=0)])[
            None
        ].copy(),
        "W_hq": np.ascontiguousarray(layer.W_hq),
        "b_q": np.ascontiguousarray(layer.b_q),
    }
    if layer.E is not None:
        out[model.EMBEDDING] = np.ascontiguousarray(layer.E)
    return out


def onnx_cell(op: str, linear_before_reset: int, what: str = "the ONNX model") -> str:
    """The cell an ONNX recurrent operator computes: ``GRU`` by its ``linear_before_reset``."""
    if op == "GRU":
        return GRU_RESET_AFTER if linear_before_reset else GRU_RESET_BEFORE
    cells = {"RNN": RNN, "LSTM": LSTM}
    if op not in cells:
        raise ConversionError(f"{what}: {op} is not one of ONNX's RNN, GRU, LSTM")
    return cells[op]


def from_onnx(arrays: Mapping[str, np.ndarray], cell: str, what: str = "the ONNX model") -> Layer:
    """``Layer`` of the fused form's tensors (``ONNX_NAMES``, and ``E``) for ``cell`` (from
    ``onnx_cell``), checked for consistent shapes: one direction, B present."""
    gates = ONNX_GATES[cell]
    a = {k: np.asarray(v) for k, v in arrays.items()}
    _require(
        (*ONNX_NAMES, *((model.EMBEDDING,) if model.EMBEDDING in a else ())),
        a,
        what,
        "the ONNX operator's W, R, B and the output layer",
    )
    if a["R"].ndim != 3 or a["R"].shape[0] != 1:
        raise ConversionError(
            f"{what}: R has shape {list(a['R'].shape)}, not (1, G·H, H): one direction converts"
        )
    G, H = len(gates), int(a["R"].shape[2])
    V = int(a["W_hq"].shape[1]) if a["W_hq"].ndim == 2 else -1
    inputs = int(a[model.EMBEDDING].shape[1]) if model.EMBEDDING in a else V
    expected = {
        "W": (1, G * H, inputs),
        "R": (1, G * H, H),
        "B": (1, 2 * G * H),
        "W_hq": (H, V),
        "b_q": (V,),
    }
    if model.EMBEDDING in a:
        expected[model.EMBEDDING] = (V, inputs)
    _shapes(what, expected, a)
    b_x, b_h = np.split(a["B"][0], 2)
    return Layer(
        cell,
        _split(gates, a["W"][0].T, axis=1),
        _split(gates, a["R"][0].T, axis=1),
        _split(gates, b_x, axis=0),
        _split(gates, b_h, axis=0),
        np.ascontiguousarray(a["W_hq"]),
        np.ascontiguousarray(a["b_q"]),
        a.get(model.EMBEDDING),
    )


def layer_of(arrays: Mapping[str, np.ndarray], fmt: str, what: str = "the weights") -> Layer:
    """``Layer`` of arrays in a safetensors format's layout (``fmt``: see ``detect_format``)."""
    if fmt in TORCH_MODULE:
        return from_torch(arrays, what, TORCH_MODULE[fmt])
    if fmt == "d2l-scratch":
        return from_d2l_scratch(arrays, what)
    if fmt == "keras":
        return from_keras(arrays, what)
    if fmt == "mxnet":
        return from_mxnet(arrays, what)
    if fmt == "rosetta":
        return from_params({k: arrays[k] for k in model.param_names(arrays)})
    raise ConversionError(f"{what}: no layer of format {fmt!r}")


def to_onnx_model(
    layer: Layer,
    form: str = "fused",
    activation: str = "tanh",
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """The ``onnx.ModelProto`` of ``layer`` (``core.onnx_model``): fused, the operator holding
    ``to_onnx``'s tensors; decomposed, a Scan holding core's parameters (``to_params``)."""
    from . import onnx_model

    fused = to_onnx(layer) if form == "fused" else None
    return onnx_model.build(layer.cell, form, to_params(layer), fused, activation, metadata)


@dataclass
class OnnxRead:
    """A model read from an ONNX file: the layer, its form, the RNN's activation, our
    metadata (the document ``convert`` records)."""

    layer: Layer
    form: str
    activation: str
    metadata: dict[str, Any]


def from_onnx_model(proto: Any, what: str = "the ONNX model") -> OnnxRead:
    """The layer an ONNX model holds: a fused one's operator and tensors through ONNX's
    layout (``from_onnx``, the cell from ``onnx_cell``), a decomposed one's core parameters."""
    from . import onnx_model

    try:
        graph = onnx_model.read(proto, what)
    except (KeyError, ValueError, IndexError) as e:  # a graph of a shape read() does not know
        raise ConversionError(
            f"{what}: not a recurrent model convert reads ({type(e).__name__}: {e})"
        ) from None
    if graph.form == "fused":
        cell = onnx_cell(str(graph.op), graph.linear_before_reset, what)
        layer = from_onnx(graph.arrays, cell, what)
    else:
        try:
            layer = from_params(graph.arrays)
        except (KeyError, ValueError, UserError) as e:
            raise ConversionError(f"{what}: its Scan's tensors are not core's parameters") from e
    return OnnxRead(layer, graph.form, graph.activation, graph.metadata)


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
        holders = {
            GRU_RESET_AFTER: "torch nn.GRU (d2l 1.0's d2l.GRU), MXNet Gluon's rnn.GRU and Keras "
            "GRU(reset_after=True)",
            GRU_RESET_BEFORE: "Keras GRU(reset_after=False) and d2l 1.0's GRUScratch",
        }
        raise ConversionError(
            f"the {source} GRU and the {target} GRU are different models (the reset gate "
            "multiplies the state before the recurrent matmul, or its product after it): in "
            f"general no weights make one compute the other. {holders[source]} hold the "
            f"{source} one, so convert to those; for a {target} model, train one "
            f"(train --cell gru --gru {target.split('/')[1]})"
        )


# --- files -----------------------------------------------------------------------------------
# A rosetta file is a checkpoint (core.checkpoint). A torch, Keras or book file is a safetensors
# file holding exactly TORCH_NAMES, KERAS_NAMES, D2L_CONCISE_NAMES or d2l_scratch_names(cell),
# readable with no metadata at all (as ``safetensors.torch.save_file(model.state_dict())``
# writes it); what we write adds, under the
# key ``rosetta_rnn``, one JSON document (NATIVE_FORMAT) with what the weights cannot say, so a
# converted file converts back: the cell, the activations, the vocabulary and the checkpoint's
# own metadata.

FORMATS = ("rosetta", *NATIVE, "onnx")
NATIVE_FORMAT = "rosetta-rnn-native-weights"
NATIVE_FORMAT_VERSION = 1

_KIND = {RNN: "rnn", GRU_RESET_BEFORE: "gru", GRU_RESET_AFTER: "gru", LSTM: "lstm"}
_TOKENS = ("char", "word")


@dataclass
class Weights:
    """A model read from a file of any format, with what a conversion carries along."""

    fmt: str  # one of FORMATS
    source: str  # the file, for messages
    layer: Layer
    activation: str  # the RNN's φ (tanh or relu); tanh for the gated cells
    vocab: list[str] | None  # the tokens, when the file records them
    token: str | None  # char or word, with the vocabulary
    forget_bias: float | None  # the LSTM's initial b_f as trained (None: not recorded)
    checkpoint: dict[str, Any] | None  # the rosetta checkpoint's metadata this came from
    carried: Arrays  # a checkpoint's carried state (state, state_c): not weights, kept aside
    form: str | None = None  # ONNX's: fused or decomposed (read, or to be written)

    @property
    def vocab_size(self) -> int:
        return int(self.layer.W_hq.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.layer.W_hq.dtype)


@dataclass
class Converted:
    """What ``convert_file`` wrote: a one-line summary and notes worth a user's attention."""

    summary: str
    notes: list[str]
    target: str  # the path written
    layer: str  # the native layer written, or ``rosetta-rnn <cell>``
    weights: Weights


def layer_name(fmt: str, cell: str, activation: str = "tanh") -> str:
    """How ``fmt`` names the layer of ``cell``: ``nn.GRU``, ``GRU(reset_after=True)``,
    ``GRUScratch``, ``d2l.GRU`` ...; an RNN with relu says so (``nn.RNN(nonlinearity='relu')``)."""
    relu = cell == RNN and activation == "relu"
    if fmt in TORCH_MODULE:
        if cell not in TORCH_LAYER:
            raise ConversionError(NO_TORCH_RESET_BEFORE)
        if fmt == "d2l-concise":
            return D2L_CONCISE_LAYER[cell] + (" (relu)" if relu else "")
        return TORCH_LAYER[cell] + ("(nonlinearity='relu')" if relu else "")
    if fmt == "d2l-scratch":
        if cell not in D2L_SCRATCH_LAYER:
            raise ConversionError(NO_SCRATCH_RESET_AFTER)
        return D2L_SCRATCH_LAYER[cell] + (" (relu)" if relu else "")
    if fmt == "keras":
        return KERAS_LAYER[cell] + ("(activation='relu')" if relu else "")
    if fmt == "mxnet":
        if cell not in MXNET_LAYER:
            raise ConversionError(NO_MXNET_RESET_BEFORE)
        # Gluon's rnn.RNN defaults to relu: its activation is always named
        return MXNET_LAYER[cell] + (f"(activation='{activation}')" if cell == RNN else "")
    if fmt == "onnx":
        return ONNX_LAYER[cell] + ("(activations=['Relu'])" if relu else "")
    return f"rosetta-rnn {cell}" + (" (relu)" if relu else "")


def _our_metadata(raw: Mapping[str, str], source: str) -> dict[str, Any] | None:
    """The JSON document under ``rosetta_rnn`` of a file's raw metadata, or None."""
    if checkpoint.METADATA_KEY not in raw:
        return None
    try:
        meta = json.loads(raw[checkpoint.METADATA_KEY])
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise ConversionError(f"{source}: its rosetta_rnn metadata is not a JSON object")
    return meta


def detect_format(tensors: Mapping[str, Any], meta: Mapping[str, Any] | None) -> str | None:
    """The format a file's tensor names (or our metadata) say it is; None when neither does."""
    if meta and meta.get("format") == checkpoint.FORMAT:
        return "rosetta"
    if meta and meta.get("format") == NATIVE_FORMAT and meta.get("framework") in NATIVE:
        return str(meta["framework"])
    names = set(tensors)
    if "rnn.rnn.weight_hh_l0" in names:
        return "d2l-concise"
    if "rnn.weight_hh_l0" in names:
        return "torch"
    if "rnn.recurrent_kernel" in names:
        return "keras"
    if names & {"rnn.l0_h2h_weight", "rnn._unfused.0.h2h_weight"}:
        return "mxnet"
    if "W_hq" in names and names & {"rnn.W_hh", "rnn.W_hz", "rnn.W_hi"}:
        return "d2l-scratch"
    if any(n.startswith("W_") for n in names):
        return "rosetta"
    return None


def _check_vocab(vocab: Any, token: Any, size: int, what: str) -> tuple[list[str], str]:
    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab)):
        raise ConversionError(f"{what} has no valid vocabulary (a list of token strings)")
    if len(vocab) != size:
        raise ConversionError(
            f"{what} has a vocabulary of {len(vocab)} tokens, but the weights are for {size} "
            f"(the output layer has {size} rows); pass one of {size} tokens"
        )
    token = token or "char"
    if token not in _TOKENS:
        raise ConversionError(f"{what}: token {token!r} is not one of {', '.join(_TOKENS)}")
    return list(vocab), str(token)


def vocab_of(path: str | os.PathLike[str]) -> tuple[list[str], str]:
    """(vocabulary, token kind) recorded in a rosetta-rnn checkpoint or a converted file: what
    ``--vocab-from`` reads."""
    _, raw = checkpoint.read_safetensors(path)
    meta = _our_metadata(raw, str(path)) or {}
    if meta.get("format") not in (checkpoint.FORMAT, NATIVE_FORMAT) or meta.get("vocab") is None:
        raise ConversionError(
            f"{path} records no vocabulary; --vocab-from reads one from a rosetta-rnn "
            "checkpoint, or a file `rosetta-rnn convert` wrote with one"
        )
    vocab, token = meta["vocab"], meta.get("token") or "char"
    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab)):
        raise ConversionError(f"{path} has no valid vocabulary (a list of token strings)")
    if token not in _TOKENS:
        raise ConversionError(f"{path}: token {token!r} is not one of {', '.join(_TOKENS)}")
    return list(vocab), str(token)


def _pack(a: np.ndarray) -> dict[str, Any]:
    """An array as JSON, bit for bit: dtype, shape and the little-endian bytes in base64."""
    b = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
    data = base64.b64encode(b.tobytes()).decode()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}


def _unpack(d: Any, what: str) -> np.ndarray:
    try:
        dtype = np.dtype(d["dtype"])
        if dtype not in (np.float32, np.float64):
            raise ValueError
        raw = base64.b64decode(d["data"], validate=True)
        a = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(d["shape"])
        return a.astype(dtype)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ConversionError(f"{what}: its carried state in the metadata is damaged") from None


def _read_rosetta(path: str) -> Weights:
    tensors, meta = checkpoint.load_model(path)
    names = model.param_names(tensors)
    try:
        layer = from_params({n: tensors[n] for n in names})
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    run = meta.get("run")
    run = run if isinstance(run, dict) else {}
    forget_bias = run.get("forget_bias") if layer.cell == LSTM else None
    return Weights(
        "rosetta",
        path,
        layer,
        str(meta["config"].get("activation") or "tanh"),
        list(meta["vocab"]),
        str(meta.get("token") or "char"),
        float(forget_bias) if isinstance(forget_bias, int | float) else None,
        meta,
        {k: v for k, v in tensors.items() if k not in names},
    )


def _activations(
    fmt: str,
    cell: str,
    meta: Mapping[str, Any],
    raw: Mapping[str, str],
    path: str,
    asked: str | None,
) -> str:
    """The RNN's φ of a native file: what it records (in our metadata, or as a plain
    ``activation``/``nonlinearity`` entry), else ``asked``, else tanh. Every activation it
    records must be one core computes: anything else is a different model."""
    layer = MXNET_LAYER[cell] if fmt == "mxnet" else layer_name(fmt, cell)
    recorded: dict[str, Any] = {}
    for key in ("activation", "nonlinearity", "recurrent_activation"):
        value = meta.get(key, raw.get(key))
        if value is not None:
            recorded[key] = value if isinstance(value, str) else repr(value)
    phis = {recorded[k] for k in ("activation", "nonlinearity") if k in recorded}
    if len(phis) > 1:
        raise ConversionError(f"{path}: its metadata records two activations, {sorted(phis)}")
    if fmt == "mxnet" and cell == RNN and not phis and not asked:
        raise ConversionError(f"{path}: {NO_MXNET_ACTIVATION}")
    phi = phis.pop() if phis else (asked if cell == RNN and asked else "tanh")
    allowed = ("tanh", "relu") if cell == RNN else ("tanh",)
    if phi not in allowed:
        raise ConversionError(
            f"{path}: the {fmt} {layer} records activation {phi!r}; rosetta-rnn computes "
            f"{' or '.join(allowed)} there, so this is a different model that has no exact "
            "conversion"
        )
    gate = recorded.get("recurrent_activation")
    if cell != RNN and gate not in (None, "sigmoid"):
        raise ConversionError(
            f"{path}: the {fmt} {layer} records recurrent_activation {gate!r}; rosetta-rnn's "
            "gates are the sigmoid (Keras 3's default), so this is a different model that has "
            "no exact conversion (rebuild and retrain the layer with "
            "recurrent_activation='sigmoid')"
        )
    return str(phi)


def _read_native(
    path: str, fmt: str, tensors: Arrays, raw: Mapping[str, str], activation: str | None
) -> Weights:
    meta = _our_metadata(raw, path) or {}
    what = f"{path} (--from {fmt})"
    if fmt in TORCH_MODULE:
        layer = from_torch(tensors, what, TORCH_MODULE[fmt])
    elif fmt == "d2l-scratch":
        layer = from_d2l_scratch(tensors, what)
    elif fmt == "mxnet":
        layer = from_mxnet(tensors, what)
    else:
        layer = from_keras(tensors, what)
    return _weights(path, fmt, layer, meta, raw, activation)


def _read_onnx(path: str, data: bytes, activation: str | None) -> Weights:
    """An ONNX model (either form; ``core.onnx_model``), with the document we record in its
    ``metadata_props`` where it has one."""
    from . import onnx_model

    what = f"{path} (--from onnx)"
    graph = from_onnx_model(onnx_model.parse(data, path), what)
    meta = dict(graph.metadata)
    if graph.layer.cell == RNN:
        meta.setdefault("activation", graph.activation)
    weights = _weights(path, "onnx", graph.layer, meta, {}, activation)
    weights.form = graph.form
    return weights


def _weights(
    path: str,
    fmt: str,
    layer: Layer,
    meta: Mapping[str, Any],
    raw: Mapping[str, str],
    activation: str | None,
) -> Weights:
    """A native file's ``Weights``: ``layer`` and what its metadata records, checked."""
    version = meta.get("format_version", NATIVE_FORMAT_VERSION)
    if meta and (not isinstance(version, int) or version > NATIVE_FORMAT_VERSION):
        raise ConversionError(
            f"{path} has converted-weights format {version}; this rosetta-rnn reads up to "
            f"{NATIVE_FORMAT_VERSION} (upgrade rosetta-rnn)"
        )
    recorded_cell = meta.get("cell")
    if recorded_cell is not None and recorded_cell != layer.cell:
        raise ConversionError(
            f"{path}: its metadata says cell {recorded_cell!r}, but its tensors are a "
            f"{layer_name(fmt, layer.cell)}'s ({layer.cell}); the file was changed after it "
            "was written"
        )
    phi = _activations(fmt, layer.cell, meta, raw, path, activation)
    vocab = token = None
    if meta.get("vocab") is not None:
        vocab, token = _check_vocab(
            meta["vocab"], meta.get("token"), int(layer.W_hq.shape[1]), path
        )
    forget_bias = meta.get("forget_bias") if layer.cell == LSTM else None
    saved = meta.get("checkpoint")
    if saved is not None and not isinstance(saved, dict):
        raise ConversionError(f"{path}: its metadata's checkpoint is not a JSON object")
    carried = meta.get("carried") or {}
    if not isinstance(carried, dict):
        raise ConversionError(f"{path}: its carried state in the metadata is damaged")
    return Weights(
        fmt,
        path,
        layer,
        phi,
        vocab,
        token,
        float(forget_bias) if isinstance(forget_bias, int | float) else None,
        saved,
        {name: _unpack(d, path) for name, d in carried.items()},
    )


def read(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    cell: str | None = None,
    gru: str | None = None,
    activation: str | None = None,
) -> Weights:
    """Read a rosetta checkpoint, a torch state dict, Keras weights, Gluon's parameters, the
    book's state dicts or an ONNX model (``fmt``; None: what the file says). ``cell`` (rnn,
    gru, lstm), ``gru`` (reset-before, reset-after) and ``activation`` (the RNN's tanh or relu)
    are what the caller believes the file holds: checked against its shapes and metadata, a
    contradiction is an error; ``activation`` also supplies the RNN's φ that a native file
    without our metadata cannot record (default tanh; a Gluon RNN has no default, as Gluon's
    is relu and torch's tanh)."""
    source = str(path)
    if fmt == "onnx" or (fmt is None and _looks_onnx(path)):
        weights = _read_onnx(source, _bytes(path), activation)
        check(weights, cell, gru, activation)
        return weights
    tensors, raw = checkpoint.read_safetensors(path)
    meta = _our_metadata(raw, source)
    found = detect_format(tensors, meta)
    fmt = fmt or found
    if fmt not in FORMATS:
        raise ConversionError(
            f"{source} holds none of the layouts convert reads (a rosetta-rnn checkpoint, "
            f"torch's {', '.join(TORCH_NAMES[:2])} ..., Keras' {', '.join(KERAS_NAMES[:2])} "
            f"..., Gluon's {MXNET_NAMES[0]} ..., d2l 1.0's W_hq, rnn.W_xh ... or "
            f"{D2L_CONCISE_NAMES[0]} ...); say which "
            "with --from"
        )
    if found is not None and found != fmt:
        hint = "a rosetta-rnn checkpoint" if found == "rosetta" else f"a {found} file"
        raise ConversionError(f"{source} is {hint}, not a {fmt} file: use --from {found}")
    if meta and meta.get("format") not in (None, checkpoint.FORMAT, NATIVE_FORMAT):
        raise ConversionError(
            f"{source}: its rosetta_rnn metadata is of another format ({meta.get('format')!r})"
        )
    if fmt == "rosetta":
        weights = _read_rosetta(source)
    else:
        weights = _read_native(source, fmt, tensors, raw, activation)
    check(weights, cell, gru, activation)
    return weights


def _bytes(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"file not found: {p}")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ConversionError(f"cannot read {p}: {e.strerror or e}") from None


def _looks_onnx(path: str | os.PathLike[str]) -> bool:
    """An ONNX file by its content: not safetensors (an 8-byte header length, then ``{``),
    and named ``.onnx`` or beginning as an ONNX model does (field 1, ``ir_version``, as a
    varint: the byte 0x08)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = Path(path).stat().st_size
    except OSError:
        return str(path).endswith(".onnx")
    length = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 0 < length < size:
        return False  # safetensors, whatever its name
    return str(path).endswith(".onnx") or (len(head) > 0 and head[0] == 0x08)


def check(
    weights: Weights, cell: str | None, gru: str | None, activation: str | None = None
) -> None:
    """Refuse when the caller's ``cell``, ``gru`` or ``activation`` is not the model read."""
    held = weights.layer.cell
    kind = _KIND[held]
    name = layer_name(weights.fmt, held, weights.activation)
    if cell is not None and cell != kind:
        raise ConversionError(
            f"{weights.source} holds a {held} model ({name}), not the {cell} --cell names; "
            "drop --cell, or pass the file you meant"
        )
    if gru is not None:
        if kind != "gru":
            raise ConversionError(
                f"--gru {gru} is the GRU's formulation; {weights.source} holds a {held} model"
            )
        same_model(held, f"gru/{gru}")
    if activation is not None:
        if held != RNN and activation != "tanh":
            raise ConversionError(
                f"--activation {activation} is the RNN's; the {held} cell uses σ and tanh"
            )
        if activation != weights.activation:
            raise ConversionError(
                f"{weights.source} records the activation {weights.activation}, not the "
                f"{activation} --activation names; drop --activation"
            )


def _summed(layer: Layer, fmt: str, form: str | None = None) -> list[str]:
    """The gates whose nonzero pair of biases ``fmt`` keeps as one (their sum): ONNX's fused
    operators keep every pair (``B`` is ``[Wb; Rb]``), its decomposed form core's
    parameters."""
    ours = tuple(
        g for g in OUR_GATES[layer.cell] if not (layer.cell == GRU_RESET_AFTER and g == "h")
    )
    pairs = {
        "torch": (),
        "d2l-concise": (),
        "mxnet": (),
        "keras": () if layer.cell == GRU_RESET_AFTER else OUR_GATES[layer.cell],
        "rosetta": ours,
        "d2l-scratch": ours,  # core's parameters
        "onnx": () if form == "fused" else ours,
    }[fmt]
    return [g for g in pairs if np.any(layer.b_h[g] != 0)]


def _native_metadata(fmt: str, w: Weights) -> dict[str, str]:
    """The raw metadata of a native file we write (torch, Keras, Gluon, the book's): ours under
    ``rosetta_rnn``, torch's own ``format: pt`` for a torch state dict, and a Gluon RNN's
    ``activation`` as a plain entry (the argument its ``rnn.RNN`` is built with)."""
    raw = {checkpoint.METADATA_KEY: json.dumps(_native_doc(fmt, w))}
    if fmt == "mxnet":
        return {"activation": w.activation, **raw} if w.layer.cell == RNN else raw
    return raw if fmt == "keras" else {"format": "pt", **raw}


def _native_doc(fmt: str, w: Weights) -> dict[str, Any]:
    """What a native file we write records that its tensors cannot say (NATIVE_FORMAT)."""
    cell = w.layer.cell
    doc: dict[str, Any] = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_FORMAT_VERSION,
        "framework": fmt,
        "layer": layer_name(fmt, cell, w.activation if fmt == "mxnet" else "tanh"),
        "cell": cell,
        "dtype": w.dtype,
        "vocab_size": w.vocab_size,
        "num_hiddens": w.layer.num_hiddens,
        "activation": w.activation,
    }
    if fmt in TORCH_MODULE and cell == RNN:
        doc["nonlinearity"] = w.activation
    if fmt == "keras" and cell != RNN:
        doc["recurrent_activation"] = "sigmoid"
    doc["forget_bias"] = w.forget_bias
    doc["vocab"] = w.vocab
    doc["token"] = w.token
    doc["checkpoint"] = w.checkpoint
    doc["carried"] = {name: _pack(a) for name, a in w.carried.items()}
    return doc


def _rosetta_metadata(w: Weights) -> dict[str, Any]:
    """A checkpoint's metadata: the one the weights came from, restored as it was, or a new
    one with what ``generate`` and ``eval`` read (no training position: it cannot resume)."""
    cell, H, V = w.layer.cell, w.layer.num_hiddens, w.vocab_size
    if w.checkpoint is not None:
        meta = w.checkpoint
        config = meta.get("config")
        config = config if isinstance(config, dict) else {}
        vocab = meta.get("vocab")
        recorded = (
            checkpoint.model_cell(meta, w.source),
            config.get("num_hiddens"),
            len(vocab) if isinstance(vocab, list) else None,
            meta.get("dtype"),
            config.get("activation") or "tanh",
        )
        if recorded != (cell, H, V, w.dtype, w.activation):
            raise ConversionError(
                f"{w.source}: the checkpoint its metadata records does not fit its weights "
                f"({recorded[0]}, {recorded[1]} hidden, vocab {recorded[2]}, {recorded[3]} "
                f"against {cell}, {H}, {V}, {w.dtype}); the file was changed after conversion"
            )
        return meta
    kind = _KIND[cell]
    embed_dim = None if w.layer.E is None else int(w.layer.E.shape[1])
    return {
        "backend": None,
        "dtype": w.dtype,
        "epoch": None,
        "token": w.token,
        "config": {"num_hiddens": H, "embed_dim": embed_dim, "activation": w.activation},
        "run": {
            "cell": kind,
            "gru": cell.split("/")[1] if kind == "gru" else None,
            "forget_bias": w.forget_bias if cell == LSTM else 0.0,
            "num_hiddens": H,
            "embed_dim": embed_dim,
            "activation": w.activation,
            "token": w.token,
            "dtype": w.dtype,
        },
        "vocab": w.vocab,
        "converted_from": {"format": w.fmt, "layer": layer_name(w.fmt, cell, w.activation)},
    }


def write(path: str | os.PathLike[str], fmt: str, weights: Weights) -> list[str]:
    """Write ``weights`` as ``fmt`` to ``path``, atomically; -> notes on what was summed. A
    rosetta checkpoint needs a vocabulary; a layer that cannot hold the model is refused."""
    layer = weights.layer
    form = weights.form or "fused"
    summed = _summed(layer, fmt, form)
    notes = []
    if summed:
        pair = {
            **{f: "bias_ih + bias_hh" for f in TORCH_MODULE},
            "mxnet": "i2h_bias + h2h_bias",
            "onnx": "Wb + Rb",
        }.get(weights.fmt, "the two rows of rnn.bias")
        target = f"rosetta-rnn's {layer.cell}" if fmt == "rosetta" else layer_name(fmt, layer.cell)
        if fmt == "onnx":
            target = "the decomposed ONNX form (core's parameters)"
        notes.append(
            f"summed the pairs of biases ({pair}) of the gates {', '.join(summed)} (core's "
            f"names) into the one bias each gate has in {target}: the same model up to one "
            "rounding; converted back, the input bias holds the sum and the recurrent one zero"
        )
    if fmt == "rosetta":
        if weights.vocab is None:
            raise ConversionError(
                f"{weights.source} records no vocabulary, which a rosetta-rnn checkpoint needs "
                "(generate and eval read it): pass --vocab-from CKPT, a checkpoint of "
                f"{weights.vocab_size} tokens (or a file convert wrote with them)"
            )
        params = to_params(layer)
        # in the order train writes them (model.to_numpy), so a round trip is the same file
        tensors = {name: params[name] for name in model.param_names(params)}
        checkpoint.save(path, {**tensors, **weights.carried}, _rosetta_metadata(weights))
        return notes
    if fmt == "onnx":
        from . import onnx_model

        proto = to_onnx_model(layer, form, weights.activation, _native_doc(fmt, weights))
        if form == "fused" and weights.dtype == "float64":
            notes.append(
                "ONNX Runtime has no float64 kernel for RNN, GRU or LSTM: this file runs on "
                "onnx's reference evaluator; --onnx-form decomposed runs float64 on ONNX Runtime"
            )
        checkpoint.atomic_write(path, onnx_model.serialize(proto))
        return notes
    if fmt in TORCH_MODULE:
        arrays = to_torch(layer, TORCH_MODULE[fmt])
    elif fmt == "d2l-scratch":
        arrays = to_d2l_scratch(layer)
    elif fmt == "mxnet":
        arrays = to_mxnet(layer)
    else:
        arrays = to_keras(layer)
    notes += _book_notes(fmt, weights)
    checkpoint.atomic_write(path, checkpoint.encode_raw(arrays, _native_metadata(fmt, weights)))
    return notes


def _book_notes(fmt: str, weights: Weights) -> list[str]:
    """What a reader must change in the book's code to run what was written: an RNN with relu
    (d2l 1.0's classes compute tanh)."""
    if fmt not in BOOK or weights.layer.cell != RNN or weights.activation == "tanh":
        return []
    change = {
        "d2l-scratch": "RNNScratch.forward needs torch.relu in place of torch.tanh",
        "d2l-concise": "d2l.RNN needs nn.RNN(num_inputs, num_hiddens, nonlinearity='relu')",
    }[fmt]
    return [
        f"the RNN's activation is {weights.activation} (recorded in the file's metadata), but "
        f"the book's classes compute tanh: {change}"
    ]


def describe(fmt: str, weights: Weights) -> str:
    """What a file of ``fmt`` holding ``weights`` is, in a few words."""
    cell, act = weights.layer.cell, weights.activation
    vocab = (
        f"vocab {weights.vocab_size}"
        if weights.vocab is not None
        else f"vocab size {weights.vocab_size}, tokens not recorded"
    )
    size = f"({vocab}, {weights.layer.num_hiddens} hidden, {weights.dtype})"
    if fmt == "torch":
        return f"torch {layer_name(fmt, cell, act)} + nn.Linear state dict {size}"
    if fmt == "keras":
        return f"keras {layer_name(fmt, cell, act)} + Dense weights {size}"
    if fmt == "mxnet":
        return f"mxnet {layer_name(fmt, cell, act)} + gluon.nn.Dense parameters {size}"
    if fmt == "d2l-concise":
        return f"d2l 1.0 RNNLM + {layer_name(fmt, cell, act)} state dict {size}"
    if fmt == "d2l-scratch":
        return f"d2l 1.0 RNNLMScratch + {layer_name(fmt, cell, act)} state dict {size}"
    if fmt == "onnx":
        form = weights.form or "fused"
        held = layer_name(fmt, cell, act) if form == "fused" else f"Scan over the {cell} cell"
        embedding = "Gather(E)" if weights.layer.E is not None else "one-hot"
        return f"ONNX model, {form}: {embedding} -> {held} -> MatMul + Add {size}"
    relu = " (relu)" if cell == RNN and act == "relu" else ""
    return f"rosetta-rnn {cell}{relu} checkpoint {size}"


def _others(fmt: str) -> str:
    others = [f"--to {f}" for f in FORMATS if f != fmt]
    return f"{', '.join(others[:-1])} or {others[-1]} converts it"


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    source_format: str | None,
    target_format: str,
    cell: str | None = None,
    gru: str | None = None,
    vocab_from: str | os.PathLike[str] | None = None,
    activation: str | None = None,
    onnx_form: str = "fused",
) -> Converted:
    """Convert the file ``src`` (``source_format``; None: what its tensors say) into
    ``dst`` as ``target_format``, exactly: what ``rosetta-rnn convert`` does. ``cell``, ``gru``
    and ``activation`` are checked against the file (see ``read``); ``vocab_from`` names a file
    whose vocabulary a file without one takes. ``dst`` is written atomically, or not at all."""
    src_path, dst_path = Path(src), Path(dst)
    if target_format not in FORMATS:
        raise ConversionError(f"unknown format {target_format!r}; choose from {', '.join(FORMATS)}")
    if source_format is not None and source_format not in FORMATS:
        raise ConversionError(f"unknown format {source_format!r}; choose from {', '.join(FORMATS)}")
    if target_format == "onnx":
        from .onnx_model import FORMS

        if onnx_form not in FORMS:
            raise ConversionError(
                f"unknown ONNX form {onnx_form!r}; choose from {', '.join(FORMS)}"
            )
    if source_format == target_format != "onnx":
        raise ConversionError(
            f"--from and --to are both {target_format}: nothing to convert; "
            + _others(target_format)
        )
    if not src_path.is_file():
        raise ConversionError(f"file not found: {src_path}")
    if dst_path.exists() and os.path.samefile(src_path, dst_path):
        raise ConversionError(f"{dst_path} is the file being converted; write to another path")
    checkpoint.check_writable(dst_path)
    weights = read(src_path, source_format, cell, gru, activation)
    if weights.fmt == target_format and not (target_format == "onnx" and weights.form != onnx_form):
        raise ConversionError(
            f"{src_path} is already a {target_format} file: nothing to convert; "
            + _others(target_format)
        )
    if vocab_from is not None:
        vocab, token = vocab_of(vocab_from)
        if weights.vocab is not None and (vocab, token) != (weights.vocab, weights.token):
            raise ConversionError(
                f"{src_path} records a vocabulary of its own, which differs from {vocab_from}'s; "
                "drop --vocab-from"
            )
        weights.vocab, weights.token = _check_vocab(
            vocab, token, weights.vocab_size, str(vocab_from)
        )
    if target_format in TORCH_MODULE and weights.layer.cell not in TORCH_GATES:
        raise ConversionError(NO_TORCH_RESET_BEFORE)
    if target_format == "mxnet" and weights.layer.cell not in MXNET_LAYER:
        raise ConversionError(NO_MXNET_RESET_BEFORE)
    if target_format == "d2l-scratch" and weights.layer.cell not in D2L_SCRATCH_LAYER:
        raise ConversionError(NO_SCRATCH_RESET_AFTER)
    if target_format == "onnx":
        weights.form = onnx_form
    notes = write(dst_path, target_format, weights)
    summary = f"wrote {describe(target_format, weights)} to {dst_path}"
    return Converted(
        summary,
        notes,
        str(dst_path),
        layer_name(target_format, weights.layer.cell, weights.activation),
        weights,
    )

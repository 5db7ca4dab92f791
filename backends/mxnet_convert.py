"""MXNet's worker: Gluon's side of ``rosetta-rnn convert --to mxnet`` / ``--from mxnet``.

Imported only in MXNet's environment (MXNet 1.9.1, NumPy 1.23, no ``safetensors`` package).
Between the two markers below is the recipe docs/convert.md shows a Gluon user, verbatim
(tests/test_mxnet_convert.py holds the page to it): d2l's MXNet ``RNNModel``, a safetensors
reader and writer in NumPy alone, and the functions that load a converted file into the model
and save the model's parameters as ``--from mxnet`` reads them. The requests below the recipe
run it: they write a file from a Gluon model, load one into a Gluon model and run it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import nn, rnn

# --- the recipe (docs/convert.md), after its imports: json, mxnet as mx, numpy as np, nn, rnn ---

NAMES = (
    "rnn.l0_i2h_weight",  # (G·H, vocab_size): gates stacked as torch's, GRU r z n, LSTM i f g o
    "rnn.l0_h2h_weight",  # (G·H, num_hiddens)
    "rnn.l0_i2h_bias",  # (G·H,)
    "rnn.l0_h2h_bias",  # (G·H,)
    "dense.weight",  # (vocab_size, num_hiddens)
    "dense.bias",  # (vocab_size,)
)
DTYPES = {"F32": "<f4", "F64": "<f8"}


class RNNModel(nn.Block):
    """d2l's MXNet RNNModel: a recurrent layer (time-major, TNC) and the output layer."""

    def __init__(self, rnn_layer, vocab_size, num_hiddens):
        super().__init__()
        self.rnn = rnn_layer
        self.dense = nn.Dense(vocab_size, flatten=False, in_units=num_hiddens)

    def forward(self, X, state):
        Y, state = self.rnn(X, state)  # X: one-hot (num_steps, batch_size, vocab_size)
        return self.dense(Y), state


def read_safetensors(path):
    """(arrays, metadata) of a safetensors file, with NumPy alone."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    arrays = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        arrays[name] = np.frombuffer(data[start:end], DTYPES[t["dtype"]]).reshape(t["shape"])
    return arrays, metadata


def write_safetensors(path, arrays, metadata=None):
    """A safetensors file of float32 or float64 NumPy arrays, with NumPy alone."""
    codes = {"float32": "F32", "float64": "F64"}
    header, offset = {}, 0
    for name, a in arrays.items():
        end = offset + a.nbytes
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape)}
        header[name]["data_offsets"] = [offset, end]
        offset = end
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for a in arrays.values():
            f.write(a.astype(DTYPES[codes[a.dtype.name]]).tobytes())


def load_safetensors(net, path):
    """Set an initialized ``net``'s parameters from a file ``rosetta-rnn convert --to mxnet``
    wrote, casting ``net`` to the file's dtype; -> the file's metadata."""
    arrays, metadata = read_safetensors(path)
    if set(arrays) != set(NAMES):
        raise ValueError(f"{path} holds {sorted(arrays)}, not {list(NAMES)}")
    net.cast(arrays["dense.weight"].dtype.name)  # Gluon initializes in float32 only
    for name in NAMES:
        block, attr = name.split(".")  # rnn.l0_i2h_weight is net.rnn.l0_i2h_weight
        param, array = getattr(getattr(net, block), attr), arrays[name]
        if param.shape != array.shape:
            raise ValueError(f"{name} is {array.shape} in {path}, {param.shape} in the model")
        param.set_data(array)
    return metadata


def save_safetensors(net, path, activation=None):
    """Write ``net``'s parameters as ``rosetta-rnn convert --from mxnet`` reads them; an
    ``rnn.RNN``'s ``activation`` (relu unless built with tanh) goes in the metadata."""
    arrays = {}
    for name in NAMES:
        block, attr = name.split(".")
        arrays[name] = getattr(getattr(net, block), attr).data().asnumpy()
    write_safetensors(path, arrays, {"activation": activation} if activation else None)


def params_to_safetensors(params, path, activation=None):
    """A ``.params`` file of ``net.save_parameters(params)`` as safetensors, under its own names
    (rnn._unfused.0.i2h_weight ... dense.bias), which ``--from mxnet`` reads too."""
    load = mx.npx.load if mx.util.is_np_array() else mx.nd.load
    arrays = {name: a.asnumpy() for name, a in load(params).items()}
    write_safetensors(path, arrays, {"activation": activation} if activation else None)


# --- end of the recipe ---

LAYERS = {"rnn": "RNN", "gru/reset-after": "GRU", "lstm": "LSTM"}
"""core's cells -> Gluon's layers (Gluon's GRU is the reset-after one)."""


def build(cell: str, vocab_size: int, num_hiddens: int, activation: str = "tanh") -> Any:
    """``RNNModel`` around Gluon's layer for ``cell``, initialized (float32), as the recipe
    builds it; ``activation`` is the RNN's, always passed (Gluon's default is relu)."""
    if cell not in LAYERS:
        raise ValueError(f"Gluon has no layer for {cell}; it has {', '.join(LAYERS)}")
    kind = {"activation": activation} if cell == "rnn" else {}
    layer = getattr(rnn, LAYERS[cell])(num_hiddens, input_size=vocab_size, **kind)
    net = RNNModel(layer, vocab_size, num_hiddens)
    net.initialize()
    return net


def _set(net: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Give ``net`` the weights ``arrays`` (``NAMES``), as training would have: Gluon's own
    parameters, set through Gluon."""
    net.cast(arrays["dense.weight"].dtype.name)
    for name in NAMES:
        block, attr = name.split(".")
        getattr(getattr(net, block), attr).set_data(np.asarray(arrays[name]))


def _sizes(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(vocab_size, num_hiddens) of Gluon parameters."""
    vocab_size, num_hiddens = np.shape(arrays["dense.weight"])
    return int(vocab_size), int(num_hiddens)


def gluon_save(
    cell: str, arrays: Mapping[str, np.ndarray], path: str, activation: str | None = None
) -> None:
    """A Gluon model of ``cell`` holding ``arrays`` (``NAMES``), written to ``path`` with the
    recipe's ``save_safetensors`` (``activation`` recorded for an RNN)."""
    net = build(cell, *_sizes(arrays), activation or "relu")
    _set(net, arrays)
    save_safetensors(net, path, activation if cell == "rnn" else None)


def gluon_save_parameters(
    cell: str,
    arrays: Mapping[str, np.ndarray],
    params: str,
    path: str,
    activation: str | None = None,
) -> list[str]:
    """A Gluon model of ``cell`` holding ``arrays``, saved by Gluon's own ``save_parameters``
    to ``params``, then made safetensors at ``path`` by the recipe's ``params_to_safetensors``;
    -> the names ``save_parameters`` wrote."""
    net = build(cell, *_sizes(arrays), activation or "relu")
    _set(net, arrays)
    net.save_parameters(params)
    params_to_safetensors(params, path, activation if cell == "rnn" else None)
    return sorted(read_safetensors(path)[0])


def gluon_run(cell: str, path: str, inputs: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
    """The recipe's way to run a converted file: build ``RNNModel`` around Gluon's layer (an
    RNN's activation from the file's metadata), ``load_safetensors``, and run it on one-hot
    ``inputs`` (T, B) from ``state`` (B, H), or the LSTM's (H, C): (logits (T, B, V), the final
    state)."""
    arrays, metadata = read_safetensors(path)
    activation = metadata.get("activation", "relu")
    net = build(cell, *_sizes(arrays), activation)
    load_safetensors(net, path)
    dtype = arrays["dense.weight"].dtype.name
    array = mx.np.array if mx.util.is_np_array() else mx.nd.array
    vocab_size = _sizes(arrays)[0]
    X = array(np.eye(vocab_size, dtype=dtype)[np.asarray(inputs)], dtype=dtype)
    parts = state if isinstance(state, tuple) else (state,)
    begin = [array(np.asarray(p)[None], dtype=dtype) for p in parts]
    logits, final = net(X, begin)
    out = tuple(s.asnumpy()[0] for s in final)
    return logits.asnumpy(), out if cell == "lstm" else out[0]


def describe() -> dict[str, Any]:
    """What the worker runs: MXNet's and NumPy's versions."""
    return {"framework": "mxnet", "version": mx.__version__, "numpy": np.__version__}


HANDLERS: dict[str, Callable[..., Any]] = {
    "gluon_save": gluon_save,
    "gluon_save_parameters": gluon_save_parameters,
    "gluon_run": gluon_run,
}

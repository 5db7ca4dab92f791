"""MXNet in its own environment: the tensor interface on ``mxnet.np``/``npx``, and the
requests its worker serves (``backends.worker``).

Imported only there: it imports MXNet 1.9.1 and that environment's NumPy 1.23. Its requests
take and return NumPy arrays, so the main process sends the parameters, the inputs and the
state and gets back the loss, the gradients and the final state that core's math computes in
MXNet: ``forward_loss``, ``value_and_grad`` (MXNet's ``autograd`` over core's forward, or
core's BPTT on MXNet arrays); and ``gluon_forward``, Gluon's own layers, MXNet's oracles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, npx
from mxnet import np as mnp

from rosetta_rnn.core import cells
from rosetta_rnn.core.ops import python_scan

npx.set_np()  # the worker is MXNet's process: its NumPy front end throughout

NAME = "mxnet"
GRAD_MODES = ("autograd", "bptt")


class MxnetOps:
    """The tensor interface over ``mxnet.np`` arrays on the CPU."""

    name = NAME

    def __init__(self, dtype: str = "float32", device: str = "cpu") -> None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
        self.dtype, self.device = dtype, device
        self._ctx = mx.cpu()

    def asarray(self, x: np.ndarray) -> Any:
        x = np.asarray(x)
        dtype = self.dtype if np.issubdtype(x.dtype, np.floating) else "int64"
        return mnp.array(x, dtype=dtype, ctx=self._ctx)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)

    def zeros(self, shape: Sequence[int]) -> Any:
        return mnp.zeros(tuple(shape), dtype=self.dtype, ctx=self._ctx)

    def cast(self, x: Any) -> Any:
        return x.astype(self.dtype)

    def matmul(self, a: Any, b: Any) -> Any:
        return mnp.matmul(a, b)

    def one_hot(self, indices: Any, depth: int) -> Any:
        return npx.one_hot(indices, depth, dtype=self.dtype)

    def gather(self, table: Any, indices: Any) -> Any:
        return mnp.take(table, indices, axis=0)

    def tanh(self, x: Any) -> Any:
        return mnp.tanh(x)

    def relu(self, x: Any) -> Any:
        return npx.relu(x)

    def exp(self, x: Any) -> Any:
        return mnp.exp(x)

    def log(self, x: Any) -> Any:
        return mnp.log(x)

    def sqrt(self, x: Any) -> Any:
        return mnp.sqrt(x)

    def minimum(self, a: Any, b: Any) -> Any:
        return mnp.minimum(a, b).astype(self.dtype)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return mnp.max(x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        return mnp.sum(x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return mnp.argmax(x, axis=axis)  # the first index of equal maxima, as NumPy's

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return mnp.reshape(x, tuple(shape))

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        return mnp.transpose(x, None if axes is None else tuple(axes))

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return mnp.stack(list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return mnp.concatenate(list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        return x.detach()

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        return python_scan(self, fn, carry, xs, reverse)


def _state(ops: MxnetOps, state: Any) -> Any:
    return tuple(ops.asarray(s) for s in state) if isinstance(state, tuple) else ops.asarray(state)


def _host(ops: MxnetOps, value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_host(ops, v) for v in value)
    return ops.to_numpy(value)


def forward_loss(
    params: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    labels: np.ndarray,
    state: Any,
    dtype: str = "float32",
    activation: str = "tanh",
    cell: str | None = None,
) -> tuple[np.ndarray, Any]:
    """core's ``any_forward_loss`` in MXNet: (mean loss, final state)."""
    ops = MxnetOps(dtype)
    P = {k: ops.asarray(v) for k, v in params.items()}
    loss, final = cells.any_forward_loss(
        ops, P, ops.asarray(inputs), ops.asarray(labels), _state(ops, state), activation, cell
    )
    return ops.to_numpy(loss), _host(ops, final)


def value_and_grad(
    params: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    labels: np.ndarray,
    state: Any,
    dtype: str = "float32",
    activation: str = "tanh",
    cell: str | None = None,
    grad: str = "autograd",
) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """(loss, gradients, final state): MXNet's ``autograd`` over core's forward
    (``attach_grad``, ``autograd.record``, ``backward``), or core's BPTT on MXNet arrays."""
    if grad not in GRAD_MODES:
        raise ValueError(f"MXNet's gradient engines are {', '.join(GRAD_MODES)}, not {grad!r}")
    ops = MxnetOps(dtype)
    P = {k: ops.asarray(v) for k, v in params.items()}
    X, Y, S = ops.asarray(inputs), ops.asarray(labels), _state(ops, state)
    if grad == "bptt":
        loss, grads, final = cells.bptt_value_and_grad(ops, activation, cell)(P, X, Y, S)
        return ops.to_numpy(loss), {k: ops.to_numpy(g) for k, g in grads.items()}, _host(ops, final)
    for p in P.values():
        p.attach_grad()
    with autograd.record():
        loss, final = cells.any_forward_loss(ops, P, X, Y, S, activation, cell)
    loss.backward()
    grads = {k: ops.to_numpy(p.grad) for k, p in P.items()}
    return ops.to_numpy(loss), grads, _host(ops, final)


GLUON_LAYERS = {"rnn": "RNN", "gru/reset-after": "GRU", "lstm": "LSTM"}
"""core's cells Gluon has a layer for: its GRU is the reset-after one, as torch's and cuDNN's."""
GLUON_NAMES = {
    "i2h_weight": "weight_ih_l0",
    "h2h_weight": "weight_hh_l0",
    "i2h_bias": "bias_ih_l0",
    "h2h_bias": "bias_hh_l0",
}
"""Gluon's names of a one-layer recurrent layer's parameters -> torch's for the same array:
the same shapes, (G·H, inputs) and (G·H, H), gates stacked in the same order."""


def gluon_forward(
    cell: str,
    weights: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    state: Any,
    dtype: str = "float32",
    activation: str = "tanh",
) -> tuple[np.ndarray, Any]:
    """Gluon's own layer (``rnn.RNN``/``GRU``/``LSTM``, time-major ``TNC``) on one-hot
    ``inputs``, from ``state``, its parameters set from ``weights`` in torch's layout and names
    (``weight_ih_l0`` ...): (the hidden states (T, B, H), the final state). ``activation`` is
    the RNN's, passed to the layer: Gluon's ``rnn.RNN`` defaults to ReLU, not tanh."""
    from mxnet.gluon import rnn

    if cell not in GLUON_LAYERS:
        raise ValueError(f"Gluon has no layer for {cell}; it has {', '.join(GLUON_LAYERS)}")
    num_hiddens = int(weights["weight_hh_l0"].shape[1])
    vocab_size = int(weights["weight_ih_l0"].shape[1])
    kind = {"activation": activation} if cell == "rnn" else {}
    layer = getattr(rnn, GLUON_LAYERS[cell])(
        num_hiddens, input_size=vocab_size, layout="TNC", **kind
    )
    layer.initialize()
    layer.cast(dtype)  # Gluon's initialisers draw float32 only; the values are replaced below
    for name, param in layer.collect_params().items():
        param.set_data(mnp.array(weights[GLUON_NAMES[name.split("_l0_")[1]]], dtype=dtype))
    ops = MxnetOps(dtype)
    x = ops.one_hot(ops.asarray(inputs), vocab_size)
    begin = [s[None] for s in _state(ops, state)] if cell == "lstm" else [ops.asarray(state)[None]]
    Hs, final = layer(x, begin)
    out = tuple(ops.to_numpy(s[0]) for s in final)
    return ops.to_numpy(Hs), out if cell == "lstm" else out[0]


def describe() -> dict[str, Any]:
    """What the worker runs: MXNet's and NumPy's versions and MXNet's build features."""
    features = mx.runtime.Features()
    wanted = ("MKLDNN", "CUDA", "CUDNN", "OPENMP", "BLAS_OPEN", "BLAS_MKL", "INT64_TENSOR_SIZE")
    return {
        "framework": NAME,
        "version": mx.__version__,
        "numpy": np.__version__,
        "features": ",".join(name for name in wanted if features.is_enabled(name)),
        "gpus": mx.context.num_gpus(),
    }


HANDLERS: dict[str, Callable[..., Any]] = {
    "describe": describe,
    "forward_loss": forward_loss,
    "value_and_grad": value_and_grad,
    "gluon_forward": gluon_forward,
}


def _more_handlers() -> None:
    """The requests of the bench's Gluon peers and verify's Gluon subjects, served beside these."""
    from rosetta_rnn.backends import mxnet_peers, mxnet_subjects

    for module in (mxnet_peers, mxnet_subjects):
        clash = set(module.HANDLERS) & set(HANDLERS)
        assert not clash, f"{module.__name__} redefines {clash}"
        HANDLERS.update(module.HANDLERS)


_more_handlers()

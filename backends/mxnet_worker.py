"""MXNet in its own environment: the tensor interface on ``mxnet.np``/``npx``, and the
requests its worker serves (``backends.worker``).

Imported only there: it imports MXNet 1.9.1 and that environment's NumPy 1.23. Two kinds of
request:

- on NumPy arrays, whole: ``forward_loss``, ``value_and_grad`` (MXNet's ``autograd`` over
  core's forward, or core's BPTT on MXNet arrays) and ``gluon_forward`` (Gluon's own layers,
  MXNet's oracles);
- on arrays kept here (``backends.remote``), for the registered ``mxnet`` backend
  (``backends.mxnet``): core's operations one at a time, and the training step, the forward
  pass and decoding as one request each. ``hybridize`` runs the step's and the forward's
  math as a Gluon ``HybridBlock``: core's functions traced once per shape into MXNet's
  symbolic graph (``HybridOps``), then run as one cached operator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, npx
from mxnet import np as mnp

from rosetta_rnn.backends import remote
from rosetta_rnn.core import cells, model, sampling
from rosetta_rnn.core.ops import python_scan

npx.set_np()  # the worker is MXNet's process: its NumPy front end throughout

NAME = "mxnet"
GRAD_MODES = ("autograd", "bptt")
COMPILE_MODES = ("hybridize", "eager")


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


class Traced:
    """A symbol of a graph being traced, and the shapes of the graph's inputs, which fix its
    own: core's math asks arrays for ``.shape`` (MXNet's symbols have none), and the answer is
    MXNet's shape inference over the graph so far. Arithmetic, comparisons and basic indexing
    give more of them."""

    __slots__ = ("known", "sym")

    def __init__(self, sym: Any, known: Mapping[str, tuple[int, ...]]) -> None:
        self.sym, self.known = sym, known

    @property
    def shape(self) -> tuple[int, ...]:
        inputs = set(self.sym.list_arguments())
        _, out, _ = self.sym.infer_shape_partial(
            **{k: v for k, v in self.known.items() if k in inputs}
        )
        return tuple(out[0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> Traced:
        if isinstance(key, tuple) and key and key[-1] is Ellipsis:
            key = key[:-1]  # a symbol takes integers and slices, not ``...``
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        return Traced(self.sym[key], self.known)

    def astype(self, dtype: str) -> Traced:
        return Traced(self.sym.astype(dtype), self.known)


def _symbol(x: Any) -> Any:
    if isinstance(x, Traced):
        return x.sym
    if isinstance(x, list | tuple):
        return [_symbol(v) for v in x]
    return x


def _traced_operator(name: str) -> Callable[..., Traced]:
    def method(self: Traced, *args: Any) -> Traced:
        return Traced(getattr(self.sym, name)(*map(_symbol, args)), self.known)

    method.__name__ = name
    return method


for _name in remote.OPERATORS:
    if _name != "__getitem__":
        setattr(Traced, _name, _traced_operator(_name))


class HybridOps(MxnetOps):
    """The tensor interface while a ``HybridBlock`` traces core's math: the same MXNet
    operations, on the symbol front end ``F`` (``F.np``/``F.npx``), on ``Traced`` symbols."""

    def __init__(self, F: Any, dtype: str, known: Mapping[str, tuple[int, ...]]) -> None:
        super().__init__(dtype)
        self._np, self._npx, self._F, self._known = F.np, F.npx, F, known

    def _traced(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Traced:
        return Traced(fn(*map(_symbol, args), **kwargs), self._known)

    def zeros(self, shape: Sequence[int]) -> Any:
        return self._traced(self._np.zeros, tuple(shape), dtype=self.dtype)

    def cast(self, x: Any) -> Any:
        return x.astype(self.dtype)

    def matmul(self, a: Any, b: Any) -> Any:
        return self._traced(self._np.matmul, a, b)

    def one_hot(self, indices: Any, depth: int) -> Any:
        return self._traced(self._npx.one_hot, indices, depth, dtype=self.dtype)

    def gather(self, table: Any, indices: Any) -> Any:
        return self._traced(self._np.take, table, indices, axis=0)

    def tanh(self, x: Any) -> Any:
        return self._traced(self._np.tanh, x)

    def relu(self, x: Any) -> Any:
        return self._traced(self._npx.relu, x)

    def exp(self, x: Any) -> Any:
        return self._traced(self._np.exp, x)

    def log(self, x: Any) -> Any:
        return self._traced(self._np.log, x)

    def sqrt(self, x: Any) -> Any:
        return self._traced(self._np.sqrt, x)

    def minimum(self, a: Any, b: Any) -> Any:
        return self._traced(self._np.minimum, a, b).astype(self.dtype)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self._traced(self._np.max, x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        return self._traced(self._np.sum, x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self._traced(self._np.argmax, x, axis=axis)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self._traced(self._np.reshape, x, tuple(shape))

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        return self._traced(self._np.transpose, x, None if axes is None else tuple(axes))

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self._traced(self._np.stack, list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self._traced(self._np.concatenate, list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        # the symbol front end's stop_gradient is a legacy operator: it takes legacy symbols
        return self._traced(lambda s: self._F.stop_gradient(s.as_nd_ndarray()).as_np_ndarray(), x)


class _Program(gluon.HybridBlock):
    """``body(ops, *inputs) -> outputs`` (lists of arrays) as a Gluon block: hybridized, core's
    math is traced once for the inputs' shapes and runs as MXNet's cached graph."""

    def __init__(self, body: Callable[..., list[Any]], shapes: list[tuple[int, ...]], dtype: str):
        super().__init__()
        self._body, self._shapes, self._dtype = body, shapes, dtype

    def hybrid_forward(self, F: Any, *inputs: Any) -> Any:
        known = {x.name: shape for x, shape in zip(inputs, self._shapes, strict=True)}
        ops = HybridOps(F, self._dtype, known)
        out = self._body(ops, *(Traced(x, known) for x in inputs))
        return tuple(_symbol(y) for y in out)


_PROGRAMS: OrderedDict[tuple[Any, ...], _Program] = OrderedDict()
KEEP_PROGRAMS = 32
"""The hybridized blocks kept, the least recently used dropped first: each holds MXNet's
memory for its shapes (``static_alloc``), and a sweep of shapes would otherwise keep all."""


def _run(key: tuple[Any, ...], body: Callable[..., list[Any]], dtype: str, *inputs: Any) -> Any:
    """``body`` on ``inputs`` as a hybridized block, made once per key and input shapes."""
    shapes = [tuple(x.shape) for x in inputs]
    full = (*key, dtype, tuple(shapes), tuple(str(x.dtype) for x in inputs))
    if full not in _PROGRAMS:
        block = _Program(body, shapes, dtype)
        block.hybridize(static_alloc=True, static_shape=True)
        _PROGRAMS[full] = block
        while len(_PROGRAMS) > KEEP_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(full)
    out = _PROGRAMS[full](*inputs)
    return list(out) if isinstance(out, list | tuple) else [out]


def _parts(state: Any) -> list[Any]:
    return list(state) if isinstance(state, tuple) else [state]


def _whole(parts: Sequence[Any]) -> Any:
    return tuple(parts) if len(parts) > 1 else parts[0]


def _hybridized(
    key: tuple[Any, ...],
    compute: Callable[..., list[Any]],
    dtype: str,
    names: Sequence[str],
    params: Mapping[str, Any],
    inputs: Any,
    labels: Any,
    state: Any,
) -> list[Any]:
    """``compute(ops, params, inputs, labels, state) -> outputs`` as a hybridized block
    (``_run``): the block's inputs are the arrays flat (inputs, labels, the state's parts, the
    parameters in ``names``' order), put back together inside it. ``key`` names what
    ``compute`` does (its kind, the names, the activation, the cell)."""
    k = len(_parts(state))

    def body(h_ops: Any, X: Any, Y: Any, *rest: Any) -> list[Any]:
        P = dict(zip(names, rest[k:], strict=True))
        return compute(h_ops, P, X, Y, _whole(list(rest[:k])))

    flat = (inputs, labels, *_parts(state), *(params[n] for n in names))
    return _run(key, body, dtype, *flat)


def _loss_and_state(
    ops: Any,
    names: Sequence[str],
    params: Mapping[str, Any],
    inputs: Any,
    labels: Any,
    state: Any,
    activation: str,
    cell: str | None,
    mode: str,
) -> tuple[Any, Any]:
    """core's forward loss: op by op (``eager``), or as a hybridized block."""
    if mode == "eager":
        return cells.any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    def compute(h_ops: Any, P: Any, X: Any, Y: Any, S: Any) -> list[Any]:
        loss, final = cells.any_forward_loss(h_ops, P, X, Y, S, activation, cell)
        return [loss, *_parts(final)]

    key = ("forward", tuple(names), activation, cell)
    out = _hybridized(key, compute, ops.dtype, names, params, inputs, labels, state)
    return out[0], _whole(out[1:])


def _value_and_grad(
    ops: MxnetOps,
    params: Mapping[str, Any],
    inputs: Any,
    labels: Any,
    state: Any,
    activation: str,
    cell: str | None,
    grad: str,
    mode: str,
) -> tuple[Any, dict[str, Any], Any]:
    """(loss, gradients, final state cut from the graph) by ``grad`` in ``mode``."""
    if grad not in GRAD_MODES or mode not in COMPILE_MODES:
        raise ValueError(
            f"MXNet has --grad {'/'.join(GRAD_MODES)} and --compile "
            f"{'/'.join(COMPILE_MODES)}, not {grad}/{mode}"
        )
    names = sorted(params)
    if grad == "bptt" and mode == "eager":
        return cells.bptt_value_and_grad(ops, activation, cell)(dict(params), inputs, labels, state)
    if grad == "bptt":

        def compute(h_ops: Any, P: Any, X: Any, Y: Any, S: Any) -> list[Any]:
            loss, grads, final = cells.bptt_value_and_grad(h_ops, activation, cell)(P, X, Y, S)
            return [loss, *_parts(final), *(grads[n] for n in names)]

        key = ("bptt", tuple(names), activation, cell)
        out = _hybridized(key, compute, ops.dtype, names, params, inputs, labels, state)
        k = len(_parts(state))
        return out[0], dict(zip(names, out[1 + k :], strict=True)), _whole(out[1 : 1 + k])
    leaves = {n: params[n].copy() for n in names}  # a leaf of its own: the caller's keeps no grad
    for p in leaves.values():
        p.attach_grad()
    with autograd.record():
        loss, final = _loss_and_state(
            ops, names, leaves, inputs, labels, state, activation, cell, mode
        )
    loss.backward()
    final = tuple(s.detach() for s in final) if isinstance(final, tuple) else final.detach()
    return loss.detach(), {n: leaves[n].grad for n in names}, final


STORE = remote.Store(lambda x: isinstance(x, mnp.ndarray), lambda x: str(x.dtype))
"""The arrays the main process's ``mxnet`` backend holds references to."""
_OPS: dict[str, MxnetOps] = {}


def _ops(dtype: str) -> MxnetOps:
    if dtype not in _OPS:
        _OPS[dtype] = MxnetOps(dtype)
    return _OPS[dtype]


def _wait(value: Any) -> Any:
    """``value`` once MXNet's engine has computed it (it runs operations asynchronously; a
    request answers with finished arrays, so that the main process times whole steps)."""
    mx.nd.waitall()
    return value


def run_grads(
    dtype: str,
    grad: str,
    mode: str,
    activation: str,
    cell: str | None,
    params: Any,
    inputs: Any,
    labels: Any,
    state: Any,
) -> Any:
    """(loss, gradients, final state) of arrays held here, as references."""
    P, X, Y, S = STORE.resolve((params, inputs, labels, state))
    out = _value_and_grad(_ops(dtype), P, X, Y, S, activation, cell, grad, mode)
    return STORE.publish(_wait(out))


def run_step(
    dtype: str,
    grad: str,
    mode: str,
    activation: str,
    cell: str | None,
    params: Any,
    inputs: Any,
    labels: Any,
    state: Any,
    lr: float,
    theta: float,
) -> Any:
    """core's training step (gradients, d2l's clipping, SGD) on arrays held here:
    (new parameters, final state, loss, gradient norm), as references."""
    ops = _ops(dtype)
    P, X, Y, S = STORE.resolve((params, inputs, labels, state))

    def value_and_grad(p: Any, x: Any, y: Any, s: Any) -> Any:
        return _value_and_grad(ops, p, x, y, s, activation, cell, grad, mode)

    out = model.train_step(ops, value_and_grad, P, X, Y, S, lr, theta)
    return STORE.publish(_wait(out))


def run_forward(
    dtype: str,
    mode: str,
    activation: str,
    cell: str | None,
    params: Any,
    inputs: Any,
    labels: Any,
    state: Any,
) -> Any:
    """(mean loss, final state) of arrays held here, without gradients, as references."""
    P, X, Y, S = STORE.resolve((params, inputs, labels, state))
    ops = _ops(dtype)
    out = _loss_and_state(ops, sorted(P), P, X, Y, S, activation, cell, mode)
    return STORE.publish(_wait(out))


def run_decode(
    dtype: str,
    params: Any,
    state: Any,
    first: int,
    num_preds: int,
    temperature: float | None,
    uniforms: np.ndarray | None,
    activation: str,
    cell: str | None,
) -> np.ndarray:
    """core's host loop run here, a token at a time from ``first``: each token chosen by
    ``next_token``'s rule from the uniforms core drew (temperature) or greedily."""
    ops = _ops(dtype)
    P, S = STORE.resolve((params, state))
    drawn = sampling.Drawn(uniforms) if temperature and uniforms is not None else None
    tokens, token = np.empty(num_preds, dtype=np.int64), int(first)
    for i in range(num_preds):
        x = ops.asarray(np.asarray([[token]], dtype=np.int64))
        Hs, S = cells.any_forward(ops, P, x, S, activation, cell)
        token = sampling.next_token(ops, model.output_layer(ops, P, Hs), temperature, drawn)
        tokens[i] = token
    return tokens


def sync() -> None:
    mx.nd.waitall()


def programs(forget: bool = False) -> list[str]:
    """The hybridized blocks made so far, each by what it computes, the model and the dtype:
    what says that ``hybridize`` ran. ``forget``: then drop them (each is made again when next
    asked for)."""
    made = [
        f"{kind} {cell or 'named'} {activation} {dtype}"
        for kind, _, activation, cell, dtype, *_ in _PROGRAMS
    ]
    if forget:
        _PROGRAMS.clear()
    return made


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


def _gluon_layer(cell: str, weights: Mapping[str, np.ndarray], dtype: str, activation: str) -> Any:
    """Gluon's own layer for ``cell`` (time-major ``TNC``), its parameters set from ``weights``
    in torch's layout and names (``weight_ih_l0`` ...)."""
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
    return layer


def _gluon_begin(ops: MxnetOps, cell: str, state: Any) -> list[Any]:
    """Our state as Gluon's begin state: (1, B, H) arrays, two for the LSTM."""
    if cell == "lstm":
        return [s[None] for s in _state(ops, state)]
    return [ops.asarray(state)[None]]


def _gluon_final(ops: MxnetOps, cell: str, final: Sequence[Any]) -> Any:
    out = tuple(ops.to_numpy(s[0]) for s in final)
    return out if cell == "lstm" else out[0]


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
    layer = _gluon_layer(cell, weights, dtype, activation)
    ops = MxnetOps(dtype)
    vocab_size = int(weights["weight_ih_l0"].shape[1])
    x = ops.one_hot(ops.asarray(inputs), vocab_size)
    Hs, final = layer(x, _gluon_begin(ops, cell, state))
    return ops.to_numpy(Hs), _gluon_final(ops, cell, final)


def gluon_language_model(
    cell: str,
    weights: Mapping[str, np.ndarray],
    inputs: np.ndarray,
    labels: np.ndarray,
    state: Any,
    dtype: str = "float32",
    activation: str = "tanh",
) -> dict[str, Any]:
    """Gluon's own language model: the recurrent layer and an ``nn.Dense`` output layer
    (``weights``: torch's state dict of ``nn.RNN``/``GRU``/``LSTM`` + ``nn.Linear``, as
    ``core.convert.to_torch`` names it: ``rnn.weight_ih_l0`` ..., ``linear.weight``,
    ``linear.bias``), the mean of Gluon's ``SoftmaxCrossEntropyLoss`` over every step, and
    MXNet's ``autograd``: the hidden states, the logits (T·B, V), the loss, the final state and
    the gradients under the same names."""
    from mxnet.gluon import loss as gloss
    from mxnet.gluon import nn

    layer = _gluon_layer(
        cell,
        {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("rnn.")},
        dtype,
        activation,
    )
    vocab_size, num_hiddens = (int(n) for n in weights["linear.weight"].shape)
    dense = nn.Dense(vocab_size, in_units=num_hiddens, flatten=False)
    dense.initialize()
    dense.cast(dtype)
    dense.weight.set_data(mnp.array(weights["linear.weight"], dtype=dtype))
    dense.bias.set_data(mnp.array(weights["linear.bias"], dtype=dtype))
    ops = MxnetOps(dtype)
    x = ops.one_hot(ops.asarray(inputs), vocab_size)
    y = ops.asarray(np.asarray(labels).reshape(-1))
    with autograd.record():
        Hs, final = layer(x, _gluon_begin(ops, cell, state))
        logits = dense(Hs.reshape(-1, num_hiddens))
        loss = gloss.SoftmaxCrossEntropyLoss()(logits, y).mean()
    loss.backward()
    grads = {
        f"rnn.{GLUON_NAMES[name.split('_l0_')[1]]}": ops.to_numpy(p.grad())
        for name, p in layer.collect_params().items()
    }
    grads["linear.weight"] = ops.to_numpy(dense.weight.grad())
    grads["linear.bias"] = ops.to_numpy(dense.bias.grad())
    return {
        "hidden": ops.to_numpy(Hs),
        "logits": ops.to_numpy(logits),
        "loss": ops.to_numpy(loss),
        "final": _gluon_final(ops, cell, final),
        "grads": grads,
    }


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
    "gluon_language_model": gluon_language_model,
    **remote.store_handlers(STORE, _ops, lambda x: x.asnumpy()),
    "run_grads": run_grads,
    "run_step": run_step,
    "run_forward": run_forward,
    "run_decode": run_decode,
    "sync": sync,
    "programs": programs,
}


def _more_handlers() -> None:
    """The requests of the bench's Gluon peers, verify's Gluon subjects, convert's Gluon files
    and the guide's MXNet findings, served beside these."""
    from rosetta_rnn.backends import mxnet_convert, mxnet_guide, mxnet_peers, mxnet_subjects

    for module in (mxnet_peers, mxnet_subjects, mxnet_convert, mxnet_guide):
        clash = set(module.HANDLERS) & set(HANDLERS)
        assert not clash, f"{module.__name__} redefines {clash}"
        HANDLERS.update(module.HANDLERS)


_more_handlers()

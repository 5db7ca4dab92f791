"""MXNet's worker: the requests of verify's MXNet/Gluon subjects.

Imported only in MXNet's environment (``backends.mxnet_worker`` serves these beside its own).
The user's file is imported here, never in the main process: ``subject_load`` imports it and
keeps what it names under an id; ``subject_forward`` and ``subject_value_and_grad`` run it on
the check's parameters (NumPy in, NumPy out), MXNet's ``autograd`` giving the gradients;
``subject_close`` forgets it. What the user's object is:

- a Gluon ``Block`` holding one ``rnn.RNN``/``GRU``/``LSTM`` layer and one ``nn.Dense`` (Gluon
  1.9.1's cells do not run on ``mxnet.np`` arrays: said, one line), its parameters set from
  the chapter's through Gluon's layout (torch's: gates stacked r, z, n and i, f, g, o, two
  biases per gate), or a Block whose ``Parameter``\\ s are the chapter's by name
  (``..._W_xz``); called as d2l's MXNet ``RNNModel`` is, ``model(X, state)``, X (batch,
  steps) ids, the state as its ``begin_state`` shapes it;
- a function ``forward(params, X, state) -> (logits, state)`` on ``mxnet.np`` arrays, given
  the parameters in the form the main process sends (a dict in the user's names, or d2l's
  list).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, npx
from mxnet import np as mnp

npx.set_np()

GATES = {"rnn": ("h",), "gru": ("r", "z", "h"), "lstm": ("i", "f", "c", "o")}
"""Our gate names in the order Gluon stacks them (torch's: r, z, n and i, f, g, o)."""
LAYERS = {"RNN": "rnn", "GRU": "gru/reset-after", "LSTM": "lstm"}
CELLS = {"RNNCell": "rnn", "GRUCell": "gru/reset-after", "LSTMCell": "lstm"}
SCRATCH = {
    "lstm": ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o", "W_xc"),
    "gru/reset-before": ("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h"),
    "rnn": ("W_xh", "W_hh", "b_h"),
}
"""A from-scratch Block's model, by the chapter's parameter names it holds (the first found)."""


@dataclass
class Loaded:
    """A user's object kept between requests: a Gluon model or a forward function."""

    obj: Any
    kind: str  # "layer", "scratch" (a model) or "function"
    cell: str = ""  # the model's own cell ("" for a function)
    dtype: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # Gluon's suffix (or our name) -> Param
    dense: Any = None
    takes_state: bool = True
    template: Any = None  # begin_state's shapes: (1, B, H) or (B, H) for each part


_LOADED: dict[str, Loaded] = {}
_ids = itertools.count(1)


# --- loading ------------------------------------------------------------------------------------


def _import(path: str, shown: str) -> Any:
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the file's own imports of its neighbours
    name = f"_rosetta_subject_{next(_ids)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {shown}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ValueError(f"importing {shown} raised {type(e).__name__}: {_line(e)}") from None
    return module


def _line(e: BaseException) -> str:
    """A framework's error as one line: its last line that is not a traceback's frame."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    told = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "[bt]", "Stack"))]
    return (told[-1] if len(lines) > 1 and told else lines[0]) if lines else type(e).__name__


def _pick(module: Any, path: str) -> Any:
    """The one Gluon Block of the module, else its ``forward`` function."""
    blocks = [n for n, v in vars(module).items() if isinstance(v, gluon.Block)]
    if len(blocks) == 1:
        return getattr(module, blocks[0])
    if not blocks and callable(getattr(module, "forward", None)):
        return module.forward
    raise ValueError(
        f"{path} holds {len(blocks)} Gluon Blocks and "
        f"{'a' if hasattr(module, 'forward') else 'no'} forward: name one (FILE.py:NAME)"
    )


def subject_load(path: str, name: str = "", shown: str = "") -> dict[str, Any]:
    """Import ``path`` (``shown``: as the user wrote it) and keep ``name`` in it (a Gluon Block
    or a forward function); returns its id and what it is: kind, cell, dtype, sizes, whether
    it takes a state."""
    module = _import(path, shown or path)
    path = shown or path
    obj: Any = module
    if name:
        for part in name.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{path} has no {name!r}")
            obj = getattr(obj, part)
    else:
        obj = _pick(module, path)
    label = name or getattr(obj, "__name__", type(obj).__name__)
    if isinstance(obj, gluon.Block):
        loaded = _model(obj)
        label = f"mxnet:{name or type(obj).__name__}"
    elif callable(obj):
        loaded = Loaded(obj, "function")
        label = f"mxnet:{getattr(obj, '__name__', label)}"
    else:
        raise ValueError(f"{type(obj).__name__} is not a Gluon Block or a forward function")
    key = str(next(_ids))
    _LOADED[key] = loaded
    info: dict[str, Any] = {"id": key, "kind": loaded.kind, "label": label, "cell": loaded.cell}
    if loaded.kind != "function":
        info.update(dtype=loaded.dtype, takes_state=loaded.takes_state, sizes=_sizes(loaded))
    return info


def subject_close(key: str) -> None:
    _LOADED.pop(key, None)


def _children(block: Any) -> list[Any]:
    out = [block]
    for child in block._children.values():
        out += _children(child)
    return out


def _model(net: Any) -> Loaded:
    """A Gluon model: its recurrent layer and Dense, or the chapter's parameters by
    name; initialised, its deferred shapes settled by one call."""
    blocks = _children(net)
    layers = [b for b in blocks if type(b).__name__ in {**LAYERS, **CELLS}]
    denses = [b for b in blocks if isinstance(b, gluon.nn.Dense)]
    named = dict(net.collect_params().items())
    if len(layers) == 1 and len(denses) == 1:
        layer, dense = layers[0], denses[0]
        kind_name = type(layer).__name__
        if getattr(layer, "_num_layers", 1) != 1 or getattr(layer, "_dir", 1) != 1:
            raise ValueError("the chapter's model has one layer, one direction")
        if getattr(layer, "_layout", "TNC") != "TNC":
            raise ValueError(f"layout={layer._layout!r} layers are not the book's (it runs TNC)")
        mode = getattr(layer, "_mode", "") or f"rnn_{getattr(layer, '_activation', 'tanh')}"
        if kind_name in ("RNN", "RNNCell") and mode != "rnn_tanh":
            raise ValueError(
                f"the chapter's RNN is tanh; this {kind_name} is {mode.removeprefix('rnn_')} "
                f"(Gluon's default: give rnn.{kind_name}(num_hiddens, activation='tanh'))"
            )
        if kind_name in CELLS:
            raise ValueError(
                f"Gluon 1.9.1's recurrent cells ({kind_name} ...) do not run on mxnet.np arrays "
                f"(npx.set_np(), as d2l's MXNet pages run): use the layer, rnn.{kind_name[:-4]}"
            )
        kind = "layer"
        params = {_suffix(n): p for n, p in layer.collect_params().items()}
        loaded = Loaded(net, kind, LAYERS[kind_name], params=params, dense=dense)
    else:
        found = next(
            (c for c, names in SCRATCH.items() if all(_by_suffix(named, n) for n in names)), None
        )
        if found is None or not _by_suffix(named, "W_hq"):
            raise ValueError(
                f"the model holds {len(layers)} Gluon recurrent layers or cells and "
                f"{len(denses)} Dense layers, and no parameters named as the chapter's (W_xh, "
                "W_hh, b_h, W_hq, b_q ...); verify checks a model of one of each"
            )
        loaded = Loaded(net, "scratch", found)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "already initialized": the user's own values stay
        net.initialize(mx.init.Zero(), ctx=mx.cpu())  # values replaced: any dtype
    sig = inspect.signature(net.forward)
    loaded.takes_state = len(sig.parameters) >= 2 or any(
        p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()
    )
    begin = getattr(net, "begin_state", None)
    if loaded.takes_state and callable(begin):
        try:
            loaded.template = [tuple(s.shape) for s in begin(batch_size=1)]
        except Exception:
            loaded.template = None
    if loaded.kind == "scratch":
        ours = [n for n in _scratch_names(loaded.cell) if _by_suffix(named, n)]
        loaded.params = {n: named[_by_suffix(named, n)] for n in ours}
    dtypes = {np.dtype(p.dtype).name for p in named.values()}
    if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
        raise ValueError(
            f"the model's parameters are {', '.join(sorted(dtypes))}; float32 or float64 only"
        )
    loaded.dtype = dtypes.pop()
    if any(p.shape is None or -1 in p.shape or 0 in p.shape for p in named.values()):
        _settle(loaded)  # deferred shapes: one call with the vocabulary's one-hot width
    return loaded


def _scratch_names(cell: str) -> tuple[str, ...]:
    if cell == "lstm":
        return (*SCRATCH["lstm"], "W_hc", "b_c", "W_hq", "b_q")
    return (*SCRATCH[cell], "W_hq", "b_q")


def _suffix(name: str) -> str:
    """Gluon's parameter name without its prefix: ``gru0_l0_i2h_weight`` -> ``i2h_weight``."""
    return "_".join(name.split("_")[-2:])


def _by_suffix(named: Mapping[str, Any], ours: str) -> str:
    hits = [n for n in named if n == ours or n.endswith(f"_{ours}")]
    return hits[0] if len(hits) == 1 else ""


def _sizes(loaded: Loaded) -> dict[str, int]:
    if loaded.kind == "scratch":
        H, V = loaded.params["W_hq"].shape
    else:
        V, H = int(loaded.dense._units), int(loaded.params["h2h_weight"].shape[1])
    return {"vocab_size": int(V), "num_hiddens": int(H)}


def _settle(loaded: Loaded) -> None:
    """Gluon's deferred initialisation finished by one call of one token."""
    if loaded.kind == "scratch":
        raise ValueError("the model's parameters have no shapes yet: give them shapes")
    H = int(loaded.params["h2h_weight"].shape[1])
    parts = 2 if loaded.cell == "lstm" else 1
    state = tuple(np.zeros((1, H), dtype=loaded.dtype) for _ in range(parts))
    _call_model(loaded, np.zeros((1, 1), dtype=np.int64), state if parts == 2 else state[0])


# --- parameters: the chapter's to Gluon's layout, and the gradients back ------------------------


def _family(cell: str) -> str:
    return cell.split("/")[0]


def _gluon_params(cell: str, P: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our parameters in Gluon's layout: i2h_weight = [W_x·]ᵀ stacked in Gluon's gate order,
    h2h_weight likewise; i2h_bias our biases, h2h_bias zero (a reset-after GRU's b_hh in its
    candidate rows); d2l's reset-before GRU goes in with b_h as the candidate's input bias."""
    gates = GATES[_family(cell)]
    W_x = np.concatenate([P[f"W_x{g}"] for g in gates], axis=1).T
    W_h = np.concatenate([P[f"W_h{g}"] for g in gates], axis=1).T
    if cell == "gru/reset-after":
        b_x = np.concatenate([P["b_r"], P["b_z"], P["b_xh"]])
        zeros = np.zeros_like(P["b_hh"])
        b_h = np.concatenate([zeros, zeros, P["b_hh"]])
    else:
        b_x = np.concatenate([P[f"b_{g}"] for g in gates])
        b_h = np.zeros_like(b_x)
    return {"i2h_weight": W_x, "h2h_weight": W_h, "i2h_bias": b_x, "h2h_bias": b_h}


def _our_grads(cell: str, G: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The adjoint of ``_gluon_params``: Gluon's gradients as ours (each of ours is one block
    of Gluon's arrays, so its gradient is that block's)."""
    gates = GATES[_family(cell)]
    out: dict[str, np.ndarray] = {}
    for g, W_x, W_h, b in zip(
        gates,
        np.split(G["i2h_weight"].T, len(gates), axis=1),
        np.split(G["h2h_weight"].T, len(gates), axis=1),
        np.split(G["i2h_bias"], len(gates)),
        strict=True,
    ):
        out[f"W_x{g}"], out[f"W_h{g}"] = W_x, W_h
        out["b_xh" if (cell == "gru/reset-after" and g == "h") else f"b_{g}"] = b
    if cell == "gru/reset-after":
        out["b_hh"] = np.split(G["h2h_bias"], 3)[2]
    return out


def _set(loaded: Loaded, cell: str, P: Mapping[str, np.ndarray]) -> None:
    """Load our parameters into the model (its own values replaced)."""
    if loaded.kind == "scratch":
        arrays = dict(P)
    else:
        arrays = _gluon_params(cell, P)
        dense = loaded.dense
        dense.weight.set_data(mnp.array(P["W_hq"].T, dtype=loaded.dtype))
        if dense.bias is not None:
            dense.bias.set_data(mnp.array(P["b_q"], dtype=loaded.dtype))
    for name, param in loaded.params.items():
        if name not in arrays:
            raise ValueError(f"the model's {name} has no place in a {cell} model")
        param.set_data(mnp.array(arrays[name], dtype=loaded.dtype))


def _grads(loaded: Loaded, cell: str) -> dict[str, np.ndarray]:
    G = {n: p.grad().asnumpy() for n, p in loaded.params.items()}
    if loaded.kind == "scratch":
        return G
    out = _our_grads(cell, G)
    out["W_hq"] = loaded.dense.weight.grad().asnumpy().T
    dense = loaded.dense
    if dense.bias is not None:
        out["b_q"] = dense.bias.grad().asnumpy()
    else:  # a Dense without a bias: b_q reaches nothing
        out["b_q"] = np.zeros(int(dense._units), dtype=loaded.dtype)
    return out


# --- calling ------------------------------------------------------------------------------------


def _mx(value: Any, dtype: str) -> Any:
    """NumPy (in lists, tuples, dicts) as ``mxnet.np``: floats in ``dtype``, ids as int64."""
    if isinstance(value, np.ndarray):
        kind = dtype if value.dtype.kind == "f" else "int64"
        return mnp.array(value, dtype=kind, ctx=mx.cpu())
    if isinstance(value, (list, tuple)):
        return type(value)(_mx(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _mx(v, dtype) for k, v in value.items()}
    return value


def _host(value: Any, what: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return type(value)(_host(v, what) for v in value)
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"the subject returned a {type(value).__name__} as its {what}")


def _model_state(loaded: Loaded, state: Any) -> Any:
    """Our state (H, or the LSTM's (H, C), each (batch, hiddens)) as the model takes it: the
    shapes of its ``begin_state`` (a list of (1, B, H) for a Gluon layer), else Gluon's."""
    parts = list(state) if isinstance(state, (tuple, list)) else [state]
    if loaded.template is not None:
        ranks = [len(s) for s in loaded.template]
    else:
        ranks = [3 if loaded.kind == "layer" else 2] * len(parts)
    if len(ranks) != len(parts):
        raise ValueError(
            f"the model's begin_state has {len(ranks)} parts; a {loaded.cell} state has "
            f"{len(parts)}"
        )
    return [p[None] if r == 3 else p for p, r in zip(parts, ranks, strict=True)]


def _call_model(loaded: Loaded, X: np.ndarray, state: Any) -> tuple[Any, Any]:
    net = loaded.obj
    Xm = mnp.array(X, dtype="int64", ctx=mx.cpu())
    if not loaded.takes_state:
        out = net(Xm)
    else:
        out = net(Xm, _mx(_model_state(loaded, state), loaded.dtype))
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    return out, None


def _run(
    loaded: Loaded, cell: str, params: Any, X: np.ndarray, state: Any, dtype: str
) -> tuple[Any, Any]:
    """(the logits as the subject returns them, its final state), MXNet arrays."""
    try:
        if loaded.kind == "function":
            out = loaded.obj(params, _mx(X, dtype), _mx(state, dtype))
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise ValueError("forward must return (logits, state)")
            return out[0], out[1]
        return _call_model(loaded, X, state)
    except ValueError as e:
        if str(e) == "forward must return (logits, state)":
            raise
        raise ValueError(f"the subject raised ValueError: {_line(e)}") from None
    except Exception as e:
        raise ValueError(f"the subject raised {type(e).__name__}: {_line(e)}") from None


def _time_major(logits: Any, steps: int, batch: int, batch_major: bool) -> Any:
    """(steps · batch, V) rows in time-major order, from (T·B, V), (T, B, V) or (B, T, V)."""
    shape = tuple(int(n) for n in getattr(logits, "shape", ()))
    if len(shape) == 3:
        if batch_major:
            logits = logits.swapaxes(0, 1)
            shape = (shape[1], shape[0], shape[2])
        if shape[:2] != (steps, batch):
            raise ValueError(
                f"the logits are {shape}, not (steps, batch, vocab) = ({steps}, {batch}, V) or "
                "(batch, steps, vocab)"
            )
        return logits.reshape(steps * batch, shape[2])
    if len(shape) != 2 or shape[0] != steps * batch:
        raise ValueError(
            f"the logits are {shape}; expected (steps × batch, vocab) = ({steps * batch}, V), "
            "(steps, batch, vocab) or (batch, steps, vocab)"
        )
    return logits


def _loaded(key: str) -> Loaded:
    if key not in _LOADED:
        raise ValueError(f"no subject {key!r} is loaded in the worker")
    return _LOADED[key]


def subject_forward(
    key: str,
    cell: str,
    params: Any,
    X: np.ndarray,
    state: Any,
    dtype: str,
    batch_major: bool,
) -> tuple[np.ndarray, Any]:
    """(time-major (T·B, V) logits, the subject's final state or None) of the subject on
    ``params`` (a model: ours, by the chapter's names; a function: in its own form)."""
    loaded = _loaded(key)
    steps, batch = (X.shape[1], X.shape[0]) if batch_major else (X.shape[0], X.shape[1])
    if loaded.kind == "function":
        params = _mx(params, dtype)
    else:
        _set(loaded, cell, params)
    logits, final = _run(loaded, cell, params, X, state, dtype)
    logits = _time_major(logits, steps, batch, batch_major)
    return _host(logits, "logits"), _host(final, "state")


def subject_value_and_grad(
    key: str,
    cell: str,
    params: Any,
    X: np.ndarray,
    labels: np.ndarray,
    state: Any,
    dtype: str,
    batch_major: bool,
) -> tuple[np.ndarray, Any, Any]:
    """(the mean cross-entropy of the last ``len(labels)`` rows of the logits, its gradient by
    every parameter (MXNet's autograd; a function's in its own form), the final state)."""
    loaded = _loaded(key)
    steps, batch = (X.shape[1], X.shape[0]) if batch_major else (X.shape[0], X.shape[1])
    Y = mnp.array(labels.reshape(-1), dtype="int64", ctx=mx.cpu())
    if loaded.kind == "function":
        leaves = _mx(params, dtype)
        for leaf in leaves.values() if isinstance(leaves, dict) else leaves:
            leaf.attach_grad()
    else:
        leaves = None
        _set(loaded, cell, params)
    with autograd.record():
        logits, final = _run(loaded, cell, leaves, X, state, dtype)
        logits = _time_major(logits, steps, batch, batch_major)
        seen = logits[steps * batch - int(Y.shape[0]) :]
        z = seen - seen.max(axis=-1, keepdims=True)
        log_probs = z - mnp.log(mnp.exp(z).sum(axis=-1, keepdims=True))
        loss = -npx.pick(log_probs, Y, axis=-1).mean()
    loss.backward()
    if loaded.kind == "function":
        if isinstance(leaves, dict):
            grads: Any = {k: v.grad.asnumpy() for k, v in leaves.items()}
        else:
            grads = [v.grad.asnumpy() for v in leaves]
    else:
        grads = _grads(loaded, cell)
    return loss.asnumpy(), grads, _host(final, "state")


HANDLERS: dict[str, Callable[..., Any]] = {
    "subject_load": subject_load,
    "subject_forward": subject_forward,
    "subject_value_and_grad": subject_value_and_grad,
    "subject_close": subject_close,
}

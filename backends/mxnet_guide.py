"""MXNet's worker: the requests behind docs/frameworks.md's MXNet column (section 25), each
showing one behaviour of MXNet 1.9.1 as plain values the main process can check.

Imported only in MXNet's environment (MXNet 1.9.1, NumPy 1.23). A request that changes a
process-wide setting (``npx.set_np``) puts it back before it returns.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, npx
from mxnet import np as mnp
from mxnet.gluon import rnn

npx.set_np()


def _line(error: BaseException) -> str:
    """MXNet's messages are C++ tracebacks: the last line that is not a frame."""
    noise = ("File ", "[bt]", "Traceback", "Stack trace")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    told = [ln for ln in lines if not ln.startswith(noise)]
    return (told or lines or [type(error).__name__])[-1]


def _fails(fn: Callable[[], Any]) -> str | None:
    """None if ``fn()`` runs (and its result can be read), else ``Kind: its line``."""
    try:
        out = fn()
        if hasattr(out, "wait_to_read"):
            out.wait_to_read()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {_line(e)}"


def front_end() -> dict[str, Any]:
    """``mxnet.np`` and ``npx``: what ``npx.set_np()`` changes, dtypes, contexts, ``asnumpy``."""
    was_np = npx.is_np_array()
    try:
        npx.reset_np()
        legacy = rnn.RNN(2, input_size=1)
        legacy.initialize()
        before = type(legacy(mx.nd.ones((3, 1, 1)))).__module__
    finally:
        if was_np:
            npx.set_np()
    npx.set_np()
    layer = rnn.RNN(2, input_size=1)
    layer.initialize()
    after = type(layer(mnp.ones((3, 1, 1)))).__module__
    if not was_np:
        npx.reset_np()
    x = mnp.array([1.0, 2.0])
    x64 = mnp.array(np.zeros(2))
    return {
        "gluon returns, without set_np": before,
        "gluon returns, with set_np": after,
        "array from a list": x.dtype.name,
        "array from a float64 NumPy array": x64.dtype.name,
        "zeros": mnp.zeros(2).dtype.name,
        "float32 + float64": (x + x64).dtype.name,
        "float32 * Python float": (x * 2.5).dtype.name,
        "context": str(x.ctx),
        "context is mx.cpu()": x.ctx == mx.cpu(),
        "asnumpy": type(x.asnumpy()).__module__ + "." + type(x.asnumpy()).__name__,
        "seed 0, three normals": (mx.random.seed(0), mnp.random.normal(size=3).asnumpy())[1],
        "argmax of ties": mnp.argmax(mnp.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]), axis=1)
        .asnumpy()
        .tolist(),
    }


def autograd_demo() -> dict[str, Any]:
    """``attach_grad``, ``autograd.record()``, ``backward()``, ``.grad`` on ``sum(w²)``, and
    a hidden state carried from minibatch k to k + 1 of ``h' = tanh(h w)``."""
    w = mnp.array([1.0, 2.0])
    w.attach_grad()
    out: dict[str, Any] = {"grad after attach_grad": w.grad.asnumpy()}
    unrecorded = (w * w).sum()
    out["backward outside record"] = _fails(unrecorded.backward)
    grads = []
    for _ in range(2):
        with autograd.record():
            loss = (w * w).sum()
        loss.backward()
        grads.append(w.grad.asnumpy())
    out["grad after one backward"], out["grad after two (grad_req='write')"] = grads
    v = mnp.array([1.0, 2.0])
    v.attach_grad(grad_req="add")
    for _ in range(2):
        with autograd.record():
            loss = (v * v).sum()
        loss.backward()
    out["grad after two (grad_req='add')"] = v.grad.asnumpy()
    u = mnp.array([1.0, 2.0])
    with autograd.record():
        loss = (u * u).sum()
    out["backward without attach_grad"] = _fails(loss.backward)

    h0 = mnp.array([[1.0]], dtype="float64")
    for case in ("as it is", "detach()", "retain_graph=True"):
        W = mnp.array([[0.5]], dtype="float64")
        W.attach_grad()
        with autograd.record():
            h1 = mnp.tanh(mnp.dot(h0, W))
            loss = h1.sum()
        loss.backward(retain_graph=case == "retain_graph=True")
        with autograd.record():
            h = h1.detach() if case == "detach()" else h1
            loss = mnp.tanh(mnp.dot(h, W)).sum()
        loss.backward()
        out[f"minibatch k + 1 gradient, state {case}"] = float(W.grad.asnumpy()[0, 0])

    p = mnp.array([1.0, 2.0])
    p.attach_grad()
    with autograd.record():
        loss = (p * p).sum()
    loss.backward()
    p[:] = p - 0.25 * p.grad  # d2l's update, outside record
    out["in-place update outside record"] = p.asnumpy()

    def inside() -> None:
        with autograd.record():
            p[:] = p - 1.0

    out["in-place update inside record"] = _fails(inside)
    return out


class _Probe(gluon.HybridBlock):
    """A block whose ``hybrid_forward`` is the function it is given."""

    def __init__(self, body: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.body = body

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.body(F, x)


def hybridize_demo() -> dict[str, Any]:
    """The same bodies run eagerly and hybridized (traced to a symbolic graph)."""
    seen: list[str] = []

    def record(F: Any, x: Any) -> Any:
        seen.append(f"{F.__name__}, {type(x).__module__}.{type(x).__name__}")
        return x

    bodies: dict[str, Callable[[Any, Any], Any]] = {
        "x.shape": lambda F, x: F.np.zeros(x.shape[0]),
        "x[..., 0]": lambda F, x: x[..., 0],
        "x[:, 0]": lambda F, x: x[:, 0],
        "x.detach()": lambda F, x: x.detach(),
        "F.stop_gradient(x)": lambda F, x: F.stop_gradient(x),
        "F.stop_gradient(x.as_nd_ndarray()).as_np_ndarray()": (
            lambda F, x: F.stop_gradient(x.as_nd_ndarray()).as_np_ndarray()
        ),
    }
    out: dict[str, Any] = {}
    for hybrid in (False, True):
        mode = "hybridized" if hybrid else "eager"
        probe = _Probe(record)
        if hybrid:
            probe.hybridize()
        probe(mnp.ones((2, 3)))
        out[f"{mode}: F, x"] = seen[-1]
        for name, body in bodies.items():
            block: Any = _Probe(body)
            if hybrid:
                block.hybridize()
            out[f"{mode}: {name}"] = _fails(functools.partial(block, mnp.ones((2, 3))))

        # the legacy stop_gradient, converted, stops the gradient: d/dx sum(x · sg(x²)) = x²
        def stopped(F: Any, x: Any) -> Any:
            return (x * F.stop_gradient((x * x).as_nd_ndarray()).as_np_ndarray()).sum()

        block = _Probe(stopped)
        if hybrid:
            block.hybridize()
        x = mnp.array([1.0, 2.0, 3.0])
        x.attach_grad()
        with autograd.record():
            loss = block(x)
        loss.backward()
        out[f"{mode}: gradient through the converted stop_gradient"] = x.grad.asnumpy()
    out["npx has stop_gradient"] = hasattr(npx, "stop_gradient")
    return out


def async_errors() -> dict[str, Any]:
    """MXNet's engine queues an operator and returns: an error in it surfaces where the result
    is waited for (``wait_to_read``, ``asnumpy``, ``waitall``), not at the call. With
    ``MXNET_ENGINE_TYPE=NaiveEngine`` every operator runs at its call."""

    def bad() -> Any:  # an out-of-range index, checked only when the operator runs
        return mnp.take(mnp.ones(3), mnp.array([5]), mode="raise")

    out: dict[str, Any] = {"engine": os.environ.get("MXNET_ENGINE_TYPE", "default")}
    for wait in ("wait_to_read", "asnumpy", "mx.nd.waitall"):
        try:
            y = bad()
        except Exception as e:
            out[f"{wait}: at the call"] = _line(e)
            continue
        out[f"{wait}: at the call"] = None
        try:
            if wait == "mx.nd.waitall":
                mx.nd.waitall()
            else:
                getattr(y, wait)()
            out[f"{wait}: at the wait"] = None
        except Exception as e:
            out[f"{wait}: at the wait"] = _line(e)
    out["the next operator runs"] = (mnp.ones(2) + 1).asnumpy()
    return out


def _strip(name: str) -> str:
    return name.split("_", 1)[1]  # gru0_l0_i2h_weight -> l0_i2h_weight


def gluon_layers() -> dict[str, Any]:
    """Gluon's recurrent layers as built: parameter names and shapes, default mode and layout,
    initial biases and weights (``initialize()``'s default), the LSTM's options."""
    mx.random.seed(0)
    out: dict[str, Any] = {}
    for kind in ("RNN", "GRU", "LSTM"):
        layer = getattr(rnn, kind)(4, input_size=3)
        layer.initialize()
        params = layer.collect_params()
        out[kind] = {
            "params": [[_strip(n), list(p.shape)] for n, p in params.items()],
            "mode": layer._mode,
            "layout": layer._layout,
            "bias values": sorted(
                {float(v) for n, p in params.items() if "bias" in n for v in p.data().asnumpy()}
            ),
            "weights' largest magnitude": max(
                float(np.abs(p.data().asnumpy()).max()) for n, p in params.items() if "weight" in n
            ),
        }
    ntc = rnn.GRU(4, input_size=3, layout="NTC")
    ntc.initialize()
    out["NTC output shape for (N=2, T=5, C=3)"] = list(ntc(mnp.ones((2, 5, 3))).shape)
    out["TNC output shape for (T=5, N=2, C=3)"] = list(
        (lambda g: (g.initialize(), g(mnp.ones((5, 2, 3))))[1])(rnn.GRU(4, input_size=3)).shape
    )
    out["rnn.LSTM(recurrent_activation=...)"] = _fails(
        lambda: rnn.LSTM(4, recurrent_activation="hard_sigmoid")
    )
    out["rnn.LSTMCell(recurrent_activation=...)"] = rnn.LSTMCell(
        4, recurrent_activation="hard_sigmoid"
    )._recurrent_activation
    return out


def default_activation() -> dict[str, Any]:
    """A one-unit ``rnn.RNN`` with weight 1, no recurrence, no bias, on the input −1: the
    default layer gives relu(−1) = 0, ``activation="tanh"`` gives tanh(−1)."""
    out: dict[str, Any] = {}
    for name, kwargs in (("default", {}), ("tanh", {"activation": "tanh"})):
        layer = rnn.RNN(1, input_size=1, **kwargs)
        layer.initialize()
        layer.l0_i2h_weight.set_data(mnp.ones((1, 1)))
        for param in (layer.l0_h2h_weight, layer.l0_i2h_bias, layer.l0_h2h_bias):
            param.set_data(mnp.zeros(param.shape))
        out[name] = float(layer(-mnp.ones((1, 1, 1))).asnumpy().ravel()[0])
        out[f"{name}: mode"] = layer._mode
    return out


def float64_layers() -> dict[str, Any]:
    """A float64 layer: ``initialize()`` draws float32 and fails; zeros, or float32 then
    ``cast``, then ``set_data``, works."""
    out: dict[str, Any] = {}
    inits = {"": {}, "mx.init.Normal(0.1)": {"init": mx.init.Normal(0.1)}}
    inits["mx.init.Zero()"] = {"init": mx.init.Zero()}
    for name, kwargs in inits.items():
        layer = rnn.RNN(2, input_size=3, dtype="float64")
        out[f"initialize({name})"] = _fails(functools.partial(layer.initialize, **kwargs))
    layer = rnn.RNN(2, input_size=3)
    layer.initialize()
    layer.cast("float64")
    out["after cast"] = layer.l0_i2h_weight.data().dtype.name
    weight = np.arange(6, dtype="float64").reshape(2, 3) / 7
    layer.l0_i2h_weight.set_data(mnp.array(weight, dtype="float64"))
    got = layer.l0_i2h_weight.data()
    out["set_data keeps it exactly"] = got.dtype.name == "float64" and bool(
        (got.asnumpy() == weight).all()
    )
    return out


def clip_global_norm() -> dict[str, Any]:
    """``gluon.utils.clip_global_norm``: the factor it applies, and what it accepts."""
    out: dict[str, Any] = {}
    for norm, theta in ((2.0, 1.0), (2e-6, 1e-6), (1e-6, 1e-6)):
        g = mx.nd.array([norm], dtype="float32")
        gluon.utils.clip_global_norm([g], theta)
        out[f"{norm:g}, {theta:g}"] = float(g.asnumpy()[0]) / float(np.float32(norm))
    out["float64"] = _fails(
        lambda: gluon.utils.clip_global_norm([mx.nd.array([2.0], dtype="float64")], 1.0)
    )
    out["mxnet.np arrays"] = _fails(lambda: gluon.utils.clip_global_norm([mnp.ones(2)], 1.0))
    return out


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """``gluon.loss.SoftmaxCrossEntropyLoss`` on time-major float64 logits (T, B, V) and labels
    (T, B): its defaults and what it returns, and with ``from_logits=True``."""
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    x = mnp.array(logits, dtype="float64")
    y = mnp.array(labels, dtype="float64")
    log_probs = npx.log_softmax(x, axis=-1)
    return {
        "defaults": {
            "from_logits": loss._from_logits,
            "axis": loss._axis,
            "sparse_label": loss._sparse_label,
            "batch_axis": loss._batch_axis,
        },
        "default, given logits": loss(x, y).asnumpy(),
        "from_logits=True, given logits": gluon.loss.SoftmaxCrossEntropyLoss(from_logits=True)(
            x, y
        ).asnumpy(),
        "from_logits=True, given log_softmax": gluon.loss.SoftmaxCrossEntropyLoss(from_logits=True)(
            log_probs, y
        ).asnumpy(),
    }


def numpy_names() -> dict[str, Any]:
    """Why NumPy 1.23: importing MXNet with NumPy's deprecation warnings made errors stops at
    the first alias that NumPy 1.24 removed; and the module-level lines that read removed
    names (``np.bool``: gone in 1.24, back in 2.0; ``np.PZERO``...: gone in 2.0)."""
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "import mxnet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    frames = [ln.strip() for ln in run.stderr.splitlines() if ln.strip().startswith("File ")]
    utils = os.path.join(os.path.dirname(mx.__file__), "numpy", "utils.py")
    with open(utils, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        has_bool = hasattr(np, "bool")
    return {
        "numpy": np.__version__,
        "returncode": run.returncode,
        "last frame": frames[-2] if len(frames) > 1 else None,  # the last is NumPy's __getattr__
        "error": next((ln for ln in run.stderr.splitlines() if ln.startswith("Deprecation")), None),
        "np.bool here": has_bool,
        "mxnet/numpy/utils.py": {
            str(i + 1): ln
            for i, ln in enumerate(lines)
            if ln.strip().startswith(("bool =", "PZERO"))
        },
    }


def describe() -> dict[str, Any]:
    """The versions these requests run on."""
    return {"framework": "mxnet", "version": mx.__version__, "numpy": np.__version__}


HANDLERS: dict[str, Callable[..., Any]] = {
    "guide_front_end": front_end,
    "guide_autograd": autograd_demo,
    "guide_hybridize": hybridize_demo,
    "guide_async_errors": async_errors,
    "guide_gluon_layers": gluon_layers,
    "guide_default_activation": default_activation,
    "guide_float64_layers": float64_layers,
    "guide_clip_global_norm": clip_global_norm,
    "guide_cross_entropy": cross_entropy,
    "guide_numpy_names": numpy_names,
}
"""Named ``guide_*`` so they can be served beside ``mxnet_worker``'s own requests."""

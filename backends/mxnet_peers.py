"""MXNet's worker: the requests of the bench's Gluon peers.

Imported only in MXNet's environment (``backends.mxnet_worker`` serves these beside its own).

A Gluon peer is d2l's concise model as MXNet's users write it: one-hot -> ``rnn.RNN``
(tanh)/``rnn.GRU``/``rnn.LSTM`` (time-major ``TNC``) -> ``nn.Dense``, hybridized, trained with
``autograd``, ``SoftmaxCrossEntropyLoss``, d2l's global-norm clip (g·min(1, θ/‖g‖) over every
parameter, no epsilon) and ``gluon.Trainer``'s SGD. The model, its inputs and its hidden state
live here between requests: the main process makes a peer (``gluon_peer_new``), prepares a
workload once (``gluon_peer_prepare``), and each timed call is one ``gluon_peer_run`` that does
one step and waits for MXNet's engine (``mx.nd.waitall``) before it answers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, npx, profiler
from mxnet import np as mnp
from mxnet.gluon import nn, rnn

npx.set_np()  # mxnet.np arrays throughout, as the worker that serves these (it sets it too)

LAYERS = {"rnn": "RNN", "gru/reset-after": "GRU", "lstm": "LSTM"}
"""core's cells Gluon has a layer for (its GRU is the reset-after one, as torch's)."""
TORCH_OF = {
    "rnn.l0_i2h_weight": "rnn.weight_ih_l0",
    "rnn.l0_h2h_weight": "rnn.weight_hh_l0",
    "rnn.l0_i2h_bias": "rnn.bias_ih_l0",
    "rnn.l0_h2h_bias": "rnn.bias_hh_l0",
    "dense.weight": "linear.weight",
    "dense.bias": "linear.bias",
}
"""Each Gluon parameter (block.attribute) -> torch's name for the same array
(``core.convert.TORCH_NAMES``): the same shapes, (G·H, vocab), (G·H, H), (vocab, H), and the
gates stacked in the same order."""
HYBRIDIZE = {"static_alloc": True, "static_shape": True}
"""``hybridize()``'s options: one cached graph a call, its memory planned once. Measured on
2 cores at the chapter's shape: 10-20 % faster to train and forward, 1.2-1.7× to generate."""
THREAD_VARS = ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MXNET_ENGINE_TYPE")


class GluonModel:
    """One peer's model, optimiser and prepared workloads."""

    def __init__(
        self, cell: str, vocab_size: int, num_hiddens: int, dtype: str, hybridize: bool
    ) -> None:
        if cell not in LAYERS:
            raise ValueError(f"Gluon has no layer for {cell}; it has {', '.join(LAYERS)}")
        V, H = vocab_size, num_hiddens
        kind = {"activation": "tanh"} if cell == "rnn" else {}  # rnn.RNN defaults to ReLU

        class Net(gluon.HybridBlock):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(rnn, LAYERS[cell])(H, input_size=V, layout="TNC", **kind)
                self.dense = nn.Dense(V, flatten=False, in_units=H)

            def hybrid_forward(self, F: Any, X: Any, *state: Any) -> tuple[Any, Any]:
                Y, state = self.rnn(F.npx.one_hot(X, V, dtype=dtype), list(state))
                return self.dense(Y), state

        self.cell, self.dtype, self.num_hiddens = cell, dtype, H
        self.net = Net()
        self.net.initialize()
        self.net.cast(dtype)  # Gluon's initialisers draw float32 only; set_params replaces them
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.hybridized = hybridize
        if hybridize:
            self.net.hybridize(**HYBRIDIZE)
            self.loss.hybridize(**HYBRIDIZE)
        self.params = {
            name: getattr(getattr(self.net, block), attr)
            for name in TORCH_OF
            for block, attr in [name.split(".")]
        }
        self.trainer: gluon.Trainer | None = None
        self.lr: float | None = None
        self.jobs: dict[str, Callable[[], Any]] = {}

    def zeros(self, batch_size: int) -> list[Any]:
        """The first state, (1, batch, H): [h], or the LSTM's [h, c]."""
        shape = (1, batch_size, self.num_hiddens)
        return [mnp.zeros(shape, dtype=self.dtype) for _ in range(2 if self.cell == "lstm" else 1)]

    def array(self, x: np.ndarray) -> Any:
        x = np.asarray(x)
        return mnp.array(x, dtype=self.dtype if x.dtype.kind == "f" else "int64")

    def step(self, X: Any, Y: Any, state: list[Any], lr: float, theta: float) -> tuple:
        """One SGD step: (loss, final state, ‖g‖), as MXNet arrays (nothing waited for)."""
        if self.trainer is None or self.lr != lr:
            self.trainer = gluon.Trainer(self.net.collect_params(), "sgd", {"learning_rate": lr})
            self.lr = lr
        state = [s.detach() for s in state]
        with autograd.record():
            logits, state = self.net(X, *state)
            loss = self.loss(logits, Y).mean()
        loss.backward()
        grads = [p.grad() for p in self.params.values()]
        norm = mnp.sqrt(sum((g * g).sum() for g in grads))
        scale = mnp.minimum(1.0, theta / norm)  # d2l's clip: g·min(1, θ/‖g‖)
        for g in grads:
            g *= scale
        self.trainer.step(1)  # the loss is a mean already
        return loss, state, norm

    def forward_loss(self, X: Any, Y: Any, state: list[Any]) -> Any:
        logits, _ = self.net(X, *state)
        return self.loss(logits, Y).mean()

    def generate(self, first: int, num_preds: int) -> list[int]:
        """Greedy: each next token the argmax of the logits (the first of equal maxima)."""
        state = self.zeros(1)
        x = mnp.array([[first]], dtype="int64")
        tokens = [x]
        for _ in range(num_preds):
            logits, state = self.net(x, *state)
            x = logits.argmax(axis=-1)
            tokens.append(x)
        return [int(t) for t in mnp.concatenate(tokens).asnumpy().ravel()]


_MODELS: dict[int, GluonModel] = {}


def _model(peer: int) -> GluonModel:
    if peer not in _MODELS:
        raise KeyError(f"no Gluon peer {peer} in this worker")
    return _MODELS[peer]


def gluon_peer_new(
    cell: str, vocab_size: int, num_hiddens: int, dtype: str, hybridize: bool = True
) -> int:
    """A Gluon model for ``cell``; its number names it in the other requests."""
    peer = max(_MODELS, default=0) + 1
    _MODELS[peer] = GluonModel(cell, vocab_size, num_hiddens, dtype, hybridize)
    return peer


def gluon_peer_drop(peer: int) -> None:
    _MODELS.pop(peer, None)


def gluon_peer_set(peer: int, weights: Mapping[str, np.ndarray]) -> None:
    """Set every parameter from ``weights`` in torch's names and layout (``convert.to_torch``)."""
    m = _model(peer)
    for name, param in m.params.items():
        param.set_data(m.array(weights[TORCH_OF[name]]))


def gluon_peer_get(peer: int) -> dict[str, np.ndarray]:
    """Every parameter under torch's name."""
    m = _model(peer)
    return {TORCH_OF[name]: p.data().asnumpy() for name, p in m.params.items()}


def gluon_peer_prepare(
    peer: int,
    workload: str,
    inputs: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    lr: float = 1.0,
    theta: float = 1.0,
    first: int = 0,
    num_preds: int = 0,
) -> None:
    """Hold a workload's inputs (time-major ids) here; ``gluon_peer_run`` then runs it once."""
    m = _model(peer)
    if workload == "generate":
        m.jobs[workload] = lambda: m.generate(first, num_preds)
        return
    assert inputs is not None and labels is not None, "train and forward take inputs and labels"
    X, Y = m.array(inputs), m.array(labels)
    if workload == "forward":
        zeros = m.zeros(X.shape[1])
        m.jobs[workload] = lambda: m.forward_loss(X, Y, zeros).item()
    elif workload == "train":
        box = [m.zeros(X.shape[1])]

        def train() -> float:
            loss, box[0], _ = m.step(X, Y, box[0], lr, theta)
            return float(loss.item())

        m.jobs[workload] = train
    else:
        raise ValueError(f"the workloads are train, forward and generate, not {workload!r}")


def gluon_peer_run(peer: int, workload: str) -> Any:
    """One call of a prepared workload: a training step's loss, the forward loss, or the
    greedy tokens; MXNet's engine has finished every operation when it answers."""
    out = _model(peer).jobs[workload]()
    mx.nd.waitall()
    return out


def gluon_peer_step_once(
    peer: int, inputs: np.ndarray, labels: np.ndarray, state: Any, lr: float, theta: float
) -> tuple[float, Any, float]:
    """One training step from ``state`` ((B, H), or the LSTM's pair): (loss, final state,
    the gradient's global norm before the clip)."""
    m = _model(peer)
    parts = state if isinstance(state, tuple | list) else (state,)
    begin = [m.array(s)[None] for s in parts]
    loss, final, norm = m.step(m.array(inputs), m.array(labels), begin, lr, theta)
    out = tuple(s[0].asnumpy() for s in final)
    return float(loss.item()), out if m.cell == "lstm" else out[0], float(norm.item())


def gluon_peer_path(peer: int, workload: str) -> dict[str, Any]:
    """What ran for ``workload``: MXNet's operators in one more call under its profiler (a
    hybridized model runs as ``MXInvokeCachedOp``), the recurrent kernel MXNet picks, its build
    features and threads."""
    m = _model(peer)
    with tempfile.TemporaryDirectory() as folder:
        profiler.set_config(
            profile_all=True, aggregate_stats=True, filename=os.path.join(folder, "profile.json")
        )
        profiler.set_state("run")
        try:
            gluon_peer_run(peer, workload)
        finally:
            profiler.set_state("stop")
        table = profiler.dumps(reset=True)
    names = {line.split()[0] for line in table.splitlines() if line.strip()}
    ops = sorted(n for n in names if n in ("RNN", "_backward_RNN"))
    features = mx.runtime.Features()
    built = [f for f in ("MKLDNN", "OPENMP", "BLAS_OPEN", "BLAS_MKL") if features.is_enabled(f)]
    env = {v: os.environ.get(v, "unset") for v in THREAD_VARS}
    # MXNet's rnn.cc: oneDNN's RNN where it is built, the data is float32 and
    # MXNET_USE_MKLDNN_RNN is not 0; else its own CPU kernel
    onednn = (
        "MKLDNN" in built
        and m.dtype == "float32"
        and os.environ.get("MXNET_USE_MKLDNN_RNN", "1") != "0"
    )
    layer = f"gluon.rnn.{LAYERS[m.cell]}"
    kernel = "oneDNN's RNN primitive" if onednn else "MXNet's own CPU kernel"
    return {
        "recurrence": f"{layer}: MXNet's fused RNN operator, {kernel}" if ops else "none seen",
        "recurrent_ops": ops,
        "hybridized": "MXInvokeCachedOp" in names,
        "hybridize": ", ".join(HYBRIDIZE) if m.hybridized else "off (imperative)",
        "features": ",".join(built),
        "threads": ", ".join(f"{k}={v}" for k, v in env.items()),
        "mxnet": mx.__version__,
        "process": f"worker {os.getpid()}",
    }


HANDLERS: dict[str, Callable[..., Any]] = {
    "gluon_peer_new": gluon_peer_new,
    "gluon_peer_drop": gluon_peer_drop,
    "gluon_peer_set": gluon_peer_set,
    "gluon_peer_get": gluon_peer_get,
    "gluon_peer_prepare": gluon_peer_prepare,
    "gluon_peer_run": gluon_peer_run,
    "gluon_peer_step_once": gluon_peer_step_once,
    "gluon_peer_path": gluon_peer_path,
}

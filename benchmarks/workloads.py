"""The measured workloads, as cases: one backend (or peer) × cell × device × dtype × mode ×
shape.

- ``train``: one full step (forward, BPTT or autograd, global-norm clip, SGD), the hidden state
  carried to the next call as training carries it; tokens = batch_size × num_steps.
- ``forward``: core's ``forward_loss`` (mean cross-entropy and H_T), no gradient, as the
  backend's ``make_forward`` runs it in its default mode and eager.
- ``generate``: core's ``predict``, greedy, ``GENERATE_TOKENS`` tokens at batch 1 from one token;
  tokens = the predicted tokens, and ``ms_per_step`` is per token.

The cell is the chapter's RNN (``rnn``) or one of core.cells' gated cells (``gru/reset-after``,
``gru/reset-before``, ``lstm``); every backend trains any of them through the same
``make_train_step``, which tells them apart by their parameters. The token ids are uniform draws
from one seeded generator: the step's cost does not depend on the text, and no corpus is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rosetta_rnn import backends
from rosetta_rnn.core import cells, model, sampling
from rosetta_rnn.core.cells import RNN

from . import machine
from . import peers as peers_mod

VOCAB_SIZE = 28  # The Time Machine's character vocabulary in d2l
GATED_HIDDENS = 256  # d2l 9.1/9.2 train the GRU and the LSTM with 256 hidden units (8.5: 512)
GENERATE_TOKENS = 50
LR, THETA = 1.0, 1.0  # the chapter's learning rate and clipping threshold

Call = Callable[[], Any]
Sync = Callable[[Any], None]
Builder = Callable[[], tuple[Call, Sync]]


@dataclass(frozen=True)
class Shape:
    """batch_size × num_steps sequences, num_hiddens units, vocab_size classes (d2l's defaults)."""

    batch_size: int = 32
    num_steps: int = 35
    num_hiddens: int = 512
    vocab_size: int = VOCAB_SIZE

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.num_steps, self.num_hiddens, self.vocab_size)


D2L = Shape()


@dataclass
class Case:
    """One row to measure. ``build()`` returns (call, sync); one call is one step (or, for
    ``generate``, ``GENERATE_TOKENS`` tokens)."""

    name: str
    backend: str  # a backend name, or "peer"
    framework: str
    device: str
    dtype: str
    mode: str
    workload: str
    shape: Shape
    build: Builder
    sweep: str | None = None  # "num_steps", "num_hiddens" or "replicas" outside the main rows
    cell: str = RNN  # core's name for the model: rnn, gru/reset-after, gru/reset-before, lstm
    replicas: int = 1  # data-parallel replicas of the training step (``replica_cases``)
    engine: dict[str, Any] = field(default_factory=dict)
    """A data-parallel row's step, once built (``"step"``), and its calls so far (``"calls"``):
    the runner reads the collective's time from it and closes it."""

    @property
    def steps_per_call(self) -> int:
        return GENERATE_TOKENS if self.workload == "generate" else 1

    @property
    def compiles(self) -> bool:
        """Whether the first call compiles anything: a compile mode other than eager, or JAX
        eager (which compiles each operation once). NumPy, the Array API backend, torch and
        TensorFlow eager compile nothing: their first call only allocates and fills caches."""
        return self.mode.rsplit("/", 1)[-1] != "eager" or self.framework == "jax"

    @property
    def tokens_per_call(self) -> int:
        if self.workload == "generate":
            return GENERATE_TOKENS
        return self.shape.batch_size * self.shape.num_steps


def minibatch(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Time-major inputs and labels ``(num_steps, batch_size)`` of uniform token ids."""
    rng = np.random.default_rng(seed)
    size = (shape.num_steps, shape.batch_size)
    return rng.integers(0, shape.vocab_size, size), rng.integers(0, shape.vocab_size, size)


def compile_modes(backend: str, workload: str, device: str = "cpu") -> tuple[str, ...]:
    """The compile modes a backend offers for a workload on a device; the first is its default.
    ``forward`` runs in the default mode and eager (modes a user asks for are measured on the
    train step); ``generate`` is core's host loop, one token at a time, so eager."""
    modes = backends.load(backend).compile_modes(device)
    if workload == "forward":
        return tuple(dict.fromkeys((modes[0], "eager")))
    if workload == "generate":
        return ("eager",)
    return modes


def syncer(backend: str, ops: Any) -> Sync:
    """Wait for the device (the backend's own ``sync``: block_until_ready, cuda.synchronize)."""
    mod = backends.load(backend)
    return lambda out: mod.sync(ops, out)


def _params(ops: Any, shape: Shape, seed: int, cell: str = RNN) -> model.Params:
    """d2l's initial parameters of ``cell`` (core's draw from ``seed``) on the backend."""
    rng = np.random.default_rng(seed)
    V, H = shape.vocab_size, shape.num_hiddens
    return model.to_backend(ops, cells.init_params(cell, V, H, rng, ops.dtype))


def _train_builder(
    backend: str, grad: str, mode: str, device: str, dtype: str, shape: Shape, cell: str = RNN
) -> Builder:
    def build() -> tuple[Call, Sync]:
        mod = backends.load(backend)
        ops = mod.make_ops(dtype, device)
        step = mod.make_train_step(ops, grad=grad, mode=mode, activation="tanh")
        X, Y = minibatch(shape)
        inputs, labels = ops.asarray(X), ops.asarray(Y)
        params = _params(ops, shape, 0, cell)
        box = [params, cells.initial_state(ops, params, shape.batch_size)]  # (H, C): LSTM

        def call() -> Any:
            box[0], box[1], loss, _ = step(box[0], inputs, labels, box[1], LR, THETA)
            return box[0], loss

        return call, syncer(backend, ops)

    return build


def _replicated_builder(
    backend: str, grad: str, mode: str, device: str, dtype: str, shape: Shape, n: int, box: dict
) -> Builder:
    """The training step on ``n`` replicas (the backend's ``make_replicated_step``); the step
    and its count of calls go into ``box`` (the case's ``engine``)."""

    def build() -> tuple[Call, Sync]:
        mod = backends.load(backend)
        engine = backends.replica_backend(backend, mod, n)
        ops = mod.make_ops(dtype, device)
        step = engine.make_replicated_step(ops, n, grad=grad, mode=mode, activation="tanh")
        box.update(step=step, calls=0)
        machine.OWN_PIDS.update(step.worker_pids)  # their CPU time is this run's
        X, Y = minibatch(shape)
        inputs, labels = ops.asarray(X), ops.asarray(Y)
        state = [
            _params(ops, shape, 0),
            model.begin_state(ops, shape.batch_size, shape.num_hiddens),
        ]

        def call() -> Any:
            state[0], state[1], loss, _ = step(state[0], inputs, labels, state[1], LR, THETA)
            box["calls"] += 1
            return state[0], loss

        return call, syncer(backend, ops)

    return build


def replica_cases(
    backend: str, device: str, dtype: str, shape: Shape, counts: tuple[int, ...], one: bool = True
) -> list[Case]:
    """The RNN's training step in the backend's default grad engine and mode, on one device
    (``×1``, with ``one``) and data-parallel on each of ``counts`` replicas (``×N``): the
    ``replicas`` rows. torch's engine runs eagerly, JAX's under jit, TensorFlow's in a
    tf.function, as their default modes do."""
    mod = backends.load(backend)
    grad, mode = mod.GRAD_MODES[0], compile_modes(backend, "train", device)[0]
    label = f"{grad}/{mode}"
    cases = []
    for n in dict.fromkeys((1, *counts) if one else counts):
        box: dict[str, Any] = {}
        build = (
            _train_builder(backend, grad, mode, device, dtype, shape)
            if n == 1
            else _replicated_builder(backend, grad, mode, device, dtype, shape, n, box)
        )
        name = f"{backend} {label} ×{n}"
        case = Case(name, backend, backend, device, dtype, label, "train", shape, build)
        case.sweep, case.replicas, case.engine = "replicas", n, box
        cases.append(case)
    return cases


def _forward_builder(backend: str, mode: str, device: str, dtype: str, shape: Shape) -> Builder:
    def build() -> tuple[Call, Sync]:
        mod = backends.load(backend)
        ops = mod.make_ops(dtype, device)
        fn = mod.make_forward(ops, mode)
        X, Y = minibatch(shape)
        args = (
            _params(ops, shape, 0),
            ops.asarray(X),
            ops.asarray(Y),
            model.begin_state(ops, shape.batch_size, shape.num_hiddens),
        )
        return (lambda: fn(*args)), syncer(backend, ops)

    return build


def _generate_builder(backend: str, device: str, dtype: str, shape: Shape) -> Builder:
    def build() -> tuple[Call, Sync]:
        ops = backends.load(backend).make_ops(dtype, device)
        params = _params(ops, shape, 0)
        return (
            lambda: sampling.predict(ops, params, [1], GENERATE_TOKENS),
            syncer(backend, ops),
        )

    return build


MODES: dict[str, str] = {
    "all": "every grad engine × compile mode",
    "compiled": "each backend's default grad engine under its compiler (jit, tf.function, "
    "torch.compile; eager where it has none)",
    "default": "each backend's default mode only",
}


def _pick_compiles(compiles: tuple[str, ...], modes: str) -> tuple[str, ...]:
    if modes == "all":
        return compiles
    if modes == "compiled":
        return next(((m,) for m in compiles if m != "eager"), compiles[:1])
    return compiles[:1]


def backend_cases(
    backend: str,
    device: str,
    dtype: str,
    shape: Shape,
    workloads: list[str],
    modes: str | bool = "all",
    sweep: str | None = None,
    cell: str = RNN,
) -> list[Case]:
    """One backend's rows for each workload, in the ``modes`` of ``MODES`` (True and False
    mean all and default). ``device`` must be resolved already. A gated ``cell`` has the
    ``train`` workload only (what the runner asks of it)."""
    if cell != RNN and set(workloads) - {"train"}:
        raise ValueError(f"the {cell} rows time the training step only, not {workloads}")
    mod = backends.load(backend)
    if isinstance(modes, bool):
        modes = "all" if modes else "default"
    if modes not in MODES:
        raise ValueError(f"modes must be one of {', '.join(MODES)}, not {modes!r}")

    def common(name: str, mode: str, workload: str, build: Callable[[], Any]) -> Case:
        return Case(
            name, backend, backend, device, dtype, mode, workload, shape, build, sweep, cell
        )

    cases: list[Case] = []
    for workload in workloads:
        compiles = _pick_compiles(compile_modes(backend, workload, device), modes)
        if workload == "train":
            grads = mod.GRAD_MODES if modes == "all" else mod.GRAD_MODES[:1]
            for grad in grads:
                for mode in compiles:
                    label = f"{grad}/{mode}"
                    build = _train_builder(backend, grad, mode, device, dtype, shape, cell)
                    cases.append(common(f"{backend} {label}", label, workload, build))
        elif workload == "forward":
            for mode in compiles:
                build = _forward_builder(backend, mode, device, dtype, shape)
                cases.append(common(f"{backend} {mode}", mode, workload, build))
        elif workload == "generate":
            build = _generate_builder(backend, device, dtype, shape)
            cases.append(common(f"{backend} eager", "eager", workload, build))
    return cases


def _peer_builder(name: str, workload: str, device: str, dtype: str, shape: Shape) -> Builder:
    def build() -> tuple[Call, Sync]:
        peer = peers_mod.make_peer(name, shape.vocab_size, shape.num_hiddens, dtype, device)
        X, Y = minibatch(shape)
        if workload == "train":
            call = peer.train(X, Y, LR, THETA)
        elif workload == "forward":
            call = peer.forward(X, Y)
        else:
            call = peer.generate(1, GENERATE_TOKENS)
        return call, peer.sync

    return build


def peer_cases(
    name: str, device: str, dtype: str, shape: Shape, workloads: list[str], sweep: str | None = None
) -> list[Case]:
    """One peer's rows for each workload, in the cell it computes."""
    cls = peers_mod.PEERS[name]
    return [
        Case(
            name=name,
            backend="peer",
            framework=cls.framework,
            device=device,
            dtype=dtype,
            mode=cls.modes[w],
            workload=w,
            shape=shape,
            build=_peer_builder(name, w, device, dtype, shape),
            sweep=sweep,
            cell=peers_mod.PEER_CELL[name],
        )
        for w in workloads
    ]

"""The measured workloads, as cases: one backend (or peer) × cell × device × dtype × mode ×
shape.

- ``train``: one full step (forward, BPTT or autograd, global-norm clip, SGD), the hidden state
  carried to the next call as training carries it; tokens = batch_size × num_steps.
- ``forward``: core's ``forward_loss`` (mean cross-entropy and H_T), no gradient, as the
  backend's ``make_forward`` runs it in each compile mode.
- ``generate``: core's ``predict``, greedy, ``GENERATE_TOKENS`` tokens at batch 1 from one token,
  in each way the backend's ``ops.decode`` runs (JAX: one ``jit`` program; TensorFlow: one
  ``tf.function``; torch: a loop whose tokens stay on the device, as it is and under
  ``torch.compile``) and as the host loop, one token a call (eager); NumPy's eager row is its
  lean loop for the RNN (``decode``); tokens = the predicted tokens, and ``ms_per_step`` is per
  token.

The cell is the chapter's RNN (``rnn``) or one of core.cells' gated cells (``gru/reset-after``,
``gru/reset-before``, ``lstm``). Each case is a run of ``core.run`` (the chapter's spec at the
case's shape, cell and dtype), whose step and parameters are made as ``rosetta-rnn train``
makes them. The token ids are uniform draws from one seeded generator: the step's cost does not
depend on the text, and no corpus is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rosetta_rnn import backends
from rosetta_rnn.core import cells, model, sampling
from rosetta_rnn.core import run as run_spec
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


def _own_worker(ops: Any) -> None:
    """A backend whose ops compute in a worker process (MXNet's): its CPU time is the run's."""
    worker = getattr(ops, "worker", None)
    if worker is not None:
        machine.OWN_PIDS.add(worker.pid)


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
    the runner reads the collective's time from it and closes it. A peer's: ``"path"``, which
    reads the path its framework took."""

    @property
    def steps_per_call(self) -> int:
        return GENERATE_TOKENS if self.workload == "generate" else 1

    @property
    def compiles(self) -> bool:
        """Whether the first call compiles anything: a compile mode other than eager, or JAX
        eager (which compiles each operation once). NumPy, the Array API backend, torch and
        TensorFlow eager compile nothing: their first call only allocates and fills caches."""
        return self.mode.rsplit("/", 1)[-1] not in UNCOMPILED or self.framework == "jax"

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
    ``forward`` runs in every compile mode, as the train step; ``generate`` is core's
    ``predict``: each way the backend's ``ops.decode`` runs (``decode_modes``), and the host
    loop, one token a call (eager)."""
    mod = backends.load(backend)
    modes = mod.compile_modes(device)
    if workload == "forward":
        return tuple(dict.fromkeys((modes[0], *modes)))
    if workload == "generate":
        return (*decode_modes(mod, device), "eager")
    return modes


def decode_modes(mod: Any, device: str) -> tuple[str, ...]:
    """The ways a backend module's ``ops.decode`` runs generation on ``device``, its default
    first: ``decode_modes(device)`` where it offers several (torch), else ``DECODE_MODE``
    alone; none where it decodes as core's host loop does."""
    several = getattr(mod, "decode_modes", None)
    if several is not None:
        return tuple(several(device))
    one = getattr(mod, "DECODE_MODE", None)
    return (one,) if one else ()


def syncer(backend: str, ops: Any) -> Sync:
    """Wait for the device (the backend's own ``sync``: block_until_ready, cuda.synchronize)."""
    mod = backends.load(backend)
    return lambda out: mod.sync(ops, out)


def spec(shape: Shape, dtype: str, cell: str = RNN) -> run_spec.RunSpec:
    """The run a case times: the chapter's (lr 1, θ = 1, d2l's initialisation) at the shape's
    minibatch and hidden size, with ``cell`` (core's name) in ``dtype``."""
    return replace(
        run_spec.RECIPES["d2l-0.17"],
        batch_size=shape.batch_size,
        num_steps=shape.num_steps,
        num_hiddens=shape.num_hiddens,
        lr=LR,
        clip=THETA,
        dtype=dtype,
        **run_spec.cell_settings(cell),
    )


def initial_params(ops: Any, run: run_spec.RunSpec, shape: Shape, seed: int = 0) -> model.Params:
    """The run's initial parameters (core's draw from ``seed``) on the backend."""
    params = run_spec.init_params(run, shape.vocab_size, np.random.default_rng(seed))
    return model.to_backend(ops, params)


def _train_builder(
    backend: str,
    grad: str,
    mode: str,
    device: str,
    dtype: str,
    shape: Shape,
    cell: str = RNN,
    replicas: int = 1,
    box: dict[str, Any] | None = None,
) -> Builder:
    """The training step as ``train`` makes it; on ``replicas`` > 1 the backend's
    data-parallel engine, whose step and count of calls go into ``box`` (the case's
    ``engine``)."""

    def build() -> tuple[Call, Sync]:
        run = spec(shape, dtype, cell)
        mod = backends.load(backend)
        if replicas > 1:
            mod = backends.replica_backend(backend, mod, replicas)
        engine = run_spec.engine(run, mod, device, grad, mode, replicas)
        ops, step, replicated = engine.ops, engine.step, engine.replicated
        _own_worker(ops)
        if replicated is not None and box is not None:
            box.update(step=replicated, calls=0)
            machine.OWN_PIDS.update(replicated.worker_pids)  # their CPU time is this run's
        X, Y = minibatch(shape)
        inputs, labels = ops.asarray(X), ops.asarray(Y)
        params = initial_params(ops, run, shape)
        held = [params, cells.initial_state(ops, params, shape.batch_size, run.model_cell)]

        def call() -> Any:
            held[0], held[1], loss, _ = step(held[0], inputs, labels, held[1], LR, THETA)
            if replicated is not None and box is not None:
                box["calls"] += 1
            return held[0], loss

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
        build = _train_builder(backend, grad, mode, device, dtype, shape, RNN, n, box)
        name = f"{backend} {label} ×{n}"
        case = Case(name, backend, backend, device, dtype, label, "train", shape, build)
        case.sweep, case.replicas, case.engine = "replicas", n, box
        cases.append(case)
    return cases


def _forward_builder(
    backend: str, mode: str, device: str, dtype: str, shape: Shape, cell: str = RNN
) -> Builder:
    def build() -> tuple[Call, Sync]:
        run = spec(shape, dtype, cell)
        mod = backends.load(backend)
        ops = mod.make_ops(dtype, device)
        _own_worker(ops)
        fn = mod.make_forward(ops, mode, run.activation, run.model_cell)
        X, Y = minibatch(shape)
        params = initial_params(ops, run, shape)
        state = cells.initial_state(ops, params, shape.batch_size, run.model_cell)
        args = (params, ops.asarray(X), ops.asarray(Y), state)
        return (lambda: fn(*args)), syncer(backend, ops)

    return build


def _generate_builder(
    backend: str, mode: str, device: str, dtype: str, shape: Shape, cell: str = RNN
) -> Builder:
    def build() -> tuple[Call, Sync]:
        run = spec(shape, dtype, cell)
        mod = backends.load(backend)
        ops = mod.make_ops(dtype, device)
        _own_worker(ops)
        params = initial_params(ops, run, shape)
        # eager beside a decoder is the host loop; a backend without a named decoder (NumPy:
        # its lean loop for the RNN) decodes as predict does by default
        decoders = decode_modes(mod, device)
        compiled = mode != "eager" or not decoders
        if mode in decoders and hasattr(ops, "decode_mode"):
            ops.decode_mode = mode
        return (
            lambda: sampling.predict(
                ops,
                params,
                [1],
                GENERATE_TOKENS,
                activation=run.activation,
                cell=run.model_cell,
                compiled=compiled,
            ),
            syncer(backend, ops),
        )

    return build


UNCOMPILED = ("eager", "decode")
"""The modes that run under no compiler: the eager step, torch's plain decoding loop."""
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
        return next(((m,) for m in compiles if m not in UNCOMPILED), compiles[:1])
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
    mean all and default), in ``cell``. ``device`` must be resolved already."""
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
                build = _forward_builder(backend, mode, device, dtype, shape, cell)
                cases.append(common(f"{backend} {mode}", mode, workload, build))
        elif workload == "generate":
            for mode in compiles:
                build = _generate_builder(backend, mode, device, dtype, shape, cell)
                cases.append(common(f"{backend} {mode}", mode, workload, build))
    return cases


def _peer_builder(
    name: str, workload: str, device: str, dtype: str, shape: Shape, box: dict[str, Any]
) -> Builder:
    """The peer's call; ``box["path"]`` reads the path its framework took (``peer.path``)."""

    def build() -> tuple[Call, Sync]:
        peer = peers_mod.make_peer(name, shape.vocab_size, shape.num_hiddens, dtype, device)
        X, Y = minibatch(shape)
        if workload == "train":
            call = peer.train(X, Y, LR, THETA)
        elif workload == "forward":
            call = peer.forward(X, Y)
        else:
            call = peer.generate(1, GENERATE_TOKENS)
        box["path"] = lambda: peer.path(workload, call, X)
        return call, peer.sync

    return build


def peer_cases(
    name: str, device: str, dtype: str, shape: Shape, workloads: list[str], sweep: str | None = None
) -> list[Case]:
    """One peer's rows for each workload it runs (an inference engine: no ``train``), in the
    cell it computes."""
    cls = peers_mod.PEERS[name]
    cases = []
    for w in (w for w in workloads if w in cls.modes):
        box: dict[str, Any] = {}
        case = Case(
            name=name,
            backend="peer",
            framework=cls.framework,
            device=device,
            dtype=dtype,
            mode=cls.modes[w],
            workload=w,
            shape=shape,
            build=_peer_builder(name, w, device, dtype, shape, box),
            sweep=sweep,
            cell=peers_mod.PEER_CELL[name],
            engine=box,
        )
        cases.append(case)
    return cases

"""What the suite runs: a backend (or an outside oracle) seen through a few NumPy-in,
NumPy-out methods, so every check is written once for all of them and for every cell.

A state goes in and comes out as the cell has it: H (batch_size, num_hiddens), or the LSTM's
pair (H, C)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, ClassVar, TypeVar, cast

import numpy as np

from rosetta_rnn import backends
from rosetta_rnn.backends import rules
from rosetta_rnn.core import cells, checkpoint, convert, model, sampling
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.contract import StepFn
from rosetta_rnn.core.replicas import ReplicatedStep
from rosetta_rnn.core.training import TrainConfig, Trainer

from . import native
from .problems import State, state_parts

Arrays = dict[str, np.ndarray]


class NotApplicable(Exception):
    """This subject cannot run this check (an oracle has no sampler, for example)."""


T = TypeVar("T")


class _Enough(Exception):
    pass


def _first_steps(trainer: Trainer, steps: int, after_step: Callable[[], T]) -> list[T]:
    """``after_step()`` after each of the first ``steps`` SGD steps of ``trainer``'s epochs."""
    out: list[T] = []

    def record(_: int) -> None:
        out.append(after_step())
        if len(out) == steps:
            raise _Enough

    try:
        while True:
            trainer.run_epoch(on_step=record)
    except _Enough:
        return out


def input_weights(params: Any) -> tuple[str, ...]:
    """The input weights X_t multiplies, one per gate: W_xh for the RNN, W_x· for a gated cell
    (in the table's order)."""
    return tuple(name for name in model.param_names(params) if name.startswith("W_x"))


class BackendSubject:
    """A backend adapter of the tensor interface at one dtype and device."""

    def __init__(self, module: ModuleType | Any, dtype: str, device: str = "cpu") -> None:
        self.module = module
        self.backend = str(module.NAME)
        self.dtype = dtype
        self.ops = module.make_ops(dtype, device)
        self.device = str(self.ops.device)
        self.grad_modes: tuple[str, ...] = tuple(module.GRAD_MODES)
        self._engines: dict[str, Any] = {}

    @classmethod
    def load(cls, name: str, dtype: str, device: str = "cpu") -> BackendSubject:
        return cls(backends.load(name), dtype, device)

    @property
    def label(self) -> str:
        return self.backend

    # -- conversions --------------------------------------------------------------------
    def put(self, params: Arrays) -> Any:
        return model.to_backend(self.ops, {k: v.astype(self.dtype) for k, v in params.items()})

    def get(self, x: Any) -> np.ndarray:
        return self.ops.to_numpy(x)

    def _inputs(self, *arrays: np.ndarray) -> list[Any]:
        return [
            self.ops.asarray(a.astype(self.dtype) if a.dtype.kind == "f" else a) for a in arrays
        ]

    def put_state(self, state: State) -> Any:
        """H, or the LSTM's (H, C), as backend arrays of the subject's dtype."""
        parts = self._inputs(*state_parts(state))
        return tuple(parts) if isinstance(state, tuple) else parts[0]

    def get_state(self, state: Any) -> State:
        parts = tuple(self.get(s) for s in state_parts(state))
        return parts if isinstance(state, tuple) else parts[0]

    # -- what the checks call ---------------------------------------------------------------
    def transfer(self, params: Arrays) -> Arrays:
        """Parameters to the backend and back."""
        return model.to_numpy(self.ops, self.put(params))

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        """embedding (G, T, B, H): X_t W_x· of every gate G (one for the RNN), hidden
        (T, B, H), logits (T*B, V), and the LSTM's final memory C_T (B, H)."""
        P = self.put(params)
        X = self.ops.asarray(inputs)
        Hs, final = self.recurrence(P, X, self.put_state(state))
        out = {
            "embedding": np.stack([self.get(w) for w in self._embedding(P, X)]),
            "hidden": self.get(Hs),
            "logits": self.get(model.output_layer(self.ops, P, Hs)),
        }
        if isinstance(final, tuple):
            out["memory"] = self.get(final[1])
        return out

    def recurrence(self, P: Any, X: Any, state: Any) -> tuple[Any, Any]:
        """(Hs, final state) on backend arrays: core's cells."""
        return cells.any_forward(self.ops, P, X, state)

    def _embedding(self, P: Any, X: Any) -> list[Any]:
        """X_t W_x· for every step and gate, by core's ``embed`` (rows of W_x· for one-hot
        inputs, E[x_t] W_x· with a learned embedding)."""
        table = {"E": P["E"]} if "E" in P else {}
        return [model.embed(self.ops, {**table, "W_xh": P[w]}, X) for w in input_weights(P)]

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State
    ) -> tuple[np.ndarray, Arrays, State]:
        """(loss, grads, final state) as the adapter computes them with ``--grad mode``."""
        if mode not in self._engines:  # one engine per mode, as a program holds (and JAX's
            # jit and TensorFlow's tf.function keep what they compiled for each shape)
            self._engines[mode] = self.module.make_value_and_grad(self.ops, mode)
        vg = self._engines[mode]
        X, Y = self._inputs(inputs, labels)
        loss, grads, final = vg(self.put(params), X, Y, self.put_state(state))
        return (
            self.get(loss),
            {k: self.get(grads[k]) for k in model.param_names(grads)},
            self.get_state(final),
        )

    def clip(self, grads: Arrays, theta: float) -> tuple[Arrays, np.ndarray]:
        clipped, norm = model.clip_by_global_norm(self.ops, self.put(grads), theta)
        return {k: self.get(v) for k, v in clipped.items()}, self.get(norm)

    def spec(self, params: Arrays, cfg: TrainConfig, seed: int) -> run_spec.RunSpec:
        """The run that trains ``params`` as ``cfg`` says, from ``seed``: the model is the one
        the parameters are, decided here, once, as ``train`` decides it from its flags."""
        return run_spec.spec_of(cfg, cells.cell_of(params), dtype=self.dtype, seed=seed)

    def make_step(self, mode: str, spec: run_spec.RunSpec) -> StepFn:
        """The training step of ``spec``'s run with the ``mode`` grad engine, made as
        ``train`` makes it."""
        return run_spec.train_step(spec, self.module, self.ops, grad=mode)

    def _trainer(
        self, spec: run_spec.RunSpec, step: StepFn, params: Arrays, corpus: np.ndarray, cfg: Any
    ) -> Trainer:
        rng = np.random.default_rng(spec.seed)
        return run_spec.trainer(spec, self.ops, step, self.put(params), corpus, cfg.epochs, rng)

    def train(
        self, mode: str, params: Arrays, corpus: np.ndarray, cfg: TrainConfig, seed: int, steps: int
    ) -> list[Arrays]:
        """Parameters after each of ``steps`` SGD steps of the real training loop."""
        spec = self.spec(params, cfg, seed)
        trainer = self._trainer(spec, self.make_step(mode, spec), params, corpus, cfg)
        return _first_steps(trainer, steps, lambda: model.to_numpy(self.ops, trainer.params))

    def train_replicated(
        self,
        params: Arrays,
        corpus: np.ndarray,
        cfg: TrainConfig,
        seed: int,
        steps: int,
        replicas: int,
    ) -> list[tuple[Arrays, Arrays, np.ndarray]]:
        """(parameters after, the minibatch's gradient before clipping, its loss) for each of
        ``steps`` SGD steps of the real training loop on ``replicas`` replicas of the backend's
        data-parallel engine. A backend without one (NumPy, the reference) runs on one device:
        that is what the replicas must reproduce."""
        spec = self.spec(params, cfg, seed)
        replicated = None
        step: StepFn
        if hasattr(self.module, "REPLICA_ENGINE"):
            engine = backends.replica_backend(self.backend, self.module, replicas)
            replicated = cast(
                ReplicatedStep, run_spec.train_step(spec, engine, self.ops, replicas=replicas)
            )
            value_and_grad, step = replicated.value_and_grad, replicated
        else:
            value_and_grad = self.module.make_value_and_grad(self.ops, cell=spec.model_cell)
            step = self.make_step(self.grad_modes[0], spec)
        pending: list[tuple[Arrays, np.ndarray]] = []

        def recorded(p: Any, x: Any, y: Any, s: Any, lr: float, theta: float) -> Any:
            loss, grads, _ = value_and_grad(p, x, y, s)
            pending.append(
                ({k: self.get(grads[k]) for k in model.param_names(grads)}, self.get(loss))
            )
            return step(p, x, y, s, lr, theta)

        trainer = self._trainer(spec, recorded, params, corpus, cfg)

        def after_step() -> tuple[Arrays, Arrays, np.ndarray]:
            grads, loss = pending.pop()
            return model.to_numpy(self.ops, trainer.params), grads, loss

        try:
            return _first_steps(trainer, steps, after_step)
        finally:
            if replicated is not None:
                replicated.close()

    def predict(
        self, params: Arrays, prefix: list[int], n: int, temperature: float | None, seed: int
    ) -> list[int]:
        return sampling.predict(
            self.ops,
            self.put(params),
            prefix,
            n,
            temperature=temperature,
            rng=np.random.default_rng(seed),
        )

    def logits_from_checkpoint(self, path: str, inputs: np.ndarray, state: State) -> Arrays:
        tensors, _ = checkpoint.load_model(path)
        return self.forward(tensors, inputs, state)


# --- oracles: the frameworks' own recurrent layers, loaded with our parameters --------------


def _sizes(params: Arrays) -> tuple[int, int]:
    """(vocab_size, num_hiddens) from the output layer, which every cell has."""
    H, V = params["W_hq"].shape
    return int(V), int(H)


class TorchRNNOracle:
    """torch's own layer + ``nn.Linear``, loaded through core.convert: ``nn.RNN`` (W_ih =
    W_xhᵀ, bias_ih = b_h, bias_hh = 0: torch has two biases, one must be zero), ``nn.GRU``
    (reset-after; gates (r, z, n), bias_hh[n] = b_hh) or ``nn.LSTM`` (gates (i, f, g, o)).
    Linear weight = W_hqᵀ. On a CUDA device the layer is cuDNN's, run with TF32 off (cuDNN's
    default allows it)."""

    LAYERS: ClassVar[dict[str, str]] = {
        RNN: "torch.nn.RNN",
        GRU_RESET_AFTER: "torch.nn.GRU",
        LSTM: "torch.nn.LSTM",
    }
    CELLS: tuple[str, ...] = tuple(LAYERS)
    """torch has no reset-before GRU."""
    grad_modes = ("autograd",)

    @classmethod
    def label_of(cls, cell: str) -> str:
        return f"oracle:{cls.LAYERS[cell]}"

    def __init__(
        self, dtype: str, device: str = "cpu", second_bias: bool = False, cell: str = RNN
    ) -> None:
        import torch

        if cell not in self.LAYERS:
            raise convert.ConversionError(convert.NO_TORCH_RESET_BEFORE)
        self.torch = torch
        self.cell = cell
        self.backend = self.LAYERS[cell]
        self.label = self.label_of(cell)
        self.dtype = dtype
        self.device = device  # "cpu" or a resolved "gpu:N"; after a run, where its outputs were
        self.tdevice = (
            torch.device("cpu")
            if device == "cpu"
            else torch.device("cuda", rules.gpu_index(device))
        )
        self.second_bias = second_bias  # the mistake of loading b_h into both biases

    def _tensor(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.tdevice)

    def _run(self, params: Arrays, inputs: np.ndarray, state: State) -> tuple[Any, ...]:
        torch = self.torch
        dt = getattr(torch, self.dtype)
        V, H = _sizes(params)
        rnn = native.torch_layer(self.cell, V, H, dt, self.tdevice)
        out = torch.nn.Linear(H, V, dtype=dt, device=self.tdevice)
        native.load_torch(rnn, out, params, self.second_bias)
        X = torch.nn.functional.one_hot(self._tensor(inputs), V).to(dt)  # (T, B, V)
        h0 = tuple(self._tensor(s).to(dt)[None] for s in state_parts(state))  # (1, B, H) each
        Hs, final = rnn(X, h0 if self.cell == LSTM else h0[0])
        logits = out(Hs.reshape(-1, H))
        where = logits.device  # the cell names where the layer ran, not where it was asked to
        self.device = "cpu" if where.type == "cpu" else f"gpu:{where.index or 0}"
        return rnn, out, Hs, final, logits

    def _full_precision(self) -> Any:
        """TF32 off for cuDNN and cuBLAS while the oracle runs, then as they were."""
        torch = self.torch
        matmul = torch.backends.cuda.matmul
        stack = contextlib.ExitStack()
        stack.enter_context(torch.backends.cudnn.flags(enabled=True, allow_tf32=False))
        was = matmul.allow_tf32
        matmul.allow_tf32 = False
        stack.callback(setattr, matmul, "allow_tf32", was)
        return stack

    @staticmethod
    def _numpy(t: Any) -> np.ndarray:
        return np.array(t.detach().cpu().numpy())

    def _final(self, final: Any) -> State:
        """torch's h_n (1, B, H), or the LSTM's (h_n, c_n), as our final state."""
        if self.cell == LSTM:
            return self._numpy(final[0][0]), self._numpy(final[1][0])
        return self._numpy(final[0])

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        with self._full_precision():
            _, _, Hs, final, logits = self._run(params, inputs, state)
        out = {"hidden": self._numpy(Hs), "logits": self._numpy(logits)}
        if self.cell == LSTM:
            out["memory"] = self._final(final)[1]
        return out

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State
    ) -> tuple[np.ndarray, Arrays, State]:
        torch = self.torch
        with self._full_precision():
            rnn, out, _, final, logits = self._run(params, inputs, state)
            loss = torch.nn.functional.cross_entropy(logits, self._tensor(labels.reshape(-1)))
            loss.backward()
        return self._numpy(loss), native.torch_grads(rnn, out), self._final(final)


class KerasRNNOracle:
    """Keras' own layer + ``Dense``, loaded through core.convert: ``SimpleRNN`` (kernel =
    W_xh, recurrent_kernel = W_hh, one bias b_h), ``GRU`` with ``reset_after`` as the cell says
    (gates (z, r, h); reset-after's bias has an input and a recurrent row) or ``LSTM`` (gates
    (i, f, c, o)); Dense kernel = W_hq. Keras is batch-major, so inputs go in as (B, T, V)."""

    LAYERS: ClassVar[dict[str, str]] = {
        RNN: "keras.SimpleRNN",
        GRU_RESET_BEFORE: "keras.GRU",
        GRU_RESET_AFTER: "keras.GRU",
        LSTM: "keras.LSTM",
    }
    """Both GRU formulations are keras.GRU (reset_after=False, True): the cell tells them
    apart."""
    CELLS: tuple[str, ...] = tuple(LAYERS)
    grad_modes = ("autograd",)

    @classmethod
    def label_of(cls, cell: str) -> str:
        return f"oracle:{cls.LAYERS[cell]}"

    def __init__(self, dtype: str, device: str = "cpu", cell: str = RNN) -> None:
        import tensorflow as tf

        self.tf = tf
        self.cell = cell
        self.backend = self.LAYERS[cell]
        self.label = self.label_of(cell)
        self.dtype = dtype
        self.device = device  # "cpu" or a resolved "gpu:N"; after a run, where its outputs were
        self.tf_device = "/CPU:0" if device == "cpu" else f"/GPU:{rules.gpu_index(device)}"

    @contextlib.contextmanager
    def _placed(self) -> Iterator[None]:
        """On the oracle's device (TensorFlow would otherwise pick its first GPU) with TF32 off
        (TensorFlow allows it on GPUs by default), then as it was."""
        tf = self.tf
        was = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            with tf.device(self.tf_device):
                yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(was)

    def _ran_on(self, t: Any) -> None:
        """Where ``t`` lives: TensorFlow places an op it cannot run on the asked GPU elsewhere."""
        self.device = tf_device_label(t.device)

    def _build(self, params: Arrays) -> tuple[Any, Any]:
        import keras

        V, H = _sizes(params)
        # the LSTM also returns its final (h, c): the memory is not among the outputs
        rnn = native.keras_layer(self.cell, H, self.dtype, return_state=self.cell == LSTM)
        dense = keras.layers.Dense(V, dtype=self.dtype)
        rnn.build((None, None, V))
        dense.build((None, H))
        native.load_keras(rnn, dense, params)
        return rnn, dense

    def _run(
        self, rnn: Any, dense: Any, inputs: np.ndarray, state: State, V: int
    ) -> tuple[Any, Any, Any]:
        tf = self.tf
        X = tf.one_hot(tf.constant(inputs.T), V, dtype=self.dtype)  # batch-major (B, T, V)
        initial = [tf.constant(s, dtype=self.dtype) for s in state_parts(state)]
        got = rnn(X, initial_state=initial)
        Hs_bm, memory = (got[0], got[2]) if self.cell == LSTM else (got, None)
        Hs = tf.transpose(Hs_bm, (1, 0, 2))  # back to time-major
        logits = dense(tf.reshape(Hs, (-1, Hs.shape[-1])))
        return Hs, memory, logits

    def _final(self, Hs: Any, memory: Any) -> State:
        H_T = Hs[-1].numpy()
        return (H_T, memory.numpy()) if memory is not None else H_T

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        with self._placed():
            rnn, dense = self._build(params)
            Hs, memory, logits = self._run(rnn, dense, inputs, state, _sizes(params)[0])
        self._ran_on(logits)
        out = {"hidden": Hs.numpy(), "logits": logits.numpy()}
        if memory is not None:
            out["memory"] = memory.numpy()
        return out

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State
    ) -> tuple[np.ndarray, Arrays, State]:
        tf = self.tf
        with self._placed():
            rnn, dense = self._build(params)
            weights = [*rnn.trainable_weights, *dense.trainable_weights]
            with tf.GradientTape() as tape:
                Hs, memory, logits = self._run(rnn, dense, inputs, state, _sizes(params)[0])
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels.reshape(-1), logits)
                )
            g = tape.gradient(loss, weights)
        self._ran_on(logits)
        grads = native.keras_grads([tf.convert_to_tensor(v).numpy() for v in g])
        return loss.numpy(), grads, self._final(Hs, memory)


class GluonRNNOracle:
    """Gluon's own layer + ``nn.Dense`` in MXNet's environment (through the ``mxnet`` backend's
    worker), loaded through core.convert as torch's are: Gluon keeps torch's layout under its
    own names (``l0_i2h_weight`` = ``weight_ih_l0`` ...): ``rnn.RNN`` (asked for tanh: Gluon's
    default is ReLU), ``rnn.GRU`` (reset-after; gates (r, z, n)) or ``rnn.LSTM`` (gates
    (i, f, g, o)); the loss is Gluon's ``SoftmaxCrossEntropyLoss``, the gradients MXNet's
    ``autograd``."""

    LAYERS: ClassVar[dict[str, str]] = {
        RNN: "gluon.rnn.RNN",
        GRU_RESET_AFTER: "gluon.rnn.GRU",
        LSTM: "gluon.rnn.LSTM",
    }
    CELLS: tuple[str, ...] = tuple(LAYERS)
    """Gluon, as torch, has no reset-before GRU."""
    grad_modes = ("autograd",)

    @classmethod
    def label_of(cls, cell: str) -> str:
        return f"oracle:{cls.LAYERS[cell]}"

    def __init__(self, dtype: str, device: str = "cpu", cell: str = RNN) -> None:
        from rosetta_rnn.backends import mxnet

        if cell not in self.LAYERS:
            raise convert.ConversionError(convert.NO_TORCH_RESET_BEFORE)
        self.worker = mxnet.worker()
        self.cell = cell
        self.backend = self.LAYERS[cell]
        self.label = self.label_of(cell)
        self.dtype = dtype
        self.device = device

    def _run(
        self, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State
    ) -> dict[str, Any]:
        weights = convert.to_torch(convert.from_params(params))
        return dict(
            self.worker.call(
                "gluon_language_model", self.cell, weights, inputs, labels, state, self.dtype
            )
        )

    def forward(self, params: Arrays, inputs: np.ndarray, state: State) -> Arrays:
        out = self._run(params, inputs, np.zeros_like(inputs), state)
        got = {"hidden": out["hidden"], "logits": out["logits"]}
        if self.cell == LSTM:
            got["memory"] = out["final"][1]
        return got

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: State
    ) -> tuple[np.ndarray, Arrays, State]:
        out = self._run(params, inputs, labels, state)
        grads = convert.grads_to_params(convert.from_torch(out["grads"]))
        return out["loss"], grads, out["final"]


ORACLE_CLASSES: dict[str, Any] = {
    "torch": TorchRNNOracle,
    "tensorflow": KerasRNNOracle,
    "mxnet": GluonRNNOracle,
}
"""The backend whose framework runs each oracle -> the oracle's class, built as
``(dtype, device label, cell=...)`` for each cell of its ``CELLS``."""


def tf_device_label(name: str) -> str:
    """A TensorFlow device name (``/job:localhost/replica:0/task:0/device:GPU:1``) as a label
    (``gpu:1``; ``cpu`` for any CPU)."""
    kind, _, index = name.rpartition("device:")[2].partition(":")
    return "cpu" if kind.upper() == "CPU" else f"{kind.lower()}:{index or 0}"

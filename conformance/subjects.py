"""What the suite runs: a backend (or an outside oracle) seen through a few NumPy-in,
NumPy-out methods, so every check is written once for all of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from rosetta_rnn import backends
from rosetta_rnn.core import checkpoint, model, sampling
from rosetta_rnn.core.contract import StepFn
from rosetta_rnn.core.training import TrainConfig, Trainer

from . import native

Arrays = dict[str, np.ndarray]


class NotApplicable(Exception):
    """This subject cannot run this check (an oracle has no sampler, for example)."""


class _Enough(Exception):
    pass


class BackendSubject:
    """A backend adapter of the tensor interface at one dtype and device."""

    def __init__(self, module: ModuleType | Any, dtype: str, device: str = "cpu") -> None:
        self.module = module
        self.backend = str(module.NAME)
        self.dtype = dtype
        self.ops = module.make_ops(dtype, device)
        self.device = str(self.ops.device)
        self.grad_modes: tuple[str, ...] = tuple(module.GRAD_MODES)

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

    # -- what the checks call ---------------------------------------------------------------
    def transfer(self, params: Arrays) -> Arrays:
        """Parameters to the backend and back."""
        return model.to_numpy(self.ops, self.put(params))

    def forward(self, params: Arrays, inputs: np.ndarray, state: np.ndarray) -> Arrays:
        """embedding (T, B, H), hidden (T, B, H), logits (T*B, V)."""
        P = self.put(params)
        X, s = self._inputs(inputs, state)
        Hs, _ = model.rnn_forward(self.ops, P, X, s)
        return {
            "embedding": self.get(model.embed(self.ops, P, X)),
            "hidden": self.get(Hs),
            "logits": self.get(model.output_layer(self.ops, P, Hs)),
        }

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, Arrays, np.ndarray]:
        """(loss, grads, H_T) as the adapter computes them with ``--grad mode``."""
        vg = self.module.make_value_and_grad(self.ops, mode)
        loss, grads, H_T = vg(self.put(params), *self._inputs(inputs, labels, state))
        return (
            self.get(loss),
            {k: self.get(grads[k]) for k in model.param_names(grads)},
            self.get(H_T),
        )

    def clip(self, grads: Arrays, theta: float) -> tuple[Arrays, np.ndarray]:
        clipped, norm = model.clip_by_global_norm(self.ops, self.put(grads), theta)
        return {k: self.get(v) for k, v in clipped.items()}, self.get(norm)

    def make_step(self, mode: str) -> StepFn:
        return self.module.make_train_step(self.ops, grad=mode)

    def train(
        self, mode: str, params: Arrays, corpus: np.ndarray, cfg: TrainConfig, seed: int, steps: int
    ) -> list[Arrays]:
        """Parameters after each of ``steps`` SGD steps of the real training loop."""
        trainer = Trainer(
            self.ops,
            self.make_step(mode),
            self.put(params),
            corpus,
            cfg,
            np.random.default_rng(seed),
        )
        out: list[Arrays] = []

        def record(_: int) -> None:
            out.append(model.to_numpy(self.ops, trainer.params))
            if len(out) == steps:
                raise _Enough

        try:
            while True:
                trainer.run_epoch(on_step=record)
        except _Enough:
            return out

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

    def logits_from_checkpoint(self, path: str, inputs: np.ndarray, state: np.ndarray) -> Arrays:
        tensors, _ = checkpoint.load_model(path)
        return self.forward(tensors, inputs, state)


# --- oracles: the frameworks' own RNN layers, loaded with our parameters --------------------


class TorchRNNOracle:
    """``torch.nn.RNN`` + ``nn.Linear``: W_ih = W_xhᵀ, W_hh = W_hhᵀ, bias_ih = b_h and
    bias_hh = 0 (torch has two biases; one must be zero), Linear weight = W_hqᵀ. On a CUDA
    device the layer is cuDNN's RNN, run with TF32 off (cuDNN's default allows it)."""

    backend = "torch.nn.RNN"
    label = "oracle:torch.nn.RNN"
    grad_modes = ("autograd",)

    def __init__(self, dtype: str, device: str = "cpu", second_bias: bool = False) -> None:
        import torch

        self.torch = torch
        self.dtype = dtype
        self.device = device  # "cpu" or a resolved "gpu:N"; after a run, where its outputs were
        self.tdevice = (
            torch.device("cpu")
            if device == "cpu"
            else torch.device("cuda", backends.gpu_index(device))
        )
        self.second_bias = second_bias  # the mistake of loading b_h into both biases

    def _tensor(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.tdevice)

    def _run(self, params: Arrays, inputs: np.ndarray, state: np.ndarray) -> tuple[Any, ...]:
        torch = self.torch
        dt = getattr(torch, self.dtype)
        V, H = params["W_xh"].shape
        rnn = torch.nn.RNN(V, H, nonlinearity="tanh", dtype=dt, device=self.tdevice)
        out = torch.nn.Linear(H, V, dtype=dt, device=self.tdevice)
        native.load_torch(rnn, out, params, self.second_bias)
        X = torch.nn.functional.one_hot(self._tensor(inputs), V).to(dt)  # (T, B, V)
        h0 = self._tensor(state).to(dt)[None]
        Hs, _ = rnn(X, h0)
        logits = out(Hs.reshape(-1, H))
        where = logits.device  # the cell names where the layer ran, not where it was asked to
        self.device = "cpu" if where.type == "cpu" else f"gpu:{where.index or 0}"
        return rnn, out, Hs, logits

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

    def forward(self, params: Arrays, inputs: np.ndarray, state: np.ndarray) -> Arrays:
        with self._full_precision():
            _, _, Hs, logits = self._run(params, inputs, state)
        return {"hidden": self._numpy(Hs), "logits": self._numpy(logits)}

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, Arrays, np.ndarray]:
        torch = self.torch
        with self._full_precision():
            rnn, out, Hs, logits = self._run(params, inputs, state)
            loss = torch.nn.functional.cross_entropy(logits, self._tensor(labels.reshape(-1)))
            loss.backward()
        grads = native.torch_grads(rnn, out)
        return (
            self._numpy(loss),
            grads,
            self._numpy(Hs[-1]),
        )


class KerasRNNOracle:
    """Keras ``SimpleRNN`` + ``Dense``: kernel = W_xh, recurrent_kernel = W_hh, one bias b_h;
    Dense kernel = W_hq. Keras is batch-major, so inputs go in as (B, T, V)."""

    backend = "keras.SimpleRNN"
    label = "oracle:keras.SimpleRNN"
    grad_modes = ("autograd",)

    def __init__(self, dtype: str, device: str = "cpu") -> None:
        import tensorflow as tf

        self.tf = tf
        self.dtype = dtype
        self.device = device  # "cpu" or a resolved "gpu:N"; after a run, where its outputs were
        self.tf_device = "/CPU:0" if device == "cpu" else f"/GPU:{backends.gpu_index(device)}"

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

        V, H = params["W_xh"].shape
        rnn = keras.layers.SimpleRNN(H, return_sequences=True, dtype=self.dtype)
        dense = keras.layers.Dense(V, dtype=self.dtype)
        rnn.build((None, None, V))
        dense.build((None, H))
        native.load_keras(rnn, dense, params)
        return rnn, dense

    def _run(
        self, rnn: Any, dense: Any, inputs: np.ndarray, state: np.ndarray, V: int
    ) -> tuple[Any, Any]:
        tf = self.tf
        X = tf.one_hot(tf.constant(inputs.T), V, dtype=self.dtype)  # batch-major (B, T, V)
        Hs_bm = rnn(X, initial_state=[tf.constant(state, dtype=self.dtype)])
        Hs = tf.transpose(Hs_bm, (1, 0, 2))  # back to time-major
        logits = dense(tf.reshape(Hs, (-1, Hs.shape[-1])))
        return Hs, logits

    def forward(self, params: Arrays, inputs: np.ndarray, state: np.ndarray) -> Arrays:
        with self._placed():
            rnn, dense = self._build(params)
            Hs, logits = self._run(rnn, dense, inputs, state, params["W_xh"].shape[0])
        self._ran_on(logits)
        return {"hidden": Hs.numpy(), "logits": logits.numpy()}

    def value_and_grad(
        self, mode: str, params: Arrays, inputs: np.ndarray, labels: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, Arrays, np.ndarray]:
        tf = self.tf
        with self._placed():
            rnn, dense = self._build(params)
            weights = [*rnn.trainable_weights, *dense.trainable_weights]
            with tf.GradientTape() as tape:
                Hs, logits = self._run(rnn, dense, inputs, state, params["W_xh"].shape[0])
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels.reshape(-1), logits)
                )
            g = tape.gradient(loss, weights)
        self._ran_on(logits)
        grads = native.keras_grads([tf.convert_to_tensor(v).numpy() for v in g])
        return loss.numpy(), grads, Hs[-1].numpy()


def tf_device_label(name: str) -> str:
    """A TensorFlow device name (``/job:localhost/replica:0/task:0/device:GPU:1``) as a label
    (``gpu:1``; ``cpu`` for any CPU)."""
    kind, _, index = name.rpartition("device:")[2].partition(":")
    return "cpu" if kind.upper() == "CPU" else f"{kind.lower()}:{index or 0}"

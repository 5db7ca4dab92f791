"""The peers: the same character model written the way each framework's own users write it.

Independent of ``rosetta_rnn.core``'s computation on purpose: each peer is what a user of that
framework would write without us, so the benchmark can say whether going through core's
interface costs speed. (The layers are loaded with core's parameters through
``conformance.native``, and the gated cells' first parameters are core's draw: data, not code.)

- ``torch.nn.RNN``, ``torch.nn.GRU``, ``torch.nn.LSTM``: the layer + ``nn.Linear`` +
  ``clip_grad_norm_`` + ``torch.optim.SGD`` (d2l's concise implementation), eager.
- ``keras.SimpleRNN``, ``keras.GRU`` (Keras' default ``reset_after=True``),
  ``keras.GRU(reset_after=False)``, ``keras.LSTM``: the layer + ``Dense``, a ``tf.function``
  custom training step, ``keras.optimizers.SGD(global_clipnorm=θ)``.
- ``jax.lax.scan``, ``jax.lax.scan.GRU``, ``jax.lax.scan.LSTM``: a pure function over a
  parameter dict, ``jax.value_and_grad``, the recurrence as ``lax.scan``, the whole step under
  ``jax.jit``; the gated cells' gates side by side, every step's input projection in one matmul
  before the scan.
- ``numpy.min-char-rnn`` (the RNN): Karpathy's loop (cache the forward per step, walk it
  backwards, accumulate every gradient per step), batched, with d2l's global-norm clip.
- ``onnxruntime.RNN``, ``onnxruntime.Scan`` (the RNN; forward and generate only): the model
  ``convert --to onnx`` writes, fused (ONNX's ``RNN`` operator) or decomposed, run by ONNX
  Runtime, an inference engine beside the frameworks.
- ``gluon.rnn.RNN``, ``gluon.rnn.GRU``, ``gluon.rnn.LSTM``: MXNet 1.9.1's own layers + ``Dense``,
  hybridized, ``autograd``, d2l's global-norm clip and ``gluon.Trainer``'s SGD. MXNet runs in an
  environment of its own (``rosetta-rnn backends --setup mxnet``): the model, the inputs and the
  state live in its worker (``backends.mxnet_peers``), and one timed call is one request that
  does one step and waits for MXNet's engine before it answers.

Each peer computes one cell (``PEER_CELL``): torch.nn.GRU, keras.GRU and jax.lax.scan.GRU the
reset-after GRU, keras.GRU(reset_after=False) d2l's reset-before one. Where a framework keeps
two biases that core keeps as one (torch's ``bias_ih`` + ``bias_hh`` of every gate, Keras
GRU(reset_after=True)'s z and r rows), both take the gradient step and both count in the
clipping norm, as that framework's users train them. After its row is timed, ``path`` reads
what its framework ran (``benchmarks.kernels``).

Every peer takes time-major ``(num_steps, batch_size)`` token ids like core and converts them
once, outside the timed call, to its own layout. Parameters start from one seeded NumPy draw
(d2l's ``normal * 0.01``, zero biases); ``set_params`` loads core-named arrays, which is how the
tests prove a peer computes the same step.
"""

from __future__ import annotations

import importlib
import os
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from rosetta_rnn.backends.rules import gpu_index
from rosetta_rnn.backends.worker import RemoteError
from rosetta_rnn.benchmarks import kernels, machine
from rosetta_rnn.conformance import native
from rosetta_rnn.core import cells, convert
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.errors import BackendUnavailable

PARAM_ORDER = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")  # the RNN's names, the chapter's order
Arrays = dict[str, np.ndarray]
Call = Callable[[], Any]
HostState = Any  # (batch_size, num_hiddens) as NumPy; for the LSTM the pair (H, C)


def init_arrays(
    vocab_size: int, num_hiddens: int, dtype: str, seed: int, cell: str = RNN
) -> Arrays:
    """d2l-style initial parameters under core's names: weights normal·0.01, biases zero (the
    gated cells: ``core.cells.init_params``, d2l's forget bias 0)."""
    rng = np.random.default_rng(seed)
    return cells.init_params(cell, vocab_size, num_hiddens, rng, dtype)


class Peer:
    """What the runner needs from a peer: three workloads, a sync, and the test hooks.
    ``names`` maps each cell the peer computes to the peer's name for it."""

    names: ClassVar[dict[str, str]]  # cell -> peer name
    framework: str  # the backend whose framework it runs on
    modes: ClassVar[dict[str, str]]  # workload -> mode label
    libraries: ClassVar[tuple[str, ...]] = ()  # modules it needs beyond the framework
    cpu_only: ClassVar[bool] = False
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")  # what it runs in
    environment: ClassVar[str | None] = None  # the environment of its own it runs in, if any

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        if cell not in self.names:
            raise ValueError(f"{type(self).__name__} computes {', '.join(self.names)}, not {cell}")
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.dtype, self.device, self.cell = dtype, device, cell
        self.name = self.names[cell]

    def set_params(self, params: Arrays) -> None:
        raise NotImplementedError

    def get_params(self) -> Arrays:
        """Core-named parameters (where the framework keeps a bias pair: their sum)."""
        raise NotImplementedError

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        """One call = one SGD step on the batch; the hidden state carries over, detached."""
        raise NotImplementedError

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        """One call = forward pass and mean cross-entropy, no gradient."""
        raise NotImplementedError

    def generate(self, first: int, num_preds: int) -> Call:
        """One call = ``num_preds`` greedy tokens from ``first`` at batch 1 (host ids)."""
        raise NotImplementedError

    def sync(self, out: Any) -> None:
        """Wait until ``out`` (and the device queue) is computed."""

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        """The path the framework took for ``workload`` (``benchmarks.kernels``): read from one
        more ``call`` or from what it compiled; ``inputs`` are the row's time-major ids."""
        return {}

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: HostState, lr: float, theta: float
    ) -> tuple[float, HostState]:
        """One training step from ``state``: (loss, final state) as NumPy (the LSTM's a pair
        (H, C)); parameters are updated."""
        raise NotImplementedError


# --- torch.nn.RNN, nn.GRU, nn.LSTM ----------------------------------------------------------


class TorchPeer(Peer):
    """d2l's concise model in PyTorch: one-hot -> nn.RNN, nn.GRU or nn.LSTM -> nn.Linear, SGD
    with clip_grad_norm_."""

    names: ClassVar[dict[str, str]] = {
        RNN: "torch.nn.RNN",
        GRU_RESET_AFTER: "torch.nn.GRU",
        LSTM: "torch.nn.LSTM",
    }
    framework = "torch"
    modes: ClassVar[dict[str, str]] = {
        "train": "autograd/eager",
        "forward": "eager",
        "generate": "eager",
    }

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        super().__init__(vocab_size, num_hiddens, dtype, device, cell)
        import torch
        from torch import nn
        from torch.nn import functional as F

        self.torch, self.F = torch, F
        self.tdtype = getattr(torch, dtype)
        self.tdevice = (
            torch.device("cpu") if device == "cpu" else torch.device("cuda", gpu_index(device))
        )
        V, H = vocab_size, num_hiddens
        layer = native.torch_layer(cell, V, H, self.tdtype, self.tdevice)

        class Model(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = layer  # time-major: (num_steps, batch, features)
                self.linear = nn.Linear(H, V)

            def forward(self, X: Any, state: Any) -> tuple[Any, Any]:
                Y, state = self.rnn(F.one_hot(X, V).to(self.linear.weight.dtype), state)
                return self.linear(Y.reshape(-1, H)), state

        self.model = Model().to(device=self.tdevice, dtype=self.tdtype)

    def _tensor(self, x: np.ndarray) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.tdevice, self.tdtype if t.is_floating_point() else self.torch.int64)

    def _zeros(self, batch_size: int) -> Any:
        """The first state, (1, batch, H): for nn.LSTM the pair (h_0, c_0), as d2l begins it."""
        torch, shape = self.torch, (1, batch_size, self.num_hiddens)
        h = torch.zeros(shape, dtype=self.tdtype, device=self.tdevice)
        return (h, torch.zeros_like(h)) if self.cell == LSTM else h

    def set_params(self, params: Arrays) -> None:
        m: Any = self.model
        native.load_torch(m.rnn, m.linear, params)

    def get_params(self) -> Arrays:
        m: Any = self.model
        return native.read_torch(m.rnn, m.linear)

    def _make_step(self, lr: float, theta: float) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
        torch, F, model = self.torch, self.F, self.model
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)

        def step(X: Any, Y: Any, state: Any) -> tuple[Any, Any]:
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            logits, state = model(X, state)
            loss = F.cross_entropy(logits, Y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), theta)
            optimizer.step()
            return loss, state

        return step

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        step = self._make_step(lr, theta)
        X, Y = self._tensor(inputs), self._tensor(labels)
        box = [self._zeros(X.shape[1])]

        def call() -> Any:
            loss, box[0] = step(X, Y, box[0])
            return loss

        return call

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: HostState, lr: float, theta: float
    ) -> tuple[float, HostState]:
        step = self._make_step(lr, theta)
        if self.cell == LSTM:
            begin: Any = tuple(self._tensor(s)[None] for s in state)
        else:
            begin = self._tensor(state)[None]
        loss, final = step(self._tensor(inputs), self._tensor(labels), begin)

        def host(s: Any) -> np.ndarray:
            return s[0].detach().cpu().numpy()

        out = tuple(host(s) for s in final) if self.cell == LSTM else host(final)
        return float(loss.detach()), out

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        torch, F, model = self.torch, self.F, self.model
        X, Y = self._tensor(inputs), self._tensor(labels)
        state = self._zeros(X.shape[1])

        def call() -> Any:
            with torch.no_grad():
                logits, _ = model(X, state)
                return F.cross_entropy(logits, Y.reshape(-1))

        return call

    def generate(self, first: int, num_preds: int) -> Call:
        torch, model = self.torch, self.model

        def call() -> list[int]:
            outputs = [first]
            state = self._zeros(1)
            with torch.no_grad():
                for _ in range(num_preds):
                    X = torch.tensor([[outputs[-1]]], device=self.tdevice)
                    logits, state = model(X, state)
                    outputs.append(int(logits.argmax(dim=1)))
            return outputs

        return call

    def sync(self, out: Any) -> None:
        if self.tdevice.type == "cuda":
            self.torch.cuda.synchronize(self.tdevice)

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        return kernels.torch_path(call, self.device)


# --- keras.SimpleRNN, GRU, LSTM -------------------------------------------------------------


class KerasPeer(Peer):
    """A Keras recurrent layer + Dense, batch-major, trained by a ``tf.function`` custom step."""

    names: ClassVar[dict[str, str]] = {
        RNN: "keras.SimpleRNN",
        GRU_RESET_AFTER: "keras.GRU",
        GRU_RESET_BEFORE: "keras.GRU(reset_after=False)",
        LSTM: "keras.LSTM",
    }
    framework = "tensorflow"
    libraries = ("keras",)
    modes: ClassVar[dict[str, str]] = {
        "train": "autograd/tf.function",
        "forward": "tf.function",
        "generate": "tf.function",
    }

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        super().__init__(vocab_size, num_hiddens, dtype, device, cell)
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"Keras runs on {keras.backend.backend()}, not TensorFlow")
        self.tf, self.keras = tf, keras
        self.tf_device = "/CPU:0" if device == "cpu" else f"/GPU:{gpu_index(device)}"
        V, H = vocab_size, num_hiddens

        class Model(keras.Model):
            def __init__(self) -> None:
                super().__init__(dtype=dtype)
                self.rnn = native.keras_layer(cell, H, dtype, return_state=True)
                self.dense = keras.layers.Dense(V, dtype=dtype)

            def call(self, X: Any, state: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
                Hs, *final = self.rnn(tf.one_hot(X, V, dtype=dtype), initial_state=list(state))
                return self.dense(Hs), tuple(final)

        with tf.device(self.tf_device):
            self.model = Model()
            self.model(tf.zeros((1, 1), tf.int64), self._zeros(1))  # build the weights
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)

    def _zeros(self, batch_size: int) -> tuple[Any, ...]:
        """The first state as Keras takes it: [h], or [h, c] for the LSTM."""
        h = self.tf.zeros((batch_size, self.num_hiddens), self.dtype)
        return (h, h) if self.cell == LSTM else (h,)

    def set_params(self, params: Arrays) -> None:
        native.load_keras(self.model.rnn, self.model.dense, params)

    def get_params(self) -> Arrays:
        return native.read_keras(self.model.rnn, self.model.dense)

    def _make_step(self, lr: float, theta: float) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
        tf, model, loss_fn = self.tf, self.model, self.loss_fn
        optimizer = self.keras.optimizers.SGD(learning_rate=lr, global_clipnorm=theta)

        @tf.function
        def train_step(X: Any, Y: Any, state: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                logits, state = model(X, state)
                loss = loss_fn(Y, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss, state

        return train_step

    def _batch_major(self, ids: np.ndarray) -> Any:
        return self.tf.constant(np.ascontiguousarray(ids.T), dtype=self.tf.int64)

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        tf = self.tf
        with tf.device(self.tf_device):
            step = self._make_step(lr, theta)
            X, Y = self._batch_major(inputs), self._batch_major(labels)
            box = [self._zeros(inputs.shape[1])]

        def call() -> Any:
            with tf.device(self.tf_device):
                loss, box[0] = step(X, Y, box[0])
            return loss

        return call

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: HostState, lr: float, theta: float
    ) -> tuple[float, HostState]:
        tf = self.tf
        begin = tuple(state) if self.cell == LSTM else (state,)
        with tf.device(self.tf_device):
            step = self._make_step(lr, theta)
            loss, final = step(
                self._batch_major(inputs),
                self._batch_major(labels),
                tuple(tf.constant(s) for s in begin),
            )
        out = tuple(s.numpy() for s in final)
        return float(loss), out if self.cell == LSTM else out[0]

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        tf, model, loss_fn = self.tf, self.model, self.loss_fn

        @tf.function
        def forward(X: Any, Y: Any, state: Any) -> Any:
            logits, _ = model(X, state)
            return loss_fn(Y, logits)

        with tf.device(self.tf_device):
            X, Y = self._batch_major(inputs), self._batch_major(labels)
            state = self._zeros(inputs.shape[1])

        def call() -> Any:
            with tf.device(self.tf_device):
                return forward(X, Y, state)

        return call

    def generate(self, first: int, num_preds: int) -> Call:
        tf, model = self.tf, self.model

        @tf.function
        def next_token(x: Any, state: Any) -> tuple[Any, Any]:
            logits, state = model(tf.reshape(x, (1, 1)), state)
            return tf.argmax(logits[0, -1]), state

        def call() -> list[int]:
            outputs = [first]
            with tf.device(self.tf_device):
                state = self._zeros(1)
                for _ in range(num_preds):
                    x, state = next_token(tf.constant(outputs[-1], tf.int64), state)
                    outputs.append(int(x))
            return outputs

        return call

    def sync(self, out: Any) -> None:
        self.tf.test.experimental.sync_devices()

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        batch, steps = (1, 1) if workload == "generate" else (inputs.shape[1], inputs.shape[0])
        with self.tf.device(self.tf_device):
            X = self.tf.TensorSpec((batch, steps), self.tf.int64)
            return kernels.keras_path(self.model, X, self._zeros(batch))


# --- jax.lax.scan ---------------------------------------------------------------------------


_JAX_GATES = {GRU_RESET_AFTER: "zrh", LSTM: "ifoc"}
"""The gated cells' gates in the order the JAX peer lays them side by side (core's names)."""


def _input_bias(cell: str, gate: str) -> str:
    """core's name for a gate's input bias (the reset-after GRU's candidate: ``b_xh``)."""
    return "b_xh" if gate == "h" and cell == GRU_RESET_AFTER else f"b_{gate}"


class JaxScanPeer(Peer):
    """Plain JAX: a pure loss over a parameter dict, ``lax.scan`` recurrence, jitted step. The
    gated cells as JAX users write them: every gate's input projection in one matmul over all
    steps before the scan, and the recurrent ones in one ``(H, G·H)`` matmul per step."""

    names: ClassVar[dict[str, str]] = {
        RNN: "jax.lax.scan",
        GRU_RESET_AFTER: "jax.lax.scan.GRU",
        LSTM: "jax.lax.scan.LSTM",
    }
    framework = "jax"
    modes: ClassVar[dict[str, str]] = {"train": "autograd/jit", "forward": "jit", "generate": "jit"}

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        super().__init__(vocab_size, num_hiddens, dtype, device, cell)
        import jax
        import jax.numpy as jnp
        from jax import lax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)  # JAX computes float64 only with x64 on
        self.jax, self.jnp = jax, jnp
        kind = "cpu" if device == "cpu" else "gpu"
        self.jdevice = jax.devices(kind)[0 if device == "cpu" else gpu_index(device)]
        V, H = vocab_size, num_hiddens

        def recur(params: dict[str, Any], X: Any, h: Any) -> tuple[Any, Any]:
            """(Hs, final state) of the cell over the time-major ids X."""
            x = jax.nn.one_hot(X, V, dtype=dtype)
            if cell == RNN:

                def rnn_step(h: Any, x: Any) -> tuple[Any, Any]:
                    h = jnp.tanh(x @ params["W_xh"] + h @ params["W_hh"] + params["b_h"])
                    return h, h

                h, Hs = lax.scan(rnn_step, h, x)
                return Hs, h
            gx = x @ params["W_x"] + params["b"]  # (T, B, G·H): every step's input part

            def gru_step(h: Any, gx: Any) -> tuple[Any, Any]:
                gh = h @ params["W_h"]
                z = jax.nn.sigmoid(gx[:, :H] + gh[:, :H])
                r = jax.nn.sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
                n = jnp.tanh(gx[:, 2 * H :] + r * (gh[:, 2 * H :] + params["b_hh"]))
                h = z * h + (1 - z) * n
                return h, h

            def lstm_step(hc: tuple[Any, Any], gx: Any) -> tuple[Any, Any]:
                h, c = hc
                g = gx + h @ params["W_h"]
                i, f, o = (jax.nn.sigmoid(g[:, k * H : (k + 1) * H]) for k in range(3))
                c = f * c + i * jnp.tanh(g[:, 3 * H :])
                h = o * jnp.tanh(c)
                return (h, c), h

            if cell == LSTM:
                hc, Hs = lax.scan(lstm_step, h, gx)
                return Hs, hc
            h, Hs = lax.scan(gru_step, h, gx)
            return Hs, h

        def rnn(params: dict[str, Any], X: Any, h: Any) -> tuple[Any, Any]:
            Hs, h = recur(params, X, h)
            return Hs @ params["W_hq"] + params["b_q"], h

        def loss_fn(params: dict[str, Any], X: Any, Y: Any, h: Any) -> tuple[Any, Any]:
            logits, h = rnn(params, X, h)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, Y[..., None], axis=-1)), h

        def train_step(
            params: dict[str, Any], X: Any, Y: Any, h: Any, lr: Any, theta: Any
        ) -> tuple[dict[str, Any], Any, Any]:
            (loss, h), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, X, Y, h)
            norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
            scale = jnp.minimum(1.0, theta / norm)  # d2l's clip: g·min(1, θ/‖g‖)
            params = jax.tree.map(lambda p, g: p - lr * scale * g, params, grads)
            return params, h, loss

        def next_token(params: dict[str, Any], x: Any, h: Any) -> tuple[Any, Any]:
            logits, h = rnn(params, jnp.reshape(x, (1, 1)), h)
            return jnp.argmax(logits[0]), h

        self._train_step = jax.jit(train_step)
        self._forward = jax.jit(lambda p, X, Y, h: loss_fn(p, X, Y, h)[0])
        self._next_token = jax.jit(next_token)
        self.set_params(init_arrays(vocab_size, num_hiddens, dtype, 0, cell))

    def _put(self, x: np.ndarray) -> Any:
        return self.jax.device_put(x, self.jdevice)

    def _zeros(self, batch_size: int) -> Any:
        """The first state: h, or the LSTM's (h, c)."""
        h = self._put(np.zeros((batch_size, self.num_hiddens), self.dtype))
        return (h, h) if self.cell == LSTM else h

    def set_params(self, params: Arrays) -> None:
        arrays = {k: np.asarray(v, dtype=self.dtype) for k, v in params.items()}
        gates = _JAX_GATES.get(self.cell)
        if gates is not None:  # core's per-gate arrays side by side, in the gates' order
            fused = {
                "W_x": np.concatenate([arrays.pop(f"W_x{g}") for g in gates], axis=1),
                "W_h": np.concatenate([arrays.pop(f"W_h{g}") for g in gates], axis=1),
                "b": np.concatenate([arrays.pop(_input_bias(self.cell, g)) for g in gates]),
            }
            arrays.update(fused)
        self.params = {k: self._put(v) for k, v in arrays.items()}

    def get_params(self) -> Arrays:
        arrays = {k: np.asarray(v) for k, v in self.params.items()}
        gates = _JAX_GATES.get(self.cell)
        if gates is not None:
            H = self.num_hiddens
            W_x, W_h, b = arrays.pop("W_x"), arrays.pop("W_h"), arrays.pop("b")
            for k, g in enumerate(gates):
                part = slice(k * H, (k + 1) * H)
                arrays[f"W_x{g}"], arrays[f"W_h{g}"] = W_x[:, part], W_h[:, part]
                arrays[_input_bias(self.cell, g)] = b[part]
        return arrays

    def _scalar(self, x: float) -> Any:
        return self._put(np.asarray(x, dtype=self.dtype))

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        X, Y = self._put(inputs), self._put(labels)
        lr_, theta_ = self._scalar(lr), self._scalar(theta)
        box = [self._zeros(inputs.shape[1])]

        def call() -> Any:
            self.params, box[0], loss = self._train_step(self.params, X, Y, box[0], lr_, theta_)
            return (self.params, loss)

        return call

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: HostState, lr: float, theta: float
    ) -> tuple[float, HostState]:
        begin = tuple(map(self._put, state)) if self.cell == LSTM else self._put(state)
        self.params, final, loss = self._train_step(
            self.params,
            self._put(inputs),
            self._put(labels),
            begin,
            self._scalar(lr),
            self._scalar(theta),
        )
        out = tuple(map(np.asarray, final)) if self.cell == LSTM else np.asarray(final)
        return float(loss), out

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        X, Y = self._put(inputs), self._put(labels)
        h = self._zeros(inputs.shape[1])
        return lambda: self._forward(self.params, X, Y, h)

    def generate(self, first: int, num_preds: int) -> Call:
        def call() -> list[int]:
            outputs = [first]
            h = self._zeros(1)
            for _ in range(num_preds):
                x, h = self._next_token(self.params, outputs[-1], h)
                outputs.append(int(x))
            return outputs

        return call

    def sync(self, out: Any) -> None:
        self.jax.block_until_ready(out)

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        if workload == "generate":
            lowered = self._next_token.lower(self.params, 0, self._zeros(1))
        else:
            X, h = self._put(inputs), self._zeros(inputs.shape[1])
            if workload == "forward":
                lowered = self._forward.lower(self.params, X, X, h)
            else:
                one = self._scalar(1.0)
                lowered = self._train_step.lower(self.params, X, X, h, one, one)
        return kernels.jax_path(lowered.compile().as_text(), self.jdevice.platform)


# --- numpy.min-char-rnn ---------------------------------------------------------------------


class MinCharRNNPeer(Peer):
    """Karpathy's min-char-rnn loop, batched: per-step forward cache, per-step gradient sums."""

    names: ClassVar[dict[str, str]] = {RNN: "numpy.min-char-rnn"}
    framework = "numpy"
    cpu_only = True
    modes: ClassVar[dict[str, str]] = {
        "train": "bptt/eager",
        "forward": "eager",
        "generate": "eager",
    }

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        if device != "cpu":
            raise RuntimeError("min-char-rnn is a NumPy program: cpu only")
        super().__init__(vocab_size, num_hiddens, dtype, device, cell)
        self.eye = np.eye(vocab_size, dtype=dtype)
        self.set_params(init_arrays(vocab_size, num_hiddens, dtype, 0))

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        return kernels.numpy_path()

    def set_params(self, params: Arrays) -> None:
        Wxh, Whh, bh, Why, by = (params[k].astype(self.dtype) for k in PARAM_ORDER)
        self.Wxh, self.Whh, self.bh, self.Why, self.by = Wxh, Whh, bh, Why, by

    def get_params(self) -> Arrays:
        values = (self.Wxh, self.Whh, self.bh, self.Why, self.by)
        return dict(zip(PARAM_ORDER, values, strict=True))

    def _forward(self, inputs: np.ndarray, targets: np.ndarray, hprev: np.ndarray) -> tuple:
        T, B = inputs.shape
        rows = np.arange(B)
        xs, hs, ps = {}, {-1: hprev}, {}
        loss = 0.0
        for t in range(T):
            xs[t] = self.eye[inputs[t]]  # one-hot (B, V)
            hs[t] = np.tanh(xs[t] @ self.Wxh + hs[t - 1] @ self.Whh + self.bh)
            ys = hs[t] @ self.Why + self.by
            e = np.exp(ys - ys.max(axis=1, keepdims=True))
            ps[t] = e / e.sum(axis=1, keepdims=True)  # softmax
            loss += -np.log(ps[t][rows, targets[t]]).sum()
        return loss / (T * B), xs, hs, ps

    def _loss_fun(self, inputs: np.ndarray, targets: np.ndarray, hprev: np.ndarray) -> tuple:
        """min-char-rnn's ``lossFun``: loss, gradients and the last hidden state."""
        T, B = inputs.shape
        N, rows = T * B, np.arange(B)
        loss, xs, hs, ps = self._forward(inputs, targets, hprev)
        dWxh, dWhh, dWhy = (np.zeros_like(w) for w in (self.Wxh, self.Whh, self.Why))
        dbh, dby = np.zeros_like(self.bh), np.zeros_like(self.by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(T)):
            dy = ps[t].copy()
            dy[rows, targets[t]] -= 1  # ∂loss/∂y: softmax - one_hot (of the mean: / N)
            dy /= N
            dWhy += hs[t].T @ dy
            dby += dy.sum(axis=0)
            dh = dy @ self.Why.T + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh  # back through tanh
            dbh += dhraw.sum(axis=0)
            dWxh += xs[t].T @ dhraw
            dWhh += hs[t - 1].T @ dhraw
            dhnext = dhraw @ self.Whh.T
        return loss, (dWxh, dWhh, dbh, dWhy, dby), hs[T - 1]

    def _update(self, grads: tuple, lr: float, theta: float) -> None:
        norm = np.sqrt(sum(float((d * d).sum()) for d in grads))
        scale = min(1.0, theta / norm) if norm > 0 else 1.0  # d2l's global-norm clip
        for param, dparam in zip(
            (self.Wxh, self.Whh, self.bh, self.Why, self.by), grads, strict=True
        ):
            param -= (lr * scale) * dparam

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        box = [np.zeros((inputs.shape[1], self.num_hiddens), self.dtype)]

        def call() -> Any:
            loss, grads, box[0] = self._loss_fun(inputs, labels, box[0])
            self._update(grads, lr, theta)
            return loss

        return call

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: np.ndarray, lr: float, theta: float
    ) -> tuple[float, np.ndarray]:
        loss, grads, h = self._loss_fun(inputs, labels, state.astype(self.dtype))
        self._update(grads, lr, theta)
        return float(loss), h

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        h = np.zeros((inputs.shape[1], self.num_hiddens), self.dtype)
        return lambda: self._forward(inputs, labels, h)[0]

    def generate(self, first: int, num_preds: int) -> Call:
        def call() -> list[int]:
            """min-char-rnn's ``sample``, greedy: argmax instead of a random choice."""
            h = np.zeros((1, self.num_hiddens), self.dtype)
            ixes = [first]
            for _ in range(num_preds):
                x = self.eye[ixes[-1]][None]
                h = np.tanh(x @ self.Wxh + h @ self.Whh + self.bh)
                y = h @ self.Why + self.by
                ixes.append(int(np.argmax(y)))
            return ixes

        return call


# --- ONNX Runtime -----------------------------------------------------------------------------


class OnnxRuntimePeer(Peer):
    """The chapter's model exported by ``convert --to onnx`` (fused: ONNX's own ``RNN``
    operator) and run by ONNX Runtime's CPU build, an inference engine: the forward and
    generate workloads (no training). Its arrays are NumPy's, on the host, so it is listed
    with NumPy; its threads are the bench's (``OMP_NUM_THREADS``, which the bench sets)."""

    names: ClassVar[dict[str, str]] = {RNN: "onnxruntime.RNN"}
    framework = "numpy"
    form = "fused"
    modes: ClassVar[dict[str, str]] = {"forward": "fused", "generate": "fused"}
    libraries: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")
    cpu_only = True
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)  # ONNX Runtime's RNN has no float64

    def set_params(self, params: Arrays) -> None:
        from rosetta_rnn.core import convert, onnx_model

        self.params = {k: np.asarray(v, dtype=self.dtype) for k, v in params.items()}
        proto = convert.to_onnx_model(convert.from_params(self.params), self.form)
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
        self.session = onnx_model.Runner(proto, "onnxruntime", threads=threads)

    def get_params(self) -> Arrays:
        return dict(self.params)

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        return {"recurrence": f"ONNX Runtime, {self.form} form", **self.session.settings()}

    def _zeros(self, batch_size: int) -> np.ndarray:
        return np.zeros((batch_size, self.num_hiddens), self.dtype)

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        tokens = np.ascontiguousarray(inputs, dtype=np.int64)
        h0 = self._zeros(inputs.shape[1])
        flat = labels.reshape(-1)
        rows = np.arange(flat.size)

        def call() -> Any:
            logits = self.session.run({"tokens": tokens, "h0": h0})["logits"]
            z = logits.reshape(flat.size, -1)
            top = z.max(axis=1, keepdims=True)
            logp = z[rows, flat] - top[:, 0] - np.log(np.exp(z - top).sum(axis=1))
            return -logp.mean()

        return call

    def generate(self, first: int, num_preds: int) -> Call:
        def call() -> list[int]:
            outputs = [first]
            h = self._zeros(1)
            token = np.zeros((1, 1), np.int64)
            for _ in range(num_preds):
                token[0, 0] = outputs[-1]
                out = self.session.run({"tokens": token, "h0": h})
                h = out["h_n"]
                outputs.append(int(np.argmax(out["logits"][0, 0])))
            return outputs

        return call


class OnnxRuntimeScanPeer(OnnxRuntimePeer):
    """The same model in the decomposed form: a ``Scan`` of MatMul, Add and Tanh."""

    names: ClassVar[dict[str, str]] = {RNN: "onnxruntime.Scan"}
    form = "decomposed"
    modes: ClassVar[dict[str, str]] = {"forward": "decomposed", "generate": "decomposed"}
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")


# --- gluon.rnn.RNN, GRU, LSTM (MXNet, in its own environment) ----------------------------------


WORKERS: dict[str, Any] = {}
"""The worker of each environment, shared by every peer that runs there (``worker``)."""


def worker(environment: str) -> Any:
    """The worker of ``environment``, started on first use (its CPU time counts as the run's
    own); a missing environment is a one-line error saying how to set it up."""
    from rosetta_rnn.backends import environments, mxnet

    if environment not in WORKERS or not WORKERS[environment].alive:
        threads = os.environ.get("OMP_NUM_THREADS")  # the bench's count (benchmarks.threads)
        # MXNet's pools as the mxnet backend's worker sizes them
        env = mxnet.thread_variables(int(threads)) if threads else None
        started = environments.start(environment, env=env)  # BackendUnavailable: set it up
        machine.OWN_PIDS.add(started.pid)
        WORKERS[environment] = started
    return WORKERS[environment]


def _drop(worker: Any, peer: int) -> None:
    """Free a peer's model in its worker (the worker may be gone already)."""
    try:
        worker.call("gluon_peer_drop", peer)
    except (BackendUnavailable, RemoteError):
        pass


class GluonPeer(Peer):
    """d2l's concise model in MXNet's Gluon (as d2l's MXNet edition writes it): one-hot ->
    ``rnn.RNN(activation='tanh')``, ``rnn.GRU`` or ``rnn.LSTM`` (time-major) -> ``nn.Dense``,
    hybridized; ``autograd``, ``SoftmaxCrossEntropyLoss``, d2l's global-norm clip (no epsilon,
    unlike ``gluon.utils.clip_global_norm``) and ``gluon.Trainer``'s SGD. It runs in MXNet's
    worker; here each call is one request. Gluon keeps torch's layout and two biases per gate."""

    names: ClassVar[dict[str, str]] = {
        RNN: "gluon.rnn.RNN",
        GRU_RESET_AFTER: "gluon.rnn.GRU",
        LSTM: "gluon.rnn.LSTM",
    }
    framework = "mxnet"
    environment = "mxnet"
    cpu_only = True  # the environment's MXNet is the CPU build
    modes: ClassVar[dict[str, str]] = {
        "train": "autograd/hybridized",
        "forward": "hybridized",
        "generate": "hybridized",
    }

    def __init__(
        self, vocab_size: int, num_hiddens: int, dtype: str, device: str, cell: str = RNN
    ) -> None:
        if device != "cpu":
            raise RuntimeError("the MXNet environment is the CPU build: cpu only")
        super().__init__(vocab_size, num_hiddens, dtype, device, cell)
        self.worker = worker(self.environment or "mxnet")
        self.peer = int(self.worker.call("gluon_peer_new", cell, vocab_size, num_hiddens, dtype))
        self._finalizer = weakref.finalize(self, _drop, self.worker, self.peer)
        self.grad_norm: float | None = None  # ‖g‖ of the last ``step_once``, before the clip

    def set_params(self, params: Arrays) -> None:
        state = convert.to_torch(convert.from_params(params))
        weights = {k: np.asarray(v, dtype=self.dtype) for k, v in state.items()}
        self.worker.call("gluon_peer_set", self.peer, weights)

    def get_params(self) -> Arrays:
        return convert.to_params(convert.from_torch(self.worker.call("gluon_peer_get", self.peer)))

    def _run(self, workload: str) -> Call:
        return lambda: self.worker.call("gluon_peer_run", self.peer, workload)

    def train(self, inputs: np.ndarray, labels: np.ndarray, lr: float, theta: float) -> Call:
        self.worker.call(
            "gluon_peer_prepare", self.peer, "train", inputs, labels, lr=lr, theta=theta
        )
        return self._run("train")

    def step_once(
        self, inputs: np.ndarray, labels: np.ndarray, state: HostState, lr: float, theta: float
    ) -> tuple[float, HostState]:
        begin = tuple(state) if self.cell == LSTM else state
        loss, final, self.grad_norm = self.worker.call(
            "gluon_peer_step_once", self.peer, inputs, labels, begin, lr, theta
        )
        return float(loss), final

    def forward(self, inputs: np.ndarray, labels: np.ndarray) -> Call:
        self.worker.call("gluon_peer_prepare", self.peer, "forward", inputs, labels)
        return self._run("forward")

    def generate(self, first: int, num_preds: int) -> Call:
        self.worker.call(
            "gluon_peer_prepare", self.peer, "generate", first=first, num_preds=num_preds
        )
        return self._run("generate")

    def path(self, workload: str, call: Call, inputs: np.ndarray) -> dict[str, Any]:
        return kernels.gluon_path(self.worker, self.peer, workload)


PEER_CLASSES: tuple[type[Peer], ...] = (
    TorchPeer,
    KerasPeer,
    JaxScanPeer,
    MinCharRNNPeer,
    OnnxRuntimePeer,
    OnnxRuntimeScanPeer,
    GluonPeer,
)
PEERS: dict[str, type[Peer]] = {name: cls for cls in PEER_CLASSES for name in cls.names.values()}
"""Every peer by name: ``torch.nn.RNN``, ``torch.nn.GRU``, ... ``numpy.min-char-rnn``."""
PEER_NAMES: tuple[str, ...] = tuple(PEERS)
PEER_CELL: dict[str, str] = {name: cell for cls in PEER_CLASSES for cell, name in cls.names.items()}
"""The cell each peer computes: core's name for it (``rnn``, ``gru/reset-after`` ...)."""
PEER_FRAMEWORK = {name: cls.framework for name, cls in PEERS.items()}


def library_versions(backend: str, notes: list[str]) -> dict[str, str]:
    """Versions of the extra libraries the peers on ``backend``'s framework need; a missing
    one is a note (its peer is left out)."""
    out: dict[str, str] = {}
    for cls in PEER_CLASSES:
        for lib in cls.libraries if cls.framework == backend else ():
            try:
                out[lib] = importlib.import_module(lib).__version__
            except ImportError as e:
                notes.append(f"{', '.join(cls.names.values())} peers skipped: {e}")
    return out


def make_peer(
    name: str, vocab_size: int, num_hiddens: int, dtype: str, device: str, seed: int = 0
) -> Peer:
    """The peer ``name`` (its cell is ``PEER_CELL[name]``) with d2l-style parameters drawn
    from ``seed``."""
    cell = PEER_CELL[name]
    peer = PEERS[name](vocab_size, num_hiddens, dtype, device, cell)
    peer.set_params(init_arrays(vocab_size, num_hiddens, dtype, seed, cell))
    return peer

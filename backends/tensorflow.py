"""TensorFlow backend: gradients by ``tf.GradientTape`` (or core's BPTT), the whole train step
in one ``tf.function`` unless ``--eager``; ``scan`` is a graph ``while_loop`` when traced.

Importing it changes no TensorFlow setting. Listing the GPUs (``devices``, ``make_ops``) lets
TensorFlow's GPU memory grow as needed instead of taking it all, so it can share a GPU with
JAX or torch; a float32 run turns TF32 off (both switches are process-wide in TensorFlow).
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import tensorflow as tf

from rosetta_rnn import backends as _registry
from rosetta_rnn.backends import rules
from rosetta_rnn.core import replicas as core_replicas
from rosetta_rnn.core.cells import any_forward, any_forward_loss
from rosetta_rnn.core.contract import ForwardFn, ReplicaBackend, StepFn
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.model import (
    Params,
    ValueAndGrad,
    output_layer,
    param_names,
    softmax,
    train_step,
)
from rosetta_rnn.core.ops import python_scan

NAME = "tensorflow"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes
DECODE_MODE = "tf.function"
"""How ``ops.decode`` runs generation: every token in one compiled program."""

# CUDA's start-up notices (cuInit on a machine without a GPU) are printed once, when TensorFlow
# first looks for its devices, whichever call that is (a thread setting, an op, a device query).
# Looking here, under the filter, keeps them off the terminal. Listing the physical devices
# initialises no runtime: thread counts and memory growth can still be set afterwards.
with rules.native_notices_dropped():
    tf.config.list_physical_devices("GPU")


def version() -> str:
    return str(tf.__version__)


def _gpu_count() -> int:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:  # allocate GPU memory as needed, so TensorFlow can share the GPU with JAX or torch
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPUs are already initialised; the setting is fixed by then
            pass
    return len(gpus)


def compile_modes(device: str) -> tuple[str, ...]:
    return COMPILE_MODES


def devices() -> list[str]:
    return rules.device_labels(_gpu_count())


def supports_float64(device: str) -> bool:
    return True


def resolve_device(device: str) -> str:
    """auto -> gpu:0 when TensorFlow sees a GPU, else cpu; gpu -> gpu:0; checks the index."""
    no_gpu = (
        "TensorFlow sees no GPU (a CUDA build of TensorFlow and a driver are needed: "
        "pip install 'tensorflow[and-cuda]'); use --device cpu"
    )
    return rules.resolve_device(device, _gpu_count, "TensorFlow", no_gpu)


def _tf_device_name(device: str) -> str:
    """Our label -> TensorFlow's: cpu -> /CPU:0, gpu:N -> /GPU:N."""
    return "/CPU:0" if device == "cpu" else f"/GPU:{rules.gpu_index(device)}"


_F = TypeVar("_F", bound=Callable[..., Any])


def _placed(method: _F) -> _F:
    """Run an operation under the ops' device (TensorFlow would otherwise prefer gpu:0)."""

    @functools.wraps(method)
    def wrapper(self: TensorFlowOps, *args: Any, **kwargs: Any) -> Any:
        with self.placed():
            return method(self, *args, **kwargs)

    return typing.cast(_F, wrapper)


class TensorFlowOps:
    """The tensor interface over TensorFlow. TensorFlow never promotes dtypes, so every
    creation and cast names ``dtype`` explicitly."""

    name = NAME

    def __init__(self, dtype: str = "float32", device: str = "cpu") -> None:
        self.dtype = dtype
        self.device = device
        self.tf_device = _tf_device_name(device)
        self.tf_dtype = tf.as_dtype(dtype)
        self._np_dtype = np.dtype(dtype)
        self._decoders: dict[tuple[str, str | None, bool], Callable[..., Any]] = {}
        self._evaluators: dict[tuple[str, str | None], Callable[..., Any]] = {}

    @contextmanager
    def placed(self) -> Iterator[None]:
        """``with ops.placed():`` runs TensorFlow code on this ops' device."""
        with tf.device(self.tf_device):
            yield

    def _as_tensor(self, x: Any) -> tf.Tensor:
        """A tensor of ``dtype``; a Python number converts straight to it (``tf.cast`` of a
        Python float would round it through float32 first)."""
        if tf.is_tensor(x):
            return tf.cast(x, self.tf_dtype)
        return tf.convert_to_tensor(x, dtype=self.tf_dtype)

    @_placed
    def asarray(self, x: np.ndarray) -> tf.Tensor:
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(self._np_dtype)
        elif np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.int64)
        return tf.identity(tf.constant(x))  # identity: the copy onto the device

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    @_placed
    def zeros(self, shape: Sequence[int]) -> tf.Tensor:
        return tf.zeros(tuple(shape), dtype=self.tf_dtype)

    @_placed
    def cast(self, x: Any) -> tf.Tensor:
        return tf.cast(x, self.tf_dtype)

    @_placed
    def matmul(self, a: Any, b: Any) -> tf.Tensor:
        return tf.linalg.matmul(a, b)

    @_placed
    def one_hot(self, indices: Any, depth: int) -> tf.Tensor:
        return tf.one_hot(indices, depth, dtype=self.tf_dtype)

    @_placed
    def gather(self, table: Any, indices: Any) -> tf.Tensor:
        return tf.gather(table, indices, axis=0)

    @_placed
    def tanh(self, x: Any) -> tf.Tensor:
        return tf.math.tanh(x)

    @_placed
    def relu(self, x: Any) -> tf.Tensor:
        return tf.nn.relu(x)

    @_placed
    def exp(self, x: Any) -> tf.Tensor:
        return tf.math.exp(x)

    @_placed
    def log(self, x: Any) -> tf.Tensor:
        return tf.math.log(x)

    @_placed
    def sqrt(self, x: Any) -> tf.Tensor:
        return tf.math.sqrt(x)

    @_placed
    def minimum(self, a: Any, b: Any) -> tf.Tensor:
        return tf.math.minimum(self._as_tensor(a), self._as_tensor(b))

    @_placed
    def max(self, x: Any, axis: int, keepdims: bool = False) -> tf.Tensor:
        return tf.math.reduce_max(x, axis=axis, keepdims=keepdims)

    @_placed
    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> tf.Tensor:
        return tf.math.reduce_sum(x, axis=axis, keepdims=keepdims)

    @_placed
    def argmax(self, x: Any, axis: int) -> tf.Tensor:
        # the smallest index i with x_i = max x: tie-breaking that holds on every device
        x = tf.convert_to_tensor(x)
        axis = axis % x.shape.rank
        n = tf.shape(x, out_type=tf.int64)[axis]
        shape = [1] * x.shape.rank
        shape[axis] = -1
        index = tf.reshape(tf.range(n, dtype=tf.int64), shape)
        hit = tf.equal(x, tf.math.reduce_max(x, axis=axis, keepdims=True))
        return tf.math.reduce_min(tf.where(hit, index, n), axis=axis)

    @_placed
    def reshape(self, x: Any, shape: Sequence[int]) -> tf.Tensor:
        return tf.reshape(x, tuple(shape))

    @_placed
    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> tf.Tensor:
        return tf.transpose(x, perm=None if axes is None else list(axes))

    @_placed
    def stack(self, xs: Sequence[Any], axis: int = 0) -> tf.Tensor:
        return tf.stack(list(xs), axis=axis)

    @_placed
    def concat(self, xs: Sequence[Any], axis: int = 0) -> tf.Tensor:
        return tf.concat(list(xs), axis=axis)

    @_placed
    def stop_gradient(self, x: Any) -> tf.Tensor:
        return tf.stop_gradient(x)

    def forward_loss(
        self,
        params: Params,
        inputs: Any,
        labels: Any,
        state: Any,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> tuple[Any, Any]:
        """core's ``any_forward_loss`` over one chunk as one ``tf.function``
        (``make_forward``), which ``core.evaluation`` runs each chunk of a text through."""
        key = (activation, cell)
        if key not in self._evaluators:
            self._evaluators[key] = make_forward(self, "tf.function", activation, cell)
        return self._evaluators[key](params, inputs, labels, state)

    def decode(
        self,
        params: Params,
        state: Any,
        first: int,
        num_preds: int,
        temperature: float | None,
        uniforms: np.ndarray | None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> np.ndarray:
        """``num_preds`` tokens after ``first`` from ``state``, as ``core.sampling.predict``'s
        host loop picks them, in one ``tf.function`` (``_decoder``)."""
        key = (activation, cell, bool(temperature))
        if key not in self._decoders:
            self._decoders[key] = _decoder(self, activation, cell, bool(temperature))
        us = np.zeros(num_preds) if uniforms is None else np.asarray(uniforms)
        with self.placed():
            tokens = self._decoders[key](
                params,
                state,
                tf.constant(first, dtype=tf.int64),
                tf.constant(us, dtype=self.tf_dtype),
                tf.constant(temperature or 1.0, dtype=self.tf_dtype),
            )
        return np.asarray(tokens)

    @_placed
    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        """A Python loop when eager; a ``tf.while_loop`` over TensorArrays inside
        ``tf.function``, so tracing does not unroll num_steps copies of forward and backward."""
        if tf.executing_eagerly():
            return python_scan(self, fn, carry, xs, reverse)
        return _graph_scan(fn, carry, xs, reverse)


def _decoder(
    ops: TensorFlowOps, activation: str, cell: str | None, sampled: bool
) -> Callable[..., Any]:
    """The decoding loop as one ``tf.function`` (a graph ``while_loop`` over the tokens): each
    step reads one token with core's ``any_forward`` and ``output_layer``, then picks the next
    as ``next_token`` does: greedy, the first index of the maximum (``ops.argmax``); sampled,
    the first index whose cumulative probability (of core's ``softmax`` at the temperature)
    exceeds u times the total."""

    def run(params: Params, state: Any, first: Any, uniforms: Any, temperature: Any) -> Any:
        def step(carry: tuple[Any, Any], u: Any) -> tuple[tuple[Any, Any], Any]:
            state, token = carry
            Hs, state = any_forward(ops, params, tf.reshape(token, (1, 1)), state, activation, cell)
            logits = output_layer(ops, params, Hs)  # (1, V)
            if sampled:
                probs = softmax(ops, logits / temperature)[0]
                cdf = tf.math.cumsum(probs)
                below = tf.math.reduce_sum(tf.cast(cdf <= u * cdf[-1], tf.int64))
                token = tf.minimum(below, tf.cast(tf.shape(probs)[0] - 1, tf.int64))
            else:
                token = ops.argmax(logits, axis=-1)[0]  # the first of equal maxima
            return (state, token), token

        _, tokens = _graph_scan(step, (state, first), uniforms, False)
        return tokens

    return tf.function(run, autograph=False)


def _graph_scan(
    fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool
) -> tuple[Any, Any]:
    """``lax.scan`` as a graph loop. The first step runs before the loop, so the structure,
    dtypes and shapes of ``y_t`` are known when the output TensorArrays are made."""
    flat_xs = [tf.convert_to_tensor(x) for x in tf.nest.flatten(xs)]
    length = int(flat_xs[0].shape[0])
    # TensorArray reads: the gradient of a read is a write, not a dense zeros-plus-slice
    xs_tas = [
        tf.TensorArray(x.dtype, size=length, element_shape=x.shape[1:]).unstack(x) for x in flat_xs
    ]

    def x_at(t: Any) -> Any:
        return tf.nest.pack_sequence_as(xs, [ta.read(t) for ta in xs_tas])

    def time(i: Any) -> Any:  # the i-th step of the walk is time t
        return length - 1 - i if reverse else i

    carry, y = fn(carry, x_at(time(0)))
    ys_tas = [
        tf.TensorArray(v.dtype, size=length, element_shape=v.shape).write(time(0), v)
        for v in tf.nest.flatten(y)
    ]

    def body(i: Any, carry: Any, ys_tas: list[Any]) -> tuple[Any, Any, list[Any]]:
        t = time(i)
        carry, y = fn(carry, x_at(t))
        return (
            i + 1,
            carry,
            [ta.write(t, v) for ta, v in zip(ys_tas, tf.nest.flatten(y), strict=True)],
        )

    _, carry, ys_tas = tf.while_loop(
        lambda i, *_: i < length,
        body,
        (tf.constant(1), carry, ys_tas),
        maximum_iterations=length - 1,
    )
    return carry, tf.nest.pack_sequence_as(y, [ta.stack() for ta in ys_tas])


def stop_gradient(state: Any) -> Any:
    """``tf.stop_gradient`` of a state: H, or each of the LSTM's pair (H, C) (a bare
    ``tf.stop_gradient`` would stack the pair into one tensor)."""
    return tf.nest.map_structure(tf.stop_gradient, state)


def make_ops(dtype: str = "float32", device: str = "cpu") -> TensorFlowOps:
    ops = TensorFlowOps(dtype, resolve_device(device))
    if dtype == "float32":  # TF32 would round matmul inputs to 10 mantissa bits on GPUs
        tf.config.experimental.enable_tensor_float_32_execution(False)
    return ops


def autograd_value_and_grad(
    ops: TensorFlowOps, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """(loss, grads, H_T) by ``tf.GradientTape`` over core's forward and loss."""

    def value_and_grad(
        params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        with tf.GradientTape() as tape:
            tape.watch(params)  # plain tensors, not Variables: the tape must be told
            loss, H_T = any_forward_loss(ops, params, inputs, labels, state, activation, cell)
        grads = tape.gradient(loss, params)
        # ∂loss/∂W_xh through the gather arrives as IndexedSlices: make every gradient dense
        dense = {name: tf.convert_to_tensor(grads[name]) for name in param_names(params)}
        return loss, dense, H_T

    return value_and_grad


def make_value_and_grad(
    ops: TensorFlowOps, grad: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """The gradient engine named by ``--grad``: the tape (autograd) or core's BPTT."""
    return rules.gradient_engine(NAME, grad, ops, activation, autograd_value_and_grad, cell)


def make_train_step(
    ops: TensorFlowOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    """core's train step with tape or BPTT gradients, in one ``tf.function`` unless eager."""
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    value_and_grad = make_value_and_grad(ops, grad, activation, cell)

    def step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: Any, theta: Any
    ) -> tuple[Params, Any, Any, Any]:
        new_params, H_T, loss, norm = train_step(
            ops, value_and_grad, params, inputs, labels, state, lr, theta
        )
        return new_params, stop_gradient(H_T), loss, norm  # the next minibatch starts here

    # One trace per input shape (core reads static shapes, so no reduce_retracing: it would
    # make them None); lr and θ go in as tensors so new values reuse the trace. core has no
    # tensor-dependent Python control flow, so AutoGraph has nothing to convert.
    run = tf.function(step, autograph=False) if mode == "tf.function" else step

    def placed_step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        with ops.placed():
            lr_t = tf.convert_to_tensor(lr, dtype=ops.tf_dtype)
            theta_t = tf.convert_to_tensor(theta, dtype=ops.tf_dtype)
            return run(params, inputs, labels, state, lr_t, theta_t)

    return placed_step


def make_forward(
    ops: TensorFlowOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    run = tf.function(forward, autograph=False) if mode == "tf.function" else forward

    def placed(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        with ops.placed():
            return run(params, inputs, labels, state)

    return placed


def sync(ops: TensorFlowOps, out: Any) -> None:
    tf.test.experimental.sync_devices()  # GPU kernels run asynchronously


def set_threads(threads: int) -> str:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime is initialised; TF_NUM_*_THREADS or defaults apply
        return "TensorFlow already initialised; its pools keep their size"
    return f"tf.config.threading intra/inter-op = {threads}"


REPLICA_ENGINE = "MirroredStrategy"


def prepare_replicas(replicas: int) -> None:
    """Split the CPU into ``replicas`` logical devices for MirroredStrategy, before TensorFlow's
    runtime starts (it cannot change them afterwards; ``make_replicated_step`` then says when
    there are too few). Each is a device name over the same cores and thread pools."""
    cpus = tf.config.list_physical_devices("CPU")
    have = tf.config.get_logical_device_configuration(cpus[0]) or []
    if len(have) >= replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:  # the runtime has started
        pass


class _ReplicaOps(TensorFlowOps):
    """The ops inside one replica's program: no device of their own, so every operation runs
    on the replica's device, where MirroredStrategy placed it."""

    @contextmanager
    def placed(self) -> Iterator[None]:
        yield


DEVICE_FAILURES = (
    tf.errors.ResourceExhaustedError,
    tf.errors.InternalError,
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DataLossError,
)
"""The runtime's errors that say a device or its collective failed, not the program."""


class TensorFlowReplicas:
    """A ``core.replicas.ReplicatedStep`` on ``tf.distribute.MirroredStrategy``: one process,
    one replica per logical CPU device (or GPU), core's replica step under ``strategy.run`` in
    one ``tf.function``, the gradients combined by the replica context's ``all_reduce``.

    The step stays functional (parameters in, parameters out) rather than Keras'
    ``MirroredVariable``s updated by an optimizer: core's SGD and clipping are the ones under
    test. Parameters go in as plain tensors, which every replica reads; the minibatch and the
    carried state go in split, one shard per replica. The collective runs inside the
    compiled step: ``collective_seconds`` is NaN."""

    def __init__(
        self,
        ops: TensorFlowOps,
        replicas: int,
        grad: str | None,
        activation: str,
        cell: str | None = None,
    ) -> None:
        kind = "CPU" if ops.device == "cpu" else "GPU"
        devices = tf.config.list_logical_devices(kind)
        if len(devices) < replicas:
            hint = (
                " (TensorFlow started before it could be asked for more; --replicas splits the "
                "CPU in a fresh process)"
                if kind == "CPU"
                else ""
            )
            raise BackendUnavailable(
                f"--replicas {replicas} needs {replicas} {kind} devices; TensorFlow has "
                f"{len(devices)}{hint}"
            )
        names = [d.name for d in devices[:replicas]]
        reduce = (
            tf.distribute.ReductionToOneDevice(reduce_to_device=names[0])
            if kind == "CPU"
            else tf.distribute.NcclAllReduce()
        )
        self.strategy = tf.distribute.MirroredStrategy(names, cross_device_ops=reduce)
        self.replicas = replicas
        self.engine = (
            f"tf.distribute.MirroredStrategy over {replicas} {kind} devices, "
            f"{type(reduce).__name__}"
        )
        self.collective_seconds = math.nan
        self.worker_pids: tuple[int, ...] = ()
        self.ops = ops
        replica_ops = _ReplicaOps(ops.dtype, ops.device)
        value_and_grad = make_value_and_grad(replica_ops, grad, activation, cell)
        strategy = self.strategy

        def all_mean(tensors: list[Any]) -> list[Any]:
            context = tf.distribute.get_replica_context()
            return list(context.all_reduce(tf.distribute.ReduceOp.MEAN, tensors))

        def replica_step(
            params: Params, inputs: Any, labels: Any, state: Any, lr: Any, theta: Any
        ) -> tuple[Params, Any, Any, Any]:
            new, H_T, loss, norm = core_replicas.replica_train_step(
                replica_ops, value_and_grad, all_mean, params, inputs, labels, state, lr, theta
            )
            return new, stop_gradient(H_T), loss, norm

        def replica_vg(
            params: Params, inputs: Any, labels: Any, state: Any
        ) -> tuple[Any, Params, Any]:
            return core_replicas.replica_value_and_grad(
                value_and_grad, all_mean, params, inputs, labels, state
            )

        @tf.function(autograph=False)
        def step(params: Params, inputs: Any, labels: Any, state: Any, lr: Any, theta: Any) -> Any:
            return strategy.run(replica_step, args=(params, inputs, labels, state, lr, theta))

        @tf.function(autograph=False)
        def vg(params: Params, inputs: Any, labels: Any, state: Any) -> Any:
            return strategy.run(replica_vg, args=(params, inputs, labels, state))

        self._step, self._vg = step, vg

    def _split(self, x: Any, axis: int) -> Any:
        """A per-replica value: replica r's equal shard of ``x`` along ``axis``."""
        parts = [core_replicas.shard(x, self.replicas, r, axis) for r in range(self.replicas)]
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group]
        )

    def _split_state(self, state: Any) -> Any:
        if isinstance(state, tuple):
            return tuple(self._split(s, 0) for s in state)
        return self._split(state, 0)

    def _local(self, value: Any) -> list[Any]:
        return list(self.strategy.experimental_local_results(value))

    def _joined(self, state: Any) -> Any:
        """The whole state, every replica's rows in replica order, on the ops' device."""
        with self.ops.placed():
            if isinstance(state, tuple):
                return tuple(tf.concat(self._local(s), 0) for s in state)
            return tf.concat(self._local(state), 0)

    def _first(self, value: Any) -> Any:
        """Replica 0's copy of a value every replica holds the same (the all-reduced loss and
        gradients, the parameters updated from them)."""
        return tf.nest.map_structure(lambda v: self._local(v)[0], value)

    def __call__(
        self, params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        lr_t = tf.convert_to_tensor(lr, dtype=self.ops.tf_dtype)
        theta_t = tf.convert_to_tensor(theta, dtype=self.ops.tf_dtype)
        with self._device_failures():
            new, H_T, loss, norm = self._step(
                params,
                self._split(inputs, 1),
                self._split(labels, 1),
                self._split_state(state),
                lr_t,
                theta_t,
            )
            return self._first(new), self._joined(H_T), self._first(loss), self._first(norm)

    def value_and_grad(
        self, params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        with self._device_failures():
            loss, grads, H_T = self._vg(
                params, self._split(inputs, 1), self._split(labels, 1), self._split_state(state)
            )
            return self._first(loss), self._first(grads), self._joined(H_T)

    def _device_failures(self) -> Any:
        """Every replica is a device of this process, so no replica can be lost alone: what can
        fail is the runtime running the step, a device out of memory, gone or failing its
        collective. Those ``OpError`` kinds are one line; an argument or shape error (a bug)
        passes as it is."""
        return core_replicas.device_failures(self.engine, DEVICE_FAILURES)

    def close(self) -> None:
        """Nothing to release: the logical devices belong to the process."""


def make_replicated_step(
    ops: TensorFlowOps,
    replicas: int,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> core_replicas.ReplicatedStep:
    """core's replica step under MirroredStrategy, in one ``tf.function``."""
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    if mode != "tf.function":
        raise BackendUnavailable("--replicas runs TensorFlow's step in a tf.function; no --eager")
    return TensorFlowReplicas(ops, replicas, grad, activation, cell)


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import tensorflow as _this

    _checked: ReplicaBackend[TensorFlowOps] = _this

"""TensorFlow backend: gradients by ``tf.GradientTape`` (or core's BPTT), the whole train step
in one ``tf.function`` unless ``--eager``; ``scan`` is a graph ``while_loop`` when traced.

Importing it changes no TensorFlow setting. Listing the GPUs (``devices``, ``make_ops``) lets
TensorFlow's GPU memory grow as needed instead of taking it all, so it can share a GPU with
JAX or torch; a float32 run turns TF32 off (both switches are process-wide in TensorFlow).
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import tensorflow as tf

from rosetta_rnn import backends as _registry
from rosetta_rnn.core.cells import any_forward_loss
from rosetta_rnn.core.contract import Backend, ForwardFn, StepFn
from rosetta_rnn.core.model import (
    Params,
    ValueAndGrad,
    param_names,
    train_step,
)
from rosetta_rnn.core.ops import python_scan

NAME = "tensorflow"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes

# CUDA's start-up notices (cuInit on a machine without a GPU) are printed once, when TensorFlow
# first looks for its devices, whichever call that is (a thread setting, an op, a device query).
# Looking here, under the filter, keeps them off the terminal. Listing the physical devices
# initialises no runtime: thread counts and memory growth can still be set afterwards.
with _registry.native_notices_dropped():
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
    return _registry.device_labels(_gpu_count())


def supports_float64(device: str) -> bool:
    return True


def resolve_device(device: str) -> str:
    """auto -> gpu:0 when TensorFlow sees a GPU, else cpu; gpu -> gpu:0; checks the index."""
    no_gpu = (
        "TensorFlow sees no GPU (a CUDA build of TensorFlow and a driver are needed: "
        "pip install 'tensorflow[and-cuda]'); use --device cpu"
    )
    return _registry.resolve_device(device, _gpu_count, "TensorFlow", no_gpu)


def _tf_device_name(device: str) -> str:
    """Our label -> TensorFlow's: cpu -> /CPU:0, gpu:N -> /GPU:N."""
    return "/CPU:0" if device == "cpu" else f"/GPU:{_registry.gpu_index(device)}"


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

    @_placed
    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        """A Python loop when eager; a ``tf.while_loop`` over TensorArrays inside
        ``tf.function``, so tracing does not unroll num_steps copies of forward and backward."""
        if tf.executing_eagerly():
            return python_scan(self, fn, carry, xs, reverse)
        return _graph_scan(fn, carry, xs, reverse)


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


def autograd_value_and_grad(ops: TensorFlowOps, activation: str = "tanh") -> ValueAndGrad:
    """(loss, grads, H_T) by ``tf.GradientTape`` over core's forward and loss."""

    def value_and_grad(
        params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        with tf.GradientTape() as tape:
            tape.watch(params)  # plain tensors, not Variables: the tape must be told
            loss, H_T = any_forward_loss(ops, params, inputs, labels, state, activation)
        grads = tape.gradient(loss, params)
        # ∂loss/∂W_xh through the gather arrives as IndexedSlices: make every gradient dense
        dense = {name: tf.convert_to_tensor(grads[name]) for name in param_names(params)}
        return loss, dense, H_T

    return value_and_grad


def make_value_and_grad(
    ops: TensorFlowOps, grad: str | None = None, activation: str = "tanh"
) -> ValueAndGrad:
    """The gradient engine named by ``--grad``: the tape (autograd) or core's BPTT."""
    return _registry.gradient_engine(NAME, grad, ops, activation, autograd_value_and_grad)


def make_train_step(
    ops: TensorFlowOps, grad: str | None = None, mode: str | None = None, activation: str = "tanh"
) -> StepFn:
    """core's train step with tape or BPTT gradients, in one ``tf.function`` unless eager."""
    mode = _registry.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    value_and_grad = make_value_and_grad(ops, grad, activation)

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
    ops: TensorFlowOps, mode: str | None = None, activation: str = "tanh"
) -> ForwardFn:
    mode = _registry.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return any_forward_loss(ops, params, inputs, labels, state, activation)

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


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import tensorflow as _this

    _checked: Backend[TensorFlowOps] = _this

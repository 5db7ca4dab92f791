"""JAX backend: gradients by ``jax.value_and_grad`` (or core's BPTT), the whole step under
``jax.jit`` by default, the recurrence as ``lax.scan``.

Importing it changes no JAX setting. A float64 run (``make_ops("float64")``) turns on
``jax_enable_x64``, the one switch JAX has for 64-bit arrays: it is process-wide (JAX offers no
scoped form that survives into jitted functions called later), so it stays on for the rest of
the process; float32 runs are unaffected by it because every array is made with an explicit
dtype and Python scalars are weakly typed. Matmuls ask for ``precision="highest"`` themselves,
so TF32 is off on GPUs without touching ``jax_default_matmul_precision``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    softmax,
    train_step,
)
from rosetta_rnn.core.ops import python_scan

NAME = "jax"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes
DECODE_MODE = "jit"
"""How ``ops.decode`` runs generation: every token in one compiled program."""


def version() -> str:
    return jax.__version__


def _gpu_devices() -> list[Any]:
    """The GPUs JAX sees (CUDA or ROCm); none when no GPU plugin or driver is present."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend gpu" / no driver
        return []


def devices() -> list[str]:
    return rules.device_labels(len(_gpu_devices()))


def supports_float64(device: str) -> bool:
    return True


def compile_modes(device: str) -> tuple[str, ...]:
    return COMPILE_MODES


def resolve_device(device: str) -> str:
    """auto -> gpu:0 when JAX sees a GPU, else cpu; gpu -> gpu:0; checks the index."""
    no_gpu = "JAX sees no GPU; install a GPU build with: pip install -U 'jax[cuda12]'"
    return rules.resolve_device(device, lambda: len(_gpu_devices()), "JAX", no_gpu)


def _jax_device(label: str) -> Any:
    """A resolved label ("cpu", "gpu:N") -> the ``jax.Device``."""
    if label == "cpu":
        return jax.devices("cpu")[0]
    return _gpu_devices()[rules.gpu_index(label)]


def _traced(tree: Any) -> bool:
    """Whether any leaf is a tracer (inside ``jax.jit``, ``jax.grad`` ...) rather than a value."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


class JaxOps:
    """The tensor interface over ``jax.numpy``; arrays are committed to one device.

    ``scan`` is ``lax.scan`` while being traced and a Python loop on concrete arrays (and
    always with ``eager_loops``): outside ``jit`` a ``lax.scan`` compiles its body on every
    call, which makes sampling and the ``--eager`` step many times slower than op-by-op.
    """

    name = NAME

    def __init__(
        self, dtype: str = "float32", device: str = "cpu", eager_loops: bool = False
    ) -> None:
        self.dtype = dtype
        self.device = device
        self.eager_loops = eager_loops
        self._dtype = np.dtype(dtype)
        self._device = _jax_device(device)
        self._decoders: dict[tuple[str, str | None, bool], Callable[..., Any]] = {}
        self._evaluators: dict[tuple[str, str | None], Callable[..., Any]] = {}

    def asarray(self, x: np.ndarray) -> Any:
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(self._dtype)
        return jax.device_put(x, self._device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, shape: Sequence[int]) -> Any:
        return jnp.zeros(tuple(shape), dtype=self._dtype, device=self._device)

    def cast(self, x: Any) -> Any:
        return jnp.asarray(x, dtype=self._dtype)

    def matmul(self, a: Any, b: Any) -> Any:
        return jnp.matmul(a, b, precision="highest")  # no TF32 on GPUs

    def one_hot(self, indices: Any, depth: int) -> Any:
        return jax.nn.one_hot(indices, depth, dtype=self._dtype)

    def gather(self, table: Any, indices: Any) -> Any:
        return jnp.take(table, indices, axis=0)

    def tanh(self, x: Any) -> Any:
        return jnp.tanh(x)

    def relu(self, x: Any) -> Any:
        return jax.nn.relu(x)  # derivative [x > 0], 0 at 0, like core's BPTT

    def exp(self, x: Any) -> Any:
        return jnp.exp(x)

    def log(self, x: Any) -> Any:
        return jnp.log(x)

    def sqrt(self, x: Any) -> Any:
        return jnp.sqrt(x)

    def minimum(self, a: Any, b: Any) -> Any:
        return jnp.minimum(a, b).astype(self._dtype)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return jnp.max(x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        return jnp.sum(x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return jnp.argmax(x, axis=axis)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return jnp.reshape(x, tuple(shape))

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        return jnp.transpose(x, None if axes is None else tuple(axes))

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return jnp.stack(list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return jnp.concatenate(list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        return lax.stop_gradient(x)

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        if self.eager_loops or not _traced((carry, xs)):
            return python_scan(self, fn, carry, xs, reverse)
        return lax.scan(fn, carry, xs, reverse=reverse)

    def forward_loss(
        self,
        params: Params,
        inputs: Any,
        labels: Any,
        state: Any,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> tuple[Any, Any]:
        """core's ``any_forward_loss`` over one chunk as one jitted program (``make_forward``),
        which ``core.evaluation`` runs each chunk of a text through."""
        key = (activation, cell)
        if key not in self._evaluators:
            self._evaluators[key] = make_forward(self, "jit", activation, cell)
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
        host loop picks them, in one ``lax.scan`` under ``jax.jit`` (``_decoder``)."""
        key = (activation, cell, bool(temperature))
        if key not in self._decoders:
            self._decoders[key] = _decoder(self, activation, cell, bool(temperature))
        us = np.zeros(num_preds) if uniforms is None else np.asarray(uniforms)
        tokens = self._decoders[key](
            params,
            state,
            jnp.asarray(first, dtype=jnp.int32),
            jax.device_put(us.astype(self._dtype), self._device),
            jnp.asarray(temperature or 1.0, dtype=self._dtype),
        )
        return np.asarray(tokens)


def _decoder(ops: JaxOps, activation: str, cell: str | None, sampled: bool) -> Callable[..., Any]:
    """The jitted decoding loop: each step reads one token with core's ``any_forward`` (a
    one-step ``lax.scan``) and ``output_layer``, then picks the next as ``next_token`` does:
    greedy, the first index of the maximum; sampled, the first index whose cumulative
    probability (of core's ``softmax`` at the temperature) exceeds u times the total."""

    def run(params: Params, state: Any, first: Any, uniforms: Any, temperature: Any) -> Any:
        def step(carry: tuple[Any, Any], u: Any) -> tuple[tuple[Any, Any], Any]:
            state, token = carry
            Hs, state = any_forward(
                ops, params, jnp.reshape(token, (1, 1)), state, activation, cell
            )
            logits = output_layer(ops, params, Hs)  # (1, V)
            if sampled:
                probs = softmax(ops, logits / temperature)[0]
                cdf = jnp.cumsum(probs)
                below = jnp.sum(cdf <= u * cdf[-1], dtype=jnp.int32)
                token = jnp.minimum(below, probs.shape[0] - 1)
            else:
                token = jnp.argmax(logits[0]).astype(jnp.int32)  # the first of equal maxima
            return (state, token), token

        _, tokens = lax.scan(step, (state, first), uniforms)
        return tokens

    return jax.jit(run)


def make_ops(dtype: str = "float32", device: str = "cpu") -> JaxOps:
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # see the module docstring
    return JaxOps(dtype, resolve_device(device))


def autograd_value_and_grad(
    ops: JaxOps, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """∂loss/∂params of core's ``any_forward_loss`` by reverse-mode autodiff; H_T rides as aux."""

    def loss_fn(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    vg = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)

    def value_and_grad(
        params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        (loss, H_T), grads = vg(params, inputs, labels, state)
        return loss, grads, H_T

    return value_and_grad


def _jitted(mode: str | None) -> bool:
    return rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES) == "jit"


def _step_ops(ops: JaxOps, jitted: bool) -> JaxOps:
    """The ops a step computes with: eager steps loop in Python (see ``JaxOps``)."""
    return ops if jitted else JaxOps(ops.dtype, ops.device, eager_loops=True)


def _value_and_grad(
    ops: JaxOps, grad: str | None, activation: str, cell: str | None = None
) -> ValueAndGrad:
    return rules.gradient_engine(NAME, grad, ops, activation, autograd_value_and_grad, cell)


def make_value_and_grad(
    ops: JaxOps,
    grad: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
    *,
    mode: str | None = None,
) -> ValueAndGrad:
    """(params, inputs, labels, state) -> (loss, grads, H_T) as the train step computes them
    (jitted unless ``mode`` is ``"eager"``)."""
    jitted = _jitted(mode)
    value_and_grad = _value_and_grad(_step_ops(ops, jitted), grad, activation, cell)
    return jax.jit(value_and_grad) if jitted else value_and_grad


def make_train_step(
    ops: JaxOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    """core's train step with JAX autodiff or core's BPTT; jitted unless ``mode`` is eager.

    Eager steps run every operation as it comes, the recurrence as a Python loop that
    autodiff unrolls; jitted steps trace it once into ``lax.scan``.
    """
    jitted = _jitted(mode)
    ops = _step_ops(ops, jitted)
    value_and_grad = _value_and_grad(ops, grad, activation, cell)
    dtype = np.dtype(ops.dtype)

    def step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: Any, theta: Any
    ) -> tuple[Params, Any, Any, Any]:
        # lr and θ as ops.dtype scalars: float32 runs stay float32, rounded as NumPy rounds them
        lr, theta = jnp.asarray(lr, dtype=dtype), jnp.asarray(theta, dtype=dtype)
        new_params, H_T, loss, norm = train_step(
            ops, value_and_grad, params, inputs, labels, state, lr, theta
        )
        return new_params, lax.stop_gradient(H_T), loss, norm  # the next state starts a new graph

    # lr and θ are traced arguments: a new learning rate or θ reuses the compiled step
    return jax.jit(step) if jitted else step


def make_forward(
    ops: JaxOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    jitted = _jitted(mode)
    ops = _step_ops(ops, jitted)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    return jax.jit(forward) if jitted else forward


def sync(ops: JaxOps, out: Any) -> None:
    jax.block_until_ready(out)  # JAX dispatches asynchronously, on CPU too


def set_threads(threads: int) -> str:
    # XLA's CPU pool has no N-thread setting, only off ($XLA_FLAGS, before import)
    return "XLA Eigen pool = CPUs in the affinity set" + (
        " (multi-threading off)" if threads == 1 else ""
    )


REPLICA_ENGINE = "shard_map"
REPLICA_AXIS = "replica"


def prepare_replicas(replicas: int) -> None:
    """JAX makes one CPU device unless told otherwise before its backend starts: ask for
    ``replicas`` of them now (a no-op for the GPUs, which JAX counts itself). A JAX that has
    already started keeps its count; ``make_replicated_step`` says when it is too small."""
    try:
        jax.config.update("jax_num_cpu_devices", max(replicas, jax.config.jax_num_cpu_devices))
    except RuntimeError:  # the backend has started
        pass


class _MeshOps(JaxOps):
    """The ops of one replica's program under ``shard_map``: arrays it creates are not
    committed to one device (the mesh places them)."""

    def zeros(self, shape: Sequence[int]) -> Any:
        return jnp.zeros(tuple(shape), dtype=self._dtype)


class JaxReplicas:
    """A ``core.replicas.ReplicatedStep``: one process, ``replicas`` devices in a mesh with one
    axis, and core's replica step under ``jax.shard_map``, jitted.

    ``shard_map`` rather than a ``NamedSharding`` of the batch under plain ``jit``: with the
    latter, XLA's partitioner derives the collectives from the one-device program, which is
    correct but leaves nothing to read or get wrong; shard_map runs the per-replica program
    explicitly, with ``lax.pmean`` where the all-reduce is, the same structure as the torch
    and TensorFlow engines (and as core.replicas describes). The collective runs inside the
    compiled step, so its time is not separable: ``collective_seconds`` is NaN.

    ``check_vma=False``: with JAX's tracking of per-replica values on, the gradient of a
    parameter that enters replicated is already summed over the replicas (autodiff transposes
    the implicit broadcast into a ``psum``), so a ``pmean`` after it gives N times the
    minibatch's gradient (measured: the trajectory leaves NumPy's at the first unclipped step),
    and core's ``scan`` carries, which start replicated, are refused. Off, every value in the
    replica's program is its own and the one collective is the explicit ``pmean``."""

    def __init__(
        self,
        ops: JaxOps,
        replicas: int,
        grad: str | None,
        activation: str,
        cell: str | None = None,
    ) -> None:
        kind = "cpu" if ops.device == "cpu" else "gpu"
        devices = jax.devices("cpu") if kind == "cpu" else _gpu_devices()
        if len(devices) < replicas:
            hint = (
                " (JAX started before it could be asked for more; --replicas sets "
                "jax_num_cpu_devices in a fresh process)"
                if kind == "cpu"
                else ""
            )
            raise BackendUnavailable(
                f"--replicas {replicas} needs {replicas} {kind.upper()} devices; JAX has "
                f"{len(devices)}{hint}"
            )
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        self.replicas = replicas
        self.engine = f"jax.shard_map over {replicas} {kind.upper()} devices, lax.pmean"
        self.collective_seconds = math.nan
        self.worker_pids: tuple[int, ...] = ()
        self.ops = ops
        mesh = Mesh(np.array(devices[:replicas]), (REPLICA_AXIS,))
        mesh_ops = _MeshOps(ops.dtype, ops.device)
        value_and_grad = _value_and_grad(mesh_ops, grad, activation, cell)
        dtype = np.dtype(ops.dtype)

        def all_mean(tensors: list[Any]) -> list[Any]:
            return list(lax.pmean(tensors, REPLICA_AXIS))

        def step(
            params: Params, inputs: Any, labels: Any, state: Any, lr: Any, theta: Any
        ) -> tuple[Params, Any, Any, Any]:
            new, H_T, loss, norm = core_replicas.replica_train_step(
                mesh_ops, value_and_grad, all_mean, params, inputs, labels, state, lr, theta
            )
            return new, lax.stop_gradient(H_T), loss, norm

        def vg(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Params, Any]:
            return core_replicas.replica_value_and_grad(
                value_and_grad, all_mean, params, inputs, labels, state
            )

        whole, batch, rows = P(), P(None, REPLICA_AXIS), P(REPLICA_AXIS)
        self._step = jax.jit(
            jax.shard_map(
                step,
                mesh=mesh,
                in_specs=(whole, batch, batch, rows, whole, whole),
                out_specs=(whole, rows, whole, whole),
                check_vma=False,
            )
        )
        self._vg = jax.jit(
            jax.shard_map(
                vg,
                mesh=mesh,
                in_specs=(whole, batch, batch, rows),
                out_specs=(whole, whole, rows),
                check_vma=False,
            )
        )
        self._dtype = dtype
        self._place = {spec: NamedSharding(mesh, spec) for spec in (whole, batch, rows)}
        self._specs = (whole, batch, rows)

    def _placed(self, params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, ...]:
        """The arguments on the mesh: parameters on every device, the batch and the state split
        (a no-op for what a previous step returned, already there)."""
        whole, batch, rows = (self._place[s] for s in self._specs)
        return (
            jax.device_put(params, whole),
            jax.device_put(inputs, batch),
            jax.device_put(labels, batch),
            jax.device_put(state, rows),
        )

    def __call__(
        self, params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        lr_t, theta_t = jnp.asarray(lr, dtype=self._dtype), jnp.asarray(theta, dtype=self._dtype)
        with self._device_failures():
            out: tuple[Params, Any, Any, Any] = jax.block_until_ready(
                self._step(*self._placed(params, inputs, labels, state), lr_t, theta_t)
            )
        return out

    def value_and_grad(
        self, params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        with self._device_failures():
            out: tuple[Any, Params, Any] = jax.block_until_ready(
                self._vg(*self._placed(params, inputs, labels, state))
            )
        return out

    def _device_failures(self) -> Any:
        """Every replica is a device of this process, so no replica can be lost alone: what can
        fail is the runtime running the step (a GPU out of memory or gone, XLA's collective),
        as ``JaxRuntimeError``, which is one line; waited for here (the trainer reads the loss
        next anyway), so that it surfaces inside the step and not later."""
        return core_replicas.device_failures(self.engine, (jax.errors.JaxRuntimeError,))

    def close(self) -> None:
        """Nothing to release: the devices belong to the process."""


def make_replicated_step(
    ops: JaxOps,
    replicas: int,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> core_replicas.ReplicatedStep:
    """core's replica step under ``shard_map`` over ``replicas`` devices, jitted."""
    if not _jitted(mode):
        raise BackendUnavailable("--replicas runs JAX's step jitted; it has no --eager")
    return JaxReplicas(ops, replicas, grad, activation, cell)


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import jax as _this

    _checked: ReplicaBackend[JaxOps] = _this

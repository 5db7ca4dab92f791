"""Array API backend: core's math on any namespace that follows the Python Array API standard.

``--backend array-api`` runs on ``array-api-strict``, the standard and nothing more;
``array-api:NAME`` runs on library ``NAME`` (``numpy``, ``torch``, ``cupy``, ...) through the
namespace ``array-api-compat`` gives its arrays. Every operation below is a function of the
standard (``take``, ``permute_dims``, ``concat``, ``astype`` ...); devices and dtypes are found
through its inspection API (``__array_namespace_info__``). The standard has no autodiff and no
scan, so gradients are core's BPTT and the recurrence is ``core.ops.python_scan``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from rosetta_rnn import backends as _registry
from rosetta_rnn.backends import rules
from rosetta_rnn.core.cells import any_forward_loss
from rosetta_rnn.core.contract import Backend, ForwardFn, StepFn
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.model import Params, ValueAndGrad, train_step
from rosetta_rnn.core.ops import python_scan

NAME = "array-api"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes
DEFAULT_LIBRARY = "array_api_strict"


def _namespace(library: str) -> Any:
    """The Array API namespace of ``library``'s arrays (array-api-compat's wrapper where the
    library is not compliant itself)."""
    try:
        module = importlib.import_module(library)
    except ImportError as e:
        raise BackendUnavailable(
            f"array-api:{library} needs the {library!r} package, which is not installed ({e})"
        ) from None
    try:
        return array_api_compat.array_namespace(module.asarray([0]))
    except (AttributeError, TypeError) as e:
        raise BackendUnavailable(f"{library!r} is not an Array API library ({e})") from None


class ArrayApiBackend:
    """The backend contract over one namespace (the module's functions use array-api-strict)."""

    GRAD_MODES: tuple[str, ...] = GRAD_MODES
    COMPILE_MODES: tuple[str, ...] = COMPILE_MODES

    def __init__(self, library: str = DEFAULT_LIBRARY) -> None:
        self.library = library
        self.NAME = NAME if library == DEFAULT_LIBRARY else f"{NAME}:{library}"
        self.xp = _namespace(library)
        self._info = self.xp.__array_namespace_info__()

    # -- devices: the standard's inspection API ------------------------------------------
    def _devices_of(self, kind: str) -> list[Any]:
        return [d for d in self._info.devices() if kind in str(d).lower()]

    def device(self, label: str) -> Any:
        """A resolved label -> the namespace's device object."""
        if label == "cpu":
            return self._devices_of("cpu")[0]
        return self._devices_of("cuda")[rules.gpu_index(label)]

    def version(self) -> str:
        module = importlib.import_module(self.library)
        compat = array_api_compat.__version__
        return f"{getattr(module, '__version__', '?')} (array-api-compat {compat})"

    def devices(self) -> list[str]:
        labels = rules.device_labels(len(self._devices_of("cuda")))
        return labels if self._devices_of("cpu") else labels[1:]

    def supports_float64(self, device: str) -> bool:
        return "float64" in self._info.dtypes(device=self.device(device))

    def resolve_device(self, device: str) -> str:
        label = rules.resolve_device(
            device,
            lambda: len(self._devices_of("cuda")),
            self.NAME,
            f"{self.NAME} sees no GPU",
        )
        if label == "cpu" and not self._devices_of("cpu"):
            if device != "auto":
                raise BackendUnavailable(f"{self.NAME} has no CPU device; use --device gpu")
            raise BackendUnavailable(f"{self.NAME} sees no device")
        return label

    def compile_modes(self, device: str) -> tuple[str, ...]:
        return COMPILE_MODES

    # -- the contract ----------------------------------------------------------------------
    def make_ops(self, dtype: str = "float32", device: str = "cpu") -> ArrayApiOps:
        return ArrayApiOps(self, dtype, self.resolve_device(device))

    def make_value_and_grad(
        self,
        ops: ArrayApiOps,
        grad: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> ValueAndGrad:
        return rules.gradient_engine(self.NAME, grad, ops, activation, cell=cell)

    def make_train_step(
        self,
        ops: ArrayApiOps,
        grad: str | None = None,
        mode: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> StepFn:
        rules.pick_mode(self.NAME, "compile mode", mode, COMPILE_MODES)
        value_and_grad = self.make_value_and_grad(ops, grad, activation, cell)

        def step(
            params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
        ) -> tuple[Params, Any, Any, Any]:
            return train_step(ops, value_and_grad, params, inputs, labels, state, lr, theta)

        return step

    def make_forward(
        self,
        ops: ArrayApiOps,
        mode: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> ForwardFn:
        rules.pick_mode(self.NAME, "compile mode", mode, COMPILE_MODES)

        def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
            return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

        return forward

    def sync(self, ops: ArrayApiOps, out: Any) -> None:
        """The standard has no device synchronisation: copying one element of each array to
        the host waits for the queue that computes it (a no-op wait on the CPU)."""
        for leaf in _leaves(out):
            ops.to_numpy(ops.xp.reshape(leaf, (-1,))[:1])

    def set_threads(self, threads: int) -> str:
        return f"{self.library}'s own thread settings (the standard has none)"


def _leaves(out: Any) -> list[Any]:
    """The arrays in nested dicts, lists and tuples."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out] if hasattr(out, "shape") else []


class ArrayApiOps:
    """The tensor interface in functions of the Array API standard."""

    def __init__(self, backend: ArrayApiBackend, dtype: str, device: str) -> None:
        self.name = backend.NAME
        self.dtype = dtype
        self.device = device
        self.xp = backend.xp
        self._dtype = getattr(self.xp, dtype)
        self._device = backend.device(device)

    def asarray(self, x: np.ndarray) -> Any:
        x = np.ascontiguousarray(x)
        if np.issubdtype(x.dtype, np.floating):
            dtype = self._dtype
        elif np.issubdtype(x.dtype, np.integer):
            dtype = self.xp.int64
        else:
            dtype = None
        return self.xp.asarray(x, dtype=dtype, device=self._device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(array_api_compat.to_device(x, "cpu") if self.device != "cpu" else x)

    def zeros(self, shape: Sequence[int]) -> Any:
        return self.xp.zeros(tuple(shape), dtype=self._dtype, device=self._device)

    def cast(self, x: Any) -> Any:
        return self.xp.astype(x, self._dtype)

    def matmul(self, a: Any, b: Any) -> Any:
        return self.xp.matmul(a, b)

    def one_hot(self, indices: Any, depth: int) -> Any:
        classes = self.xp.arange(depth, dtype=indices.dtype, device=self._device)
        return self.xp.astype(self.xp.expand_dims(indices, axis=-1) == classes, self._dtype)

    def gather(self, table: Any, indices: Any) -> Any:
        # the standard's take wants 1-D indices: flatten, take rows, restore the index shape
        rows = self.xp.take(table, self.xp.reshape(indices, (-1,)), axis=0)
        return self.xp.reshape(rows, (*indices.shape, *table.shape[1:]))

    def tanh(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def relu(self, x: Any) -> Any:
        return self.xp.where(x > 0, x, self.xp.zeros_like(x))

    def exp(self, x: Any) -> Any:
        return self.xp.exp(x)

    def log(self, x: Any) -> Any:
        return self.xp.log(x)

    def sqrt(self, x: Any) -> Any:
        return self.xp.sqrt(x)

    def _array(self, x: Any) -> Any:
        if isinstance(x, (int, float)):
            return self.xp.asarray(x, dtype=self._dtype, device=self._device)
        return x

    def minimum(self, a: Any, b: Any) -> Any:
        return self.xp.minimum(self._array(a), self._array(b))

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.xp.max(x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        return self.xp.sum(x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self.xp.argmax(x, axis=axis)  # the standard: the first occurrence of the maximum

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self.xp.reshape(x, tuple(shape))

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        order = tuple(axes) if axes is not None else tuple(range(x.ndim))[::-1]
        return self.xp.permute_dims(x, order)

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.xp.stack(list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.xp.concat(list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        return x  # no autodiff in the standard: gradients are core's BPTT

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        return python_scan(self, fn, carry, xs, reverse)  # the standard has no scan


_DEFAULT = ArrayApiBackend()


def with_option(library: str) -> ArrayApiBackend:
    """``array-api:LIBRARY``: the backend over that library's namespace."""
    return ArrayApiBackend(library)


def version() -> str:
    return _DEFAULT.version()


def devices() -> list[str]:
    return _DEFAULT.devices()


def supports_float64(device: str) -> bool:
    return _DEFAULT.supports_float64(device)


def resolve_device(device: str) -> str:
    return _DEFAULT.resolve_device(device)


def compile_modes(device: str) -> tuple[str, ...]:
    return COMPILE_MODES


def make_ops(dtype: str = "float32", device: str = "cpu") -> ArrayApiOps:
    return _DEFAULT.make_ops(dtype, device)


def make_value_and_grad(
    ops: ArrayApiOps, grad: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    return _DEFAULT.make_value_and_grad(ops, grad, activation, cell)


def make_train_step(
    ops: ArrayApiOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    return _DEFAULT.make_train_step(ops, grad, mode, activation, cell)


def make_forward(
    ops: ArrayApiOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    return _DEFAULT.make_forward(ops, mode, activation, cell)


def sync(ops: ArrayApiOps, out: Any) -> None:
    _DEFAULT.sync(ops, out)


def set_threads(threads: int) -> str:
    return _DEFAULT.set_threads(threads)


if TYPE_CHECKING:  # this module, and the backend over any library, keep the contract
    from rosetta_rnn.backends import array_api as _this

    _module_checked: Backend[ArrayApiOps] = _this
    _class_checked: Backend[ArrayApiOps] = ArrayApiBackend()

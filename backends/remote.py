"""Arrays that live in a worker: core's tensor interface for a backend whose framework runs in
another environment (``backends.worker``).

Both sides import this module (it needs only the standard library and NumPy):

- in the worker, ``Store`` keeps the framework's arrays under integer references and
  ``store_handlers`` serves core's operations on them (``put``, ``fetch``, ``free``, ``apply``
  an operation of the interface, ``operator`` for ``+``, ``x[t]`` ...);
- in the main process, ``RemoteOps`` is the tensor interface and ``RemoteArray`` the array:
  each operation is one request, and what comes back is a reference with its shape and dtype,
  so only the arrays a run asks for (a loss, parameters for a checkpoint) cross.

The whole computations a run repeats (a training step, a forward pass over a chunk, decoding)
are single requests of the backend's own (``backends.mxnet``): an operation at a time is for
the rest (core's warm-up on a prefix, a scan in eager evaluation, the interface's checks).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rosetta_rnn.core.ops import python_scan

REF = "__remote__"
"""How a message names an array held by the worker: ``{"__remote__": id, ...}``."""
OPERATORS = (
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rtruediv__",
    "__pow__",
    "__neg__",
    "__gt__",
    "__ge__",
    "__lt__",
    "__le__",
    "__getitem__",
)
"""The array operators core writes with (arithmetic, comparisons, indexing): each one request."""
SLICE, ELLIPSIS = "__slice__", "__ellipsis__"
"""How an index key's slices and ``...`` cross the wire (``x[t, ...]``, ``Hs[-w:]``)."""
FREE_EVERY = 256
"""References dropped in the main process are released in the worker this many at a time."""
_RELEASED: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
"""Each worker's references dropped here and not yet released there, whichever of its ops
made them: an ops object replaced by another leaves its dropped arrays to the next."""


def encode_key(key: Any) -> Any:
    """An index key as the wire carries it: slices and ``...`` as marked dicts."""
    if isinstance(key, tuple):
        return tuple(encode_key(k) for k in key)
    if isinstance(key, slice):
        return {SLICE: [key.start, key.stop, key.step]}
    if key is Ellipsis:
        return {ELLIPSIS: True}
    return key


def decode_key(key: Any) -> Any:
    """``encode_key``'s inverse."""
    if isinstance(key, tuple):
        return tuple(decode_key(k) for k in key)
    if isinstance(key, dict) and SLICE in key:
        return slice(*key[SLICE])
    if isinstance(key, dict) and ELLIPSIS in key:
        return Ellipsis
    return key


# --- the worker's side ---------------------------------------------------------------------


class Store:
    """The worker's arrays by reference. ``is_array`` tells the framework's arrays from Python
    values; ``dtype_of`` names an array's dtype."""

    def __init__(self, is_array: Callable[[Any], bool], dtype_of: Callable[[Any], str]) -> None:
        self._arrays: dict[int, Any] = {}
        self._next = 0
        self._is_array, self._dtype_of = is_array, dtype_of

    def __len__(self) -> int:
        return len(self._arrays)

    def publish(self, value: Any) -> Any:
        """``value`` with each framework array kept here and replaced by its reference."""
        if self._is_array(value):
            self._next += 1
            self._arrays[self._next] = value
            return {REF: self._next, "shape": list(value.shape), "dtype": self._dtype_of(value)}
        if isinstance(value, tuple):
            return tuple(self.publish(v) for v in value)
        if isinstance(value, list):
            return [self.publish(v) for v in value]
        if isinstance(value, dict):
            return {k: self.publish(v) for k, v in value.items()}
        return value

    def resolve(self, value: Any) -> Any:
        """``value`` with each reference replaced by the array it names."""
        if isinstance(value, dict):
            if REF in value:
                try:
                    return self._arrays[value[REF]]
                except KeyError:
                    raise KeyError(f"no array {value[REF]} in the worker (released?)") from None
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def free(self, refs: Sequence[int]) -> None:
        for ref in refs:
            self._arrays.pop(ref, None)


def store_handlers(
    store: Store, make_ops: Callable[[str], Any], to_numpy: Callable[[Any], np.ndarray]
) -> dict[str, Callable[..., Any]]:
    """The requests that run core's tensor interface on the worker's arrays: ``make_ops(dtype)``
    gives the framework's ops for a request (MXNet's worker keeps one per dtype)."""
    ops = make_ops

    def put(dtype: str, array: np.ndarray) -> Any:
        return store.publish(ops(dtype).asarray(array))

    def fetch(value: Any) -> Any:
        resolved = store.resolve(value)
        if isinstance(resolved, tuple):
            return tuple(to_numpy(v) for v in resolved)
        return to_numpy(resolved)

    def free(refs: list[int]) -> int:
        store.free(refs)
        return len(store)

    def apply(dtype: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if name.startswith("_") or name in ("scan", "asarray", "to_numpy"):
            raise ValueError(f"{name!r} is not an operation the worker applies")
        fn = getattr(ops(dtype), name)
        return store.publish(fn(*store.resolve(args), **store.resolve(kwargs)))

    def operator(name: str, args: list[Any]) -> Any:
        if name not in OPERATORS:
            raise ValueError(f"{name!r} is not an array operator the worker applies")
        first, *rest = store.resolve(args)
        if name == "__getitem__":
            rest = [decode_key(rest[0])]
        return store.publish(getattr(first, name)(*rest))

    return {"put": put, "fetch": fetch, "free": free, "apply": apply, "operator": operator}


# --- the main process's side ---------------------------------------------------------------


class RemoteArray:
    """An array held by the worker: its reference, shape and dtype. Arithmetic, comparisons
    and indexing are requests; ``ops.to_numpy`` brings its values over."""

    __slots__ = ("__weakref__", "_ops", "dtype", "ref", "shape")

    def __init__(self, ops: RemoteOps, ref: int, shape: Sequence[int], dtype: str) -> None:
        self._ops, self.ref, self.shape, self.dtype = ops, ref, tuple(shape), dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RemoteArray({self._ops.name} #{self.ref}, shape={self.shape}, {self.dtype})"

    def __del__(self) -> None:
        self._ops._release(self.ref)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """``np.asarray`` of it: its values, brought over (as ``to_numpy``)."""
        out = self._ops.to_numpy(self)
        return out if dtype is None else out.astype(dtype)

    def __bool__(self) -> bool:
        raise TypeError("a worker's array has no truth value here; bring it over with to_numpy")


def _operator(name: str) -> Callable[..., Any]:
    def method(self: RemoteArray, *args: Any) -> Any:
        if name == "__getitem__":
            args = (encode_key(args[0]),)
        return self._ops._call("operator", name, [self, *args])

    method.__name__ = name
    return method


for _name in OPERATORS:
    setattr(RemoteArray, _name, _operator(_name))


class RemoteOps:
    """Core's tensor interface on a worker's arrays (``store_handlers``' requests): every
    operation is one request to ``worker`` (a ``backends.worker.Worker``); ``scan`` is a Python
    loop here over the worker's arrays."""

    def __init__(self, worker: Any, name: str, dtype: str = "float32", device: str = "cpu") -> None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
        self.worker, self.name, self.dtype, self.device = worker, name, dtype, device
        self._released = _RELEASED.setdefault(worker, [])  # shared by the worker's ops
        self.pending = False  # operations sent one at a time since the last whole request

    # -- the wire --------------------------------------------------------------------------

    def _send(self, value: Any) -> Any:
        if isinstance(value, RemoteArray):
            if value._ops.worker is not self.worker:
                raise ValueError(f"{value!r} lives in another worker")
            return {REF: value.ref}
        if isinstance(value, tuple):
            return tuple(self._send(v) for v in value)
        if isinstance(value, list):
            return [self._send(v) for v in value]
        if isinstance(value, dict):
            return {k: self._send(v) for k, v in value.items()}
        return value

    def receive(self, value: Any) -> Any:
        """An answer with each reference made a ``RemoteArray``."""
        if isinstance(value, dict):
            if REF in value:
                return RemoteArray(self, value[REF], value["shape"], value["dtype"])
            return {k: self.receive(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.receive(v) for v in value)
        if isinstance(value, list):
            return [self.receive(v) for v in value]
        return value

    def _call(self, op: str, *args: Any) -> Any:
        """A request whose arguments may hold this worker's arrays, and whose answer's
        references come back as arrays."""
        if len(self._released) >= FREE_EVERY:
            self.release_dropped()
        self.pending = op in ("apply", "operator")
        return self.receive(self.worker.call(op, *self._send(args)))

    def release_dropped(self) -> None:
        """Release in the worker the arrays whose references were dropped here (by any of the
        worker's ops): ``_call`` does it every ``FREE_EVERY``."""
        n = len(self._released)  # a reference dropped meanwhile (a collection) waits its turn
        released = self._released[:n]
        del self._released[:n]
        if released:
            self.worker.call("free", released)

    def _release(self, ref: int) -> None:
        self._released.append(ref)

    def _apply(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("apply", self.dtype, name, list(args), kwargs)

    # -- the tensor interface --------------------------------------------------------------

    def asarray(self, x: np.ndarray) -> Any:
        return self._call("put", self.dtype, np.asarray(x))

    def to_numpy(self, x: Any) -> np.ndarray:
        if not isinstance(x, RemoteArray):
            return np.asarray(x)
        return np.asarray(self.worker.call("fetch", self._send(x)))

    def zeros(self, shape: Sequence[int]) -> Any:
        return self._apply("zeros", [int(n) for n in shape])

    def cast(self, x: Any) -> Any:
        return self._apply("cast", x)

    def matmul(self, a: Any, b: Any) -> Any:
        return self._apply("matmul", a, b)

    def one_hot(self, indices: Any, depth: int) -> Any:
        return self._apply("one_hot", indices, int(depth))

    def gather(self, table: Any, indices: Any) -> Any:
        return self._apply("gather", table, indices)

    def tanh(self, x: Any) -> Any:
        return self._apply("tanh", x)

    def relu(self, x: Any) -> Any:
        return self._apply("relu", x)

    def exp(self, x: Any) -> Any:
        return self._apply("exp", x)

    def log(self, x: Any) -> Any:
        return self._apply("log", x)

    def sqrt(self, x: Any) -> Any:
        return self._apply("sqrt", x)

    def minimum(self, a: Any, b: Any) -> Any:
        return self._apply("minimum", a, b)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self._apply("max", x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        return self._apply("sum", x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self._apply("argmax", x, axis=axis)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self._apply("reshape", x, [int(n) for n in shape])

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        return self._apply("transpose", x, None if axes is None else [int(a) for a in axes])

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self._apply("stack", list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self._apply("concat", list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        return self._apply("stop_gradient", x)

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        return python_scan(self, fn, carry, xs, reverse)

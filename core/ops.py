"""The tensor interface: the small set of operations core's math is written against.

Each backend (``rosetta_rnn.backends.<name>``) provides an object with these names. Arithmetic
(``+ - * /``, comparisons, slicing) uses each framework's own array operators; everything else
goes through this interface, so the chapter's math is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

Tensor = Any
"""A backend array (numpy.ndarray, torch.Tensor, jax.Array, tf.Tensor, cupy.ndarray)."""


@runtime_checkable
class Ops(Protocol):
    """The tensor interface. ``dtype`` is ``"float32"`` or ``"float64"``; ``device`` a label."""

    name: str
    dtype: str
    device: str

    def asarray(self, x: np.ndarray) -> Tensor:
        """NumPy array -> backend array on ``device``; floats become ``dtype``, integers stay."""

    def to_numpy(self, x: Tensor) -> np.ndarray:
        """Backend array -> NumPy array (a copy or view, never a graph node)."""

    def zeros(self, shape: Sequence[int]) -> Tensor:
        """Zeros of ``dtype``."""

    def cast(self, x: Tensor) -> Tensor:
        """Any array (for example a boolean mask) -> ``dtype``."""

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """Matrix product of 2-D arrays."""

    def one_hot(self, indices: Tensor, depth: int) -> Tensor:
        """Integer ids of any shape -> ``(*shape, depth)`` one-hot rows of ``dtype``."""

    def gather(self, table: Tensor, indices: Tensor) -> Tensor:
        """Rows of ``table`` picked by integer ids: ``table[indices]`` (equals one-hot @ table)."""

    def tanh(self, x: Tensor) -> Tensor: ...

    def relu(self, x: Tensor) -> Tensor: ...

    def exp(self, x: Tensor) -> Tensor: ...

    def log(self, x: Tensor) -> Tensor: ...

    def sqrt(self, x: Tensor) -> Tensor: ...

    def minimum(self, a: Tensor | float, b: Tensor | float) -> Tensor:
        """Elementwise minimum; either side may be a Python float."""

    def max(self, x: Tensor, axis: int, keepdims: bool = False) -> Tensor: ...

    def sum(self, x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor: ...

    def argmax(self, x: Tensor, axis: int) -> Tensor:
        """Index of the maximum; ties go to the lowest index on every backend."""

    def reshape(self, x: Tensor, shape: Sequence[int]) -> Tensor: ...

    def transpose(self, x: Tensor, axes: Sequence[int] | None = None) -> Tensor: ...

    def stack(self, xs: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    def concat(self, xs: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    def stop_gradient(self, x: Tensor) -> Tensor:
        """The same values, cut from any autodiff graph (torch ``detach``)."""

    def scan(
        self,
        fn: Callable[[Any, Any], tuple[Any, Any]],
        carry: Any,
        xs: Any,
        reverse: bool = False,
    ) -> tuple[Any, Any]:
        """``lax.scan`` semantics: ``carry, y_t = fn(carry, x_t)`` over the leading axis of ``xs``.

        ``xs`` is an array or a tuple of arrays; the ``y_t`` are stacked along a new leading
        axis (a tuple of stacks when ``fn`` returns a tuple). With ``reverse`` the walk goes
        from the last step to the first and the stacked ``ys`` stay in time order.
        """


OPERATIONS: tuple[str, ...] = tuple(
    name for name, value in vars(Ops).items() if callable(value) and not name.startswith("_")
)
"""Every operation a backend's ops must have, in the protocol's order (the ``interface`` cell
checks them)."""


def python_scan(
    ops: Ops,
    fn: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    reverse: bool = False,
    unstack: Callable[[Any], Sequence[Any]] | None = None,
) -> tuple[Any, Any]:
    """A plain Python loop with ``Ops.scan`` semantics, for backends without a scan primitive.

    ``unstack`` splits an array along its leading axis (default: ``x[t, ...]`` for every t; the
    Array API standard wants the ellipsis when an index names fewer axes than the array has); a
    backend passes its own when step-by-step indexing is costly (torch: ``unbind``).
    """
    split = unstack or (lambda x: [x[t, ...] for t in range(int(x.shape[0]))])
    is_tuple = isinstance(xs, tuple)
    columns = [split(x) for x in xs] if is_tuple else [split(xs)]
    length = len(columns[0])
    steps = range(length - 1, -1, -1) if reverse else range(length)
    ys: list[Any] = []
    for t in steps:
        x_t = tuple(c[t] for c in columns) if is_tuple else columns[0][t]
        carry, y = fn(carry, x_t)
        ys.append(y)
    if reverse:
        ys.reverse()
    if ys and isinstance(ys[0], tuple):
        return carry, tuple(ops.stack([y[i] for y in ys]) for i in range(len(ys[0])))
    return carry, ops.stack(ys)

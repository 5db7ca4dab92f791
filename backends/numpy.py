"""NumPy backend: the reference. Gradients by core's hand-written BPTT; on ``gpu`` the same
code runs on CuPy arrays (``pip install 'rosetta-rnn[cupy]'``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rosetta_rnn import backends as _registry
from rosetta_rnn.backends import rules
from rosetta_rnn.core import model, sampling
from rosetta_rnn.core.cells import RNN, any_forward_loss, cell_of
from rosetta_rnn.core.contract import Backend, ForwardFn, StepFn
from rosetta_rnn.core.model import EMBEDDING, Params, ValueAndGrad, train_step
from rosetta_rnn.core.ops import python_scan

NAME = "numpy"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes


def version() -> str:
    return np.__version__


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def _gpu_count() -> int:
    cp = _cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # no driver / no device
        return 0


def devices() -> list[str]:
    return rules.device_labels(_gpu_count())


def supports_float64(device: str) -> bool:
    return True


def compile_modes(device: str) -> tuple[str, ...]:
    return COMPILE_MODES


def resolve_device(device: str) -> str:
    """auto -> gpu:0 when CuPy sees a GPU, else cpu; gpu -> gpu:0; checks the index."""
    no_gpu = (
        "numpy on gpu runs through CuPy, which is not installed; "
        "install it with: pip install 'rosetta-rnn[cupy]'"
        if _cupy() is None
        else ""
    )
    return rules.resolve_device(device, _gpu_count, "numpy/CuPy", no_gpu)


class NumpyOps:
    """The tensor interface over NumPy (or CuPy: the same calls on ``xp``)."""

    name = NAME

    def __init__(self, dtype: str = "float32", device: str = "cpu") -> None:
        self.dtype = dtype
        self.device = device
        if device == "cpu":
            self.xp: Any = np
        else:
            self.xp = _cupy()
            self._cuda_device = self.xp.cuda.Device(rules.gpu_index(device))
            self._cuda_device.use()
        self._dtype = np.dtype(dtype)

    def asarray(self, x: np.ndarray) -> Any:
        x = np.asarray(x)
        dtype = self._dtype if np.issubdtype(x.dtype, np.floating) else None
        return self.xp.asarray(np.ascontiguousarray(x), dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get() if hasattr(x, "get") and self.xp is not np else np.asarray(x)

    def zeros(self, shape: Sequence[int]) -> Any:
        return self.xp.zeros(tuple(shape), dtype=self._dtype)

    def cast(self, x: Any) -> Any:
        return x.astype(self._dtype)

    def decodes(self, params: Mapping[str, Any], cell: str | None) -> bool:
        """``decode`` runs the chapter's RNN with one-hot inputs on NumPy; every other model
        (a gated cell, a learned embedding, CuPy) goes through core's host loop."""
        held = cell or cell_of(params)
        return self.xp is np and held == RNN and EMBEDDING not in params

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
        """The chapter's RNN one token at a time with nothing between the operations (as
        min-char-rnn's ``sample``): the operations core's ``rnn_forward`` and
        ``output_layer`` do for one token, in the same order on the same shapes (so the same
        numbers), each next token chosen as ``next_token`` chooses it."""
        W_xh, W_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
        h, token = state, int(first)
        drawn = sampling.Drawn(uniforms) if temperature and uniforms is not None else None
        tokens = np.empty(num_preds, dtype=np.int64)
        # core's own activation, output step and choice, looked up at call time: each is
        # written in one place; only rnn_forward's scan and stack are left out
        phi, output_step = model.activation_fn(self, activation), model.output_step
        next_token = sampling.next_token
        for i in range(num_preds):
            h = phi((W_xh[token] + b_h) + self.matmul(h, W_hh))
            token = next_token(self, output_step(self, params, h), temperature, drawn)
            tokens[i] = token
        return tokens

    def matmul(self, a: Any, b: Any) -> Any:
        return a @ b

    def one_hot(self, indices: Any, depth: int) -> Any:
        return self.xp.eye(depth, dtype=self._dtype)[indices]

    def gather(self, table: Any, indices: Any) -> Any:
        return table[indices]

    def tanh(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def relu(self, x: Any) -> Any:
        return self.xp.maximum(x, 0)

    def exp(self, x: Any) -> Any:
        return self.xp.exp(x)

    def log(self, x: Any) -> Any:
        return self.xp.log(x)

    def sqrt(self, x: Any) -> Any:
        return self.xp.sqrt(x)

    def minimum(self, a: Any, b: Any) -> Any:
        return self.xp.minimum(a, b).astype(self._dtype)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        if self.xp is np and x.ndim == 2 and axis in (-1, 1):
            m = _row_max(x)
            return m if keepdims else m[:, 0]
        return self.xp.max(x, axis=axis, keepdims=keepdims)

    def sum(self, x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        if self.xp is np and x.ndim == 2 and axis is not None:
            # einsum's loop, not the reduction's: 4x faster over a short row or down a column
            out = np.einsum("ij->i" if axis in (-1, 1) else "ij->j", x)
            return np.expand_dims(out, axis) if keepdims else out
        return self.xp.sum(x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self.xp.argmax(x, axis=axis)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self.xp.reshape(x, tuple(shape))

    def transpose(self, x: Any, axes: Sequence[int] | None = None) -> Any:
        return self.xp.transpose(x, axes)

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.xp.stack(list(xs), axis=axis)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.xp.concatenate(list(xs), axis=axis)

    def stop_gradient(self, x: Any) -> Any:
        return x

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        return python_scan(self, fn, carry, xs, reverse)


def _row_max(x: np.ndarray) -> np.ndarray:
    """Each row's maximum, (N, 1): halves of the row folded together, a whole column per
    ``np.maximum``; NumPy's own reduction along a short last axis (the vocabulary's 28) loops
    per row and takes twice as long. Exact, as every maximum is."""
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        folded = np.maximum(x[:, :half], x[:, half : 2 * half])
        if x.shape[1] % 2:  # the odd column left over joins the first
            folded[:, :1] = np.maximum(folded[:, :1], x[:, 2 * half :])
        x = folded
    return x


def make_ops(dtype: str = "float32", device: str = "cpu") -> NumpyOps:
    return NumpyOps(dtype, resolve_device(device))


def make_value_and_grad(
    ops: NumpyOps, grad: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """(params, inputs, labels, state) -> (loss, grads, H_T) by core's BPTT (no autodiff)."""
    return rules.gradient_engine(NAME, grad, ops, activation, cell=cell)


def make_train_step(
    ops: NumpyOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    """core's train step with core's BPTT; NumPy has no autograd and nothing to compile."""
    rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    value_and_grad = make_value_and_grad(ops, grad, activation, cell)

    def step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        # θ/‖g‖ with ‖g‖ = 0 is inf and min(1, inf) = 1; overflow and NaN are caught by the trainer
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return train_step(ops, value_and_grad, params, inputs, labels, state, lr, theta)

    return step


def make_forward(
    ops: NumpyOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    return forward


def sync(ops: NumpyOps, out: Any) -> None:
    """NumPy returns finished arrays; CuPy queues kernels on the device's stream."""
    if ops.xp is not np:
        ops.xp.cuda.Device(rules.gpu_index(ops.device)).synchronize()


def set_threads(threads: int) -> str:
    # OpenBLAS sizes its pool at import to the CPUs present; the caller's affinity confines it
    return f"OpenBLAS confined to {threads} CPU(s) by affinity"


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import numpy as _this

    _checked: Backend[NumpyOps] = _this

"""PyTorch backend: gradients by ``torch.autograd`` over core's forward, or core's BPTT on
torch tensors; eager by default, ``torch.compile`` on request, and on a CUDA device
``torch.compile(mode="reduce-overhead")``, which replays the whole step as CUDA graphs.

Importing it changes no torch setting. A float32 run on a CUDA device (``make_ops``) turns
TF32 off for matmuls and cuDNN (torch's switches are process-wide): float32 means float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rosetta_rnn import backends as _registry
from rosetta_rnn.backends import rules
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
from rosetta_rnn.core.replicas import ReplicatedStep

NAME = "torch"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes
CUDA_ONLY_MODES = ("reduce-overhead",)  # CUDA graphs: nothing to replay on a CPU

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
DECODE_MODE = "decode"
"""How ``ops.decode`` runs generation by default: a loop whose tokens stay on the device."""


def decode_modes(device: str) -> tuple[str, ...]:
    """The ways ``ops.decode`` can run (``TorchOps.decode_mode``): the plain loop,
    ``torch.compile`` of its step, and on a CUDA device the compiled step replayed as CUDA
    graphs ("reduce-overhead")."""
    modes = (DECODE_MODE, "torch.compile")
    return modes if device == "cpu" else (*modes, "reduce-overhead")


def version() -> str:
    return str(torch.__version__)


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def devices() -> list[str]:
    return rules.device_labels(_gpu_count())


def supports_float64(device: str) -> bool:
    return True  # CPU and every CUDA device compute in float64 (slowly on some GPUs)


def compile_modes(device: str) -> tuple[str, ...]:
    return (
        COMPILE_MODES
        if device != "cpu"
        else tuple(m for m in COMPILE_MODES if m not in CUDA_ONLY_MODES)
    )


def full_float32() -> None:
    """TF32 off for every float32 matmul and cuDNN call (process-wide in torch)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def resolve_device(device: str) -> str:
    """auto -> gpu:0 when CUDA is there, else cpu; gpu -> gpu:0; checks the index."""
    if torch.version.cuda is None:
        no_gpu = (
            f"PyTorch {torch.__version__} is a CPU-only build; install a CUDA build "
            "(https://pytorch.org/get-started/locally/) or use --device cpu"
        )
    else:
        no_gpu = (
            f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the "
            "driver with nvidia-smi, and CUDA_VISIBLE_DEVICES; use --device cpu"
        )
    return rules.resolve_device(device, _gpu_count, "PyTorch", no_gpu)


def _torch_device(label: str) -> torch.device:
    return torch.device("cpu") if label == "cpu" else torch.device("cuda", rules.gpu_index(label))


class TorchOps:
    """The tensor interface over torch tensors. ``decode_mode``: how ``decode`` runs, one of
    ``decode_modes(device)``."""

    name = NAME

    def __init__(self, dtype: str = "float32", device: str = "cpu") -> None:
        self.dtype = dtype
        self.device = device
        self._dtype = _DTYPES[dtype]
        self._device = _torch_device(device)
        self.decode_mode = DECODE_MODE
        self._decoders: dict[tuple[str, str | None, bool, str], Callable[..., Any]] = {}

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(x)
        t = torch.from_numpy(x)
        if t.is_floating_point():
            return t.to(device=self._device, dtype=self._dtype)
        return t.to(device=self._device, dtype=torch.int64)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def zeros(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=self._dtype, device=self._device)

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._dtype)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    def one_hot(self, indices: torch.Tensor, depth: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(indices, depth).to(self._dtype)

    def gather(self, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return table[indices]

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)

    def log(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    def minimum(self, a: Any, b: Any) -> torch.Tensor:
        a = torch.as_tensor(a, dtype=self._dtype, device=self._device)
        b = torch.as_tensor(b, dtype=self._dtype, device=self._device)
        return torch.minimum(a, b)

    def max(self, x: torch.Tensor, axis: int, keepdims: bool = False) -> torch.Tensor:
        return torch.amax(x, dim=axis, keepdim=keepdims)

    def sum(self, x: torch.Tensor, axis: int | None = None, keepdims: bool = False) -> torch.Tensor:
        if axis is None:
            return torch.sum(x)
        return torch.sum(x, dim=axis, keepdim=keepdims)

    def argmax(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        return torch.argmax(x, dim=axis)  # documented: the first maximal index

    def reshape(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return torch.reshape(x, tuple(shape))

    def transpose(self, x: torch.Tensor, axes: Sequence[int] | None = None) -> torch.Tensor:
        return torch.permute(x, tuple(axes) if axes is not None else tuple(range(x.ndim))[::-1])

    def stack(self, xs: Sequence[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.stack(list(xs), dim=axis)

    def concat(self, xs: Sequence[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(list(xs), dim=axis)

    def stop_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    def scan(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, reverse: bool = False
    ) -> tuple[Any, Any]:
        # unbind once: reading xs[t] step by step makes autograd zero-fill a whole
        # (T, B, H) gradient per read, making the eager autograd step O(T²)
        return python_scan(self, fn, carry, xs, reverse, unstack=lambda x: x.unbind(0))

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
        host loop picks them. Each token is chosen on the device and fed back from there, so
        nothing waits for the host until the end; the step (``_decode_step``) runs as
        ``decode_mode`` says."""
        mode = rules.pick_mode(NAME, "decode mode", self.decode_mode, decode_modes(self.device))
        sampled = bool(temperature)
        key = (activation, cell, sampled, mode)
        if key not in self._decoders:
            self._decoders[key] = _decode_step(self, activation, cell, sampled, mode)
        step = self._decoders[key]
        us = np.zeros(num_preds) if uniforms is None else np.asarray(uniforms)
        with torch.inference_mode():
            # a copy made here is an inference tensor like every later state, so a compiled
            # step sees one kind of input throughout
            state = _state_map(torch.clone, state)
            us_t = self.asarray(us).unbind(0)
            temp = self.asarray(np.asarray(temperature or 1.0))
            token = torch.tensor(first, dtype=torch.int64, device=self._device)
            tokens = []
            for u in us_t:
                if mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                    state, token = step(params, state, token, u, temp)
                    # the next replay overwrites the graph's output buffers
                    state, token = _state_map(torch.clone, state), token.clone()
                else:
                    state, token = step(params, state, token, u, temp)
                tokens.append(token)
            return torch.stack(tokens).cpu().numpy()


def _decode_step(
    ops: TorchOps, activation: str, cell: str | None, sampled: bool, mode: str
) -> Callable[..., Any]:
    """One token of decoding: core's ``any_forward`` and ``output_layer`` on the token, then
    the next as ``next_token`` picks it: greedy, the first index of the maximum
    (``torch.argmax``'s documented choice); sampled, the first index whose cumulative
    probability (of core's ``softmax`` at the temperature) exceeds u times the total. Under
    ``torch.compile`` for the compiled modes."""

    def step(params: Params, state: Any, token: Any, u: Any, temperature: Any) -> Any:
        Hs, state = any_forward(ops, params, token.reshape(1, 1), state, activation, cell)
        logits = output_layer(ops, params, Hs)  # (1, V)
        if sampled:
            probs = softmax(ops, logits / temperature)[0]
            cdf = torch.cumsum(probs, 0)
            below = torch.sum(cdf <= u * cdf[-1])
            token = torch.clamp(below, max=probs.shape[0] - 1)
        else:
            token = torch.argmax(logits[0])
        return state, token

    if mode == DECODE_MODE:
        return step
    return torch.compile(step, mode=None if mode == "torch.compile" else mode, dynamic=False)


def _state_map(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """``fn`` on a state: H, or each of the LSTM's pair (H, C)."""
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def detached(state: Any) -> Any:
    """A state cut from the graph: ``.detach()`` of H, or of both of the LSTM's (H, C)."""
    return _state_map(torch.Tensor.detach, state)


def make_ops(dtype: str = "float32", device: str = "cpu") -> TorchOps:
    ops = TorchOps(dtype, resolve_device(device))
    if ops.device != "cpu" and dtype == "float32":
        full_float32()
    return ops


def autograd_value_and_grad(
    ops: TorchOps, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """(loss, grads, H_T) with grads from ``torch.autograd.grad`` over core's forward."""

    def value_and_grad(
        params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        names = param_names(params)
        leaves = {k: params[k].detach().requires_grad_(True) for k in names}
        with torch.enable_grad():
            loss, H_T = any_forward_loss(ops, leaves, inputs, labels, state, activation, cell)
            grads = torch.autograd.grad(loss, [leaves[k] for k in names])
        return loss.detach(), dict(zip(names, grads, strict=True)), detached(H_T)

    return value_and_grad


def make_value_and_grad(
    ops: TorchOps, grad: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """(params, inputs, labels, state) -> (loss, grads, H_T) by autograd or core's BPTT."""
    return rules.gradient_engine(NAME, grad, ops, activation, autograd_value_and_grad, cell)


def make_train_step(
    ops: TorchOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    """core's train step, eager; ``"torch.compile"``: ``torch.compile`` (inductor);
    ``"reduce-overhead"``: the same with CUDA graphs (CUDA only)."""
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    value_and_grad = make_value_and_grad(ops, grad, activation, cell)

    def step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        with torch.no_grad():
            new, H_T, loss, norm = train_step(
                ops, value_and_grad, params, inputs, labels, detached(state), lr, theta
            )
        return new, detached(H_T), loss, norm

    if mode == "reduce-overhead":
        return _cuda_graph_step(ops, step)
    if mode == "torch.compile":
        return torch.compile(step, dynamic=False)
    return step


def make_forward(
    ops: TorchOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        with torch.no_grad():
            return any_forward_loss(ops, params, inputs, labels, state, activation, cell)

    if mode == "eager":
        return forward
    if mode == "reduce-overhead":
        _cuda_only(ops)
    return torch.compile(forward, mode=None if mode == "torch.compile" else mode, dynamic=False)


def sync(ops: TorchOps, out: Any) -> None:
    if ops.device != "cpu":  # CUDA kernels run asynchronously; CPU ops return finished
        torch.cuda.synchronize(_torch_device(ops.device))


def set_threads(threads: int) -> str:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already started: fixed for the life of the process
        pass
    return f"torch.set_num_threads({threads}); interop {torch.get_num_interop_threads()}"


REPLICA_ENGINE = "torch.distributed"


def prepare_replicas(replicas: int) -> None:
    """Nothing to set beforehand: every replica is a process of its own."""


def make_replicated_step(
    ops: TorchOps,
    replicas: int,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> ReplicatedStep:
    """core's replica step on ``replicas`` processes (``backends._torch_distributed``), eager.
    The machine's threads are shared out: each process gets ``threads // replicas`` (at least
    one), this one included while it runs a step (the caller's setting is left as it was)."""
    from rosetta_rnn.backends._torch_distributed import TorchReplicas

    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)
    if mode != "eager":
        raise BackendUnavailable(
            f"--replicas runs torch eagerly; {mode} is not wired into the distributed step"
        )
    threads = max(1, torch.get_num_threads() // replicas)
    value_and_grad = make_value_and_grad(ops, grad, activation, cell)
    worker_args = [ops.dtype, ops.device, grad or "", activation, cell or "", str(threads)]
    return TorchReplicas(ops, value_and_grad, replicas, threads, _WORKER_MAIN, worker_args)


_WORKER_MAIN = (  # Ctrl-C is rank 0's to act on, from the worker's first line
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from rosetta_rnn.backends.torch import serve_replica; serve_replica()"
)


def serve_replica() -> None:
    """A worker process of ``make_replicated_step`` (its ``sys.argv`` says which): build the
    replica's ops and serve rank 0 until it says stop."""
    import sys

    from rosetta_rnn.backends import _torch_distributed

    rank, replicas, init, dtype, device, grad, activation, cell, threads = sys.argv[1:]
    torch.set_num_threads(int(threads))
    ops = make_ops(dtype, _torch_distributed.replica_device(device, int(rank)))
    value_and_grad = make_value_and_grad(ops, grad or None, activation, cell or None)
    _torch_distributed.serve(ops, value_and_grad, int(rank), int(replicas), init)


def _cuda_only(ops: TorchOps) -> None:
    if ops.device == "cpu":
        raise BackendUnavailable(
            "torch's reduce-overhead mode replays CUDA graphs and needs a CUDA device; "
            "on cpu use --compile"
        )


def _cuda_graph_step(ops: TorchOps, step: StepFn) -> StepFn:
    """``step`` under ``torch.compile(mode="reduce-overhead")``: after the first calls the whole
    step (forward, backward, clip, SGD: hundreds of kernels) is one CUDA graph replay, so the
    launch overhead that bounds the eager step on a GPU is paid once per step, not per kernel."""
    _cuda_only(ops)
    graphed = torch.compile(step, mode="reduce-overhead", dynamic=False)

    def replay(
        params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        torch.compiler.cudagraph_mark_step_begin()
        new, H_T, loss, norm = graphed(params, inputs, labels, state, lr, theta)
        # the next replay overwrites the graph's output buffers; the caller keeps these
        return (
            {k: v.clone() for k, v in new.items()},
            _state_map(torch.clone, H_T),
            loss.clone(),
            norm.clone(),
        )

    return replay


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import torch as _this

    _checked: ReplicaBackend[TorchOps] = _this

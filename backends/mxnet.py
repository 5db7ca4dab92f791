"""MXNet backend: core's math on MXNet 1.9.1, which runs in an environment of its own.

MXNet needs NumPy 1.23 and this environment has NumPy 2, so nothing here imports MXNet: the
computation happens in MXNet's worker (``backends.mxnet_worker``, started on first use in the
environment ``rosetta-rnn backends --setup mxnet`` creates), and this module is the backend
the registry loads. Its ops are ``backends.remote.RemoteOps``: arrays stay in the worker and
each operation is one request, while the training step, the forward pass over a chunk and
decoding are one request each. Gradients by MXNet's ``autograd`` or core's BPTT; ``hybridize``
(the default) traces core's math into a Gluon ``HybridBlock``'s cached graph, ``eager`` runs it
op by op. float32 and float64, on the CPU (the registry's MXNet wheel has no CUDA).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from rosetta_rnn import backends as _registry
from rosetta_rnn.backends import environments, remote, rules
from rosetta_rnn.backends.worker import Worker
from rosetta_rnn.core.contract import Backend, ForwardFn, StepFn
from rosetta_rnn.core.model import Params, ValueAndGrad

NAME = "mxnet"
GRAD_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].grad_modes
COMPILE_MODES: tuple[str, ...] = _registry.REGISTRY[NAME].compile_modes


def thread_variables(threads: int) -> dict[str, str]:
    """What sizes MXNet's pools, read when its process starts: ``threads`` for each operator
    (OpenMP), and one engine thread running the operators. With two engine threads and two
    OpenMP threads, MXNet 1.9.1 on two cores hung for good in core's eager BPTT at the
    chapter's shape (every other combination of 1 and 2 finished in 0.14 s)."""
    return {"OMP_NUM_THREADS": str(threads), "MXNET_CPU_WORKER_NTHREADS": "1"}


_worker: Worker | None = None
_threads: int | None = None


def worker() -> Worker:
    """MXNet's worker, started on first use (and again if it has ended); a missing
    environment is a one-line ``BackendUnavailable`` saying how to create it."""
    global _worker
    if _worker is None or not _worker.alive:
        env = thread_variables(_threads) if _threads else None
        _worker = environments.start(NAME, env=env)
    return _worker


def version() -> str:
    return str(worker().ready["version"])


def devices() -> list[str]:
    return rules.device_labels(int(worker().ready.get("gpus", 0)))


def supports_float64(device: str) -> bool:
    return True


def compile_modes(device: str) -> tuple[str, ...]:
    return COMPILE_MODES


def resolve_device(device: str) -> str:
    """auto and cpu -> cpu; a GPU is refused in one line (MXNet's wheel here is CPU-only)."""
    if device in ("auto", "cpu"):
        return "cpu"
    return rules.resolve_device(
        device,
        lambda: int(worker().ready.get("gpus", 0)),
        "mxnet",
        "mxnet runs MXNet 1.9.1's CPU wheel from the package registry, which has no CUDA",
    )


class MxnetOps(remote.RemoteOps):
    """Core's tensor interface on arrays held by MXNet's worker, with the compiled passes
    core looks for: ``forward_loss`` (a hybridized forward per chunk shape) and ``decode``
    (core's host loop run in the worker, a token at a time without a request each)."""

    def forward_loss(
        self,
        params: Params,
        inputs: Any,
        labels: Any,
        state: Any,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> tuple[Any, Any]:
        return _forward(self, "hybridize", activation, cell, params, inputs, labels, state)

    def decodes(self, params: Mapping[str, Any], cell: str | None) -> bool:
        """Every model: the worker runs core's own loop."""
        return True

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
        return np.asarray(
            self._call(
                "run_decode",
                self.dtype,
                params,
                state,
                int(first),
                int(num_preds),
                temperature,
                uniforms,
                activation,
                cell,
            )
        )


def _forward(
    ops: MxnetOps,
    mode: str,
    activation: str,
    cell: str | None,
    params: Params,
    inputs: Any,
    labels: Any,
    state: Any,
) -> tuple[Any, Any]:
    """(mean loss, final state) of core's forward pass in the worker, as ``mode`` runs it."""
    loss, final = ops._call(
        "run_forward", ops.dtype, mode, activation, cell, params, inputs, labels, state
    )
    return loss, final


def make_ops(dtype: str = "float32", device: str = "cpu") -> MxnetOps:
    return MxnetOps(worker(), NAME, dtype, resolve_device(device))


def make_value_and_grad(
    ops: MxnetOps, grad: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ValueAndGrad:
    """(params, inputs, labels, state) -> (loss, grads, H_T) in the worker, hybridized."""
    grad = rules.pick_mode(NAME, "--grad", grad, GRAD_MODES)

    def value_and_grad(params: Params, inputs: Any, labels: Any, state: Any) -> Any:
        return tuple(
            ops._call(
                "run_grads",
                ops.dtype,
                grad,
                COMPILE_MODES[0],
                activation,
                cell,
                params,
                inputs,
                labels,
                state,
            )
        )

    return value_and_grad


def make_train_step(
    ops: MxnetOps,
    grad: str | None = None,
    mode: str | None = None,
    activation: str = "tanh",
    cell: str | None = None,
) -> StepFn:
    """core's train step (the ``grad`` engine, d2l's clipping, SGD) as one request."""
    grad = rules.pick_mode(NAME, "--grad", grad, GRAD_MODES)
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def step(
        params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        new, final, loss, norm = ops._call(
            "run_step",
            ops.dtype,
            grad,
            mode,
            activation,
            cell,
            params,
            inputs,
            labels,
            state,
            float(lr),
            float(theta),
        )
        return new, final, loss, norm

    return step


def make_forward(
    ops: MxnetOps, mode: str | None = None, activation: str = "tanh", cell: str | None = None
) -> ForwardFn:
    mode = rules.pick_mode(NAME, "compile mode", mode, COMPILE_MODES)

    def forward(params: Params, inputs: Any, labels: Any, state: Any) -> tuple[Any, Any]:
        return _forward(ops, mode, activation, cell, params, inputs, labels, state)

    return forward


def sync(ops: MxnetOps, out: Any) -> None:
    """The worker's whole requests (a step, a forward pass, decoding) answer with finished
    arrays; after operations sent one at a time, this waits for what MXNet still has queued."""
    if ops.pending:
        ops.worker.call("sync")
        ops.pending = False


def set_threads(threads: int) -> str:
    """MXNet sizes its pools when its process starts: a worker started from now on gets
    ``threads``; one already running is restarted (its arrays are gone with it)."""
    global _threads, _worker
    _threads = threads
    if _worker is not None and _worker.alive:
        _worker.close()
        _worker = None
    return "MXNet's worker: " + ", ".join(f"{k}={v}" for k, v in thread_variables(threads).items())


if TYPE_CHECKING:  # this module keeps the backend contract
    from rosetta_rnn.backends import mxnet as _this

    _checked: Backend[MxnetOps] = _this

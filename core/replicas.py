"""Data-parallel training, backend-neutral: what every replica computes and how the replicas'
results combine.

A step with N replicas splits the minibatch into N equal shards along the batch axis (axis 1 of
the time-major inputs and labels, axis 0 of the carried state). Replica r runs core's forward
and backward on shard r alone: its loss is the mean over its own tokens and its gradient that
loss's. The framework's collective then takes the mean over replicas of the loss and of every
gradient (an all-reduce). Because the shards are equal, the mean of the replicas' means is the
mean over the whole minibatch: the combined gradient is the one-device gradient, up to the
order of float additions. Only then, on the combined gradient, does core's global-norm clipping
run, and SGD; every replica applies the same update to the same parameters, so they stay
equal without being sent again.

Where it goes wrong (``conformance.mistakes`` builds each): the gradients summed instead of
averaged (N times too large), each replica clipping its own gradient before the all-reduce,
the loss divided by the local batch where the collective sums, and a replica drawing its own
minibatch from its own generator instead of taking its shard of the one core draws.

The carried state of sequential partitioning stays with its shard: replica r's rows of H are
the ones it computed last step and continues from. Put together in replica order, they are
exactly the one-device state, so a checkpoint keeps the state whole and resumes under any
replica count that divides the batch, or on one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .errors import ReplicaLost, UserError, first_line
from .model import Params, ValueAndGrad, clip_by_global_norm, param_names, sgd
from .ops import Ops, Tensor

AllMean = Callable[[list[Tensor]], list[Tensor]]
"""The framework's collective inside one replica's program: the mean over all replicas of
each tensor in the list, the same result on every replica."""


def check_replicas(replicas: int, batch_size: int, partial: int = 0) -> None:
    """A replica count the batch can be split for: equal shards, at least one sequence each.
    ``partial``: the size of an epoch's last, smaller minibatch (d2l 1.0's windows loader
    keeps one; 0: none), which is split too."""
    if replicas < 1:
        raise UserError(f"--replicas must be at least 1 (got {replicas})")
    if batch_size % replicas:
        raise UserError(
            f"--batch-size {batch_size} does not split into {replicas} equal shards; "
            f"use a batch size divisible by {replicas} (each replica's loss is the mean over "
            "its shard, and only equal shards make the mean of those the minibatch's mean)"
        )
    if partial % replicas:
        raise UserError(
            f"the last, partial minibatch has {partial} sequences, which do not split into "
            f"{replicas} equal shards; choose --num-train so that it does"
        )


def shard(x: Any, replicas: int, rank: int, axis: int) -> Any:
    """Replica ``rank``'s equal part of ``x`` along ``axis`` (an array of any backend, or a
    NumPy array): rows ``rank·n .. (rank+1)·n - 1`` with ``n = size / replicas``."""
    n = int(x.shape[axis]) // replicas
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(rank * n, (rank + 1) * n)
    return x[tuple(index)]


def state_shard(state: Any, replicas: int, rank: int) -> Any:
    """Replica ``rank``'s rows of a carried state: H (B, H), or each of the LSTM's (H, C)."""
    if isinstance(state, tuple):
        return tuple(shard(s, replicas, rank, 0) for s in state)
    return shard(state, replicas, rank, 0)


def combine(all_mean: AllMean, loss: Tensor, grads: Params) -> tuple[Tensor, Params]:
    """The replicas' loss and gradients -> the minibatch's, by one collective over all of them
    (one all-reduce, as DistributedDataParallel buckets its gradients)."""
    names = param_names(grads)
    combined = all_mean([loss, *(grads[name] for name in names)])
    return combined[0], dict(zip(names, combined[1:], strict=True))


def replica_value_and_grad(
    value_and_grad: ValueAndGrad,
    all_mean: AllMean,
    params: Params,
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
) -> tuple[Tensor, Params, Tensor]:
    """One replica's part of the minibatch's (loss, gradients): its shard's, combined with the
    other replicas'. ``H_T`` is its own shard's final state."""
    loss, grads, H_T = value_and_grad(params, inputs, labels, state)
    loss, grads = combine(all_mean, loss, grads)
    return loss, grads, H_T


def replica_train_step(
    ops: Ops,
    value_and_grad: ValueAndGrad,
    all_mean: AllMean,
    params: Params,
    inputs: Tensor,
    labels: Tensor,
    state: Tensor,
    lr: Any,
    theta: Any,
) -> tuple[Params, Tensor, Tensor, Tensor]:
    """One replica's SGD step on its shard: the combined gradient, then clipping and SGD (the
    same on every replica). (new params, its shard's H_T, the minibatch's loss, ‖g‖)."""
    loss, grads, H_T = replica_value_and_grad(
        value_and_grad, all_mean, params, inputs, labels, state
    )
    clipped, norm = clip_by_global_norm(ops, grads, theta)
    return sgd(ops, params, clipped, lr), H_T, loss, norm


class ReplicatedStep(Protocol):
    """What a backend's ``make_replicated_step`` returns: a ``StepFn`` over the whole minibatch
    and the whole carried state (sharded inside), and the combined gradient alone."""

    replicas: int
    engine: str
    """The framework's engine, in words (``torch.distributed gloo, 2 processes``)."""
    collective_seconds: float
    """Seconds spent in the gradient all-reduce so far, timed on the host around it (which
    waits for a GPU's collective to finish), where the framework can say; NaN where it cannot
    (inside a compiled program)."""
    worker_pids: tuple[int, ...]
    """The processes the engine started for its other replicas (torch's), whose CPU time is
    the run's own; () where every replica lives in this process."""

    def __call__(
        self, params: Params, inputs: Tensor, labels: Tensor, state: Tensor, lr: float, theta: float
    ) -> tuple[Params, Tensor, Tensor, Tensor]: ...

    def value_and_grad(
        self, params: Params, inputs: Tensor, labels: Tensor, state: Tensor
    ) -> tuple[Tensor, Params, Tensor]:
        """The minibatch's (loss, gradients, H_T), combined over the replicas, no update."""

    def close(self) -> None:
        """Release what the engine holds (worker processes, a process group); idempotent."""


@contextlib.contextmanager
def device_failures(engine: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A failure of the framework's runtime inside a replicated step (``errors``: a device out
    of memory or lost, a collective that broke) as one ``ReplicaLost`` line. Errors of other
    kinds (a bug: a shape, a type) pass as they are."""
    try:
        yield
    except errors as e:
        line = first_line(e)
        raise ReplicaLost(
            f"the replicated step failed on {engine} ({line}); the run stops here"
        ) from e


def refuse(backend: str, replicas: Sequence[str]) -> UserError:
    """The one-line error of a backend without a data-parallel engine."""
    what = (
        "is the single-device reference"
        if backend == "numpy"
        else "has no collectives (the Array API standard defines none)"
        if backend.startswith("array-api")
        else "has no data-parallel engine"
    )
    return UserError(
        f"the {backend} backend {what}, so no --replicas; data-parallel training runs on "
        f"{', '.join(replicas)}"
    )

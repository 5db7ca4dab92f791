"""The backend contract: what every module in ``rosetta_rnn.backends`` provides.

A backend is one module (the Keras 3 convention) with the names of ``Backend`` below; the
registry (``rosetta_rnn.backends``) imports it only when asked for, and ``mypy`` checks each
module against this protocol (a ``TYPE_CHECKING`` block at the end of every backend module
assigns the module to ``Backend``).

A backend may also provide ``with_option(option: str) -> Backend``: the registry passes it
whatever follows a colon in the backend's name (``array-api:torch``). A backend without it
refuses a colon.

A backend with a data-parallel engine (``--replicas``) also keeps ``ReplicaBackend``: the
framework's own distributed engine runs core's replica step (``core.replicas``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .model import Params, ValueAndGrad
from .ops import Ops, Tensor
from .replicas import ReplicatedStep

StepFn = Callable[
    [Params, Tensor, Tensor, Tensor, float, float], tuple[Params, Tensor, Tensor, Tensor]
]
"""(params, inputs, labels, state, lr, θ) -> (new params, H_T cut from the graph, loss, ‖g‖)."""

ForwardFn = Callable[[Params, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(params, inputs, labels, state) -> (mean loss, H_T), no gradient."""

OpsT = TypeVar("OpsT", bound=Ops)


class Backend(Protocol[OpsT]):
    """The module-level names and functions of a backend.

    ``GRAD_MODES`` and ``COMPILE_MODES`` list the values the ``grad`` and ``mode`` arguments
    take; the first of each is the backend's default (what ``None`` means). ``OpsT`` is the
    backend's own tensor interface: its functions take the ``ops`` its ``make_ops`` made.
    """

    NAME: str
    GRAD_MODES: tuple[str, ...]
    COMPILE_MODES: tuple[str, ...]

    def version(self) -> str:
        """The framework's version."""

    def devices(self) -> list[str]:
        """``cpu``, then ``gpu:0`` .. ``gpu:N-1`` for the GPUs the framework sees."""

    def supports_float64(self, device: str) -> bool: ...

    def resolve_device(self, device: str) -> str:
        """``auto``/``cpu``/``gpu``/``gpu:N`` -> the label a run uses; a missing GPU is a
        one-line ``BackendUnavailable``."""

    def compile_modes(self, device: str) -> tuple[str, ...]:
        """The compile modes available on ``device`` (a resolved label), default first."""

    def make_ops(self, dtype: str = "float32", device: str = "cpu") -> OpsT:
        """The tensor interface at ``dtype`` on ``device``. Precision settings a run needs
        (float64 in JAX, TF32 off on GPUs) are applied here, when a run asks, never at import."""

    def make_value_and_grad(
        self,
        ops: OpsT,
        grad: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> ValueAndGrad:
        """(params, inputs, labels, state) -> (loss, grads, H_T) as the train step computes them
        in the backend's default compile mode (jitted on JAX, eager elsewhere). ``cell``: the
        model (``rnn``, ``gru/reset-before`` ..., as a built run says it); None reads it from
        the parameters' names on every call."""

    def make_train_step(
        self,
        ops: OpsT,
        grad: str | None = None,
        mode: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> StepFn:
        """core's train step with the ``grad`` engine, compiled as ``mode`` says."""

    def make_forward(
        self,
        ops: OpsT,
        mode: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> ForwardFn:
        """core's ``forward_loss`` as the framework runs it in ``mode``, without gradients."""

    def sync(self, ops: OpsT, out: Any) -> None:
        """Return once the device has finished computing ``out`` (for honest timing)."""

    def set_threads(self, threads: int) -> str:
        """Size the framework's own thread pools (after import); a line saying what was set."""


class ReplicaBackend(Backend[OpsT], Protocol[OpsT]):
    """A backend that trains data-parallel on its framework's own engine."""

    REPLICA_ENGINE: str
    """The engine, in words (``torch.distributed``, ``shard_map``, ``MirroredStrategy``)."""

    def prepare_replicas(self, replicas: int) -> None:
        """What the framework must hear before it starts to have ``replicas`` devices (JAX's
        and TensorFlow's CPU device count); called before ``make_ops``. A framework already
        started keeps its devices, and ``make_replicated_step`` says when they are too few."""

    def make_replicated_step(
        self,
        ops: OpsT,
        replicas: int,
        grad: str | None = None,
        mode: str | None = None,
        activation: str = "tanh",
        cell: str | None = None,
    ) -> ReplicatedStep:
        """core's replica step on ``replicas`` devices of ``ops.device``'s kind; a one-line
        ``BackendUnavailable`` when there are fewer or ``mode`` cannot run replicated."""

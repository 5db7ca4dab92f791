"""The backend registry: each backend is one module, imported only when asked for.

Every backend module has the same names (the Keras 3 convention):
    NAME, FRAMEWORK, EXTRA, GRAD_MODES, COMPILE_MODES
    version() -> str, devices() -> list[str], supports_float64(device) -> bool
    make_ops(dtype, device) -> Ops
    make_value_and_grad(ops, grad, activation) -> (params, inputs, labels, state)
        -> (loss, grads, H_T), eager (used by the conformance suite)
    make_train_step(ops, grad, compiled, activation) -> step function (see core.training)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from rosetta_rnn.core.errors import BackendUnavailable, UserError
from rosetta_rnn.core.model import ValueAndGrad, bptt_value_and_grad

BACKENDS: tuple[str, ...] = ("numpy", "torch", "jax", "tensorflow")
FRAMEWORKS = {"numpy": "NumPy", "torch": "PyTorch", "jax": "JAX", "tensorflow": "TensorFlow"}
DEFAULT_ENV = "ROSETTA_RNN_BACKEND"


def default_backend() -> str:
    """``$ROSETTA_RNN_BACKEND`` or numpy."""
    return os.environ.get(DEFAULT_ENV) or "numpy"


def load(name: str) -> ModuleType:
    """Import one backend; a missing framework is a one-line error naming the extra."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        if e.name and e.name.startswith(__name__):
            raise  # our own module is broken: a bug, not the user's problem
        raise BackendUnavailable(
            f"backend {name!r} needs {FRAMEWORKS[name]}, which is not installed ({e}); "
            f"install it with: pip install 'rosetta-rnn[{name}]'"
        ) from None


def info(name: str) -> dict[str, Any]:
    """What ``rosetta-rnn backends`` shows for one backend."""
    row: dict[str, Any] = {"backend": name, "framework": FRAMEWORKS[name], "installed": False}
    try:
        mod = load(name)
    except BackendUnavailable as e:
        row["error"] = str(e)
        return row
    devices = mod.devices()
    row.update(
        installed=True,
        version=mod.version(),
        devices=devices,
        float64={d: mod.supports_float64(d) for d in devices},
        grad_modes=list(mod.GRAD_MODES),
        compile_modes=list(mod.COMPILE_MODES),
    )
    return row


def device_labels(gpu_count: int) -> list[str]:
    """The labels a backend lists: ``cpu``, then ``gpu:0`` .. ``gpu:N-1``."""
    return ["cpu"] + [f"gpu:{i}" for i in range(gpu_count)]


def gpu_index(label: str) -> int:
    """N of a resolved ``gpu:N`` label."""
    return int(label.split(":", 1)[1])


def resolve_device(
    device: str, gpu_count: Callable[[], int], framework: str, no_gpu: str = ""
) -> str:
    """The device label a backend runs on: ``auto`` -> ``gpu:0`` when the framework sees a
    GPU, else ``cpu``; ``gpu`` -> ``gpu:0``; ``gpu:N`` is checked against what it sees.
    ``no_gpu`` is the one-line error for a GPU request where there is none (default: the count)."""
    unknown = BackendUnavailable(f"unknown device {device!r} (use auto, cpu, gpu or gpu:N)")
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "gpu:0" if gpu_count() else "cpu"
    if device != "gpu" and not device.startswith("gpu:"):
        raise unknown
    index_text = "0" if device == "gpu" else device[len("gpu:") :]
    if not index_text.isdigit():
        raise unknown
    index, count = int(index_text), gpu_count()
    if count == 0 and no_gpu:
        raise BackendUnavailable(no_gpu)
    if index >= count:
        raise BackendUnavailable(f"{framework} sees {count} GPU(s); there is no gpu:{index}")
    return f"gpu:{index}"


def gradient_engine(
    backend: str,
    grad: str,
    ops: Any,
    activation: str = "tanh",
    autograd: Callable[[Any, str], ValueAndGrad] | None = None,
) -> ValueAndGrad:
    """The ``--grad`` engine of a backend: core's BPTT on its arrays, or its own autodiff."""
    engines: dict[str, Callable[[Any, str], ValueAndGrad]] = {}
    if autograd is not None:
        engines["autograd"] = autograd
    engines["bptt"] = bptt_value_and_grad
    if grad not in engines:
        raise BackendUnavailable(
            f"the {backend} backend has no --grad {grad!r}; it has {' or '.join(engines)}"
        )
    return engines[grad](ops, activation)

"""The backend registry: each backend is one module, imported only when asked for.

Every backend module provides the names of ``core.contract.Backend``; ``mypy`` checks each
against it (the ``TYPE_CHECKING`` block at the end of each module). Adding a backend is one
module and one ``REGISTRY`` entry (with its pip extra in pyproject.toml). A name may carry an
option after a colon (``array-api:torch``), which the registry hands to ``with_option``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

from rosetta_rnn.core.cells import bptt_value_and_grad
from rosetta_rnn.core.contract import Backend, ReplicaBackend
from rosetta_rnn.core.errors import BackendUnavailable, UserError
from rosetta_rnn.core.model import ValueAndGrad
from rosetta_rnn.core.replicas import refuse


class Entry(NamedTuple):
    """What is known of a backend without importing its framework (which takes seconds)."""

    framework: str  # what the user installs, in words
    extra: str | None  # the pip extra that installs it (None: always there)
    packages: tuple[str, ...]  # the distributions it needs; the first gives the version
    grad_modes: tuple[str, ...]  # --grad values, the default first
    compile_modes: tuple[str, ...]  # --eager / --compile values, the default first


REGISTRY: dict[str, Entry] = {
    "numpy": Entry("NumPy", None, ("numpy",), ("bptt",), ("eager",)),
    "torch": Entry(
        "PyTorch",
        "torch",
        ("torch",),
        ("autograd", "bptt"),
        ("eager", "torch.compile", "reduce-overhead"),
    ),
    "jax": Entry("JAX", "jax", ("jax", "jaxlib"), ("autograd", "bptt"), ("jit", "eager")),
    "tensorflow": Entry(
        "TensorFlow", "tensorflow", ("tensorflow",), ("autograd", "bptt"), ("tf.function", "eager")
    ),
    "array-api": Entry(
        "the Array API standard (array-api-compat)",
        "array-api",
        ("array-api-strict", "array-api-compat"),
        ("bptt",),
        ("eager",),
    ),
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)
REPLICA_BACKENDS: tuple[str, ...] = ("torch", "jax", "tensorflow")
"""The backends with a data-parallel engine (``--replicas``); NumPy stays the one-device
reference and the Array API standard has no collectives."""
DEFAULT_ENV = "ROSETTA_RNN_BACKEND"


def default_backend() -> str:
    """``$ROSETTA_RNN_BACKEND`` or numpy."""
    return os.environ.get(DEFAULT_ENV) or "numpy"


def check_name(spec: str) -> str:
    """``spec`` if it names a registered backend (with or without an option), else a one-line
    error listing them."""
    if spec.partition(":")[0] not in REGISTRY:
        raise UserError(f"unknown backend {spec!r}; choose from {', '.join(BACKENDS)}")
    return spec


def load(spec: str) -> Backend[Any]:
    """Import one backend (``name`` or ``name:option``); a missing framework is a one-line
    error naming the extra."""
    name, colon, option = check_name(spec).partition(":")
    try:
        with _native_notices_dropped():
            module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    except ImportError as e:
        if e.name and e.name.startswith(__name__):
            raise  # our own module is broken: a bug, not the user's problem
        extra = REGISTRY[name].extra
        raise BackendUnavailable(
            f"backend {name!r} needs {REGISTRY[name].framework}, which is not installed ({e}); "
            f"install it with: pip install 'rosetta-rnn[{extra}]'"
        ) from None
    if not colon:
        return cast(Backend[Any], module)
    with_option = getattr(module, "with_option", None)
    if with_option is None:
        raise UserError(f"backend {name!r} takes no option (got {spec!r})")
    return cast(Backend[Any], with_option(option))


def info(name: str, probe: bool = False) -> dict[str, Any]:
    """What ``rosetta-rnn backends`` shows for one backend: from the installed packages' metadata
    alone (a fraction of a second), or with ``probe`` by importing the framework and asking it
    for its devices (seconds: TensorFlow's import alone takes about 7 s on two cores)."""
    entry = REGISTRY[name.partition(":")[0]]
    row: dict[str, Any] = {"backend": name, "framework": entry.framework, "installed": False}
    versions = {}
    for package in entry.packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            row["error"] = (
                f"backend {name!r} needs {entry.framework}, which is not installed (no package "
                f"{package}); install it with: pip install 'rosetta-rnn[{entry.extra}]'"
            )
            return row
    row.update(
        installed=True,
        version=" ".join(
            [versions[entry.packages[0]]] + [f"({p} {v})" for p, v in list(versions.items())[1:]]
        ),
        grad_modes=list(entry.grad_modes),
        compile_modes=list(entry.compile_modes),
    )
    if probe:
        try:
            mod = load(name)
        except BackendUnavailable as e:
            row.update(installed=False, error=str(e))
            return row
        devices = mod.devices()
        row.update(devices=devices, float64={d: mod.supports_float64(d) for d in devices})
    return row


# What TensorFlow's C++ side prints while it loads and looks for a GPU, whatever
# TF_CPP_MIN_LOG_LEVEL says (absl writes before it reads its settings): notices, not errors.
_NATIVE_NOTICES = re.compile(
    r"absl::InitializeLog|cudart_stub\.cc|Could not find cuda drivers|failed call to cuInit"
    r"|cuda_platform\.cc|cpu_feature_guard|rebuild TensorFlow with the appropriate compiler"
    r"|This TensorFlow binary is optimized|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|computation_placer\.cc"
)


@contextlib.contextmanager
def _native_notices_dropped() -> Iterator[None]:
    """Run the body with file descriptor 2 caught; afterwards pass on every line of it except
    the framework's known start-up notices. Only around an import or a device query: while it
    runs, nothing else reaches the terminal's stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if not _NATIVE_NOTICES.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def native_notices_dropped() -> contextlib.AbstractContextManager[None]:
    """``_native_notices_dropped`` for a backend's own first device query."""
    return _native_notices_dropped()


def framework(name: str) -> str:
    """The framework a backend runs on, in words."""
    return REGISTRY[name.partition(":")[0]].framework


def pick_mode(backend: str, kind: str, value: str | None, modes: tuple[str, ...]) -> str:
    """``value`` if it is one of ``modes`` (None: the first), else a one-line error."""
    if value is None:
        return modes[0]
    if value not in modes:
        raise BackendUnavailable(
            f"the {backend} backend has no {kind} {value!r}; it has {', '.join(modes)}"
        )
    return value


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
    grad: str | None,
    ops: Any,
    activation: str = "tanh",
    autograd: Callable[[Any, str], ValueAndGrad] | None = None,
) -> ValueAndGrad:
    """The ``--grad`` engine of a backend: its own autodiff (the default where it has one) or
    core's BPTT on its arrays."""
    engines: dict[str, Callable[[Any, str], ValueAndGrad]] = {}
    if autograd is not None:
        engines["autograd"] = autograd
    engines["bptt"] = bptt_value_and_grad
    if grad is None:
        grad = next(iter(engines))
    if grad not in engines:
        raise BackendUnavailable(
            f"the {backend} backend has no --grad {grad!r}; it has {' or '.join(engines)}"
        )
    return engines[grad](ops, activation)


def replica_backend(spec: str, module: Backend[Any], replicas: int) -> ReplicaBackend[Any]:
    """``module`` as a data-parallel backend, told how many replicas are coming (before it
    makes its ops); a backend without an engine is a one-line error."""
    if spec.partition(":")[0] not in REPLICA_BACKENDS or not hasattr(module, "REPLICA_ENGINE"):
        raise refuse(spec, REPLICA_BACKENDS)
    engine = cast(ReplicaBackend[Any], module)
    engine.prepare_replicas(replicas)
    return engine

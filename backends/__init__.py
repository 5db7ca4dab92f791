"""The backend registry: which backends there are, what is known of each without importing
its framework, and loading one when asked for.

Every backend module provides the names of ``core.contract.Backend``; ``mypy`` checks each
against it (the ``TYPE_CHECKING`` block at the end of each module). The rules every backend
applies the same way (devices, modes, gradient engines) live beside this, in ``rules``. A name
may carry an option after a colon (``array-api:torch``), which the registry hands to
``with_option``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any, NamedTuple, cast

from rosetta_rnn.backends import rules
from rosetta_rnn.core.contract import Backend, ReplicaBackend
from rosetta_rnn.core.errors import BackendUnavailable, UserError
from rosetta_rnn.core.replicas import refuse


class Entry(NamedTuple):
    """What is known of a backend without importing its framework (which takes seconds)."""

    framework: str  # what the user installs, in words
    extra: str | None  # the pip extra that installs it (None: always there)
    packages: tuple[str, ...]  # the distributions it needs; the first gives the version
    grad_modes: tuple[str, ...]  # --grad values, the default first
    compile_modes: tuple[str, ...]  # --eager / --compile values, the default first
    replicas: str | None = None  # its data-parallel engine, in words (None: no --replicas)
    environment: str | None = None  # the environment of its own it runs in (backends.environments)


REGISTRY: dict[str, Entry] = {
    "numpy": Entry("NumPy", None, ("numpy",), ("bptt",), ("eager",)),
    "torch": Entry(
        "PyTorch",
        "torch",
        ("torch",),
        ("autograd", "bptt"),
        ("eager", "torch.compile", "reduce-overhead"),
        "N processes over torch.distributed",
    ),
    "jax": Entry(
        "JAX",
        "jax",
        ("jax", "jaxlib"),
        ("autograd", "bptt"),
        ("jit", "eager"),
        "shard_map over N devices",
    ),
    "tensorflow": Entry(
        "TensorFlow",
        "tensorflow",
        ("tensorflow",),
        ("autograd", "bptt"),
        ("tf.function", "eager"),
        "MirroredStrategy over N devices",
    ),
    "array-api": Entry(
        "the Array API standard (array-api-compat)",
        "array-api",
        ("array-api-strict", "array-api-compat"),
        ("bptt",),
        ("eager",),
    ),
    "mxnet": Entry(
        "MXNet",
        None,
        ("mxnet",),
        ("autograd", "bptt"),
        ("hybridize", "eager"),
        environment="mxnet",
    ),
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)
REPLICA_BACKENDS: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.replicas)
"""The backends with a data-parallel engine (``--replicas``); NumPy stays the one-device
reference and the Array API standard has no collectives."""


def _names(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def summary(what: str) -> str:
    """What the backends offer of ``grad``, ``compile`` or ``replicas``, in words, from the
    registry: the help of ``train``'s flags, so that a new backend changes no help text."""
    if what == "grad":
        only = [n for n, e in REGISTRY.items() if "autograd" not in e.grad_modes]
        return f"autograd where the backend has it; {_names(only)} have bptt only"
    if what == "compile":
        by_default = {
            n: e.compile_modes[0] for n, e in REGISTRY.items() if e.compile_modes[0] != "eager"
        }
        nothing = [n for n, e in REGISTRY.items() if e.compile_modes == ("eager",)]
        modes = ", ".join(by_default.values())
        return (
            f"{_names(list(by_default))} compile by default ({modes}); {_names(nothing)} have "
            "nothing to compile and refuse it"
        )
    engines = [f"{n}: {e.replicas}" for n, e in REGISTRY.items() if e.replicas]
    none = [n for n, e in REGISTRY.items() if not e.replicas]
    return f"{'; '.join(engines)}; {_names(none)} have none"


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
    environment_ready(name)
    try:
        with rules.native_notices_dropped():
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


def environment_ready(name: str) -> None:
    """A one-line ``BackendUnavailable`` for a backend whose environment of its own is not set
    up (nothing to check for the others)."""
    environment = REGISTRY[name].environment
    if environment is None:
        return
    from rosetta_rnn.backends import environments

    state = environments.status(environment)
    if state != "ready":
        raise BackendUnavailable(
            f"backend {name!r} runs in an environment of its own, which is {state}; create it "
            f"with: rosetta-rnn backends --setup {environment}"
        )


def info(name: str, probe: bool = False) -> dict[str, Any]:
    """What ``rosetta-rnn backends`` shows for one backend: from the installed packages' metadata
    alone (a fraction of a second), or with ``probe`` by importing the framework and asking it
    for its devices (seconds: TensorFlow's import alone takes about 7 s on two cores)."""
    entry = REGISTRY[name.partition(":")[0]]
    row: dict[str, Any] = {"backend": name, "framework": entry.framework, "installed": False}
    if entry.environment is not None:
        return _environment_info(name, entry, row, probe)
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


def _environment_info(name: str, entry: Entry, row: dict[str, Any], probe: bool) -> dict[str, Any]:
    """``info`` of a backend that runs in an environment of its own: installed once that
    environment is ready, its version the one its requirements pin; ``probe`` starts its
    worker and asks."""
    from rosetta_rnn.backends import environments

    assert entry.environment is not None
    env = environments.get(entry.environment)
    try:
        environment_ready(name)
    except BackendUnavailable as e:
        row["error"] = str(e)
        return row
    pinned = dict(r.split("==") for r in env.requirements)
    row.update(
        installed=True,
        version=" ".join(
            [pinned[entry.packages[0]]]
            + [f"({p} {v})" for p, v in pinned.items() if p != entry.packages[0]]
        ),
        grad_modes=list(entry.grad_modes),
        compile_modes=list(entry.compile_modes),
        environment=str(environments.root() / env.name),
    )
    if probe:
        mod = load(name)
        devices = mod.devices()
        row.update(devices=devices, float64={d: mod.supports_float64(d) for d in devices})
    return row


def framework(name: str) -> str:
    """The framework a backend runs on, in words."""
    return REGISTRY[name.partition(":")[0]].framework


def replica_backend(spec: str, module: Backend[Any], replicas: int) -> ReplicaBackend[Any]:
    """``module`` as a data-parallel backend, told how many replicas are coming (before it
    makes its ops); a backend without an engine is a one-line error."""
    if spec.partition(":")[0] not in REPLICA_BACKENDS or not hasattr(module, "REPLICA_ENGINE"):
        raise refuse(spec, REPLICA_BACKENDS)
    engine = cast(ReplicaBackend[Any], module)
    engine.prepare_replicas(replicas)
    return engine

"""The rules every backend applies the same way, so that a flag means one thing on all of
them: device labels and their resolution, ``--eager``/``--compile`` and ``--grad`` choices, and
the framework start-up notices kept off the terminal. The registry (``backends/__init__.py``)
lists the backends; each backend module imports these."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from rosetta_rnn.core.cells import bptt_value_and_grad
from rosetta_rnn.core.errors import BackendUnavailable
from rosetta_rnn.core.model import ValueAndGrad


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
    autograd: Callable[[Any, str, str | None], ValueAndGrad] | None = None,
    cell: str | None = None,
) -> ValueAndGrad:
    """The ``--grad`` engine of a backend: its own autodiff (the default where it has one) or
    core's BPTT on its arrays, for the model ``cell`` (None: read from the parameters)."""
    engines: dict[str, Callable[[Any, str, str | None], ValueAndGrad]] = {}
    if autograd is not None:
        engines["autograd"] = autograd
    engines["bptt"] = bptt_value_and_grad
    if grad is None:
        grad = next(iter(engines))
    if grad not in engines:
        raise BackendUnavailable(
            f"the {backend} backend has no --grad {grad!r}; it has {' or '.join(engines)}"
        )
    return engines[grad](ops, activation, cell)


# What TensorFlow's C++ side prints while it loads and looks for a GPU, whatever
# TF_CPP_MIN_LOG_LEVEL says (absl writes before it reads its settings): notices, not errors.
_NATIVE_NOTICES = re.compile(
    r"absl::InitializeLog|cudart_stub\.cc|Could not find cuda drivers|failed call to cuInit"
    r"|cuda_platform\.cc|cpu_feature_guard|rebuild TensorFlow with the appropriate compiler"
    r"|This TensorFlow binary is optimized|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|computation_placer\.cc"
)


@contextlib.contextmanager
def native_notices_dropped() -> Iterator[None]:
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

"""One thread count for every framework in the benchmark process.

The common knob is the CPU affinity: the process is pinned to the first ``threads`` CPUs it may
use, and NumPy's OpenBLAS, PyTorch's OpenMP, XLA's and TensorFlow's Eigen pools all size
themselves from (or are confined to) that set. On top of it, where a framework has a setting it
is set explicitly: ``torch.set_num_threads``, TensorFlow's intra/inter-op pools, the usual
``*_NUM_THREADS`` variables for libraries imported later, and for one thread XLA's flags.

NumPy is imported before the affinity is narrowed (the command line imports it), and OpenBLAS
sizes its pool once, when it is loaded: with ``--threads 1`` on two CPUs its two threads then
shared one CPU, and a NumPy LSTM step took 7.1 s instead of 0.09 s. So every OpenBLAS already
loaded is told the thread count through its own ``*_set_num_threads`` (``limit_openblas``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_OPENBLAS_SETTERS = (  # the plain build's name, and the scipy-openblas that NumPy's wheels ship
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_environment(threads: int) -> dict[str, Any]:
    """Before any framework import: affinity and environment. Returns what was set."""
    done: dict[str, Any] = {"threads": threads}
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
        done["affinity"] = sorted(os.sched_getaffinity(0))
    for var in _ENV_VARS:
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    if threads == 1:  # XLA's CPU pool has no N-thread flag, only off (read when JAX starts)
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        current = os.environ.get("XLA_FLAGS", "")
        if flags not in current:  # a second run in the same process adds nothing
            os.environ["XLA_FLAGS"] = (current + " " + flags).strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's CUDA probing, silenced
    done["env"] = {var: os.environ[var] for var in _ENV_VARS}
    done["numpy"] = "OpenBLAS pool set to the thread count (limit_openblas), within the affinity"
    return done


def limit_openblas(threads: int) -> list[str]:
    """Set the pool of every OpenBLAS loaded in this process to ``threads``; returns the
    libraries set. Where /proc/self/maps cannot be read (not Linux) nothing is set."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    done = []
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _OPENBLAS_SETTERS if hasattr(lib, n)), None)
        if setter is not None:
            setter(threads)
            done.append(os.path.basename(path))
    return done

"""One thread count for every framework in the benchmark process.

The common knob is the CPU affinity: the process is pinned to the first ``threads`` CPUs it may
use, and NumPy's OpenBLAS, PyTorch's OpenMP, XLA's and TensorFlow's Eigen pools all size
themselves from (or are confined to) that set. On top of it, where a framework has a setting it
is set explicitly: ``torch.set_num_threads``, TensorFlow's intra/inter-op pools, the usual
``*_NUM_THREADS`` variables for libraries imported later, and for one thread XLA's flags.
"""

from __future__ import annotations

import os
from typing import Any

_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    done["numpy"] = "OpenBLAS pool sized at import to the CPUs present; confined by affinity"
    return done

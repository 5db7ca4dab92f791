"""Which path a framework took for a peer's row: the kernels that ran, and the switches that
chose them, so a ratio can be read against what the framework chose and a changed default
shows.

Each is read from the run itself, once, after the row is timed:

- torch: the operators of one call under ``torch.profiler``. On the CPU ``aten::mkldnn_rnn_layer``
  is oneDNN's recurrent kernel, ``aten::rnn_tanh``/``aten::gru``/``aten::lstm`` alone torch's
  own loop; on a GPU ``aten::_cudnn_rnn`` is cuDNN's, and the CUDA kernels' names say whether it
  was a persistent kernel. Beside them: oneDNN on/off, TF32 for matmuls and cuDNN, the threads.
- TensorFlow: the operations of the Keras model traced as the row calls it (``CudnnRNN*`` is
  cuDNN's kernel; ``While`` the generic loop), oneDNN on/off (``TF_ENABLE_ONEDNN_OPTS`` and
  the build), XLA (the peers' ``tf.function`` does not ask for it; ``TF_XLA_FLAGS``) and the
  thread pools.
- JAX: the custom calls and fusion kinds of the row's compiled XLA program (on the CPU a dot
  may run as a YNNPACK/oneDNN fusion), ``XLA_FLAGS`` and the default matmul precision.
- MXNet (the Gluon peers, in MXNet's worker): the operators of one call under MXNet's
  profiler (``RNN``/``_backward_RNN`` is the fused recurrent operator; ``MXInvokeCachedOp``
  says the hybridized graph ran), the kernel MXNet's ``rnn.cc`` picks for it (oneDNN's RNN
  primitive in float32 where MXNet is built with MKLDNN and ``MXNET_USE_MKLDNN_RNN`` is not 0,
  else its own CPU kernel), the build features (MKLDNN, OPENMP, BLAS) and the worker's threads
  (``OMP_NUM_THREADS``, ``MXNET_CPU_WORKER_NTHREADS``).
- ONNX Runtime: the session's execution providers and threads; NumPy: the BLAS it was built
  with.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

RNN_OPS = re.compile(r"rnn|gru|lstm", re.IGNORECASE)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the profiler's native start/stop lines would otherwise
    land in the bench's progress log."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_path(call: Callable[[], Any], device: str) -> dict[str, Any]:
    """The recurrent operators and (on a GPU) kernels of one call, and torch's switches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device != "cpu":
        activities.append(ProfilerActivity.CUDA)
    with _quiet_stderr(), profile(activities=activities) as prof:
        call()
        if device != "cpu":
            torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    ops = sorted(n for n in names if n.startswith("aten::") and RNN_OPS.search(n))
    path: dict[str, Any] = {"recurrent_ops": ops}
    if any("mkldnn_rnn" in n for n in ops):
        path["recurrence"] = "oneDNN (mkldnn_rnn_layer)"
    elif any("cudnn_rnn" in n for n in ops):
        path["recurrence"] = "cuDNN (_cudnn_rnn)"
    else:
        path["recurrence"] = "torch's own loop" if ops else "none seen"
    if device != "cpu":
        kernels = sorted(n for n in names if not n.startswith(("aten::", "cuda", "Memcpy")))
        rnn_kernels = [k for k in kernels if RNN_OPS.search(k) or "persist" in k.lower()]
        path["cuda_rnn_kernels"] = rnn_kernels[:8]
        path["persistent_kernel"] = any("persist" in k.lower() for k in kernels)
        path["cudnn"] = f"{torch.backends.cudnn.version()} enabled={torch.backends.cudnn.enabled}"
        path["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        path["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    path["onednn"] = (
        f"available={torch.backends.mkldnn.is_available()} enabled={torch.backends.mkldnn.enabled}"
    )
    path["threads"] = f"intra {torch.get_num_threads()}, inter {torch.get_num_interop_threads()}"
    return path


def keras_path(model: Any, inputs: Any, state: Any) -> dict[str, Any]:
    """The operations of the Keras model traced on the row's inputs, and TensorFlow's
    switches."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    traced = tf.function(lambda X, s: model(X, s)).get_concrete_function(inputs, state)
    types = {op.type for op in traced.graph.get_operations()}
    cudnn = sorted(t for t in types if t.startswith("CudnnRNN"))
    if cudnn:
        recurrence = f"cuDNN ({', '.join(cudnn)})"
    elif types & {"While", "StatelessWhile"}:
        recurrence = "TensorFlow while loop"
    else:
        recurrence = "unrolled ops"
    flag = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    threading = tf.config.threading
    return {
        "recurrence": recurrence,
        "onednn": (
            f"built={_pywrap_util_port.IsMklEnabled()} "
            f"TF_ENABLE_ONEDNN_OPTS={flag if flag is not None else 'unset (on by default)'}"
        ),
        "xla": f"off (tf.function, jit_compile unset); TF_XLA_FLAGS="
        f"{os.environ.get('TF_XLA_FLAGS', 'unset')}",
        "threads": f"intra {threading.get_intra_op_parallelism_threads()}, "
        f"inter {threading.get_inter_op_parallelism_threads()} (0: TensorFlow's choice)",
    }


def jax_path(compiled_text: str, platform: str) -> dict[str, Any]:
    """What an XLA program compiled for ``platform`` became: its custom calls and fusion
    kinds, and JAX's switches."""
    import jax

    calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled_text)))
    kinds = sorted(set(re.findall(r'"kind":"(__[a-z_]+)"', compiled_text)))
    loops = compiled_text.count(" while(")
    return {
        "recurrence": f"XLA while loop ×{loops}" if loops else "XLA, one step a call",
        "custom_calls": calls,
        "custom_fusions": kinds,
        "platform": platform,
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "xla_flags": os.environ.get("XLA_FLAGS", "unset"),
    }


def gluon_path(worker: Any, peer: int, workload: str) -> dict[str, Any]:
    """What MXNet ran for a Gluon peer's ``workload``, read in its worker from one more call
    (``backends.mxnet_peers.gluon_peer_path``)."""
    return dict(worker.call("gluon_peer_path", peer, workload))


def numpy_path() -> dict[str, Any]:
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (KeyError, TypeError, ValueError):
        name = "unknown"
    return {"recurrence": "Python loop over NumPy", "blas": name}

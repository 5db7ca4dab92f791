"""Measure what a GPU does to float32 and to determinism, for docs/frameworks.md.

    python docs/gpu_probes.py OUT.json        # on a machine with a CUDA GPU and torch, jax, cupy

Three probes, each printed and saved:
- tf32: the relative error of a 1024² float32 matmul against float64 with each framework's
  defaults and with TF32 forced on and off, and of cuDNN's RNN with ``cudnn.allow_tf32`` on/off;
- cudnn: the conformance oracle ``torch.nn.RNN`` on the first conformance problem, float32 on
  the GPU through cuDNN, through torch's own CUDA kernels (cuDNN disabled) and on the CPU;
- determinism: five identical gradient evaluations per backend and gradient engine, bitwise
  equal or not; JAX again in a child process with ``--xla_gpu_deterministic_ops=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

RUNS = 5


def _rel(got: Any, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def tf32() -> dict[str, Any]:
    import cupy
    import jax.numpy as jnp
    import torch

    out: dict[str, Any] = {
        "torch cuda.matmul.allow_tf32 default": torch.backends.cuda.matmul.allow_tf32,
        "torch cudnn.allow_tf32 default": torch.backends.cudnn.allow_tf32,
        "torch float32_matmul_precision default": torch.get_float32_matmul_precision(),
        "CUPY_TF32": os.environ.get("CUPY_TF32"),
    }
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    matmul = torch.backends.cuda.matmul
    was = matmul.allow_tf32
    out["torch matmul, default"] = _rel((ta @ tb).cpu(), ref)
    for flag in (True, False):
        matmul.allow_tf32 = flag
        out[f"torch matmul, allow_tf32={flag}"] = _rel((ta @ tb).cpu(), ref)
    matmul.allow_tf32 = was
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    out["jax matmul, default precision"] = _rel(ja @ jb, ref)
    out["jax matmul, precision=highest"] = _rel(jnp.matmul(ja, jb, precision="highest"), ref)
    out["cupy matmul, default"] = _rel(cupy.asnumpy(cupy.asarray(a) @ cupy.asarray(b)), ref)

    torch.manual_seed(0)
    rnn = torch.nn.RNN(28, 512).cuda()
    rnn64 = torch.nn.RNN(28, 512).cuda().double()
    rnn64.load_state_dict({k: v.double() for k, v in rnn.state_dict().items()})
    X = torch.randn(35, 32, 28, device="cuda")
    with torch.no_grad():
        ref_h = rnn64(X.double())[0].cpu().numpy()
        for flag in (True, False):
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=flag):
                out[f"cuDNN RNN, allow_tf32={flag}"] = _rel(rnn(X)[0].cpu(), ref_h)
    return out


def cudnn() -> dict[str, Any]:
    import torch

    from rosetta_rnn.conformance.checks import max_error
    from rosetta_rnn.conformance.problems import DEFAULT_PROBLEMS
    from rosetta_rnn.conformance.subjects import BackendSubject, TorchRNNOracle

    params, inputs, _, state = DEFAULT_PROBLEMS[0].draw()
    ref = BackendSubject.load("numpy", "float64").forward(params, inputs, state)
    ref = {k: ref[k] for k in ("hidden", "logits")}
    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    state32 = state.astype(np.float32)
    out = {}
    for label, device, use_cudnn in (
        ("gpu, cuDNN", "gpu:0", True),
        ("gpu, torch kernels (cuDNN off)", "gpu:0", False),
        ("cpu", "cpu", True),
    ):
        with torch.backends.cudnn.flags(enabled=use_cudnn, allow_tf32=False):
            got = TorchRNNOracle("float32", device).forward(f32, inputs, state32)
        out[label] = max_error(got, ref)
    return out


def determinism() -> dict[str, Any]:
    from rosetta_rnn.conformance.problems import Problem
    from rosetta_rnn.conformance.subjects import BackendSubject

    params, inputs, labels, state = Problem(28, 512, 32, 35, "d2l").draw()
    out = {}
    for name, mode in (
        ("torch", "autograd"),
        ("torch", "bptt"),
        ("jax", "autograd"),
        ("jax", "bptt"),
        ("numpy", "bptt"),
    ):
        subject = BackendSubject.load(name, "float32", "gpu:0")
        runs = [subject.value_and_grad(mode, params, inputs, labels, state) for _ in range(RUNS)]
        first = runs[0]
        out[f"{name}/{mode}"] = {
            "loss equal": all(np.array_equal(r[0], first[0]) for r in runs),
            "grads equal": {
                k: all(np.array_equal(r[1][k], first[1][k]) for r in runs) for k in first[1]
            },
        }
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--determinism-only":
        json.dump(determinism(), open(sys.argv[2], "w"))
        return
    path = sys.argv[1]
    doc = {"tf32": tf32(), "cudnn": cudnn(), "determinism": determinism()}
    child = path + ".xla-deterministic.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}
    subprocess.run([sys.executable, __file__, "--determinism-only", child], env=env, check=True)
    with open(child) as f:
        doc["determinism with --xla_gpu_deterministic_ops=true"] = json.load(f)
    os.remove(child)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

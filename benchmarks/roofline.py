"""The machine's limit: measured matmul throughput × the FLOP count of the workload.

FLOPs are the matrix products of the chapter's step (a multiply-add is 2 FLOPs). The input
layer is a row gather (one-hot @ W_xh without the zeros), so it costs no FLOPs; elementwise work
(tanh, σ, the gates' products, softmax, bias) is O(H + V) per token, under 2 % at the d2l
shapes, and is not counted. Per token (one position of one sequence), with H = num_hiddens,
V = vocab_size and G the recurrent products per step (``GATES``: 1 for the RNN, 3 for a GRU:
z, r and the candidate, 4 for the LSTM: i, f, o and the candidate):

    forward   G·2H² (H_{t-1} W_h·) + 2HV (H_t W_hq)
    backward  G·2H² (dA W_h·ᵀ) + G·2H² (H_{t-1}ᵀ dA) + 2HV (dY W_hqᵀ) + 2HV (Hᵀ dY)

so a training step is B·T·3·(G·2H² + 2HV) plus 5 FLOPs per parameter for the global-norm clip
and SGD (g², the sum, the scale, lr·g, the subtraction): backward ≈ 2 × forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rosetta_rnn import backends
from rosetta_rnn.core import cells
from rosetta_rnn.core.cells import RNN

WORKLOADS: tuple[str, ...] = ("train", "forward", "generate")
PEAK_SIZE = 2048  # square matmul size for the CPU peak: large enough to be compute-bound
GPU_PEAK_SIZE = 8192  # the same on a GPU (an H100 does a 2048² float32 product in ~0.3 ms)


GATES: dict[str, int] = {RNN: 1, **{c: 4 if c == cells.LSTM else 3 for c in cells.CELLS}}
"""H×H recurrent products per time step of each cell (core's names)."""


def num_params(num_hiddens: int, vocab_size: int, cell: str = RNN) -> int:
    """The RNN's |W_xh| + |W_hh| + |b_h| + |W_hq| + |b_q|; a gated cell's from its table."""
    H, V = num_hiddens, vocab_size
    if cell != RNN:
        return sum(int(np.prod(s)) for s in cells.param_shapes(cell, V, H).values())
    return V * H + H * H + H + H * V + V


def forward_flops_per_token(num_hiddens: int, vocab_size: int, cell: str = RNN) -> int:
    """G·2H² + 2HV: the recurrence and the output layer for one token."""
    H, V = num_hiddens, vocab_size
    return GATES[cell] * 2 * H * H + 2 * H * V


def step_flops(
    workload: str,
    batch_size: int,
    num_steps: int,
    num_hiddens: int,
    vocab_size: int,
    cell: str = RNN,
) -> int:
    """FLOPs of one call's worth of tokens: a train step, a forward pass, or one generated token."""
    fwd = forward_flops_per_token(num_hiddens, vocab_size, cell)
    if workload == "generate":
        return fwd  # batch 1, one token
    tokens = batch_size * num_steps
    if workload == "forward":
        return tokens * fwd
    if workload == "train":
        return tokens * 3 * fwd + 5 * num_params(num_hiddens, vocab_size, cell)
    raise ValueError(f"unknown workload {workload!r}")


def flops_per_token(
    workload: str,
    batch_size: int,
    num_steps: int,
    num_hiddens: int,
    vocab_size: int,
    cell: str = RNN,
) -> float:
    """``step_flops`` divided by the tokens it processes."""
    tokens = 1 if workload == "generate" else batch_size * num_steps
    return step_flops(workload, batch_size, num_steps, num_hiddens, vocab_size, cell) / tokens


def roofline_tokens_per_sec(
    peak_flops: float,
    workload: str,
    batch_size: int,
    num_steps: int,
    num_hiddens: int,
    vocab_size: int,
    cell: str = RNN,
) -> float:
    """The most tokens/s ``peak_flops`` FLOP/s could give: peak / FLOPs per token."""
    shape = (batch_size, num_steps, num_hiddens, vocab_size)
    return peak_flops / flops_per_token(workload, *shape, cell=cell)


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: library load, JIT, first-touch
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _matmul_fn(
    backend: str, a: np.ndarray, b: np.ndarray, device: str = "cpu"
) -> Callable[[], Any]:
    """``a @ b`` through one backend's ``ops.matmul`` on ``device`` (``cpu`` or ``gpu:N``),
    synced (the product is finished when the call returns). float32 products run without TF32:
    the backend's ``make_ops`` turns it off."""
    mod = backends.load(backend)
    ops = mod.make_ops(str(a.dtype), device)
    x, y = ops.asarray(a), ops.asarray(b)

    def run() -> Any:
        out = ops.matmul(x, y)
        mod.sync(ops, out)
        return out

    return run


def peak_size(device: str) -> int:
    """The square matmul size for the peak: a GPU needs a larger product to be compute-bound."""
    return PEAK_SIZE if device == "cpu" else GPU_PEAK_SIZE


def measure_peak(
    backend_names: list[str],
    dtype: str,
    size: int = PEAK_SIZE,
    repeats: int = 5,
    device: str = "cpu",
) -> dict[str, float]:
    """Best-of-``repeats`` GFLOP/s of a ``size``² matmul on ``device`` in each backend."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = {}
    for name in backend_names:
        seconds = _best_seconds(_matmul_fn(name, a, b, device), repeats)
        out[name] = 2 * size**3 / seconds / 1e9
    return out


def step_matmuls(
    batch_size: int, num_steps: int, num_hiddens: int, vocab_size: int
) -> list[tuple[str, int, int, int, int]]:
    """The matrix products of one training step of the RNN: (what, m, k, n, how many)."""
    B, T, H, V = batch_size, num_steps, num_hiddens, vocab_size
    N = B * T
    return [
        ("H_{t-1} W_hh", B, H, H, T),
        ("H W_hq", N, H, V, 1),
        ("dY W_hqᵀ", N, V, H, 1),
        ("Hᵀ dY", H, N, V, 1),
        ("dZ W_hhᵀ", B, H, H, T),
        ("H_{t-1}ᵀ dZ", H, N, H, 1),
    ]


def measure_matmul_floor(
    backend_names: list[str],
    dtype: str,
    batch_size: int,
    num_steps: int,
    num_hiddens: int,
    vocab_size: int,
    repeats: int = 20,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time a training step's matmuls alone, at their own shapes (best backend per product).

    The sum bounds any implementation that runs those products one by one: it is what the
    small recurrence matmuls (B × H × H) really sustain, as against the large-matmul peak.
    """
    rng = np.random.default_rng(0)
    total, parts = 0.0, []
    for what, m, k, n, count in step_matmuls(batch_size, num_steps, num_hiddens, vocab_size):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        best = {n: _best_seconds(_matmul_fn(n, a, b, device), repeats) for n in backend_names}
        fw = min(best, key=lambda f: best[f])
        total += count * best[fw]
        parts.append(
            {
                "matmul": what,
                "shape": [m, k, n],
                "count": count,
                "framework": fw,
                "gflops": 2 * m * k * n / best[fw] / 1e9,
                "ms_per_step": count * best[fw] * 1e3,
            }
        )
    return {
        "ms_per_step": total * 1e3,
        "tokens_per_sec": batch_size * num_steps / total,
        "parts": parts,
    }

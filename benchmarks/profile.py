"""Where a training step's time goes: the figures behind a missed target.

- ``ops_breakdown``: core's step on an eager backend with every interface operation timed
  (synced after each on asynchronous backends). What no operation accounts for is the Python
  of core and the backend plus the arithmetic operators (``+ - * /``), which bypass the interface.
- ``torch_profile``: ``torch.profiler``'s per-operator table for the torch backend or the
  ``torch.nn.RNN`` peer, autograd's backward included.

``python -m rosetta_rnn.benchmarks.profile [numpy|torch|jax|tensorflow|torch.nn.RNN] [grad]``
prints one of them at the d2l shape.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core import model
from rosetta_rnn.core.ops import OPERATIONS

from .workloads import D2L, LR, THETA, Shape, initial_params, minibatch, spec, syncer


class TimedOps:
    """An ``Ops`` whose interface operations add their self time to ``seconds[name]`` (a
    ``scan``'s own time excludes the operations of its body)."""

    def __init__(self, ops: Any, sync: Callable[[Any], None]) -> None:
        self._ops, self._sync = ops, sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner: list[float] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ops, name)
        if name not in OPERATIONS or not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)  # time spent in operations this one calls (scan's body)
            t0 = time.perf_counter()
            out = attr(*args, **kwargs)
            self._sync(out)
            elapsed = time.perf_counter() - t0
            inner = self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed
            self.seconds[name] += elapsed - inner  # self time only
            self.calls[name] += 1
            return out

        return timed


def ops_breakdown(
    backend: str, grad: str = "bptt", dtype: str = "float32", shape: Shape = D2L, steps: int = 20
) -> dict[str, Any]:
    """ms per training step in each interface operation, and the rest, for an eager step."""
    mod = backends.load(backend)
    base = mod.make_ops(dtype, "cpu")
    sync = syncer(backend, base)
    ops: Any = TimedOps(base, lambda out: None)  # numpy, torch and TF eager run synchronously
    value_and_grad = mod.make_value_and_grad(ops, grad)  # autodiff's backward: in the rest
    params = initial_params(base, spec(shape, dtype), shape)
    X, Y = minibatch(shape)
    inputs, labels = base.asarray(X), base.asarray(Y)
    state = model.begin_state(base, shape.batch_size, shape.num_hiddens)

    def step() -> Any:
        return model.train_step(ops, value_and_grad, params, inputs, labels, state, LR, THETA)

    for _ in range(3):
        sync(step())
    ops.seconds.clear()
    ops.calls.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        sync(step())
    total = (time.perf_counter() - t0) / steps * 1e3
    if not ops.calls:  # traced once in the warm-up (jax.jit), then compiled code: nothing to time
        raise ValueError(
            f"{backend}'s gradient step is compiled, not run operation by operation; "
            "profile it with the framework's own profiler"
        )
    per_op = {k: v / steps * 1e3 for k, v in sorted(ops.seconds.items(), key=lambda kv: -kv[1])}
    return {
        "backend": backend,
        "grad": grad,
        "ms_per_step": total,
        "ops_ms": per_op,
        "calls_per_step": {k: v // steps for k, v in ops.calls.items()},
        "rest_ms": total - sum(per_op.values()),
    }


def torch_profile(
    what: str = "torch", grad: str = "autograd", steps: int = 10, rows: int = 15
) -> str:
    """``torch.profiler`` table (self CPU time) of training steps of the torch backend or the
    ``torch.nn.RNN`` peer at the d2l shape."""
    from torch.profiler import ProfilerActivity, profile

    from .workloads import _peer_builder, _train_builder

    if what == "torch.nn.RNN":
        call, _ = _peer_builder(what, "train", "cpu", "float32", D2L, {})()
    else:
        mode = f"{grad}/eager"
        call, _ = _train_builder("torch", grad, "eager", "cpu", "float32", D2L)()
        what = f"torch {mode}"
    for _ in range(3):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            call()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / steps / 1e3
    return f"{what}: {total:.1f} ms of operator self time per step\n{table}"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "numpy"
    grad = argv[1] if len(argv) > 1 else ("bptt" if what == "numpy" else "autograd")
    if what == "torch.nn.RNN" or (what == "torch" and grad == "autograd"):
        print(torch_profile(what, grad))
        return 0
    result = ops_breakdown(what, grad)
    print(f"{what} {grad}/eager: {result['ms_per_step']:.2f} ms per step")
    for name, ms in result["ops_ms"].items():
        print(f"  {name:14s} {ms:8.2f} ms  ({result['calls_per_step'][name]} calls)")
    print(f"  {'(rest)':14s} {result['rest_ms']:8.2f} ms  Python, + - * /, autodiff")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

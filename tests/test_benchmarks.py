"""rosetta-rnn bench: the document's schema, the files, the peers' math, the FLOP count and
one-line errors. Tiny shapes, one repeat; no timing is ever asserted."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from rosetta_rnn import backends
from rosetta_rnn.benchmarks import cli as bench_cli
from rosetta_rnn.benchmarks import machine, peers, report, roofline, runner, targets, timing
from rosetta_rnn.benchmarks.profile import ops_breakdown
from rosetta_rnn.benchmarks.workloads import Shape
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, model, sampling
from rosetta_rnn.core.errors import BackendUnavailable, UserError

TINY = (
    "--repeats 1 --min-time 0.005 --max-wait 0 --batch-size 2 --num-steps 3 --num-hiddens 8 "
    "--sweep-steps 2,3,5 --sweep-hiddens 4,8"
).split()
ROW_KEYS = {
    "name",
    "backend",
    "device",
    "dtype",
    "mode",
    "workload",
    "num_steps",
    "num_hiddens",
    "tokens_per_sec",
    "ms_per_step",
    "compile_s",
    "peak_rss_mb",
}


@pytest.fixture(autouse=True)
def _restore_environ(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """bench sets *_NUM_THREADS and torch's thread count for the process; put both back
    afterwards, so that later tests run with the threads they would have alone. torch.compile's
    cache goes to a temporary folder, not the user's cache folder."""
    saved = dict(os.environ)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    try:
        import torch
    except ImportError:
        torch = None
    torch_threads = torch.get_num_threads() if torch is not None else 0
    yield
    os.environ.clear()
    os.environ.update(saved)
    if torch is not None:
        torch.set_num_threads(torch_threads)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``rosetta-rnn bench ARGV`` as the CLI runs it: UserError -> one line on stderr, exit 2."""
    from rosetta_rnn.helpers import PROG, Parser

    parser = Parser(prog=PROG)
    bench_cli.register(parser.add_subparsers(dest="command", parser_class=Parser))
    try:
        args = parser.parse_args(["bench", *argv])
        code = bench_cli.cmd_bench(args)
    except SystemExit as e:
        code = int(e.code or 0)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        code = e.exit_code
    out, err = capsys.readouterr()
    return code, out, err


# --- the FLOP count and the roofline ----------------------------------------------------------


def test_flop_count_of_the_d2l_step() -> None:
    B, T, H, V = 32, 35, 512, 28
    forward = 2 * H * H + 2 * H * V  # H_{t-1} W_hh and H_t W_hq per token
    assert roofline.forward_flops_per_token(H, V) == forward == 552_960
    P = V * H + H * H + H + H * V + V
    assert roofline.num_params(H, V) == P == 291_356
    # backward = 2 × forward (two products per forward product), + clip and SGD per parameter
    assert roofline.step_flops("train", B, T, H, V) == B * T * 3 * forward + 5 * P
    assert roofline.step_flops("forward", B, T, H, V) == B * T * forward
    assert roofline.step_flops("generate", B, T, H, V) == forward
    per_token = roofline.flops_per_token("train", B, T, H, V)
    assert per_token == pytest.approx(1_660_180.7, abs=0.1)
    assert roofline.roofline_tokens_per_sec(1e11, "train", B, T, H, V) == pytest.approx(
        1e11 / per_token
    )
    matmul_flops = sum(2 * m * k * n * c for _, m, k, n, c in roofline.step_matmuls(B, T, H, V))
    assert matmul_flops == B * T * 3 * forward  # the profiled products are the counted ones


def test_flop_count_of_the_gated_cells() -> None:
    """A GRU runs 3 recurrent products a step, the LSTM 4; the rest is counted as the RNN's."""
    B, T, H, V = 32, 35, 256, 28
    for cell, gates in (("gru/reset-after", 3), ("gru/reset-before", 3), ("lstm", 4)):
        forward = gates * 2 * H * H + 2 * H * V
        assert roofline.forward_flops_per_token(H, V, cell) == forward
        P = sum(int(np.prod(s)) for s in cells.param_shapes(cell, V, H).values())
        assert roofline.num_params(H, V, cell) == P
        assert roofline.step_flops("train", B, T, H, V, cell) == B * T * 3 * forward + 5 * P
    assert roofline.num_params(H, V, "lstm") == 4 * (V * H + H * H + H) + H * V + V
    assert (
        roofline.num_params(H, V, "gru/reset-after")
        == roofline.num_params(H, V, "gru/reset-before") + H
    )  # b_xh and b_hh where reset-before has b_h


# --- the peers compute the chapter's step -----------------------------------------------------

V, H, T, B = 7, 5, 4, 3
PAIRED_BIASES = {
    "torch.nn.RNN": ("b_h",),
    "torch.nn.GRU": ("b_z", "b_r"),
    "torch.nn.LSTM": ("b_i", "b_f", "b_o", "b_c"),
    "keras.GRU": ("b_z", "b_r"),
}
"""core's biases that the peer keeps as an input and a recurrent bias (torch's bias_ih and
bias_hh, Keras GRU(reset_after=True)'s two rows): both take the gradient step, so their sum
moves twice core's step, and both count in the clipping norm."""


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, object]]:
    """Per cell: parameters (σ 0.5, so the gates are not all near ½), a batch and a state."""
    out: dict[str, dict[str, object]] = {}
    for cell in (cells.RNN, *cells.CELLS):
        rng = np.random.default_rng(0)
        if cell == cells.RNN:
            params = model.init_params(V, H, rng, "float64", sigma=0.5)
        else:
            params = cells.init_params(cell, V, H, rng, "float64", sigma=0.5)
        h = rng.standard_normal((B, H)) * 0.3
        out[cell] = {
            "params": params,
            "inputs": rng.integers(0, V, (T, B)),
            "labels": rng.integers(0, V, (T, B)),
            "state": (h, rng.standard_normal((B, H)) * 0.3) if cell == cells.LSTM else h,
        }
    return out


def _core_step(case: dict, theta: float) -> tuple[float, dict[str, np.ndarray], object, float]:
    ops = backends.load("numpy").make_ops("float64", "cpu")
    step = backends.load("numpy").make_train_step(ops)
    params = {k: v.copy() for k, v in case["params"].items()}
    new, H_T, loss, norm = step(params, case["inputs"], case["labels"], case["state"], 0.5, theta)
    return float(loss), new, H_T, float(norm)


FRAMEWORK_MODULE = {"torch": "torch", "tensorflow": "keras", "jax": "jax", "numpy": "numpy"}


def _states(state: object) -> dict[str, np.ndarray]:
    """A state as named arrays: H, or the LSTM's H and C."""
    parts = state if isinstance(state, tuple) else (state,)
    return {f"state{i}": np.asarray(s) for i, s in enumerate(parts)}


IN_PROCESS_PEERS = [n for n in peers.PEER_NAMES if peers.PEERS[n].environment is None]
"""The peers run in this process; the Gluon peers (MXNet's environment) are
tests/test_mxnet_bench.py's."""
TRAINING_PEERS = [n for n in IN_PROCESS_PEERS if "train" in peers.PEERS[n].modes]


@pytest.mark.parametrize("name", TRAINING_PEERS)
def test_peer_train_step_equals_core(name: str, cases: dict) -> None:
    """One SGD step of every peer, each in its cell, equals core's step. A peer that keeps a
    bias pair is compared unclipped (torch: θ = inf; Keras' global_clipnorm=inf gives NaN,
    so θ = 1e6), where its pair's sum moves by twice core's step; the others with θ = 0.05,
    which clips."""
    pytest.importorskip(FRAMEWORK_MODULE[peers.PEER_FRAMEWORK[name]])
    cell = peers.PEER_CELL[name]
    case = cases[cell]
    paired = PAIRED_BIASES.get(name, ())
    theta = (math.inf if name.startswith("torch") else 1e6) if paired else 0.05
    loss, new, H_T, norm = _core_step(case, theta)
    assert paired or norm > theta  # the clip is part of what is compared
    peer = peers.make_peer(name, V, H, "float64", "cpu")
    assert peer.cell == cell and peer.name == name
    peer.set_params({k: v.copy() for k, v in case["params"].items()})
    got_loss, got_H = peer.step_once(case["inputs"], case["labels"], case["state"], 0.5, theta)
    tol = tolerance("float64", "values")
    assert max_error({"loss": np.asarray(got_loss)}, {"loss": np.asarray(loss)}) <= tol
    assert max_error(_states(got_H), _states(H_T)) <= tol
    for b in paired:  # bias_ih and bias_hh each take b's gradient step
        new[b] = 2 * new[b] - case["params"][b]
    got = peer.get_params()
    assert set(got) == set(new)
    errors = {k: max_error({k: got[k]}, {k: new[k]}) for k in new}
    assert max(errors.values()) <= tol, errors


@pytest.mark.parametrize("name", IN_PROCESS_PEERS)
def test_peer_forward_and_greedy_generation_equal_core(name: str, cases: dict) -> None:
    """Every peer's forward loss and greedy text, in float64 (a peer that runs float32 only,
    ONNX Runtime's fused RNN: float32 against core's float32, at its tolerance)."""
    pytest.importorskip(FRAMEWORK_MODULE[peers.PEER_FRAMEWORK[name]])
    for lib in peers.PEERS[name].libraries:
        pytest.importorskip(lib)
    dtype = "float64" if "float64" in peers.PEERS[name].dtypes else "float32"
    ops = backends.load("numpy").make_ops(dtype, "cpu")
    case = cases[peers.PEER_CELL[name]]
    params = {k: v.astype(dtype) for k, v in case["params"].items()}
    peer = peers.make_peer(name, V, H, dtype, "cpu")
    peer.set_params(params)
    zeros = cells.initial_state(ops, params, B)
    loss, _ = cells.any_forward_loss(ops, params, case["inputs"], case["labels"], zeros)
    got = peer.forward(case["inputs"], case["labels"])()
    peer.sync(got)
    rel = 1e-12 if dtype == "float64" else tolerance("float32", "values")
    assert float(np.asarray(got)) == pytest.approx(float(loss), rel=rel)
    assert peer.generate(2, 12)() == sampling.predict(ops, params, [2], 12)


def test_every_cell_has_its_frameworks_layers_as_peers() -> None:
    by_cell: dict[str, list[str]] = {}
    for name, cell in peers.PEER_CELL.items():
        by_cell.setdefault(cell, []).append(name)
    assert by_cell == {
        cells.RNN: [
            "torch.nn.RNN",
            "keras.SimpleRNN",
            "jax.lax.scan",
            "numpy.min-char-rnn",
            "onnxruntime.RNN",  # an inference engine: forward and generate only
            "onnxruntime.Scan",
            "gluon.rnn.RNN",  # MXNet, in its own environment
        ],
        cells.GRU_RESET_AFTER: ["torch.nn.GRU", "keras.GRU", "jax.lax.scan.GRU", "gluon.rnn.GRU"],
        cells.LSTM: ["torch.nn.LSTM", "keras.LSTM", "jax.lax.scan.LSTM", "gluon.rnn.LSTM"],
        cells.GRU_RESET_BEFORE: ["keras.GRU(reset_after=False)"],  # torch has no such layer
    }
    with pytest.raises(ValueError, match="computes rnn, not lstm"):
        peers.MinCharRNNPeer(V, H, "float64", "cpu", cells.LSTM)


# --- the timing and the targets ---------------------------------------------------------------


def test_timing_counts_blocks_and_compile_apart() -> None:
    calls = []

    def build() -> tuple:
        calls.append("built")
        return (lambda: sum(range(1000))), (lambda out: None)

    row = timing.prepare("k", build, min_time=0.002, warmup_time=0.001)
    timing.run_interleaved([row], repeats=3, pause=0)
    assert calls == ["built"] and len(row.samples) == 3 and row.calls >= 1
    assert row.compile_s >= 0 and row.median_s > 0
    assert row.peak_rss_mb is None or row.peak_rss_mb >= 0


def test_ops_profile_accounts_for_every_matmul_of_the_step() -> None:
    T = 3
    result = ops_breakdown("numpy", "bptt", "float64", Shape(2, T, 8), steps=1)
    # T forward + T backward recurrence products, the output layer, dHs, and the ∂W: W_hq's,
    # W_xh's, and W_hh's in two (the initial state's step, then the rest)
    assert result["calls_per_step"]["matmul"] == 2 * T + 6
    assert result["calls_per_step"]["tanh"] == T
    assert result["ms_per_step"] > 0 and set(result["ops_ms"]) <= set(result["calls_per_step"])


def test_quiet_guard_times_again_a_block_that_shared_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy = iter([0.9, 0.0, 0.0])  # the first block overlaps another process, then quiet
    monkeypatch.setattr(
        timing.CpuMeter, "read", lambda self: {"other_cpus": next(busy), "steal_cpus": 0.0}
    )
    monkeypatch.setattr(timing.QuietGuard, "wait_quiet", lambda self, window=0.5: None)
    row = timing.Timed("k", lambda: None, lambda out: None, 0.0, 1e-3, 1, None)
    guard = timing.QuietGuard(threshold=0.25, budget_s=10)
    timing.time_block(row, pause=0, guard=guard)
    assert len(row.samples) == 1 and row.discarded == 1 and guard.discarded == 1
    assert row.noisy == 0


def test_the_thread_count_reaches_numpys_openblas() -> None:
    """NumPy's OpenBLAS sized its pool when it was loaded; --threads must reach it, or with
    one thread on two CPUs its two threads share one CPU (an LSTM step 80× slower)."""
    import ctypes

    from rosetta_rnn.benchmarks import threads

    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    if not paths:
        pytest.skip("this NumPy does not use OpenBLAS")
    lib = ctypes.CDLL(paths[0])
    getters = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_")
    getter = next(getattr(lib, n) for n in getters if hasattr(lib, n))
    before = getter()
    try:
        assert os.path.basename(paths[0]) in threads.limit_openblas(1)
        assert getter() == 1
    finally:
        threads.limit_openblas(before)
    assert getter() == before


def test_the_cpu_meter_counts_a_runs_own_workers_even_after_they_exit() -> None:
    """A data-parallel row's worker processes are this run's, not other load: their ticks
    count as its own while they run, the ticks they had stay counted once they exit, and a
    retired pid is no longer read (another process may get it)."""
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    base = machine._worker_ticks()  # workers of earlier runs in this process, if any
    child = subprocess.Popen([sys.executable, "-c", code])
    machine.OWN_PIDS.add(child.pid)
    try:
        seen = 0
        while child.poll() is None:
            seen = machine._worker_ticks() - base
            time.sleep(0.02)
        assert seen > 0  # 0.3 s of its CPU time, read every 20 ms
        assert machine._worker_ticks() - base == seen  # gone: the last reading stands
        machine.retire((child.pid,))
        assert child.pid not in machine.OWN_PIDS
        assert machine._worker_ticks() - base == seen
    finally:
        machine.OWN_PIDS.discard(child.pid)
        machine._last_ticks.pop(child.pid, None)
        machine._retired.pop(child.pid, None)


def test_cpu_meter_reads_other_processes_load() -> None:
    meter = machine.CpuMeter()
    sum(range(100_000))
    reading = meter.read()
    assert reading is None or (reading["other_cpus"] >= 0 and reading["steal_cpus"] >= 0)


def _row(name: str, backend: str, tps: float, mode: str = "m", **kw: object) -> dict:
    base = {
        "name": name,
        "backend": backend,
        "device": "cpu",
        "dtype": "float32",
        "mode": mode,
        "workload": "train",
        "num_steps": 35,
        "num_hiddens": 512,
        "tokens_per_sec": tps,
        "ms_per_step": 1.0,
        "compile_s": 0.5,
        "default_mode": True,
        "sweep": None,
    }
    return {**base, **kw}


def test_targets_use_the_best_mode_and_a_straight_line_fit() -> None:
    rows = [
        _row("numpy bptt/eager", "numpy", 110.0),
        _row("jax autograd/jit", "jax", 90.0, "autograd/jit", compile_s=0.8),
        _row("jax bptt/jit", "jax", 120.0, "bptt/jit", compile_s=1.5, default_mode=False),
        _row("torch.nn.RNN", "peer", 100.0),
        _row("jax.lax.scan", "peer", 100.0),
    ]
    for t in (5, 10, 70):
        ms = 2 + 0.5 * t
        rows.append(_row("numpy bptt/eager", "numpy", 1.0, ms_per_step=ms, num_steps=t))
        rows[-1]["sweep"] = "num_steps"
    rows[0]["ms_per_step"] = 2 + 0.5 * 35
    doc = {"rows": rows, "roofline": {"float32": {"tokens_per_sec": {"train": 200.0}}}}
    by_text = {t["target"]: t for t in targets.evaluate(doc, "float32")}
    assert by_text["numpy ≥ 1.05× torch.nn.RNN"]["value"] == pytest.approx(1.1)
    assert by_text["numpy ≥ 1.05× torch.nn.RNN"]["met"] is True
    assert by_text["jax ≥ 1.00× jax.lax.scan"]["value"] == pytest.approx(1.2)  # the best mode
    assert by_text["torch ≥ 1.00× torch.nn.RNN"]["met"] is None  # not measured
    assert by_text["fastest backend ≥ 0.80× roofline"]["value"] == pytest.approx(0.6)
    assert by_text["jax jit compile ≤ 1 s"]["value"] == 1.5
    assert by_text["jax jit compile ≤ 1 s"]["met"] is False
    (fit,) = targets.linear_fits(rows)
    assert fit["ms_per_time_step"] == pytest.approx(0.5) and fit["r2"] == pytest.approx(1.0)
    assert not any(t["cell"] != "rnn" for t in by_text.values())  # no gated rows, no targets


def test_gated_cells_are_held_to_their_frameworks_own_layers() -> None:
    gru = {"cell": "gru/reset-after", "num_hiddens": 256}
    rows = [
        _row("torch autograd/eager", "torch", 80.0, **gru),
        _row("torch bptt/torch.compile", "torch", 130.0, default_mode=False, **gru),
        _row("torch.nn.GRU", "peer", 100.0, **gru),
        _row("keras.GRU", "peer", 50.0, **gru),
        _row("torch.nn.RNN", "peer", 1000.0),  # another cell's peer: never compared with
        _row("torch decode", "torch", 90.0, workload="generate", **gru),
        _row("torch.nn.GRU", "peer", 60.0, workload="generate", **gru),
    ]
    doc = {"rows": rows, "roofline": {}}
    found = targets.evaluate(doc, "float32")
    gated = {t["target"]: t for t in found if t["cell"] == "gru/reset-after"}
    assert set(gated) == {
        "torch ≥ 1.00× torch.nn.GRU",
        "tensorflow ≥ 1.00× keras.GRU",
        "jax ≥ 1.00× jax.lax.scan.GRU",
        "mxnet ≥ 1.00× gluon.rnn.GRU",
        "generate: torch ≥ 1.00× torch.nn.GRU",  # generate rows: its targets; forward: none
        "generate: tensorflow ≥ 1.00× keras.GRU",
        "generate: jax ≥ 1.00× jax.lax.scan.GRU",
        "generate: mxnet ≥ 1.00× gluon.rnn.GRU",
    }
    assert gated["generate: torch ≥ 1.00× torch.nn.GRU"]["value"] == pytest.approx(1.5)
    assert gated["torch ≥ 1.00× torch.nn.GRU"]["value"] == pytest.approx(1.3)  # the best mode
    assert gated["torch ≥ 1.00× torch.nn.GRU"]["met"] is True
    assert gated["tensorflow ≥ 1.00× keras.GRU"]["met"] is None  # not measured
    rnn = {t["target"]: t for t in found if t["cell"] == "rnn"}
    assert rnn["torch ≥ 1.00× torch.nn.RNN"]["met"] is None  # the GRU rows are not the RNN's
    assert not any(t["cell"] == "lstm" for t in found)  # no LSTM rows, no LSTM targets


# --- the command ------------------------------------------------------------------------------


def test_bench_json_schema_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, err = bench(["--backends", "numpy", *TINY, "--json", "--out", str(out)], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert {"machine", "roofline_tokens_per_sec", "rows"} <= set(doc)
    assert doc["roofline_tokens_per_sec"] > 0 and doc["machine"]["cpus"] >= 1
    rows = doc["rows"]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["tokens_per_sec"] > 0 and r["ms_per_step"] > 0 and r["first_call_s"] > 0
        if not r["name"].startswith("onnxruntime."):  # ONNX Runtime's session is built once
            assert r["compile_s"] is None  # NumPy compiles nothing: no first call counted so
    assert {r["workload"] for r in rows} == {"train", "forward", "generate"}
    peer_rows = [r for r in rows if r["backend"] == "peer"]
    engines = {"onnxruntime.RNN", "onnxruntime.Scan"} if _has("onnxruntime") else set()
    assert peer_rows and {r["name"] for r in peer_rows} == {"numpy.min-char-rnn", *engines}
    assert {r["workload"] for r in peer_rows if r["name"] in engines} <= {"forward", "generate"}
    assert {r["name"] for r in rows if r["backend"] == "numpy"} == {
        "numpy bptt/eager",
        "numpy eager",
    }
    assert {r["num_steps"] for r in rows if r["workload"] == "train"} == {2, 3, 5}
    assert {r["num_hiddens"] for r in rows if r["workload"] == "train"} == {4, 8}
    assert any(t["target"].startswith("step time linear") for t in doc["targets"])

    for name in ("results.json", "results.csv", "results.md", "machine.md"):
        assert (out / name).is_file(), name
    for name in ("tokens_per_sec.png", "scaling.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and ROW_KEYS <= set(table[0])
    md = (out / "results.md").read_text()
    assert "| name | mode | tokens/s |" in md and "numpy.min-char-rnn" in md
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    for r in peer_rows:  # the path each peer's framework took (main shape), in machine.md too
        if r["sweep"] is None:
            assert r["path"]["recurrence"] and "error" not in r["path"], r
        else:
            assert "path" not in r  # a sweep's peer runs what the main shape's ran
    assert "## What each peer ran" in (out / "machine.md").read_text()
    assert (
        "| numpy.min-char-rnn | rnn | train | float32 | cpu | Python loop over NumPy |"
        in (out / "machine.md").read_text()
    )


@pytest.mark.parametrize("name", IN_PROCESS_PEERS)
def test_each_peer_says_which_path_its_framework_took(name: str) -> None:
    """Read from the run: torch's profiled operators (its LSTM runs oneDNN's recurrent kernel
    in float32 and torch's own loop in float64, which oneDNN's RNN does not compute; its RNN
    and GRU run torch's own loop in both), Keras' traced while loop, XLA's compiled loop."""
    from rosetta_rnn.benchmarks import workloads

    pytest.importorskip(FRAMEWORK_MODULE[peers.PEER_FRAMEWORK[name]])
    for lib in peers.PEERS[name].libraries:
        pytest.importorskip(lib)
    shape = Shape(2, 3, 8, 28)
    for dtype in peers.PEERS[name].dtypes:
        for case in workloads.peer_cases(name, "cpu", dtype, shape, ["forward", "generate"]):
            call, _ = case.build()
            call()
            path = case.engine["path"]()
            where = (name, dtype, case.workload)
            if name.startswith("torch."):
                import torch

                op = {"rnn": "aten::rnn_tanh", "lstm": "aten::lstm"}.get(case.cell, "aten::gru")
                assert op in path["recurrent_ops"], where
                onednn = "aten::mkldnn_rnn_layer" in path["recurrent_ops"]
                if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
                    assert onednn == (case.cell == "lstm" and dtype == "float32"), where
                want = "oneDNN (mkldnn_rnn_layer)" if onednn else "torch's own loop"
                assert path["recurrence"] == want, where
            elif name.startswith("keras."):
                assert path["recurrence"] == "TensorFlow while loop", where
            elif name.startswith("jax."):
                assert path["recurrence"].startswith("XLA"), where
                assert path["platform"] == "cpu", where
            else:
                assert path["recurrence"], where


def test_bench_table_with_torch_and_its_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default cells: the RNN, and the GRU and LSTM on the training step, each against
    its torch layer, in one table per cell with its targets."""
    pytest.importorskip("torch")
    argv = ["--backends", "numpy", "torch", "--workload", "train", "--no-sweep"]
    argv += ["--modes", "default", *TINY, "--out", str(tmp_path)]
    code, stdout, err = bench(argv, capsys)
    assert code == 0, err
    assert "torch.nn.RNN" in stdout and "torch autograd/eager" in stdout
    assert "numpy ≥ 1.05× torch.nn.RNN" in stdout and "roofline" in stdout
    assert not (tmp_path / "scaling.png").exists()  # no sweep, no scaling plot
    doc = json.loads((tmp_path / "results.json").read_text())
    by_cell: dict[str, set[str]] = {}
    for r in doc["rows"]:
        by_cell.setdefault(r["cell"], set()).add(r["name"])
    assert by_cell == {
        "rnn": {"numpy bptt/eager", "torch autograd/eager", "torch.nn.RNN", "numpy.min-char-rnn"},
        "gru/reset-after": {"numpy bptt/eager", "torch autograd/eager", "torch.nn.GRU"},
        "lstm": {"numpy bptt/eager", "torch autograd/eager", "torch.nn.LSTM"},
    }
    for cell in ("gru/reset-after", "lstm"):
        assert f"{cell}, B=2 T=3 H=8 V=28 float32 cpu" in stdout
    (gru,) = [t for t in doc["targets"] if t["target"] == "torch ≥ 1.00× torch.nn.GRU"]
    assert gru["cell"] == "gru/reset-after" and gru["value"] > 0 and gru["met"] is not None
    assert "torch ≥ 1.00× torch.nn.LSTM" in stdout
    assert "tensorflow ≥ 1.00× keras.LSTM" in stdout  # not measured: no TensorFlow here


def test_cells_select_rows_shapes_and_peers() -> None:
    """--cells names core's cells; gru is the reset-after GRU of torch.nn.GRU and Keras' GRU.
    The gated cells run at H 256 unless --num-hiddens says otherwise, every workload, against
    their own layers only, without sweeps."""
    from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN

    full = _config([])
    assert full.cells == [RNN, GRU_RESET_AFTER, LSTM]
    assert full.shape_of(RNN).num_hiddens == 512 and full.shape_of(LSTM).num_hiddens == 256
    assert full.workloads_of(RNN) == list(roofline.WORKLOADS)
    assert full.workloads_of(LSTM) == list(roofline.WORKLOADS)
    assert _config(["--quick"]).cells == [RNN]
    assert _config(["--quick", "--cells", "lstm"]).cells == [LSTM]
    forward = _config(["--workload", "forward"])
    assert forward.cells == [RNN, GRU_RESET_AFTER, LSTM]
    assert forward.workloads_of(LSTM) == ["forward"]
    names = ["gru", "gru/reset-after", "gru/reset-before"]
    named = _config(["--cells", *names, "--num-hiddens", "64"])
    assert named.cells == [GRU_RESET_AFTER, GRU_RESET_BEFORE]
    assert named.shape_of(RNN).num_hiddens == named.shape_of(GRU_RESET_BEFORE).num_hiddens == 64
    current = _config(["--recipe", "d2l-1.0"])  # d2l 1.0's 9.5, 10.1, 10.2: one shape for all
    assert current.shape_of(RNN).astuple() == current.shape_of(LSTM).astuple() == (1024, 32, 32, 28)
    assert _config(["--recipe", "d2l-1.0", "--batch-size", "64"]).shape.batch_size == 64

    pytest.importorskip("torch")
    pytest.importorskip("keras")
    cfg = _config(["--cells", "rnn", "gru/reset-before", "lstm", *TINY])
    devices = {"numpy": ["cpu"], "torch": ["cpu"], "tensorflow": ["cpu"]}
    groups = runner._groups(cfg, devices, list(peers.PEER_NAMES))
    gated = {c.cell for _, cases in groups for c in cases if c.cell != RNN}
    assert gated == {GRU_RESET_BEFORE, LSTM}
    labels = [label for label, _ in groups]
    assert any("train lstm float32 cpu B=2 T=3 H=8" in label for label in labels)
    for _, cases in groups:
        (cell,) = {c.cell for c in cases}
        peer_names = {c.name for c in cases if c.backend == "peer"}
        assert peer_names <= {p for p, c in peers.PEER_CELL.items() if c == cell}
        if cell != RNN:
            assert {c.sweep for c in cases} == {None}
    workloads = {(c.cell, c.workload) for _, cases in groups for c in cases}
    assert {w for c, w in workloads if c == LSTM} == set(roofline.WORKLOADS)
    lstm_peers = {c.name for _, cases in groups for c in cases if c.cell == LSTM}
    assert {"torch.nn.LSTM", "keras.LSTM"} <= lstm_peers


def test_missing_framework_is_a_note_unless_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = backends.load

    def load(name: str):  # type: ignore[no-untyped-def]
        if name == "jax":
            raise BackendUnavailable("backend 'jax' needs JAX, which is not installed")
        return real(name)

    monkeypatch.setattr(backends, "load", load)
    argv = ["--workload", "train", "--no-sweep", "--no-peers", *TINY, "--out", str(tmp_path)]
    code, stdout, err = bench([*argv, "--backends", "numpy", "jax"], capsys)
    assert (
        code == 2
        and err.strip() == "rosetta-rnn: error: backend 'jax' needs JAX, which is not installed"
    )
    monkeypatch.setattr(backends, "BACKENDS", ("numpy", "jax"))
    code, stdout, err = bench(argv, capsys)
    assert code == 0 and "note: skipped backend jax" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backends", "numpy", "caffe"], "unknown backend 'caffe'"),
        (["--repeats", "0"], "--repeats must be a positive number, got '0'"),
        (["--repeats", "many"], "--repeats must be a positive number, got 'many'"),
        (["--sweep-steps", "5,x"], "--sweep-steps must be a positive number, got 'x'"),
        (["--threads", "999"], "--threads 999 is more than the"),
        (["--max-wait", "-1"], "--max-wait must be a number >= 0, got '-1'"),
        (["--device", "tpu"], "unknown device 'tpu' (use cpu, auto, gpu, gpu:N or all)"),
        (["--quick", "--repeats", "0"], "--repeats must be a positive number, got '0'"),
        (
            ["--cells", "rnn", "gru/reset-middle"],
            "unknown cell 'gru/reset-middle'; choose from rnn, gru, gru/reset-after, "
            "gru/reset-before, lstm",
        ),
        (["--replicas", "0"], "--replicas must be a positive number, got '0'"),
        (["--replicas", "3"], "--batch-size 32 does not split into 3 equal shards"),
        (
            ["--replicas", "2", "--workload", "forward"],
            "--replicas times the RNN's training step; use --workload train or all",
        ),
        (
            ["--backends", "numpy", "array-api", "--replicas", "2"],
            "--replicas needs a backend with a data-parallel engine (torch, jax, tensorflow); "
            "asked for numpy, array-api",
        ),
    ],
)
def test_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = bench([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_output_folder_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = bench(["--backends", "numpy", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot create output folder" in err


def test_register_uses_the_callers_parser_class() -> None:
    class Strict(argparse.ArgumentParser):
        pass

    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command", parser_class=Strict)
    bench_cli.register(sub)
    assert isinstance(sub.choices["bench"], Strict)
    args = parser.parse_args(["bench", "--no-sweep", "--json"])
    assert args.func is bench_cli.cmd_bench and args.no_sweep and args.json
    assert args.device == ["cpu"] and args.dtype == ["float32"]
    assert bench_cli.config_from_args(args).workloads == list(roofline.WORKLOADS)


def test_cuda_only_modes_are_offered_on_a_gpu_alone() -> None:
    pytest.importorskip("torch")
    from rosetta_rnn.benchmarks.workloads import compile_modes

    assert compile_modes("torch", "train", "cpu") == ("eager", "torch.compile")
    assert compile_modes("torch", "train", "gpu:0") == ("eager", "torch.compile", "reduce-overhead")
    assert compile_modes("torch", "forward", "cpu") == ("eager", "torch.compile")
    assert compile_modes("torch", "forward", "gpu:0") == compile_modes("torch", "train", "gpu:0")
    assert compile_modes("numpy", "train", "gpu:0") == ("eager",)
    # generation: each way ops.decode runs, then the host loop
    assert compile_modes("torch", "generate", "cpu") == ("decode", "torch.compile", "eager")
    assert compile_modes("torch", "generate", "gpu:0") == (
        "decode",
        "torch.compile",
        "reduce-overhead",
        "eager",
    )
    assert compile_modes("numpy", "generate", "cpu") == ("eager",)


def test_roofline_peak_on_a_named_device() -> None:
    peak = roofline.measure_peak(["numpy"], "float64", size=64, repeats=1, device="cpu")
    assert set(peak) == {"numpy"} and peak["numpy"] > 0
    assert roofline.peak_size("cpu") == roofline.PEAK_SIZE
    assert roofline.peak_size("gpu:0") == roofline.GPU_PEAK_SIZE > roofline.PEAK_SIZE


def test_machine_without_nvidia_smi_lists_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    assert machine.gpus() == []


def test_a_device_no_backend_has_is_an_error_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    numpy_backend = backends.load("numpy")
    monkeypatch.setattr(numpy_backend, "_gpu_count", lambda: 0)
    measured: list[str] = []
    monkeypatch.setattr(roofline, "measure_peak", lambda *a, **k: measured.append("peak"))
    out = tmp_path / "out"
    code, stdout, err = bench(["--backends", "numpy", "--device", "gpu", "--out", str(out)], capsys)
    assert code == 2 and stdout == "" and not measured
    assert len(err.strip().splitlines()) == 1 and "no backend runs on gpu" in err
    assert not (out / "results.json").exists()


# --- asking for what is not there, and the result set ---------------------------------------


@pytest.fixture
def cheap_roofline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The peak matmul and the step's matmuls stand-ins (no 2048² products); lists each call.
    The first peak is 10 GFLOP/s, any later one 50."""
    calls: list[str] = []

    def peak(names: list[str], dtype: str, size: int = 0, repeats: int = 5, device: str = "cpu"):
        calls.append("peak")
        return {n: 50.0 if calls.count("peak") > 1 else 10.0 for n in names}

    def floor(names: list[str], dtype: str, *shape: int, device: str = "cpu", **kw: object):
        calls.append("floor")
        return {"ms_per_step": 1.0, "tokens_per_sec": 1000.0, "parts": []}

    monkeypatch.setattr(roofline, "measure_peak", peak)
    monkeypatch.setattr(roofline, "measure_matmul_floor", floor)
    return calls


def _previous_set(out: Path) -> dict[str, bytes]:
    """A previous run's files (every file of a set) and a file of the user's own."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*report.FILES, *report.PLOTS, "NOTES.md"):
        (out / name).write_bytes(f"old {name}".encode())
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("devices", [["cpu", "gpu"], ["gpu:1"], ["all", "gpu"]])
def test_a_device_that_is_not_there_is_an_error_before_anything_is_measured(
    devices: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    monkeypatch.setattr(backends.load("numpy"), "_gpu_count", lambda: 0)
    old = _previous_set(tmp_path)
    argv = ["--backends", "numpy", "--device", *devices, *TINY, "--out", str(tmp_path)]
    code, stdout, err = bench(argv, capsys)
    assert code == 2 and stdout == "" and cheap_roofline == []
    assert len(err.strip().splitlines()) == 1 and "no backend runs on gpu" in err
    assert _contents(tmp_path) == old


def test_a_failure_while_writing_leaves_the_previous_set_whole(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    old = _previous_set(tmp_path)

    def broken(doc: dict, path: Path) -> bool:
        raise RuntimeError("the plot broke")

    monkeypatch.setattr(report, "plot_tokens", broken)
    argv = ["--backends", "numpy", "--workload", "generate", "--no-sweep", *TINY]
    with pytest.raises(RuntimeError, match="the plot broke"):
        bench([*argv, "--out", str(tmp_path)], capsys)
    assert _contents(tmp_path) == old  # no half-written set, no temporary folder left


def test_a_full_disk_keeps_what_was_measured_on_stdout(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    old = _previous_set(tmp_path)

    def full(doc: dict, path: Path) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_tokens", full)
    argv = ["--backends", "numpy", "--workload", "generate", "--no-sweep", *TINY, "--json"]
    code, stdout, err = bench([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and json.loads(stdout)["rows"]  # the measurements are not lost
    last = err.strip().splitlines()[-1]
    assert last.startswith("rosetta-rnn: error: measured, but could not write the result files")
    assert "No space left on device" in last and "Traceback" not in err
    assert _contents(tmp_path) == old


def test_nothing_measured_is_an_error_and_the_previous_set_stays(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    old = _previous_set(tmp_path)

    def fails(*args: object, **kwargs: object) -> timing.Timed:
        raise RuntimeError("no such mode here")

    monkeypatch.setattr(timing, "prepare", fails)
    argv = ["--backends", "numpy", "--workload", "train", "--no-sweep", *TINY]
    code, stdout, err = bench([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and stdout == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("rosetta-rnn: error: nothing was measured: every row failed")
    assert "no such mode here" in last and "left as it was" in last
    assert _contents(tmp_path) == old


def test_the_tables_plot_and_csv_say_the_cell_and_its_target(tmp_path: Path) -> None:
    gru = {"cell": "gru/reset-after", "num_hiddens": 256}
    rows = [
        _full_row("torch autograd/eager", "torch", 40000.0),
        _full_row("torch.nn.RNN", "peer", 35000.0, framework="torch"),
        _full_row("torch autograd/eager", "torch", 30000.0, **gru),
        _full_row("torch.nn.GRU", "peer", 24000.0, framework="torch", **gru),
        _full_row("tensorflow autograd/tf.function", "tensorflow", 23916.0, **gru),
        _full_row("keras.GRU", "peer", 24000.0, framework="tensorflow", **gru),
    ]
    doc = _doc(rows)
    doc["shapes"] = {"rnn": doc["shape"], "gru/reset-after": {**doc["shape"], "num_hiddens": 256}}
    doc["targets"] = targets.evaluate(doc, "float32")
    text = report.terminal(doc)
    assert "rnn, B=32 T=35 H=512 V=28 float32 cpu" in text
    assert "gru/reset-after, B=32 T=35 H=256 V=28 float32 cpu" in text
    (line,) = [x for x in text.splitlines() if "torch ≥ 1.00× torch.nn.GRU" in x]
    assert line.split()[0] == "gru/reset-after" and "1.25×" in line and "met" in line
    (line,) = [x for x in text.splitlines() if "tensorflow ≥ 1.00× keras.GRU" in x]
    assert "0.997×" in line and "MISSED" in line  # never "1.00×" and missed
    md = report.markdown(doc)
    assert "## train, gru/reset-after (B=32 T=35 H=256 V=28)" in md
    assert "| gru/reset-after | torch ≥ 1.00× torch.nn.GRU | 1.25× | met |" in md
    figure = report.tokens_figure(doc)
    titles = [ax.get_title() for ax in figure.axes if ax.axison]
    assert [t.split(":")[0] for t in titles] == [
        "train, rnn (H=512)",
        "train, gru/reset-after (H=256)",
    ]
    report.write_csv(doc, tmp_path / "results.csv")
    with (tmp_path / "results.csv").open() as f:
        assert [r["cell"] for r in csv.DictReader(f)] == ["rnn", "rnn", *["gru/reset-after"] * 4]


def test_a_new_set_replaces_the_old_one_whole(tmp_path: Path) -> None:
    old = _previous_set(tmp_path)
    doc = _doc([_full_row("numpy bptt/eager", "numpy", 100.0)])  # no sweep: no scaling.png
    written = report.write_all(doc, tmp_path)
    assert sorted(p.name for p in written) == sorted([*report.FILES, "tokens_per_sec.png"])
    now = _contents(tmp_path)
    assert "scaling.png" not in now  # the previous run's plot does not survive
    assert now["NOTES.md"] == old["NOTES.md"]  # the user's own file is kept
    assert json.loads(now["results.json"])["rows"] == doc["rows"]
    assert now["tokens_per_sec.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert set(now) == {*report.FILES, "tokens_per_sec.png", "NOTES.md"}


def test_missing_matplotlib_is_one_line_before_anything_is_measured(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    out = tmp_path / "out"
    code, stdout, err = bench(["--backends", "numpy", *TINY, "--out", str(out)], capsys)
    assert code == 2 and stdout == "" and cheap_roofline == [] and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "matplotlib" in err and "[plot]" not in err


# --- quick mode, progress, the busy machine, the compile cache --------------------------------


def _config(argv: list[str]) -> runner.BenchConfig:
    from rosetta_rnn.helpers import Parser

    parser = Parser(prog="rosetta-rnn")
    bench_cli.register(parser.add_subparsers(dest="command", parser_class=Parser))
    return bench_cli.config_from_args(parser.parse_args(["bench", *argv]))


def test_quick_mode_selects_a_small_run_and_explicit_flags_win() -> None:
    quick = _config(["--quick"])
    assert quick.workloads == ["train", "generate"] and not quick.sweep
    assert quick.modes == "compiled"
    assert quick.repeats == 3 and quick.max_wait == 30 and quick.quick
    full = _config([])
    assert full.workloads == list(roofline.WORKLOADS) and full.sweep and full.modes == "all"
    assert full.repeats == 5 and full.max_wait == 600 and not full.quick
    mixed = _config(["--quick", "--repeats", "7", "--workload", "all", "--max-wait", "0"])
    assert mixed.repeats == 7 and mixed.workloads == list(roofline.WORKLOADS)
    assert mixed.max_wait == 0 and not mixed.sweep
    two = _config(["--workload", "generate", "forward"])  # several, in the bench's order
    assert two.workloads == [w for w in roofline.WORKLOADS if w in ("forward", "generate")]


@pytest.mark.parametrize(
    ("backend", "row"),
    [
        ("numpy", "numpy bptt/eager"),
        ("torch", "torch autograd/torch.compile"),
        ("jax", "jax autograd/jit"),
        ("tensorflow", "tensorflow autograd/tf.function"),
    ],
)
def test_compiled_modes_are_one_row_per_backend_under_its_compiler(backend: str, row: str) -> None:
    from rosetta_rnn.benchmarks.workloads import backend_cases

    pytest.importorskip(FRAMEWORK_MODULE[backend])
    cases = backend_cases(backend, "cpu", "float32", Shape(2, 3, 4), ["train"], "compiled")
    assert [c.name for c in cases] == [row]


def test_bench_help_says_what_where_how_long_and_the_quick_mode() -> None:
    from rosetta_rnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["bench"].format_help()
    for words in ("training step", "roofline", "bench-results", "6.5 minutes", "--quick"):
        assert words in text, words
    for words in ("--cells", "gru/reset-before", "its framework's own layer", "--cells rnn"):
        assert words in text, words
    assert "about a minute" in text and "--modes compiled --repeats 3" in text


class _Bar:
    """Stands in for rosetta_rnn.core.display.Progress and keeps what the run said."""

    said: ClassVar[list[str]] = []

    def __init__(self, description: str, total: int | None, **kw: object) -> None:
        self.said.append(description)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def describe(self, description: str, total: int | None = None, reset: bool = False) -> None:
        self.said.append(description)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if info:
            self.said.append(info)

    def say(self, text: str, out: object = None) -> None:
        print(text, file=out)  # type: ignore[arg-type]


def _busy_machine(monkeypatch: pytest.MonkeyPatch, other_cpus: float) -> None:
    """Every CPU reading says other processes use ``other_cpus``; waits take no time."""
    monkeypatch.setattr(
        machine.CpuMeter, "read", lambda self: {"other_cpus": other_cpus, "steal_cpus": 0.0}
    )
    monkeypatch.setattr(timing.time, "sleep", lambda s: None)


def test_the_wait_for_a_quiet_machine_is_shown_with_its_load(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    _busy_machine(monkeypatch, 1.34)
    monkeypatch.setattr(runner, "Progress", _Bar)
    monkeypatch.setattr(_Bar, "said", [])
    argv = ["--backends", "numpy", "--workload", "train", "--no-sweep", *TINY, "--max-wait", "2"]
    code, _, err = bench([*argv, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    waits = [s for s in _Bar.said if s.startswith("waiting for a quiet machine")]
    assert waits and "others use 1.34 CPUs" in waits[0] and "of 2 s" in waits[0]
    assert any(s.startswith("timing train") and "repeat 1 of 1" in s for s in _Bar.said)
    assert any(s.startswith("numpy bptt/eager: first call and warm-up") for s in _Bar.said)
    assert "waited 2 s for other processes to go quiet" in err
    assert "the --max-wait budget (2 s) is spent" in err


@pytest.mark.parametrize("other_cpus", [0.0, 1.34])
def test_a_busy_machine_is_never_hidden(
    other_cpus: float,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_roofline: list[str],
) -> None:
    """--max-wait 0 never waits, yet a run beside busy CPUs says so in every output."""
    _busy_machine(monkeypatch, other_cpus)
    argv = ["--backends", "numpy", "--workload", "train", "--no-sweep", *TINY, "--max-wait", "0"]
    code, stdout, err = bench([*argv, "--json", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    md = (tmp_path / "results.md").read_text()
    figure = report.tokens_figure(doc)
    shown = [t.get_text() for ax in figure.axes for t in ax.texts]
    peak = doc["roofline"]["float32"]["peak_gflops"]
    assert all(r["roofline_fraction"] == pytest.approx(r["gflops"] / peak) for r in doc["rows"])
    if other_cpus == 0.0:
        assert doc["busy"] is None and "busy machine" not in md + err
        assert not any("Busy machine" in t for t in shown)
        assert cheap_roofline.count("peak") == 1 and peak == 10.0
        return
    # a peak taken beside busy CPUs is taken again after the rows, and the higher one kept
    assert cheap_roofline.count("peak") == 2 and peak == 50.0
    busy = doc["busy"]
    assert busy["other_cpus_mean"] == 1.34 and busy["busy_repeats"] == busy["timed_repeats"] > 0
    assert "--max-wait 0: the run did not wait" in busy["note"]
    assert f"**{busy['note']}.**" in md  # results.md says it above the tables
    assert f"note: {busy['note']}" in err  # the log
    assert "roofline tokens/s: train" in err and "{" not in err  # a line, not a dict
    assert "spread n/a (1 repeat)" in err and "±0%" not in err + stdout
    assert any("Busy machine: other processes used 1.34 CPUs" in t for t in shown)  # the PNG


def test_the_compile_cache_persists_and_is_set_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.setenv("ROSETTA_RNN_CACHE", str(tmp_path))
    monkeypatch.delenv(runner.INDUCTOR_ENV, raising=False)
    first = runner.compile_cache(cold=False)
    assert first["torchinductor"] == str(tmp_path / "torchinductor") and first["persistent"]
    assert os.environ[runner.INDUCTOR_ENV] == first["torchinductor"] and not first["warm"]
    (tmp_path / "torchinductor" / "kernel").write_text("compiled")
    assert runner.compile_cache(cold=False)["warm"]  # the next run finds it
    cold = runner.compile_cache(cold=True)
    assert cold["torchinductor"] != first["torchinductor"] and not cold["persistent"]
    assert os.environ[runner.INDUCTOR_ENV] == cold["torchinductor"] and not cold["warm"]
    # importing the command sets nothing
    env = {k: v for k, v in os.environ.items() if k != runner.INDUCTOR_ENV}
    code = "import os, rosetta_rnn.cli; print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr


# --- what the log, the tables and the plots say ------------------------------------------------


def _full_row(name: str, backend: str, tps: float, **kw: object) -> dict:
    framework = backend if backend != "peer" else str(kw.pop("framework", "torch"))
    base = {
        "ms_min": 0.9,
        "ms_max": 1.1,
        "repeats": 3,
        "peak_rss_mb": 10.0,
        "roofline_fraction": tps / 60000.0,
        "framework": framework,
        "batch_size": 32,
        "first_call_s": 0.1,
    }
    return {**_row(name, backend, tps), **base, **kw}


def _doc(rows: list[dict], busy: dict | None = None, repeats: int = 3) -> dict:
    return {
        "machine": {
            "cpu": "Test CPU",
            "cpus": 2,
            "memory_gb": 1.0,
            "os": "Linux",
            "python": "3.11",
            "frameworks": {"numpy": {"version": "2.0"}},
            "threads": {"threads": 2},
        },
        "rows": rows,
        "roofline": {
            "float32": {
                "device": "cpu",
                "peak_gflops": 100.0,
                "peak_gflops_by_framework": {"numpy": 100.0},
                "matmul_size": 2048,
                "flops_per_token": {"train": 1.66e6},
                "tokens_per_sec": {"train": 60000.0},
            }
        },
        "shape": {"batch_size": 32, "num_steps": 35, "num_hiddens": 512, "vocab_size": 28},
        "method": {"repeats": repeats, "threads": 2},
        "busy": busy,
        "notes": [busy["note"]] if busy else [],
        "targets": [],
        "linearity": [],
    }


BUSY = {
    "note": "busy machine: 7 of 12 timed repeats ran beside busy CPUs",
    "short": "Busy machine: other processes used 1.34 CPUs on average while timing (7 of 12 "
    "repeats above 0.25): slower and noisier than a quiet run",
}


def test_the_roofline_log_line_is_readable() -> None:
    entry = {
        "peak_gflops": 172.4,
        "peak_gflops_by_framework": {"numpy": 165.7, "torch": 172.4},
        "tokens_per_sec": {"train": 103820.4, "forward": 311461.2},
    }
    line = runner.roofline_summary(entry)
    assert "{" not in line and "'" not in line
    assert line == (
        "peak 172.4 GFLOP/s (numpy 165.7, torch 172.4); "
        "roofline tokens/s: train 103,820, forward 311,461"
    )


def test_one_repeat_shows_no_spread() -> None:
    one = _full_row("numpy bptt/eager", "numpy", 100.0, repeats=1, ms_min=1.0, ms_max=1.0)
    assert report.spread(one) == "n/a" and report.spread(one, why=True) == "n/a (1 repeat)"
    assert report.spread(_full_row("numpy bptt/eager", "numpy", 100.0)) == "±10%"
    text = report.terminal(_doc([one], repeats=1))
    assert "1 repeat (no spread)" in text and "±0%" not in text and "median of 1" not in text
    assert "±0%" not in report.markdown(_doc([one], repeats=1))


def test_a_busy_warm_up_is_not_compile_time() -> None:
    """The min-char-rnn's 9.77 s of "compile": its first call and warm-up ran on a busy machine
    (3 s a step), its timed blocks after the wait for quiet (0.03 s a step)."""
    row = timing.Timed("k", lambda: None, lambda out: None, 3.0, 3.0, 1, None, samples=[0.03])
    row.warm_total_s, row.warm_calls = 9.0, 3
    assert row.compile_s == 0.0  # against the quiet median it read 11.88 s
    row.first_s = 23.0  # a 20 s build, then steady calls
    assert row.compile_s == pytest.approx(20.0)


def test_only_modes_that_compile_report_compile_time() -> None:
    from rosetta_rnn.benchmarks.workloads import D2L, Case

    def case(backend: str, framework: str, mode: str) -> Case:
        return Case("x", backend, framework, "cpu", "float32", mode, "train", D2L, lambda: None)

    assert not case("numpy", "numpy", "bptt/eager").compiles
    assert not case("peer", "numpy", "bptt/eager").compiles  # numpy.min-char-rnn
    assert not case("peer", "torch", "autograd/eager").compiles  # torch.nn.RNN
    assert case("torch", "torch", "autograd/torch.compile").compiles
    assert case("peer", "tensorflow", "autograd/tf.function").compiles  # keras.SimpleRNN
    assert case("jax", "jax", "bptt/eager").compiles  # JAX compiles each operation
    assert not case("torch", "torch", "decode").compiles  # torch's plain decoding loop
    assert case("torch", "torch", "torch.compile").compiles
    md = report.markdown(_doc([_full_row("numpy bptt/eager", "numpy", 100.0, compile_s=None)]))
    assert "| numpy | m | 100 | 1.00 | ±10% | none |" in md


def test_the_tokens_plot_has_axis_labels_a_legend_and_the_busy_note() -> None:
    rows = [
        _full_row("numpy bptt/eager", "numpy", 50000.0),
        _full_row("torch autograd/eager", "torch", 40000.0),
        _full_row("torch.nn.RNN", "peer", 35000.0, framework="torch"),
    ]
    figure = report.tokens_figure(_doc(rows, busy=BUSY))
    panels = [ax for ax in figure.axes if ax.axison]  # the busy note's strip has no axes
    assert panels and all("tokens per second" in ax.get_xlabel() for ax in panels)
    (legend,) = figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["numpy", "torch", "the framework's own layer (peer)", "roofline"]
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert any(t.startswith("Busy machine: other processes used 1.34 CPUs") for t in texts)
    quiet = report.tokens_figure(_doc(rows))
    assert not any("Busy" in t.get_text() for ax in quiet.axes for t in ax.texts)
    assert report.tokens_figure(_doc([])) is None

"""rosetta-rnn bench: the document's schema, the files, the peers' math, the FLOP count and
one-line errors. Tiny shapes, one repeat; no timing is ever asserted."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn import backends
from rosetta_rnn.benchmarks import cli as bench_cli
from rosetta_rnn.benchmarks import machine, peers, roofline, targets, timing
from rosetta_rnn.benchmarks.profile import ops_breakdown
from rosetta_rnn.benchmarks.workloads import Shape
from rosetta_rnn.core import model, sampling
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
def _restore_environ() -> Iterator[None]:
    """bench sets *_NUM_THREADS and torch's thread count for the process; put both back
    afterwards, so that later tests run with the threads they would have alone."""
    saved = dict(os.environ)
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


# --- the peers compute the chapter's step -----------------------------------------------------

V, H, T, B = 7, 5, 4, 3


@pytest.fixture(scope="module")
def case() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "params": model.init_params(V, H, rng, "float64", sigma=0.5),
        "inputs": rng.integers(0, V, (T, B)),
        "labels": rng.integers(0, V, (T, B)),
        "state": rng.standard_normal((B, H)) * 0.3,
    }


def _core_step(case: dict, theta: float) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    ops = backends.load("numpy").make_ops("float64", "cpu")
    step = backends.load("numpy").make_train_step(ops)
    params = {k: v.copy() for k, v in case["params"].items()}
    new, H_T, loss, _ = step(params, case["inputs"], case["labels"], case["state"], 0.5, theta)
    return float(loss), new, H_T


FRAMEWORK_MODULE = {"torch": "torch", "tensorflow": "keras", "jax": "jax", "numpy": "numpy"}


@pytest.mark.parametrize("name", peers.PEER_NAMES)
def test_peer_train_step_equals_core(name: str, case: dict) -> None:
    pytest.importorskip(FRAMEWORK_MODULE[peers.PEER_FRAMEWORK[name]])
    # Keras's global_clipnorm=inf gives NaN and torch clips over two biases: use θ that fits
    theta = math.inf if name == "torch.nn.RNN" else 0.05
    loss, new, H_T = _core_step(case, theta)
    peer = peers.make_peer(name, V, H, "float64", "cpu")
    peer.set_params({k: v.copy() for k, v in case["params"].items()})
    got_loss, got_H = peer.step_once(case["inputs"], case["labels"], case["state"], 0.5, theta)
    got = peer.get_params()
    assert got_loss == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(got_H, H_T, rtol=0, atol=1e-12)
    if name == "torch.nn.RNN":  # bias_ih and bias_hh each take b_h's gradient step
        new["b_h"] = 2 * new["b_h"] - case["params"]["b_h"]
    for k in model.PARAM_NAMES:
        np.testing.assert_allclose(got[k], new[k], rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", peers.PEER_NAMES)
def test_peer_forward_and_greedy_generation_equal_core(name: str, case: dict) -> None:
    pytest.importorskip(FRAMEWORK_MODULE[peers.PEER_FRAMEWORK[name]])
    ops = backends.load("numpy").make_ops("float64", "cpu")
    params = case["params"]
    peer = peers.make_peer(name, V, H, "float64", "cpu")
    peer.set_params(params)
    zeros = np.zeros((B, H))
    loss, _ = model.forward_loss(ops, params, case["inputs"], case["labels"], zeros)
    got = peer.forward(case["inputs"], case["labels"])()
    peer.sync(got)
    assert float(np.asarray(got)) == pytest.approx(float(loss), rel=1e-12)
    assert peer.generate(2, 12)() == sampling.predict(ops, params, [2], 12)


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
    # T forward + T backward recurrence products, the output layer, dHs, and three ∂W
    assert result["calls_per_step"]["matmul"] == 2 * T + 5
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
        assert r["tokens_per_sec"] > 0 and r["ms_per_step"] > 0 and r["compile_s"] >= 0
    assert {r["workload"] for r in rows} == {"train", "forward", "generate"}
    peer_rows = [r for r in rows if r["backend"] == "peer"]
    assert peer_rows and {r["name"] for r in peer_rows} == {"numpy.min-char-rnn"}
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


def test_bench_table_with_torch_and_its_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    argv = ["--backends", "numpy", "torch", "--workload", "train", "--no-sweep"]
    argv += ["--modes", "default", *TINY, "--out", str(tmp_path)]
    code, stdout, err = bench(argv, capsys)
    assert code == 0, err
    assert "torch.nn.RNN" in stdout and "torch autograd/eager" in stdout
    assert "numpy ≥ 1.05× torch.nn.RNN" in stdout and "roofline" in stdout
    assert not (tmp_path / "scaling.png").exists()  # no sweep, no scaling plot


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
    assert args.workload == "all" and args.device == ["cpu"] and args.dtype == ["float32"]


def test_cuda_only_modes_are_offered_on_a_gpu_alone() -> None:
    pytest.importorskip("torch")
    from rosetta_rnn.benchmarks.workloads import compile_modes

    assert compile_modes("torch", "train", "cpu") == ("eager", "torch.compile")
    assert compile_modes("torch", "train", "gpu:0") == ("eager", "torch.compile", "reduce-overhead")
    assert compile_modes("torch", "forward", "gpu:0") == ("eager",)
    assert compile_modes("numpy", "train", "gpu:0") == ("eager",)


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

"""Data-parallel training (``train --replicas N``, core.replicas) on each framework's own
engine, held to NumPy on one device: the CLI runs, the conformance cells, the broken twins, the
sharded carried state across a checkpoint, and the errors a user can cause.

JAX and TensorFlow fix their device count when they start, so their replicated runs go
through ``python -m rosetta_rnn`` in a process of their own; torch's engine starts its own
processes and also runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error, run_cli

from rosetta_rnn import backends
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance import checks, mistakes
from rosetta_rnn.conformance.problems import DEFAULT_PROBLEMS, for_cell
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, model, replicas
from rosetta_rnn.core.errors import BackendUnavailable, UserError
from rosetta_rnn.core.training import TrainConfig, Trainer

ENGINES = ("torch", "jax", "tensorflow")
FLOAT64_EPOCHS = tolerance("float64", "epochs")


def _installed(name: str) -> bool:
    try:
        backends.load(name)
    except BackendUnavailable:
        return False
    return True


def _engines() -> list:
    return [
        pytest.param(
            name, marks=[] if _installed(name) else pytest.mark.skip(reason=f"{name} missing")
        )
        for name in ENGINES
    ]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``rosetta-rnn ARGS`` in a fresh Python process (JAX and TensorFlow make their devices
    at start), with this process's import path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run(
        [sys.executable, "-m", "rosetta_rnn", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _history(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


SMALL = ("--epochs", "3", "--num-hiddens", "24", "--max-tokens", "3000", "--dtype", "float64")


@pytest.fixture(scope="module")
def numpy_small(timemachine: Path) -> list[float]:
    """The small configuration's perplexities on NumPy, one device."""
    run = _cli("train", "--corpus", str(timemachine), "--backend", "numpy", *SMALL, "--json")
    return [h["perplexity"] for h in _history(run)["history"]]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", _engines())
def test_train_replicas_matches_numpy_on_one_device(
    name: str, n: int, timemachine: Path, numpy_small: list[float]
) -> None:
    """``train --replicas 2`` and ``4`` run on each framework's engine and give NumPy's
    one-device perplexities (float64, 3 epochs, sequential partitioning carrying the state)."""
    run = _cli(
        "train", "--corpus", str(timemachine), "--backend", name, *SMALL,
        "--replicas", str(n), "--json",
    )  # fmt: skip
    doc = _history(run)
    assert doc["replicas"] == n
    engine = {"torch": "torch.distributed gloo", "jax": "shard_map", "tensorflow": "Mirrored"}
    assert engine[name] in doc["engine"] and f"{n} " in doc["engine"]
    got = [h["perplexity"] for h in doc["history"]]
    worst = max(abs(a - b) / b for a, b in zip(got, numpy_small, strict=True))
    assert worst <= FLOAT64_EPOCHS, f"{name} --replicas {n}: {worst:.3g}"
    assert f"; {n} replicas: {doc['engine']}): " in run.stderr  # the start line says how


CHAPTER_EPOCHS = "20"


@pytest.fixture(scope="module")
def numpy_chapter(timemachine: Path) -> list[float]:
    run = _cli(
        "train", "--corpus", str(timemachine), "--backend", "numpy", "--dtype", "float64",
        "--epochs", CHAPTER_EPOCHS, "--json",
    )  # fmt: skip
    return [h["perplexity"] for h in _history(run)["history"]]


@pytest.mark.parametrize("name", _engines())
def test_the_chapter_on_two_replicas_is_the_chapter_on_one_device(
    name: str, timemachine: Path, numpy_chapter: list[float]
) -> None:
    """The chapter's configuration (512 hidden, 32 × 35, θ = 1), float64, 20 epochs with
    ``--replicas 2``: every epoch's perplexity within 1e-9 of NumPy's on one device."""
    run = _cli(
        "train", "--corpus", str(timemachine), "--backend", name, "--dtype", "float64",
        "--epochs", CHAPTER_EPOCHS, "--replicas", "2", "--json",
    )  # fmt: skip
    got = [h["perplexity"] for h in _history(run)["history"]]
    assert len(got) == len(numpy_chapter) == int(CHAPTER_EPOCHS)
    worst = max(abs(a - b) / b for a, b in zip(got, numpy_chapter, strict=True))
    assert worst <= FLOAT64_EPOCHS, f"{name}: {worst:.3g}"


def test_conform_replica_cells_pass_on_every_engine() -> None:
    """``conform --checks train/replicas grads/replicas``: every installed engine, 2 and 4
    replicas, the RNN and the LSTM (whose carried state is a pair), within 1e-9 and 1e-12."""
    names = [n for n in ENGINES if _installed(n)]
    assert names, "no data-parallel backend is installed"
    run = _cli(
        "conform", "--backends", *names, "--checks", "train/replicas", "grads/replicas",
        "--cells", "rnn", "lstm", "--json",
    )  # fmt: skip
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["passed"], run.stdout[-3000:]
    got = {(c["check"], c["backend"], c["cell"]) for c in report["cells"]}
    assert got == {
        (check, name, cell)
        for check in checks.REPLICA_CHECKS
        for name in names
        for cell in ("rnn", "lstm")
    }
    for c in report["cells"]:
        kind = "train" if c["check"] == "train/replicas" else "grads"
        assert c["dtype"] == "float64" and c["tolerance"] == tolerance("float64", kind)


# --- the broken twins ----------------------------------------------------------------------

TWINS = [
    (mistakes.GradsSummed, "summed, not averaged"),
    (mistakes.ClipPerReplica, "clips its own gradient before the all-reduce"),
    (mistakes.LocalBatchLoss, "divided by the local batch"),
    (mistakes.OwnRandomness, "its own generator"),
]


@pytest.mark.parametrize("cell", [cells.RNN, cells.LSTM], ids=["rnn", "lstm"])
@pytest.mark.parametrize(("twin", "words"), TWINS, ids=[t.__name__ for t, _ in TWINS])
def test_each_broken_twin_fails_and_is_named(twin: type, words: str, cell: str) -> None:
    """Each mistake, run on torch tensors, fails the gradient check and the diagnosis (whose
    suspects run on NumPy) names it; the trajectory check fails too."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    subject = twin(torch_backend, "float64")
    problems = for_cell(DEFAULT_PROBLEMS, cell)
    grads = checks.run_check("grads/replicas", subject, problems)
    assert not grads.passed and grads.message.startswith(twin.mistake), grads.message
    assert words in grads.message
    assert ", or " not in grads.message  # the gradient check tells all four apart
    trajectory = checks.run_check("train/replicas", subject, problems)
    assert not trajectory.passed and words in trajectory.message, trajectory.message


def test_the_twins_without_their_mistake_are_the_one_device_run() -> None:
    """The twins' simulated engine with no fault passes both checks: each twin differs from
    the reference by its mistake alone."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    for module in (numpy_backend, torch_backend):
        faultless = mistakes._ReplicaTwin(module, "float64")
        for check in checks.REPLICA_CHECKS:
            cell = checks.run_check(check, faultless, DEFAULT_PROBLEMS)
            assert cell.passed, (module.NAME, check, cell.max_error)


def test_summed_gradients_and_a_local_batch_loss_leave_the_same_trajectory() -> None:
    """Their parameters move alike (both gradients are N times the mean, equally clipped):
    the trajectory check names both, and only the loss in the gradient check tells them
    apart."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    cell = checks.run_check(
        "train/replicas", mistakes.LocalBatchLoss(torch_backend, "float64"), DEFAULT_PROBLEMS
    )
    assert mistakes.GradsSummed.mistake in cell.message
    assert mistakes.LocalBatchLoss.mistake in cell.message


# --- the carried state and checkpoints -------------------------------------------------------


# a small sequential run whose epochs both mid-epoch tests stop and continue
_CORPUS = np.random.default_rng(7).integers(0, 11, 3000)
_START = model.init_params(11, 20, np.random.default_rng(8), "float64")
_CFG = TrainConfig(batch_size=8, num_steps=6, num_hiddens=20, clip=0.5)


class _Stop(Exception):
    pass


def _trainer(ops: object, step: object, params: dict, seed: int) -> Trainer:
    return Trainer(
        ops, step, model.to_backend(ops, params), _CORPUS, _CFG, np.random.default_rng(seed)
    )


def _stopped_after(trainer: Trainer, steps: int) -> tuple[dict, dict]:
    """The snapshot of ``trainer`` stopped after ``steps`` steps of its epoch."""

    def stop(i: int) -> None:
        if i == steps - 1:
            raise _Stop

    with pytest.raises(_Stop):
        trainer.run_epoch(on_step=stop)
    return trainer.snapshot()


def _numpy_epoch(params: dict, seed: int, snapshot: tuple[dict, dict] | None = None) -> dict:
    """NumPy on one device: an epoch from ``params`` (or the rest of one from ``snapshot``)."""
    ops = numpy_backend.make_ops("float64")
    trainer = _trainer(ops, numpy_backend.make_train_step(ops), params, seed)
    if snapshot is not None:
        trainer.restore(*snapshot)
    trainer.run_epoch()
    return trainer.params


def test_a_checkpoint_mid_epoch_holds_the_whole_state_and_resumes_on_one_device() -> None:
    """torch with 2 replicas, stopped after 5 steps of an epoch: the snapshot's state is every
    replica's rows in order, and NumPy on one device continues it to the same parameters as an
    uninterrupted one-device run."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    torch_ops = torch_backend.make_ops("float64")
    step = torch_backend.make_replicated_step(torch_ops, 2)
    try:
        tensors, position = _stopped_after(_trainer(torch_ops, step, _START, 9), 5)
    finally:
        step.close()
    assert tensors["state"].shape == (8, 20) and position["step"] == 5
    resumed = _numpy_epoch(tensors, 0, (tensors, position))
    for name, value in _numpy_epoch(_START, 9).items():
        np.testing.assert_allclose(resumed[name], value, rtol=0, atol=1e-13)


def test_a_one_device_snapshot_mid_epoch_continues_on_four_torch_replicas() -> None:
    """NumPy stopped after 3 steps of an epoch, its whole state restored into torch with 4
    replicas (each takes its rows of it): the rest of the epoch ends where an uninterrupted
    NumPy epoch does."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    ops = numpy_backend.make_ops("float64")
    tensors, position = _stopped_after(
        _trainer(ops, numpy_backend.make_train_step(ops), _START, 9), 3
    )
    assert tensors["state"].shape == (8, 20) and np.abs(tensors["state"]).max() > 0
    torch_ops = torch_backend.make_ops("float64")
    step = torch_backend.make_replicated_step(torch_ops, 4)
    try:
        resumed = _trainer(torch_ops, step, tensors, 0)
        resumed.restore(tensors, position)
        resumed.run_epoch()
        got = model.to_numpy(torch_ops, resumed.params)
    finally:
        step.close()
    for name, value in _numpy_epoch(_START, 9).items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-13)


def test_a_replica_that_cannot_start_is_one_line_not_a_wait() -> None:
    """Replica 1's process exits before joining the group (on purpose, code 3): one line at
    once, and replica 2's process, which would wait for the group forever, is stopped."""
    pytest.importorskip("rosetta_rnn.backends.torch")
    from rosetta_rnn.backends import torch as torch_backend
    from rosetta_rnn.backends._torch_distributed import TorchReplicas

    ops = torch_backend.make_ops("float64")
    vg = torch_backend.make_value_and_grad(ops)
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="replica 1's process exited with code 3 before"):
        worker = "import sys, time; sys.exit(3) if sys.argv[1] == '1' else time.sleep(600)"
        TorchReplicas(ops, vg, 3, 1, worker, [])
    assert time.monotonic() - start < 20
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_a_replicated_checkpoint_resumes_under_another_engine_and_count(
    tmp_path: Path, timemachine: Path, numpy_small: list[float]
) -> None:
    """Written by torch with 2 replicas, continued by torch with 4 and then by NumPy on one
    device: the epochs continue NumPy's uninterrupted run."""
    ckpt = tmp_path / "run.safetensors"
    first = _cli(
        "train", "--corpus", str(timemachine), "--backend", "torch", *SMALL, "--epochs", "1",
        "--replicas", "2", "--checkpoint", str(ckpt), "--json",
    )  # fmt: skip
    assert _history(first)["replicas"] == 2
    second = _cli("train", "--resume", str(ckpt), "--backend", "torch", "--epochs", "2",
                  "--replicas", "4", "--json")  # fmt: skip
    assert _history(second)["replicas"] == 4
    third = _cli("train", "--resume", str(ckpt), "--backend", "numpy", "--epochs", "3", "--json")
    doc = _history(third)
    assert doc["replicas"] == 1  # numpy has no replicas: the count given is the count used
    got = [h["perplexity"] for h in doc["history"]]
    worst = max(abs(a - b) / b for a, b in zip(got, numpy_small, strict=True))
    assert worst <= FLOAT64_EPOCHS


# --- what a user can get wrong --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--backend", "numpy", "--replicas", "2"), "numpy backend is the single-device reference"),
        (("--backend", "array-api", "--replicas", "2"), "has no collectives"),
        (("--backend", "torch", "--replicas", "3"), "does not split into 3 equal shards"),
        (("--backend", "torch", "--replicas", "2", "--compile"), "runs torch eagerly"),
    ],
)
def test_replicas_a_backend_cannot_run_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], timemachine: Path, args: tuple[str, ...], words: str
) -> None:
    if not _installed(args[1]):
        pytest.skip(f"{args[1]} is not installed")
    code, _, err = run_cli(
        capsys, "train", "--corpus", str(timemachine), "--epochs", "1", "--max-tokens", "2000",
        *args,
    )  # fmt: skip
    assert code == 2
    one_line_error(err, words)


@pytest.mark.parametrize(
    ("name", "flag", "words"),
    [("jax", "--eager", "it has no --eager"), ("tensorflow", "--eager", "no --eager")],
)
def test_replicas_refuse_an_uncompiled_step(
    name: str, flag: str, words: str, timemachine: Path
) -> None:
    if not _installed(name):
        pytest.skip(f"{name} is not installed")
    run = _cli(
        "train", "--corpus", str(timemachine), "--backend", name, "--epochs", "1",
        "--max-tokens", "2000", "--replicas", "2", flag,
    )  # fmt: skip
    assert run.returncode == 2
    one_line_error(run.stderr, words)


def test_a_framework_started_with_too_few_devices_says_so() -> None:
    """JAX started here (by other tests, or now) with fewer CPU devices than asked: one line
    saying why, not a wrong answer."""
    jax_backend = pytest.importorskip("rosetta_rnn.backends.jax")
    ops = jax_backend.make_ops("float64")
    import jax

    have = len(jax.devices("cpu"))
    with pytest.raises(BackendUnavailable, match=f"needs {have + 1} CPU devices; JAX has {have}"):
        jax_backend.make_replicated_step(ops, have + 1)


def test_check_replicas_and_shards() -> None:
    replicas.check_replicas(4, 32)
    with pytest.raises(UserError, match="does not split into 3 equal shards"):
        replicas.check_replicas(3, 32)
    with pytest.raises(UserError, match="at least 1"):
        replicas.check_replicas(0, 32)
    x = np.arange(24).reshape(3, 8)
    parts = [replicas.shard(x, 4, r, 1) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), x)
    H, C = np.ones((8, 2)), np.zeros((8, 2))
    assert [p.shape for p in replicas.state_shard((H, C), 2, 1)] == [(4, 2), (4, 2)]


# --- the benchmark's data-parallel rows ------------------------------------------------------


def test_bench_replicas_rows_time_each_engine_beside_one_device(tmp_path: Path) -> None:
    """``bench --replicas 2 4``: per engine a ×1 row (the same step on one device) and ×2, ×4
    rows, kept out of the main tables and the targets; torch's rows say the all-reduce's time,
    JAX's and TensorFlow's (inside the compiled step) do not; results.md has their table."""
    names = [n for n in ENGINES if _installed(n)]
    assert names, "no data-parallel backend is installed"
    run = _cli(
        "bench", "--backends", "numpy", *names, "--workload", "train", "--cells", "rnn",
        "--no-sweep", "--no-peers", "--modes", "default", "--repeats", "1", "--min-time",
        "0.01", "--max-wait", "0", "--batch-size", "4", "--num-steps", "3", "--num-hiddens",
        "8", "--replicas", "2", "4", "--json", "--out", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)
    rows = [r for r in doc["rows"] if r["sweep"] == "replicas"]
    default = {
        "torch": "autograd/eager",
        "jax": "autograd/jit",
        "tensorflow": "autograd/tf.function",
    }
    assert {(r["name"], r["replicas"]) for r in rows} == {
        (f"{name} {default[name]} ×{n}", n) for name in names for n in (1, 2, 4)
    }
    for r in rows:
        assert r["tokens_per_sec"] > 0 and r["workload"] == "train"
        if r["backend"] == "torch" and r["replicas"] > 1:
            assert r["collective_ms"] > 0
        else:
            assert r["collective_ms"] is None
    main = [r for r in doc["rows"] if r["sweep"] is None]
    assert all(r["replicas"] == 1 for r in main) and "numpy bptt/eager" in {r["name"] for r in main}
    replicated = [r["name"] for r in rows if r["replicas"] > 1]
    assert not [t for t in doc["targets"] for name in replicated if name in t["detail"]]
    md = (tmp_path / "results.md").read_text()
    assert "## Data parallel, rnn (B=4 T=3 H=8 V=28, float32)" in md
    assert f"| {names[0]} {default[names[0]]} ×2 | 2 |" in md


def test_the_docs_quote_the_committed_replica_figures() -> None:
    """The data-parallel page's figures are recomputed from
    benchmarks/results/cpu-2core/replicas/: the 20-epoch differences and the bench ratios."""
    root = Path(__file__).resolve().parent.parent
    folder = root / "benchmarks" / "results" / "cpu-2core" / "replicas"
    page = " ".join((root / "docs" / "replicas.md").read_text(encoding="utf-8").split())
    chapter = json.loads((folder / "chapter20.json").read_text())
    for name, run in chapter["runs"].items():
        got, ref = run["perplexities"], chapter["numpy_perplexities"]
        worst = max(abs(a - b) / b for a, b in zip(got, ref, strict=True))
        assert worst == run["max_relative_difference"] <= FLOAT64_EPOCHS
        label = {"torch": "torch", "jax": "JAX", "tensorflow": "TensorFlow"}[name]
        assert f"{worst:.1e} ({label})" in page
    for path in (folder / "results.json", folder / "runs" / "2" / "results.json"):
        rows = [r for r in json.loads(path.read_text())["rows"] if r["sweep"] == "replicas"]
        ratios = []
        for name in ENGINES:
            one, two = (
                next(r for r in rows if r["backend"] == name and r["dtype"] == "float32"
                     and r["replicas"] == n)
                for n in (1, 2)
            )  # fmt: skip
            ratios.append(f"{two['tokens_per_sec'] / one['tokens_per_sec']:.2f}×")
            if path.parent == folder and name == "torch":
                assert f"{two['collective_ms']:.2f} ms of a {two['ms_per_step']:.2f} ms step" in (
                    page
                )
        if path.parent == folder:
            assert (
                f"torch {ratios[0]}" in page
                and f"JAX {ratios[1]} and TensorFlow {ratios[2]}" in page
            )
        else:
            assert f"gave {ratios[0]}, {ratios[1]} and {ratios[2]}" in page


def test_the_docs_quote_the_committed_replica_matrix_and_the_twins() -> None:
    """The data-parallel page's conformance figures: the committed ``conform --checks
    train/replicas grads/replicas --json`` (every cell passing, its worst errors), and each
    twin's gradient error on the RNN, recomputed here."""
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    root = Path(__file__).resolve().parent.parent
    page = " ".join((root / "docs" / "replicas.md").read_text(encoding="utf-8").split())
    folder = root / "benchmarks" / "results" / "cpu-2core" / "replicas"
    report = json.loads((folder / "conform.json").read_text())
    assert report["passed"] and len(report["cells"]) == 24
    assert {c["check"] for c in report["cells"]} == set(checks.REPLICA_CHECKS)
    assert {c["backend"] for c in report["cells"]} == set(ENGINES)
    worst = {
        check: max(c["max_error"] for c in report["cells"] if c["check"] == check)
        for check in checks.REPLICA_CHECKS
    }
    assert (
        f"24 cells, all passing; parameter trajectories within {worst['train/replicas']:.1e}"
        in (page)
    )
    assert f"each step's gradient within {worst['grads/replicas']:.1e}" in page
    problems = for_cell(DEFAULT_PROBLEMS, cells.RNN)
    quoted = []
    for twin, _ in TWINS:
        cell = checks.run_check("grads/replicas", twin(torch_backend, "float64"), problems)
        quoted.append(f"({cell.max_error:.2f})")
    assert all(q in page for q in quoted), quoted


CURRENT = ("--recipe", "d2l-1.0", "--num-train", "200", "--num-val", "60", "--batch-size", "64")
"""d2l 1.0's windows at a small size: 3 × 64 + 8 training windows (the last minibatch partial,
and still split in equal shards), 60 validation windows."""


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_the_current_edition_on_two_replicas_is_its_run_on_one_device(
    backend: str, timemachine: Path
) -> None:
    """The windows loader's minibatches, the partial last one too, split over 2 replicas give
    the one-device run's training and validation figures."""
    common = ("--corpus", str(timemachine), "--epochs", "2", "--dtype", "float64", "--json")
    one = _history(_cli("train", "--backend", "numpy", *CURRENT, *common))["history"]
    two = _history(_cli("train", "--backend", backend, "--replicas", "2", *CURRENT, *common))
    keys = ("perplexity", "book_perplexity", "val_perplexity", "val_book_perplexity")
    pairs = zip(two["history"], one, strict=True)
    worst = max(abs(a[k] - b[k]) / b[k] for a, b in pairs for k in keys)
    assert worst <= FLOAT64_EPOCHS, f"{backend} --replicas 2: {worst:.3g}"


def test_the_windows_partial_minibatch_must_split_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--replicas N with a --num-train whose last minibatch is not a multiple of N is one line
    before any framework starts; one that is runs (the numpy refusal comes after the check)."""
    from cli_run import one_line_error, run_cli

    base = ("train", "--recipe", "d2l-1.0", "--replicas", "3", "--batch-size", "999")
    code, _, err = run_cli(capsys, *base)
    assert code == 2
    one_line_error(err, "the last, partial minibatch has 10 sequences")
    code, _, err = run_cli(capsys, *base, "--num-train", "9990", "--backend", "numpy")
    assert code == 2
    one_line_error(err, "the numpy backend is the single-device reference")

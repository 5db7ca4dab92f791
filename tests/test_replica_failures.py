"""A data-parallel run that loses a replica stops with one line, every time: a worker killed
between steps or mid-run, with CPU-bound load beside it (the load is what made the failure a
race: a killed process's sockets close, and fail rank 0's collective, before the process can
be reaped), a worker that outlives its rank 0, NCCL's wait that is polled, and the JAX and
TensorFlow engines' device failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error

from rosetta_rnn.core import checkpoint, model
from rosetta_rnn.core.errors import ReplicaLost

REPEATS = 5
"""Deaths per test under load; the closing note of the fix reports many more runs."""


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """Two CPU-bound processes beside the test for its whole length (the machine has 2 cores)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _state(pid: int) -> str | None:
    """A process's state letter (``Z`` for a zombie), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _kill_and_wait_until_dead(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    while _state(pid) not in ("Z", None):
        time.sleep(0.01)


def _torch_problem(replicas: int) -> tuple[object, object, object, object]:
    torch_backend = pytest.importorskip("rosetta_rnn.backends.torch")
    ops = torch_backend.make_ops("float64")
    params = model.to_backend(ops, model.init_params(11, 8, np.random.default_rng(0), "float64"))
    x = ops.asarray(np.zeros((3, 4), dtype=np.int64))
    return torch_backend, ops, params, x


@pytest.mark.usefixtures("cpu_load")
@pytest.mark.parametrize("replicas, killed", [(2, 1), (4, 2)])
def test_a_replica_that_dies_stops_the_run_in_one_line(replicas: int, killed: int) -> None:
    """A worker killed between steps, under load, ``REPEATS`` times: the next step names that
    replica and its exit code (with 4 replicas the others see their peer gone and exit too;
    they are not the cause and are not named), and closing the engine does not wait."""
    torch_backend, ops, params, x = _torch_problem(replicas)
    for _ in range(REPEATS):
        state = ops.zeros((4, 8))
        step = torch_backend.make_replicated_step(ops, replicas)
        try:
            new, state, _, _ = step(params, x, x, state, 1.0, 1.0)
            workers = step.worker_pids
            _kill_and_wait_until_dead(workers[killed - 1])
            start = time.monotonic()
            with pytest.raises(ReplicaLost) as caught:
                step(new, x, x, state, 1.0, 1.0)
            message = str(caught.value)
            assert message == (
                f"replica {killed}'s process exited with code -9 during a step; the run stops here"
            )
            with pytest.raises(ReplicaLost, match="^" + message):  # and so every later step
                step(new, x, x, state, 1.0, 1.0)
        finally:
            step.close()
        assert time.monotonic() - start < 60
        assert all(_state(pid) is None for pid in workers), "a worker outlived the run"


def test_a_worker_does_not_outlive_its_rank_0() -> None:
    """Rank 0 killed: its workers exit by themselves, within seconds, whatever their collective
    is waiting for."""
    pytest.importorskip("rosetta_rnn.backends.torch")
    script = (
        "import time\n"
        "from rosetta_rnn.backends import torch as tb\n"
        "step = tb.make_replicated_step(tb.make_ops('float64'), 3)\n"
        "print(*step.worker_pids, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    rank0 = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert rank0.stdout is not None
        workers = [int(pid) for pid in rank0.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        rank0.kill()
        rank0.wait()
    deadline = time.monotonic() + 30
    while any(_state(pid) not in ("Z", None) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its rank 0"
        time.sleep(0.05)


class _Work:
    """A collective in flight that never completes (NCCL's wait on a peer that is gone)."""

    def __init__(self) -> None:
        self.polls = 0

    def is_completed(self) -> bool:
        self.polls += 1
        return False

    def wait(self) -> None:  # pragma: no cover - reached only if the poll loop were wrong
        raise AssertionError("waited on a collective that cannot complete")


def test_a_collective_polled_while_a_worker_is_gone_stops_at_once() -> None:
    """NCCL's path: rank 0 polls the collective and the workers; one gone is ChannelFailed at
    once, not a wait for the group's timeout. A collective that completes is waited for."""
    pytest.importorskip("torch")
    from rosetta_rnn.backends import _torch_distributed as td

    work = _Work()
    with pytest.raises(td.ChannelFailed, match=r"^all-reduce failed \(a process of the group"):
        td.wait_polling(work, lambda: work.polls >= 3, "all-reduce")
    assert work.polls == 3

    class Done:
        waited = False

        def is_completed(self) -> bool:
            return True

        def wait(self) -> None:
            Done.waited = True

    td.wait_polling(Done(), lambda: False, "gather")
    assert Done.waited


def test_gloos_error_becomes_a_short_reason() -> None:
    pytest.importorskip("torch")
    from rosetta_rnn.backends._torch_distributed import _first_line

    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
        "[127.0.0.1]:46241: Connection reset by peer. This is typically caused by a remote "
        "worker hanging or bugs in the application. Check the logs of the remote worker."
    )
    assert _first_line(gloo) == "Read error [127.0.0.1]:46241: Connection reset by peer"


def _cli_process(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, "-m", "rosetta_rnn", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.usefixtures("cpu_load")
def test_train_whose_worker_is_killed_mid_run_keeps_its_checkpoint(
    tmp_path: Path, timemachine: Path
) -> None:
    """``train --replicas 2 --checkpoint --save-every 1`` under load, its worker killed once a
    checkpoint is written: one line naming the replica and saying the checkpoint is kept, exit
    2, no worker left, and the checkpoint whole (it loads, at an epoch the run finished)."""
    pytest.importorskip("torch")
    ckpt = tmp_path / "run.safetensors"
    run = _cli_process(
        "train", "--corpus", str(timemachine), "--backend", "torch", "--replicas", "2",
        "--epochs", "200", "--num-hiddens", "24", "--max-tokens", "3000",
        "--checkpoint", str(ckpt), "--save-every", "1",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not ckpt.is_file():
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        (worker,) = _children(run.pid)
        _kill_and_wait_until_dead(worker)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 2, err[-3000:]
    one_line_error(err, "replica 1's process exited with code -9 during a step")
    assert err.rstrip().endswith(f"the run stops here; the last good checkpoint {ckpt} is kept")
    assert _state(worker) is None
    tensors, meta = checkpoint.load_model(ckpt)
    assert 1 <= meta["epoch"] < 200 and meta["replicas"] == 2
    assert set(tensors) >= {"W_xh", "W_hh", "b_h", "W_hq", "b_q"}


def test_jax_replicas_device_failure_is_one_line() -> None:
    """JAX's replicas are devices of one process: no replica is lost alone. A failure of the
    runtime running the step (here a callback inside the compiled program that fails, as a
    device out of memory would) is one line, raised from the step, not later."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from rosetta_rnn.backends import jax as jax_backend

    ops = jax_backend.make_ops("float32")
    step = jax_backend.make_replicated_step(ops, 1)

    def lost(_: object) -> object:
        raise MemoryError("RESOURCE_EXHAUSTED: device out of memory")

    @jax.jit
    def failing(*args: object) -> object:
        return jax.pure_callback(lost, jax.ShapeDtypeStruct((), jnp.float32), args[-1])

    step._step = failing
    params = model.to_backend(ops, model.init_params(5, 4, np.random.default_rng(0), "float32"))
    x = ops.asarray(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ReplicaLost, match=r"^the replicated step failed on jax.shard_map .*"):
        step(params, x, x, ops.zeros((2, 4)), 1.0, 1.0)


def test_tensorflow_replicas_device_failure_is_one_line() -> None:
    """TensorFlow's replicas are devices of one process. The runtime's errors that say a device
    failed are one line; an argument error (a bug) passes as it is."""
    tf = pytest.importorskip("tensorflow")
    from rosetta_rnn.backends import tensorflow as tf_backend

    ops = tf_backend.make_ops("float32")
    step = tf_backend.make_replicated_step(ops, 1)
    params = model.to_backend(ops, model.init_params(5, 4, np.random.default_rng(0), "float32"))
    x = ops.asarray(np.zeros((3, 2), dtype=np.int64))

    def raising(error: Exception) -> object:
        def run(*_: object) -> object:
            raise error

        return run

    step._step = raising(tf.errors.ResourceExhaustedError(None, None, "OOM on /GPU:1\nmore"))
    with pytest.raises(ReplicaLost, match=r"failed on tf.distribute.* \(OOM on /GPU:1\); the run"):
        step(params, x, x, ops.zeros((2, 4)), 1.0, 1.0)
    step._step = raising(tf.errors.InvalidArgumentError(None, None, "shapes differ"))
    with pytest.raises(tf.errors.InvalidArgumentError):
        step(params, x, x, ops.zeros((2, 4)), 1.0, 1.0)

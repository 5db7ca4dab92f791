"""Data-parallel training on ``torch.distributed``: N processes, one replica each, gloo on CPU
(NCCL on CUDA, one GPU per replica).

The process that trains is rank 0: it runs the trainer, draws every minibatch from core's one
generator and hands each worker its shard (``scatter``); workers 1..N-1 are processes it starts
(``backends.torch.serve_replica``) that hold a copy of the parameters and answer its commands.
Every rank runs core's forward and backward on its shard, one ``all_reduce`` sums the loss and
all gradients in a single buffer (then divided by N), and every rank clips and updates its own
copy the same way. Only rank 0 sees the user, the checkpoints and the signals, so a Ctrl-C or
an error stops the run in one place.

When a process dies, whichever side notices first, the run stops with one line naming the
replica. Every collective and the command channel (the header broadcast, the parameter
broadcasts, scatter, gather, all-reduce) go through one place on each side. A worker whose
collective fails exits quietly with ``PEER_LOST``; one whose rank 0 is gone exits too (it
watches its parent, so it never outlives the run). Rank 0, when a collective fails, waits for
the process that exited (a killed process's sockets close, and fail the others' collectives,
before it can be reaped: milliseconds on an idle machine, seconds on a loaded one), names the
replica that exited with another code than ``PEER_LOST``, and stops the rest. gloo fails a
collective at once when a peer's connection closes; NCCL does not (a kernel waits on a peer
that is gone), so on CUDA rank 0 polls each collective and the workers' processes together,
and aborts the group when a worker has exited.

An explicit all-reduce rather than ``DistributedDataParallel``: DDP hooks into autograd on an
``nn.Module``'s parameters and reduces during ``backward``; core's hand-written BPTT is not an
autograd graph, and core's parameters are a dict of tensors, not a module. The explicit
collective works for both ``--grad`` engines and keeps visible that clipping comes after it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from rosetta_rnn.core import replicas as core_replicas
from rosetta_rnn.core.errors import BackendUnavailable, ReplicaLost, first_line
from rosetta_rnn.core.model import Params, param_names

STOP, STEP, VALUE_AND_GRAD = 0, 1, 2
HEADER = 9  # command, T, B, loss steps, lr, θ, new params?, new state?, LSTM?
TIMEOUT = datetime.timedelta(days=1)
"""How long a rank waits on the others in one collective. A worker waits for rank 0's next
command as long as rank 0 lives (a benchmark may pause for minutes between steps); a process
that dies closes its gloo connections, which fails the others' waits at once. A worker that
dies before the group forms is caught by ``_await_workers``, not by this."""
READY_S = 300.0
"""How long rank 0 waits for a worker to start (import torch, build its ops) before it gives
up; a worker that exits first is reported at once."""
LOST_S = 30.0
"""After a collective fails, how long rank 0 waits to see which worker exited before it says
the collective failed with no worker gone."""
PEER_LOST = 75
"""A worker's exit code when its own collective failed or its rank 0 is gone: another process
went first, so rank 0 names the replica that exited with another code, not this one."""
PARENT_POLL_S = 1.0
"""How often a worker checks that its rank 0 still lives."""
POLL_S = 0.0005
"""How often a CUDA collective's waiter looks at it and at the other side while it waits."""


class ChannelFailed(Exception):
    """A collective or the command channel between the replicas failed (what it was, in
    words); ``TorchReplicas`` turns it into one ``ReplicaLost`` line."""


def _group_backend(device: str) -> str:
    return "gloo" if device == "cpu" else "nccl"


class TorchReplicas:
    """A ``core.replicas.ReplicatedStep`` on N torch processes; this process is rank 0."""

    def __init__(
        self,
        ops: Any,
        value_and_grad: Any,
        replicas: int,
        threads: int,
        worker_main: str,
        worker_args: list[str],
    ) -> None:
        """``threads``: torch's threads in this process while it runs a step (as many as each
        worker has). ``worker_main`` is the Python code a worker runs (``python -c``) with its rank,
        ``replicas``, the rendezvous address and then ``worker_args`` as ``sys.argv[1:]``; it
        builds the worker's ops and calls ``serve``."""
        if not dist.is_available():
            raise BackendUnavailable(
                f"PyTorch {torch.__version__} was built without torch.distributed; "
                "--replicas needs it"
            )
        if dist.is_initialized():
            raise BackendUnavailable(
                "this process already has a torch.distributed process group; one replicated "
                "run at a time"
            )
        if ops.device != "cpu":
            count = torch.cuda.device_count()
            if ops.device != "gpu:0" or replicas > count:
                raise BackendUnavailable(
                    f"--replicas {replicas} on CUDA needs one GPU per replica, gpu:0 .. "
                    f"gpu:{replicas - 1}; PyTorch sees {count}"
                )
        self.replicas = replicas
        self.ops = ops
        self.engine = (
            f"torch.distributed {_group_backend(ops.device)}, {replicas} processes, "
            "explicit all_reduce"
        )
        self.collective_seconds = 0.0
        self._lost: ReplicaLost | None = None  # set once a replica is lost; the run is over
        self._value_and_grad = value_and_grad
        self._threads = threads
        self._params: Params | None = None
        self._state: Any = None  # the whole state last returned (what the trainer passes back)
        self._local_state: Any = None  # this rank's rows of it
        self._dir = tempfile.mkdtemp(prefix="rosetta-rnn-dist-")
        init = f"file://{os.path.join(self._dir, 'rendezvous')}"
        self._workers: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(1, replicas):
                argv = [str(rank), str(replicas), init, *worker_args]
                self._workers.append(
                    subprocess.Popen([sys.executable, "-c", worker_main, *argv], env=_env())
                )
            _await_workers(self._workers, init)
            _use_gpu(ops)
            dist.init_process_group(
                _group_backend(ops.device),
                init_method=init,
                rank=0,
                world_size=replicas,
                timeout=TIMEOUT,
            )
        except BaseException:
            self._stop_workers(kill=True)  # the others cannot form a group without this one
            raise
        self.worker_pids = tuple(w.pid for w in self._workers)
        self._closed = False

    # -- what the trainer calls -------------------------------------------------------------
    def __call__(
        self, params: Params, inputs: Any, labels: Any, state: Any, lr: float, theta: float
    ) -> tuple[Params, Any, Any, Any]:
        with self._stops_on_a_lost_replica():
            local = self._send(STEP, params, inputs, labels, state, lr, theta)
            with torch.no_grad(), _threads(self._threads):
                new, H_T, loss, norm = core_replicas.replica_train_step(
                    self.ops, self._value_and_grad, self._all_mean, params, *local, lr, theta
                )
            self._params, self._local_state = new, _detached(H_T)
            self._state = self._gather(self._local_state)
        return new, self._state, loss, norm

    def value_and_grad(
        self, params: Params, inputs: Any, labels: Any, state: Any
    ) -> tuple[Any, Params, Any]:
        with self._stops_on_a_lost_replica():
            local = self._send(VALUE_AND_GRAD, params, inputs, labels, state, 0.0, 0.0)
            with torch.no_grad(), _threads(self._threads):
                loss, grads, H_T = core_replicas.replica_value_and_grad(
                    self._value_and_grad, self._all_mean, params, *local
                )
            whole = self._gather(_detached(H_T))
        return loss, grads, whole

    @contextlib.contextmanager
    def _stops_on_a_lost_replica(self) -> Iterator[None]:
        """A failed collective, or a worker seen gone, is one ``ReplicaLost`` line (which
        replica, its exit code), the workers stopped; any other error passes as it is."""
        if self._lost is not None:
            raise self._lost  # the group is broken; every later step is the same error
        try:
            yield
        except ChannelFailed as e:
            self._lost = self._diagnose(str(e))
            raise self._lost from None

    def _diagnose(self, failure: str) -> ReplicaLost:
        """The replica whose process exited, waited for (up to ``LOST_S``), and the workers
        stopped. A worker that exited with ``PEER_LOST`` saw the failure, it did not cause it."""
        deadline = time.monotonic() + LOST_S
        while True:
            codes = {rank: w.poll() for rank, w in enumerate(self._workers, start=1)}
            causes = {r: c for r, c in codes.items() if c is not None and c != PEER_LOST}
            if causes or None not in codes.values() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._abort()
        self._stop_workers(kill=True)
        if causes:
            rank = min(causes)
            return ReplicaLost(
                f"replica {rank}'s process exited with code {causes[rank]} during a step; "
                "the run stops here"
            )
        gone = [r for r, c in codes.items() if c is not None]
        who = (
            f"replicas {', '.join(map(str, gone))} lost their peers"
            if gone
            else "no replica's process exited"
        )
        return ReplicaLost(f"the replicas' {failure} ({who}); the run stops here")

    def _abort(self) -> None:
        """Free a group whose collectives cannot complete: NCCL's kernels would wait on a peer
        that is gone. gloo's failed collective has returned already; its group is destroyed in
        ``close``."""
        if self.ops.device == "cpu" or not dist.is_initialized():
            return
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            if self._lost is None:
                stop = torch.zeros(HEADER, dtype=torch.float64, device=self.ops._device)
                self._collective("stop", dist.broadcast, stop, 0)
        except ChannelFailed:
            # a worker is gone and the group with it: the workers are stopped below, and an
            # error that broke the run is the one the caller sees, not this one
            self._lost = self._diagnose("stop")
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            self._stop_workers(kill=self._lost is not None)

    def _collective(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        """One collective of rank 0; its failure, or a worker gone while NCCL waits, is
        ``ChannelFailed``."""
        _collective(what, call, *args, watch=self._workers_gone, **kwargs)

    def _workers_gone(self) -> bool:
        return any(w.poll() is not None for w in self._workers)

    # -- rank 0's side of the protocol ------------------------------------------------------
    def _send(
        self,
        command: int,
        params: Params,
        inputs: Any,
        labels: Any,
        state: Any,
        lr: float,
        theta: float,
    ) -> tuple[Any, Any, Any]:
        """Tell the workers what to do and hand them their shards; this rank's shards."""
        new_params = params is not self._params
        new_state = state is not self._state
        T, B = (int(n) for n in inputs.shape)
        header = [
            command,
            T,
            B,
            int(labels.shape[0]),
            lr,
            theta,
            new_params,
            new_state,
            isinstance(state, tuple),
        ]
        header_t = torch.tensor(header, dtype=torch.float64, device=self.ops._device)
        self._collective("command broadcast", dist.broadcast, header_t, 0)
        if new_params:  # the first step, or parameters the trainer set (a resume)
            shapes = {name: tuple(params[name].shape) for name in param_names(params)}
            self._collective("parameter broadcast", dist.broadcast_object_list, [shapes], src=0)
            for name in shapes:
                self._collective(
                    "parameter broadcast", dist.broadcast, params[name].contiguous(), 0
                )
            self._params = params
        x = self._scatter(inputs, axis=1)
        y = self._scatter(labels, axis=1)
        if new_state:  # fresh zeros, or a state restored from a checkpoint
            parts = state if isinstance(state, tuple) else (state,)
            local = tuple(self._scatter(s, axis=0) for s in parts)
            self._local_state = local if isinstance(state, tuple) else local[0]
            self._state = state
        return x, y, self._local_state

    def _scatter(self, x: Any, axis: int) -> Any:
        chunks = [c.contiguous() for c in torch.chunk(x, self.replicas, dim=axis)]
        out = torch.empty_like(chunks[0])
        self._collective("scatter", dist.scatter, out, chunks, src=0)
        return out

    def _gather(self, state: Any) -> Any:
        """The whole state from every replica's rows, in replica order."""
        parts = state if isinstance(state, tuple) else (state,)
        whole = []
        for part in parts:
            rows = [torch.empty_like(part) for _ in range(self.replicas)]
            self._collective("gather", dist.gather, part.contiguous(), rows, dst=0)
            whole.append(torch.cat(rows, dim=0))
        return tuple(whole) if isinstance(state, tuple) else whole[0]

    def _all_mean(self, tensors: list[Any]) -> list[Any]:
        start = time.perf_counter()
        out = _all_mean(tensors, self.replicas, self._workers_gone)
        self.collective_seconds += time.perf_counter() - start
        return out

    def _stop_workers(self, kill: bool = False) -> None:
        for w in self._workers:
            if kill and w.poll() is None:
                w.kill()
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the group may be gone already
            pass


def _all_mean(tensors: list[Any], replicas: int, watch: Any) -> list[Any]:
    """One all_reduce over a flat buffer of every tensor: SUM, then / N on this side, so the
    arithmetic is the same whichever collective library (gloo, NCCL) does the sum."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    # waited for to the end (NCCL's returns before the sum is done): its time is the collective's
    _collective("all-reduce", dist.all_reduce, flat, op=dist.ReduceOp.SUM, watch=watch)
    flat = flat / replicas
    out, at = [], 0
    for t in tensors:
        out.append(flat[at : at + t.numel()].reshape(t.shape))
        at += t.numel()
    return out


def _collective(what: str, call: Any, *args: Any, watch: Any, **kwargs: Any) -> None:
    """``call(*args, **kwargs)``, a ``torch.distributed`` collective, waited for to its end; its
    failure is ``ChannelFailed``. ``watch()`` says whether the other side is gone (a worker, for
    rank 0; rank 0, for a worker).

    gloo fails a collective as soon as a peer's connection closes, so it waits in the call. A
    CUDA collective (NCCL) is waited for by polling, with ``watch`` between polls: NCCL would
    wait on a peer that is gone for as long as the group's timeout."""
    try:
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if tensor is None or not tensor.is_cuda:
            call(*args, **kwargs)
            return
        work = call(*args, async_op=True, **kwargs)
        wait_polling(work, watch, what)
    except RuntimeError as e:
        raise ChannelFailed(f"{what} failed ({_first_line(e)})") from e


def wait_polling(work: Any, watch: Any, what: str) -> None:
    """Wait for an asynchronous collective ``work`` to complete, asking ``watch()`` between
    polls; a side gone is ``ChannelFailed`` at once, not a wait on it."""
    while not work.is_completed():
        if watch():
            raise ChannelFailed(f"{what} failed (a process of the group exited during it)")
        time.sleep(POLL_S)
    work.wait()  # raises the collective's own error, if it failed


def _first_line(error: BaseException) -> str:
    """The first line of a collective library's error, without gloo's source location."""
    line = first_line(error)
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". This is typically", 1)[0].rstrip(".")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for a while (a few microseconds each way)."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def _ready_file(init: str, rank: int) -> str:
    return f"{init.removeprefix('file://')}.ready{rank}"


def _await_workers(workers: list[subprocess.Popen[bytes]], init: str) -> None:
    """Wait until every worker has started and is about to join the group; a worker that
    exits first (an import error, no GPU of its own) is a one-line error now, not a rank 0
    left waiting for a group that cannot form."""
    deadline = time.monotonic() + READY_S
    waiting = dict(enumerate(workers, start=1))
    while waiting:
        for rank, worker in list(waiting.items()):
            if os.path.exists(_ready_file(init, rank)):
                del waiting[rank]
            elif worker.poll() is not None:
                raise BackendUnavailable(
                    f"replica {rank}'s process exited with code {worker.returncode} before "
                    "it joined (its error is above)"
                )
        if waiting and time.monotonic() > deadline:
            raise BackendUnavailable(
                f"replica {min(waiting)}'s process did not start within {READY_S:.0f} s"
            )
        time.sleep(0.01)


def _detached(state: Any) -> Any:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _env() -> dict[str, str]:
    """The workers' environment: this one, with this process's import path first, so that
    a worker imports the same rosetta_rnn (a checkout, an editable install, a test's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _use_gpu(ops: Any) -> None:
    """NCCL's collectives (and its object broadcast) run on the process's current CUDA device:
    make it the replica's GPU. Every tensor a collective sees lives on ``ops``' device, the
    command headers included (NCCL takes no host tensors)."""
    if ops._device.type == "cuda":
        torch.cuda.set_device(ops._device)


def replica_device(device: str, rank: int) -> str:
    """Replica ``rank``'s device: the CPU, or GPU ``rank`` (NCCL needs one GPU per process)."""
    return "cpu" if device == "cpu" else f"gpu:{rank}"


def serve(ops: Any, value_and_grad: Any, rank: int, replicas: int, init: str) -> None:
    """Replica ``rank`` (1..N-1): answer rank 0's commands until it says stop. Ctrl-C reaches
    every process of the terminal's group; rank 0 alone acts on it (after a whole step). A
    failed collective, or rank 0 gone, ends this process with ``PEER_LOST`` and no message:
    rank 0 says what happened, in one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def rank0_gone() -> bool:
        return os.getppid() != parent

    def watch_rank0() -> None:
        while not rank0_gone():
            time.sleep(PARENT_POLL_S)
        os._exit(PEER_LOST)  # a collective may be waiting on it for as long as TIMEOUT

    threading.Thread(target=watch_rank0, daemon=True).start()
    _use_gpu(ops)
    with open(_ready_file(init, rank), "w"):
        pass
    dist.init_process_group(
        _group_backend(ops.device),
        init_method=init,
        rank=rank,
        world_size=replicas,
        timeout=TIMEOUT,
    )
    try:
        _serve(ops, value_and_grad, replicas, rank0_gone)
    except ChannelFailed:
        sys.stdout.flush()
        os._exit(PEER_LOST)  # not destroy_process_group: NCCL's would wait on the lost peer
    dist.destroy_process_group()


def _serve(ops: Any, value_and_grad: Any, replicas: int, rank0_gone: Any) -> None:
    """The worker's loop: one command from rank 0 at a time, until it says stop."""
    params: Params = {}
    local_state: Any = None

    def collective(what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        _collective(what, call, *args, watch=rank0_gone, **kwargs)

    def all_mean(tensors: list[Any]) -> list[Any]:
        return _all_mean(tensors, replicas, rank0_gone)

    def receive(shape: tuple[int, ...], dtype_: Any) -> Any:
        out = torch.empty(shape, dtype=dtype_, device=ops._device)
        collective("scatter", dist.scatter, out, None, src=0)
        return out

    while True:
        header = torch.zeros(HEADER, dtype=torch.float64, device=ops._device)
        collective("command broadcast", dist.broadcast, header, 0)
        command, T, B, w, lr, theta, new_params, new_state, lstm = header.tolist()
        if int(command) == STOP:
            return
        if new_params:
            shapes: list[Any] = [None]
            collective("parameter broadcast", dist.broadcast_object_list, shapes, src=0)
            params = {name: ops.zeros(shape) for name, shape in shapes[0].items()}
            for name in params:
                collective("parameter broadcast", dist.broadcast, params[name], 0)
        b = int(B) // replicas
        x = receive((int(T), b), torch.int64)
        y = receive((int(w), b), torch.int64)
        if new_state:
            parts = tuple(
                receive((b, int(params["W_hq"].shape[0])), ops._dtype)
                for _ in range(2 if lstm else 1)
            )
            local_state = parts if lstm else parts[0]
        with torch.no_grad():
            if int(command) == STEP:
                params, H_T, _, _ = core_replicas.replica_train_step(
                    ops, value_and_grad, all_mean, params, x, y, local_state, lr, theta
                )
                local_state = _detached(H_T)
            else:
                _, _, H_T = core_replicas.replica_value_and_grad(
                    value_and_grad, all_mean, params, x, y, local_state
                )
        for part in H_T if isinstance(H_T, tuple) else (H_T,):
            collective("gather", dist.gather, part.contiguous(), None, dst=0)

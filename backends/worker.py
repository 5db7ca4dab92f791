"""A worker: rosetta-rnn's code run by another Python environment's interpreter, answering
requests from the main process over ``backends.wire`` (stdin in, a private copy of stdout out).

The main process starts it with ``Worker(python, handlers)``: the interpreter runs
``BOOTSTRAP``, which makes the main environment's ``rosetta_rnn`` folders importable (nothing
is installed into the worker's environment but its framework), moves file descriptor 1 to
stderr (a library's prints cannot corrupt the channel), and serves the ``HANDLERS`` of the
module named ``handlers``: each request ``{"op", "args", "kwargs"}`` is answered with
``{"ok": result}`` or ``{"error": one line, "kind": the exception's class}``. The first message
is ``{"ready": what the handlers' ``describe()`` says}``.

This is how a backend or a verify subject whose framework cannot share the main environment
(MXNet needs NumPy 1.23; JAX and TensorFlow need 2.x) runs: its computation stays in its own
process and only arrays cross.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Mapping
from typing import IO, Any

from rosetta_rnn.backends import wire
from rosetta_rnn.core.errors import BackendUnavailable, UserError, first_line

BOOTSTRAP = """
import json, os, sys, types
paths, handlers = json.loads(sys.argv[1]), sys.argv[2]
package = types.ModuleType("rosetta_rnn")
package.__path__ = paths
sys.modules["rosetta_rnn"] = package
channel = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
sys.stdout = sys.stderr
from rosetta_rnn.backends import worker
worker.serve(handlers, sys.stdin.buffer, channel)
"""
"""What the worker's interpreter runs: ``python -P -c BOOTSTRAP PATHS HANDLERS`` (``-P``: the
current folder is not searched first, so nothing there shadows the environment's modules)."""
SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()
"""``-P`` where Python has it (3.11+): the interpreter does not search the current folder first.
An environment's interpreter is this one's version."""
_NOISE = ("Traceback (most recent call last)", "File ", "[bt]", "Stack trace")


def one_line(error: BaseException) -> str:
    """The line that says what went wrong: the first of the message, or where the message is
    a framework's traceback (MXNet's), its last line that is not a frame."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith(_NOISE[0]):
        told = [ln for ln in lines if not ln.startswith(_NOISE)]
        return told[-1] if told else lines[-1]
    return first_line(error).strip()


class RemoteError(UserError):
    """A request the worker could not answer: its one line, and the kind of error it was."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def package_paths() -> list[str]:
    """The folders ``rosetta_rnn``'s subpackages live in, in this environment: the package's
    own folder, and the project folder where an editable install maps ``core``, ``backends``
    ... beside it."""
    import rosetta_rnn
    from rosetta_rnn.core import errors

    paths = list(rosetta_rnn.__path__)
    # this module is in backends/, errors in core/: the folders that hold those two
    for module in (errors.__file__, __file__):
        parent = os.path.dirname(os.path.dirname(os.path.abspath(module)))
        if parent not in paths:
            paths.append(parent)
    return paths


def serve(handlers: str, requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker's loop: answer each request with its handler, until ``close`` or the end of
    the requests."""
    module = importlib.import_module(handlers)
    table: Mapping[str, Callable[..., Any]] = module.HANDLERS
    wire.write(answers, {"ready": module.describe()})
    while True:
        try:
            request = wire.read(requests)
        except wire.WireError:
            return  # the main process went away
        op = request.get("op")
        if op == "close":
            wire.write(answers, {"ok": None})
            return
        try:
            if op not in table:
                raise UserError(f"the worker has no request {op!r}; it has {', '.join(table)}")
            result = table[op](*request.get("args", ()), **request.get("kwargs", {}))
            message = wire.encode({"ok": result})
        except wire.WireError as e:
            message = wire.encode({"error": f"the answer to {op!r} cannot be sent: {e}"})
        except Exception as e:  # every failure is an answer: the main process decides
            message = wire.encode({"error": one_line(e), "kind": type(e).__name__})
        answers.write(message)
        answers.flush()


class Worker:
    """A worker process in another environment: ``call(op, *args)`` sends a request and
    returns its answer. One request at a time; ``close()`` (or leaving a ``with`` block) ends
    it, and so does the main process ending."""

    def __init__(
        self,
        python: str,
        handlers: str,
        *,
        name: str = "worker",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._closed = False
        self._stderr = tempfile.TemporaryFile()
        argv = [python, *SAFE_PATH, "-X", "faulthandler", "-c", BOOTSTRAP]
        argv += [json.dumps(package_paths()), handlers]
        # this environment's PYTHONPATH would put its packages before the worker's own
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env={**inherited, **(env or {})},
            )
        except OSError as e:
            self._stderr.close()
            raise BackendUnavailable(f"the {name} worker cannot start: {e}") from None
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)
        try:
            self.ready = self._answer("start")["ready"]
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        """The worker's process id (a benchmark counts its CPU time as the run's own)."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the worker can still answer: not closed, its process running."""
        return not self._closed and self._proc.poll() is None

    def _died(self, during: str) -> BackendUnavailable:
        """The one line for a worker that is gone: its exit code and its last stderr line."""
        if self._closed:
            return BackendUnavailable(f"the {self.name} worker is closed; it cannot do {during}")
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - 4096))  # the tail says how it ended
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln]
        last = f": {lines[-1].strip()}" if lines else ""
        return BackendUnavailable(
            f"the {self.name} worker exited with code {code} during {during}{last}"
        )

    def _answer(self, during: str) -> Any:
        assert self._proc.stdout is not None
        try:
            return wire.read(self._proc.stdout)
        except wire.WireError:
            raise self._died(during) from None

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """The answer to ``op(*args, **kwargs)`` in the worker; its failure is a
        ``RemoteError`` with the worker's one line."""
        if self._closed or self._proc.poll() is not None:
            raise self._died(op)
        assert self._proc.stdin is not None
        message = wire.encode({"op": op, "args": list(args), "kwargs": kwargs})
        try:
            self._proc.stdin.write(message)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(op) from None
        answer = self._answer(op)
        if "error" in answer:
            raise RemoteError(f"{self.name}: {answer['error']}", answer.get("kind", "Error"))
        return answer["ok"]

    def close(self) -> None:
        """Ask the worker to end, give it a moment to end by itself, then make sure it has.
        Closing twice is harmless."""
        if self._closed:
            return
        if self._proc.poll() is None:
            try:
                self.call("close")
                self._proc.wait(timeout=5)
            except (BackendUnavailable, RemoteError, subprocess.TimeoutExpired):
                pass
        self._closed = True
        self._finalizer()
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    """End the worker's process (at ``close``, or when the ``Worker`` or this process goes)."""
    stderr.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:  # a request the dead worker never read: nothing to flush it to
                pass

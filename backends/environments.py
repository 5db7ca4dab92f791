"""Python environments of their own, for frameworks that cannot share the main one.

MXNet 1.9.1, the last release, needs NumPy 1.23 (it uses names NumPy 1.24 removed), while JAX
and TensorFlow here need NumPy 2. Such a framework gets a virtual environment that
``rosetta-rnn backends --setup NAME`` creates on request, with this interpreter's Python and
exactly its ``requirements`` from the package registry; rosetta-rnn's own code is not
installed there, the worker imports it from this environment (``backends.worker``). The
environments live in ``$ROSETTA_RNN_ENVS``, else ``~/.cache/rosetta-rnn/envs``.

An environment is made in a ``NAME.partial`` folder and renamed into place only once every
requirement is installed and imports, so a failed or interrupted setup leaves no environment
that looks ready; a ``ready.json`` inside records what it holds, and a changed requirement
makes it out of date.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from rosetta_rnn.backends.worker import Worker
from rosetta_rnn.core.errors import BackendUnavailable, UserError


class Environment(NamedTuple):
    """A framework's own environment: what to install, and the module its worker serves."""

    name: str
    framework: str  # in words
    requirements: tuple[str, ...]  # pip requirements, exact
    imports: tuple[str, ...]  # modules that must import once it is set up
    handlers: str  # the worker's module (``backends.worker.serve``)


ENVIRONMENTS: dict[str, Environment] = {
    "mxnet": Environment(
        "mxnet",
        "MXNet 1.9.1 (its last release) with NumPy 1.23",
        ("mxnet==1.9.1", "numpy==1.23.5"),
        ("mxnet",),
        "rosetta_rnn.backends.mxnet_worker",
    ),
}


def root() -> Path:
    """Where the environments are: ``$ROSETTA_RNN_ENVS``, else ``~/.cache/rosetta-rnn/envs``."""
    given = os.environ.get("ROSETTA_RNN_ENVS")
    return Path(given) if given else Path.home() / ".cache" / "rosetta-rnn" / "envs"


def get(name: str) -> Environment:
    if name not in ENVIRONMENTS:
        known = ", ".join(ENVIRONMENTS)
        raise UserError(f"no environment {name!r}; rosetta-rnn can set up: {known}")
    return ENVIRONMENTS[name]


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _record(env: Environment) -> dict[str, object]:
    """What ``ready.json`` holds: the requirements and the interpreter it was made with."""
    return {"requirements": list(env.requirements), "python": sys.version.split()[0]}


def status(name: str) -> str:
    """``ready``, ``missing`` or ``out of date`` (set up for other requirements or another
    Python)."""
    env, folder = get(name), root() / name
    marker = folder / "ready.json"
    if not marker.is_file() or not _python(folder).exists():
        return "missing"
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "out of date"
    return "ready" if recorded == _record(env) else "out of date"


def python(name: str) -> Path:
    """The interpreter of a ready environment; otherwise a one-line error that says how to
    set it up."""
    state = status(name)
    if state != "ready":
        raise BackendUnavailable(
            f"the {name} environment is {state}; set it up with: rosetta-rnn backends --setup "
            f"{name}"
        )
    return _python(root() / name)


def start(name: str) -> Worker:
    """A worker in the environment, serving its handlers."""
    env = get(name)
    return Worker(str(python(name)), env.handlers, name=name)


def setup(name: str, say: Callable[[str], None] = print) -> float:
    """Create (or re-create) the environment; returns the seconds it took. A failure is a
    one-line ``UserError`` and leaves the previous environment, if any, as it was."""
    env = get(name)
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    final, partial = base / name, base / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    steps = [
        ([sys.executable, "-m", "venv", str(partial)], "create the virtual environment"),
        (
            [str(_python(partial)), "-m", "pip", "install", "--quiet", *env.requirements],
            f"install {' '.join(env.requirements)}",
        ),
        (
            [str(_python(partial)), "-c", "; ".join(f"import {m}" for m in env.imports)],
            f"import {', '.join(env.imports)}",
        ),
    ]
    try:
        for argv, what in steps:
            say(f"{name}: {what}")
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
                last = lines[-1].strip() if lines else f"exit code {done.returncode}"
                raise UserError(f"setting up {name} failed to {what}: {last}")
        (partial / "ready.json").write_text(json.dumps(_record(env)))
        # a venv's scripts name their folder, but its interpreter finds its packages from
        # where it is: the worker runs it by path, so the folder can move into place
        old = base / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return time.perf_counter() - t0

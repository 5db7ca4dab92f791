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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from rosetta_rnn.backends.worker import SAFE_PATH, Worker
from rosetta_rnn.core.errors import BackendUnavailable, UserError


class Environment(NamedTuple):
    """A framework's own environment: what to install, and the module its worker serves."""

    name: str
    framework: str  # in words
    requirements: tuple[str, ...]  # pip requirements, exact
    imports: tuple[str, ...]  # modules that must import once it is set up
    handlers: str  # the worker's module (``backends.worker.serve``)
    newest_python: tuple[int, int] | None = None  # the newest Python its wheels are built for


ENVIRONMENTS: dict[str, Environment] = {
    "mxnet": Environment(
        "mxnet",
        "MXNet 1.9.1, its last release, with NumPy 1.23",
        ("mxnet==1.9.1", "numpy==1.23.5"),
        ("mxnet",),
        "rosetta_rnn.backends.mxnet_worker",
        (3, 11),  # NumPy 1.23.5's wheels stop at CPython 3.11
    ),
}


def root() -> Path:
    """Where the environments are: ``$ROSETTA_RNN_ENVS``, else ``~/.cache/rosetta-rnn/envs``."""
    given = os.environ.get("ROSETTA_RNN_ENVS")
    if given:
        return Path(given)
    try:
        return Path.home() / ".cache" / "rosetta-rnn" / "envs"
    except RuntimeError:  # no home folder to find
        raise UserError("no home folder for the environments; set $ROSETTA_RNN_ENVS") from None


def get(name: str) -> Environment:
    if name not in ENVIRONMENTS:
        known = ", ".join(ENVIRONMENTS)
        raise UserError(f"no environment {name!r}; rosetta-rnn can set up: {known}")
    return ENVIRONMENTS[name]


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _record(env: Environment) -> dict[str, object]:
    """What ``ready.json`` holds: the requirements and the Python (major.minor) it was made
    with."""
    return {"requirements": list(env.requirements), "python": _version(tuple(sys.version_info[:2]))}


def _version(v: tuple[int, ...]) -> str:
    return f"{v[0]}.{v[1]}"


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


def start(name: str, env: Mapping[str, str] | None = None) -> Worker:
    """A worker in the environment, serving its handlers; ``env``: variables it starts with
    beside this process's (a framework's thread counts)."""
    return Worker(str(python(name)), get(name).handlers, name=name, env=env)


def setup(name: str, say: Callable[[str], None] = print) -> tuple[float, dict[str, object]]:
    """Create (or re-create) the environment and check that its worker starts; returns the
    seconds it took and what the worker says it runs. A failure is a one-line ``UserError``
    and leaves the previous environment, if any, as it was."""
    env = get(name)
    this = _version(tuple(sys.version_info[:2]))
    if env.newest_python and sys.version_info[:2] > env.newest_python:
        raise UserError(
            f"{name}'s environment needs Python {_version(env.newest_python)} or older (its "
            f"requirements have no wheels for newer); this is Python {this}"
        )
    base = root()
    final, partial, old = base / name, base / f"{name}.partial", base / f"{name}.old"
    t0 = time.perf_counter()
    here = str(_python(partial))
    pip = [here, "-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check"]
    imports = "; ".join(f"import {m}" for m in env.imports)
    steps = [
        ([sys.executable, "-m", "venv", str(partial)], "create the virtual environment"),
        (
            [*pip, *env.requirements],
            f"install {' '.join(env.requirements)}",
        ),
        ([here, *SAFE_PATH, "-c", imports], f"import {', '.join(env.imports)}"),
    ]
    try:
        base.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        for argv, what in steps:
            say(f"{name}: {what}")
            done = subprocess.run(
                argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL
            )
            if done.returncode != 0:
                raise UserError(f"setting up {name} failed to {what}: {_why(done)}")
        say(f"{name}: start its worker")
        with Worker(str(_python(partial)), env.handlers, name=name) as worker:
            ready = dict(worker.ready)
        (partial / "ready.json").write_text(json.dumps(_record(env)))
        # a venv's scripts name their folder, but its interpreter finds its packages from
        # where it is: the worker runs it by path, so the folder can move into place
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BackendUnavailable as e:  # the worker did not start
        raise UserError(f"setting up {name} failed to start its worker: {e}") from None
    except OSError as e:
        raise UserError(f"setting up {name} failed in {base}: {e}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not final.exists():  # interrupted between the two renames
            old.rename(final)
    return time.perf_counter() - t0, ready


def _why(done: subprocess.CompletedProcess[str]) -> str:
    """pip's own error line where it printed one, else the last line it printed."""
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return errors[0].removeprefix("ERROR:").strip()
    return lines[-1] if lines else f"exit code {done.returncode}"

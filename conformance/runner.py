"""The matrix: checks × columns (each backend × dtype on the asked device, plus the oracles),
and the device-free cells (``reference/*``, ``bptt-vs-fd``).

``plan`` builds every column before any check runs, so a device or framework that is not
there is known at once (nothing to run at all is an error), and lists every cell as a task, so
the total is known up front; ``execute`` runs the tasks. A column that cannot run is a
``Skip`` with its reason. The matrix fails when a column the user asked for did not run (the
asked device or dtype is not there for it, or a backend named by the user is not installed),
and when a cell ran on another device than its column's: it never passes by running less.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core.errors import BackendUnavailable

from . import reference_checks
from .checks import (
    CHECKS,
    Cell,
    applicable,
    check_bptt_vs_fd,
    check_checkpoint,
    check_interface,
    run_check,
)
from .problems import DEFAULT_PROBLEMS, Problem
from .subjects import BackendSubject, KerasRNNOracle, TorchRNNOracle

ORACLE_CHECKS = ("hidden", "logits", "loss", "grads/autograd")
ORACLES: dict[str, Any] = {"torch": TorchRNNOracle, "tensorflow": KerasRNNOracle}
"""The backend whose framework runs each oracle -> the oracle's class, built as
``(dtype, device label)``; it runs when that backend is in the matrix."""


def column(label: str, dtype: str, device: str) -> str:
    """How a column is named in the table, the skips and the progress: ``torch-float32-gpu:0``
    (the device only when it is not the CPU)."""
    return f"{label}-{dtype}" + ("" if device == "cpu" else f"-{device}")


@dataclass(frozen=True)
class Skip:
    """A column (or a whole backend or oracle) that does not run, and why. ``fails``: the user
    asked for it, so the matrix fails without it."""

    column: str
    reason: str
    fails: bool = False

    def __str__(self) -> str:
        return f"{self.column}: {self.reason}"


@dataclass(frozen=True)
class Task:
    """One cell not yet run. ``device``: the device of its column, where the cell must say it
    ran (None for the device-free cells)."""

    label: str
    run: Callable[[], Cell]
    device: str | None = None


@dataclass
class Plan:
    device: str
    tasks: list[Task]
    skipped: list[Skip]


@dataclass
class Report:
    device: str = "cpu"
    cells: list[Cell] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Why the matrix fails besides its failing cells: what was asked for and did not run,
        or ran somewhere else."""
        missing = [f"{s.column} was skipped: {s.reason}" for s in self.skipped if s.fails]
        return missing + self.misplaced

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells) and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "device": self.device,
            "cells": [c.to_dict() for c in self.cells],
            "skipped": [str(s) for s in self.skipped],
            "problems": self.problems,
        }


def subjects(
    names: Sequence[str], dtypes: Sequence[str], device: str, required: bool = False
) -> tuple[list[BackendSubject], list[Skip]]:
    """A subject per backend × dtype on ``device`` as each framework resolves it, and a Skip
    for each that cannot be built: a framework that is not installed (failing only when
    ``required``: the user named it), a device or a float64 the framework does not have
    (always failing: the user asked for that device)."""
    out: list[BackendSubject] = []
    skipped: list[Skip] = []
    for name in names:
        try:
            module = backends.load(name)
        except BackendUnavailable as e:
            skipped.append(Skip(name, str(e), required))
            continue
        try:
            label = module.resolve_device(device)
        except BackendUnavailable as e:
            skipped.append(Skip(name, str(e), True))
            continue
        for dtype in dtypes:
            where = column(name, dtype, label)
            if dtype == "float64" and not module.supports_float64(label):
                reason = f"{name} has no float64 on {label}; ask for --dtype float32"
                skipped.append(Skip(where, reason, True))
                continue
            try:
                out.append(BackendSubject(module, dtype, label))
            except BackendUnavailable as e:
                skipped.append(Skip(where, str(e), True))
    return out, skipped


def oracles(
    names: Sequence[str], dtypes: Sequence[str], device: str = "cpu", required: bool = False
) -> tuple[list[Any], list[Skip]]:
    """The frameworks' own RNN layers, for each of their backends in ``names``, on ``device``
    as that framework resolves it: torch.nn.RNN on CUDA (cuDNN) for a GPU, Keras SimpleRNN on
    TensorFlow's GPU. One whose framework lacks the device is skipped, failing the matrix."""
    labels: dict[str, str] = {}
    skipped: list[Skip] = []
    for framework, oracle in ORACLES.items():
        if framework not in names:
            continue
        try:
            module = backends.load(framework)
        except BackendUnavailable as e:
            skipped.append(Skip(oracle.label, str(e), required))
            continue
        try:
            labels[framework] = module.resolve_device(device)
        except BackendUnavailable as e:
            skipped.append(Skip(oracle.label, str(e), True))
    found: list[Any] = []
    for dtype in dtypes:
        for framework, label in labels.items():
            try:
                found.append(ORACLES[framework](dtype, label))
            except ImportError as e:
                skipped.append(Skip(column(ORACLES[framework].label, dtype, label), str(e), True))
    return found, skipped


def _nothing_to_run(device: str, skipped: Sequence[Skip]) -> BackendUnavailable:
    """One line: what was asked for, grouped by why it cannot run."""
    why: dict[str, list[str]] = {}
    for s in skipped:
        why.setdefault(s.reason, []).append(s.column)
    reasons = "; ".join(f"{', '.join(cols)}: {reason}" for reason, cols in why.items())
    return BackendUnavailable(f"nothing can run on device {device!r}: {reasons}")


def _worst(cells: Sequence[Callable[[], Cell]]) -> Cell:
    return max((run() for run in cells), key=lambda c: c.max_error)


def plan(
    names: Sequence[str] = backends.BACKENDS,
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str = "cpu",
    problems: Sequence[Problem] = DEFAULT_PROBLEMS,
    with_oracles: bool = True,
    with_reference: bool = True,
    corpus: str | None = None,
    required: bool = False,
) -> Plan:
    """Every cell of the matrix as a task, nothing run yet. With ``with_reference`` also core
    against the independent reference (``corpus``: The Time Machine for the vocabulary checks).
    ``required``: the user named ``names``, so one that is not installed fails the matrix.
    Raises BackendUnavailable when no backend and no oracle can run on ``device``."""
    subs, skipped = subjects(names, dtypes, device, required)
    found: list[Any] = []
    if with_oracles:
        found, more = oracles(names, dtypes, device, required)
        skipped += more
    if not subs and not found:
        raise _nothing_to_run(device, skipped)
    tasks: list[Task] = []
    if with_reference:
        tasks += [Task(name, run) for name, run in reference_checks.tasks(corpus)]
    if "numpy" in names and "float64" in dtypes:
        fd = [functools.partial(check_bptt_vs_fd, p) for p in problems[:2]]
        tasks.append(Task("bptt-vs-fd", functools.partial(_worst, fd)))
    for subject in subs:
        where = column(subject.label, subject.dtype, subject.device)
        tasks.append(
            Task(f"interface {where}", functools.partial(check_interface, subject), subject.device)
        )
        for name in CHECKS:
            if applicable(name, subject):
                run = functools.partial(run_check, name, subject, problems)
                tasks.append(Task(f"{name} {where}", run, subject.device))
        loaders = [s for s in subs if s.dtype == subject.dtype]
        saved = [functools.partial(check_checkpoint, subject, p, loaders) for p in problems]
        tasks.append(Task(f"checkpoint {where}", functools.partial(_worst, saved), subject.device))
    plain = [p for p in problems if p.plain]
    for oracle in found:
        where = column(oracle.label, oracle.dtype, oracle.device)
        for name in ORACLE_CHECKS:
            run = functools.partial(run_check, name, oracle, plain)
            tasks.append(Task(f"{name} {where}", run, oracle.device))
    return Plan(device, tasks, skipped)


def execute(
    planned: Plan,
    on_start: Callable[[Task], None] | None = None,
    on_done: Callable[[Task, Cell], None] | None = None,
) -> Report:
    """Run the tasks in order (``on_start`` and ``on_done`` around each, for a progress
    display); a cell that says it ran elsewhere than its column's device is a problem."""
    report = Report(planned.device, skipped=list(planned.skipped))
    for task in planned.tasks:
        if on_start is not None:
            on_start(task)
        cell = task.run()
        report.cells.append(cell)
        if task.device is not None and cell.device != task.device:
            note = f"{cell.backend}-{cell.dtype} ran on {cell.device}, not on {task.device}"
            if note not in report.misplaced:
                report.misplaced.append(note)
        if on_done is not None:
            on_done(task, cell)
    return report


def run(
    names: Sequence[str] = backends.BACKENDS,
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str = "cpu",
    problems: Sequence[Problem] = DEFAULT_PROBLEMS,
    with_oracles: bool = True,
    with_reference: bool = True,
    corpus: str | None = None,
    required: bool = False,
) -> Report:
    """The matrix, planned and run (see ``plan``)."""
    return execute(
        plan(names, dtypes, device, problems, with_oracles, with_reference, corpus, required)
    )

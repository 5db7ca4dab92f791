"""The matrix: checks × cells × columns (each backend × dtype on the asked device, plus the
oracles), and the device-free cells (``reference/*``, ``bptt-vs-fd``). Every check runs for
every cell asked for (the RNN, both GRU formulations, the LSTM) on the same problems' shapes;
``interface`` and ``sample/ties`` involve no cell and run once per column.

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

from . import onnx_subjects, reference_checks, run_checks
from .checks import (
    CELL_FREE,
    CHECKS,
    REPLICA_CHECKS,
    Cell,
    applicable,
    check_bptt_vs_fd,
    check_checkpoint,
    check_interface,
    run_check,
)
from .problems import CELLS, DEFAULT_PROBLEMS, Problem, cell_label, for_cell
from .subjects import ORACLE_CLASSES, BackendSubject
from .tolerances import REPLICA_COUNTS

ORACLE_CHECKS = ("hidden", "logits", "loss", "grads/autograd")
ORACLES: dict[str, Any] = dict(ORACLE_CLASSES)
"""The backend whose framework runs each oracle -> the oracle's class, built as
``(dtype, device label, cell=cell)`` for each of its ``CELLS`` that was asked for; it runs
when that backend is in the matrix."""


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
    names: Sequence[str],
    dtypes: Sequence[str],
    device: str = "cpu",
    required: bool = False,
    cells: Sequence[str] = CELLS,
) -> tuple[list[Any], list[Skip]]:
    """The frameworks' own recurrent layers for ``cells``, for each of their backends in
    ``names``, on ``device`` as that framework resolves it: torch.nn.RNN/GRU/LSTM on CUDA
    (cuDNN) for a GPU, Keras SimpleRNN/GRU/LSTM on TensorFlow's GPU. One whose framework lacks
    the device is skipped (each layer named once), failing the matrix."""
    where: dict[str, str] = {}
    skipped: list[Skip] = []
    for framework, oracle in ORACLES.items():
        if framework not in names:
            continue
        mine = [c for c in cells if c in oracle.CELLS]
        layers = list(dict.fromkeys(oracle.label_of(c) for c in mine))
        try:
            module = backends.load(framework)
        except BackendUnavailable as e:
            skipped += [Skip(label, str(e), required) for label in layers]
            continue
        try:
            where[framework] = module.resolve_device(device)
        except BackendUnavailable as e:
            skipped += [Skip(label, str(e), True) for label in layers]
    found: list[Any] = []
    for dtype in dtypes:
        for framework, label in where.items():
            oracle = ORACLES[framework]
            for cell in (c for c in cells if c in oracle.CELLS):
                try:
                    found.append(oracle(dtype, label, cell=cell))
                except ImportError as e:
                    skip = Skip(column(oracle.label_of(cell), dtype, label), str(e), True)
                    if skip not in skipped:
                        skipped.append(skip)
    return found, skipped


ONNX = "onnx"
"""The name that asks ``plan`` for the ONNX columns: every cell exported by
``core.onnx_model``, run on ONNX Runtime and on onnx's reference evaluator."""


def onnx_columns(
    dtypes: Sequence[str], device: str, required: bool, cells: Sequence[str] = CELLS
) -> tuple[list[Any], list[Skip]]:
    """A subject per (form, runtime, dtype) that runs (``onnx_subjects.columns``) and cell;
    a Skip for each combination that does not (ONNX Runtime's float64 recurrent operators: not
    failing, the decomposed form runs float64), and for all of them when onnx or onnxruntime
    is missing (failing when ``required``) or a GPU was asked (failing: they run on the CPU;
    ``auto`` is the CPU for them)."""
    why = onnx_subjects.installed()
    if why:
        return [], [Skip(ONNX, why, required)]
    if device not in ("cpu", "auto"):  # auto: each framework's GPU, else its CPU
        return [], [Skip(ONNX, "the ONNX columns run on the CPU (onnxruntime's CPU build)", True)]
    runs, left = onnx_subjects.columns(list(dtypes))
    skipped = [Skip(where, why) for where, why in left]
    made = [
        onnx_subjects.OnnxSubject(form, runtime, dtype, cell)
        for form, runtime, dtype in runs
        for cell in cells
    ]
    return made, skipped


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
    cells: Sequence[str] = CELLS,
    only: Sequence[str] | None = None,
) -> Plan:
    """Every cell of the matrix as a task, nothing run yet: each check for each of ``cells``
    (core's names) on ``problems``' shapes as that cell's problems. With ``with_reference``
    also core against the independent reference (``corpus``: The Time Machine for the
    vocabulary checks). ``required``: the user named ``names``, so one that is not installed
    fails the matrix. ``only``: just these checks (their names as the cells show them); one
    that names no cell is a one-line error. Raises BackendUnavailable when no backend and no
    oracle can run on ``device``."""
    subs, skipped = subjects([n for n in names if n != ONNX], dtypes, device, required)
    left_out: set[str] = set()  # checks a column could not run (it said why in ``skipped``)
    found: list[Any] = []
    if with_oracles:
        found, more = oracles(names, dtypes, device, required, cells)
        skipped += more
    exported: list[Any] = []
    if ONNX in names:
        exported, more = onnx_columns(dtypes, device, required, cells)
        skipped += more
    if not subs and not found and not exported:
        raise _nothing_to_run(device, skipped)
    tasks: list[Task] = []
    if with_reference:
        tasks += [Task(name, run) for name, run in reference_checks.tasks(corpus, cells)]
    if "numpy" in names and "float64" in dtypes:
        for cell in cells:
            fd = [functools.partial(check_bptt_vs_fd, p) for p in for_cell(problems[:2], cell)]
            tasks.append(Task(f"bptt-vs-fd [{cell_label(cell)}]", functools.partial(_worst, fd)))
    for subject in subs:
        where = column(subject.label, subject.dtype, subject.device)
        tasks.append(
            Task(f"interface {where}", functools.partial(check_interface, subject), subject.device)
        )
        for name in CELL_FREE:
            run = functools.partial(run_check, name, subject, problems[:1])
            tasks.append(Task(f"{name} {where}", run, subject.device))
        loaders = [s for s in subs if s.dtype == subject.dtype]
        short = _replica_devices_missing(subject)
        if short:
            left_out |= {*REPLICA_CHECKS}
            skipped.append(Skip(where, short, fails=bool(only and set(only) & {*REPLICA_CHECKS})))
        for cell in cells:
            mine = for_cell(problems, cell)
            at = f"{where} [{cell_label(cell)}]"
            for name in CHECKS:
                if name in REPLICA_CHECKS and short:
                    continue
                if name not in CELL_FREE and applicable(name, subject):
                    run = functools.partial(run_check, name, subject, mine)
                    tasks.append(Task(f"{name} {at}", run, subject.device))
            saved = [functools.partial(check_checkpoint, subject, p, loaders) for p in mine]
            tasks.append(Task(f"checkpoint {at}", functools.partial(_worst, saved), subject.device))
    for oracle in found:
        plain = [p for p in for_cell(problems, oracle.cell) if p.plain]
        at = f"{column(oracle.label, oracle.dtype, oracle.device)} [{cell_label(oracle.cell)}]"
        for name in ORACLE_CHECKS:
            run = functools.partial(run_check, name, oracle, plain)
            tasks.append(Task(f"{name} {at}", run, oracle.device))
        concise = functools.partial(run_checks.check_concise, oracle)
        tasks.append(Task(f"{run_checks.CONCISE} {at}", concise, oracle.device))
    for column_ in exported:
        at = f"{column(column_.label, column_.dtype, 'cpu')} [{cell_label(column_.cell)}]"
        for name in onnx_subjects.ONNX_CHECKS:
            run = functools.partial(run_check, name, column_, for_cell(problems, column_.cell))
            tasks.append(Task(f"{name} {at}", run, "cpu"))
    if only is not None:
        kept = [t for t in tasks if t.label.split()[0] in only]
        unknown = set(only) - {t.label.split()[0] for t in kept} - left_out
        if unknown:
            raise BackendUnavailable(
                f"no cell of check {', '.join(sorted(unknown))} in this matrix (the checks are "
                f"{', '.join(dict.fromkeys(t.label.split()[0] for t in tasks))})"
            )
        tasks = kept
    return Plan(device, tasks, skipped)


def _replica_devices_missing(subject: BackendSubject) -> str:
    """Why a float64 column of a data-parallel backend cannot run the replica checks on its
    GPU (it needs one GPU per replica), or ""; on the CPU the framework makes the devices."""
    if subject.device == "cpu" or not applicable(REPLICA_CHECKS[0], subject):
        return ""
    gpus = sum(d != "cpu" for d in subject.module.devices())
    need = max(REPLICA_COUNTS)
    if gpus >= need:
        return ""
    return f"{' and '.join(REPLICA_CHECKS)} need {need} GPUs, one per replica; it sees {gpus}"


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
    cells: Sequence[str] = CELLS,
    only: Sequence[str] | None = None,
) -> Report:
    """The matrix, planned and run (see ``plan``)."""
    return execute(
        plan(
            names,
            dtypes,
            device,
            problems,
            with_oracles,
            with_reference,
            corpus,
            required,
            cells,
            only,
        )
    )

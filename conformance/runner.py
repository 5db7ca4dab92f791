"""The matrix: checks × subjects (backends × dtypes on one device, plus the oracles)."""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass
class Report:
    cells: list[Cell] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "cells": [c.to_dict() for c in self.cells],
            "skipped": self.skipped,
        }


def subjects(
    names: Sequence[str], dtypes: Sequence[str], device: str
) -> tuple[list[BackendSubject], list[str]]:
    """Build a subject per installed backend × dtype; say why the others are skipped."""
    out, skipped = [], []
    for name in names:
        try:
            module = backends.load(name)
        except BackendUnavailable as e:
            skipped.append(f"{name}: {e}")
            continue
        for dtype in dtypes:
            try:
                out.append(BackendSubject(module, dtype, device))
            except BackendUnavailable as e:
                skipped.append(f"{name}-{dtype}: {e}")
    return out, skipped


def oracles(names: Sequence[str], dtypes: Sequence[str], device: str = "cpu") -> list[Any]:
    """The frameworks' own RNN layers: torch.nn.RNN on the device asked for (cuDNN on a GPU),
    Keras SimpleRNN on the CPU."""
    found: list[Any] = []
    for dtype in dtypes:
        if "torch" in names:
            try:
                torch_device = backends.load("torch").resolve_device(device)
                found.append(TorchRNNOracle(dtype, torch_device))
            except (ImportError, BackendUnavailable):
                pass
        if "tensorflow" in names:
            try:
                found.append(KerasRNNOracle(dtype))
            except ImportError:
                pass
    return found


def run(
    names: Sequence[str] = backends.BACKENDS,
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str = "cpu",
    problems: Sequence[Problem] = DEFAULT_PROBLEMS,
    with_oracles: bool = True,
    with_reference: bool = True,
    corpus: str | None = None,
) -> Report:
    """The matrix; with ``with_reference`` also core against the independent reference
    (``reference/*`` cells; ``corpus`` is The Time Machine for the vocabulary checks)."""
    report = Report()
    if with_reference:
        report.cells += reference_checks.run_all(corpus)
    subs, report.skipped = subjects(names, dtypes, device)
    if "numpy" in names and "float64" in dtypes:
        report.cells.append(
            max((check_bptt_vs_fd(p) for p in problems[:2]), key=lambda c: c.max_error)
        )
    for subject in subs:
        report.cells.append(check_interface(subject))
        for name in CHECKS:
            if applicable(name, subject):
                report.cells.append(run_check(name, subject, problems))
        loaders = [s for s in subs if s.dtype == subject.dtype]
        report.cells.append(
            max(
                (check_checkpoint(subject, p, loaders) for p in problems), key=lambda c: c.max_error
            )
        )
    if with_oracles:
        for oracle in oracles(names, dtypes, device):
            plain = [p for p in problems if p.plain]
            for name in ORACLE_CHECKS:
                report.cells.append(run_check(name, oracle, plain))
    return report

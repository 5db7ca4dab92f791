"""``conform``: the backends against NumPy float64, and core against the plain reference."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rosetta_rnn import backends
from rosetta_rnn.conformance.problems import CELL_LABELS
from rosetta_rnn.core.display import Progress, format_table

if TYPE_CHECKING:
    from rosetta_rnn.conformance.checks import Cell
    from rosetta_rnn.conformance.runner import Report, Task

DESCRIPTION = """\
Prove that every backend computes what NumPy float64 computes, and that core computes what
the chapter says.

Each backend x dtype is a column on one device; each check of each cell (the chapter's RNN,
the GRU reset-before and reset-after, the LSTM) is a row: the parameters' round trip, the
forward pass (embedding, hidden states, logits), loss and perplexity, gradients (the
framework's autograd and the hand-written BPTT), clipping, sampling, short training runs, a
checkpoint read back by every backend; the tensor interface once per column. For torch, jax
and tensorflow in float64, train/replicas and grads/replicas run data-parallel training on the
framework's own engine with 2 and 4 replicas, 100 steps each, against NumPy on one device.
A cell is the worst relative error over six seeded problems (one for the replica checks)
against NumPy float64 running the same core code, within the tolerance of its dtype
(conformance/tolerances.py). The oracles load the same parameters into the frameworks' own
layers on the same device: torch.nn.RNN, GRU and LSTM, Keras SimpleRNN, GRU (both
reset_after) and LSTM, Gluon's rnn.RNN, GRU and LSTM (MXNet, in its own environment); the
reference/* cells run core against conformance/reference.py, the
chapter written again in plain NumPy (they need The Time Machine). The onnx columns run each
cell's problems exported to ONNX on the CPU: the fused and the decomposed form in float32 and
the decomposed form in float64 on ONNX Runtime and on onnx's reference evaluator, the fused
form in float64 on the reference evaluator (ONNX Runtime has no float64 recurrent operator):
hidden states, logits, greedy and sampled generation.

Every column runs on the asked device or is named on a line: one that could not run there
fails the matrix, never passes it by running less. The full matrix of the five backends
that share this environment (two dtypes, four recurrent cells, the oracles and the
reference: 894 cells) takes about 40 minutes on a 2-core CPU, and the 112 onnx cells 6
seconds more; --cells rnn about 6 minutes; --backends mxnet (264 cells, Gluon's layers
included) about 2; --checks train/replicas grads/replicas about 3; on a terminal a progress
bar shows the cell running, how many of how many, the time spent and the time left.

Exit status: 0 every cell passed and every asked-for column ran where asked; 1 a cell
failed, or an asked-for column did not run, or not on the asked device (each is a FAIL
line); 2 bad arguments, or nothing can run (the device is not there for any requested
backend, or none is installed): one line on stderr, before any check runs."""

DEVICES = "auto, cpu, gpu or gpu:N"


def device_spec(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``gpu`` or ``gpu:N``."""
    index = text.removeprefix("gpu:")
    if text in ("auto", "cpu", "gpu") or (index != text and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected {DEVICES}, got {text!r}")


def cell_name(text: str) -> str:
    """An argparse type: one of ``CELL_LABELS``."""
    if text in CELL_LABELS:
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(CELL_LABELS)}, got {text!r}")


def register(sub: Any) -> None:
    """Add ``conform`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    c = sub.add_parser(
        "conform",
        help="prove the backends agree with NumPy float64, and core with the plain reference",
        description=DESCRIPTION,
    )
    c.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="the backends to check (a name, or name:option such as array-api:torch), and "
        "onnx: every cell exported to ONNX, fused and decomposed, run on ONNX Runtime and on "
        "onnx's reference evaluator; each named one must be installed (default: every one "
        f"that is installed, of {' '.join(backends.BACKENDS)} onnx)",
    )
    c.add_argument(
        "--dtype",
        nargs="+",
        choices=("float32", "float64"),
        default=["float64", "float32"],
        help="the dtypes each backend runs in",
    )
    c.add_argument(
        "--device",
        type=device_spec,
        default="cpu",
        help=f"where the backends and the oracles run: {DEVICES}; auto is each framework's "
        "first GPU, else its CPU. A device no requested backend has is an error (exit 2); "
        "one that only some have fails their columns (exit 1)",
    )
    c.add_argument(
        "--cells",
        nargs="+",
        metavar="CELL",
        type=cell_name,
        default=list(CELL_LABELS),
        help=f"the cells every check runs for: {' '.join(CELL_LABELS)}",
    )
    c.add_argument(
        "--no-oracles", action="store_true", help="skip the torch.nn, Keras and Gluon layers"
    )
    c.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference/* cells (core against conformance/reference.py)",
    )
    c.add_argument(
        "--corpus",
        metavar="FILE",
        help="The Time Machine for the reference/vocab cells (default: $ROSETTA_RNN_DATA, "
        "then the checked download cache, then a download)",
    )
    c.add_argument(
        "--checks",
        nargs="+",
        metavar="CHECK",
        help="run only these checks, named as the table's rows name them (train/replicas "
        "grads/replicas: the data-parallel engines alone); a name that is no row of the "
        "matrix is an error (default: all)",
    )
    c.add_argument("--json", action="store_true", help="one JSON document on stdout")
    c.set_defaults(func=cmd_conform)


def cmd_conform(args: argparse.Namespace) -> int:
    from rosetta_rnn.conformance import runner
    from rosetta_rnn.conformance.runner import ONNX

    named = args.backends is not None
    names = list(dict.fromkeys(args.backends if named else (*backends.BACKENDS, ONNX)))
    for name in names:
        if name != ONNX:
            backends.check_name(name)
    _prepare_replicas(names, args.checks)
    with Progress("conform: loading the backends", total=None, unit="cells") as progress:
        planned = runner.plan(
            names,
            list(dict.fromkeys(args.dtype)),
            args.device,
            with_oracles=not args.no_oracles,
            with_reference=not args.no_reference,
            corpus=args.corpus,
            required=named,
            cells=[CELL_LABELS[c] for c in dict.fromkeys(args.cells)],
            only=args.checks,
        )
        progress.describe("conform", total=len(planned.tasks), reset=True)
        failed = 0

        def done(task: Task, cell: Cell) -> None:
            nonlocal failed
            failed += not cell.passed
            progress.advance(info=f"{failed} failed" if failed else "")

        width = max(len(task.label) for task in planned.tasks)  # a bar that stays in place
        with _retracing_expected():
            report = runner.execute(
                planned,
                on_start=lambda task: progress.describe(task.label.ljust(width)),
                on_done=done,
            )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _print(report)
    return 0 if report.passed else 1


def _prepare_replicas(names: list[str], only: list[str] | None) -> None:
    """Before any framework starts: JAX and TensorFlow make their CPU devices for the replica
    checks now or never (a framework that is not installed is the plan's to report)."""
    from rosetta_rnn.conformance.checks import REPLICA_CHECKS
    from rosetta_rnn.conformance.tolerances import REPLICA_COUNTS
    from rosetta_rnn.core.errors import BackendUnavailable

    if only is not None and not set(only) & set(REPLICA_CHECKS):
        return
    for name in names:
        if name in backends.REPLICA_BACKENDS:
            try:
                backends.replica_backend(name, backends.load(name), max(REPLICA_COUNTS))
            except BackendUnavailable:
                pass


@contextlib.contextmanager
def _retracing_expected() -> Iterator[None]:
    """The checks build a compiled step for every problem shape on purpose; TensorFlow warns
    of each retrace ("N out of the last M calls ... triggered tf.function retracing") through
    its Python logger. Its warnings are held back while the checks run; errors still show."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _family(label: str) -> str:
    """The table's column for a cell's subject: an oracle's framework (``oracle:torch.nn``,
    ``oracle:keras``: the row's cell says which layer), a backend as it is."""
    return label.rsplit(".", 1)[0] if label.startswith("oracle:") else label


def _group(check: str, cell: str | None) -> str:
    """The block a row is printed in: ``reference/`` for the reference's, ``""`` for the
    checks that involve no cell, else its cell's (bptt-vs-fd included)."""
    if check.startswith("reference/"):
        return "reference/"
    return cell or ""


def _rows(cells: list[Cell]) -> list[tuple[str, str | None]]:
    """(check, cell) in print order: the reference/* cells, the checks that involve no cell,
    then a block per cell (in the order asked) with the checks in the suite's order."""
    from rosetta_rnn.conformance.checks import CHECKS

    order = {name: i for i, name in enumerate(("interface", *CHECKS, "checkpoint", "bptt-vs-fd"))}
    seen = list(dict.fromkeys((c.check, c.cell) for c in cells))
    blocks = ["reference/", "", *dict.fromkeys(_group(*row) for row in seen)]

    def key(row: tuple[str, str | None]) -> tuple[int, int]:
        check, cell = row
        return blocks.index(_group(check, cell)), order.get(check, -1)

    return sorted(seen, key=key)


def _print(report: Report) -> None:
    """One row per check and cell (the cell blank for the checks that involve none), one
    column per backend × dtype (× device) and per oracle framework × dtype."""
    columns = list(dict.fromkeys((_family(c.backend), c.dtype, c.device) for c in report.cells))
    by_key = {(c.check, c.cell, _family(c.backend), c.dtype, c.device): c for c in report.cells}
    rows: list[list[str]] = []
    group = ""
    for check, row_cell in _rows(report.cells):
        if rows and _group(check, row_cell) != group:
            rows.append([""] * (2 + len(columns)))  # a blank line between blocks
        group = _group(check, row_cell)
        row = [check, row_cell or ""]
        for backend, dtype, device in columns:
            cell = by_key.get((check, row_cell, backend, dtype, device))
            row.append(
                "" if cell is None else f"{cell.max_error:.1e} {'ok' if cell.passed else 'FAIL'}"
            )
        rows.append(row)
    headers = ["check", "cell"] + [
        f"{b}-{d}" + ("" if dev == "cpu" else f"-{dev}") for b, d, dev in columns
    ]
    print(format_table(headers, rows))
    for skip in report.skipped:
        if not skip.fails:
            print(f"skipped {skip}")
    for problem in report.problems:
        print(f"FAIL {problem}")
    failed = [c for c in report.cells if not c.passed]
    for c in failed:
        where = f"{c.backend}-{c.dtype}-{c.device}" + (f", {c.cell}" if c.cell else "")
        print(
            f"FAIL {c.check} [{where}]: max error {c.max_error:.3g} > {c.tolerance:g}: {c.message}"
        )
    summary = f"{len(report.cells) - len(failed)} passed, {len(failed)} failed"
    if report.problems:
        summary += f", {len(report.problems)} not run as asked on {report.device}"
    print(summary)

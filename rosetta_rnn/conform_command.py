"""``conform``: the backends against NumPy float64, and core against the plain reference."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.helpers import format_table


def register(sub: Any) -> None:
    """Add ``conform`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    c = sub.add_parser(
        "conform",
        help="prove the backends agree with NumPy float64, and core with the plain reference",
    )
    c.add_argument("--backends", nargs="+", default=list(backends.BACKENDS), metavar="NAME")
    c.add_argument(
        "--dtype", nargs="+", choices=("float32", "float64"), default=["float64", "float32"]
    )
    c.add_argument("--device", default="cpu", help="cpu (default), auto, gpu or gpu:N")
    c.add_argument("--no-oracles", action="store_true", help="skip torch.nn.RNN and Keras")
    c.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference/* cells (core against conformance/reference.py)",
    )
    c.add_argument(
        "--corpus",
        metavar="FILE",
        help="The Time Machine for the reference/vocab cells (default: the usual lookup)",
    )
    c.add_argument("--json", action="store_true", help="one JSON document on stdout")
    c.set_defaults(func=cmd_conform)


def cmd_conform(args: argparse.Namespace) -> int:
    from rosetta_rnn.conformance import runner

    for name in args.backends:
        backends.check_name(name)
    report = runner.run(
        args.backends,
        args.dtype,
        args.device,
        with_oracles=not args.no_oracles,
        with_reference=not args.no_reference,
        corpus=args.corpus,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0 if report.passed else 1
    columns = list(dict.fromkeys((c.backend, c.dtype, c.device) for c in report.cells))
    checks_order = list(dict.fromkeys(c.check for c in report.cells))
    by_key = {(c.check, c.backend, c.dtype, c.device): c for c in report.cells}
    rows = []
    for check in checks_order:
        row = [check]
        for backend, dtype, device in columns:
            cell = by_key.get((check, backend, dtype, device))
            row.append(
                "" if cell is None else f"{cell.max_error:.1e} {'ok' if cell.passed else 'FAIL'}"
            )
        rows.append(row)
    headers = ["check"] + [
        f"{b}-{d}" + ("" if dev == "cpu" else f"-{dev}") for b, d, dev in columns
    ]
    print(format_table(headers, rows))
    for line in report.skipped:
        print(f"skipped {line}")
    failed = [c for c in report.cells if not c.passed]
    for c in failed:
        print(
            f"FAIL {c.check} [{c.backend}-{c.dtype}-{c.device}]: max error {c.max_error:.3g} > "
            f"{c.tolerance:g}: {c.message}"
        )
    print(f"{len(report.cells) - len(failed)} passed, {len(failed)} failed")
    return 0 if report.passed else 1

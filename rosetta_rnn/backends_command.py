"""``backends``: every registered backend, installed or not, with what it offers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.helpers import format_table


def register(sub: Any) -> None:
    """Add ``backends`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    b = sub.add_parser("backends", help="list the backends, installed or not")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [backends.info(name) for name in backends.BACKENDS]
    if args.json:
        print(json.dumps(rows))
        return 0
    table = []
    for r in rows:
        if not r["installed"]:
            table.append([r["backend"], "no", "-", "-", "-", "-", "-"])
            continue
        f64 = ",".join(d for d, ok in r["float64"].items() if ok) or "none"
        table.append(
            [
                r["backend"],
                "yes",
                r["version"],
                ",".join(r["devices"]),
                f64,
                ",".join(r["grad_modes"]),
                ",".join(r["compile_modes"]),
            ]
        )
    headers = ["backend", "installed", "version", "devices", "float64 on", "grad", "compile"]
    print(format_table(headers, table))
    for r in rows:
        if not r["installed"]:
            print(f"{r['backend']}: {r['error']}")
    return 0

"""``backends``: every registered backend, installed or not, with what it offers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core.display import format_table


def register(sub: Any) -> None:
    """Add ``backends`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    b = sub.add_parser(
        "backends",
        help="list the backends, installed or not",
        description="List every backend: whether its framework is installed, its version, its "
        "gradient engines (--grad) and compile modes (--eager/--compile). This reads the "
        "installed packages only and takes a fraction of a second; --devices also imports "
        "each framework to ask which devices it sees and where it computes in float64 "
        "(about 10 s on two cores, most of it TensorFlow's import).",
    )
    b.add_argument(
        "--devices",
        action="store_true",
        help="import each framework and list its devices and float64 support",
    )
    b.add_argument("--json", action="store_true", help="one JSON document on stdout")
    b.set_defaults(func=cmd_backends)


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [backends.info(name, probe=args.devices) for name in backends.BACKENDS]
    if args.json:
        print(json.dumps(rows))
        return 0
    headers = ["backend", "installed", "version", "grad", "compile"]
    if args.devices:
        headers += ["devices", "float64 on"]
    table = []
    for r in rows:
        if not r["installed"]:
            table.append([r["backend"], "no"] + ["-"] * (len(headers) - 2))
            continue
        row = [
            r["backend"],
            "yes",
            r["version"],
            ",".join(r["grad_modes"]),
            ",".join(r["compile_modes"]),
        ]
        if args.devices:
            row += [
                ",".join(r["devices"]),
                ",".join(d for d, ok in r["float64"].items() if ok) or "none",
            ]
        table.append(row)
    print(format_table(headers, table))
    for r in rows:
        if not r["installed"]:
            print(f"{r['backend']}: {r['error']}")
    if not args.devices:
        print("devices: rosetta-rnn backends --devices (imports each framework)")
    return 0

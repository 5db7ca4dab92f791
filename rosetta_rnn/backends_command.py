"""``backends``: every registered backend, installed or not, with what it offers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.backends import environments
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
        "(about 10 s on two cores, most of it TensorFlow's import). A framework that cannot "
        "share this environment gets one of its own: --setup NAME creates it (a virtual "
        "environment with exactly its requirements from the package registry, in "
        "$ROSETTA_RNN_ENVS or ~/.cache/rosetta-rnn/envs), and rosetta-rnn talks to it through "
        "a worker process.",
    )
    b.add_argument(
        "--devices",
        action="store_true",
        help="import each framework and list its devices and float64 support",
    )
    b.add_argument("--json", action="store_true", help="one JSON document on stdout")
    b.add_argument(
        "--setup",
        metavar="NAME",
        choices=tuple(environments.ENVIRONMENTS),
        help=f"create the environment of its own that a framework needs (one of "
        f"{', '.join(environments.ENVIRONMENTS)}), or re-create it, and check that its worker "
        f"starts (default: list the backends)",
    )
    b.set_defaults(func=cmd_backends)


def _setup(name: str) -> int:
    seconds, ready = environments.setup(name, say=print)
    print(
        f"{name}: ready in {seconds:.0f} s: "
        f"{', '.join(f'{k} {v}' for k, v in ready.items())} ({environments.root() / name})"
    )
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    if args.setup:
        return _setup(args.setup)
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
    for name, env in environments.ENVIRONMENTS.items():
        state = environments.status(name)
        how = "" if state == "ready" else f": rosetta-rnn backends --setup {name}"
        print(f"environment of its own: {name}, {env.framework}: {state}{how}")
    return 0

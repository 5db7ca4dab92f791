"""What the command modules share: the program's name, its one-line argument errors, the
backend flags and plain-text tables. A leaf: it imports no command module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from rosetta_rnn import backends

PROG = "rosetta-rnn"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def add_backend_args(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
    p.add_argument(
        "--backend",
        default=backends.default_backend(),
        help=f"one of {', '.join(backends.BACKENDS)}; array-api:LIBRARY runs on that library "
        f"(numpy, torch, cupy ...) (default: ${backends.DEFAULT_ENV} or numpy)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N (default: auto)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=dtype_default,
        help="float32 or float64" + (f" (default: {dtype_default})" if dtype_default else ""),
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )

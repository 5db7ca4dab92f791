"""Write the README's CLI reference from the parser itself, so the two cannot disagree.

    python docs/cli_reference.py          # rewrite the section of README.md
    python docs/cli_reference.py --check  # exit 1 if README.md differs (tests/test_help.py)

The section lies between the ``cli-reference`` markers: each subcommand's one-line help and its
usage, as ``--help`` prints them at a width of 100 columns.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
WIDTH = 100


def section() -> str:
    from rosetta_rnn.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse wraps at the terminal's width less 2
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        usages = {name: p.format_usage() for name, p in sub.choices.items()}
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    helps = {c.dest: c.help for c in sub._choices_actions}
    table = ["| command | what it does |", "|---|---|"]
    lines = []
    for name, usage in usages.items():
        table.append(f"| `{name}` | {helps[name]} |")
        first, *rest = usage.removeprefix("usage: ").rstrip().splitlines()
        lines += [first] + [line.removeprefix(" " * len("usage: ")) for line in rest]
    block = "\n".join(table) + "\n\n```\n" + "\n".join(lines) + "\n```"
    return f"{START}\n{block}\n{END}"


def rewritten(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{README}: no {START} marker")
    return head + section() + tail


def main() -> int:
    p = argparse.ArgumentParser(description="the README's CLI reference, from --help")
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args()
    text = README.read_text()
    new = rewritten(text)
    if args.check:
        if new != text:
            print("README.md's CLI reference differs from --help: python docs/cli_reference.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the CLI reference page (docs/cli.md) from the parser itself, so the two cannot
disagree.

    python docs/cli_reference.py          # rewrite the section of docs/cli.md
    python docs/cli_reference.py --check  # exit 1 if docs/cli.md differs (tests/test_help.py)

The section lies between the ``cli-reference`` markers: each subcommand's one-line help and its
usage, then each subcommand's whole ``--help``, as it prints them at a width of 100 columns.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "cli.md"
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
        helps_in_full = {name: p.format_help() for name, p in sub.choices.items()}
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
    for name, text in helps_in_full.items():
        block += f"\n\n## `rosetta-rnn {name}`\n\n```text\n{text.rstrip()}\n```"
    return f"{START}\n{block}\n{END}"


def rewritten(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{PAGE}: no {START} marker")
    return head + section() + tail


def main() -> int:
    p = argparse.ArgumentParser(description="the CLI reference page, from --help")
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args()
    text = PAGE.read_text()
    new = rewritten(text)
    if args.check:
        if new != text:
            print("docs/cli.md differs from --help: python docs/cli_reference.py")
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

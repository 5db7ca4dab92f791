"""Run the worked examples of docs/verify.md and write what each prints into the page.

    python docs/run_verify_examples.py

Each console block of the page starts with its command (``$ rosetta-rnn verify ...``, run
from the repository's root); its output and exit status are replaced by this run's.
``tests/test_verify.py`` runs the same commands and holds the page to them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "verify.md"


def run(args: str) -> tuple[str, int]:
    from rosetta_rnn.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["verify", *shlex.split(args)])
    return out.getvalue().rstrip("\n"), code


def main() -> None:
    os.chdir(HERE.parent)
    text = PAGE.read_text(encoding="utf-8")

    def rewrite(match: re.Match[str]) -> str:
        command = match.group(1)
        output, code = run(command)
        print(f"rosetta-rnn verify {command}: exit {code}")
        return f"```console\n$ rosetta-rnn verify {command}\n{output}\n$ echo $?\n{code}\n```"

    pattern = r"```console\n\$ rosetta-rnn verify ([^\n]*)\n.*?```"
    PAGE.write_text(re.sub(pattern, rewrite, text, flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    main()

"""What the command modules share: the program's name, its one-line argument errors, the
backend flags. A leaf: it imports no command module."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, NoReturn

from rosetta_rnn import backends

PROG = "rosetta-rnn"

CORPUS_HELP = (
    "a text file to read instead of The Time Machine (default: The Time Machine from "
    "$ROSETTA_RNN_DATA/timemachine.txt, else the sha1-checked copy in the cache folder "
    "$ROSETTA_RNN_CACHE or ~/.cache/rosetta-rnn, else downloaded there from d2l)"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their paragraphs (a one-line paragraph is wrapped to the terminal, one
    already broken into lines is kept as written); an option's help ends with its default when
    it has one (not None, not a switch's False) and the help does not already say it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        return "\n\n".join(
            textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent)
            if "\n" not in p.strip()
            else super(HelpFormatter, self)._fill_text(p, width, indent)
            for p in paragraphs
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, and whose help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def add_backend_args(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
    p.add_argument(
        "--backend",
        metavar="NAME",
        default=backends.default_backend(),
        help=f"one of {', '.join(backends.BACKENDS)}; array-api:LIBRARY runs on that library "
        f"(numpy, torch, cupy ...) (default: ${backends.DEFAULT_ENV} or numpy)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU when the framework sees one, else the CPU), cpu, gpu or gpu:N; a GPU "
        "that is not there is an error",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=dtype_default,
        help="float32 or float64"
        + ("" if dtype_default else " (default: the checkpoint's, else float32)"),
    )

"""``--help`` is the CLI's reference: every subcommand describes itself, every option says what
it does and its default, and the CLI reference page is the help's own text."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from rosetta_rnn.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBCOMMANDS = sorted(_subcommands())
REPO = Path(__file__).resolve().parent.parent


def test_the_top_line_names_every_subcommand() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "``" not in text  # reStructuredText quoting reads badly in a terminal
    for name in SUBCOMMANDS:
        assert f"    {name}" in text, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_describes_itself(name: str) -> None:
    p = _subcommands()[name]
    assert p.description and len(p.description.split()) >= 8, f"{name} has no description"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_option_says_what_it_does(name: str) -> None:
    p = _subcommands()[name]
    bare = [
        "/".join(a.option_strings)
        for a in p._actions
        if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()
    ]
    assert bare == [], f"{name}: options without help: {bare}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_value_option_says_its_default(name: str) -> None:
    """An option that takes a value either has a default the help shows, says its default in
    words (``default`` in the text), or is required."""
    p = _subcommands()[name]
    silent = []
    for a in p._actions:
        if not a.option_strings or a.nargs == 0 or a.required or a.help == argparse.SUPPRESS:
            continue
        shown = p._get_formatter()._get_help_string(a)  # what --help prints for it
        if "default" not in shown and "required" not in shown:
            silent.append("/".join(a.option_strings))
    assert silent == [], f"{name}: options that hide their default: {silent}"


def test_the_cli_reference_page_is_the_help() -> None:
    """docs/cli.md's reference is written by docs/cli_reference.py from the parser."""
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "docs/cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "docs" / "cli.md").read_text()
    assert module.START in text and module.END in text
    assert module.rewritten(text) == text, "out of date: run python docs/cli_reference.py"
    for name in SUBCOMMANDS:
        assert f"rosetta-rnn {name} [-h]" in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_fits_the_terminal(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-line description paragraphs are wrapped to the terminal's width like the options."""
    monkeypatch.setenv("COLUMNS", "102")  # argparse wraps at the width less 2
    text = _subcommands()[name].format_help()
    assert max(len(line) for line in text.splitlines()) <= 100

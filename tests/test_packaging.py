"""The README's test command is what CI runs; the layout is the fixed one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```", text, re.S)
    assert match, "README lacks the marked test command"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in [line.strip() for line in ci]


def test_top_level_layout() -> None:
    for name in ("backends", "core", "conformance", "benchmarks", "pyproject.toml", "README.md"):
        assert (REPO / name).exists(), name


def test_the_time_machine_is_not_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    assert not re.search(r"time_?machine[^/]*\.txt", tracked, re.I)


def test_the_readme_cli_reference_names_every_flag() -> None:
    """Each subcommand's every option appears on its lines of the README's CLI reference."""
    import argparse

    from rosetta_rnn.cli import build_parser

    text = (REPO / "README.md").read_text()
    reference = text.split("## CLI reference", 1)[1].split("```")[1]
    blocks: dict[str, str] = {}
    command = ""
    for line in reference.splitlines():
        if line.startswith("rosetta-rnn "):
            command = line.split()[1]
        blocks[command] = blocks.get(command, "") + line + "\n"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if (
                    flag.startswith("--")
                    and flag != "--help"
                    and flag not in blocks.get(command, "")
                ):
                    missing.append(f"{command} {flag}")
    assert not missing, missing

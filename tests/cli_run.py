"""What the CLI tests share: a run of the command with its output, and the one-line error."""

from __future__ import annotations

import pytest

from rosetta_rnn.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rosetta-rnn ARGS`` in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, words: str) -> None:
    """``err`` holds exactly one ``rosetta-rnn: error:`` line, containing ``words``, and no
    traceback."""
    lines = [line for line in err.splitlines() if line.startswith("rosetta-rnn: error: ")]
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err

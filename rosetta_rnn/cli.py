"""The ``rosetta-rnn`` command. Each subcommand lives in its own module, which adds itself to
the parser with ``register(sub)``: train, generate and eval, convert, clipping, conform,
corpus-stats, bench, backends."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from rosetta_rnn import (
    __version__,
    backends_command,
    checkpoint_commands,
    conform_command,
    convert_command,
    corpus_stats,
    experiments,
    train_command,
    verify_command,
)
from rosetta_rnn.benchmarks import cli as bench_cli
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.helpers import PROG, Parser

COMMANDS = (
    train_command,
    checkpoint_commands,
    convert_command,
    experiments,
    conform_command,
    verify_command,
    corpus_stats,
    bench_cli,
    backends_command,
)


DESCRIPTION = """\
d2l's character-level RNN (The Time Machine), written once and run on NumPy, PyTorch, JAX,
TensorFlow and the Array API standard, with checks that they agree and are right.

Start with `rosetta-rnn train --checkpoint tm.safetensors`, then
`rosetta-rnn generate --checkpoint tm.safetensors`; `rosetta-rnn convert` turns a checkpoint
into torch's or Keras' own layers and back. `rosetta-rnn COMMAND --help` says more.

The Time Machine is found in $ROSETTA_RNN_DATA/timemachine.txt, else in the cache folder
($ROSETTA_RNN_CACHE or ~/.cache/rosetta-rnn, checked by sha1), else downloaded into it;
--corpus FILE reads another text."""


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


# The command owns its process, so it sets what the frameworks read at import: TensorFlow's C++
# log level (its CUDA probing otherwise fills the terminal) and JAX's GPU memory preallocation
# (JAX would otherwise claim most of a GPU, starving torch or TensorFlow in the same process).
# The library itself (``import rosetta_rnn.backends.*``) sets nothing.
COMMAND_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def main(argv: Sequence[str] | None = None) -> int:
    for var, value in COMMAND_ENVIRONMENT.items():
        os.environ.setdefault(var, value)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors (already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

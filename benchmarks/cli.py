"""``rosetta-rnn bench``: every backend against its framework's own RNN and the machine's limit.

Wired into the main CLI by ``register(subparsers)``; ``cmd_bench(args)`` runs it. Progress goes
to stderr; the table (or with ``--json`` the document) to stdout; files to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core.errors import UserError

from . import report, roofline, runner, threads
from .workloads import Shape

DEFAULT_OUT = "bench-results"
HELP = "time every backend against the frameworks' own RNNs and the machine's limit"


def register(sub: Any) -> None:
    """Add the ``bench`` subcommand to ``sub`` (an ``argparse._SubParsersAction``)."""
    p = sub.add_parser("bench", help=HELP, description=HELP + ".")
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help=f"any of {', '.join(backends.BACKENDS)} (default: all installed; a backend named "
        "here whose framework is missing is an error)",
    )
    p.add_argument(
        "--device", nargs="+", default=["cpu"], help="cpu (default), auto, gpu, gpu:N or all"
    )
    p.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32"])
    p.add_argument(
        "--workload", choices=(*roofline.WORKLOADS, "all"), default="all", help="default: all"
    )
    p.add_argument("--no-sweep", action="store_true", help="only the main shape, no sweeps")
    p.add_argument("--repeats", default="5", metavar="N", help="timed repeats per row (5)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"(default: {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="the JSON document on stdout")
    p.add_argument("--no-peers", action="store_true", help="skip the frameworks' own RNNs")
    p.add_argument(
        "--modes",
        choices=("all", "default"),
        default="all",
        help="every grad × compile mode (default) or each backend's default only",
    )
    p.add_argument("--threads", metavar="N", help="threads for every framework (all CPUs)")
    p.add_argument("--min-time", default="0.25", metavar="S", help="seconds per timed block")
    p.add_argument(
        "--max-wait",
        default="600",
        metavar="S",
        help="seconds to wait in all for other processes to go quiet (0: never wait)",
    )
    p.add_argument("--batch-size", default="32", metavar="B")
    p.add_argument("--num-steps", default="35", metavar="T")
    p.add_argument("--num-hiddens", default="512", metavar="H")
    p.add_argument(
        "--sweep-steps", default=",".join(map(str, runner.SWEEP_STEPS)), metavar="T1,T2,..."
    )
    p.add_argument(
        "--sweep-hiddens", default=",".join(map(str, runner.SWEEP_HIDDENS)), metavar="H1,H2,..."
    )
    p.set_defaults(func=cmd_bench)


def _positive(value: Any, flag: str, kind: type = int) -> Any:
    try:
        x = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a positive number, got {value!r}") from None
    if not x > 0 or x != x or x == float("inf"):
        raise UserError(f"{flag} must be a positive number, got {value!r}")
    return x


def _nonnegative(value: Any, flag: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number >= 0, got {value!r}") from None
    if not 0 <= x < float("inf"):
        raise UserError(f"{flag} must be a number >= 0, got {value!r}")
    return x


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"{flag} needs at least one value")
    return tuple(_positive(p.strip(), flag) for p in parts)


def _out_dir(text: str) -> Path:
    """Create the output folder now, so a bad path fails before minutes of measuring."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {text!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output folder {text!r} is not writable")
    return path


def config_from_args(args: argparse.Namespace) -> runner.BenchConfig:
    """Validate the flags (one-line errors) and build the run's configuration."""
    names = list(args.backends) if args.backends else list(backends.BACKENDS)
    for name in names:
        backends.check_name(name)
    available = threads.available_cpus()
    n_threads = available if args.threads is None else _positive(args.threads, "--threads")
    if n_threads > available:
        raise UserError(f"--threads {n_threads} is more than the {available} CPUs available")
    workloads = list(roofline.WORKLOADS) if args.workload == "all" else [args.workload]
    return runner.BenchConfig(
        backends=list(dict.fromkeys(names)),
        explicit_backends=bool(args.backends),
        devices=list(dict.fromkeys(args.device)),
        dtypes=list(dict.fromkeys(args.dtype)),
        workloads=workloads,
        shape=Shape(
            _positive(args.batch_size, "--batch-size"),
            _positive(args.num_steps, "--num-steps"),
            _positive(args.num_hiddens, "--num-hiddens"),
        ),
        sweep=not args.no_sweep,
        sweep_steps=_int_list(args.sweep_steps, "--sweep-steps"),
        sweep_hiddens=_int_list(args.sweep_hiddens, "--sweep-hiddens"),
        repeats=_positive(args.repeats, "--repeats"),
        min_time=_positive(args.min_time, "--min-time", float),
        peers=not args.no_peers,
        all_modes=args.modes == "all",
        threads=n_threads,
        log=sys.stderr,
        max_wait=_nonnegative(args.max_wait, "--max-wait"),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table (or JSON), write the files. Returns the exit code."""
    cfg = config_from_args(args)
    out_dir = _out_dir(args.out)
    doc = runner.run(cfg)
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        doc["command"] = "rosetta-rnn " + shlex.join(argv)
    written, notes = report.write_all(doc, out_dir)
    if args.json:
        print(json.dumps(doc))
    else:
        print(report.terminal(doc))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote {', '.join(p.name for p in written)} to {out_dir} ({doc['wall_s']:.0f} s)",
        file=sys.stderr,
    )
    return 0

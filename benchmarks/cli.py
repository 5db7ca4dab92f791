"""``rosetta-rnn bench``: every backend against its framework's own layers and the machine's limit.

Wired into the main CLI by ``register(subparsers)``; ``cmd_bench(args)`` runs it. Progress goes
to stderr (a bar on a terminal); the table (or with ``--json`` the document) to stdout; files
to ``--out``, as one set that replaces the previous one only once everything is measured.

``--quick`` is a first look in about a minute on a 2-core CPU. It selects: the RNN's training
step and greedy generation (``--workload train generate --cells rnn``) at the main shape
(``--no-sweep``), every installed backend in its default grad engine under its compiler
(``--modes compiled``: numpy bptt/eager, torch autograd/torch.compile, jax autograd/jit,
tensorflow autograd/tf.function, array-api bptt/eager; generation under jit, tf.function and
torch.compile),
the RNN's peers, 3 timed repeats (``--repeats 3``), at most 30 s of waiting for
other processes (``--max-wait 30``) and ``--out bench-results-quick``. A flag given explicitly
wins.
torch.compile's inductor cache persists between runs (``runner.compile_cache``), so only the
first quick run pays torch's cold build (on a quiet 2-core CPU, about half a minute of
torch.compile the first time and a third of that from the cache).

``--cells`` picks the models: the chapter's RNN (d2l 8.5, H 512) with the sweeps, and d2l
9.1/9.2's GRU and LSTM (H 256), against torch.nn.GRU/LSTM, Keras GRU/LSTM and JAX's lax.scan
GRU/LSTM; every cell has every workload. The full run has all three; ``--quick`` the RNN alone,
because each gated cell adds a torch.compile build several times the RNN's: on the busy dev
machine the quick run with their training steps took 12.5 minutes, of which the GRU's and
LSTM's cold builds were 221 s and 161 s, against the RNN's 14 s from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from rosetta_rnn import backends
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.replicas import check_replicas

from . import report, roofline, runner, threads
from .workloads import GATED_HIDDENS, MODES, Shape

DEFAULT_OUT = "bench-results"
HELP = "time every backend against the frameworks' own layers and the machine's limit"
DESCRIPTION = """\
Times the d2l character RNN on every installed backend and mode: one training step (forward,
BPTT or autograd, global-norm clipping, SGD), the forward pass and greedy generation. Beside
them run the peers, the same model written the way each framework's users write it
(torch.nn.RNN, keras.SimpleRNN, a jax.lax.scan model, a min-char-rnn NumPy loop), and the
machine's limit: measured peak matmul throughput × the step's FLOPs, a roofline in tokens/s.
It measures and reports; it asserts nothing.

Cells (--cells): besides the RNN (d2l 8.5, 512 hidden units), d2l 9.1's GRU and 9.2's LSTM
(256 hidden units), each backend against torch.nn.GRU/LSTM, Keras GRU/LSTM and a jax.lax.scan
GRU/LSTM, with the target "each backend's best mode ≥ 1.0× its framework's own layer"
reported per cell and workload. "gru" is the reset-after GRU, which is what torch.nn.GRU and
Keras' GRU compute (d2l's reset-before GRU is gru/reset-before, against Keras
GRU(reset_after=False)).

Where results go: the table to stdout (--json: the whole document); progress to stderr, with a
bar on a terminal; files to --out: results.json, results.csv, results.md, machine.md,
tokens_per_sec.png and scaling.png (with sweeps). They are made only after everything is
measured, then moved over the previous set in that folder (its files this run does not make
are removed; other files there are kept). If the files cannot be written, the results printed
on stdout are complete and the previous set stays as it was.

How long: every mode of the three cells on every workload, 5 repeats, --no-sweep, takes about
6.5 minutes on a quiet 2-core CPU (378-414 s in four runs, either recipe); the RNN's sweeps
add their rows to that; plus up to --max-wait seconds waiting for other processes to go
quiet; blocks timed on a busy machine are marked busy in the log, results.md and the plots.
torch.compile builds (about 30 s each cold, 12 s from the cache) are kept in a cache between
runs (--cold-compile: not). The GRU and LSTM rows add four builds of larger graphs: 161-221 s
each cold on a busy 2-core machine.

Data parallel, --replicas N [N ...]: rows of the RNN's training step (main shape) on N
replicas with each framework's own engine (torch.distributed processes, JAX shard_map over N
devices, TensorFlow MirroredStrategy over N logical devices), beside the same step on one
device (×1), in a table of their own with the all-reduce's time per step where the framework
can say (torch). On a CPU the replicas share the --threads: splitting the batch of a 2-core
machine is not expected to be faster; the rows show what each engine costs.

Quick mode, --quick: a first look in about a minute on a 2-core CPU (53 s with torch.compile's
cache warm; its cold build adds about half a minute). It selects --workload train generate
--cells rnn --no-sweep --modes compiled --repeats 3 --max-wait 30 --out bench-results-quick:
the RNN's training step and greedy generation at the main shape for every installed backend
in its default mode under its compiler (generation too: JAX's jit, TensorFlow's tf.function,
torch.compile), and the peers. Any of those flags given explicitly wins (--quick --cells rnn
gru lstm adds the gated cells, and their torch.compile builds).
"""
QUICK: dict[str, Any] = {
    "workload": ["train", "generate"],
    "cells": ["rnn"],
    "modes": "compiled",
    "repeats": "3",
    "max_wait": "30",
    "out": "bench-results-quick",
}
FULL: dict[str, Any] = {
    "workload": "all",
    "cells": ["rnn", "gru", "lstm"],
    "modes": "all",
    "repeats": "5",
    "max_wait": "600",
    "out": DEFAULT_OUT,
}
DEVICE = re.compile(r"cpu|auto|all|gpu(:\d+)?")
CELLS: dict[str, str] = {
    "rnn": RNN,
    "gru": GRU_RESET_AFTER,  # what torch.nn.GRU, cuDNN and Keras' default GRU compute
    "gru/reset-after": GRU_RESET_AFTER,
    "gru/reset-before": GRU_RESET_BEFORE,  # d2l 9.1's; only Keras has a layer for it
    "lstm": LSTM,
}
"""--cells names -> core's cells."""
RNN_HIDDENS = 512  # d2l 8.5's num_hiddens (the gated cells': workloads.GATED_HIDDENS)


def register(sub: Any) -> None:
    """Add the ``bench`` subcommand to ``sub`` (an ``argparse._SubParsersAction``)."""
    p = sub.add_parser("bench", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a first look in about a minute: --workload train generate --cells rnn --no-sweep "
        "--modes compiled --repeats 3 --max-wait 30 --out bench-results-quick (flags given "
        "explicitly win)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help=f"any of {', '.join(backends.BACKENDS)} (default: all installed; a backend named "
        "here whose framework is missing is an error)",
    )
    p.add_argument(
        "--device",
        nargs="+",
        default=["cpu"],
        metavar="DEVICE",
        help="cpu, auto (a GPU where a backend sees one, else the CPU), gpu, gpu:N or all "
        "(every device each backend sees); a device no backend has is an error",
    )
    p.add_argument(
        "--dtype",
        nargs="+",
        choices=("float32", "float64"),
        default=["float32"],
        help="one or both floating-point types",
    )
    p.add_argument(
        "--workload",
        nargs="+",
        metavar="WORKLOAD",
        choices=(*roofline.WORKLOADS, "all"),
        help="train (one SGD step), forward (the loss, no gradient), generate (greedy tokens at "
        "batch 1), several of them, or all (default: all; train generate with --quick)",
    )
    p.add_argument(
        "--cells",
        nargs="+",
        metavar="CELL",
        help="rnn (d2l 8.5), gru (the reset-after GRU that torch.nn.GRU and Keras GRU compute; "
        "also gru/reset-after), gru/reset-before (d2l 9.1's, against Keras "
        "GRU(reset_after=False) alone) or lstm (d2l 9.2). The gated cells are timed at their "
        "main shape, H 256, against the frameworks' own layers; only rnn has the sweeps "
        "(default: rnn gru lstm; with --quick rnn, as each gated cell adds a torch.compile "
        "build minutes long when cold)",
    )
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="only the main shape: no num_steps and num_hiddens sweeps (implied by --quick)",
    )
    p.add_argument(
        "--repeats",
        metavar="N",
        help="timed repeats per row: the median is reported and, from 2 repeats, the spread "
        "(default: 5; 3 with --quick)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"folder for the files; the previous set there is replaced by the new one, other "
        f"files are kept (default: {DEFAULT_OUT}; {QUICK['out']} with --quick)",
    )
    p.add_argument(
        "--json", action="store_true", help="the whole JSON document on stdout, not the table"
    )
    p.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the frameworks' own layers (torch.nn.RNN/GRU/LSTM, keras.SimpleRNN/GRU/LSTM, "
        "jax.lax.scan and its GRU/LSTM, numpy.min-char-rnn, onnxruntime)",
    )
    p.add_argument(
        "--modes",
        choices=tuple(MODES),
        help="; ".join(f"{k}: {v}" for k, v in MODES.items())
        + " (default: all; compiled with --quick)",
    )
    p.add_argument(
        "--threads",
        metavar="N",
        help="threads for every framework (default: every CPU this process may use, "
        f"{threads.available_cpus()} here)",
    )
    p.add_argument(
        "--min-time",
        default="0.25",
        metavar="S",
        help="seconds each timed block lasts at least (a block repeats the call to fill it)",
    )
    p.add_argument(
        "--max-wait",
        metavar="S",
        help="seconds to wait in all for other processes to go quiet; once spent (or with 0) "
        "timing goes on, and every block timed beside busy CPUs is marked busy in the results "
        "(default: 600; 30 with --quick)",
    )
    p.add_argument(
        "--cold-compile",
        action="store_true",
        help="torch.compile from an empty cache, to measure cold builds (default: the cache "
        "kept between runs in rosetta-rnn's cache folder, or $TORCHINDUCTOR_CACHE_DIR)",
    )
    p.add_argument(
        "--replicas",
        nargs="+",
        metavar="N",
        help="also time the RNN's training step data-parallel on N replicas (torch, jax, "
        "tensorflow: each framework's own engine) beside the same step on one device; on the "
        "CPU the replicas share --threads (default: none)",
    )
    p.add_argument(
        "--recipe",
        choices=tuple(run_spec.RECIPES),
        default="d2l-0.17",
        help="the edition whose shape is the main one: d2l 0.17's 8.5 (B 32, T 35, H 512; "
        "GRU/LSTM 256) or d2l 1.0's 9.5 (B 1024, T 32, H 32 for every cell), a different "
        "regime (default: d2l-0.17)",
    )
    p.add_argument(
        "--batch-size", metavar="B", help="batch_size of the main shape (default: the recipe's)"
    )
    p.add_argument(
        "--num-steps", metavar="T", help="num_steps of the main shape (default: the recipe's)"
    )
    p.add_argument(
        "--num-hiddens",
        metavar="H",
        help=f"num_hiddens of the main shape, for every cell (default: the recipe's: "
        f"{RNN_HIDDENS} for rnn as in d2l 8.5, {GATED_HIDDENS} for gru and lstm as in d2l "
        "9.1/9.2; d2l-1.0: 32 for every cell)",
    )
    p.add_argument(
        "--sweep-steps",
        default=",".join(map(str, runner.SWEEP_STEPS)),
        metavar="T1,T2,...",
        help="num_steps of the sweep (rnn's train and forward rows, one mode per backend)",
    )
    p.add_argument(
        "--sweep-hiddens",
        default=",".join(map(str, runner.SWEEP_HIDDENS)),
        metavar="H1,H2,...",
        help="num_hiddens of the sweep (rnn's train and forward rows, one mode per backend)",
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


def _out_dir(text: str) -> tuple[Path, bool]:
    """Create the output folder now, so a bad path fails before minutes of measuring; returns
    it and whether it was created here (an empty folder made for a failed run is removed)."""
    path = Path(text)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {text!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output folder {text!r} is not writable")
    return path, created


def _cells(names: list[str]) -> list[str]:
    """core's cells for the --cells names, each once."""
    for name in names:
        if name not in CELLS:
            raise UserError(f"unknown cell {name!r}; choose from {', '.join(CELLS)}")
    return list(dict.fromkeys(CELLS[name] for name in names))


def _chosen(args: argparse.Namespace, name: str) -> Any:
    """A flag's value: as given, else its --quick or full-run default."""
    value = getattr(args, name)
    if value is not None:
        return value
    return (QUICK if args.quick else FULL)[name]


def config_from_args(args: argparse.Namespace) -> runner.BenchConfig:
    """Validate the flags (one-line errors) and build the run's configuration."""
    names = list(args.backends) if args.backends else list(backends.BACKENDS)
    for name in names:
        backends.check_name(name)
    for device in args.device:
        if not DEVICE.fullmatch(device):
            raise UserError(f"unknown device {device!r} (use cpu, auto, gpu, gpu:N or all)")
    available = threads.available_cpus()
    n_threads = available if args.threads is None else _positive(args.threads, "--threads")
    if n_threads > available:
        raise UserError(f"--threads {n_threads} is more than the {available} CPUs available")
    chosen = _chosen(args, "workload")
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    workloads = (
        list(roofline.WORKLOADS)
        if "all" in chosen
        else [w for w in roofline.WORKLOADS if w in chosen]  # in the bench's order
    )
    cells = _cells(_chosen(args, "cells"))
    recipe = run_spec.RECIPES[args.recipe]
    gated = run_spec.RECIPE_GATED[args.recipe].get("num_hiddens", recipe.num_hiddens)
    hiddens = None if args.num_hiddens is None else _positive(args.num_hiddens, "--num-hiddens")
    batch_size = _positive(args.batch_size or str(recipe.batch_size), "--batch-size")
    replicas = _replicas(args.replicas, names, workloads, cells, batch_size)
    return runner.BenchConfig(
        backends=list(dict.fromkeys(names)),
        explicit_backends=bool(args.backends),
        devices=list(dict.fromkeys(args.device)),
        dtypes=list(dict.fromkeys(args.dtype)),
        workloads=workloads,
        cells=cells,
        shape=Shape(
            batch_size,
            _positive(args.num_steps or str(recipe.num_steps), "--num-steps"),
            hiddens or recipe.num_hiddens,
        ),
        gated_hiddens=hiddens or gated,
        sweep=not (args.no_sweep or args.quick),
        sweep_steps=_int_list(args.sweep_steps, "--sweep-steps"),
        sweep_hiddens=_int_list(args.sweep_hiddens, "--sweep-hiddens"),
        repeats=_positive(_chosen(args, "repeats"), "--repeats"),
        min_time=_positive(args.min_time, "--min-time", float),
        peers=not args.no_peers,
        modes=_chosen(args, "modes"),
        threads=n_threads,
        log=sys.stderr,
        max_wait=_nonnegative(_chosen(args, "max_wait"), "--max-wait"),
        cold_compile=args.cold_compile,
        quick=args.quick,
        replicas=replicas,
    )


def _replicas(
    given: list[str] | None, names: list[str], workloads: list[str], cells: list[str], batch: int
) -> tuple[int, ...]:
    """The --replicas counts, each splitting ``batch`` evenly; one-line errors for a count, a
    workload or a set of backends that gives no data-parallel row."""
    if not given:
        return ()
    counts = tuple(dict.fromkeys(_positive(n, "--replicas") for n in given))
    for n in counts:
        check_replicas(n, batch)
    if "train" not in workloads or RNN not in cells:
        raise UserError("--replicas times the RNN's training step; use --workload train or all")
    if not set(names) & set(backends.REPLICA_BACKENDS):
        raise UserError(
            f"--replicas needs a backend with a data-parallel engine "
            f"({', '.join(backends.REPLICA_BACKENDS)}); asked for {', '.join(names)}"
        )
    return counts


def _nothing_measured(doc: dict[str, Any], out_dir: Path) -> UserError:
    failed = [n for n in doc["notes"] if " failed: " in n]
    why = f"every row failed (first: {failed[0]})" if failed else "no row to time"
    return UserError(f"nothing was measured: {why}; {out_dir} is left as it was")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table (or JSON), write the files. Returns the exit code.
    Everything a user can get wrong is checked before the first measurement."""
    cfg = config_from_args(args)
    report.check_plotting()
    out_dir, created = _out_dir(_chosen(args, "out"))
    try:
        doc = runner.run(cfg)
        if not doc["rows"]:
            raise _nothing_measured(doc, out_dir)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        doc["command"] = "rosetta-rnn " + shlex.join(argv)
    # What was measured reaches stdout first: a failure to write the files loses none of it.
    if args.json:
        print(json.dumps(doc), flush=True)
    else:
        print(report.terminal(doc), flush=True)
    try:
        written = report.write_all(doc, out_dir)
    except (OSError, UserError) as e:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        reason = e if isinstance(e, UserError) else (e.strerror or e)
        raise UserError(
            f"measured, but could not write the result files to {out_dir} ({reason}); the "
            "results above are complete and the previous set there is as it was"
        ) from None
    print(
        f"wrote {', '.join(p.name for p in written)} to {out_dir} ({doc['wall_s']:.0f} s)",
        file=sys.stderr,
    )
    return 0

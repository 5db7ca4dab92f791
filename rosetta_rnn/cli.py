"""The ``rosetta-rnn`` command: train, generate, eval, clipping, conform, bench, backends."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from rosetta_rnn import __version__, argtypes, backends, plots
from rosetta_rnn.core import checkpoint, data, model, sampling
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.evaluation import perplexity_on

PROG = "rosetta-rnn"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def _add_backend_args(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
    p.add_argument(
        "--backend",
        default=backends.default_backend(),
        help=f"one of {', '.join(backends.BACKENDS)}; array-api:LIBRARY runs on that library "
        f"(numpy, torch, cupy ...) (default: ${backends.DEFAULT_ENV} or numpy)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N (default: auto)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=dtype_default,
        help="float32 or float64" + (f" (default: {dtype_default})" if dtype_default else ""),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train on The Time Machine and print samples")
    _add_backend_args(t, None)  # dtype default float32, or the checkpoint's with --resume
    # Hyperparameters default to None so that --resume can tell what was given explicitly;
    # rosetta_rnn.train_command.DEFAULTS holds the chapter's values.
    t.add_argument(
        "--seed", type=argtypes.integer, help="seed of the one core generator (default 0)"
    )
    t.add_argument("--corpus", metavar="FILE", help="a text file instead of The Time Machine")
    t.add_argument("--token", choices=data.TOKEN_KINDS, help="char (default) or word")
    t.add_argument(
        "--max-tokens", type=argtypes.integer, help="10000 (default); <= 0 keeps the whole text"
    )
    t.add_argument("--batch-size", type=argtypes.positive_int, help="default 32")
    t.add_argument("--num-steps", type=argtypes.positive_int, help="default 35")
    t.add_argument("--num-hiddens", type=argtypes.positive_int, help="default 512")
    t.add_argument("--lr", type=argtypes.positive_float, help="default 1")
    t.add_argument("--epochs", type=argtypes.positive_int, help="total epochs (default 500)")
    clip = t.add_mutually_exclusive_group()
    clip.add_argument("--clip", type=argtypes.positive_float, metavar="THETA", help="default 1")
    clip.add_argument("--no-clip", action="store_true", help="no gradient clipping")
    t.add_argument("--sampling", choices=data.SAMPLING_KINDS, help="default sequential")
    t.add_argument("--activation", choices=("tanh", "relu"), help="default tanh")
    t.add_argument("--embedding", choices=("onehot", "learned"), help="default onehot")
    t.add_argument(
        "--embed-dim", type=argtypes.positive_int, help="size of a learned embedding (32)"
    )
    t.add_argument("--loss", choices=("all-steps", "last-step"), help="default all-steps")
    state = t.add_mutually_exclusive_group()
    state.add_argument(
        "--no-detach",
        action="store_true",
        help="keep the state in the graph across minibatches (sequential only)",
    )
    state.add_argument(
        "--reset-state",
        action="store_true",
        help="start every minibatch from a zero state, as d2l's use_random_iter=True run does "
        "on its sequential iterator (random sampling always does)",
    )
    t.add_argument(
        "--train-fraction",
        type=argtypes.fraction,
        help="train on this first part of the corpus, report perplexity on the rest",
    )
    t.add_argument("--plot", metavar="PNG", help="write perplexity per epoch (and held-out)")
    t.add_argument("--grad", choices=("autograd", "bptt"), help="default: the backend's first")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--eager", action="store_true", help="no jit / tf.function")
    mode.add_argument(
        "--compile",
        nargs="?",
        const=True,
        metavar="MODE",
        help="compile where optional: torch.compile (torch); MODE reduce-overhead replays the "
        "step as CUDA graphs (torch on a GPU)",
    )
    t.add_argument("--checkpoint", metavar="PATH", help="write a safetensors checkpoint here")
    t.add_argument(
        "--save-every", type=argtypes.positive_int, metavar="N", help="save every N epochs"
    )
    t.add_argument("--resume", metavar="CKPT", help="continue a checkpoint up to --epochs")
    t.add_argument("--json", action="store_true", help="one JSON document on stdout")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="continue a prefix from a checkpoint")
    g.add_argument("--checkpoint", metavar="PATH", required=True)
    _add_backend_args(g, None)
    g.add_argument("--prefix", default="time traveller")
    g.add_argument(
        "--num-chars", type=argtypes.integer, default=50, help="how many tokens to predict"
    )
    how = g.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="argmax (the default)")
    how.add_argument(
        "--temperature", type=argtypes.positive_float, help="sample softmax(logits / T)"
    )
    how.add_argument("--alpha", type=argtypes.positive_float, help="sample q ∝ P^α (T = 1/α)")
    g.add_argument("--plot", metavar="PNG", help="plot the next-token distribution for --alphas")
    g.add_argument(
        "--alphas", type=argtypes.alphas, default=[0.5, 1.0, 2.0, 4.0], metavar="A,B,..."
    )
    g.add_argument("--seed", type=argtypes.integer, default=0, help="seed of the sampling uniforms")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="perplexity of a checkpoint on a text")
    e.add_argument("--checkpoint", metavar="PATH", required=True)
    e.add_argument("--corpus", metavar="FILE", help="default: The Time Machine")
    _add_backend_args(e, None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser(
        "clipping", help="train with and without clipping; plot the gradient norm per step"
    )
    _add_backend_args(x, "float32")
    x.add_argument("--corpus", metavar="FILE")
    x.add_argument("--epochs", type=argtypes.positive_int, default=50)
    x.add_argument("--lr", type=argtypes.positive_float, default=1.0)
    x.add_argument("--clip", type=argtypes.positive_float, default=1.0, metavar="THETA")
    x.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    x.add_argument("--num-hiddens", type=argtypes.positive_int, default=512)
    x.add_argument("--plot", metavar="PNG", required=True)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=_clipping)

    c = sub.add_parser(
        "conform",
        help="prove the backends agree with NumPy float64, and core with the plain reference",
    )
    c.add_argument("--backends", nargs="+", default=list(backends.BACKENDS), metavar="NAME")
    c.add_argument(
        "--dtype", nargs="+", choices=("float32", "float64"), default=["float64", "float32"]
    )
    c.add_argument("--device", default="cpu", help="cpu (default), auto, gpu or gpu:N")
    c.add_argument("--no-oracles", action="store_true", help="skip torch.nn.RNN and Keras")
    c.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference/* cells (core against conformance/reference.py)",
    )
    c.add_argument(
        "--corpus",
        metavar="FILE",
        help="The Time Machine for the reference/vocab cells (default: the usual lookup)",
    )
    c.add_argument("--json", action="store_true", help="one JSON document on stdout")
    c.set_defaults(func=cmd_conform)

    from rosetta_rnn import corpus_stats
    from rosetta_rnn.benchmarks import cli as bench_cli

    corpus_stats.register(sub)
    bench_cli.register(sub)

    b = sub.add_parser("backends", help="list the backends, installed or not")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)
    return parser


def _train(args: argparse.Namespace) -> int:
    from rosetta_rnn.train_command import cmd_train

    return cmd_train(args)


class _Model:
    """A checkpoint loaded on the backend, dtype and device the command asks for."""

    def __init__(self, args: argparse.Namespace) -> None:
        tensors, self.meta = checkpoint.load_model(args.checkpoint)
        self.vocab = data.Vocab.from_tokens(self.meta["vocab"])
        self.token = self.meta.get("token", "char")
        self.config = self.meta.get("config", {})
        self.activation = self.config.get("activation", "tanh")
        self.dtype = args.dtype or self.meta["dtype"]
        self.ops = backends.load(args.backend).make_ops(self.dtype, args.device)
        self.params = model.to_backend(
            self.ops, {k: v.astype(self.dtype) for k, v in tensors.items()}
        )


def cmd_generate(args: argparse.Namespace) -> int:
    m = _Model(args)
    ops, params, vocab, token, dtype, activation = (
        m.ops,
        m.params,
        m.vocab,
        m.token,
        m.dtype,
        m.activation,
    )
    if args.num_chars < 0:
        raise UserError(f"--num-chars must be >= 0, got {args.num_chars}")
    tokens = data.split_text(args.prefix, token)
    if not tokens:
        raise UserError("--prefix is empty; give at least one token")
    unknown = sorted({t for t in tokens if t not in vocab.token_to_idx})
    if unknown:
        print(
            f"{PROG}: warning: prefix tokens not in the vocabulary become <unk>: "
            + ", ".join(repr(t) for t in unknown),
            file=sys.stderr,
        )
    rng = np.random.default_rng(args.seed)
    temperature = args.temperature or (1.0 / args.alpha if args.alpha else None)
    if args.plot:
        plots.check_plot_path(args.plot)
        probs = {
            a: sampling.next_distribution(ops, params, vocab.lookup(tokens), a, activation)
            for a in args.alphas
        }
        title = f"next token after {args.prefix!r}: q ∝ P^α"
        plots.distributions(probs, vocab.idx_to_token, args.plot, title)
        print(f"plot written to {args.plot}", file=sys.stderr)
    ids = sampling.predict(
        ops,
        params,
        vocab.lookup(tokens),
        args.num_chars,
        temperature=temperature,
        rng=rng,
        activation=activation,
    )
    continuation = vocab.to_tokens(ids[len(tokens) :])
    sep = "" if token == "char" else " "
    text = args.prefix + (sep if continuation else "") + data.join_tokens(continuation, token)
    if args.json:
        print(
            json.dumps(
                {
                    "text": text,
                    "prefix": args.prefix,
                    "backend": args.backend,
                    "device": ops.device,
                    "dtype": dtype,
                }
            )
        )
    else:
        print(text)
    return 0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [backends.info(name) for name in backends.BACKENDS]
    if args.json:
        print(json.dumps(rows))
        return 0
    table = []
    for r in rows:
        if not r["installed"]:
            table.append([r["backend"], "no", "-", "-", "-", "-", "-"])
            continue
        f64 = ",".join(d for d, ok in r["float64"].items() if ok) or "none"
        table.append(
            [
                r["backend"],
                "yes",
                r["version"],
                ",".join(r["devices"]),
                f64,
                ",".join(r["grad_modes"]),
                ",".join(r["compile_modes"]),
            ]
        )
    headers = ["backend", "installed", "version", "devices", "float64 on", "grad", "compile"]
    print(format_table(headers, table))
    for r in rows:
        if not r["installed"]:
            print(f"{r['backend']}: {r['error']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity on a text the model may not have seen; unknown tokens count as <unk>."""
    m = _Model(args)
    source = data.locate_time_machine(args.corpus)
    tokens = [t for line in data.tokenize(data.read_lines(source), m.token) for t in line]
    if len(tokens) < 2:
        raise UserError(f"corpus {source} has fewer than 2 tokens after preprocessing")
    ids = np.asarray(m.vocab.lookup(tokens), dtype=np.int64)
    unknown = int(sum(1 for t in tokens if t not in m.vocab.token_to_idx))
    num_steps = int(m.config.get("num_steps", 35))
    ppl, n = perplexity_on(m.ops, m.params, ids, num_steps, m.activation)
    if args.json:
        print(
            json.dumps(
                {
                    "perplexity": ppl,
                    "tokens": n,
                    "unknown_tokens": unknown,
                    "corpus": str(source),
                    "backend": args.backend,
                    "dtype": m.dtype,
                }
            )
        )
    else:
        print(
            f"perplexity {ppl:.3f} on {n} predicted tokens of {source} "
            f"({unknown} outside the vocabulary, counted as <unk>)"
        )
    return 0


def _clipping(args: argparse.Namespace) -> int:
    from rosetta_rnn.experiments import cmd_clipping

    return cmd_clipping(args)


def cmd_conform(args: argparse.Namespace) -> int:
    from rosetta_rnn.conformance import runner

    for name in args.backends:
        backends.check_name(name)
    report = runner.run(
        args.backends,
        args.dtype,
        args.device,
        with_oracles=not args.no_oracles,
        with_reference=not args.no_reference,
        corpus=args.corpus,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0 if report.passed else 1
    columns = list(dict.fromkeys((c.backend, c.dtype, c.device) for c in report.cells))
    checks_order = list(dict.fromkeys(c.check for c in report.cells))
    by_key = {(c.check, c.backend, c.dtype, c.device): c for c in report.cells}
    rows = []
    for check in checks_order:
        row = [check]
        for backend, dtype, device in columns:
            cell = by_key.get((check, backend, dtype, device))
            row.append(
                "" if cell is None else f"{cell.max_error:.1e} {'ok' if cell.passed else 'FAIL'}"
            )
        rows.append(row)
    headers = ["check"] + [
        f"{b}-{d}" + ("" if dev == "cpu" else f"-{dev}") for b, d, dev in columns
    ]
    print(format_table(headers, rows))
    for line in report.skipped:
        print(f"skipped {line}")
    failed = [c for c in report.cells if not c.passed]
    for c in failed:
        print(
            f"FAIL {c.check} [{c.backend}-{c.dtype}-{c.device}]: max error {c.max_error:.3g} > "
            f"{c.tolerance:g}: {c.message}"
        )
    print(f"{len(report.cells) - len(failed)} passed, {len(failed)} failed")
    return 0 if report.passed else 1


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

"""``generate`` and ``eval``: a checkpoint loaded on any backend, continued or scored."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.core import checkpoint, data, model, sampling
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.evaluation import perplexity_on
from rosetta_rnn.helpers import PROG, add_backend_args


def register(sub: Any) -> None:
    """Add ``generate`` and ``eval`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    g = sub.add_parser("generate", help="continue a prefix from a checkpoint")
    g.add_argument("--checkpoint", metavar="PATH", required=True)
    add_backend_args(g, None)
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
    add_backend_args(e, None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


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

"""``generate`` and ``eval``: a checkpoint loaded on any backend, continued or scored."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.core import cells, checkpoint, data, model, run, sampling
from rosetta_rnn.core.errors import CheckpointError, UserError
from rosetta_rnn.core.evaluation import perplexity_on, window_perplexity
from rosetta_rnn.helpers import CORPUS_HELP, PROG, add_backend_args


def register(sub: Any) -> None:
    """Add ``generate`` and ``eval`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    g = sub.add_parser(
        "generate",
        help="continue a prefix from a checkpoint",
        description="Load a checkpoint written by `train` (on any backend) and continue a "
        "prefix. The prefix is read the way the corpus was: letters only, lower case, "
        "every run of anything else one space. Greedy by default (ties go to the lowest index); "
        "--temperature or --alpha sample instead, with uniforms from one seeded NumPy "
        "generator, so a seed gives the same text on every backend. A sampled <unk> (a token "
        "outside the vocabulary) prints as \ufffd in character text.",
    )
    g.add_argument(
        "--checkpoint", metavar="PATH", required=True, help="a checkpoint written by train"
    )
    add_backend_args(g, None)
    g.add_argument(
        "--prefix",
        metavar="TEXT",
        help="the text to continue (default: the run's recipe's, 'time traveller'; d2l-1.0: "
        "'it has')",
    )
    g.add_argument(
        "--num-chars",
        type=argtypes.integer,
        metavar="N",
        help="how many tokens to predict (characters, or words for a word model) (default: "
        "the recipe's, 50; d2l-1.0: 20)",
    )
    how = g.add_mutually_exclusive_group()
    how.add_argument(
        "--greedy", action="store_true", help="argmax at every step (the default sampling)"
    )
    how.add_argument(
        "--temperature",
        type=argtypes.positive_float,
        metavar="T",
        help="sample from softmax(logits / T) (default: greedy)",
    )
    how.add_argument(
        "--alpha",
        type=argtypes.positive_float,
        metavar="A",
        help="sample from q ∝ P^α, that is T = 1/α (default: greedy)",
    )
    g.add_argument(
        "--plot",
        metavar="PNG",
        help="also plot the next-token distribution after the prefix for each of --alphas "
        "(default: no plot)",
    )
    g.add_argument(
        "--alphas",
        type=argtypes.alphas,
        default=[0.5, 1.0, 2.0, 4.0],
        metavar="A,B,...",
        help="the α of each distribution in --plot (default: 0.5,1,2,4)",
    )
    g.add_argument(
        "--seed",
        metavar="N",
        type=argtypes.integer,
        default=0,
        help="seed of the sampling uniforms",
    )
    g.add_argument("--json", action="store_true", help="one JSON document on stdout")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser(
        "eval",
        help="perplexity of a checkpoint on a text",
        description="Score a checkpoint on a text it may not have seen: the text is read as "
        "its run read its own (line by line, or whole with --recipe d2l-1.0) with the "
        "checkpoint's tokenisation and vocabulary (tokens "
        "outside it count as <unk>), and scored as the run scored its held-out text: d2l "
        "0.17's in one pass with the state carried across chunks of the run's --num-steps; "
        "d2l 1.0's windows (--sampling windows) every window of --num-steps + 1 tokens, in "
        "order, each minibatch from a zero state, with the book's plotted mean beside it.",
    )
    e.add_argument(
        "--checkpoint", metavar="PATH", required=True, help="a checkpoint written by train"
    )
    e.add_argument("--corpus", metavar="FILE", help=CORPUS_HELP)
    add_backend_args(e, None)
    e.add_argument("--json", action="store_true", help="one JSON document on stdout")
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
        try:  # the run it was trained with: how its text was read, its prefix
            self.spec = run.RunSpec.from_meta(self.meta, args.checkpoint)
            self.cell = self.spec.model_cell
        except CheckpointError:  # a model alone (convert writes one): the chapter's reading
            self.spec = run.RunSpec(token=self.token)
            self.cell = cells.cell_of(self.params)  # rnn, gru/reset-before ..., lstm


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
    if args.prefix is None:
        args.prefix = m.spec.prefixes[0]
    if args.num_chars is None:
        args.num_chars = m.spec.num_preds
    if args.num_chars < 0:
        raise UserError(f"--num-chars must be >= 0, got {args.num_chars}")
    prefix, tokens = data.read_prefix(args.prefix, token)
    if not prefix.strip():
        raise UserError(
            f"--prefix {args.prefix!r} has no letters; the corpus keeps letters only, so the "
            "prefix is read the same way"
        )
    if prefix != args.prefix:
        print(
            f"{PROG}: note: prefix read as {prefix!r}, as the corpus was (letters only, "
            "lower case, the rest one space)",
            file=sys.stderr,
        )
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
        title = f"next token after {prefix!r}: q ∝ P^α"
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
    text = prefix + (sep if continuation else "") + data.join_tokens(continuation, token)
    unk_drawn = continuation.count("<unk>")
    if unk_drawn and token == "char":
        print(
            f"{PROG}: note: the model drew <unk> {unk_drawn} time(s), shown as {data.UNK_CHAR}",
            file=sys.stderr,
        )
    if args.json:
        doc = {
            "text": text,
            "prefix": args.prefix,
            "prefix_read_as": prefix,
            "num_chars": args.num_chars,
            "sampling": "greedy" if temperature is None else "temperature",
            "temperature": temperature,
            "seed": args.seed,
            "unk_drawn": unk_drawn,
            "cell": m.cell,
            "checkpoint": args.checkpoint,
            "backend": args.backend,
            "device": ops.device,
            "dtype": dtype,
        }
        print(json.dumps(doc))
    else:
        print(text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity on a text the model may not have seen; unknown tokens count as <unk>."""
    m = _Model(args)
    source = data.locate_time_machine(args.corpus)
    tokens = data.read_tokens(source, m.token, m.spec.preprocess)  # as the run read its text
    if len(tokens) < 2:
        raise UserError(f"corpus {source} has fewer than 2 tokens after preprocessing")
    ids = np.asarray(m.vocab.lookup(tokens), dtype=np.int64)
    unknown = int(sum(1 for t in tokens if t not in m.vocab.token_to_idx))
    num_steps = int(m.config.get("num_steps", m.spec.num_steps))
    book = None
    if m.spec.sampling == "windows":  # as the run validated: every window, each from zero
        count = data.num_windows(len(ids), num_steps)
        if count == 0:
            raise UserError(
                f"corpus {source} has {len(ids)} tokens, too few for one window of "
                f"{num_steps + 1} (the run's --num-steps + 1)"
            )
        last_step = m.spec.loss == "last-step"
        ppl, book = window_perplexity(
            m.ops,
            m.params,
            ids,
            np.arange(count),
            m.spec.batch_size,
            num_steps,
            m.activation,
            m.cell,
            last_step,
        )
        n = count * (1 if last_step else num_steps)
        how = f"{count} windows of {num_steps + 1}, {m.spec.batch_size} a minibatch"
    else:  # as the run's held-out text: one pass, the state carried across chunks
        ppl, n = perplexity_on(m.ops, m.params, ids, num_steps, m.activation, m.cell)
        how = f"one pass, the state carried across chunks of {num_steps}"
    if args.json:
        doc = {
            "perplexity": ppl,
            "tokens": n,
            "unknown_tokens": unknown,
            "reading": "windows" if book is not None else "carried",
            "cell": m.cell,
            "corpus": str(source),
            "backend": args.backend,
            "dtype": m.dtype,
        }
        if book is not None:
            doc["book_perplexity"] = book
        print(json.dumps(doc))
    else:
        book_part = "" if book is None else f" (the book's plotted mean {book:.3f})"
        print(
            f"perplexity {ppl:.3f}{book_part} on {n} predicted tokens of {source}, {how} "
            f"({unknown} outside the vocabulary, counted as <unk>)"
        )
    return 0

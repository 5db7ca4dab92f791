"""The flags of a run's specification (``core.run.RunSpec``), and the spec they give.

Each setting defaults to None, so that ``--resume`` can tell what was given explicitly; the
spec (a recipe, the chapter's by default) holds the values a flag not given takes.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from typing import Any

from rosetta_rnn import argtypes
from rosetta_rnn.core import data, run
from rosetta_rnn.core.errors import UserError


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The spec's flags: the recipe, the seed, the text, the minibatches, the model and the
    trainer. A default that differs between the recipes says both."""
    parser.add_argument(
        "--recipe",
        choices=tuple(run.RECIPES),
        help="the edition whose chapter the run reproduces: d2l 0.17's 8.5 (partitioned "
        "minibatches of the first 10,000 characters, 512 hidden, 500 epochs) or d2l 1.0's 9.5 "
        "(every 33-character window of the whole text, 10,000 shuffled in minibatches of "
        "1,024 and 5,000 for validation, 32 hidden, 100 epochs; GRU/LSTM lr 4, 50 epochs as "
        "10.1, 10.2); every flag below changes one setting of it (default: d2l-0.17)",
    )
    parser.add_argument(
        "--seed",
        metavar="N",
        type=argtypes.integer,
        help="seed of the one core generator (default 0)",
    )
    parser.add_argument("--token", choices=data.TOKEN_KINDS, help="char or word (default: char)")
    parser.add_argument(
        "--max-tokens",
        type=argtypes.integer,
        metavar="N",
        help="train on the first N tokens; <= 0 keeps the whole text (default: 10000; d2l-1.0: 0)",
    )
    parser.add_argument(
        "--batch-size",
        metavar="B",
        type=argtypes.positive_int,
        help="sequences per minibatch (default: 32; d2l-1.0: 1024)",
    )
    parser.add_argument(
        "--num-steps",
        metavar="T",
        type=argtypes.positive_int,
        help="tokens per sequence (default: 35; d2l-1.0: 32)",
    )
    parser.add_argument(
        "--num-hiddens",
        metavar="H",
        type=argtypes.positive_int,
        help="hidden units (default: 512, 256 with --cell gru or lstm, as in d2l 9.1 and "
        "9.2; d2l-1.0: 32)",
    )
    parser.add_argument("--lr", type=argtypes.positive_float, help="SGD learning rate (default: 1)")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument(
        "--clip",
        type=argtypes.positive_float,
        metavar="THETA",
        help="clip the gradient to global norm θ: g·min(1, θ/‖g‖) (default: 1)",
    )
    clip.add_argument("--no-clip", action="store_true", help="no gradient clipping")
    parser.add_argument(
        "--sampling",
        choices=data.SAMPLING_KINDS,
        help="minibatches of consecutive text carrying the state, random offsets with a "
        "fresh state, or d2l 1.0's shuffled windows, one starting at each token, with a fresh "
        "state (default: sequential; d2l-1.0: windows)",
    )
    parser.add_argument(
        "--cell",
        choices=run.CELL_KINDS,
        help="the recurrent cell: the chapter's RNN, d2l 9.1's GRU or 9.2's LSTM (default: rnn)",
    )
    parser.add_argument(
        "--gru",
        choices=run.GRU_FORMS,
        help="with --cell gru: the reset gate before the recurrent matmul (d2l, Keras "
        "reset_after=False) or after it (torch.nn.GRU, cuDNN) (default: reset-before)",
    )
    parser.add_argument(
        "--forget-bias",
        metavar="F",
        type=argtypes.finite_float,
        help="with --cell lstm: the forget gate's initial bias (default: 0, as d2l; Keras' "
        "unit_forget_bias is 1)",
    )
    parser.add_argument(
        "--activation",
        choices=("tanh", "relu"),
        help="the RNN's hidden layer's (default: tanh; the gated cells' are fixed)",
    )
    parser.add_argument(
        "--embedding",
        choices=("onehot", "learned"),
        help="one-hot inputs, or a learned embedding table (default: onehot)",
    )
    parser.add_argument(
        "--embed-dim",
        metavar="D",
        type=argtypes.positive_int,
        help=f"size of a learned embedding (default: {run.LEARNED_EMBED_DIM})",
    )
    parser.add_argument(
        "--loss",
        choices=("all-steps", "last-step"),
        help="predict every next token, or only each sequence's last (default: all-steps)",
    )
    state = parser.add_mutually_exclusive_group()
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
    parser.add_argument(
        "--preprocess",
        choices=data.PREPROCESS_KINDS,
        help="read the text line by line, each stripped and joined with nothing between "
        "(d2l 0.17), or whole, a line break one space (d2l 1.0) (default: lines; d2l-1.0: "
        "whole)",
    )
    parser.add_argument(
        "--vocab-order",
        choices=data.VOCAB_ORDERS,
        help="the vocabulary: <unk> then by frequency (d2l 0.17), or the sorted tokens and "
        "<unk> (d2l 1.0) (default: frequency; d2l-1.0: sorted)",
    )
    parser.add_argument(
        "--num-train",
        metavar="N",
        type=argtypes.positive_int,
        help="with --sampling windows: train on the windows starting at tokens 0 .. N-1 "
        "(default: 10000)",
    )
    parser.add_argument(
        "--num-val",
        metavar="N",
        type=argtypes.integer,
        help="with --sampling windows: validate on the next N windows, in order, after each "
        "epoch; 0: none (default: 5000)",
    )
    parser.add_argument(
        "--train-fraction",
        metavar="F",
        type=argtypes.fraction,
        help="train on this first part of the corpus, report perplexity on the rest "
        "(default: train on all of it)",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings given on the command line (None: not given)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(run.RunSpec)}
    if args.no_clip:
        given["clip"] = math.inf
    given["detach"] = False if args.no_detach else None
    given["reset_state"] = True if args.reset_state else None
    return given


def _embedding(args: argparse.Namespace) -> str | None:
    """--embedding as asked (an --embed-dim alone asks for a learned one); None: not given."""
    if args.embedding == "onehot" and args.embed_dim is not None:
        raise UserError("--embed-dim goes with --embedding learned")
    return args.embedding or ("learned" if args.embed_dim is not None else None)


def spec_from_args(args: argparse.Namespace, meta: dict[str, Any] | None) -> run.RunSpec:
    """The run's specification from the flags given, or the checkpoint's (``meta``) with
    ``--resume``, which a flag may repeat but not change."""
    given = {k: v for k, v in _given(args).items() if v is not None}
    saved = run.RunSpec.from_meta(meta, args.resume) if meta is not None else None
    return run.resolve(given, _embedding(args), saved, args.resume or "")

"""``rosetta-rnn clipping``: the chapter's question "why clip?", answered with one command.

Two runs from the same seed, one clipped at θ and one not; the global gradient norm of every
step (before clipping) is plotted for both, and the largest norm and final perplexity printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.core import data, model
from rosetta_rnn.core.training import TrainConfig, Trainer, TrainingDiverged
from rosetta_rnn.helpers import add_backend_args


def register(sub: Any) -> None:
    """Add ``clipping`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    x = sub.add_parser(
        "clipping", help="train with and without clipping; plot the gradient norm per step"
    )
    add_backend_args(x, "float32")
    x.add_argument("--corpus", metavar="FILE")
    x.add_argument("--epochs", type=argtypes.positive_int, default=50)
    x.add_argument("--lr", type=argtypes.positive_float, default=1.0)
    x.add_argument("--clip", type=argtypes.positive_float, default=1.0, metavar="THETA")
    x.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    x.add_argument("--num-hiddens", type=argtypes.positive_int, default=512)
    x.add_argument("--plot", metavar="PNG", required=True)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_clipping)


def run(args: argparse.Namespace, theta: float) -> dict[str, Any]:
    backend = backends.load(args.backend)
    ops = backend.make_ops(args.dtype, args.device)
    corpus = data.load_corpus(data.locate_time_machine(args.corpus), "char", 10000)
    cfg = TrainConfig(
        num_hiddens=args.num_hiddens,
        lr=args.lr,
        epochs=args.epochs,
        clip=theta,
        activation=args.activation,
    )
    rng = np.random.default_rng(0)
    init = model.init_params(len(corpus.vocab), cfg.num_hiddens, rng, args.dtype)
    step = backend.make_train_step(ops, activation=cfg.activation)
    trainer = Trainer(ops, step, model.to_backend(ops, init), corpus.ids, cfg, rng)
    norms: list[float] = []
    perplexity, diverged = math.nan, None
    try:
        for _ in range(cfg.epochs):
            result = trainer.run_epoch()
            norms += result.grad_norms
            perplexity = result.perplexity
    except TrainingDiverged as e:
        diverged = str(e)
    return {
        "theta": None if math.isinf(theta) else theta,
        "grad_norms": norms,
        "max_grad_norm": max(norms) if norms else math.nan,
        "perplexity": perplexity,
        "diverged": diverged,
    }


def cmd_clipping(args: argparse.Namespace) -> int:
    plots.check_plot_path(args.plot)
    runs = {
        f"clipped at θ = {args.clip:g}": run(args, args.clip),
        "no clipping": run(args, math.inf),
    }
    title = f"{args.backend} {args.activation}, lr {args.lr:g}: gradient norm per step"
    plots.grad_norms({k: v["grad_norms"] for k, v in runs.items()}, args.clip, args.plot, title)
    human = sys.stderr if args.json else sys.stdout
    for label, r in runs.items():
        end = f"diverged: {r['diverged']}" if r["diverged"] else f"perplexity {r['perplexity']:.3f}"
        print(f"{label}: largest gradient norm {r['max_grad_norm']:.4g}, {end}", file=human)
    print(f"plot written to {args.plot}", file=human)
    if args.json:
        print(json.dumps({"runs": runs}))
    return 0

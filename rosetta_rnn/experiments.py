"""``rosetta-rnn clipping``: the chapter's question "why clip?", answered with one command.

Two runs from the same seed, one clipped at θ and one not; the global gradient norm of every
step (before clipping) is plotted for both, and the largest norm and final perplexity printed.
Clipping scales g by min(1, θ/‖g‖), so while ‖g‖ ≤ θ it changes nothing: a clipped run whose
norm never passed θ is the unclipped run, step for step, and the plot and the output say so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import Any

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.core import data
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.training import TrainingDiverged
from rosetta_rnn.helpers import CORPUS_HELP, add_backend_args


def register(sub: Any) -> None:
    """Add ``clipping`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    x = sub.add_parser(
        "clipping",
        help="train with and without clipping; plot the gradient norm per step",
        description="Why clip? Train twice from the same seed (The Time Machine, the chapter's "
        "model), once with the gradient clipped to norm θ and once without, and plot the "
        "global gradient norm of every SGD step (before clipping) for both; print each run's "
        "largest norm and final perplexity. With the chapter's settings the norm first passes "
        "θ = 1 near step 1300 (epoch 160 or so), so shorter runs show two identical curves, "
        "and the plot says so (docs/experiments.md shows 300 epochs).",
    )
    add_backend_args(x, "float32")
    x.add_argument("--corpus", metavar="FILE", help=CORPUS_HELP)
    x.add_argument(
        "--epochs", metavar="N", type=argtypes.positive_int, default=50, help="epochs of each run"
    )
    x.add_argument(
        "--recipe",
        choices=tuple(run_spec.RECIPES),
        default="d2l-0.17",
        help="the edition whose run is trained twice (default: d2l-0.17)",
    )
    x.add_argument(
        "--lr", type=argtypes.positive_float, help="SGD learning rate (default: the recipe's, 1)"
    )
    x.add_argument(
        "--clip",
        type=argtypes.positive_float,
        default=1.0,
        metavar="THETA",
        help="θ of the clipped run",
    )
    x.add_argument(
        "--activation", choices=("tanh", "relu"), default="tanh", help="the hidden layer's"
    )
    x.add_argument(
        "--num-hiddens",
        metavar="H",
        type=argtypes.positive_int,
        help="hidden units (default: the recipe's, 512; d2l-1.0: 32)",
    )
    x.add_argument("--plot", metavar="PNG", required=True, help="write the plot here (required)")
    x.add_argument(
        "--json", action="store_true", help="one JSON document on stdout (the norms of every step)"
    )
    x.set_defaults(func=cmd_clipping)


def run(args: argparse.Namespace, theta: float, progress: Progress | None = None) -> dict[str, Any]:
    # the recipe's run (seed 0; 0.17: its 10000 characters, 32 × 35 minibatches) with the asked θ
    recipe = run_spec.RECIPES[args.recipe]
    spec = replace(
        recipe,
        num_hiddens=args.num_hiddens or recipe.num_hiddens,
        lr=args.lr or recipe.lr,
        clip=theta,
        activation=args.activation,
        dtype=args.dtype,
    )
    text = run_spec.load_text(spec, data.locate_time_machine(args.corpus))
    engine = run_spec.engine(spec, backends.load(args.backend), args.device, name=args.backend)
    trainer = run_spec.build(spec, engine, text, args.epochs).trainer
    cfg = trainer.config
    norms: list[float] = []
    perplexity, diverged = math.nan, None
    try:
        for _ in range(cfg.epochs):
            result = trainer.run_epoch()
            norms += result.grad_norms
            perplexity = result.perplexity
            if progress is not None:
                progress.advance(
                    info=f"perplexity {perplexity:.2f}, largest ‖g‖ so far {max(norms):.3g}"
                )
    except TrainingDiverged as e:
        diverged = str(e)
    return {
        "theta": None if math.isinf(theta) else theta,
        "grad_norms": norms,
        "max_grad_norm": max(norms) if norms else math.nan,
        "steps_clipped": sum(1 for g in norms if g > theta),
        "perplexity": perplexity,
        "diverged": diverged,
    }


def cmd_clipping(args: argparse.Namespace) -> int:
    plots.check_plot_path(args.plot)
    human = sys.stderr if args.json else sys.stdout
    clipped, unclipped = f"clipped at θ = {args.clip:g}", "no clipping"
    with Progress(clipped, total=args.epochs, unit="epochs", auto_refresh=False) as progress:
        runs = {clipped: run(args, args.clip, progress)}
        progress.describe(unclipped, total=args.epochs, reset=True)
        runs[unclipped] = run(args, math.inf, progress)
    note = ""
    if runs[clipped]["steps_clipped"] == 0:
        note = (
            f"‖g‖ never passed θ = {args.clip:g} in {args.epochs} epochs: clipping never acted, "
            "so the two runs are the same, step for step (the dashed curve lies on the solid one)"
        )
    lr = args.lr or run_spec.RECIPES[args.recipe].lr
    what = f"{args.backend} {args.dtype} {args.activation} ({args.recipe}), lr {lr:g}"
    title = f"{what}: gradient norm per step"
    # The results first: a plot that fails now (its folder gone, a full disk) loses no run.
    for label, r in runs.items():
        end = f"diverged: {r['diverged']}" if r["diverged"] else f"perplexity {r['perplexity']:.3f}"
        print(f"{label}: largest gradient norm {r['max_grad_norm']:.4g}, {end}", file=human)
    steps = len(runs[clipped]["grad_norms"])
    print(
        f"clipping acted on {runs[clipped]['steps_clipped']} of {steps} steps"
        + (f"; {note}" if note else ""),
        file=human,
    )
    if args.json:
        print(json.dumps({"runs": runs, "clipping_acted": not note}), flush=True)
    plots.grad_norms(
        {k: v["grad_norms"] for k, v in runs.items()}, args.clip, args.plot, title, note
    )
    print(f"plot written to {args.plot}", file=human)
    return 0

"""``verify``: someone's RNN (a torch, Keras, Flax or Gluon model, forward and step functions,
an ONNX file) against the reference, with the known mistake named when it differs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rosetta_rnn.core.errors import UserError

DESCRIPTION = """\
Check your own implementation of the chapter's model against the reference, and name the
mistake when it differs.

MODULE:OBJECT is an importable module or a .py file, then a name in it. The object is a
torch.nn.Module holding one nn.RNN/GRU/LSTM (or nn.RNNCell/GRUCell/LSTMCell) and one
nn.Linear, or the chapter's parameters by name (d2l 1.0's RNNLMScratch), called as the book
calls it, module(X, state) with X (batch, steps) token ids; a Keras 3 model (any backend)
or a Flax model (linen or nnx) holding one recurrent layer or cell and one dense output, called
as model(X); or a function
forward(params, X, state) -> (logits, state) in NumPy, PyTorch, JAX or TensorFlow, params
named as the chapter's (W_xh, W_hh, b_h, W_hq, b_q; a GRU's and an LSTM's as d2l's) or
through --names; or a dict naming forward and any of step, predict, cell, names, inputs,
params_form, state_form. A .py file that imports MXNet (or --framework mxnet) is never imported
here: it runs in MXNet 1.9.1's own environment (rosetta-rnn backends --setup mxnet), through
its worker, and holds a Gluon Block (one rnn.RNN/GRU/LSTM layer and one nn.Dense, or the
chapter's parameters by name) called as d2l's MXNet RNNModel, model(X, state), or a forward
function on mxnet.np arrays; MXNet's autograd gives its gradients. An ONNX file (FILE.onnx,
any exporter's) is held to the weights it was exported from (--weights, any file convert
reads), or, written by rosetta-rnn convert, to its own tensors: run on ONNX Runtime (or
--runtime reference), it gets the rows of a model without gradients (logits, final state,
loss, generation), and an exporter's layout mistakes (linear_before_reset, the gate order,
B's rows) are named.

The subject is loaded with check weights that hide nothing (nonzero biases about a different
mean per gate, asymmetric matrices, each gate's weights at their own scale) and compared with
the reference (core's NumPy float64, itself held to the plain chapter by rosetta-rnn conform):
the logits of every step, the final state, the loss, every gradient (the framework's own
autodiff), one SGD step clipped and one not, a trajectory of SGD steps over the reference's
minibatches, greedy generation, and sampling with the reference's uniforms. A check that
differs tries every known mistake (gate order, transposed weights, a bias twice or missing,
the other GRU formulation, the forget bias, hard_sigmoid, batch-major labels, the loss's
average, clipping per parameter or with an epsilon, the state not carried ...) and names the
ones the subject reproduces; otherwise it says where the subject first departs.

Exit status: 0 every check that ran agrees, 1 a check fails, 2 the subject cannot be run as
given (one line)."""


def register(sub: Any) -> None:
    """Add ``verify`` to ``sub``."""
    from rosetta_rnn.conformance import verify as v
    from rosetta_rnn.conformance.user_subjects import FRAMEWORKS, INPUTS

    p = sub.add_parser(
        "verify",
        help="check your own RNN against the reference, and name the mistake",
        description=DESCRIPTION,
    )
    p.add_argument(
        "target",
        metavar="MODULE:OBJECT",
        help="the model or forward function, or an ONNX file (FILE.onnx)",
    )
    p.add_argument(
        "--cell",
        choices=tuple(v.CELL_NAMES),
        help="the model a function computes (default rnn; gru is d2l's reset-before GRU); a "
        "torch module says its own",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="default: float64 where the subject runs it, else float32 (said); a torch "
        "module's parameters decide",
    )
    p.add_argument(
        "--framework",
        choices=(*FRAMEWORKS, "mxnet"),
        help="what the function computes in (default: read from the modules its code uses; "
        "mxnet: the file runs in MXNet's own environment, as a file that imports mxnet does)",
    )
    p.add_argument(
        "--inputs",
        choices=INPUTS,
        help="how the function takes X: ids (steps, batch), ids (batch, steps), or one-hot "
        "(steps, batch, vocab) as d2l 0.17's rnn() (default: time-major; a Keras model: "
        "batch-major ids, or one-hot (batch, steps, vocab))",
    )
    p.add_argument(
        "--params",
        choices=("dict", "list"),
        default="dict",
        help="the parameters as a dict by name, or a list in d2l's get_params order",
    )
    p.add_argument(
        "--state",
        choices=("array", "tuple"),
        default="array",
        help="the state as H (the LSTM's (H, C)), or d2l 0.17's tuple (H,)",
    )
    p.add_argument(
        "--names",
        nargs="+",
        metavar="OURS=THEIRS",
        default=[],
        help="the function's name for each of the chapter's parameters it calls otherwise",
    )
    p.add_argument(
        "--step",
        metavar="NAME",
        help="the function's training step in the same module: step(params, X, Y, state, lr, "
        "theta) -> (params, state, loss) (default: none; the chapter's clipping and SGD on the "
        "function's own gradients)",
    )
    p.add_argument(
        "--predict",
        metavar="NAME",
        help="the function's sampler in the same module: predict(params, prefix, num_preds, "
        "temperature, uniforms) -> ids, given one uniform per sampled token (pick the first "
        "token whose cumulative probability exceeds it times the total) (default: none; "
        "generation runs the forward one token at a time)",
    )
    p.add_argument(
        "--trajectory",
        choices=v.TRAJECTORIES,
        default="sequential",
        help="the trajectory's minibatches: sequential with the state carried and detached, "
        "or random, each from a zero state",
    )
    p.add_argument(
        "--checks",
        nargs="+",
        metavar="CHECK",
        help=f"only these (default: all): {', '.join(c.name for c in v.CHECKS)}",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="an ONNX file's source: the weights it was exported from, in any format convert "
        "reads (a checkpoint, a torch state dict, Keras weights ...) (default: a file "
        "rosetta-rnn wrote is held to its own tensors)",
    )
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "reference"),
        help="what runs an ONNX file: ONNX Runtime, or onnx's reference evaluator (default: "
        "onnxruntime)",
    )
    p.add_argument("--seed", type=int, default=0, help="the check weights' seed")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_verify)


def _names(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            raise UserError(f"--names takes OURS=THEIRS pairs, got {pair!r}")
        out[ours] = theirs
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from rosetta_rnn.conformance import verify as v

    options: dict[str, Any] = {}
    if args.inputs is not None:
        options["inputs"] = args.inputs
    if v.is_onnx(args.target):
        obj: Any = args.target
        if args.framework or args.step or args.predict or args.names:
            raise UserError("an ONNX model is its own framework, step, sampler and names")
        if args.weights is not None:
            options["weights"] = args.weights
        if args.runtime is not None:
            options["runtime"] = args.runtime
    elif args.weights or args.runtime:
        raise UserError("--weights and --runtime are an ONNX file's (verify FILE.onnx)")
    else:
        mxnet = v.mxnet_target(args.target, args.framework)
        obj = mxnet if mxnet is not None else v.load_object(args.target)
    if v.is_onnx(obj):
        pass
    elif isinstance(obj, v.mxnet_subjects.MxnetFile):
        if args.step or args.predict:
            raise UserError(
                "an MXNet subject's step and sampler are the chapter's, run on its forward "
                "(--step and --predict are not read from an MXNet file)"
            )
        options.update(params_form=args.params, state_form=args.state, names=_names(args.names))
    elif not v.is_model(obj):
        options.update(
            framework=args.framework,
            params_form=args.params,
            state_form=args.state,
            names=_names(args.names),
        )
        where = args.target.rpartition(":")[0]
        for hook in ("step", "predict"):
            if getattr(args, hook):
                options[hook] = v.load_object(f"{where}:{getattr(args, hook)}")
        if isinstance(obj, dict):  # the dict's own settings win over the defaults
            options = {k: val for k, val in options.items() if k not in obj}
    elif args.framework or args.step or args.predict or args.names:
        raise UserError("a model is its own framework, step, sampler and names")
    report = v.verify(
        obj,
        cell=args.cell,
        dtype=args.dtype,
        trajectory=args.trajectory,
        seed=args.seed,
        checks_to_run=args.checks,
        **options,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.text())
    return 0 if report.passed else 1

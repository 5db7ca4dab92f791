"""``rosetta-rnn convert``: a checkpoint to the frameworks' own layers and the book's models
and back, exactly (the mapping is core.convert's; this module only reads the flags and prints
what was written)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rosetta_rnn.core import convert
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.helpers import PROG

DESCRIPTION = """\
Convert weights between a rosetta-rnn checkpoint and the frameworks' own layers, exactly: \
torch's nn.RNN/nn.GRU/nn.LSTM + nn.Linear (a state dict with d2l's names rnn.weight_ih_l0 ... \
linear.bias) and Keras' SimpleRNN/GRU/LSTM + Dense (rnn.kernel, rnn.recurrent_kernel, \
rnn.bias, dense.kernel, dense.bias, as get_weights() shapes them), MXNet Gluon's \
rnn.RNN/rnn.GRU/rnn.LSTM + nn.Dense (rnn.l0_i2h_weight, rnn.l0_h2h_weight, rnn.l0_i2h_bias, \
rnn.l0_h2h_bias, dense.weight, dense.bias: the parameters of d2l's MXNet RNNModel), and the \
state dicts of the \
book's current edition (d2l 1.0, PyTorch): d2l-scratch, RNNLMScratch around \
RNNScratch/GRUScratch/LSTMScratch (W_hq, b_q and the cell's rnn.W_xh, rnn.W_hh, rnn.b_h ...), \
and d2l-concise, RNNLM around d2l.RNN/d2l.GRU/d2l.LSTM (rnn.rnn.weight_ih_l0 ... linear.bias); \
and an ONNX model of the whole language model (tokens and state in, logits and state out), \
fused (ONNX's own RNN/GRU/LSTM operator) or decomposed (a Scan of MatMul, Add, Sigmoid, Tanh: \
float64 on ONNX Runtime too). Every other file is safetensors (no pickle); a native file needs \
no metadata of ours, and what convert writes records the cell, activations, vocabulary and the \
checkpoint's metadata, so it converts back.

Exact: the weights are regrouped, reordered and transposed, never recomputed, except a pair of \
biases that the target keeps as one (torch's bias_ih + bias_hh of an LSTM gate, say), which is \
summed, once. Refused, with the reason: a reset-before GRU to torch, d2l-concise or mxnet \
(nn.GRU and Gluon's rnn.GRU are reset-after), a Gluon RNN that does not say its activation \
(Gluon's default is relu, torch's tanh), a reset-after GRU to d2l-scratch (GRUScratch is \
reset-before), one GRU formulation asked as the other, a learned embedding (but to ONNX, \
which gathers rows of E), activations other than tanh/relu/sigmoid. ONNX needs the onnx extra: \
pip install 'rosetta-rnn[onnx]'."""


def register(sub: Any) -> None:
    """Add ``convert`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    p = sub.add_parser(
        "convert",
        help="convert weights between checkpoints, torch, Keras or Gluon layers and the book's "
        "models",
        description=DESCRIPTION,
    )
    p.add_argument("input", metavar="IN", help="the safetensors (or ONNX) file to convert")
    p.add_argument(
        "output",
        metavar="OUT",
        help="the file to write (replaced whole, atomically, only on success)",
    )
    p.add_argument(
        "--from",
        dest="source_format",
        choices=convert.FORMATS,
        help="IN's format: a rosetta checkpoint, a torch state dict, Keras weights, Gluon "
        "parameters (rnn.l0_i2h_weight ..., or save_parameters' rnn._unfused.0.i2h_weight ...), "
        "or a state "
        "dict of d2l 1.0's scratch (W_hq, rnn.W_hh ...) or concise (rnn.rnn.weight_hh_l0 ...) "
        "model, or an ONNX model (rosetta-rnn's, or one recurrent operator followed by a MatMul "
        "and Add or a Gemm, as torch's exporter writes it) (default: what IN says)",
    )
    p.add_argument(
        "--to",
        dest="target_format",
        choices=convert.FORMATS,
        required=True,
        help="OUT's format: rosetta, torch, keras, mxnet (Gluon's rnn.RNN/GRU/LSTM + nn.Dense; "
        "GRU reset-after), d2l-scratch (d2l 1.0's RNNLMScratch: "
        "RNNScratch, GRUScratch reset-before, LSTMScratch) or d2l-concise (d2l 1.0's RNNLM: "
        "d2l.RNN, d2l.GRU reset-after, d2l.LSTM) or onnx (see --onnx-form)",
    )
    p.add_argument(
        "--onnx-form",
        choices=("fused", "decomposed"),
        help="with --to onnx: fused, ONNX's RNN/GRU/LSTM operator (GRU linear_before_reset 1 "
        "for the reset-after GRU, 0 for the reset-before one; float32 on ONNX Runtime), or "
        "decomposed, a Scan of the cell in MatMul/Add/Sigmoid/Tanh (float32 and float64) "
        "(default: fused)",
    )
    p.add_argument(
        "--cell",
        choices=("rnn", "gru", "lstm"),
        help="the cell IN holds, checked against its shapes (default: what the shapes say)",
    )
    p.add_argument(
        "--gru",
        choices=("reset-before", "reset-after"),
        help="the GRU formulation IN holds, checked against it (torch's nn.GRU, d2l.GRU and "
        "Gluon's rnn.GRU are always reset-after, d2l's GRUScratch reset-before; a Keras GRU's "
        "bias shape says which); the other one is refused, as no weights convert one into the "
        "other (default: what IN says)",
    )
    p.add_argument(
        "--activation",
        choices=("tanh", "relu"),
        help="the RNN's activation, for a native file that does not record it (torch's "
        "nonlinearity, Keras' and Gluon's activation; the book's classes compute tanh) (default: "
        "what IN records, else tanh; a Gluon RNN that records none needs it, as Gluon's rnn.RNN "
        "defaults to relu)",
    )
    p.add_argument(
        "--vocab-from",
        metavar="CKPT",
        help="take the vocabulary from CKPT (a rosetta checkpoint, or a file convert wrote), "
        "for an IN that records none; --to rosetta needs one (default: IN's own)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    if args.onnx_form is not None and args.target_format != "onnx":
        raise UserError(f"--onnx-form is the form of an ONNX file; --to is {args.target_format}")
    done = convert.convert_file(
        args.input,
        args.output,
        args.source_format,
        args.target_format,
        cell=args.cell,
        gru=args.gru,
        vocab_from=args.vocab_from,
        activation=args.activation,
        onnx_form=args.onnx_form or "fused",
    )
    for note in done.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.json:
        w = done.weights
        doc = {
            "output": done.target,
            "from": w.fmt,
            "to": args.target_format,
            "layer": done.layer,
            "cell": w.layer.cell,
            "activation": w.activation,
            "vocab_size": w.vocab_size,
            "vocab_recorded": w.vocab is not None,
            "num_hiddens": w.layer.num_hiddens,
            "dtype": w.dtype,
            **({"onnx_form": w.form} if args.target_format == "onnx" else {}),
            "notes": done.notes,
        }
        print(json.dumps(doc))
    else:
        print(done.summary)
    return 0

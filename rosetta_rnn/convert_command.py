"""``rosetta-rnn convert``: a checkpoint to the frameworks' own layers and back, exactly (the
mapping is core.convert's; this module only reads the flags and prints what was written)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rosetta_rnn.core import convert
from rosetta_rnn.helpers import PROG

DESCRIPTION = """\
Convert weights between a rosetta-rnn checkpoint and the frameworks' own layers, exactly: \
torch's nn.RNN/nn.GRU/nn.LSTM + nn.Linear (a state dict with d2l's names rnn.weight_ih_l0 ... \
linear.bias) and Keras' SimpleRNN/GRU/LSTM + Dense (rnn.kernel, rnn.recurrent_kernel, \
rnn.bias, dense.kernel, dense.bias, as get_weights() shapes them). Every file is safetensors \
(no pickle); a native file needs no metadata of ours, and what convert writes records the cell, \
activations, vocabulary and the checkpoint's metadata, so it converts back.

Exact: the weights are regrouped, reordered and transposed, never recomputed, except a pair of \
biases that the target keeps as one (torch's bias_ih + bias_hh of an LSTM gate, say), which is \
summed, once. Refused, with the reason: a reset-before GRU to torch (nn.GRU is reset-after), \
one GRU formulation asked as the other, a learned embedding, activations other than \
tanh/relu/sigmoid."""


def register(sub: Any) -> None:
    """Add ``convert`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    p = sub.add_parser(
        "convert",
        help="convert weights between checkpoints and torch or Keras layers",
        description=DESCRIPTION,
    )
    p.add_argument("input", metavar="IN", help="the safetensors file to convert")
    p.add_argument(
        "output",
        metavar="OUT",
        help="the safetensors file to write (replaced whole, atomically, only on success)",
    )
    p.add_argument(
        "--from",
        dest="source_format",
        choices=convert.FORMATS,
        help="IN's format: a rosetta checkpoint, a torch state dict or Keras weights "
        "(default: what IN's tensor names say)",
    )
    p.add_argument(
        "--to",
        dest="target_format",
        choices=convert.FORMATS,
        required=True,
        help="OUT's format: rosetta, torch or keras",
    )
    p.add_argument(
        "--cell",
        choices=("rnn", "gru", "lstm"),
        help="the cell IN holds, checked against its shapes (default: what the shapes say)",
    )
    p.add_argument(
        "--gru",
        choices=("reset-before", "reset-after"),
        help="the GRU formulation IN holds, checked against it (torch's nn.GRU is always "
        "reset-after; a Keras GRU's bias shape says which); the other one is refused, as no "
        "weights convert one into the other (default: what IN says)",
    )
    p.add_argument(
        "--activation",
        choices=("tanh", "relu"),
        help="the RNN's activation, for a native file that does not record it (torch's "
        "nonlinearity, Keras' activation) (default: what IN records, else tanh)",
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
    done = convert.convert_file(
        args.input,
        args.output,
        args.source_format,
        args.target_format,
        cell=args.cell,
        gru=args.gru,
        vocab_from=args.vocab_from,
        activation=args.activation,
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
            "notes": done.notes,
        }
        print(json.dumps(doc))
    else:
        print(done.summary)
    return 0

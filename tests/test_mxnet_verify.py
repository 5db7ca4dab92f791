"""``rosetta-rnn verify`` on MXNet/Gluon subjects (tests/verify_mxnet_ports.py), run the way users
run it: the file is read here, never imported, and runs in MXNet 1.9.1's own environment
through its worker. Correct Gluon models and d2l 0.17's MXNet ``rnn()`` pass in float32 and
float64; a port from MXNet to PyTorch passes both ways; each planted mistake is named; a subject
that cannot run is one line and exit status 2, and so is a missing MXNet environment.

The ``mxnet`` group sets the environment up the first time (``rosetta-rnn backends --setup
mxnet``) and fails, never skips, if it cannot. docs/verify.md's MXNet examples (its ``console``
blocks titled for MXNet) are held to what the command prints here."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from rosetta_rnn.backends import mxnet as mxnet_backend
from rosetta_rnn.backends.worker import Worker
from rosetta_rnn.conformance import mistakes
from rosetta_rnn.conformance import verify as v
from rosetta_rnn.conformance.tolerances import tolerance

pytestmark = pytest.mark.mxnet

HERE = Path(__file__).resolve().parent
PORTS = "tests/verify_mxnet_ports.py"
EVERY_CHECK = [c.name for c in v.CHECKS]


@pytest.fixture(autouse=True)
def _from_the_repository(monkeypatch: pytest.MonkeyPatch, mxnet: Worker) -> None:
    """Every command runs from the repository root, as the page's examples do; the session's
    worker is the environment set up (the command starts its own)."""
    monkeypatch.chdir(HERE.parent)


def _verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """``rosetta-rnn verify ARGV --json``: (exit status, the report, stderr)."""
    from rosetta_rnn.cli import main

    code = main(["verify", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def _one_line(code: int, report: Any, err: str, words: str) -> None:
    assert code == 2 and report is None, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and words in lines[0], err


MODELS = {
    # name in the ports: (cell, dtype)
    "rnn_tanh": ("rnn", "float32"),
    "gru": ("gru/reset-after", "float32"),
    "lstm": ("lstm", "float32"),
    "rnn_tanh64": ("rnn", "float64"),
    "gru64": ("gru/reset-after", "float64"),
    "lstm64": ("lstm", "float64"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_d2ls_mxnet_rnnmodel_passes_every_check(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """d2l 0.17's MXNet RNNModel around Gluon's own layer, called as the book calls it: every
    check runs and agrees within the table's tolerance for the model's dtype."""
    code, report, err = _verify(capsys, f"{PORTS}:{name}")
    cell, dtype = MODELS[name]
    assert code == 0 and report["passed"], err or report
    assert (report["framework"], report["cell"], report["dtype"]) == ("mxnet", cell, dtype)
    rows = report["rows"]
    assert [r["check"] for r in rows if r["ran"]] == EVERY_CHECK
    assert all(r["error"] <= r["tolerance"] for r in rows)
    assert any("imported there by its worker, not here" in n for n in report["notes"])


def test_the_users_file_is_never_imported_here(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _verify(capsys, f"{PORTS}:gru64", "--checks", "outputs")
    assert code == 0, err
    assert "mxnet" not in sys.modules
    assert not [
        m for m in sys.modules.values() if "verify_mxnet_ports" in str(getattr(m, "__file__", ""))
    ]


@pytest.mark.parametrize(
    ("args", "cell", "dtype", "not_run"),
    [
        (["lstm_lm64"], "lstm", "float64", ["final state"]),  # d2l 1.0's RNNLM: no state
        (["gru_scratch"], "gru/reset-before", "float64", []),  # Parameters by the chapter's names
        (
            ["forward", "--params", "list", "--inputs", "one-hot", "--state", "tuple"],
            "rnn",
            "float64",
            [],
        ),
    ],
    ids=["d2l-1.0-RNNLM", "gluon-scratch-gru", "d2l-0.17-rnn-function"],
)
def test_the_other_mxnet_forms_pass(
    args: list[str],
    cell: str,
    dtype: str,
    not_run: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, *options = args
    code, report, err = _verify(capsys, f"{PORTS}:{name}", *options)
    assert code == 0 and report["passed"], err or report
    assert (report["cell"], report["dtype"]) == (cell, dtype)
    assert [r["check"] for r in report["rows"] if not r["ran"]] == not_run


def test_a_float32_function_is_checked_in_float32(capsys: pytest.CaptureFixture[str]) -> None:
    code, report, err = _verify(
        capsys,
        f"{PORTS}:forward",
        "--params",
        "list",
        "--inputs",
        "one-hot",
        "--state",
        "tuple",
        "--dtype",
        "float32",
    )
    assert code == 0 and report["dtype"] == "float32", err or report
    assert max(r["error"] for r in report["rows"]) > tolerance("float64", "values")  # float32 math


TORCH_PORT = """
import torch
from torch import nn
from torch.nn import functional as F


class RNNModel(nn.Module):  # d2l 0.17's MXNet RNNModel, ported line by line
    def __init__(self, rnn_layer, vocab_size):
        super().__init__()
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.dense = nn.Linear(rnn_layer.hidden_size, vocab_size, dtype=torch.float64)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float64)
        Y, state = self.rnn(X, state)
        return self.dense(Y.reshape(-1, Y.shape[-1])), state


gru64 = RNNModel(nn.GRU(11, 6, dtype=torch.float64), 11)
"""


def test_a_port_from_mxnet_to_torch_is_proved_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MXNet model and its PyTorch port each pass, held to one reference with the same
    check weights: the port computes what the original does."""
    port = tmp_path / "torch_port.py"
    port.write_text(TORCH_PORT)
    code, mx_report, err = _verify(capsys, f"{PORTS}:gru64")
    assert code == 0 and mx_report["passed"], err
    code, torch_report, err = _verify(capsys, f"{port}:gru64")
    assert code == 0 and torch_report["passed"], err
    assert (mx_report["framework"], torch_report["framework"]) == ("mxnet", "torch")
    for key in ("cell", "dtype"):
        assert mx_report[key] == torch_report[key]
    assert [r["check"] for r in mx_report["rows"]] == [r["check"] for r in torch_report["rows"]]


PLANTED = [
    # (the port and its options, the catalogue's entry that verify must name)
    (["gru_scratch_zr"], "gate-order-zr"),  # a Gluon Block, z and r exchanged
    (
        ["forward_no_bias", "--params", "list", "--inputs", "one-hot", "--state", "tuple"],
        "no-layer-bias",
    ),
    (["gru_batch_major"], "logits-batch-major"),  # d2l-en #1349 in a Gluon model
    (["gru", "--cell", "gru"], "reset-other-form"),  # d2l's GRU in Gluon's (reset-after) GRU
]


@pytest.mark.parametrize(("args", "named"), PLANTED, ids=[n for _, n in PLANTED])
def test_a_planted_mistake_in_a_gluon_port_is_named(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, *options = args
    code, report, err = _verify(capsys, f"{PORTS}:{name}", *options)
    assert code == 1 and not report["passed"], err
    want = mistakes.MISTAKES[named]().mistake
    assert report["mistakes"] == [want], report
    outputs = report["rows"][0]
    assert outputs["check"] == "outputs" and outputs["error"] > 0.05  # the weights reveal it
    assert all(r["diagnosis"] == want for r in report["rows"] if r["ran"] and not r["passed"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["rnn_relu"],
            "the chapter's RNN is tanh; this RNN is relu (Gluon's default: give "
            "rnn.RNN(num_hiddens, activation='tanh'))",
        ),
        (["gru_cells"], "Gluon 1.9.1's recurrent cells (GRUCell ...) do not run on mxnet.np"),
        (["forward_raises"], "the subject raised RuntimeError: the user's code fails here"),
        (["nothing"], f"{PORTS} has no 'nothing'"),
        (["gru", "--cell", "lstm"], "the model computes gru/reset-after, not lstm"),
        (["gru", "--params", "list"], "a model is its own framework, step, sampler and names"),
        (["gru", "--dtype", "float64"], "the model's weights are float32"),
        (["forward", "--step", "step"], "--step and --predict are not read from an MXNet file"),
    ],
    ids=["relu", "cells", "raises", "no-name", "cell", "params", "dtype", "step"],
)
def test_a_subject_that_cannot_run_is_one_line(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, *options = args
    _one_line(*_verify(capsys, f"{PORTS}:{name}", *options), words)


def test_a_file_that_fails_to_import_in_mxnet_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("from mxnet import np\nmodel = np.zeros((2, 3)) @ np.zeros((2, 3))\n")
    code, report, err = _verify(capsys, f"{broken}:model")
    _one_line(code, report, err, f"importing {broken} raised MXNetError")


def test_a_missing_mxnet_environment_says_how_to_set_it_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    monkeypatch.setattr(mxnet_backend, "_worker", None)  # as in a fresh process
    code, report, err = _verify(capsys, f"{PORTS}:gru")
    _one_line(code, report, err, "set it up with: rosetta-rnn backends --setup mxnet")


def test_the_framework_flag_sends_a_file_to_mxnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose MXNet import cannot be read (importlib) goes with --framework mxnet."""
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "import importlib\n"
        "mx_np = importlib.import_module('mxnet').np\n"
        "def forward(params, X, state):\n"
        "    H = state\n"
        "    out = []\n"
        "    for x in X:\n"
        "        H = mx_np.tanh(params['W_xh'][x] + H @ params['W_hh'] + params['b_h'])\n"
        "        out.append(H @ params['W_hq'] + params['b_q'])\n"
        "    return mx_np.concatenate(out, axis=0), H\n"
    )
    code, report, err = _verify(capsys, f"{hidden}:forward", "--framework", "mxnet")
    assert code == 0 and report["passed"] and report["framework"] == "mxnet", err or report


# --- docs/verify.md's MXNet examples are what the command prints -------------------------------

PAGE = HERE.parent / "docs" / "verify.md"


def _examples() -> list[tuple[str, str, int]]:
    found = []
    blocks = re.findall(r'```console title="[^"]*MXNet[^"]*"\n(.*?)```', PAGE.read_text(), re.S)
    for block in blocks:
        command, *lines = block.strip("\n").split("\n")
        assert command.startswith("$ rosetta-rnn verify ") and lines[-2] == "$ echo $?"
        found.append(
            (command.removeprefix("$ rosetta-rnn verify "), "\n".join(lines[:-2]), int(lines[-1]))
        )
    return found


def _figures(text: str) -> str:
    """As tests/test_verify.py compares them: a passing row's error dropped, other figures to 3
    significant digits."""
    text = re.sub(r"(  ok +)error \S+ \(tolerance \S+\)", r"\1", text)
    return re.sub(r"-?\d+\.\d+(e[+-]\d+)?", lambda m: f"{float(m.group()):.3g}", text)


def test_the_page_shows_mxnet_examples() -> None:
    assert len(_examples()) >= 2


@pytest.mark.parametrize(
    ("args", "shown", "status"),
    _examples(),
    ids=[e[0].split()[0].split(":")[-1] for e in _examples()],
)
def test_the_pages_mxnet_examples_print_what_it_shows(
    args: str, shown: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    code = main(["verify", *shlex.split(args)])
    out = capsys.readouterr().out
    assert code == status
    assert _figures(out.rstrip("\n")) == _figures(shown)

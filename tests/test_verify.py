"""``rosetta-rnn verify`` on ports nobody here would ship (tests/verify_ports.py): a correct
port of each family passes every check that can run; each known mistake, planted the way it
shows up in real code, is named; a difference no mistake explains says where it is; a subject
that cannot run is one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the ports are PyTorch")

from rosetta_rnn.cli import main  # noqa: E402
from rosetta_rnn.conformance import mistakes  # noqa: E402
from rosetta_rnn.conformance import verify as v  # noqa: E402
from rosetta_rnn.conformance.problems import Problem  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import verify_ports as ports  # noqa: E402

CELLS = ("rnn", "gru", "gru-reset-after", "lstm")
EVERY_CHECK = [c.name for c in v.CHECKS]


def _port(cell: str, mistake: str = "", **kwargs: Any) -> v.Report:
    """The PyTorch port of ``cell`` with ``mistake`` planted, its step and its sampler."""
    return v.verify(
        ports.forward_for(cell, mistake),
        cell=cell,
        framework="torch",
        step=ports.step_for(cell, mistake),
        predict=ports.predict_for(cell, mistake),
        **kwargs,
    )


# --- correct ports pass -----------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_a_correct_torch_port_passes_every_check(cell: str) -> None:
    report = _port(cell)
    assert report.passed, report.text()
    assert [r.check for r in report.ran] == EVERY_CHECK
    assert report.dtype == "float64" and report.framework == "torch"
    assert all(r.error is not None and r.error <= r.tolerance for r in report.ran)


def test_a_numpy_forward_passes_and_says_what_it_cannot_check() -> None:
    """NumPy has no autodiff: without a step the gradient and training rows say so, and the
    rows that ran are the forward's."""
    report = v.verify(ports.numpy_forward)
    assert report.passed and report.framework == "numpy"
    skipped = {r.check: r.note for r in report.rows if not r.ran}
    assert set(skipped) == {"gradients", "step/clipped", "step/unclipped", "trajectory"}
    assert all("no autodiff" in note for note in skipped.values())


def test_a_jax_forward_under_lax_scan_passes() -> None:
    pytest.importorskip("jax")
    report = v.verify(ports.jax_forward, inputs="batch-major")
    assert report.passed and report.framework == "jax", report.text()
    assert [r.check for r in report.ran] == EVERY_CHECK and report.dtype == "float64"


def test_d2l_017s_tensorflow_rnn_passes() -> None:
    """The book's TensorFlow ``rnn()``: one-hot time-major inputs, a parameter list, (H,)."""
    pytest.importorskip("tensorflow")
    report = v.verify(ports.tf_forward, inputs="one-hot", params_form="list", state_form="tuple")
    assert report.passed and report.framework == "tensorflow", report.text()
    assert [r.check for r in report.ran] == EVERY_CHECK


def _modules() -> dict[str, Any]:
    V, H, f64 = 11, 6, torch.float64
    return {
        "d2l 0.17 RNNModel(nn.RNN)": ports.RNNModel(torch.nn.RNN(V, H, dtype=f64), V),
        "d2l 0.17 RNNModel(nn.GRU)": ports.RNNModel(torch.nn.GRU(V, H, dtype=f64), V),
        "d2l 0.17 RNNModel(nn.LSTM)": ports.RNNModel(torch.nn.LSTM(V, H, dtype=f64), V),
        "nested in a user's module": ports.Wrapper(
            ports.RNNModel(torch.nn.LSTM(V, H, dtype=f64), V)
        ),
        "a loop over nn.GRUCell": ports.GRUCellLoop(V, H),
        "float32 RNNModel(nn.RNN)": ports.RNNModel(torch.nn.RNN(V, H), V),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_torch_modules_pass_as_the_book_calls_them(name: str) -> None:
    module = _modules()[name]
    report = v.verify(module)
    assert report.passed, report.text()
    assert [r.check for r in report.ran] == EVERY_CHECK
    assert report.dtype == ("float32" if name.startswith("float32") else "float64")
    assert report.cell == {"GRU": "gru/reset-after", "LSTM": "lstm"}.get(
        name.split("nn.")[-1].rstrip(")").replace("Cell loop", ""), report.cell
    )


@pytest.mark.parametrize("which", ["RNNLM(d2l.GRU)", "RNNLMScratch"])
def test_d2l_10s_models_that_return_no_state_pass(which: str) -> None:
    """d2l 1.0's RNNLM and RNNLMScratch return the logits alone, (batch, steps, vocab): no
    final-state row, the trajectory from zero every minibatch, generation from the whole text."""
    V, H = 11, 6
    module = (
        ports.RNNLM(ports.D2lRNN(torch.nn.GRU(V, H, dtype=torch.float64)), V)
        if which.startswith("RNNLM(")
        else ports.RNNLMScratch(ports.RNNScratch(V, H), V)
    )
    report = v.verify(module)
    assert report.passed, report.text()
    assert [r.check for r in report.rows if not r.ran] == ["final state"]
    assert any("returns no state" in n for n in report.notes)


def _keras_model(layer: Any, one_hot_inside: bool = True) -> Any:
    """A Keras language model as one writes it: ids one-hot encoded inside, or one-hot given."""
    import keras

    V = 11
    if one_hot_inside:
        head = [
            keras.Input((None,), dtype="int32"),
            keras.layers.Lambda(lambda x: keras.ops.one_hot(x, V)),
        ]
    else:
        head = [keras.Input((None, V))]
    return keras.Sequential([*head, layer, keras.layers.Dense(V)])


KERAS = {
    "SimpleRNN": ("SimpleRNN", {}, "rnn"),
    "GRU": ("GRU", {}, "gru/reset-after"),
    "GRU(reset_after=False)": ("GRU", {"reset_after": False}, "gru/reset-before"),
    "LSTM": ("LSTM", {}, "lstm"),
}


@pytest.mark.parametrize("name", list(KERAS))
def test_keras_models_pass(name: str) -> None:
    """Keras 3 models on TensorFlow: the weights set through core.convert's orders, called as
    model(X) with X (batch, steps) ids; they take and return no state."""
    keras = pytest.importorskip("keras")
    kind, options, cell = KERAS[name]
    layer = getattr(keras.layers, kind)(6, return_sequences=True, **options)
    report = v.verify(_keras_model(layer))
    assert report.passed and report.cell == cell and report.framework == "tensorflow", report.text()
    assert [r.check for r in report.rows if not r.ran] == ["final state"]
    one_hot = _keras_model(getattr(keras.layers, kind)(6, return_sequences=True, **options), False)
    assert v.verify(one_hot, inputs="one-hot", checks_to_run=["outputs", "gradients"]).passed


@pytest.mark.parametrize(
    ("framework", "words"),
    [("torch", "nn.GRU(11, 6)"), ("keras", "keras.layers.GRU(6)")],
)
def test_d2ls_gru_in_a_frameworks_own_gru_is_named(framework: str, words: str) -> None:
    """The chapter's reset-before GRU (--cell gru) loaded into torch's nn.GRU or Keras' default
    GRU, both reset-after: the other formulation, named."""
    if framework == "keras":
        keras = pytest.importorskip("keras")
        model = _keras_model(keras.layers.GRU(6, return_sequences=True))
    else:
        model = ports.RNNModel(torch.nn.GRU(11, 6, dtype=torch.float64), 11)
    report = v.verify(model, cell="gru")
    assert not report.passed and report.cell == "gru/reset-before"
    assert report.mistakes == [mistakes.MISTAKES["reset-other-form"]().mistake], words


def test_a_models_configuration_mistakes_are_named() -> None:
    """hard_sigmoid as Keras' recurrent activation, a layer without biases (Keras'
    use_bias=False, torch's bias=False)."""
    keras = pytest.importorskip("keras")
    hard = _keras_model(
        keras.layers.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid")
    )
    assert v.verify(hard).mistakes == [mistakes.MISTAKES["hard-sigmoid"]().mistake]
    no_bias = mistakes.MISTAKES["no-layer-bias"]().mistake
    assert v.verify(
        _keras_model(keras.layers.GRU(6, return_sequences=True, use_bias=False))
    ).mistakes == [no_bias]
    torch_layer = torch.nn.RNN(11, 6, dtype=torch.float64, bias=False)
    assert v.verify(ports.RNNModel(torch_layer, 11)).mistakes == [no_bias]


KERAS_ON_A_BACKEND = """
import keras
from rosetta_rnn.conformance import verify as v, mistakes
V = 11
def model(layer):
    one_hot = keras.layers.Lambda(lambda x: keras.ops.one_hot(x, V))
    ids = keras.Input((None,), dtype="int32")
    return keras.Sequential([ids, one_hot, layer, keras.layers.Dense(V)])
ok = v.verify(model(keras.layers.LSTM(6, return_sequences=True)))
gru = model(keras.layers.GRU(6, return_sequences=True))
bad = v.verify(gru, cell="gru", checks_to_run=["outputs"])
named = bad.mistakes == [mistakes.MISTAKES["reset-other-form"]().mistake]
print(keras.backend.backend(), ok.framework, ok.passed, len(ok.ran), named)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_models_on_the_jax_and_torch_backends(backend: str) -> None:
    """Keras picks its backend at import, so each runs in a process of its own: the model on
    that backend, differentiated by that framework's autodiff."""
    pytest.importorskip("keras")
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    run = subprocess.run(
        [sys.executable, "-c", KERAS_ON_A_BACKEND],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [backend, backend, "True", str(len(EVERY_CHECK) - 1), "True"]


def test_a_keras_model_that_cannot_run_is_one_line() -> None:
    keras = pytest.importorskip("keras")
    with pytest.raises(v.UserError, match=r"returns its last step only \(return_sequences=False\)"):
        v.verify(_keras_model(keras.layers.GRU(6)))
    with pytest.raises(v.UserError, match="holds 0 recurrent layers and 1 Dense"):
        v.verify(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]))


@pytest.mark.parametrize(
    ("api", "cell", "core"),
    [
        ("linen", "gru", "gru/reset-after"),
        ("nnx", "rnn", "rnn"),
        ("nnx", "lstm", "lstm"),
        ("nnx", "optimized-lstm", "lstm"),
    ],
)
def test_flax_models_pass(api: str, cell: str, core: str) -> None:
    """Flax linen (parameters made by init) and nnx (an instance) models: their cell's and
    dense layer's parameters replaced by the check's, called as model(X)."""
    pytest.importorskip("flax")
    import verify_flax_ports as fp
    from flax import nnx

    model = fp.LinenLM(cell) if api == "linen" else fp.NnxLM(cell, nnx.Rngs(0))
    report = v.verify(model)
    assert report.passed and report.cell == core and report.framework == "jax", report.text()
    assert [r.check for r in report.rows if not r.ran] == ["final state"]


def test_flax_nnx_gru_has_no_recurrent_candidate_bias() -> None:
    """Flax's nnx.GRUCell documents n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) but its
    recurrent Linear has no bias: held to that formula it differs, and verify names the
    missing b_hn; linen's GRUCell has it and passes (test_flax_models_pass)."""
    pytest.importorskip("flax")
    import verify_flax_ports as fp
    from flax import nnx

    report = v.verify(fp.NnxLM("gru", nnx.Rngs(0)), checks_to_run=["outputs", "gradients"])
    assert report.mistakes == [mistakes.MISTAKES["no-bhn"]().mistake], report.text()
    outputs = report.rows[0]
    assert outputs.error > 0.1  # b_hn is drawn about its own nonzero mean


def test_a_flax_gru_held_to_d2ls_gru_is_the_other_form() -> None:
    pytest.importorskip("flax")
    import verify_flax_ports as fp

    report = v.verify(fp.LinenLM("gru"), cell="gru", checks_to_run=["outputs"])
    assert report.mistakes == [mistakes.MISTAKES["reset-other-form"]().mistake]


def test_the_check_weights_hide_nothing() -> None:
    """Biases nonzero about a different mean per gate, every gate's input weights at their own
    scale, the recurrent matrices not symmetric, batch and steps different."""
    for cell in ("gru/reset-before", "lstm"):
        params, inputs, _, _ = Problem(**v.SIZES, scale="distinct", cell=cell).draw()
        biases = [params[k].mean() for k in params if k.startswith("b_") and k != "b_q"]
        assert min(abs(b) for b in biases) > 0.1 and len({round(b, 1) for b in biases}) == len(
            biases
        )
        scales = [params[k].std() for k in params if k.startswith("W_x")]
        assert len({round(s, 2) for s in scales}) == len(scales)
        W = params["W_hh"] if "W_hh" in params else params["W_hi"]
        assert not np.allclose(W, W.T)
        assert inputs.shape[0] != inputs.shape[1]


# --- every known mistake is named -------------------------------------------------------------

PLANTED = [
    # (cell, the mistake as the port plants it, the catalogue's entry that must be named)
    ("rnn", "transposed-recurrent", "transposed-recurrent"),
    ("rnn", "no-layer-bias", "no-layer-bias"),
    ("rnn", "second-bias", "second-bias"),
    ("rnn", "logits-batch-major", "logits-batch-major"),
    ("rnn", "labels-batch-major", "labels-batch-major"),
    ("rnn", "float32-leak", "float32-leak"),
    ("rnn", "clip-epsilon", "clip-epsilon"),
    ("rnn", "clip-per-parameter", "clip-per-parameter"),
    ("rnn", "loss-over-batch-only", "loss-over-batch-only"),
    ("rnn", "state-not-carried", "state-not-carried"),
    ("rnn", "temperature-inverted", "temperature-inverted"),
    ("rnn", "framework-rng", "framework-rng"),
    ("gru", "gate-order-zr", "gate-order-zr"),
    ("gru", "reset-other-form", "reset-other-form"),
    ("gru", "gate-biases-twice", "gate-biases-twice"),
    ("gru", "hard-sigmoid", "hard-sigmoid"),
    ("gru", "hard-sigmoid-keras2", "hard-sigmoid-keras2"),
    ("gru", "transposed-recurrent", "transposed-recurrent"),
    ("gru", "no-layer-bias", "no-layer-bias"),
    ("gru-reset-after", "bhn-outside", "bhn-outside"),
    ("gru-reset-after", "no-bhn", "no-bhn"),
    ("gru-reset-after", "reset-other-form", "reset-other-form"),
    ("gru-reset-after", "gate-order-zr", "gate-order-zr"),
    ("gru-reset-after", "candidate-biases-swapped", "candidate-biases-swapped"),
    ("lstm", "forget-bias-one", "forget-bias-one"),
    ("lstm", "gate-order-oc", "gate-order-oc"),
    ("lstm", "lstm-gates-ifco", "lstm-gates-ifco"),
    ("lstm", "gate-biases-twice", "gate-biases-twice"),
    ("lstm", "hard-sigmoid", "hard-sigmoid"),
    ("lstm", "loss-over-batch-only", "loss-over-batch-only"),
]
NOT_FOR_VERIFY = {
    "grads-summed": "data-parallel training: verify checks one device",
    "clip-per-replica": "data-parallel training: verify checks one device",
    "local-batch-loss": "data-parallel training: verify checks one device",
    "own-randomness": "data-parallel training: verify checks one device",
}


def test_every_catalogued_mistake_has_a_planted_port() -> None:
    """The catalogue conform's diagnosis uses is the one verify names from: each entry is
    planted in a port here, or said not to be verify's."""
    planted = {named for _, _, named in PLANTED}
    assert set(mistakes.MISTAKES) == planted | set(NOT_FOR_VERIFY)
    assert not planted & set(NOT_FOR_VERIFY)


@pytest.mark.parametrize(
    ("cell", "planted", "named"), PLANTED, ids=[f"{c}-{m}" for c, m, _ in PLANTED]
)
def test_a_planted_mistake_is_named(cell: str, planted: str, named: str) -> None:
    report = _port(cell, planted, **({"dtype": "float64"} if planted == "float32-leak" else {}))
    assert not report.passed
    want = mistakes.MISTAKES[named]().mistake
    if named == "float32-leak":  # told by the arrays' dtype, not by value
        assert report.mistakes == ["float32 leaked into a float64 run (float32 arrays)"]
    else:
        assert [m.split(": two runs")[0] for m in report.mistakes] == [want], report.text()
    failed = [r for r in report.ran if not r.passed]
    assert all(r.diagnosis for r in failed), report.text()
    assert f"FAILED at {report.first_failure.check}: " in report.text()


def test_a_difference_no_mistake_explains_says_where() -> None:
    report = v.verify(ports.unexplained_forward)
    assert not report.passed and report.mistakes == []
    (row,) = [r for r in report.ran if not r.passed]
    assert row.check == "outputs" and row.where.startswith("step 3 of 5")
    assert row.note == "no known mistake explains it"
    assert row.subject - row.reference == pytest.approx(0.01)
    assert f"FAILED at outputs ({row.where}): no known mistake explains it" in report.text()
    assert f"  {row.where}: reference " in report.text()


# --- the three ways to use it -------------------------------------------------------------------


def test_assert_matches_reference_in_a_users_test() -> None:
    report = v.assert_matches_reference(ports.forward_for("lstm"), cell="lstm", framework="torch")
    assert report.passed
    with pytest.raises(AssertionError, match="z and r swapped"):
        v.assert_matches_reference(
            ports.forward_for("gru", "gate-order-zr"), cell="gru", framework="torch"
        )


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_exits_0_1_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theirs.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import torch\n"
        "import verify_ports as p\n"
        "def good(params, X, state):\n    return p.port_forward(params, X, state, 'lstm')\n"
        "def swapped(params, X, state):\n"
        "    return p.port_forward(params, X, state, 'lstm', 'gate-order-oc')\n"
        "def step(params, X, Y, state, lr, theta):\n"
        "    return p.port_step(params, X, Y, state, lr, theta, 'lstm')\n"
        "model = p.RNNModel(torch.nn.GRU(11, 6, dtype=torch.float64), 11)\n"
        "empty = torch.nn.Module()\n"
    )
    code, out, _ = _cli(capsys, "theirs:good", "--cell", "lstm", "--step", "step", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["passed"] and doc["cell"] == "lstm" and doc["mistakes"] == []
    assert [r["check"] for r in doc["rows"] if r["ran"]] == EVERY_CHECK
    code, out, _ = _cli(capsys, "theirs.py:swapped", "--cell", "lstm")
    assert code == 1 and "output gate and candidate exchanged" in out.splitlines()[-1]
    code, out, _ = _cli(capsys, "theirs:model", "--checks", "outputs", "gradients")
    assert code == 0 and "passed: 2 checks agree" in out
    for argv, words in [
        (["theirs:nothing"], "theirs has no 'nothing'"),
        (["theirs:empty"], "the module has no parameters"),
        (["nowhere:forward"], "importing nowhere raised ModuleNotFoundError"),
        (["theirs"], "is not MODULE:OBJECT"),
        (["theirs:good", "--checks", "speed"], "unknown check 'speed'"),
        (["theirs:model", "--step", "step"], "a model is its own framework"),
        (["theirs:good", "--names", "W_xh"], "--names takes OURS=THEIRS"),
    ]:
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert words in err, (argv, err)


@pytest.mark.parametrize(
    ("forward", "words"),
    [
        (
            "wrong_shape_forward",
            "the logits are (14, 11); expected (steps × batch, vocab) = (15, V)",
        ),
        ("missing_name_forward", "the subject's forward raised KeyError: 'U'"),
    ],
)
def test_a_subject_that_cannot_run_is_one_line(
    forward: str, words: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(HERE)
    code, out, err = _cli(capsys, f"verify_ports:{forward}")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert words in err


def test_a_framework_that_is_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax fails, as where it is missing
    with pytest.raises(v.UserError, match=r"computes in jax, which is not installed here"):
        v.verify(ports.numpy_forward, framework="jax")


def test_a_subject_given_as_a_dict_names_its_own_cell_and_step() -> None:
    subject = {"forward": ports.forward_for("lstm"), "step": ports.step_for("lstm"), "cell": "lstm"}
    report = v.verify(subject, framework="torch")
    assert report.passed and report.cell == "lstm" and len(report.ran) == len(EVERY_CHECK)


def test_names_map_a_users_own_parameter_names() -> None:
    def forward(params: dict, X: Any, state: Any) -> Any:
        ours = {
            "W_xh": params["U"],
            "W_hh": params["W"],
            "b_h": params["b"],
            "W_hq": params["V"],
            "b_q": params["c"],
        }
        return ports.port_forward(ours, X, state)

    names = {"W_xh": "U", "W_hh": "W", "b_h": "b", "W_hq": "V", "b_q": "c"}
    assert v.verify(forward, framework="torch", names=names).passed


# --- docs/verify.md's examples are what the command prints -------------------------------------

PAGE = HERE.parent / "docs" / "verify.md"


def _examples() -> list[tuple[str, str, int]]:
    """(the arguments after ``rosetta-rnn verify``, what the page shows it printing, the exit
    status it shows) for each console block of docs/verify.md."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        command, *lines = block.strip("\n").split("\n")
        assert command.startswith("$ rosetta-rnn verify ") and lines[-2] == "$ echo $?"
        found.append(
            (command.removeprefix("$ rosetta-rnn verify "), "\n".join(lines[:-2]), int(lines[-1]))
        )
    return found


def _figures(text: str) -> str:
    """The output as it can be compared across BLAS builds and thread counts: the error of a row
    that passed (rounding) dropped, every other figure to 3 significant digits."""
    text = re.sub(r"(  ok +)error \S+ \(tolerance \S+\)", r"\1", text)
    return re.sub(r"-?\d+\.\d+(e[+-]\d+)?", lambda m: f"{float(m.group()):.3g}", text)


@pytest.mark.parametrize(
    ("args", "shown", "status"), _examples(), ids=[e[0].split(":")[0] for e in _examples()]
)
def test_the_pages_examples_print_what_it_shows(
    args: str,
    shown: str,
    status: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "jax_" in args:
        pytest.importorskip("jax")
    if "flax_" in args:
        pytest.importorskip("flax")
    if "tf_" in args or "keras_" in args:
        pytest.importorskip("tensorflow")
    monkeypatch.chdir(HERE.parent)
    code = main(["verify", *shlex.split(args)])
    out = capsys.readouterr().out
    assert code == status
    assert _figures(out.rstrip("\n")) == _figures(shown)

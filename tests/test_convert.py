"""``rosetta-rnn convert``: checkpoints to the frameworks' own layers and back, run through the
native layers themselves (torch nn.RNN/GRU/LSTM, Keras 3 SimpleRNN/GRU/LSTM on TensorFlow), and
to the book's current edition (d2l 1.0) and back, run through torch modules built as its
scratch and concise models are.

Native files are written the way a user would write them (``safetensors.torch.save_file`` of a
state dict, ``safetensors.numpy.save_file`` of ``get_weights()``, no metadata of ours); the
native layers' hidden states and logits are held to core's forward on the converted parameters
within the float64 values tolerance; round trips starting from ours are bit-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import one_line_error, run_cli

from rosetta_rnn import backends
from rosetta_rnn.cli import main
from rosetta_rnn.conformance import native
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, checkpoint, convert, model
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN
from rosetta_rnn.core.errors import CheckpointError

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
safetensors_torch = pytest.importorskip("safetensors.torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

V, H, T, B = 7, 5, 6, 3  # vocabulary, hidden units, steps, batch
TOL = tolerance("float64", "values")
NP = backends.load("numpy").make_ops("float64", "cpu")

# (framework, cell, the RNN's activation): the native layers, each one test id
NATIVE = {
    "nn.RNN": ("torch", RNN, "tanh"),
    "nn.RNN-relu": ("torch", RNN, "relu"),
    "nn.GRU": ("torch", GRU_RESET_AFTER, "tanh"),
    "nn.LSTM": ("torch", LSTM, "tanh"),
    "SimpleRNN": ("keras", RNN, "tanh"),
    "SimpleRNN-relu": ("keras", RNN, "relu"),
    "GRU(reset_after=True)": ("keras", GRU_RESET_AFTER, "tanh"),
    "GRU(reset_after=False)": ("keras", GRU_RESET_BEFORE, "tanh"),
    "LSTM": ("keras", LSTM, "tanh"),
}
BOTH = {"rnn": RNN, "gru": GRU_RESET_AFTER, "lstm": LSTM}  # cells both frameworks hold


# --- native layers ---------------------------------------------------------------------------


def _torch_model(cell: str, activation: str) -> Any:
    """d2l's concise model, ``rnn`` + ``linear``, in float64."""
    kinds = {RNN: torch.nn.RNN, GRU_RESET_AFTER: torch.nn.GRU, LSTM: torch.nn.LSTM}
    options = {"nonlinearity": activation} if cell == RNN else {}
    rnn = kinds[cell](V, H, dtype=torch.float64, **options)
    return torch.nn.ModuleDict({"rnn": rnn, "linear": torch.nn.Linear(H, V, dtype=torch.float64)})


def _keras_layers(cell: str, activation: str) -> tuple[Any, Any]:
    options = {"activation": activation} if cell == RNN else {}
    rnn = native.keras_layer(cell, H, "float64", return_state=True, **options)
    dense = keras.layers.Dense(V, dtype="float64")
    rnn.build((None, None, V))
    dense.build((None, H))
    return rnn, dense


def write_native(path: Path, fw: str, cell: str, activation: str, rng: Any) -> dict[str, Any]:
    """A native layer with random weights (every bias nonzero, both of a pair), saved as a user
    would save it; -> the arrays saved."""
    if fw == "torch":
        m = _torch_model(cell, activation)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.5))
        safetensors_torch.save_file(m.state_dict(), str(path))  # metadata {"format": "pt"}
        return {k: v.numpy().copy() for k, v in m.state_dict().items()}
    rnn, dense = _keras_layers(cell, activation)
    rnn.set_weights([rng.standard_normal(w.shape) * 0.5 for w in rnn.get_weights()])
    dense.set_weights([rng.standard_normal(w.shape) * 0.5 for w in dense.get_weights()])
    arrays = dict(zip(convert.KERAS_NAMES, [*rnn.get_weights(), *dense.get_weights()], strict=True))
    safetensors_numpy.save_file(arrays, str(path))  # no metadata at all
    return arrays


def run_native(
    fw: str, cell: str, activation: str, arrays: dict[str, Any], inputs: Any, state: Any
) -> dict[str, np.ndarray]:
    """The native layer loaded with ``arrays``: hidden states (T, B, H) and logits (T·B, V) from
    one-hot ``inputs`` (T, B) and the initial state (H, or the LSTM's (H, C))."""
    parts = state if isinstance(state, tuple) else (state,)
    if fw == "torch":
        m = _torch_model(cell, activation)
        m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        X = torch.nn.functional.one_hot(torch.from_numpy(inputs), V).to(torch.float64)
        h0 = tuple(torch.from_numpy(p)[None] for p in parts)
        with torch.no_grad():
            Hs, _ = m["rnn"](X, h0 if cell == LSTM else h0[0])
            logits = m["linear"](Hs.reshape(-1, H))
        return {"hidden": Hs.numpy(), "logits": logits.numpy()}
    rnn, dense = _keras_layers(cell, activation)
    rnn.set_weights([arrays[n] for n in convert.KERAS_NAMES[:3]])
    dense.set_weights([arrays[n] for n in convert.KERAS_NAMES[3:]])
    X = keras.ops.one_hot(inputs.T, V, dtype="float64")  # batch-major (B, T, V)
    Hs = np.asarray(rnn(X, initial_state=list(parts))[0]).transpose(1, 0, 2)
    logits = np.asarray(dense(Hs.reshape(-1, H)))
    return {"hidden": Hs, "logits": logits}


def run_core(params: dict[str, np.ndarray], activation: str, inputs: Any, state: Any) -> Any:
    """core's forward on ``params``: the same hidden states and logits."""
    Hs, _ = cells.any_forward(NP, model.to_backend(NP, params), inputs, state, activation)
    Hs = np.asarray(Hs)
    return {"hidden": Hs, "logits": Hs.reshape(-1, H) @ params["W_hq"] + params["b_q"]}


def rel_error(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """max|got - ref| / max|ref| over every quantity, as the conformance suite measures."""
    return max(float(np.max(np.abs(got[k] - ref[k])) / np.max(np.abs(ref[k]))) for k in ref)


def problem(cell: str, rng: Any) -> tuple[np.ndarray, Any]:
    inputs = rng.integers(0, V, size=(T, B))
    state = tuple(rng.standard_normal((B, H)) * 0.5 for _ in range(2 if cell == LSTM else 1))
    return inputs, state if cell == LSTM else state[0]


def vocab_file(path: Path, size: int = V) -> Path:
    """A checkpoint whose metadata holds a vocabulary of ``size`` tokens (--vocab-from)."""
    vocab = ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"][:size]
    checkpoint.save(path, {"x": np.zeros(1)}, {"vocab": vocab, "token": "char"})
    return path


def convert_ok(capsys: Any, *args: Any) -> str:
    code, out, err = run_cli(capsys, "convert", *map(str, args))
    assert code == 0, err
    assert len(out.splitlines()) == 1 and out.startswith("wrote "), out
    return out


def load_params(path: Path) -> dict[str, np.ndarray]:
    tensors, _ = checkpoint.load_model(path)
    return {n: tensors[n] for n in model.param_names(tensors)}


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Equal names, dtypes, shapes and bytes (-0.0 is not 0.0)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return checkpoint.read_safetensors(path)


# --- every native layer, to ours and back --------------------------------------------------


@pytest.mark.parametrize("name", list(NATIVE))
def test_a_native_layer_converts_to_ours_and_back(
    name: str, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    fw, cell, activation = NATIVE[name]
    src = tmp_path / f"{fw}.safetensors"
    arrays = write_native(src, fw, cell, activation, rng)
    ours = tmp_path / "ours.safetensors"
    flags = ["--activation", activation] if activation != "tanh" else []
    convert_ok(
        capsys, src, ours, "--to", "rosetta", "--vocab-from", vocab_file(tmp_path / "v"), *flags
    )

    # the native layer and core's forward on the converted parameters compute the same model
    params = load_params(ours)
    assert cells.cell_of(params) == cell
    inputs, state = problem(cell, rng)
    err = rel_error(
        run_core(params, activation, inputs, state),
        run_native(fw, cell, activation, arrays, inputs, state),
    )
    assert err <= TOL, f"{name}: {err:.3g} > {TOL:g}"

    # ours -> native -> ours is bit-identical: file, tensors and metadata
    back_native = tmp_path / f"back.{fw}.safetensors"
    again = tmp_path / "again.safetensors"
    convert_ok(capsys, ours, back_native, "--to", fw)
    convert_ok(capsys, back_native, again, "--to", "rosetta")
    assert again.read_bytes() == ours.read_bytes()

    # the native file written back holds the same model, under the framework's own names
    back, raw = read_raw(back_native)
    assert set(back) == set(arrays) and all(back[k].shape == arrays[k].shape for k in back)
    meta = json.loads(raw["rosetta_rnn"])
    assert (meta["cell"], meta["activation"]) == (cell, activation)
    err = rel_error(
        run_native(fw, cell, activation, back, inputs, state),
        run_native(fw, cell, activation, arrays, inputs, state),
    )
    assert err <= TOL, f"{name} after a round trip: {err:.3g}"


@pytest.mark.parametrize("cell_name", list(BOTH))
@pytest.mark.parametrize("fw", ["torch", "keras"])
def test_torch_and_keras_files_convert_into_each_other(
    fw: str, cell_name: str, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """A torch file as Keras weights (and the reverse) runs in the other framework's layer to
    within 1e-12; the reset-after GRU's bias pairs carry over whole, so there and back is
    bit-identical for it both ways."""
    cell, other = BOTH[cell_name], {"torch": "keras", "keras": "torch"}[fw]
    activation = "relu" if cell == RNN else "tanh"  # nn.RNN's relu becomes SimpleRNN's relu
    src = tmp_path / f"src.{fw}"
    arrays = write_native(src, fw, cell, activation, rng)
    flags = ["--activation", activation] if activation != "tanh" else []
    dst = tmp_path / f"dst.{other}"
    convert_ok(capsys, src, dst, "--from", fw, "--to", other, *flags)
    converted, raw = read_raw(dst)
    assert json.loads(raw["rosetta_rnn"])["activation"] == activation
    inputs, state = problem(cell, rng)
    mine = run_native(fw, cell, activation, arrays, inputs, state)
    theirs = run_native(other, cell, activation, converted, inputs, state)
    assert rel_error(theirs, mine) <= TOL

    back = tmp_path / f"back.{fw}"
    convert_ok(capsys, dst, back, "--to", fw)
    returned, _ = read_raw(back)
    if cell == GRU_RESET_AFTER:
        assert same_arrays(returned, arrays)
    assert rel_error(run_native(fw, cell, activation, returned, inputs, state), mine) <= TOL


def test_a_summed_bias_pair_is_noted(tmp_path: Path, capsys: Any, rng: Any) -> None:
    src = tmp_path / "lstm.torch"
    write_native(src, "torch", LSTM, "tanh", rng)
    code, _, err = run_cli(capsys, "convert", str(src), str(tmp_path / "k"), "--to", "keras")
    assert (
        code == 0
        and "note: summed the pairs of biases (bias_ih + bias_hh) of the gates i, f, c, o" in err
    )


# --- the book's current edition (d2l 1.0, PyTorch) ----------------------------------------
# torch modules built as d2l 1.0 builds its models (8.5 RNNScratch and RNNLMScratch, 8.6
# d2l.RNN and RNNLM, 10.1 LSTMScratch and d2l.LSTM, 10.2 GRUScratch and d2l.GRU), in float64:
# their state_dict() names are the book's, their forward passes the book's arithmetic.


def _weight(*shape: int) -> Any:
    return torch.nn.Parameter(torch.zeros(*shape, dtype=torch.float64))


class RNNScratch(torch.nn.Module):
    def __init__(self, num_inputs: int, num_hiddens: int) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.W_xh = _weight(num_inputs, num_hiddens)
        self.W_hh = _weight(num_hiddens, num_hiddens)
        self.b_h = _weight(num_hiddens)

    def forward(self, inputs: Any, state: Any) -> Any:
        outputs = []
        for X in inputs:
            state = torch.tanh(X @ self.W_xh + state @ self.W_hh + self.b_h)
            outputs.append(state)
        return outputs, state


def _triple(m: Any, gate: str, num_inputs: int, num_hiddens: int) -> None:
    setattr(m, f"W_x{gate}", _weight(num_inputs, num_hiddens))
    setattr(m, f"W_h{gate}", _weight(num_hiddens, num_hiddens))
    setattr(m, f"b_{gate}", _weight(num_hiddens))


class GRUScratch(torch.nn.Module):
    def __init__(self, num_inputs: int, num_hiddens: int) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        for gate in "zrh":  # update gate, reset gate, candidate hidden state
            _triple(self, gate, num_inputs, num_hiddens)

    def forward(self, inputs: Any, H: Any) -> Any:
        outputs = []
        for X in inputs:
            Z = torch.sigmoid(X @ self.W_xz + H @ self.W_hz + self.b_z)
            R = torch.sigmoid(X @ self.W_xr + H @ self.W_hr + self.b_r)
            H_tilde = torch.tanh(X @ self.W_xh + (R * H) @ self.W_hh + self.b_h)
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H)
        return outputs, H


class LSTMScratch(torch.nn.Module):
    def __init__(self, num_inputs: int, num_hiddens: int) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        for gate in "ifoc":  # input gate, forget gate, output gate, input node
            _triple(self, gate, num_inputs, num_hiddens)

    def forward(self, inputs: Any, H_C: Any) -> Any:
        H, C = H_C
        outputs = []
        for X in inputs:
            I = torch.sigmoid(X @ self.W_xi + H @ self.W_hi + self.b_i)
            F = torch.sigmoid(X @ self.W_xf + H @ self.W_hf + self.b_f)
            O = torch.sigmoid(X @ self.W_xo + H @ self.W_ho + self.b_o)
            C_tilde = torch.tanh(X @ self.W_xc + H @ self.W_hc + self.b_c)
            C = F * C + I * C_tilde
            H = O * torch.tanh(C)
            outputs.append(H)
        return outputs, (H, C)


class RNNLMScratch(torch.nn.Module):
    """The language model around a scratch cell: W_hq, b_q of its own, the cell as ``rnn``."""

    def __init__(self, rnn: Any, vocab_size: int) -> None:
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.W_hq = _weight(rnn.num_hiddens, vocab_size)
        self.b_q = _weight(vocab_size)

    def forward(self, X: Any, state: Any) -> Any:
        embs = torch.nn.functional.one_hot(X.T, self.vocab_size).to(torch.float64)
        rnn_outputs, _ = self.rnn(embs, state)
        return torch.stack([H @ self.W_hq + self.b_q for H in rnn_outputs], 1)


class Concise(torch.nn.Module):
    """d2l.RNN, d2l.GRU, d2l.LSTM: torch's layer as ``rnn``."""

    def __init__(self, layer: Any, num_inputs: int, num_hiddens: int, **options: Any) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.rnn = layer(num_inputs, num_hiddens, dtype=torch.float64, **options)

    def forward(self, inputs: Any, H: Any) -> Any:
        return self.rnn(inputs, H)


class RNNLM(RNNLMScratch):
    """The concise language model: the book's nn.LazyLinear(vocab_size), once materialized, is
    this nn.Linear, under the same names."""

    def __init__(self, rnn: Any, vocab_size: int) -> None:
        torch.nn.Module.__init__(self)
        self.rnn, self.vocab_size = rnn, vocab_size
        self.linear = torch.nn.Linear(rnn.num_hiddens, vocab_size, dtype=torch.float64)

    def forward(self, X: Any, state: Any) -> Any:
        embs = torch.nn.functional.one_hot(X.T, self.vocab_size).to(torch.float64)
        hiddens, _ = self.rnn(embs, state)
        return self.linear(hiddens).swapaxes(0, 1)


# (format, cell): every model the book has, each one test id
BOOK = {
    "RNNScratch": ("d2l-scratch", RNN),
    "GRUScratch": ("d2l-scratch", GRU_RESET_BEFORE),
    "LSTMScratch": ("d2l-scratch", LSTM),
    "d2l.RNN": ("d2l-concise", RNN),
    "d2l.GRU": ("d2l-concise", GRU_RESET_AFTER),
    "d2l.LSTM": ("d2l-concise", LSTM),
}


def book_model(fmt: str, cell: str, **options: Any) -> Any:
    if fmt == "d2l-scratch":
        kinds = {RNN: RNNScratch, GRU_RESET_BEFORE: GRUScratch, LSTM: LSTMScratch}
        return RNNLMScratch(kinds[cell](V, H), V)
    layers = {RNN: torch.nn.RNN, GRU_RESET_AFTER: torch.nn.GRU, LSTM: torch.nn.LSTM}
    return RNNLM(Concise(layers[cell], V, H, **options), V)


def write_book(path: Path, fmt: str, cell: str, rng: Any, **options: Any) -> Any:
    """A book model with random weights (every bias nonzero, both of a pair), its state_dict()
    saved as a reader of the book would save it; -> the model."""
    m = book_model(fmt, cell, **options)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.5))
    safetensors_torch.save_file(m.state_dict(), str(path))  # metadata {"format": "pt"}
    return m


def run_book(fmt: str, m: Any, inputs: Any, state: Any) -> dict[str, np.ndarray]:
    """The book model's logits (T·B, V), time-major as core's, from ``inputs`` (T, B)."""
    parts = state if isinstance(state, tuple) else (state,)
    h0 = tuple(torch.from_numpy(p) for p in parts)
    if fmt == "d2l-concise":
        h0 = tuple(p[None] for p in h0)  # (num_layers, B, H)
    with torch.no_grad():
        Y = m(torch.from_numpy(inputs.T.copy()), h0 if len(h0) == 2 else h0[0])
    return {"logits": Y.swapaxes(0, 1).reshape(-1, V).numpy()}


def load_book(fmt: str, cell: str, path: Path) -> Any:
    m = book_model(fmt, cell)
    m.load_state_dict(safetensors_torch.load_file(str(path)))  # strict: every name, no other
    return m


@pytest.mark.parametrize("name", list(BOOK))
def test_a_book_model_converts_to_ours_and_back(
    name: str, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    fmt, cell = BOOK[name]
    src = tmp_path / "book.safetensors"
    m = write_book(src, fmt, cell, rng)
    ours = tmp_path / "ours.safetensors"
    vocab = vocab_file(tmp_path / "v")
    code, out, err = run_cli(capsys, "convert", str(src), str(ours), "--to", "rosetta", "--json")
    assert code == 2 and "records no vocabulary" in err and not ours.exists()
    code, out, err = run_cli(
        capsys, "convert", str(src), str(ours), "--to", "rosetta", "--vocab-from", str(vocab)
    )
    assert code == 0 and out.startswith(f"wrote rosetta-rnn {cell} checkpoint (vocab {V}, "), err
    _, meta = checkpoint.load_model(ours)
    assert meta["converted_from"]["format"] == fmt  # found from the names alone

    # the book's model and core's forward on the converted parameters compute the same model
    params = load_params(ours)
    assert cells.cell_of(params) == cell
    inputs, state = problem(cell, rng)
    err_ = rel_error(run_core(params, "tanh", inputs, state), run_book(fmt, m, inputs, state))
    assert err_ <= TOL, f"{name}: {err_:.3g} > {TOL:g}"

    # ours -> the book's -> ours is bit-identical
    back = tmp_path / "back.safetensors"
    again = tmp_path / "again.safetensors"
    convert_ok(capsys, ours, back, "--to", fmt)
    convert_ok(capsys, back, again, "--to", "rosetta")
    assert again.read_bytes() == ours.read_bytes()

    # the file written back loads into the book's model (strictly) and computes the same
    returned = load_book(fmt, cell, back)
    err_ = rel_error(run_book(fmt, returned, inputs, state), run_book(fmt, m, inputs, state))
    assert err_ <= TOL, f"{name} after a round trip: {err_:.3g}"
    if fmt == "d2l-scratch":  # core's own parameters: nothing summed, the same state dict
        assert same_arrays(read_raw(back)[0], read_raw(src)[0])


@pytest.mark.parametrize("cell_name", list(BOTH))
def test_the_concise_format_is_the_torch_format_one_module_deeper(
    cell_name: str, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """d2l 1.0's RNNLM to d2l 0.17's (torch) and back: the same tensors under rnn. for
    rnn.rnn., bit for bit, pairs of biases included."""
    cell = BOTH[cell_name]
    src = tmp_path / "concise.safetensors"
    write_book(src, "d2l-concise", cell, rng)
    convert_ok(capsys, src, tmp_path / "torch", "--to", "torch")
    book, torch_ = read_raw(src)[0], read_raw(tmp_path / "torch")[0]
    assert same_arrays({k.replace("rnn.rnn.", "rnn."): v for k, v in book.items()}, torch_)
    convert_ok(capsys, tmp_path / "torch", tmp_path / "back", "--to", "d2l-concise")
    assert same_arrays(read_raw(tmp_path / "back")[0], book)


def test_the_format_is_found_from_the_tensor_names(rng: Any) -> None:
    found = {}
    for name, (fmt, cell) in BOOK.items():
        names = book_model(fmt, cell).state_dict()
        found[name] = convert.detect_format(names, None)
        assert found[name] == fmt, (name, sorted(names))
    layer = convert.from_params(model.init_params(V, H, rng, "float64"))
    assert convert.detect_format(convert.to_torch(layer), None) == "torch"
    assert convert.detect_format(convert.to_params(layer), None) == "rosetta"
    assert convert.detect_format(convert.to_keras(layer), None) == "keras"


def test_an_rnn_with_relu_converts_to_the_book_with_a_note(
    trained: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    for fmt in convert.BOOK:
        code, out, err = run_cli(
            capsys, "convert", str(trained["rnn-relu"]), str(tmp_path / fmt), "--to", fmt
        )
        assert code == 0 and "(relu)" in out and "the book's classes compute tanh" in err
        meta = json.loads(read_raw(tmp_path / fmt)[1]["rosetta_rnn"])
        assert (meta["framework"], meta["activation"]) == (fmt, "relu")


# --- trained checkpoints -------------------------------------------------------------------

TRAINED = {
    "rnn": [],
    "rnn-relu": ["--activation", "relu"],
    "gru": ["--cell", "gru"],
    "gru-reset-after": ["--cell", "gru", "--gru", "reset-after"],
    "lstm": ["--cell", "lstm", "--forget-bias", "1"],
}
TINY = ["--epochs", "2", "--num-hiddens", "8", "--max-tokens", "500"]
TINY += ["--batch-size", "4", "--num-steps", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: Any) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trained")
    paths = {}
    for name, flags in TRAINED.items():
        paths[name] = folder / f"{name}.safetensors"
        assert main(["train", *TINY, *flags, "--checkpoint", str(paths[name])]) == 0
    return paths


def _generate(capsys: Any, path: Path) -> str:
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(path), "--num-chars", "30")
    assert code == 0, err
    return out


# every trained cell to every native format that holds it: not the reset-before GRU to torch,
# d2l-concise or mxnet, nor the reset-after one to d2l-scratch (test_refusals)
REFUSED = {("gru", "torch"), ("gru", "d2l-concise"), ("gru", "mxnet")}
REFUSED |= {("gru-reset-after", "d2l-scratch")}
ROUND_TRIPS = [(n, fw) for n in TRAINED for fw in convert.NATIVE if (n, fw) not in REFUSED]


@pytest.mark.parametrize("name, fw", ROUND_TRIPS)
def test_a_trained_checkpoint_round_trips(
    name: str, fw: str, trained: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    ckpt = trained[name]
    out = convert_ok(capsys, ckpt, tmp_path / "native", "--to", fw)
    assert "(vocab 28, 8 hidden, float32)" in out
    back = tmp_path / "back.safetensors"
    convert_ok(capsys, tmp_path / "native", back, "--from", fw, "--to", "rosetta")
    tensors, meta = checkpoint.load_model(ckpt)
    tensors2, meta2 = checkpoint.load_model(back)
    assert same_arrays(tensors2, tensors)
    assert meta2 == meta
    assert back.read_bytes() == ckpt.read_bytes()
    assert _generate(capsys, back) == _generate(capsys, ckpt)


def test_the_carried_state_of_a_checkpoint_round_trips(
    trained: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    """A checkpoint saved mid-epoch also holds the LSTM's carried (H, C): not weights, so
    kept in the native file's metadata and restored bit for bit."""
    tensors, meta = checkpoint.load_model(trained["lstm"])
    rng = np.random.default_rng(5)
    state = {n: rng.standard_normal((4, 8)).astype("float32") for n in ("state", "state_c")}
    state["state"][0, 0] = -0.0
    ckpt = tmp_path / "mid.safetensors"
    checkpoint.save(ckpt, {**tensors, **state}, meta)
    names = {
        "torch": convert.TORCH_NAMES,
        "keras": convert.KERAS_NAMES,
        "mxnet": convert.MXNET_NAMES,
        "d2l-concise": convert.D2L_CONCISE_NAMES,
        "d2l-scratch": convert.d2l_scratch_names(LSTM),
    }
    for fw in convert.NATIVE:
        convert_ok(capsys, ckpt, tmp_path / fw, "--to", fw)
        assert set(read_raw(tmp_path / fw)[0]) == set(names[fw])
        convert_ok(capsys, tmp_path / fw, tmp_path / f"{fw}.back", "--to", "rosetta")
        assert (tmp_path / f"{fw}.back").read_bytes() == ckpt.read_bytes()


def test_a_native_file_with_a_vocabulary_is_a_checkpoint_generate_and_eval_read(
    tmp_path: Path, capsys: Any, rng: Any
) -> None:
    src = tmp_path / "gru.torch"
    write_native(src, "torch", GRU_RESET_AFTER, "tanh", rng)
    ours = tmp_path / "ours.safetensors"
    convert_ok(capsys, src, ours, "--to", "rosetta", "--vocab-from", vocab_file(tmp_path / "v"))
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(ours), "--prefix", "abc")
    assert code == 0 and out.startswith("abc"), err
    text = tmp_path / "t.txt"
    text.write_text("a bad cab\n")
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(ours), "--corpus", str(text))
    assert code == 0 and out.startswith("perplexity "), err
    # the vocabulary now travels with the weights: to Keras and back to ours needs no flag
    convert_ok(capsys, ours, tmp_path / "k", "--to", "keras")
    convert_ok(capsys, tmp_path / "k", tmp_path / "again", "--to", "rosetta")
    assert (tmp_path / "again").read_bytes() == ours.read_bytes()


def test_json_output(trained: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    code, out, _ = run_cli(
        capsys,
        "convert",
        str(trained["gru-reset-after"]),
        str(tmp_path / "k"),
        "--to",
        "keras",
        "--json",
    )
    doc = json.loads(out)
    assert code == 0 and doc["layer"] == "GRU(reset_after=True)" and doc["vocab_size"] == 28


# --- refusals: one line, exit 2, OUT not written ------------------------------------------


def _refused(capsys: Any, out: Path, words: str, *args: Any) -> None:
    before = out.read_bytes() if out.is_file() else None
    code, stdout, err = run_cli(capsys, "convert", *map(str, args))
    assert code == 2 and stdout == "", err
    one_line_error(err, words)
    assert (out.read_bytes() if out.is_file() else None) == before
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]


@pytest.fixture(scope="module")
def files(trained: dict[str, Path], tmp_path_factory: Any) -> dict[str, Path]:
    """The files the refusals convert: native ones with no metadata of ours, vocabularies of
    the right and the wrong size, and the trained checkpoints."""
    folder = tmp_path_factory.mktemp("refused")
    rng = np.random.default_rng(99)
    made = {f"ckpt_{k.replace('-', '_')}": v for k, v in trained.items()}
    for key, (fw, cell) in {
        "torch_gru": ("torch", GRU_RESET_AFTER),
        "torch_rnn": ("torch", RNN),
        "keras_gru_before": ("keras", GRU_RESET_BEFORE),
        "keras_lstm": ("keras", LSTM),
    }.items():
        made[key] = folder / f"{key}.safetensors"
        write_native(made[key], fw, cell, "tanh", rng)
    for key, (fmt, cell, options) in {
        "scratch_gru": ("d2l-scratch", GRU_RESET_BEFORE, {}),
        "scratch_lstm": ("d2l-scratch", LSTM, {}),
        "concise_gru": ("d2l-concise", GRU_RESET_AFTER, {}),
        "concise_gru_2_layers": ("d2l-concise", GRU_RESET_AFTER, {"num_layers": 2}),
    }.items():
        made[key] = folder / f"{key}.safetensors"
        write_book(made[key], fmt, cell, rng, **options)
    # a scratch model the book does not have: the reset-after GRU's b_xh, b_hh under rnn.
    after = cells.init_params(GRU_RESET_AFTER, V, H, rng, "float64")
    made["scratch_gru_after"] = folder / "scratch_gru_after.safetensors"
    safetensors_numpy.save_file(
        {convert.d2l_scratch_name(n): a for n, a in after.items()}, str(made["scratch_gru_after"])
    )
    # a scratch model whose rnn.W_xh is transposed
    state = read_raw(made["scratch_gru"])[0]
    state["rnn.W_xh"] = state["rnn.W_xh"].T.copy()
    made["scratch_transposed"] = folder / "scratch_transposed.safetensors"
    safetensors_numpy.save_file(state, str(made["scratch_transposed"]))
    made["vocab"] = vocab_file(folder / "vocab.safetensors")
    made["vocab_9"] = vocab_file(folder / "vocab9.safetensors", 9)
    return made


# name: (words the one error line holds, the command's arguments; {out} is OUT)
REFUSALS = {
    # the GRU formulations: neither converts into the other
    "reset-before to torch": (
        convert.NO_TORCH_RESET_BEFORE,
        "{ckpt_gru} {out} --to torch",
    ),
    "reset-before to d2l-concise": (
        convert.NO_TORCH_RESET_BEFORE,
        "{ckpt_gru} {out} --to d2l-concise",
    ),
    "GRUScratch to d2l-concise": (
        convert.NO_TORCH_RESET_BEFORE,
        "{scratch_gru} {out} --to d2l-concise",
    ),
    "reset-after to d2l-scratch": (
        convert.NO_SCRATCH_RESET_AFTER,
        "{ckpt_gru_reset_after} {out} --to d2l-scratch",
    ),
    "torch GRU to d2l-scratch": (
        convert.NO_SCRATCH_RESET_AFTER,
        "{torch_gru} {out} --to d2l-scratch",
    ),
    "a reset-after scratch GRU": (
        convert.NO_SCRATCH_RESET_AFTER,
        "{scratch_gru_after} {out} --to keras",
    ),
    "d2l.GRU as reset-before": (
        "are different models",
        "{concise_gru} {out} --to keras --gru reset-before",
    ),
    "GRUScratch as reset-after": (
        "are different models",
        "{scratch_gru} {out} --to keras --gru reset-after",
    ),
    "torch GRU to keras reset-before": (
        "are different models",
        "{torch_gru} {out} --to keras --gru reset-before",
    ),
    "reset-after checkpoint as reset-before": (
        "are different models",
        "{ckpt_gru_reset_after} {out} --to keras --gru reset-before",
    ),
    "keras reset-before as reset-after": (
        "are different models",
        "{keras_gru_before} {out} --to rosetta --gru reset-after --vocab-from {vocab}",
    ),
    # the file is not what the flags say
    "--cell": ("not the lstm --cell names", "{torch_gru} {out} --to keras --cell lstm"),
    "--gru of an lstm": (
        "--gru reset-after is the GRU's formulation",
        "{keras_lstm} {out} --to torch --gru reset-after",
    ),
    "--activation of a gru": (
        "--activation relu is the RNN's",
        "{torch_gru} {out} --to keras --activation relu",
    ),
    "--activation against the record": (
        "records the activation relu, not the tanh",
        "{ckpt_rnn_relu} {out} --to torch --activation tanh",
    ),
    "--from": (
        "is a torch file, not a keras file: use --from torch",
        "{torch_rnn} {out} --from keras --to rosetta",
    ),
    "--from torch of d2l-concise": (
        "is a d2l-concise file, not a torch file: use --from d2l-concise",
        "{concise_gru} {out} --from torch --to keras",
    ),
    "--from d2l-concise of d2l-scratch": (
        "is a d2l-scratch file, not a d2l-concise file: use --from d2l-scratch",
        "{scratch_lstm} {out} --from d2l-concise --to keras",
    ),
    # the book's files that are not one layer of the book's names and shapes
    "a two-layer d2l.GRU": (
        "has tensors this conversion does not know: rnn.rnn.bias_hh_l1, rnn.rnn.bias_ih_l1",
        "{concise_gru_2_layers} {out} --to keras",
    ),
    "a transposed scratch weight": (
        f"rnn.W_xh has shape [{H}, {V}], expected [{V}, {H}]",
        "{scratch_transposed} {out} --to keras",
    ),
    # vocabularies
    "no vocabulary": (
        f"records no vocabulary, which a rosetta-rnn checkpoint needs (generate and eval read "
        f"it): pass --vocab-from CKPT, a checkpoint of {V} tokens",
        "{torch_gru} {out} --to rosetta",
    ),
    "no vocabulary in a scratch model": (
        f"records no vocabulary, which a rosetta-rnn checkpoint needs (generate and eval read "
        f"it): pass --vocab-from CKPT, a checkpoint of {V} tokens",
        "{scratch_lstm} {out} --to rosetta",
    ),
    "a vocabulary of another size": (
        f"has a vocabulary of 9 tokens, but the weights are for {V}",
        "{torch_gru} {out} --to rosetta --vocab-from {vocab_9}",
    ),
    "--vocab-from a file without one": (
        "records no vocabulary; --vocab-from reads",
        "{torch_gru} {out} --to rosetta --vocab-from {torch_rnn}",
    ),
    # paths and formats
    "IN is OUT": ("is the file being converted", "{torch_rnn} {torch_rnn} --to keras"),
    "OUT a folder": ("it is a folder", "{torch_rnn} {folder} --to keras"),
    "IN missing": ("file not found", "{folder}/missing {out} --to keras"),
    "--from X --to X": (
        "--from and --to are both torch: nothing to convert; --to rosetta, --to keras, "
        "--to mxnet, --to d2l-scratch, --to d2l-concise or --to onnx converts it",
        "{torch_rnn} {out} --from torch --to torch",
    ),
    "already the format": (
        "is already a keras file: nothing to convert",
        "{keras_lstm} {out} --to keras",
    ),
    "already the book's format": (
        "is already a d2l-scratch file: nothing to convert",
        "{scratch_gru} {out} --to d2l-scratch",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals(name: str, files: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    words, args = REFUSALS[name]
    argv = args.format(out=tmp_path / "out.safetensors", folder=tmp_path, **files).split()
    _refused(capsys, Path(argv[1]), words, *argv)  # argv[1] is OUT, left as it was


def test_a_refusal_leaves_an_existing_out_as_it_was(
    files: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    _refused(capsys, out, "records no vocabulary", files["keras_lstm"], out, "--to", "rosetta")
    assert out.read_bytes() == b"precious"


def test_a_learned_embedding_is_refused(tmp_path: Path, capsys: Any) -> None:
    ckpt = tmp_path / "embed.safetensors"
    vocab = ["<unk>", " ", "a", "b", "c"]
    params = model.init_params(5, 4, np.random.default_rng(0), "float32", embed_dim=3)
    meta = {"dtype": "float32", "config": {"num_hiddens": 4, "embed_dim": 3}, "vocab": vocab}
    checkpoint.save(ckpt, params, meta)
    for fw in convert.NATIVE:
        _refused(
            capsys,
            tmp_path / "out",
            "a learned embedding (E) has no place",
            ckpt,
            tmp_path / "out",
            "--to",
            fw,
        )


@pytest.mark.parametrize(
    "recorded, words",
    [
        ({"recurrent_activation": "hard_sigmoid"}, "records recurrent_activation 'hard_sigmoid'"),
        ({"activation": "relu"}, "records activation 'relu'; rosetta-rnn computes tanh there"),
    ],
)
def test_a_keras_layer_with_other_activations_is_refused(
    recorded: dict[str, str], words: str, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """Keras 2's GRU and LSTM gated with hard_sigmoid are different models, as a gated layer with
    a relu candidate is; the record may be ours or a plain metadata entry."""
    arrays = write_native(tmp_path / "k", "keras", LSTM, "tanh", rng)
    out = tmp_path / "out"
    ours = {"rosetta_rnn": json.dumps(recorded)}
    for metadata in (ours, recorded):
        safetensors_numpy.save_file(arrays, str(tmp_path / "k"), metadata=metadata)
        _refused(capsys, out, words, tmp_path / "k", out, "--to", "torch")


def test_half_precision_is_refused_naming_the_dtype(tmp_path: Path, capsys: Any) -> None:
    m = _torch_model(RNN, "tanh").half()
    safetensors_torch.save_file(m.state_dict(), str(tmp_path / "h"))
    out = tmp_path / "out"
    _refused(
        capsys, out, "is F16, which rosetta-rnn does not read", tmp_path / "h", out, "--to", "keras"
    )


def test_shapes_that_contradict_each_other_are_refused(tmp_path: Path, capsys: Any) -> None:
    state = {n: np.zeros((3 * H, H)) for n in convert.TORCH_NAMES}
    safetensors_numpy.save_file(state, str(tmp_path / "t"))
    out = tmp_path / "out"
    _refused(
        capsys,
        out,
        "rnn.weight_ih_l0 has shape [15, 5], expected [15, 15]",
        tmp_path / "t",
        out,
        "--to",
        "keras",
    )


# --- the raw reader --------------------------------------------------------------------------


def test_read_safetensors_reads_files_without_our_metadata(tmp_path: Path) -> None:
    a = {"w": np.arange(6.0).reshape(2, 3), "b": np.float32([-0.0, 1])}
    safetensors_numpy.save_file(a, str(tmp_path / "plain"))
    safetensors_numpy.save_file(a, str(tmp_path / "pt"), metadata={"format": "pt"})
    for name, meta in (("plain", {}), ("pt", {"format": "pt"})):
        tensors, raw = checkpoint.read_safetensors(tmp_path / name)
        assert raw == meta and same_arrays(tensors, a)
    with pytest.raises(CheckpointError, match="no rosetta-rnn metadata"):
        checkpoint.load(tmp_path / "pt")
    with pytest.raises(CheckpointError, match=r"^file not found: "):
        checkpoint.read_safetensors(tmp_path / "none")

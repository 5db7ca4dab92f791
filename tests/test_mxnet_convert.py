"""``rosetta-rnn convert --to mxnet`` / ``--from mxnet``: Gluon 1.9's rnn.RNN/GRU/LSTM + nn.Dense
parameters as safetensors.

The layout tests need no MXNet: Gluon's names over torch's arrays, the format found from the
names, every cell through the command and back bit for bit, the refusals, and the recipe on
docs/convert.md being the worker's code. The ``mxnet`` tests run that recipe in MXNet 1.9.1
(``backends/mxnet_convert.py`` in its own worker): Gluon models saved by it convert to torch
and back bit for bit and run as torch's nn.GRU/nn.LSTM do; files convert writes load into
Gluon's layers and run as core's forward does, within the tolerance table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import one_line_error, run_cli

from rosetta_rnn import backends
from rosetta_rnn.backends.worker import Worker
from rosetta_rnn.cli import main
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, checkpoint, convert, model
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN

REPO = Path(__file__).resolve().parent.parent
V, H, T, B = 7, 5, 6, 3  # vocabulary, hidden units, steps, batch
DTYPES = ("float32", "float64")
# (cell, the RNN's activation, train's flags): the checkpoints that convert to Gluon
CELLS = {
    "rnn-tanh": (RNN, "tanh", []),
    "rnn-relu": (RNN, "relu", ["--activation", "relu"]),
    "gru-reset-after": (GRU_RESET_AFTER, "tanh", ["--cell", "gru", "--gru", "reset-after"]),
    "lstm": (LSTM, "tanh", ["--cell", "lstm", "--forget-bias", "1"]),
}
TINY = ["--epochs", "1", "--num-hiddens", "8", "--max-tokens", "500"]
TINY += ["--batch-size", "4", "--num-steps", "8"]
ERRORS: dict[str, float] = {}
"""The errors the mxnet tests measured, printed at the end of the module (pytest -s)."""


def random_layer(cell: str, rng: Any, dtype: str = "float64", V: int = V) -> convert.Layer:
    """A ``Layer`` of ``cell`` with asymmetric matrices and every bias nonzero, both of a pair."""
    params = cells.init_params(cell, V, H, rng, dtype)
    layer = convert.from_params({k: (v + 0.1).astype(dtype) for k, v in params.items()})
    layer.b_h = {g: (rng.standard_normal(H) * 0.5).astype(dtype) for g in layer.b_h}
    return layer


def convert_ok(capsys: Any, *args: Any) -> str:
    code, out, err = run_cli(capsys, "convert", *map(str, args))
    assert code == 0, err
    assert len(out.splitlines()) == 1 and out.startswith("wrote "), out
    return out


def vocab_file(path: Path, size: int = V) -> Path:
    vocab = ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"][:size]
    checkpoint.save(path, {"x": np.zeros(1)}, {"vocab": vocab, "token": "char"})
    return path


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Equal names, dtypes, shapes and bytes (-0.0 is not 0.0)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def _arrays(x: Any) -> list[np.ndarray]:
    """The arrays of a (nested) tuple or list, in order."""
    if isinstance(x, tuple | list):
        return [a for part in x for a in _arrays(part)]
    return [np.asarray(x)]


def rel_error(got: Any, ref: Any) -> float:
    """max|got - ref| / max|ref| over every array of two equal structures (logits, final
    state), as the conformance suite measures."""
    pairs = zip(_arrays(got), _arrays(ref), strict=True)
    return max(float(np.max(np.abs(g - r)) / np.max(np.abs(r))) for g, r in pairs)


# --- layout: no MXNet needed ---------------------------------------------------------------


@pytest.mark.parametrize("cell", [RNN, GRU_RESET_AFTER, LSTM])
def test_gluons_parameters_are_torchs_arrays_under_gluons_names(cell: str, rng: Any) -> None:
    layer = random_layer(cell, rng)
    gluon, torch_ = convert.to_mxnet(layer), convert.to_torch(layer)
    assert tuple(gluon) == convert.MXNET_NAMES
    renamed = dict(zip(convert.MXNET_NAMES, torch_.values(), strict=True))
    assert same_arrays(gluon, renamed)
    assert same_arrays(convert.to_mxnet(convert.from_mxnet(gluon)), gluon)
    # save_parameters' names for the recurrent layer read as the same model
    saved = {
        ({v: k for k, v in convert.MXNET_SAVED.items()}).get(k, k): a for k, a in gluon.items()
    }
    assert "rnn._unfused.0.i2h_weight" in saved
    assert same_arrays(convert.to_mxnet(convert.from_mxnet(saved)), gluon)
    assert convert.detect_format(gluon, None) == convert.detect_format(saved, None) == "mxnet"


def test_the_layer_names_say_the_rnns_activation() -> None:
    assert convert.layer_name("mxnet", RNN, "relu") == "gluon.rnn.RNN(activation='relu')"
    assert convert.layer_name("mxnet", RNN, "tanh") == "gluon.rnn.RNN(activation='tanh')"
    assert convert.layer_name("mxnet", GRU_RESET_AFTER) == "gluon.rnn.GRU"
    assert convert.layer_name("mxnet", LSTM) == "gluon.rnn.LSTM"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: Any) -> dict[tuple[str, str], Path]:
    """Checkpoints ``train`` wrote: every cell Gluon holds, float32 and float64."""
    folder = tmp_path_factory.mktemp("trained")
    paths = {}
    for name, (_, _, flags) in CELLS.items():
        for dtype in DTYPES:
            path = folder / f"{name}-{dtype}.safetensors"
            argv = ["train", *TINY, *flags, "--dtype", dtype, "--checkpoint", str(path)]
            assert main(argv) == 0
            paths[name, dtype] = path
    return paths


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CELLS))
def test_a_checkpoint_converts_to_gluon_and_back_bit_for_bit(
    name: str, dtype: str, trained: dict[tuple[str, str], Path], tmp_path: Path, capsys: Any
) -> None:
    cell, activation, _ = CELLS[name]
    ckpt = trained[name, dtype]
    gluon = tmp_path / "gluon.safetensors"
    out = convert_ok(capsys, ckpt, gluon, "--to", "mxnet")
    layer = convert.layer_name("mxnet", cell, activation)
    assert out.startswith(f"wrote mxnet {layer} + gluon.nn.Dense parameters (vocab 28, 8 hidden,")
    arrays, raw = checkpoint.read_safetensors(gluon)
    assert set(arrays) == set(convert.MXNET_NAMES) and {str(a.dtype) for a in arrays.values()} == {
        dtype
    }
    meta = json.loads(raw["rosetta_rnn"])
    assert (meta["framework"], meta["layer"], meta["activation"]) == ("mxnet", layer, activation)
    assert raw.get("activation") == (activation if cell == RNN else None)
    back = tmp_path / "back.safetensors"
    convert_ok(capsys, gluon, back, "--from", "mxnet", "--to", "rosetta")
    assert back.read_bytes() == ckpt.read_bytes()


def test_json_output_names_gluons_layer(
    trained: dict[tuple[str, str], Path], tmp_path: Path, capsys: Any
) -> None:
    ckpt = trained["rnn-relu", "float32"]
    code, out, _ = run_cli(
        capsys, "convert", str(ckpt), str(tmp_path / "g"), "--to", "mxnet", "--json"
    )
    doc = json.loads(out)
    assert code == 0 and (doc["to"], doc["layer"]) == ("mxnet", "gluon.rnn.RNN(activation='relu')")


def _refused(capsys: Any, words: str, *args: Any) -> None:
    out = Path(str(args[1]))
    code, stdout, err = run_cli(capsys, "convert", *map(str, args))
    assert code == 2 and stdout == "", err
    one_line_error(err, words)
    assert not out.exists()


def test_refusals(tmp_path: Path, capsys: Any, rng: Any) -> None:
    from safetensors.numpy import save_file

    out = tmp_path / "out.safetensors"
    vocab = vocab_file(tmp_path / "vocab")
    # the reset-before GRU: d2l 9.1's, and Keras' GRU(reset_after=False)
    before = tmp_path / "before.safetensors"
    save_file(convert.to_keras(random_layer(GRU_RESET_BEFORE, rng)), str(before))
    _refused(capsys, convert.NO_MXNET_RESET_BEFORE, before, out, "--to", "mxnet")
    # a learned embedding
    ckpt = tmp_path / "embed.safetensors"
    params = model.init_params(5, 4, rng, "float32", embed_dim=3)
    meta = {
        "dtype": "float32",
        "config": {"num_hiddens": 4, "embed_dim": 3},
        "vocab": list("abcde"),
    }
    checkpoint.save(ckpt, params, meta)
    _refused(
        capsys, "a learned embedding (E) has no place in MXNet Gluon's", ckpt, out, "--to", "mxnet"
    )
    # a Gluon RNN that does not say its activation (Gluon's default is relu, torch's tanh)
    plain = tmp_path / "plain.safetensors"
    gluon = convert.to_mxnet(random_layer(RNN, rng))
    save_file(gluon, str(plain))
    _refused(capsys, convert.NO_MXNET_ACTIVATION, plain, out, "--to", "torch")
    convert_ok(capsys, plain, out, "--to", "torch", "--activation", "relu")
    out.unlink()
    # a Gluon GRU asked as the reset-before one, a Gluon file asked as another
    gru = tmp_path / "gru.safetensors"
    save_file(convert.to_mxnet(random_layer(GRU_RESET_AFTER, rng)), str(gru))
    _refused(capsys, "are different models", gru, out, "--to", "keras", "--gru", "reset-before")
    _refused(
        capsys,
        "is a mxnet file, not a torch file: use --from mxnet",
        gru,
        out,
        "--from",
        "torch",
        "--to",
        "keras",
    )
    _refused(capsys, "is already a mxnet file: nothing to convert", gru, out, "--to", "mxnet")
    _refused(capsys, "records no vocabulary", gru, out, "--to", "rosetta")
    # one parameter under both of Gluon's names; a second layer
    twice = {**convert.to_mxnet(random_layer(LSTM, rng))}
    twice["rnn._unfused.0.h2h_bias"] = twice["rnn.l0_h2h_bias"]
    save_file(twice, str(tmp_path / "twice"))
    _refused(
        capsys,
        "holds rnn._unfused.0.h2h_bias and rnn.l0_h2h_bias, one Gluon parameter twice",
        tmp_path / "twice",
        out,
        "--to",
        "torch",
    )
    two = {**twice, "rnn.l1_h2h_weight": twice["rnn.l0_h2h_weight"]}
    del two["rnn._unfused.0.h2h_bias"]
    save_file(two, str(tmp_path / "two"))
    _refused(
        capsys,
        "has tensors this conversion does not know: rnn.l1_h2h_weight",
        tmp_path / "two",
        out,
        "--to",
        "torch",
    )
    convert_ok(capsys, gru, out, "--to", "rosetta", "--vocab-from", vocab)


def test_the_recipe_on_the_page_is_the_workers_code() -> None:
    """docs/convert.md's Gluon recipe is backends/mxnet_convert.py's, which the mxnet tests run."""
    source = (REPO / "backends" / "mxnet_convert.py").read_text()
    begin = source.index("\n", source.index("# --- the recipe (docs/convert.md)")) + 1
    region = source[begin : source.index("# --- end of the recipe ---")].strip("\n")
    imports = ["import json", "import mxnet as mx", "import numpy as np"]
    imports.append("from mxnet.gluon import nn, rnn")
    assert all(f"\n{line}\n" in source[:begin] for line in imports)
    page = (REPO / "docs" / "convert.md").read_text()
    recipe = "\n".join([imports[0], "", *imports[1:], "", region])
    assert f"```python\n{recipe}\n```" in page


# --- in MXNet 1.9.1 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gluon(mxnet: Worker) -> Worker:
    """MXNet's worker, which serves backends/mxnet_convert.py's requests (the recipe)."""
    return mxnet


def problem(cell: str, rng: Any, dtype: str) -> tuple[np.ndarray, Any]:
    inputs = rng.integers(0, V, size=(T, B))
    state = tuple(
        (rng.standard_normal((B, H)) * 0.5).astype(dtype) for _ in range(2 if cell == LSTM else 1)
    )
    return inputs, state if cell == LSTM else state[0]


def run_torch(cell: str, state_dict: dict[str, np.ndarray], inputs: Any, state: Any) -> Any:
    """torch's nn.GRU/nn.LSTM + nn.Linear loaded (strictly) with ``state_dict``: (logits
    (T, B, V), the final state)."""
    import torch

    dtype = getattr(torch, str(state_dict["linear.weight"].dtype))
    kinds = {GRU_RESET_AFTER: torch.nn.GRU, LSTM: torch.nn.LSTM}
    m = torch.nn.ModuleDict(
        {"rnn": kinds[cell](V, H, dtype=dtype), "linear": torch.nn.Linear(H, V, dtype=dtype)}
    )
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    X = torch.nn.functional.one_hot(torch.from_numpy(inputs), V).to(dtype)
    parts = state if isinstance(state, tuple) else (state,)
    h0 = tuple(torch.from_numpy(p)[None] for p in parts)
    with torch.no_grad():
        Hs, final = m["rnn"](X, h0 if cell == LSTM else h0[0])
        logits = m["linear"](Hs)
    finals = tuple(f[0].numpy() for f in (final if cell == LSTM else (final,)))
    return logits.numpy(), finals if cell == LSTM else finals[0]


def summed_once(cell: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gluon's parameters after one trip through core's, which keeps one bias per gate but the
    reset-after candidate's (Gluon's GRU rows 2H:3H): each other pair's sum in i2h_bias (the
    input bias where the recurrent one is zero, bit for bit), zero in h2h_bias."""
    b_ih, b_hh = weights["rnn.l0_i2h_bias"], weights["rnn.l0_h2h_bias"]
    summed = np.ones(b_ih.shape, bool)
    if cell == GRU_RESET_AFTER:
        summed[2 * H :] = False
    out = dict(weights)
    out["rnn.l0_i2h_bias"] = np.where(summed & (b_hh != 0), b_ih + b_hh, b_ih)
    out["rnn.l0_h2h_bias"] = np.where(summed, np.zeros_like(b_hh), b_hh)
    return out


@pytest.mark.mxnet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", [GRU_RESET_AFTER, LSTM])
def test_a_gluon_model_converts_to_torch_and_back_exactly(
    cell: str, dtype: str, gluon: Worker, mxnet: Worker, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """A Gluon GRU or LSTM saved by the recipe (asymmetric matrices, every bias nonzero) -> torch
    -> Gluon is the same arrays, bit for bit; -> ours -> torch -> ours -> Gluon is too, once
    core has summed the pairs of biases it keeps as one (the first trip into ours). Gluon's
    own layers and torch's compute the same model on the converted weights."""
    weights = convert.to_mxnet(random_layer(cell, rng, dtype))
    src = tmp_path / "gluon.safetensors"
    gluon.call("gluon_save", cell, weights, str(src))
    assert same_arrays(checkpoint.read_safetensors(src)[0], weights)
    direct, direct_back = tmp_path / "direct.torch", tmp_path / "direct.gluon"
    convert_ok(capsys, src, direct, "--to", "torch")
    convert_ok(capsys, direct, direct_back, "--to", "mxnet")
    assert same_arrays(checkpoint.read_safetensors(direct_back)[0], weights)

    vocab = vocab_file(tmp_path / "vocab")
    ours, torch_ = tmp_path / "ours.safetensors", tmp_path / "torch.safetensors"
    again, back = tmp_path / "again.safetensors", tmp_path / "back.safetensors"
    convert_ok(capsys, src, ours, "--to", "rosetta", "--vocab-from", vocab)
    convert_ok(capsys, ours, torch_, "--to", "torch")
    convert_ok(capsys, torch_, again, "--to", "rosetta")
    assert again.read_bytes() == ours.read_bytes()
    convert_ok(capsys, again, back, "--to", "mxnet")
    returned = checkpoint.read_safetensors(back)[0]
    assert same_arrays(returned, summed_once(cell, weights))
    assert not same_arrays(returned, weights)  # the pairs were nonzero: summed, once
    convert_ok(capsys, back, tmp_path / "ours2", "--to", "rosetta")
    convert_ok(capsys, tmp_path / "ours2", tmp_path / "back2", "--to", "mxnet")
    assert same_arrays(checkpoint.read_safetensors(tmp_path / "back2")[0], returned)

    # Gluon's own layer (the recipe's model, and the worker's gluon_forward) and torch's
    inputs, state = problem(cell, rng, dtype)
    tol = tolerance(dtype, "values")
    for gluon_file, torch_file in ((src, direct), (back, torch_)):
        state_dict = checkpoint.read_safetensors(torch_file)[0]
        ref = run_torch(cell, state_dict, inputs, state)
        err = rel_error(gluon.call("gluon_run", cell, str(gluon_file), inputs, state), ref)
        ERRORS[f"gluon {cell} {dtype} vs torch ({gluon_file.stem})"] = err
        assert err <= tol, f"Gluon {cell} {dtype} against torch: {err:.3g} > {tol:g}"
        layer_weights = {k.removeprefix("rnn."): v for k, v in state_dict.items() if "_l0" in k}
        _, final = mxnet.call("gluon_forward", cell, layer_weights, inputs, state, dtype)
        assert rel_error(final, ref[1]) <= tol


@pytest.mark.mxnet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CELLS))
def test_a_converted_checkpoint_runs_in_gluon_as_in_core(
    name: str, dtype: str, gluon: Worker, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """ours -> mxnet, loaded by the recipe into Gluon's layer (an RNN built with the activation
    the file records), gives NumPy float64 core's logits and final state."""
    cell, activation, _ = CELLS[name]
    params = convert.to_params(random_layer(cell, rng, dtype))
    ckpt = tmp_path / "ours.safetensors"
    kind, _, gru = cell.partition("/")
    run = {"cell": kind, "gru": gru or None, "activation": activation}
    config = {"num_hiddens": H, "activation": activation}
    meta = {"dtype": dtype, "config": config, "vocab": ["<unk>", " ", *"abcde"], "run": run}
    checkpoint.save(ckpt, params, meta)
    dst = tmp_path / "gluon.safetensors"
    convert_ok(capsys, ckpt, dst, "--to", "mxnet")
    inputs, state = problem(cell, rng, dtype)
    ops = backends.load("numpy").make_ops("float64", "cpu")
    wide = {k: v.astype("float64") for k, v in params.items()}
    wide_state = tuple(_arrays(state)) if cell == LSTM else state.astype("float64")
    Hs, final = cells.any_forward(ops, model.to_backend(ops, wide), inputs, wide_state, activation)
    ref = (np.asarray(Hs) @ wide["W_hq"] + wide["b_q"], final)
    err = rel_error(gluon.call("gluon_run", cell, str(dst), inputs, state), ref)
    ERRORS[f"gluon {name} {dtype} vs core"] = err
    tol = tolerance(dtype, "values")
    if (name, dtype) == ("rnn-relu", "float64"):
        # a finding (tests/test_mxnet_worker.py): Gluon's float64 ReLU RNN is only
        # float32-accurate, where its tanh RNN, GRU and LSTM agree to 1e-12; never widened
        assert tol < err <= tolerance("float32", "values"), f"{name}: {err:.3g}"
    else:
        assert err <= tol, f"{name} {dtype}: {err:.3g} > {tol:g}"


@pytest.mark.mxnet
def test_gluons_save_parameters_file_converts(
    gluon: Worker, tmp_path: Path, capsys: Any, rng: Any
) -> None:
    """save_parameters' own names (rnn._unfused.0.i2h_weight ...), made safetensors by the
    recipe, read as Gluon's: to torch, the same arrays renamed."""
    weights = convert.to_mxnet(random_layer(LSTM, rng))
    src = tmp_path / "saved.safetensors"
    names = gluon.call("gluon_save_parameters", LSTM, weights, str(tmp_path / "p.params"), str(src))
    assert names == sorted([*convert.MXNET_SAVED, "dense.weight", "dense.bias"])
    convert_ok(capsys, src, tmp_path / "torch", "--to", "torch")
    got = checkpoint.read_safetensors(tmp_path / "torch")[0]
    assert same_arrays(got, dict(zip(convert.TORCH_NAMES, weights.values(), strict=True)))


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for what, err in sorted(ERRORS.items()):
        print(f"{what}: {err:.3g}")

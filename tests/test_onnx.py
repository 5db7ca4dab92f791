"""ONNX: the whole model exported fused and decomposed, read back bit for bit, run on ONNX
Runtime and on onnx's reference evaluator against the references, exporter mistakes caught by
conform and named by verify (core/onnx_model.py, conformance/onnx_subjects.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error, run_cli

from rosetta_rnn.conformance import checks, onnx_subjects, runner
from rosetta_rnn.conformance import verify as v
from rosetta_rnn.conformance.problems import CELLS, DEFAULT_PROBLEMS, Problem, for_cell
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.conformance.user_subjects import SubjectError
from rosetta_rnn.core import checkpoint, convert, model, onnx_model
from rosetta_rnn.core.cells import GRU_RESET_AFTER, LSTM, RNN
from rosetta_rnn.core.errors import BackendUnavailable

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

OPS = {RNN: "RNN", GRU_RESET_AFTER: "GRU", LSTM: "LSTM"}


def _params(cell: str, dtype: str = "float64", embed_dim: int | None = None, seed: int = 0):
    """Check weights that hide nothing: nonzero biases about a mean per gate, asymmetric
    matrices, batch 3 ≠ 5 steps."""
    problem = Problem(11, 6, 3, 5, "distinct", seed, cell=cell, embed_dim=embed_dim)
    params, inputs, _, state = problem.draw()
    return {k: a.astype(dtype) for k, a in params.items()}, inputs, state


def _save(path: Path, params: dict[str, np.ndarray], cell: str, embed_dim=None) -> Path:
    """A checkpoint of ``params`` as ``train`` writes one (in its order; a vocab of 11)."""
    kind, _, gru = cell.partition("/")
    meta = {
        "config": {"num_hiddens": 6, "embed_dim": embed_dim},
        "vocab": [f"t{i}" for i in range(11)],
        "run": {"cell": kind, "gru": gru or None},
        "dtype": str(params["W_hq"].dtype),
    }
    checkpoint.save(str(path), {k: params[k] for k in model.param_names(params)}, meta)
    return path


def _feeds(cell: str, inputs: np.ndarray, state, dtype: str) -> dict[str, np.ndarray]:
    parts = state if isinstance(state, tuple) else (state,)
    feeds = {"tokens": inputs.astype(np.int64), "h0": parts[0].astype(dtype)}
    if cell == LSTM:
        feeds["c0"] = parts[1].astype(dtype)
    return feeds


def _outcome(proto, runtime: str, feeds) -> bool:
    try:
        onnx_model.Runner(proto, runtime).run(feeds)
    except BackendUnavailable:
        return False
    return True


@pytest.mark.parametrize("cell", list(OPS))
def test_the_support_table_is_what_the_runtimes_do(cell: str) -> None:
    """Every (runtime, form, dtype) of ``SUPPORT`` runs, or fails, as the table says: ONNX
    Runtime has no float64 RNN, GRU or LSTM, everything else runs."""
    for (runtime, form, dtype), runs in onnx_model.SUPPORT.items():
        params, inputs, state = _params(cell, dtype)
        proto = convert.to_onnx_model(convert.from_params(params), form)
        assert _outcome(proto, runtime, _feeds(cell, inputs, state, dtype)) == runs, (
            runtime,
            form,
            dtype,
        )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embed_dim", [None, 4])
def test_both_forms_hold_the_parameters_bit_for_bit(cell: str, embed_dim) -> None:
    for dtype in ("float32", "float64"):
        params, *_ = _params(cell, dtype, embed_dim)
        for form in onnx_model.FORMS:
            proto = convert.to_onnx_model(convert.from_params(params), form)
            back = convert.from_onnx_model(onnx_model.parse(onnx_model.serialize(proto), "m"))
            assert back.form == form and back.layer.cell == cell
            got = convert.to_params(back.layer)
            assert set(got) == set(params)
            for k in params:
                assert got[k].dtype == params[k].dtype
                assert got[k].tobytes() == params[k].tobytes(), (form, k)


def _reference_forward(params, inputs, state):
    return checks.reference().forward(params, inputs, state)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("runtime", onnx_model.RUNTIMES)
def test_the_decomposed_form_is_float64_within_1e_12(cell: str, runtime: str) -> None:
    """The decomposed form in float64 on both runtimes, the final state and the LSTM's memory
    included, against NumPy float64 on the same weights; with a learned embedding too."""
    for embed_dim in (None, 4):
        params, inputs, state = _params(cell, "float64", embed_dim)
        proto = convert.to_onnx_model(convert.from_params(params), "decomposed")
        out = onnx_model.Runner(proto, runtime).run(_feeds(cell, inputs, state, "float64"))
        ref = _reference_forward(params, inputs, state)
        assert out["logits"].dtype == np.float64
        got = {
            "logits": out["logits"].reshape(ref["logits"].shape),
            "hidden": out["hidden"],
            "h_n": out["h_n"],
        }
        want = {"logits": ref["logits"], "hidden": ref["hidden"], "h_n": ref["hidden"][-1]}
        if cell == LSTM:
            got["c_n"], want["c_n"] = out["c_n"], ref["memory"]
        assert checks.max_error(got, want) <= 1e-12


@pytest.mark.parametrize("cell", CELLS)
def test_the_onnx_columns_pass_on_both_runtimes(cell: str) -> None:
    """conform's ONNX columns for one cell: fused float32 on ONNX Runtime and the reference
    evaluator, decomposed float64 on both, every check within the table's tolerance."""
    made, skipped = runner.onnx_columns(["float64", "float32"], "cpu", True, [cell])
    labels = {(s.label, s.dtype) for s in made}
    assert ("onnx:fused/onnxruntime", "float32") in labels
    assert ("onnx:fused/reference", "float32") in labels
    assert ("onnx:decomposed/onnxruntime", "float64") in labels
    assert ("onnx:decomposed/reference", "float64") in labels
    assert [s.column for s in skipped] == ["onnx:fused/onnxruntime-float64"]
    assert not any(s.fails for s in skipped)
    for subject in made:
        for name in onnx_subjects.ONNX_CHECKS:
            result = checks.run_check(name, subject, for_cell(DEFAULT_PROBLEMS, cell))
            assert result.passed, (subject.label, subject.dtype, name, result.max_error)
            assert result.tolerance == (
                0.0 if name.startswith("sample") else 1e-12 if subject.dtype == "float64" else 1e-5
            )


def test_conform_runs_the_onnx_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "conform", "--backends", "onnx", "--no-reference", "--cells", "gru-reset-after"
    )
    assert code == 0, out
    assert "onnx:fused/onnxruntime-float32" in out and "onnx:decomposed/reference-float64" in out
    assert "skipped onnx:fused/onnxruntime-float64: ONNX Runtime has no float64 kernel" in out
    assert "28 passed, 0 failed" in out  # 7 columns × 4 checks


def test_conform_asking_onnx_on_a_gpu_fails() -> None:
    made, skipped = runner.onnx_columns(["float32"], "gpu:0", True)
    assert not made and skipped[0].fails and "CPU" in skipped[0].reason


PLANTED_CASES = [
    (name, cell) for name, (cells, _, _) in onnx_subjects.PLANTED.items() for cell in cells
]
NAMED = {
    "linear-before-reset-0": "ONNX GRU linear_before_reset=0",
    "lstm-gates-torch-order": "the LSTM's gates stacked i, f, c, o",
    "gru-gates-torch-order": "z and r swapped",
    "bias-rows-swapped": "ONNX's B written as [Rb; Wb]",
}


@pytest.mark.parametrize(("name", "cell"), PLANTED_CASES)
def test_conform_catches_and_names_a_planted_exporter_mistake(name: str, cell: str) -> None:
    subject = onnx_subjects.OnnxSubject(
        "fused", "onnxruntime", "float32", cell, exporter=onnx_subjects.planted_exporter(name)
    )
    for check in ("hidden", "logits"):
        result = checks.run_check(check, subject, for_cell(DEFAULT_PROBLEMS, cell))
        assert not result.passed and result.max_error > 100 * result.tolerance
        assert NAMED[name] in result.message, result.message
    honest = onnx_subjects.OnnxSubject("fused", "onnxruntime", "float32", cell)
    assert checks.run_check("hidden", honest, for_cell(DEFAULT_PROBLEMS, cell)).passed


@pytest.mark.parametrize(("name", "cell"), PLANTED_CASES)
def test_verify_names_a_planted_exporter_mistake(name: str, cell: str) -> None:
    params, *_ = _params(cell, "float32")
    _, plant, _ = onnx_subjects.PLANTED[name]
    proto = plant(convert.to_onnx_model(convert.from_params(params), "fused"))
    report = v.verify(proto, weights=params)
    assert not report.passed
    assert report.first_failure.check == "outputs"
    assert any(NAMED[name] in m for m in report.mistakes), report.text()
    assert v.verify(
        convert.to_onnx_model(convert.from_params(params), "fused"), weights=params
    ).passed


def _torch_lm(cell: str, V: int, H: int):
    torch = pytest.importorskip("torch")
    layer = {RNN: torch.nn.RNN, GRU_RESET_AFTER: torch.nn.GRU, LSTM: torch.nn.LSTM}[cell]

    class LM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = layer(V, H)
            self.linear = torch.nn.Linear(H, V)

        def forward(self, X, state):
            Y, final = self.rnn(torch.nn.functional.one_hot(X, V).float(), state)
            return self.linear(Y), final

    torch.manual_seed(0)
    model = LM()
    with torch.no_grad():  # every bias well away from zero, each pair different
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3 + 0.2)
    return torch, model


@pytest.mark.parametrize("cell", list(OPS))
def test_a_torch_layer_through_ours_to_onnx_runs_as_the_layer(
    cell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch nn.RNN/GRU/LSTM -> rosetta-rnn -> ONNX (both commands), run in ONNX Runtime,
    within float32 tolerance of the torch layer itself; the ONNX file reads back to the same
    state dict, bit for bit."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    V, H = 11, 6
    torch, model = _torch_lm(cell, V, H)
    torch_file = tmp_path / "lm.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(torch_file))
    onnx_file = tmp_path / "lm.onnx"
    code, _out, err = run_cli(capsys, "convert", str(torch_file), str(onnx_file), "--to", "onnx")
    assert code == 0, err
    rng = np.random.default_rng(1)
    X = rng.integers(0, V, (5, 3))
    h0 = np.tanh(rng.standard_normal((3, H))).astype(np.float32)
    c0 = rng.standard_normal((3, H)).astype(np.float32)
    with torch.no_grad():
        state = (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None])
        logits, final = model(torch.from_numpy(X), state if cell == LSTM else state[0])
    proto = onnx_model.parse(onnx_file.read_bytes(), "lm.onnx")
    got = onnx_model.Runner(proto).run({"tokens": X, "h0": h0, "c0": c0})
    want = logits.numpy()
    assert np.abs(got["logits"] - want).max() / np.abs(want).max() <= tolerance("float32", "values")
    h_n = (final[0] if cell == LSTM else final)[0].numpy()
    assert np.abs(got["h_n"] - h_n).max() <= tolerance("float32", "values")
    back = tmp_path / "back.safetensors"
    assert run_cli(capsys, "convert", str(onnx_file), str(back), "--to", "torch")[0] == 0
    assert back.read_bytes() == torch_file.read_bytes() or _same_tensors(back, torch_file)


def _same_tensors(a: Path, b: Path) -> bool:
    ta, _ = checkpoint.read_safetensors(a)
    tb, _ = checkpoint.read_safetensors(b)
    return set(ta) == set(tb) and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)


def _torch_export(model, H: int, lstm: bool):
    """What torch.onnx.export (the TorchScript exporter) writes of d2l's concise model."""
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    X, h = torch.zeros(5, 3, dtype=torch.long), torch.zeros(1, 3, H)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (X, (h, h) if lstm else h),
            buffer,
            dynamo=False,
            input_names=["X", "h0", "c0"] if lstm else ["X", "h0"],
            dynamic_axes={
                "X": {0: "T", 1: "B"},
                "h0": {1: "B"},
                **({"c0": {1: "B"}} if lstm else {}),
            },
        )
    return onnx.load_model_from_string(buffer.getvalue())


@pytest.mark.parametrize("cell", list(OPS))
def test_convert_reads_torch_exporters_file(cell: str, tmp_path: Path, capsys) -> None:
    """torch's exporter names its tensors its own way (onnx::GRU_96 ...) and writes OneHot,
    Squeeze, MatMul, Add: the layer is found by the graph's structure, and converts to the
    state dict it was exported from, bit for bit."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, model = _torch_lm(cell, 11, 6)
    path = tmp_path / "torch.onnx"
    path.write_bytes(_torch_export(model, 6, cell == LSTM).SerializeToString())
    out = tmp_path / "back.safetensors"
    code, _, err = run_cli(capsys, "convert", str(path), str(out), "--to", "torch")
    assert code == 0, err
    got = safetensors_torch.load_file(str(out))
    want = model.state_dict()
    assert set(got) == set(want)
    assert all(np.array_equal(got[k].numpy(), want[k].numpy()) for k in want)
    code, printed, _ = run_cli(capsys, "verify", str(path))  # held to its own tensors
    assert code == 0, printed


def test_torch_exporters_file_passes_verify_and_a_wrong_attribute_is_named() -> None:
    """A file torch.onnx.export wrote (its own initializer names, OneHot, Squeeze), held to
    the state dict it came from; the same file with linear_before_reset=0 is named."""
    _, model = _torch_lm(GRU_RESET_AFTER, 11, 6)
    proto = _torch_export(model, 6, lstm=False)
    weights = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    report = v.verify(proto, weights=weights)
    assert report.passed, report.text()
    assert [r.check for r in report.ran] == [
        "outputs",
        "final state",
        "loss",
        "generate/greedy",
        "generate/sampled",
    ]
    wrong = onnx_subjects.PLANTED["linear-before-reset-0"][1](proto)
    report = v.verify(wrong, weights=weights)
    assert not report.passed
    assert any("linear_before_reset=0" in m for m in report.mistakes), report.text()


def test_verify_command_on_onnx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params, *_ = _params(LSTM, "float32")
    source = _save(tmp_path / "lstm.safetensors", params, LSTM)
    good = tmp_path / "good.onnx"
    assert run_cli(capsys, "convert", str(source), str(good), "--to", "onnx")[0] == 0
    code, out, _ = run_cli(capsys, "verify", str(good), "--weights", str(source))
    assert code == 0, out
    assert "passed: 5 checks agree" in out
    code, out, _ = run_cli(capsys, "verify", str(good))  # its own tensors: a file rosetta-rnn wrote
    assert code == 0 and "held to its own tensors" in out, out
    bad = tmp_path / "bad.onnx"
    proto = onnx_model.parse(good.read_bytes(), "good")
    bad.write_bytes(onnx_model.serialize(onnx_subjects.PLANTED["lstm-gates-torch-order"][1](proto)))
    code, out, _ = run_cli(capsys, "verify", str(bad), "--weights", str(source))
    assert code == 1
    assert "the LSTM's gates stacked i, f, c, o" in out
    code, out, _ = run_cli(
        capsys, "verify", str(bad), "--runtime", "reference", "--weights", str(source)
    )
    assert code == 1 and "onnx (reference)" in out
    code, _, err = run_cli(
        capsys, "verify", str(good), "--weights", str(tmp_path / "missing.safetensors")
    )
    assert code == 2
    one_line_error(err, "file not found")


@pytest.mark.parametrize("cell", CELLS)
def test_convert_round_trips_are_the_same_checkpoint(cell: str, tmp_path: Path) -> None:
    """ours -> ONNX (either form, and one form to the other) -> ours is the same file, byte
    for byte, for every cell, float32 and float64, one-hot and a learned embedding."""
    for dtype in ("float32", "float64"):
        for embed_dim in (None, 4):
            params, *_ = _params(cell, dtype, embed_dim)
            ours = _save(tmp_path / "ours.safetensors", params, cell, embed_dim)
            fused, dec, back = (tmp_path / n for n in ("f.onnx", "d.onnx", "back.safetensors"))
            convert.convert_file(ours, fused, None, "onnx")
            convert.convert_file(fused, dec, None, "onnx", onnx_form="decomposed")
            convert.convert_file(dec, back, None, "rosetta")
            assert back.read_bytes() == ours.read_bytes(), (dtype, embed_dim)


def test_convert_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params, *_ = _params(RNN, "float32", embed_dim=4)
    ours = _save(tmp_path / "emb.safetensors", params, RNN, 4)
    code, _, err = run_cli(
        capsys, "convert", str(ours), str(tmp_path / "t.safetensors"), "--to", "torch"
    )
    assert code == 2
    one_line_error(err, "a learned embedding (E) has no place in torch's recurrent layers")
    assert run_cli(capsys, "convert", str(ours), str(tmp_path / "e.onnx"), "--to", "onnx")[0] == 0
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01 not a model")
    code, _, err = run_cli(
        capsys, "convert", str(junk), str(tmp_path / "x.safetensors"), "--to", "rosetta"
    )
    assert code == 2
    one_line_error(err, "is not an ONNX model")
    fused = tmp_path / "e.onnx"
    code, _, err = run_cli(capsys, "convert", str(fused), str(tmp_path / "y.onnx"), "--to", "onnx")
    assert code == 2
    one_line_error(err, "is already a onnx file")


def test_without_onnx_installed_convert_says_what_to_install(tmp_path: Path) -> None:
    params, *_ = _params(RNN, "float32")
    ours = _save(tmp_path / "rnn.safetensors", params, RNN)
    script = (
        "import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
        "from rosetta_rnn.cli import main\n"
        f"sys.exit(main(['convert', {str(ours)!r}, {str(tmp_path / 'x.onnx')!r}, '--to', 'onnx']))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2
    one_line_error(done.stderr, "pip install 'rosetta-rnn[onnx]'")
    assert not (tmp_path / "x.onnx").exists()


def _fused_with(change) -> object:
    params, *_ = _params(GRU_RESET_AFTER, "float32")
    proto = convert.to_onnx_model(convert.from_params(params), "fused")
    change(proto, onnx_model.recurrent_node(proto))
    return proto


def test_reading_refuses_what_does_not_convert() -> None:
    from onnx import helper

    def bidirectional(proto, node) -> None:
        node.attribute.append(helper.make_attribute("direction", "bidirectional"))

    def twice(proto, node) -> None:
        copy = proto.graph.node.add()
        copy.CopyFrom(node)
        copy.name = "second"

    def no_bias(proto, node) -> None:
        node.input[3] = ""

    for change, words in (
        (bidirectional, "a bidirectional GRU does not convert"),
        (twice, "has 2 recurrent operators; one layer converts"),
        (no_bias, "the GRU has no B"),
    ):
        with pytest.raises(convert.ConversionError, match=words):
            convert.from_onnx_model(_fused_with(change))


def _foreign(proto, gemm: bool = False, **gemm_attrs):
    """Our fused export as another exporter might write it: its own tensor names, no
    metadata of ours, and with ``gemm`` the output layer as Reshape + Gemm(transB=1)."""
    from onnx import helper, numpy_helper

    out = type(proto)()
    out.CopyFrom(proto)
    del out.metadata_props[:]
    rename = {"W_hq": "lin.w", "b_q": "lin.b", "E": "emb.weight", "W": "w0", "R": "r0", "B": "b0"}
    arrays = onnx_model.initializers(out)
    for t in out.graph.initializer:
        t.name = rename.get(t.name, t.name)
    for n in out.graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
    if gemm:
        V = arrays["W_hq"].shape[1]
        keep = [n for n in out.graph.node if n.op_type not in ("MatMul", "Add")]
        del out.graph.node[:]
        out.graph.node.extend(keep)
        out.graph.initializer.append(numpy_helper.from_array(np.array([-1, V], np.int64), "flat"))
        out.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(arrays["W_hq"].T), "lin.wt")
        )
        out.graph.node.extend(
            [
                helper.make_node("Reshape", ["hidden", "flat2"], ["hidden2"]),
                helper.make_node(
                    "Gemm", ["hidden2", "lin.wt", "lin.b"], ["logits"], transB=1, **gemm_attrs
                ),
            ]
        )
        H = arrays["W_hq"].shape[0]
        out.graph.initializer.append(numpy_helper.from_array(np.array([-1, H], np.int64), "flat2"))
        out.graph.output[0].type.tensor_type.shape.ClearField("dim")
    return out


@pytest.mark.parametrize("gemm", [False, True])
def test_another_exporters_names_and_gemm_read_back(gemm: bool) -> None:
    for cell in (GRU_RESET_AFTER, LSTM):
        params, *_ = _params(cell, "float32", embed_dim=4)
        proto = _foreign(convert.to_onnx_model(convert.from_params(params), "fused"), gemm)
        got = convert.to_params(convert.from_onnx_model(proto).layer)
        assert set(got) == set(params)
        assert all(got[k].tobytes() == params[k].tobytes() for k in params)
        if gemm:
            with pytest.raises(convert.ConversionError, match="scales or transposes"):
                convert.from_onnx_model(
                    _foreign(convert.to_onnx_model(convert.from_params(params)), True, alpha=2.0)
                )


def test_a_foreign_file_with_an_embedding_becomes_a_checkpoint_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, *_ = _params(GRU_RESET_AFTER, "float32", embed_dim=4)
    path = tmp_path / "foreign.onnx"
    proto = _foreign(convert.to_onnx_model(convert.from_params(params)))
    path.write_bytes(proto.SerializeToString())
    vocab = _save(tmp_path / "vocab.safetensors", params, GRU_RESET_AFTER, 4)
    out = tmp_path / "ours.safetensors"
    args = ("convert", str(path), str(out), "--to", "rosetta", "--vocab-from", str(vocab))
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    tensors, meta = checkpoint.load_model(out)
    assert meta["config"]["embed_dim"] == 4
    assert all(tensors[k].tobytes() == params[k].tobytes() for k in params)
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(out), "--prefix", "t1")
    assert code == 0, err


def test_another_model_than_the_cell_is_refused() -> None:
    from onnx import helper

    def attr(name, value):
        def change(proto, node) -> None:
            node.attribute.append(helper.make_attribute(name, value))

        return change

    def computed_b(proto, node) -> None:
        proto.graph.node.insert(0, helper.make_node("Identity", ["B"], ["B_copy"]))
        node.input[3] = "B_copy"

    def sequence_lens(proto, node) -> None:
        node.input[4] = "tokens"

    for change, words in (
        (attr("clip", 0.5), "a clipped cell"),
        (attr("activation_alpha", [1.0]), "activation parameters"),
        (computed_b, "B is computed, not stored"),
        (sequence_lens, "takes sequence_lens"),
    ):
        with pytest.raises(convert.ConversionError, match=words):
            convert.from_onnx_model(_fused_with(change))
    proto = _fused_with(lambda p, n: None)
    node = onnx_model.recurrent_node(proto)
    del node.attribute[:]
    node.attribute.extend(
        [
            helper.make_attribute("hidden_size", 6),
            helper.make_attribute("activations", ["Sigmoid", "Relu"]),
            helper.make_attribute("linear_before_reset", 1),
        ]
    )
    with pytest.raises(convert.ConversionError, match="rosetta-rnn's cell computes"):
        convert.from_onnx_model(proto)
    params, *_ = _params(LSTM, "float32")
    lstm = convert.to_onnx_model(convert.from_params(params))
    onnx_model.recurrent_node(lstm).attribute.append(helper.make_attribute("input_forget", 1))
    with pytest.raises(convert.ConversionError, match="input_forget"):
        convert.from_onnx_model(lstm)


def test_verify_refuses_a_relu_rnn_in_one_line(tmp_path: Path, capsys) -> None:
    params, *_ = _params(RNN, "float32")
    path = tmp_path / "relu.onnx"
    path.write_bytes(
        convert.to_onnx_model(convert.from_params(params), "fused", "relu").SerializeToString()
    )
    code, _, err = run_cli(capsys, "verify", str(path))
    assert code == 2
    one_line_error(err, "verify holds the chapter's tanh RNN")


def test_verify_takes_a_batch_major_one_hot_file() -> None:
    """A model that takes one-hot rows batch-major (B, T, V) and returns (B, T, V) logits, as
    a Keras export does, checked with inputs="batch-major"."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    V, H = 11, 6
    torch.manual_seed(0)

    class BatchFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(V, H, batch_first=True)
            self.linear = torch.nn.Linear(H, V)

        def forward(self, X, state):
            Y, h = self.rnn(X, state)
            return self.linear(Y), h

    model = BatchFirst()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3 + 0.2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(3, 5, V), torch.zeros(1, 3, H)),
            buffer,
            dynamo=False,
            input_names=["X", "h0"],
            dynamic_axes={"X": {0: "B", 1: "T"}, "h0": {1: "B"}},
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    weights = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    report = v.verify(proto, weights=weights, inputs="batch-major")
    assert report.passed, report.text()
    with pytest.raises(SubjectError, match="initial_h must have shape"):  # read time-major
        v.verify(proto, weights=weights)


def test_the_content_decides_not_the_name(tmp_path: Path, capsys) -> None:
    params, *_ = _params(RNN, "float32")
    ours = _save(tmp_path / "rnn.safetensors", params, RNN)
    named = tmp_path / "torch_named.onnx"
    assert run_cli(capsys, "convert", str(ours), str(named), "--to", "torch")[0] == 0
    back = tmp_path / "back.safetensors"
    code, _, err = run_cli(
        capsys, "convert", str(named), str(back), "--to", "rosetta", "--vocab-from", str(ours)
    )
    assert code == 0, err
    assert back.read_bytes() == ours.read_bytes()
    code, _, err = run_cli(
        capsys, "convert", str(ours), str(back), "--to", "torch", "--onnx-form", "decomposed"
    )
    assert code == 2
    one_line_error(err, "--onnx-form is the form of an ONNX file")


def test_conform_auto_is_the_cpu_for_onnx() -> None:
    made, skipped = runner.onnx_columns(["float32"], "auto", True, [RNN])
    assert made and not any(s.fails for s in skipped)


def test_onnx_columns_without_onnx_fail_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_subjects, "installed", lambda: "onnx is not installed (pip ...)")
    made, skipped = runner.onnx_columns(["float32"], "cpu", True)
    assert not made and skipped[0].fails and "not installed" in skipped[0].reason
    made, skipped = runner.onnx_columns(["float32"], "cpu", False)  # conform's default list
    assert not made and not skipped[0].fails

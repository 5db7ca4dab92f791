"""The book's current edition (``--recipe d2l-1.0``) against what it is not built from: the
frameworks' own layers, as the concise chapters (9.6, 10.1, 10.2) train them, and the figures
docs/editions.md shows, held to the runs that made them."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance import run_checks
from rosetta_rnn.conformance.subjects import KerasRNNOracle, TorchRNNOracle
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import checkpoint, model
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _recorded_steps(spec: run_spec.RunSpec, corpus: Path) -> list[tuple[Any, ...]]:
    """One epoch of the run ``train`` builds for ``spec`` (NumPy float64), step by step:
    (parameters before, inputs, labels, parameters after)."""
    engine = run_spec.engine(spec, numpy_backend)
    ops, seen = engine.ops, []

    def step(p: Any, x: Any, y: Any, s: Any, lr: float, theta: float) -> Any:
        out = engine.step(p, x, y, s, lr, theta)
        seen.append((model.to_numpy(ops, p), np.array(x), np.array(y), model.to_numpy(ops, out[0])))
        return out

    text = run_spec.load_text(spec, corpus)
    run_spec.build(spec, replace(engine, step=step), text, 1).trainer.run_epoch()
    return seen


def _sgd_clip(params: dict, grads: dict, lr: float, theta: float) -> dict:
    norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = min(1.0, theta / norm)
    return {k: params[k] - lr * grads[k] * scale for k in params}


CONCISE = [
    ("torch", RNN),
    ("torch", GRU_RESET_AFTER),  # 10.2's concise nn.GRU is the reset-after GRU
    ("torch", LSTM),
    ("keras", RNN),
    ("keras", GRU_RESET_BEFORE),
    ("keras", LSTM),
]


@pytest.mark.parametrize(("framework", "cell"), CONCISE)
def test_the_concise_models_train_as_the_recipe_does(
    framework: str, cell: str, timemachine: Path
) -> None:
    """9.6, 10.1, 10.2: the framework's own layer and a dense output, loaded with the
    parameters before each step of ``train --recipe d2l-1.0`` (float64), give the gradient
    whose clipped SGD step is the recipe's next parameters: one minibatch of 128 windows and
    the last, partial one of 44."""
    pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    gated = cell != RNN
    spec = replace(
        run_spec.RECIPES["d2l-1.0"],
        num_train=300,
        num_val=10,
        batch_size=128,
        dtype="float64",
        lr=4.0 if gated else 1.0,
        **run_spec.cell_settings(cell),
    )
    steps = _recorded_steps(spec, timemachine)
    assert [x.shape[1] for _, x, _, _ in steps] == [128, 128, 44]  # time-major (T, B)
    oracle = (TorchRNNOracle if framework == "torch" else KerasRNNOracle)("float64", cell=cell)
    worst = 0.0
    for before, inputs, labels, after in (steps[0], steps[-1]):
        H = before["W_hq"].shape[0]
        zeros = np.zeros((inputs.shape[1], H))
        state = (zeros, zeros) if cell == LSTM else zeros
        _, grads, _ = oracle.value_and_grad("autograd", before, inputs, labels, state)
        want = _sgd_clip(before, grads, spec.lr, spec.clip)
        for k in after:
            worst = max(worst, float(np.abs(after[k] - want[k]).max() / np.abs(want[k]).max()))
    assert worst <= tolerance("float64", "values"), f"{framework} {cell}: {worst:.3g}"


@pytest.mark.parametrize(("framework", "cell"), CONCISE)
def test_conforms_concise_cell_passes_each_layer_and_fails_a_wrong_one(
    framework: str, cell: str
) -> None:
    """``conform``'s ``train/recipe-1.0`` oracle cell: each framework layer steps as the
    reference's recipe does in float64 and float32; torch's RNN with b_h loaded into both of
    its biases (zero at the start, so only the later steps can tell) fails it."""
    pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    oracle = TorchRNNOracle if framework == "torch" else KerasRNNOracle
    for dtype in ("float64", "float32"):
        got = run_checks.check_concise(oracle(dtype, cell=cell))
        assert got.passed and got.check == "train/recipe-1.0", got
        assert 0 < got.max_error <= tolerance(dtype, "values") and got.dtype == dtype
    if (framework, cell) == ("torch", RNN):
        wrong = run_checks.check_concise(TorchRNNOracle("float64", second_bias=True))
        assert not wrong.passed and "step" in wrong.message, wrong
        assert "step 1 of" not in wrong.message  # step 1's biases are zero: it agrees


# --- docs/editions.md's figures ----------------------------------------------------------------


def _editions() -> Any:
    spec = importlib.util.spec_from_file_location("run_editions", DOCS / "run_editions.py")
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(DOCS))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(DOCS))
    return module


def test_the_editions_table_is_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/editions-table.md is what docs/run_editions.py renders from docs/editions.json."""
    editions = _editions()
    monkeypatch.setattr(editions, "HERE", tmp_path)
    results = json.loads((DOCS / "editions.json").read_text())
    editions.render(results)
    assert (tmp_path / "editions-table.md").read_text() == (DOCS / "editions-table.md").read_text()


def test_the_recipe_ends_in_the_books_regime_on_every_backend() -> None:
    """Every backend's RNN, 100 epochs of d2l 1.0's recipe: validation perplexity 7.1-7.6 (the
    book prints about 7.2), and the prediction continues 'it has'."""
    editions = _editions()
    results = json.loads((DOCS / "editions.json").read_text())
    rnn = {k: v for k, v in results.items() if k.startswith("rnn/")}
    assert {k.split("/")[1] for k in rnn} == set(editions.BACKENDS)
    for key, r in rnn.items():
        assert r["epochs"] == 100, key
        assert 7.1 <= r["val_perplexity"] <= 7.6, f"{key}: {r['val_perplexity']}"
        assert r["samples"]["it has"].startswith("it has ") and len(r["samples"]["it has"]) == 26
    assert (DOCS / "img" / "edition-1.0.png").is_file()


# --- the exercises of 9.5, as docs/editions.md gives them ---------------------------------------

SMALL = ["--num-train", "256", "--num-val", "64", "--epochs", "1", "--batch-size", "64"]
EXERCISES = {
    "a learned embedding": ["--embedding", "learned"],
    "ReLU": ["--activation", "relu"],
    "no clipping": ["--no-clip"],
    "no clipping at T = 256": ["--no-clip", "--num-steps", "256"],
    "the last step's loss": ["--loss", "last-step"],
}


@pytest.mark.parametrize("exercise", EXERCISES)
def test_the_exercises_run_on_the_current_edition(
    exercise: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each exercise's command trains the recipe with its change and validates every epoch;
    the checkpoint samples with a temperature and an α, and scores another text."""
    from rosetta_rnn.cli import main

    ckpt = tmp_path / "run.safetensors"
    argv = ["train", "--recipe", "d2l-1.0", *SMALL, *EXERCISES[exercise], "--json"]
    assert main([*argv, "--checkpoint", str(ckpt)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert math.isfinite(doc["val_perplexity"]) and math.isfinite(doc["val_book_perplexity"])
    spec = run_spec.RunSpec.from_meta(checkpoint.load_model(ckpt)[1], str(ckpt))
    assert spec.recipe == "d2l-1.0" and spec.sampling == "windows"
    for how in (["--temperature", "1"], ["--alpha", "2"]):
        assert main(["generate", "--checkpoint", str(ckpt), *how, "--seed", "1"]) == 0
        assert capsys.readouterr().out.startswith("it has")
    other = tmp_path / "other.txt"
    other.write_text("It has been said, that the time traveller came back.\n" * 6)
    assert main(["eval", "--checkpoint", str(ckpt), "--corpus", str(other)]) == 0
    assert "counted as <unk>" in capsys.readouterr().out


@pytest.mark.parametrize("loss", ["all-steps", "last-step"])
def test_eval_scores_a_current_edition_checkpoint_as_its_run_validated(
    loss: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eval`` on a d2l 1.0 checkpoint reads another text whole, with the run's sorted
    vocabulary, and scores every window of it as the run validated (its minibatch, the last one
    partial, each from a zero state; the last step's labels where it trained on those): the
    plain reference's figures from the same weights, in float64."""
    from rosetta_rnn.cli import main
    from rosetta_rnn.conformance import reference
    from rosetta_rnn.core import data

    ckpt, batch = tmp_path / "run.safetensors", 48
    argv = ["train", "--recipe", "d2l-1.0", *SMALL, "--batch-size", str(batch), "--loss", loss]
    assert main([*argv, "--num-steps", "7", "--checkpoint", str(ckpt), "--json"]) == 0
    capsys.readouterr()
    other = tmp_path / "other.txt"
    other.write_text("It has been said,\nthat the Time Traveller came back!\n" * 4)
    assert main(["eval", "--checkpoint", str(ckpt), "--corpus", str(other), "--dtype",
                 "float64", "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)

    book_text = data.locate_time_machine(None)
    vocab = reference.SortedVocab(
        reference.tokenize_whole(reference.read_time_machine_whole(book_text))
    )
    ids = [vocab[t] for t in reference.tokenize_whole(reference.read_time_machine_whole(other))]
    tensors, _ = checkpoint.load_model(ckpt)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    count = len(ids) - 7
    assert count % batch != 0  # the last minibatch is partial
    want, want_book = reference.window_perplexities(
        params, ids, range(count), batch, 7, last_step=loss == "last-step"
    )
    assert doc["reading"] == "windows"
    assert doc["tokens"] == count * (1 if loss == "last-step" else 7)
    assert doc["unknown_tokens"] == 0
    tol = tolerance("float64", "values")
    assert abs(doc["perplexity"] - want) <= tol * want
    assert abs(doc["book_perplexity"] - want_book) <= tol * want_book
    assert abs(want - want_book) > 1e3 * tol * want  # the two figures differ: both are checked


def test_the_benchmarks_page_quotes_the_current_editions_bench_run() -> None:
    """docs/benchmarks.md's table and sentence on d2l 1.0's shape are the committed run's
    targets (benchmarks/results/cpu-2core/d2l-1.0/)."""
    root = DOCS.parent
    bench = json.loads((root / "benchmarks/results/cpu-2core/d2l-1.0/results.json").read_text())
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert bench["shape"]["batch_size"] == 1024 and bench["shape"]["num_hiddens"] == 32
    ratios = {}
    for t in bench["targets"]:
        if "×" in t["target"] and "roofline" not in t["target"]:
            met = "met" if t["met"] else "missed"
            assert f"| {t['cell']} | {t['target']} | {t['value']:.2f}× | {met} |" in page
            ratios[t["target"]] = f"{t['value']:.2f}×"
    prose = " ".join(page.split())
    assert f"{ratios['torch ≥ 1.00× torch.nn.RNN']} its `nn.RNN`" in prose
    assert f"{ratios['torch ≥ 1.00× torch.nn.GRU']} its `nn.GRU`" in prose
    assert f"{ratios['torch ≥ 1.00× torch.nn.LSTM']} its `nn.LSTM`" in prose
    assert f"`bptt/jit` is {ratios['jax ≥ 1.00× jax.lax.scan']} its `lax.scan`" in prose
    assert f"best LSTM step is {ratios['tensorflow ≥ 1.00× keras.LSTM']} Keras' `LSTM`" in prose

    def speed(cell: str, name: str) -> float:
        (row,) = [r for r in bench["rows"] if r["cell"] == cell and r["name"] == name]
        return float(row["tokens_per_sec"])

    layers = {"rnn": "torch.nn.RNN", "gru/reset-after": "torch.nn.GRU", "lstm": "torch.nn.LSTM"}
    level = [
        speed(c, "torch autograd/torch.compile") / speed(c, peer) for c, peer in layers.items()
    ]
    assert "level with them ({:.2f}×, {:.2f}×, {:.2f}×)".format(*level) in prose

"""Issue-level agreement through the CLI on The Time Machine at the chapter's shapes: the same
seed and config give the same perplexities on every backend, and a checkpoint written by any
backend generates the same text on every other."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from rosetta_rnn import backends
from rosetta_rnn.cli import main
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core.errors import BackendUnavailable

EPOCHS = "20"
INSTALLED = []
for _name in backends.BACKENDS:
    try:
        backends.load(_name)
        INSTALLED.append(_name)
    except BackendUnavailable:
        pass

DTYPES = ("float64", "float32")


def _train(corpus: Path, backend: str, dtype: str, ckpt: Path, *flags: str) -> list[float]:
    args = [
        "train",
        "--corpus",
        str(corpus),
        "--backend",
        backend,
        "--dtype",
        dtype,
        "--epochs",
        EPOCHS,
        "--checkpoint",
        str(ckpt),
        "--json",
        *flags,
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return [h["perplexity"] for h in json.loads(out.getvalue())["history"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, timemachine: Path) -> dict:
    """20 epochs of the chapter's config on every installed backend, float64 and float32."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for dtype in DTYPES:
        for name in INSTALLED:
            ckpt = folder / f"{name}-{dtype}.safetensors"
            out[(name, dtype)] = (_train(timemachine, name, dtype, ckpt), ckpt)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [b for b in INSTALLED if b != "numpy"])
def test_perplexities_agree_with_numpy(runs: dict, name: str, dtype: str) -> None:
    ref, _ = runs[("numpy", dtype)]
    got, _ = runs[(name, dtype)]
    assert len(got) == len(ref) == int(EPOCHS)
    worst = max(abs(a - b) / b for a, b in zip(got, ref, strict=True))
    assert worst <= tolerance(dtype, "epochs"), f"{name}-{dtype}: {worst:.3g}"


@pytest.mark.parametrize("loader", INSTALLED)
@pytest.mark.parametrize("writer", INSTALLED)
def test_any_checkpoint_generates_the_same_text_everywhere(
    runs: dict, writer: str, loader: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ckpt = runs[(writer, "float64")]
    texts = []
    for name in ("numpy", loader):
        assert main(["generate", "--checkpoint", str(ckpt), "--backend", name]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]
    assert texts[0].startswith("time traveller")


# --- the gated cells: d2l 9.1 and 9.2 at their chapters' size, float64 -----------------------

CELLS = {
    "gru-reset-before": ["--cell", "gru"],
    "gru-reset-after": ["--cell", "gru", "--gru", "reset-after"],
    "lstm": ["--cell", "lstm"],
}


@pytest.fixture(scope="module")
def cell_runs(tmp_path_factory: pytest.TempPathFactory, timemachine: Path) -> dict:
    """20 float64 epochs of d2l 9.1's GRU (both formulations) and 9.2's LSTM, 256 hidden units
    and the chapter's other settings, on every installed backend."""
    folder = tmp_path_factory.mktemp("cells")
    out = {}
    for cell, flags in CELLS.items():
        for name in INSTALLED:
            ckpt = folder / f"{cell}-{name}.safetensors"
            history = _train(timemachine, name, "float64", ckpt, *flags, "--num-hiddens", "256")
            out[(cell, name)] = (history, ckpt)
    return out


@pytest.mark.parametrize("name", [b for b in INSTALLED if b != "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_perplexities_agree_with_numpy(cell_runs: dict, cell: str, name: str) -> None:
    ref, _ = cell_runs[(cell, "numpy")]
    got, _ = cell_runs[(cell, name)]
    assert len(got) == len(ref) == int(EPOCHS)
    assert ref[-1] < 0.7 * ref[0]  # it learns (about 25 -> 15.5): the curves are not flat
    worst = max(abs(a - b) / b for a, b in zip(got, ref, strict=True))
    print(f"{cell} {name}: {worst:.3g}")  # the README's figures (pytest -s)
    assert worst <= tolerance("float64", "epochs"), f"{cell} {name}: {worst:.3g}"


@pytest.mark.parametrize("cell", CELLS)
def test_any_cell_checkpoint_generates_the_same_text_everywhere(
    cell_runs: dict, cell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every writer's checkpoint, loaded by every backend, continues 'time traveller' alike."""
    texts = {}
    for writer in INSTALLED:
        _, ckpt = cell_runs[(cell, writer)]
        for loader in INSTALLED:
            assert main(["generate", "--checkpoint", str(ckpt), "--backend", loader]) == 0
            texts[(writer, loader)] = capsys.readouterr().out
    assert len(set(texts.values())) == 1, texts
    assert next(iter(texts.values())).startswith("time traveller")


# --- the book's current edition: --recipe d2l-1.0, every backend and grad engine -------------

CURRENT = ("--recipe", "d2l-1.0", "--num-train", "2000", "--num-val", "1000")
"""d2l 1.0's run with fewer windows: 1,024 + 976 training and 1,000 validation windows, so both
loaders end in a partial minibatch (a second shape for the compiled steps)."""
FIGURES = ("perplexity", "book_perplexity", "val_perplexity", "val_book_perplexity")
CURRENT_EPOCHS = 3


def _engines() -> list[tuple[str, str]]:
    return [(n, g) for n in INSTALLED for g in backends.load(n).GRAD_MODES]


def _train_current(corpus: Path, backend: str, grad: str, dtype: str, ckpt: Path) -> dict:
    args = ["train", "--corpus", str(corpus), "--backend", backend, "--grad", grad]
    args += ["--dtype", dtype, "--epochs", str(CURRENT_EPOCHS), "--json", *CURRENT]
    args += ["--checkpoint", str(ckpt)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def current_runs(tmp_path_factory: pytest.TempPathFactory, timemachine: Path) -> dict:
    """Three epochs of d2l 1.0's recipe on every installed backend and grad engine, float64 and
    float32."""
    folder = tmp_path_factory.mktemp("current")
    return {
        (name, grad, dtype): _train_current(
            timemachine, name, grad, dtype, folder / f"{name}-{grad}-{dtype}.safetensors"
        )
        for dtype in DTYPES
        for name, grad in _engines()
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "grad"), [e for e in _engines() if e[0] != "numpy"])
def test_the_current_edition_agrees_with_numpy(
    current_runs: dict, name: str, grad: str, dtype: str
) -> None:
    """Training and validation perplexity, token-weighted and the book's, every epoch."""
    ref = current_runs[("numpy", "bptt", dtype)]
    got = current_runs[(name, grad, dtype)]
    assert len(got["history"]) == len(ref["history"]) == CURRENT_EPOCHS
    worst = 0.0
    for mine, theirs in zip(got["history"], ref["history"], strict=True):
        for key in FIGURES:
            worst = max(worst, abs(mine[key] - theirs[key]) / theirs[key])
    assert worst <= tolerance(dtype, "epochs"), f"{name} {grad} {dtype}: {worst:.3g}"
    assert got["cell"] == "rnn" and got["config"]["batch_size"] == 1024


def test_the_current_editions_run_reports_what_the_book_plots(current_runs: dict) -> None:
    """The JSON names both figures every epoch; the vocabulary and prefix are the edition's."""
    run = current_runs[("numpy", "bptt", "float64")]
    first, last = run["history"][0], run["history"][-1]
    assert set(FIGURES) <= set(first) and last["val_perplexity"] < first["val_perplexity"]
    assert all(run[k] == last[k] for k in FIGURES if k != "perplexity")
    assert list(run["samples"]) == ["it has"] and len(run["samples"]["it has"]) == 6 + 20


@pytest.mark.parametrize("loader", INSTALLED)
def test_a_current_edition_checkpoint_generates_it_has_everywhere(
    current_runs: dict, loader: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """generate reads the recipe from the checkpoint: 'it has' and 20 characters, alike on
    every backend."""
    ckpt = current_runs[("numpy", "bptt", "float64")]["checkpoint"]
    texts = []
    for name in ("numpy", loader):
        assert main(["generate", "--checkpoint", str(ckpt), "--backend", name]) == 0
        texts.append(capsys.readouterr().out.removesuffix("\n"))
    assert texts[0] == texts[1]
    assert texts[0].startswith("it has") and len(texts[0]) == 26

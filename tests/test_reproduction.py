"""The chapter's results, reproduced: 500 epochs of the default config. Slow (minutes per
backend): run with ROSETTA_RNN_SLOW=1. The README and the closing notes carry the figures."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from rosetta_rnn import backends
from rosetta_rnn.cli import main
from rosetta_rnn.core import data
from rosetta_rnn.core.errors import BackendUnavailable


def _train(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", *args, "--json"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_500_epochs_reach_perplexity_one(backend: str, timemachine: Path, tmp_path: Path) -> None:
    try:
        backends.load(backend)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    ckpt = tmp_path / "m.safetensors"
    doc = _train("--backend", backend, "--corpus", str(timemachine), "--checkpoint", str(ckpt))
    assert doc["epochs"] == 500
    assert doc["perplexity"] <= 1.1  # d2l: 1.0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", "--checkpoint", str(ckpt), "--backend", backend]) == 0
    text = out.getvalue().rstrip("\n")
    corpus = "".join(data.read_lines(timemachine))  # d2l's char stream: lines joined as is
    assert text.startswith("time traveller")
    # book text, spliced at most once: which continuation a float32 run memorises depends on
    # its rounding (the four backends differ), but at perplexity ~1.03 it is the book's
    assert _spliced_at_most_once(text, corpus)


def _spliced_at_most_once(text: str, corpus: str) -> bool:
    return text in corpus or any(
        text[:i] in corpus and text[i:] in corpus for i in range(1, len(text))
    )


@pytest.mark.slow
def test_random_sampling_reaches_the_chapters_range(timemachine: Path) -> None:
    """d2l prints 1.3-1.5 for its use_random_iter run, which is not this iterator (see the next
    test). Ours fluctuates from epoch to epoch: seeds 0-3 ended at
    1.51, 1.62, 1.59, 1.61, with last-50-epoch means 1.54-1.56 and best epochs 1.35-1.41
    (measured, see the README). A float32 run's trajectory depends on its rounding, so we
    check the regime with room for the spread between seeds: the late epochs reach the
    chapter's range and stay near it; the single last epoch is not a stable statistic."""
    doc = _train("--corpus", str(timemachine), "--sampling", "random")
    late = [h["perplexity"] for h in doc["history"][-50:]]
    assert min(late) <= 1.5
    assert sum(late) / len(late) <= 1.65


@pytest.mark.slow
def test_d2l_use_random_iter_run_is_sequential_with_reset_state(timemachine: Path) -> None:
    """d2l's "random sampling" figure (1.3-1.5 across its printings) comes from
    ``train_ch8(..., use_random_iter=True)`` fed the *sequential* ``train_iter``: only the state
    is re-initialised every minibatch. ``--reset-state`` is that run. Measured (NumPy float32):
    seeds 0-3 end at 1.308, 1.337, 1.494, 1.527, last-50 means 1.45-1.47; seed 0 greedily
    continues 'time traveller' with d2l's own printed sample 'it s against reason said
    filbycan a cube that does' (two pieces of the book joined at 'said filby'). The last
    epoch alone and the exact sample depend on the run's float32 rounding; the test checks
    the regime, with room for the spread between seeds."""
    doc = _train("--corpus", str(timemachine), "--reset-state")
    late = [h["perplexity"] for h in doc["history"][-50:]]
    assert min(late) <= 1.5  # d2l: 1.3-1.5
    assert sum(late) / len(late) <= 1.55


D2L_CELLS = {
    # d2l 9.1 and 9.2 (PyTorch edition, 0.17.5 and zh 2.0 builds): GRU from scratch printed
    # 1.0-1.3 over the book's builds (1.1 in the last ones), the LSTM from scratch 1.1-1.4
    "gru": (["--cell", "gru"], 1.3),
    "gru-reset-after": (["--cell", "gru", "--gru", "reset-after"], 1.3),
    "lstm": (["--cell", "lstm"], 1.4),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.BACKENDS)
@pytest.mark.parametrize("cell", D2L_CELLS)
def test_the_gated_chapters_reach_the_books_perplexity(
    backend: str, cell: str, timemachine: Path, tmp_path: Path
) -> None:
    """d2l 9.1/9.2's runs: 256 hidden units, lr 1, 500 epochs, batch 32, 35 steps, the first
    10000 characters. The book's printed perplexity moves between its builds (its runs are not
    seeded); the bound is the top of its range. Whether the greedy text is a verbatim stretch of
    the book depends on the float32 trajectory: 6 of the 8 runs measured (README) continue
    'time traveller' verbatim, NumPy's GRU and JAX's LSTM do not, so the text is only held to
    the prefix and the vocabulary."""
    try:
        backends.load(backend)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    flags, bound = D2L_CELLS[cell]
    ckpt = tmp_path / "m.safetensors"
    doc = _train(
        "--backend",
        backend,
        "--corpus",
        str(timemachine),
        "--checkpoint",
        str(ckpt),
        "--num-hiddens",
        "256",
        *flags,
    )
    assert doc["epochs"] == 500
    assert doc["perplexity"] <= bound
    text = doc["samples"]["time traveller"]
    assert text.startswith("time traveller") and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")

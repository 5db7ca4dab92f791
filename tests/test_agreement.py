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


def _train(corpus: Path, backend: str, dtype: str, ckpt: Path) -> list[float]:
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

"""What a person keeps and sees: nothing asked for is lost to a later optional step, the plots
say what they show, progress shows time, and the docs find the text the way the command does."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rosetta_rnn import plots
from rosetta_rnn.cli import main
from rosetta_rnn.core import display as progress
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.training import Trainer

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16"]
TEXT = "the time traveller for so it will be convenient to speak of him was expounding\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text(TEXT * 15)
    return path


@pytest.fixture
def captured_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure a plot function draws, kept open for the test to read."""
    figures: list[Any] = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    return figures


# --- 1. nothing the user asked to keep is lost -------------------------------------------------


def test_plots_are_part_of_a_plain_install() -> None:
    """A teaching tool draws its plots out of the box: matplotlib (and rich, for progress) are
    dependencies, not an extra."""
    requires = importlib.metadata.requires("rosetta-rnn") or []
    base = {r.split(">")[0].strip() for r in requires if "extra ==" not in r}
    assert {"numpy", "matplotlib", "rich"} <= base


@pytest.mark.parametrize(
    "args",
    [
        ["train", *SMALL, "--epochs", "2", "--plot", "{tmp}/p.png", "--checkpoint", "{tmp}/c.st"],
        ["clipping", "--epochs", "2", "--num-hiddens", "8", "--plot", "{tmp}/p.png"],
        ["corpus-stats", "--plot", "{tmp}/p.png"],
    ],
    ids=["train", "clipping", "corpus-stats"],
)
def test_a_python_without_matplotlib_is_refused_before_any_work(
    args: list[str],
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    ran: list[str] = []
    monkeypatch.setattr(Trainer, "run_epoch", lambda *a, **k: ran.append("epoch"))
    argv = [a.format(tmp=tmp_path) for a in args] + ["--corpus", str(corpus)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and ran == []
    assert err.count("\n") == 1 and "plots need matplotlib" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # nothing written


def _disk_full(*args: object, **kwargs: object) -> None:
    raise UserError("cannot write p.png: No space left on device")


def test_a_plot_that_fails_at_the_end_loses_neither_checkpoint_nor_results(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(plots, "perplexity", _disk_full)
    ckpt = tmp_path / "c.safetensors"
    argv = ["train", "--corpus", str(corpus), *SMALL, "--epochs", "2", "--json"]
    assert main([*argv, "--plot", str(tmp_path / "p.png"), "--checkpoint", str(ckpt)]) == 2
    out, err = capsys.readouterr()
    assert ckpt.is_file() and json.loads(out)["epochs"] == 2 and json.loads(out)["plot"] is None
    last = err.strip().splitlines()[-1]
    assert last == (
        "rosetta-rnn: error: cannot write p.png: No space left on device; "
        f"the checkpoint {ckpt} is written"
    )


def test_a_clipping_plot_that_fails_at_the_end_keeps_the_results(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(plots, "grad_norms", _disk_full)
    argv = ["clipping", "--corpus", str(corpus), "--epochs", "1", "--num-hiddens", "8", "--json"]
    assert main([*argv, "--plot", str(tmp_path / "n.png")]) == 2
    out, err = capsys.readouterr()
    assert len(json.loads(out)["runs"]) == 2 and "largest gradient norm" in err
    assert err.strip().splitlines()[-1].endswith("No space left on device")


# --- 6. progress with a sense of time ---------------------------------------------------------


def test_progress_shows_count_times_and_status_on_a_terminal() -> None:
    screen = io.StringIO()
    with Progress("training", total=5, unit="epochs", stream=screen, enabled=True) as p:
        p.advance(3, info="perplexity 9.87")
        p._bar.refresh()
    text = screen.getvalue()
    for words in ("training", "3/5 epochs", "elapsed", "left", "perplexity 9.87"):
        assert words in text


def test_progress_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    screen = io.StringIO()  # not a terminal
    with Progress("training", total=5, stream=screen) as p:
        p.advance(info="perplexity 9.87")
        p.say("a line that stays")
    assert screen.getvalue() == "" and not p.enabled
    assert capsys.readouterr().out == "a line that stays\n"


def test_train_shows_epochs_times_and_speed_on_a_terminal(
    corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: nothing is cut
    assert main(["train", "--corpus", str(corpus), *SMALL, "--epochs", "3"]) == 0
    err = capsys.readouterr().err  # the bar's stream
    for words in ("training", "3/3 epochs", "elapsed", "left", "perplexity", "tokens/s"):
        assert words in err


def test_a_resumed_count_starts_where_it_was() -> None:
    screen = io.StringIO()
    with Progress(
        "training", total=20, unit="epochs", stream=screen, enabled=True, completed=12
    ) as p:
        p.advance()
        p._bar.refresh()
    assert "13/20 epochs" in screen.getvalue()


# --- 10. plots say what they show ---------------------------------------------------------


def test_the_perplexity_plot_has_whole_epochs_a_labelled_log_axis_and_the_run(
    corpus: Path, tmp_path: Path, captured_figures: list[Any]
) -> None:
    png = tmp_path / "p.png"
    argv = ["train", "--corpus", str(corpus), *SMALL, "--epochs", "3", "--plot", str(png)]
    assert main([*argv, "--lr", "0.5", "--seed", "4", "--json"]) == 0
    (ax,) = captured_figures[0].axes
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no epoch 1.5
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    title = ax.get_title()
    assert title.startswith("numpy float32 on cpu, grad bptt, eager: perplexity per epoch\n")
    for words in ("batch 4 × 8 steps", "16 hidden tanh", "lr 0.5", "clip θ = 1", "seed 4"):
        assert words in title


@pytest.mark.parametrize(("theta", "acted"), [("1000", False), ("0.01", True)])
def test_the_clipping_plot_says_when_clipping_never_acted(
    theta: str,
    acted: bool,
    corpus: Path,
    tmp_path: Path,
    captured_figures: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["clipping", "--corpus", str(corpus), "--epochs", "2", "--num-hiddens", "16"]
    assert main([*argv, "--clip", theta, "--plot", str(tmp_path / "n.png"), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    clipped, free = doc["runs"].values()
    assert doc["clipping_acted"] is acted and (clipped["steps_clipped"] > 0) is acted
    (ax,) = captured_figures[0].axes
    notes = ax.get_title().splitlines()[1:]  # the note is written under the title
    first, second = ax.get_lines()[:2]
    assert first.get_linestyle() != second.get_linestyle()  # the second run shows over the first
    if acted:
        assert notes == [] and clipped["grad_norms"] != free["grad_norms"]
        assert f"clipping acted on {clipped['steps_clipped']} of" in captured.err
    else:
        assert clipped["grad_norms"] == free["grad_norms"]  # min(1, θ/‖g‖) = 1: the same run
        assert "clipping never acted" in " ".join(notes)
        assert "clipping acted on 0 of" in captured.err and "never acted" in captured.err


# --- 7. the docs and tests find The Time Machine as the command does ------------------------


def test_nothing_points_at_a_folder_a_cloner_does_not_have() -> None:
    """Only CI's runner names its own copy (through $ROSETTA_RNN_DATA); tests, scripts and docs
    use the command's lookup. Recorded results (JSON) keep the paths they ran with."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if name != ".ci/run"
        and not name.endswith((".json", ".sqlite", ".png", ".csv"))
        and "shared/data" in (REPO / name).read_text(errors="replace")
        and name != "tests/test_outputs.py"
    ]
    assert offenders == []
    assert 'ROSETTA_RNN_DATA="$(cd ../shared/data && pwd)"' in (REPO / ".ci/run").read_text()


def test_conform_holds_back_tensorflows_warnings_only() -> None:
    """conform compiles a step per problem shape on purpose; TensorFlow's retracing warnings
    (through its Python logger, at most five a process) would break into the progress bar.
    Its warnings are held back while the checks run, errors are not, and the level returns."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed")
    from rosetta_rnn.conform_command import _retracing_expected

    logger = logging.getLogger("tensorflow")
    assert tf.get_logger() is logger  # where TensorFlow's warnings go
    before = logger.level
    with _retracing_expected():
        assert not logger.isEnabledFor(logging.WARNING)
        assert logger.isEnabledFor(logging.ERROR)
    assert logger.level == before

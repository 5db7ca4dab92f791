"""Reliability: bad input gives one line and a non-zero exit, blow-ups stop cleanly, training
resumes exactly, SIGINT saves, and loading is safe."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from rosetta_rnn import backends
from rosetta_rnn.cli import main
from rosetta_rnn.core import checkpoint, data

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16"]
TEXT = "The Time Traveller (for so it will be convenient to speak of him) was expounding.\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 12)
    return path


# --- resume is exact ----------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_ten_plus_ten_epochs_equal_twenty(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], sampling: str
) -> None:
    common = ["--corpus", str(corpus), *SMALL, "--dtype", "float64", "--sampling", sampling]
    straight, half = tmp_path / "straight.st", tmp_path / "half.st"
    assert (
        run_cli(capsys, "train", *common, "--epochs", "20", "--checkpoint", str(straight))[0] == 0
    )
    assert run_cli(capsys, "train", *common, "--epochs", "10", "--checkpoint", str(half))[0] == 0
    code, out, _ = run_cli(capsys, "train", "--resume", str(half), "--epochs", "20", "--json")
    assert code == 0
    a, meta_a = checkpoint.load(straight)
    b, meta_b = checkpoint.load(half)  # --resume keeps writing to the checkpoint it resumed
    assert meta_b["epoch"] == 20
    for k in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"):
        assert np.array_equal(a[k], b[k]), k  # bit-identical
    assert [h["perplexity"] for h in meta_a["history"]] == [
        h["perplexity"] for h in meta_b["history"]
    ]
    assert len(json.loads(out)["history"]) == 20


def test_the_run_is_saved_whole_and_an_older_checkpoint_still_resumes(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint keeps the whole RunSpec under ``run``; one written before ``run``
    existed (trainer settings under ``config``, the rest at the top level) resumes the same."""
    from rosetta_rnn.core.run import RunSpec

    common = ["--corpus", str(corpus), *SMALL, "--dtype", "float64", "--no-clip", "--seed", "3"]
    new, old = tmp_path / "new.st", tmp_path / "old.st"
    for path in (new, old):
        assert run_cli(capsys, "train", *common, "--epochs", "2", "--checkpoint", str(path))[0] == 0
    tensors, meta = checkpoint.load(old)
    run = meta.pop("run")
    assert run == {
        **RunSpec().to_meta(),
        "batch_size": 4,
        "num_steps": 8,
        "num_hiddens": 16,
        "dtype": "float64",
        "clip": None,
        "seed": 3,
    }
    checkpoint.save(old, tensors, meta)  # the older layout
    for path in (new, old):
        assert run_cli(capsys, "train", "--resume", str(path), "--epochs", "3")[0] == 0
    a, meta_a = checkpoint.load(new)
    b, meta_b = checkpoint.load(old)
    assert meta_b["run"] == run and meta_a["epoch"] == meta_b["epoch"] == 3
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_resume_rejects_other_hyperparameters(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "c.st"
    run_cli(
        capsys, "train", "--corpus", str(corpus), *SMALL, "--epochs", "2", "--checkpoint", str(ckpt)
    )
    code, _, err = run_cli(capsys, "train", "--resume", str(ckpt), "--epochs", "4", "--lr", "0.5")
    assert code == 2
    one_line_error(err, "--lr 0.5 differs from the checkpoint's lr 1.0")
    code, _, err = run_cli(capsys, "train", "--resume", str(ckpt), "--epochs", "4", "--no-clip")
    one_line_error(err, "--no-clip")
    # switches are named as they were typed, never as a key and a Python value
    for switch, saved in [
        ("--no-clip", "clip 1.0"),
        ("--no-detach", "detach True"),
        ("--reset-state", "reset_state False"),
    ]:
        code, _, err = run_cli(capsys, "train", "--resume", str(ckpt), "--epochs", "4", switch)
        assert code == 2
        one_line_error(err, f"{switch} differs from the checkpoint's {saved}; drop it")
    code, _, err = run_cli(capsys, "train", "--resume", str(ckpt), "--epochs", "2")
    one_line_error(err, "already trained 2 epochs")
    other = tmp_path / "other.txt"
    other.write_text("a quite different text about nothing in particular\n" * 20)
    code, _, err = run_cli(
        capsys, "train", "--resume", str(ckpt), "--epochs", "4", "--corpus", str(other)
    )
    one_line_error(err, "corpus differs")
    # the same values given explicitly are fine
    code, _, _ = run_cli(
        capsys,
        "train",
        "--resume",
        str(ckpt),
        "--epochs",
        "3",
        "--lr",
        "1",
        "--corpus",
        str(corpus),
    )
    assert code == 0


def test_save_every_writes_periodic_checkpoints(
    tmp_path: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = tmp_path / "c.st"
    seen: list[int] = []
    original = checkpoint.save

    def spy(path, tensors, metadata):  # type: ignore[no-untyped-def]
        seen.append(metadata["epoch"])
        original(path, tensors, metadata)

    monkeypatch.setattr(checkpoint, "save", spy)
    args = ["train", "--corpus", str(corpus), *SMALL, "--epochs", "6", "--save-every", "2"]
    assert run_cli(capsys, *args, "--checkpoint", str(ckpt))[0] == 0
    assert seen == [2, 4, 6, 6]  # every 2 epochs, and at the end
    _code, _, err = run_cli(capsys, "train", "--corpus", str(corpus), "--save-every", "2")
    one_line_error(err, "--save-every needs --checkpoint")


# --- blow-ups -----------------------------------------------------------------------------


def _nan_loss_from_call(monkeypatch: pytest.MonkeyPatch, first_bad: int) -> None:
    """The numpy backend's train step, with a NaN loss from its ``first_bad``-th call (1-based)
    on: a blow-up at a chosen step, the same on every machine whatever the rounding."""
    numpy_backend = backends.load("numpy")
    real = numpy_backend.make_train_step

    def make_train_step(*args, **kwargs):  # type: ignore[no-untyped-def]
        step = real(*args, **kwargs)
        calls = [0]

        def nan_step(params, inputs, labels, state, lr, theta):  # type: ignore[no-untyped-def]
            calls[0] += 1
            new, hidden, loss, norm = step(params, inputs, labels, state, lr, theta)
            return new, hidden, loss * np.nan if calls[0] >= first_bad else loss, norm

        return nan_step

    monkeypatch.setattr(numpy_backend, "make_train_step", make_train_step)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    common = ["train", "--corpus", str(corpus), *SMALL, "--epochs", "5"]
    code, out, _ = run_cli(capsys, *common[:-1], "1", "--json")
    assert code == 0
    steps_per_epoch = len(json.loads(out)["history"][0]["grad_norms"])
    assert steps_per_epoch >= 2

    # NaN at the second step of epoch 3: epochs 1 and 2 were saved
    _nan_loss_from_call(monkeypatch, 2 * steps_per_epoch + 2)
    ckpt = tmp_path / "c.st"
    code, _, err = run_cli(capsys, *common, "--checkpoint", str(ckpt), "--save-every", "1")
    assert code == 3
    one_line_error(err, "training diverged at epoch 3, step 2: loss nan")
    assert "last finite gradient norm" in err and str(ckpt) in err
    tensors, meta = checkpoint.load_model(ckpt)
    assert all(np.isfinite(v).all() for v in tensors.values())
    assert meta["epoch"] == 2

    # diverging before any checkpoint: nothing is written, and the message says so
    _nan_loss_from_call(monkeypatch, 1)
    other = tmp_path / "other.st"
    code, _, err = run_cli(capsys, *common, "--checkpoint", str(other))
    assert code == 3 and "no checkpoint was written" in err and not other.exists()
    one_line_error(err, "training diverged at epoch 1, step 1")


def test_an_overflowing_first_step_is_caught() -> None:
    """A real float32 overflow, by construction: every logit is a sum of positive terms of
    1e38 (tanh(10) ≈ 1 times W_hq = 1e38), which is inf in any summation order."""
    from rosetta_rnn.core import model
    from rosetta_rnn.core.training import TrainConfig, Trainer, TrainingDiverged

    numpy_backend = backends.load("numpy")
    ops = numpy_backend.make_ops("float32", "cpu")
    V, H = 5, 4
    params = {
        "W_xh": np.zeros((V, H)),
        "W_hh": np.zeros((H, H)),
        "b_h": np.full(H, 10.0),
        "W_hq": np.full((H, V), 1e38),
        "b_q": np.zeros(V),
    }
    cfg = TrainConfig(batch_size=2, num_steps=3, num_hiddens=H, epochs=1)
    trainer = Trainer(
        ops,
        numpy_backend.make_train_step(ops),
        model.to_backend(ops, params),
        np.arange(40) % V,
        cfg,
        np.random.default_rng(0),
    )
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1, step 1"):
        trainer.run_epoch()


# --- SIGINT end to end --------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rosetta_rnn", *args]


def test_sigint_saves_and_resume_continues_exactly(tmp_path: Path, corpus: Path) -> None:
    common = ["--corpus", str(corpus), *SMALL, "--dtype", "float64", "--epochs", "60"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    straight = tmp_path / "straight.st"
    subprocess.run(
        _cli("train", *common, "--checkpoint", str(straight)),
        check=True,
        capture_output=True,
        env=env,
    )

    ckpt = tmp_path / "c.st"
    proc = subprocess.Popen(
        _cli("train", *common, "--checkpoint", str(ckpt)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch   10"):
            break
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at epoch" in err and f"rosetta-rnn train --resume {ckpt} --epochs 60" in err
    _, meta = checkpoint.load_model(ckpt)
    assert 10 <= meta["epoch"] < 60

    r = subprocess.run(
        _cli("train", "--resume", str(ckpt)), capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    a, _ = checkpoint.load(straight)
    b, meta_b = checkpoint.load(ckpt)
    assert meta_b["epoch"] == 60
    assert all(np.array_equal(a[k], b[k]) for k in ("W_xh", "W_hh", "b_h", "W_hq", "b_q"))


# --- bad input ----------------------------------------------------------------------------


def test_unreadable_corpus(
    tmp_path: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = open

    def deny(path, *a, **k):  # type: ignore[no-untyped-def]
        if str(path) == str(corpus):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    code, _, err = run_cli(capsys, "train", "--corpus", str(corpus))
    assert code == 2
    one_line_error(err, "cannot read corpus")
    code, _, err = run_cli(capsys, "train", "--corpus", str(tmp_path))  # a folder
    one_line_error(err, "corpus file not found")


def test_framework_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def fake(name: str, *a: object, **k: object):  # type: ignore[no-untyped-def]
        if name == "rosetta_rnn.backends.jax":
            raise ModuleNotFoundError("No module named 'jax'", name="jax")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    code, _, err = run_cli(capsys, "train", "--backend", "jax")
    assert code == 2
    one_line_error(err, "pip install 'rosetta-rnn[jax]'")
    assert main(["backends"]) == 0
    assert "jax" in capsys.readouterr().out


def test_gpu_asked_for_but_absent(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--device", "gpu")
    assert code == 2
    one_line_error(err, "gpu")
    code, _, err = run_cli(capsys, "train", "--device", "gpu:7")
    one_line_error(err, "gpu")


def test_float64_on_a_device_without_it(
    monkeypatch: pytest.MonkeyPatch, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(backends.load("numpy"), "supports_float64", lambda device: False)
    code, _, err = run_cli(capsys, "train", "--corpus", str(corpus), "--dtype", "float64")
    assert code == 2
    one_line_error(err, "has no float64")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"PK\x03\x04 a zip file, not safetensors" * 4, "not a valid"),
        (lambda b: b"", "too short"),
    ],
    ids=["truncated", "not-safetensors", "empty"],
)
def test_damaged_checkpoints(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], damage, words: str
) -> None:  # type: ignore[no-untyped-def]
    ckpt = tmp_path / "c.st"
    run_cli(
        capsys, "train", "--corpus", str(corpus), *SMALL, "--epochs", "1", "--checkpoint", str(ckpt)
    )
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    for cmd in (
        ["generate", "--checkpoint", str(ckpt)],
        ["train", "--resume", str(ckpt), "--epochs", "3"],
    ):
        code, out, err = run_cli(capsys, *cmd)
        assert code == 2 and out == ""
        one_line_error(err, words)


def test_checkpoint_from_a_newer_format_and_wrong_shapes(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "c.st"
    run_cli(
        capsys, "train", "--corpus", str(corpus), *SMALL, "--epochs", "1", "--checkpoint", str(ckpt)
    )
    tensors, meta = checkpoint.load(ckpt)
    newer = tmp_path / "newer.st"
    checkpoint.atomic_write(newer, checkpoint.encode(tensors, {**meta, "format_version": 2}))
    one_line_error(run_cli(capsys, "generate", "--checkpoint", str(newer))[2], "format 2")
    wrong = tmp_path / "wrong.st"
    checkpoint.save(wrong, {**tensors, "W_hh": np.zeros((3, 3), tensors["W_hh"].dtype)}, meta)
    one_line_error(
        run_cli(capsys, "generate", "--checkpoint", str(wrong))[2], "W_hh has shape [3, 3]"
    )


def test_loading_never_unpickles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    evil = tmp_path / "evil.st"
    evil.write_bytes(pickle.dumps({"W_hh": np.zeros(3)}))
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(evil))
    assert code == 2
    one_line_error(err, "not a valid rosetta-rnn checkpoint")


# --- hypothesis: odd corpora and argument values ------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=400)


@settings(max_examples=max(5, settings.default.max_examples // 2))
@given(text=texts)
def test_any_text_gives_a_corpus_or_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("c") / "c.txt"
    path.write_text(text, encoding="utf-8")
    corpus = data.load_corpus(path, "char")
    assert all(0 <= i < len(corpus.vocab) for i in corpus.ids)
    assert set("".join(corpus.vocab.idx_to_token[1:])) <= set("abcdefghijklmnopqrstuvwxyz ")


@settings(max_examples=max(5, settings.default.max_examples // 2))
@given(
    text=texts,
    batch=st.sampled_from(["0", "-3", "1", "2", "nan", "x", "1e9"]),
    steps=st.sampled_from(["1", "3", "0", "1.5", "100000"]),
    lr=st.sampled_from(["0", "-1", "nan", "inf", "1e-3", "1"]),
)
def test_cli_never_shows_a_traceback(
    tmp_path_factory: pytest.TempPathFactory, text: str, batch: str, steps: str, lr: str
) -> None:
    path = tmp_path_factory.mktemp("c") / "c.txt"
    path.write_text(text, encoding="utf-8")
    args = [
        "train",
        "--corpus",
        str(path),
        "--batch-size",
        batch,
        "--num-steps",
        steps,
        "--lr",
        lr,
        "--num-hiddens",
        "4",
        "--epochs",
        "1",
    ]
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    assert code in (0, 2, 3)
    if code != 0:
        lines = err.getvalue().strip().splitlines()
        assert lines and lines[-1].startswith("rosetta-rnn: error: ")


def test_offline_without_a_copy_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DATA_URL", "http://127.0.0.1:9/timemachine.txt")
    code, out, err = run_cli(capsys, "train")
    assert code == 2 and out == ""
    one_line_error(err, "cannot download The Time Machine")
    assert "--corpus FILE" in err and data.DATA_DIR_ENV in err
    assert not any((tmp_path / "cache").glob("*"))  # nothing half-written


def test_sha1_mismatch_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("another book entirely\n")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DATA_URL", wrong.resolve().as_uri())
    code, _, err = run_cli(capsys, "train")
    assert code == 2
    one_line_error(err, "sha1")
    assert not any((tmp_path / "cache").glob("*"))  # the bad file is not kept

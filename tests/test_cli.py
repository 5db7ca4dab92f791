"""The CLI contract: train, generate, backends, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rosetta_rnn import backends
from rosetta_rnn.cli import main

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16", "--epochs", "12"]


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text("The time traveller was expounding a recondite matter to us.\n" * 20)
    return path


def test_train_json_and_generate(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    code = main(
        ["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt), "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    for key in ("perplexity", "tokens_per_sec", "device", "backend", "dtype", "epochs", "history"):
        assert key in doc
    assert doc["backend"] == "numpy" and doc["dtype"] == "float32" and doc["epochs"] == 12
    assert len(doc["history"]) == 12
    assert {"perplexity", "tokens_per_sec"} <= set(doc["history"][0])
    assert doc["history"][-1]["perplexity"] < doc["history"][0]["perplexity"]
    assert "epoch   10" in err and "tokens/sec on cpu" in err  # human output on stderr
    assert ckpt.is_file()

    assert main(["generate", "--checkpoint", str(ckpt), "--num-chars", "20"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 20


def test_train_human_output(tiny_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--corpus", str(tiny_corpus), *SMALL, "--dtype", "float64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("perplexity ") and out[-3].endswith("tokens/sec on cpu")
    assert out[-2].startswith("time traveller") and out[-1].startswith("traveller")


def test_same_seed_same_run(tiny_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for seed in ("3", "3", "4"):
        main(
            [
                "train",
                "--corpus",
                str(tiny_corpus),
                *SMALL,
                "--seed",
                seed,
                "--sampling",
                "random",
                "--json",
            ]
        )
        runs.append([h["perplexity"] for h in json.loads(capsys.readouterr().out)["history"]])
    assert runs[0] == runs[1] != runs[2]


def test_generate_with_temperature_is_seeded(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    texts = []
    for seed in ("1", "1", "2"):
        main(["generate", "--checkpoint", str(ckpt), "--temperature", "2", "--seed", seed])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]


def test_unknown_prefix_characters_warn(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    assert (
        main(["generate", "--checkpoint", str(ckpt), "--prefix", "Time 9", "--num-chars", "3"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.startswith("Time 9")
    assert "warning" in captured.err and "'T'" in captured.err and "'9'" in captured.err


def test_backends_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(backends.BACKENDS)  # every registry entry, installed or not
    assert rows["numpy"]["installed"] and rows["numpy"]["grad_modes"] == ["bptt"]
    assert rows["numpy"]["float64"]["cpu"] is True


def test_env_sets_the_default_backend(
    monkeypatch: pytest.MonkeyPatch, tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_BACKEND", "nosuch")
    assert main(["train", "--corpus", str(tiny_corpus), *SMALL]) == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--backend", "mxnet"], "unknown backend"),
        (["train", "--corpus", "/nonexistent/file.txt"], "corpus file not found"),
        (["train", "--batch-size", "0"], "positive integer"),
        (["train", "--lr", "nan"], "positive finite number"),
        (["train", "--lr", "-1"], "positive finite number"),
        (["train", "--clip", "0"], "positive finite number"),
        (["train", "--num-steps", "x"], "positive integer"),
        (["generate", "--checkpoint", "/nonexistent.safetensors"], "checkpoint not found"),
        (["train", "--device", "tpu"], "unknown device"),
        (["train", "--compile", "fastest"], "the numpy backend has no compile mode 'fastest'"),
        (
            ["train", "--backend", "torch", "--device", "cpu", "--compile", "reduce-overhead"],
            "reduce-overhead mode replays CUDA graphs and needs a CUDA device",
        ),
    ],
)
def test_user_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("rosetta-rnn: error: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no letters"), ("1234 5678 !!\n", "no letters"), ("abc\n", "fewer than --num-steps")],
)
def test_bad_corpora(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.txt"
    path.write_text(text)
    assert main(["train", "--corpus", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_batch_size_too_large(tiny_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--corpus", str(tiny_corpus), "--batch-size", "500"]) == 2
    assert "too short for --batch-size 500" in capsys.readouterr().err


def test_checkpoint_folder_missing_fails_before_training(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--corpus",
            str(tiny_corpus),
            *SMALL,
            "--checkpoint",
            str(tmp_path / "no" / "m.st"),
        ]
    )
    assert code == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "epoch" not in captured.out


def test_console_script_and_module_entry_points(tiny_corpus: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for cmd in (["rosetta-rnn"], [sys.executable, "-m", "rosetta_rnn"]):
        exe = Path(sys.executable).with_name(cmd[0]) if cmd == ["rosetta-rnn"] else None
        full = [str(exe)] if exe else cmd
        r = subprocess.run(
            [*full, "--version"], capture_output=True, text=True, env=env, check=False
        )
        assert r.returncode == 0 and r.stdout.startswith("rosetta-rnn ")
        r = subprocess.run(
            [*full, "train", "--corpus", "/nope"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr

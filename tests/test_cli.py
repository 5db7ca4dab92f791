"""The CLI contract: train, generate, backends, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rosetta_rnn import backends
from rosetta_rnn.backends import rules
from rosetta_rnn.cli import main
from rosetta_rnn.core import checkpoint, data
from rosetta_rnn.core.errors import BackendUnavailable

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


def test_the_prefix_is_read_as_the_corpus_was(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    args = ["generate", "--checkpoint", str(ckpt), "--num-chars", "3", "--json"]
    assert main([*args, "--prefix", "Time Traveller 1895!"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    # d2l's preprocessing within a line: letters only, lower case, the rest one space
    assert doc["prefix_read_as"] == "time traveller " and doc["prefix"] == "Time Traveller 1895!"
    assert doc["text"].startswith("time traveller ") and len(doc["text"]) == 15 + 3
    assert "prefix read as 'time traveller '" in captured.err and "<unk>" not in captured.err

    assert main([*args, "--prefix", "quick"]) == 0  # q and k are not in the tiny corpus
    err = capsys.readouterr().err
    assert "warning" in err and "'k', 'q'" in err and "prefix read as" not in err


def test_a_prefix_without_letters_is_refused(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(ckpt), "--prefix", "1895!"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prefix '1895!' has no letters" in err


def test_a_sampled_unk_prints_as_the_replacement_character(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that puts all its mass on <unk> (index 0): greedy draws it every step."""
    ckpt, forced = tmp_path / "m.safetensors", tmp_path / "unk.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    tensors, meta = checkpoint.load_model(str(ckpt))
    tensors["b_q"] = tensors["b_q"].copy()
    tensors["b_q"][0] = 1000.0
    checkpoint.save(str(forced), tensors, meta)
    assert main(["generate", "--checkpoint", str(forced), "--num-chars", "4", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["text"] == "time traveller" + "\ufffd" * 4 and doc["unk_drawn"] == 4
    assert "drew <unk> 4 time(s), shown as \ufffd" in captured.err
    assert data.join_tokens(["<unk>", "a"], "word") == "<unk> a"  # words keep the word


def test_generate_json_says_how_it_sampled(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    capsys.readouterr()
    main(["generate", "--checkpoint", str(ckpt), "--alpha", "2", "--seed", "7", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["seed"] == 7 and doc["temperature"] == 0.5 and doc["sampling"] == "temperature"
    assert doc["num_chars"] == 50 and doc["checkpoint"] == str(ckpt)
    main(["generate", "--checkpoint", str(ckpt), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["sampling"] == "greedy" and doc["temperature"] is None


def test_train_json_records_the_run(tiny_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--corpus", str(tiny_corpus), *SMALL, "--seed", "5", "--max-tokens", "900"]
    assert main([*args, "--backend", "torch", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compile"] == "eager" and doc["seed"] == 5 and doc["max_tokens"] == 900
    assert doc["token"] == "char" and doc["corpus"] == str(tiny_corpus)
    assert len(doc["corpus_sha1"]) == 40


def test_the_run_header_says_what_runs(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.safetensors"
    main(["train", "--corpus", str(tiny_corpus), *SMALL, "--checkpoint", str(ckpt)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("training on NumPy (numpy, cpu, float32, grad bptt, eager):")
    assert out[0].endswith(", 12 epochs")
    # every tenth epoch's greedy sample is quoted, so a sample of spaces is seen as one
    assert re.fullmatch(r"epoch   10  .* tokens/sec  'time traveller.*'", out[1])
    main(["train", "--resume", str(ckpt), "--epochs", "20", "--backend", "jax"])
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("resuming on JAX (jax, cpu, float32, grad autograd, jit):")
    assert head.endswith("from epoch 12 to 20")


def test_torch_without_a_gpu_says_how_to_get_one(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--backend", "torch", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --device cpu" in err
    build = "CPU-only build" if torch.version.cuda is None else "sees no GPU: check the driver"
    assert build in err


def test_backends_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(backends.BACKENDS)  # every registry entry, installed or not
    assert rows["numpy"]["installed"] and rows["numpy"]["grad_modes"] == ["bptt"]
    assert "devices" not in rows["numpy"]  # only --devices asks the frameworks
    assert main(["backends", "--devices", "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["numpy"]["devices"][0] == "cpu" and rows["numpy"]["float64"]["cpu"] is True


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_the_registry_says_what_the_module_has(name: str) -> None:
    """``backends`` answers from the registry without importing the framework; the registry
    and the module must say the same."""
    try:
        module = backends.load(name)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    entry = backends.REGISTRY[name]
    assert (module.GRAD_MODES, module.COMPILE_MODES) == (entry.grad_modes, entry.compile_modes)
    row = backends.info(name)
    assert row["installed"] and row["version"].split()[0] in module.version()


def test_backends_imports_no_framework_unless_asked() -> None:
    code = (
        "import sys; from rosetta_rnn.cli import main; main(['backends']); "
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'array_api_strict') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[-1] == "[]" and r.stderr == ""


def test_tensorflow_start_up_notices_do_not_reach_the_terminal() -> None:
    """TensorFlow's C++ side prints CUDA notices at import and at its first device query
    whatever TF_CPP_MIN_LOG_LEVEL says; the command passes on everything else."""
    pytest.importorskip("tensorflow", reason="TensorFlow not installed")
    r = subprocess.run(
        [sys.executable, "-m", "rosetta_rnn", "backends", "--devices"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "tensorflow  yes" in r.stdout and r.stderr == ""
    # the bench's path: a thread setting, then ops, then a product, in a fresh process
    code = (
        "from rosetta_rnn import backends; b = backends.load('tensorflow'); b.set_threads(2); "
        "ops = b.make_ops('float32', 'cpu'); x = ops.asarray([[1.0, 2.0]]); "
        "print(ops.to_numpy(ops.matmul(x, ops.asarray([[1.0], [1.0]]))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[[3.]]" and r.stderr == ""


def test_native_notices_are_dropped_and_the_rest_passed_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with rules.native_notices_dropped():
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: (303)\n")
        os.write(2, b"a real problem\n")
    err = capfd.readouterr().err
    assert err == "a real problem\n"


def test_env_sets_the_default_backend(
    monkeypatch: pytest.MonkeyPatch, tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_BACKEND", "nosuch")
    assert main(["train", "--corpus", str(tiny_corpus), *SMALL]) == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--backend", "paddle"], "unknown backend"),
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

"""The gated cells end to end: ``train --cell gru|lstm`` on every backend, checkpoints, ``generate``
and ``eval`` on another backend, exact resume, and the flags that belong to one cell.

Small float64 problems on a tiny corpus; NumPy float64 (core's hand-written BPTT) is the
reference every backend's trajectory is held to.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import one_line_error, run_cli

from rosetta_rnn import backends
from rosetta_rnn.core import cells, checkpoint, data, model
from rosetta_rnn.core.training import TrainConfig, Trainer, TrainingInterrupted

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "8", "--dtype", "float64"]
TEXT = "The Time Traveller (for so it will be convenient to speak of him) was expounding.\n"
CELL_FLAGS = {
    "gru": ["--cell", "gru"],
    "gru-reset-after": ["--cell", "gru", "--gru", "reset-after"],
    "lstm": ["--cell", "lstm", "--forget-bias", "1"],
    "gru-learned-embedding": ["--cell", "gru", "--gru", "reset-after", "--embed-dim", "3"],
}
CELL_OF = {
    "gru": cells.GRU_RESET_BEFORE,
    "gru-reset-after": cells.GRU_RESET_AFTER,
    "lstm": "lstm",
    "gru-learned-embedding": cells.GRU_RESET_AFTER,
}
INSTALLED = [name for name in backends.BACKENDS if backends.info(name)["installed"]]
AUTOGRAD = [name for name in ("torch", "jax", "tensorflow", "mxnet") if name in INSTALLED]
RELATIVE = 1e-9  # float64 trajectories of two epochs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT * 6)
    return path


def _train(
    capsys: pytest.CaptureFixture[str], corpus: Path, path: Path, *flags: str
) -> dict[str, Any]:
    code, out, err = run_cli(
        capsys,
        "train",
        "--corpus",
        str(corpus),
        *SMALL,
        *flags,
        "--checkpoint",
        str(path),
        "--json",
    )
    assert code == 0, err
    return dict(json.loads(out))


def _assert_close(ckpt: Path, reference: Path) -> None:
    """Every parameter of ``ckpt`` within RELATIVE (of the largest entry) of ``reference``'s."""
    got, meta = checkpoint.load(ckpt)
    want, _ = checkpoint.load(reference)
    names = model.param_names(want)
    assert names == model.param_names(got) and len(names) >= 11
    for name in names:
        scale = float(np.max(np.abs(want[name]))) or 1.0
        error = float(np.max(np.abs(got[name] - want[name])))
        assert error <= RELATIVE * scale, f"{meta['backend']} {name}: {error:.3g} of {scale:.3g}"


_REFERENCES: dict[tuple[str, ...], Path] = {}


def _reference(capsys: pytest.CaptureFixture[str], corpus: Path, tmp: Path, *flags: str) -> Path:
    """The NumPy float64 checkpoint of a run with ``flags`` (trained once per module)."""
    key = (str(corpus), *flags)
    if key not in _REFERENCES:
        path = tmp / f"numpy-{len(_REFERENCES)}.st"
        _train(capsys, corpus, path, "--backend", "numpy", *flags)
        _REFERENCES[key] = path
    return _REFERENCES[key]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("references")


# --- train, checkpoint, generate and eval on every backend -----------------------------------


@pytest.mark.parametrize("backend", INSTALLED)
@pytest.mark.parametrize("cell", CELL_FLAGS)
def test_train_then_generate_and_eval_elsewhere(
    tmp_path: Path,
    corpus: Path,
    reference_dir: Path,
    capsys: pytest.CaptureFixture[str],
    cell: str,
    backend: str,
) -> None:
    flags = [*CELL_FLAGS[cell], "--epochs", "2"]
    path = tmp_path / "model.st"
    doc = _train(capsys, corpus, path, "--backend", backend, *flags)
    assert doc["epochs"] == 2 and math.isfinite(doc["perplexity"])
    assert doc["cell"] == CELL_OF[cell]
    assert doc["samples"]["time traveller"].startswith("time traveller")
    tensors, meta = checkpoint.load_model(path)
    assert cells.cell_of(tensors) == CELL_OF[cell]
    assert meta["run"]["cell"] == CELL_FLAGS[cell][1]
    assert meta["run"]["forget_bias"] == (1.0 if "--forget-bias" in flags else 0.0)
    assert meta["run"]["embed_dim"] == (3 if "--embed-dim" in flags else None)
    assert ("E" in tensors) == ("--embed-dim" in flags)
    # float64: the same trajectory as NumPy's, whichever gradient engine and compile mode
    _assert_close(path, _reference(capsys, corpus, reference_dir, *flags))

    other = INSTALLED[(INSTALLED.index(backend) + 1) % len(INSTALLED)]
    code, out, err = run_cli(
        capsys, "generate", "--checkpoint", str(path), "--backend", other, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["text"].startswith("time traveller")
    assert json.loads(out)["cell"] == CELL_OF[cell]
    perplexities = []
    for on in (other, backend):
        code, out, err = run_cli(
            capsys,
            "eval",
            "--checkpoint",
            str(path),
            "--corpus",
            str(corpus),
            "--backend",
            on,
            "--json",
        )
        assert code == 0, err
        perplexities.append(json.loads(out)["perplexity"])
    assert perplexities[0] == pytest.approx(perplexities[1], rel=RELATIVE)


# --- the step's gradient engines and compile modes -------------------------------------------


@pytest.mark.parametrize(
    ("backend", "flags"),
    [
        ("torch", ["--grad", "bptt"]),
        ("jax", ["--grad", "bptt"]),
        ("jax", ["--eager"]),
        ("tensorflow", ["--grad", "bptt"]),
        ("tensorflow", ["--eager"]),
        ("torch", ["--compile"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else v,
)
def test_lstm_trajectory_in_every_mode(
    tmp_path: Path,
    corpus: Path,
    reference_dir: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    flags: list[str],
) -> None:
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")
    run = [*CELL_FLAGS["lstm"], "--epochs", "2"]
    path = tmp_path / "model.st"
    _train(capsys, corpus, path, "--backend", backend, *run, *flags)
    _assert_close(path, _reference(capsys, corpus, reference_dir, *run))


@pytest.mark.parametrize("backend", [b for b in ("torch", "jax") if b in INSTALLED])
@pytest.mark.parametrize(
    "state", [["--reset-state"], ["--no-detach"], ["--sampling", "random"]], ids=" ".join
)
def test_lstm_state_handling(
    tmp_path: Path,
    corpus: Path,
    reference_dir: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    state: list[str],
) -> None:
    """The LSTM's (H, C) is reset, kept in the graph or started fresh, as the RNN's H is."""
    run = [*CELL_FLAGS["lstm"], "--epochs", "1", *state]
    path = tmp_path / "model.st"
    _train(capsys, corpus, path, "--backend", backend, *run)
    _assert_close(path, _reference(capsys, corpus, reference_dir, *run))


@pytest.mark.parametrize("framework", AUTOGRAD)
@pytest.mark.parametrize("embed_dim", [None, 4], ids=["one-hot", "learned-embedding"])
@pytest.mark.parametrize("cell", cells.CELLS)
def test_bptt_matches_autograd_through_core(framework: str, cell: str, embed_dim: int) -> None:
    """The backend's autodiff of core's dispatching forward_loss, and core's BPTT on its arrays:
    the same loss, gradients and final state (float64, to 1e-12)."""
    backend = backends.load(framework)
    ops = backend.make_ops("float64", "cpu")
    rng = np.random.default_rng(7)
    V, H, B, T = 6, 5, 3, 7
    params = cells.init_params(cell, V, H, rng, sigma=0.3, embed_dim=embed_dim)
    for name, value in params.items():
        if name.startswith("b"):
            params[name] = rng.standard_normal(value.shape) * 0.3
    inputs = ops.asarray(rng.integers(0, V, (T, B)))
    labels = ops.asarray(rng.integers(0, V, (T, B)))
    p = model.to_backend(ops, params)
    assert set(p) == set(params)
    state = cells.initial_state(ops, p, B)
    results = {}
    for grad in ("autograd", "bptt"):
        value_and_grad = backend.make_value_and_grad(ops, grad)
        loss, grads, final = value_and_grad(p, inputs, labels, state)
        parts = final if isinstance(final, tuple) else (final,)
        results[grad] = {
            "loss": ops.to_numpy(loss),
            **{k: ops.to_numpy(v) for k, v in grads.items()},
            **{f"state{i}": ops.to_numpy(s) for i, s in enumerate(parts)},
        }
    assert results["autograd"].keys() == results["bptt"].keys()
    assert len([k for k in results["bptt"] if k in params]) == len(params)
    for k, want in results["bptt"].items():
        np.testing.assert_allclose(results["autograd"][k], want, rtol=0, atol=1e-12, err_msg=k)


# --- resume, old checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELL_FLAGS)
def test_two_plus_two_epochs_equal_four(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], cell: str
) -> None:
    straight, half = tmp_path / "straight.st", tmp_path / "half.st"
    _train(capsys, corpus, straight, *CELL_FLAGS[cell], "--epochs", "4")
    _train(capsys, corpus, half, *CELL_FLAGS[cell], "--epochs", "2")
    code, _, err = run_cli(capsys, "train", "--resume", str(half), "--epochs", "4", "--json")
    assert code == 0, err
    a, _ = checkpoint.load(straight)
    b, meta = checkpoint.load(half)
    assert meta["epoch"] == 4
    for k in model.param_names(a):
        assert np.array_equal(a[k], b[k]), k  # bit-identical


def test_an_interrupted_lstm_epoch_saves_and_restores_h_and_c(corpus: Path, tmp_path: Path) -> None:
    """Mid-epoch the carried state is the pair (H, C): saved as ``state`` and ``state_c`` and
    restored as the pair, the continuation is exact."""
    from rosetta_rnn.backends import numpy as numpy_backend

    ops = numpy_backend.make_ops("float64", "cpu")
    text = data.load_corpus(corpus, "char", 10000)
    ids, vocab_size = text.ids, len(text.vocab)
    cfg = TrainConfig(batch_size=4, num_steps=8, num_hiddens=8, epochs=2)
    step = numpy_backend.make_train_step(ops)

    def trainer() -> Trainer:
        rng = np.random.default_rng(0)
        params = cells.init_params("lstm", vocab_size, 8, rng, forget_bias=1.0)
        return Trainer(ops, step, model.to_backend(ops, params), ids, cfg, rng)

    straight = trainer()
    for _ in range(2):
        straight.run_epoch()
    first = trainer()
    calls = iter(range(100))
    with pytest.raises(TrainingInterrupted):
        first.run_epoch(stop_requested=lambda: next(calls) == 2)
    tensors, position = first.snapshot()
    assert tensors["state"].shape == tensors["state_c"].shape == (4, 8)
    path = tmp_path / "mid.st"
    checkpoint.save(path, tensors, {"position": position})
    tensors, meta = checkpoint.load(path)
    second = trainer()
    second.params = model.to_backend(ops, tensors)
    second.restore(tensors, meta["position"])
    assert isinstance(second.hidden, tuple) and len(second.hidden) == 2
    while second.epoch < 2:
        second.run_epoch()
    for k, v in straight.params.items():
        assert np.array_equal(v, second.params[k]), k


def test_resume_with_another_cell_is_refused(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rnn.st"
    _train(capsys, corpus, path, "--epochs", "1")
    code, _, err = run_cli(
        capsys, "train", "--resume", str(path), "--cell", "lstm", "--epochs", "2"
    )
    assert code != 0
    one_line_error(err, "--cell lstm differs from the checkpoint's cell rnn")
    path = tmp_path / "gru.st"
    _train(capsys, corpus, path, "--cell", "gru", "--epochs", "1")
    code, _, err = run_cli(
        capsys, "train", "--resume", str(path), "--gru", "reset-after", "--epochs", "2"
    )
    assert code != 0
    one_line_error(err, "--gru reset-after differs")


@pytest.mark.parametrize("layout", ["run without cell", "before run"])
def test_an_old_checkpoint_loads_as_rnn(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    """Checkpoints written before the cells (no ``cell`` in ``run``, or no ``run`` at all) are
    the chapter's RNN: they generate, evaluate and resume as one."""
    from rosetta_rnn.core.run import RunSpec

    path = tmp_path / "old.st"
    _train(capsys, corpus, path, "--epochs", "1")
    tensors, meta = checkpoint.load(path)
    if layout == "before run":
        del meta["run"]
    else:
        for key in ("cell", "gru", "forget_bias"):
            del meta["run"][key]
    checkpoint.save(path, tensors, meta)
    assert RunSpec.from_meta(checkpoint.load(path)[1], str(path)).cell == "rnn"
    assert checkpoint.model_cell(meta, str(path)) == "rnn"
    for command in (["generate"], ["eval", "--corpus", str(corpus)]):
        code, _, err = run_cli(capsys, *command, "--checkpoint", str(path))
        assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "2")
    assert code == 0, err
    assert checkpoint.load(path)[1]["run"]["cell"] == "rnn"


def test_a_checkpoint_whose_parameters_are_another_cells_is_refused(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lstm.st"
    _train(capsys, corpus, path, "--cell", "lstm", "--epochs", "1")
    tensors, meta = checkpoint.load(path)
    meta["run"]["cell"] = "gru"
    checkpoint.save(path, tensors, meta)
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(path))
    assert code != 0
    assert "not a gru/reset-before's" in err and "Traceback" not in err


# --- flags that belong to one cell -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--cell", "gru", "--forget-bias", "1"], "--forget-bias is the LSTM's"),
        (["--forget-bias", "1"], "--forget-bias is the LSTM's"),
        (["--gru", "reset-after"], "needs --cell gru"),
        (["--cell", "lstm", "--gru", "reset-before"], "needs --cell gru"),
        (["--cell", "gru", "--activation", "relu"], "the gru cell uses σ and tanh"),
    ],
    ids=" ".join,
)
def test_a_flag_of_another_cell_is_refused(
    tmp_path: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    words: str,
) -> None:
    code, _, err = run_cli(
        capsys, "train", "--corpus", str(corpus), *SMALL, *flags, "--epochs", "1"
    )
    assert code != 0
    one_line_error(err, words)


@pytest.mark.parametrize(
    ("flags", "hiddens"), [([], 512), (["--cell", "gru"], 256), (["--cell", "lstm"], 256)]
)
def test_each_cell_defaults_to_its_chapters_size(
    corpus: Path, capsys: pytest.CaptureFixture[str], flags: list[str], hiddens: int
) -> None:
    """8.5's RNN has 512 hidden units, 9.1's GRU and 9.2's LSTM 256; --num-hiddens still wins."""
    small = ["--corpus", str(corpus), "--batch-size", "2", "--num-steps", "4", "--epochs", "1"]
    code, out, err = run_cli(capsys, "train", *small, *flags, "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["num_hiddens"] == hiddens
    code, out, err = run_cli(capsys, "train", *small, *flags, "--num-hiddens", "6", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["num_hiddens"] == 6

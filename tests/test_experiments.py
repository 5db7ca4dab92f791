"""The chapter's experiments as commands: held-out and eval perplexity, plots, α sampling,
the clipping comparison, word tokens, no-detach, reset-state, learned embeddings, last-step
loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.cli import main
from rosetta_rnn.core import model, sampling
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.evaluation import perplexity_on
from rosetta_rnn.core.training import TrainConfig, Trainer

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16"]
TEXT = "the time traveller for so it will be convenient to speak of him was expounding\n"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text(TEXT * 15)
    return path


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_fraction_reports_heldout_perplexity_and_plots(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "ppl.png"
    doc = _json(
        capsys,
        "train",
        "--corpus",
        str(corpus),
        *SMALL,
        "--epochs",
        "6",
        "--train-fraction",
        "0.8",
        "--plot",
        str(png),
    )
    held = [h["heldout_perplexity"] for h in doc["history"]]
    assert all(math.isfinite(h) and h > 1 for h in held)
    assert doc["heldout_perplexity"] == held[-1]
    assert png.read_bytes().startswith(PNG)


def test_eval_counts_unknown_characters_and_matches_core(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.st"
    assert (
        main(["train", "--corpus", str(corpus), *SMALL, "--epochs", "3", "--checkpoint", str(ckpt)])
        == 0
    )
    capsys.readouterr()
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("The quick brown fox jumps over the lazy dog.\n")
    doc = _json(capsys, "eval", "--checkpoint", str(ckpt), "--corpus", str(unseen))
    text = "the quick brown fox jumps over the lazy dog"
    assert doc["tokens"] == len(text) - 1
    assert doc["unknown_tokens"] == sum(c not in TEXT for c in text)  # q, u, z, j, ...
    assert doc["perplexity"] > 1
    for backend in ("numpy", "torch"):
        pytest.importorskip(backend)
        again = _json(
            capsys, "eval", "--checkpoint", str(ckpt), "--corpus", str(unseen), "--backend", backend
        )
        assert again["perplexity"] == pytest.approx(doc["perplexity"], rel=1e-5)


def test_perplexity_on_equals_the_mean_cross_entropy_of_one_sequence() -> None:
    ops = numpy_backend.make_ops("float64")
    params = model.init_params(6, 5, np.random.default_rng(0), "float64", sigma=0.5)
    ids = np.random.default_rng(1).integers(0, 6, 23)
    ppl, n = perplexity_on(ops, params, ids, num_steps=4)
    loss, _ = model.forward_loss(ops, params, ids[:-1, None], ids[1:, None], np.zeros((1, 5)))
    assert n == 22 and ppl == pytest.approx(math.exp(float(loss)), rel=1e-12)


def test_alpha_is_inverse_temperature_and_plot(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, png = tmp_path / "m.st", tmp_path / "dist.png"
    main(["train", "--corpus", str(corpus), *SMALL, "--epochs", "3", "--checkpoint", str(ckpt)])
    capsys.readouterr()
    base = ["generate", "--checkpoint", str(ckpt), "--seed", "3"]
    assert main([*base, "--alpha", "2"]) == 0
    by_alpha = capsys.readouterr().out
    assert main([*base, "--temperature", "0.5"]) == 0
    assert capsys.readouterr().out == by_alpha
    assert main([*base, "--greedy", "--plot", str(png), "--alphas", "0.5,1,4"]) == 0
    assert png.read_bytes().startswith(PNG)
    assert main([*base, "--greedy", "--alpha", "2"]) == 2  # one way of choosing at a time


def test_next_distribution_sharpens_with_alpha() -> None:
    ops = numpy_backend.make_ops("float64")
    params = model.init_params(6, 5, np.random.default_rng(0), "float64", sigma=0.5)
    flat, sharp = (sampling.next_distribution(ops, params, [1, 2], a) for a in (0.5, 4.0))
    assert flat.sum() == pytest.approx(1) and sharp.sum() == pytest.approx(1)
    assert sharp.max() > flat.max() and int(sharp.argmax()) == int(flat.argmax())


def test_clipping_experiment(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "norms.png"
    doc = _json(
        capsys,
        "clipping",
        "--corpus",
        str(corpus),
        "--epochs",
        "2",
        "--num-hiddens",
        "16",
        "--clip",
        "0.01",
        "--plot",
        str(png),
    )
    clipped, free = doc["runs"].values()
    assert clipped["theta"] == 0.01 and free["theta"] is None
    assert clipped["grad_norms"][0] == free["grad_norms"][0]  # same start, same first gradient
    assert clipped["grad_norms"] != free["grad_norms"]  # then clipping changes the path
    assert png.read_bytes().startswith(PNG)


def test_no_clip_reports_the_largest_gradient_norm(
    corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--corpus", str(corpus), *SMALL, "--epochs", "2", "--no-clip"]) == 0
    assert "largest gradient norm" in capsys.readouterr().out


def test_word_tokens_end_to_end(
    tmp_path: Path, timemachine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "w.st"
    doc = _json(
        capsys,
        "train",
        "--corpus",
        str(timemachine),
        "--token",
        "word",
        "--max-tokens",
        "2000",
        *SMALL,
        "--epochs",
        "2",
        "--checkpoint",
        str(ckpt),
    )
    assert doc["samples"]["time traveller"].startswith("time traveller ")
    assert main(["generate", "--checkpoint", str(ckpt), "--num-chars", "5"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["time", "traveller"] and len(words) == 7


@pytest.mark.parametrize(
    "extra",
    [
        ["--no-detach"],
        ["--reset-state"],
        ["--embedding", "learned", "--embed-dim", "8"],
        ["--loss", "last-step"],
        ["--activation", "relu"],
    ],
    ids=["no-detach", "reset-state", "learned-embedding", "last-step", "relu"],
)
def test_variants_train_and_generate(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    ckpt = tmp_path / "v.st"
    doc = _json(
        capsys,
        "train",
        "--corpus",
        str(corpus),
        *SMALL,
        "--epochs",
        "4",
        *extra,
        "--checkpoint",
        str(ckpt),
    )
    assert doc["history"][-1]["perplexity"] < doc["history"][0]["perplexity"]
    assert main(["generate", "--checkpoint", str(ckpt), "--num-chars", "10"]) == 0
    assert len(capsys.readouterr().out.rstrip("\n")) == len("time traveller") + 10


def test_no_detach_needs_sequential(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--corpus", str(corpus), "--no-detach", "--sampling", "random"]) == 2
    assert "--no-detach needs --sampling sequential" in capsys.readouterr().err


def _states_seen(sampling: str, reset_state: bool) -> tuple[list[bool], list[float]]:
    """Per minibatch of two epochs: did it start from zeros; and the epochs' perplexities."""
    ops = numpy_backend.make_ops("float64", "cpu")
    step = numpy_backend.make_train_step(ops)
    zeros: list[bool] = []

    def spy(params, inputs, labels, state, lr, clip):  # type: ignore[no-untyped-def]
        zeros.append(not np.any(state))
        return step(params, inputs, labels, state, lr, clip)

    cfg = TrainConfig(
        batch_size=2, num_steps=5, num_hiddens=8, sampling=sampling, reset_state=reset_state
    )
    rng = np.random.default_rng(0)
    params = model.to_backend(ops, model.init_params(10, cfg.num_hiddens, rng))
    ids = np.random.default_rng(1).integers(0, 10, size=200)
    trainer = Trainer(ops, spy, params, ids, cfg, rng)
    ppl = [trainer.run_epoch().perplexity for _ in range(2)]
    return zeros, ppl


def test_reset_state_starts_every_sequential_minibatch_from_zeros() -> None:
    carried, carried_ppl = _states_seen("sequential", reset_state=False)
    reset, reset_ppl = _states_seen("sequential", reset_state=True)
    per_epoch = len(carried) // 2
    assert per_epoch > 2
    # carried: zeros only where an epoch begins; reset: zeros everywhere, on the same batches
    assert carried == ([True] + [False] * (per_epoch - 1)) * 2
    assert reset == [True] * len(carried)
    assert reset_ppl != carried_ppl
    # random sampling resets anyway, so the flag changes nothing there
    assert _states_seen("random", False) == _states_seen("random", True)


def test_reset_state_and_no_detach_exclude_each_other(
    corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--corpus", str(corpus), "--no-detach", "--reset-state"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "rosetta-rnn: error: argument --reset-state: not allowed with argument --no-detach\n"
    )
    with pytest.raises(UserError, match="contradict"):
        TrainConfig(detach=False, reset_state=True)


def test_reset_state_is_kept_by_the_checkpoint_and_resume(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "r.st"
    common = ["--corpus", str(corpus), *SMALL, "--dtype", "float64", "--reset-state"]
    straight = _json(capsys, "train", *common, "--epochs", "4")
    first = _json(capsys, "train", *common, "--epochs", "2", "--checkpoint", str(ckpt))
    assert first["config"]["reset_state"] is True
    resumed = _json(capsys, "train", "--resume", str(ckpt), "--epochs", "4")
    assert resumed["config"]["reset_state"] is True
    got = [h["perplexity"] for h in resumed["history"]]
    assert got == [h["perplexity"] for h in straight["history"]][-len(got) :]

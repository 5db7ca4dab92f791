"""Core against the independent reference (conformance/reference.py): every reference/* cell
passes, and mistakes planted in core, of the kind every backend would inherit, fail the cell
meant to see them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.conformance import reference_checks as rc
from rosetta_rnn.conformance.checks import Cell
from rosetta_rnn.core import checkpoint, data, evaluation, model, sampling
from rosetta_rnn.core import training as training_mod

CHECKS: dict[str, Callable[[Path], Cell]] = {
    "vocab-char": lambda corpus: rc.check_vocab(corpus, "char"),
    "vocab-word": lambda corpus: rc.check_vocab(corpus, "word"),
    "iterators": lambda corpus: rc.check_iterators(),
    "init": lambda corpus: rc.check_init(),
    **{f"train/{m}": (lambda corpus, m=m: rc.check_train(m)) for m in rc.TRAIN_MODES},
    "perplexity": lambda corpus: rc.check_perplexity(),
    "eval": lambda corpus: rc.check_eval(),
    "generate": lambda corpus: rc.check_generate(),
    "checkpoint": lambda corpus: rc.check_checkpoint(),
}


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    rc._trained.clear()  # every test trains with the core it patched


@pytest.mark.parametrize("name", list(CHECKS))
def test_core_agrees_with_the_reference(name: str, timemachine: Path) -> None:
    cell = CHECKS[name](timemachine)
    assert cell.check == f"reference/{name}"
    assert cell.passed, f"{cell.max_error} > {cell.tolerance}: {cell.message}"


def test_run_all_names_one_cell_per_item(timemachine: Path) -> None:
    cells = rc.run_all(timemachine)
    assert [c.check for c in cells] == [f"reference/{n}" for n in CHECKS]
    assert all(c.backend == "core" and c.dtype == "float64" for c in cells)


def test_a_missing_corpus_fails_the_vocab_cells(tmp_path: Path) -> None:
    cell = rc.check_vocab(tmp_path / "absent.txt", "char")
    assert not cell.passed and "corpus file not found" in cell.message


# --- planted mistakes: each is caught by the cell meant for it ----------------------------------


def _fault_offset_range(mp: pytest.MonkeyPatch) -> None:
    real = data.seq_data_iter_sequential

    class NarrowRng:  # the offset from [0, num_steps - 1] instead of d2l's [0, num_steps]
        def __init__(self, rng: Any) -> None:
            self.rng = rng

        def integers(self, low: int, high: int) -> int:
            return int(self.rng.integers(low, high - 1))

    def sequential(corpus, batch_size, num_steps, rng):  # type: ignore[no-untyped-def]
        return real(corpus, batch_size, num_steps, NarrowRng(rng))

    mp.setattr(data, "seq_data_iter_sequential", sequential)


def _fault_random_keeps_order(mp: pytest.MonkeyPatch) -> None:
    real = data.seq_data_iter_random

    class NoShuffle:
        def __init__(self, rng: Any) -> None:
            self.rng = rng

        def integers(self, low: int, high: int) -> int:
            return int(self.rng.integers(low, high))

        def permutation(self, x: Any) -> Any:
            self.rng.permutation(x)  # the draw is made, its result ignored
            return np.asarray(x)

    def random(corpus, batch_size, num_steps, rng):  # type: ignore[no-untyped-def]
        return real(corpus, batch_size, num_steps, NoShuffle(rng))

    mp.setattr(data, "seq_data_iter_random", random)


def _fault_vocab_ties_alphabetical(mp: pytest.MonkeyPatch) -> None:
    real_init = data.Vocab.__init__

    def init(self, tokens=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, tokens, *args, **kwargs)
        counts: dict[str, int] = {}
        for line in tokens or []:
            for t in line:
                counts[t] = counts.get(t, 0) + 1
        body = sorted(self.idx_to_token[1:], key=lambda t: (-counts.get(t, 0), t))
        self.idx_to_token = [self.idx_to_token[0], *body]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    mp.setattr(data.Vocab, "__init__", init)


def _fault_clip_epsilon(mp: pytest.MonkeyPatch) -> None:
    def clip(ops, grads, theta):  # type: ignore[no-untyped-def]
        norm = model.global_norm(ops, grads)
        scale = ops.minimum(1.0, theta / (norm + 1e-6))
        return {k: grads[k] * scale for k in model.param_names(grads)}, norm

    mp.setattr(model, "clip_by_global_norm", clip)


def _fault_lr_halved(mp: pytest.MonkeyPatch) -> None:
    real = model.sgd
    mp.setattr(model, "sgd", lambda ops, params, grads, lr: real(ops, params, grads, lr / 2))


def _fault_perplexity_of_means(mp: pytest.MonkeyPatch) -> None:
    """The mean of the minibatches' perplexities instead of exp of the mean loss."""
    real = training_mod._Totals.add

    def add(self, loss_sum, tokens, norm):  # type: ignore[no-untyped-def]
        real(self, loss_sum, tokens, norm)
        self._perplexities = [*getattr(self, "_perplexities", []), math.exp(loss_sum / tokens)]
        self.loss_sum = math.log(float(np.mean(self._perplexities))) * self.tokens

    mp.setattr(training_mod._Totals, "add", add)


def _fault_temperature_multiplies(mp: pytest.MonkeyPatch) -> None:
    def next_token(ops, logits, temperature, rng):  # type: ignore[no-untyped-def]
        if not temperature:
            return sampling.greedy_choice(ops.to_numpy(logits))
        probs = ops.to_numpy(model.softmax(ops, logits * temperature))
        return sampling.inverse_cdf_choice(probs, float(rng.random()))

    mp.setattr(sampling, "next_token", next_token)


def _fault_no_warm_up(mp: pytest.MonkeyPatch) -> None:
    real = sampling.predict

    def predict(ops, params, prefix, num_preds, **kwargs):  # type: ignore[no-untyped-def]
        out = real(ops, params, list(prefix)[-1:], num_preds, **kwargs)
        return list(prefix[:-1]) + out

    mp.setattr(sampling, "predict", predict)


def _fault_checkpoint_transposed(mp: pytest.MonkeyPatch) -> None:
    real = checkpoint.save

    def save(path, tensors, metadata):  # type: ignore[no-untyped-def]
        real(path, {**tensors, "W_xh": np.ascontiguousarray(tensors["W_xh"].T)}, metadata)

    mp.setattr(checkpoint, "save", save)


def _fault_init_order(mp: pytest.MonkeyPatch) -> None:
    real = model.init_params

    def init(vocab_size, num_hiddens, rng, dtype="float64", sigma=0.01, embed_dim=None):  # type: ignore[no-untyped-def]
        W_hh = rng.standard_normal((num_hiddens, num_hiddens)) * sigma  # drawn first
        params = real(vocab_size, num_hiddens, rng, dtype, sigma, embed_dim)
        return {**params, "W_hh": W_hh.astype(dtype)}

    mp.setattr(model, "init_params", init)


def _fault_eval_resets_the_state(mp: pytest.MonkeyPatch) -> None:
    real = model.forward_loss

    def forward_loss(ops, params, inputs, labels, state, activation="tanh"):  # type: ignore[no-untyped-def]
        return real(ops, params, inputs, labels, state * 0, activation)

    mp.setattr(evaluation, "forward_loss", forward_loss)


FAULTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[str]]] = {
    "sequential offset drawn from [0, T-1]": (_fault_offset_range, ["iterators"]),
    "random sampling without the shuffle": (_fault_random_keeps_order, ["train/random"]),
    "vocabulary ties broken alphabetically": (_fault_vocab_ties_alphabetical, ["vocab-word"]),
    "clipping with an epsilon": (_fault_clip_epsilon, ["train/clip-active"]),
    "SGD with half the learning rate": (_fault_lr_halved, ["train/sequential", "train/random"]),
    "perplexity as the mean of per-minibatch perplexities": (
        _fault_perplexity_of_means,
        ["perplexity"],
    ),
    "temperature multiplies the logits": (_fault_temperature_multiplies, ["generate"]),
    "generation without the warm-up": (_fault_no_warm_up, ["generate"]),
    "checkpoint stores W_xh transposed": (_fault_checkpoint_transposed, ["checkpoint"]),
    "init draws W_hh first": (_fault_init_order, ["init"]),
    "eval restarts the state every chunk": (_fault_eval_resets_the_state, ["eval"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_planted_core_mistake_fails_its_cell(
    fault: str, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant, cells = FAULTS[fault]
    plant(monkeypatch)
    for name in cells:
        cell = CHECKS[name](timemachine)
        assert not cell.passed, f"{fault} went through {name} ({cell.max_error})"


def test_conform_json_holds_the_reference_cells(
    timemachine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    base = ["conform", "--backends", "numpy", "--dtype", "float64", "--no-oracles", "--json"]
    assert main([*base, "--corpus", str(timemachine)]) == 0
    doc = json.loads(capsys.readouterr().out)
    ref_cells = [c for c in doc["cells"] if c["check"].startswith("reference/")]
    assert [c["check"] for c in ref_cells] == [f"reference/{n}" for n in CHECKS]
    assert doc["passed"] and all(c["passed"] for c in ref_cells)
    assert any(c["backend"] == "numpy" for c in doc["cells"])  # the backend matrix ran too

    assert main([*base, "--no-reference"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cells"] and not any(c["check"].startswith("reference/") for c in doc["cells"])


def test_conform_without_the_corpus_fails_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    argv = ["conform", "--backends", "numpy", "--dtype", "float64", "--no-oracles"]
    assert main([*argv, "--corpus", str(tmp_path / "absent.txt")]) == 1
    out = capsys.readouterr().out
    assert "FAIL reference/vocab-char" in out and "corpus file not found" in out

"""The ``reference/run-*`` cells: whole runs built as ``train`` builds them (``core.run``) held
to the reference's plain run. Each passes on core as it is, and each mistake planted in how a
run is put together (a setting parsed but never applied, the seed, the split, the resume)
fails the cell of that setting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.conformance import reference_checks, run_checks
from rosetta_rnn.core import data, evaluation
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core import training as training_mod
from rosetta_rnn.core.training import TrainConfig

NAMES = [*run_checks.OPTIONS, *run_checks.RESUMED]


def _failing() -> dict[str, str]:
    """The run cells that fail, with their messages."""
    return {
        name.removeprefix("reference/run-"): cell.message or f"{cell.max_error:.3g}"
        for name, task in run_checks.tasks()
        if not (cell := task()).passed
    }


def test_every_run_cell_passes() -> None:
    cells = {name: task() for name, task in run_checks.tasks()}
    assert [name.removeprefix("reference/run-") for name in cells] == NAMES
    for name, cell in cells.items():
        assert cell.passed, f"{name}: {cell.max_error} > {cell.tolerance}: {cell.message}"
        assert cell.check == name and cell.backend == "core" and cell.cell is None
        assert cell.max_error < cell.tolerance / 100  # float64 agreement, not a near miss


def test_the_run_cells_are_reference_tasks() -> None:
    """``conform`` runs them: they are among the reference tasks, whatever cells are asked."""
    names = [name for name, _ in reference_checks.tasks(None, cells=["lstm"])]
    assert [n for n in names if n.startswith("reference/run-")] == [
        f"reference/run-{n}" for n in NAMES
    ]


def test_the_options_cover_every_setting_of_a_run() -> None:
    """Every field of the spec but two is varied by some option: the dtype is the reference's
    float64, and the hidden size only scales the matrices every cell compares."""
    varied = {key for option in run_checks.OPTIONS.values() for key in option}
    assert set(run_spec.RunSpec.__dataclass_fields__) - varied == {"dtype", "num_hiddens"}


def _spec_changed(monkeypatch: pytest.MonkeyPatch, name: str, **wrong: Any) -> None:
    """``core.run.<name>`` called with the spec changed as ``wrong`` says: a setting the run
    was asked for that never reaches it."""
    original = getattr(run_spec, name)

    def planted(spec: run_spec.RunSpec, *args: Any, **kwargs: Any) -> Any:
        return original(replace(spec, **wrong), *args, **kwargs)

    monkeypatch.setattr(run_spec, name, planted)


def _seed_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "build", seed=0)


def _activation_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "engine", activation="tanh")


def _forget_bias_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "init_params", forget_bias=0.0)


def _gru_form_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "init_params", gru="reset-before")


def _embedding_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "init_params", embed_dim=None)


def _max_tokens_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "load_text", max_tokens=run_checks.BASE.max_tokens)


def _heldout_trained_on(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.load_text

    def planted(spec: run_spec.RunSpec, source: Any) -> run_spec.Text:
        text = original(spec, source)
        return replace(text, train_ids=text.corpus.ids)

    monkeypatch.setattr(run_spec, "load_text", planted)


def _loss_window_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.RunSpec.train_config

    def planted(self: run_spec.RunSpec, epochs: int) -> TrainConfig:
        return replace(original(self, epochs), loss="all-steps")

    monkeypatch.setattr(run_spec.RunSpec, "train_config", planted)


def _resume_draws_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.build

    def planted(spec: run_spec.RunSpec, *args: Any, **kwargs: Any) -> run_spec.Run:
        run = original(spec, *args, **kwargs)
        if run.trainer.epoch:  # restored: the generator starts over instead of continuing
            run.trainer.rng = np.random.default_rng(spec.seed)
        return run

    monkeypatch.setattr(run_spec, "build", planted)


def _split_off_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.load_text

    def planted(spec: run_spec.RunSpec, source: Any) -> run_spec.Text:
        text = original(spec, source)
        if text.heldout_ids is None:
            return text
        cut = len(text.train_ids) + 1
        return replace(text, train_ids=text.corpus.ids[:cut], heldout_ids=text.corpus.ids[cut:])

    monkeypatch.setattr(run_spec, "load_text", planted)


# --- d2l 1.0's pieces: the vocabulary, the windows, the split, the loader, the validation ----


def _preprocess_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    _spec_changed(monkeypatch, "load_text", preprocess="lines")


def _vocab_by_frequency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "make_vocab", lambda tokens, order="frequency": data.Vocab(tokens))


def _window_one_late(monkeypatch: pytest.MonkeyPatch) -> None:
    original = data.window_batches
    monkeypatch.setattr(
        data, "window_batches", lambda ids, starts, *a: original(ids, np.asarray(starts) + 1, *a)
    )


def _split_one_early(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.load_text

    def planted(spec: run_spec.RunSpec, source: Any) -> run_spec.Text:
        text = original(spec, source)
        if text.val_starts is None:
            return text
        return replace(text, val_starts=text.val_starts - 1)

    monkeypatch.setattr(run_spec, "load_text", planted)


def _no_shuffle(monkeypatch: pytest.MonkeyPatch) -> None:
    def planted(corpus: Any, batch_size: int, num_steps: int, rng: Any, num_train: int) -> Any:
        rng.permutation(num_train)  # drawn as it should be, then not used
        return data.window_batches(corpus, np.arange(num_train), batch_size, num_steps)

    monkeypatch.setattr(data, "seq_data_iter_windows", planted)


def _partial_minibatch_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    original = data.window_batches

    def planted(ids: Any, starts: Any, batch_size: int, num_steps: int) -> Any:
        whole = len(starts) // batch_size * batch_size
        return original(ids, np.asarray(starts)[:whole], batch_size, num_steps)

    monkeypatch.setattr(data, "window_batches", planted)


def _validation_state_carried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation minibatches that continue the last one's state, as 0.17's sequential
    iterator does, instead of each from zeros."""

    def planted(
        ops: Any,
        params: Any,
        ids: Any,
        starts: Any,
        batch_size: int,
        num_steps: int,
        activation: str = "tanh",
        cell: str | None = None,
        last_step: bool = False,
    ) -> Any:
        total, n, exps, batches, state = 0.0, 0, 0.0, 0, None
        for X, Y in data.window_batches(ids, starts, batch_size, num_steps):
            labels = Y.T[-1:] if last_step else Y.T
            fresh = evaluation.initial_state(ops, params, X.shape[0], cell)
            if state is None or np.shape(ops.to_numpy(state)) != np.shape(ops.to_numpy(fresh)):
                state = fresh
            loss, state = evaluation.forward_loss(
                ops, params, ops.asarray(X.T), ops.asarray(labels), state, activation, cell
            )
            mean = float(ops.to_numpy(loss))
            total, n = total + mean * labels.size, n + labels.size
            exps, batches = exps + np.exp(mean), batches + 1
        return float(np.exp(total / n)), exps / batches

    monkeypatch.setattr(run_spec, "window_perplexity", planted)


def _validation_metric_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.window_perplexity

    def planted(*args: Any, **kwargs: Any) -> tuple[float, float]:
        weighted, book = original(*args, **kwargs)
        return book, weighted

    monkeypatch.setattr(run_spec, "window_perplexity", planted)


def _book_figure_of_the_mean_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The book's training figure as exp(mean of the minibatch losses), not the mean of their
    exps."""

    def planted(self: Any, loss_mean: float, tokens: int, norm: float) -> None:
        self.loss_sum += loss_mean * tokens
        self.tokens += tokens
        self.max_norm = max(self.max_norm, norm)
        self.norms.append(norm)
        self.logs = [*getattr(self, "logs", []), loss_mean]
        self.exp_sum = float(np.exp(np.mean(self.logs))) * len(self.logs)

    monkeypatch.setattr(training_mod._Totals, "add", planted)


def _recipe_prefix_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_spec.Run.sample

    def planted(self: run_spec.Run, prefix: str, num_preds: int | None = None, **kw: Any) -> str:
        return original(self, prefix, 50 if num_preds is None else num_preds, **kw)

    monkeypatch.setattr(run_spec.Run, "sample", planted)


PLANTED: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "the seed is parsed but the generator is seeded 0": (_seed_unused, "seed"),
    "--activation relu never reaches the step": (_activation_unapplied, "relu"),
    "--forget-bias never reaches the initialisation": (_forget_bias_unapplied, "forget-bias"),
    "--gru reset-after initialises a reset-before GRU": (_gru_form_unapplied, "gru-reset-after"),
    "--embedding learned initialises a one-hot model": (_embedding_unapplied, "embedding"),
    "--max-tokens is ignored": (_max_tokens_unapplied, "max-tokens"),
    "the held-out text is trained on as well": (_heldout_trained_on, "train-fraction"),
    "--loss last-step never reaches the trainer": (_loss_window_unapplied, "last-step"),
    "a resumed run draws from a fresh generator": (_resume_draws_afresh, "resume"),
    "the held-out split is one token off": (_split_off_by_one, "train-fraction"),
    "--preprocess whole reads the text line by line": (_preprocess_unapplied, "preprocess-whole"),
    "--vocab-order sorted builds 0.17's vocabulary": (_vocab_by_frequency, "vocab-sorted"),
    "every window starts one token late": (_window_one_late, "windows"),
    "the validation windows start one early": (_split_one_early, "windows"),
    "the training windows are never shuffled": (_no_shuffle, "windows"),
    "the last partial minibatch is dropped": (_partial_minibatch_dropped, "windows"),
    "validation carries the state across minibatches": (_validation_state_carried, "windows"),
    "the two validation figures are swapped": (_validation_metric_swapped, "windows"),
    "the book's training figure is exp of the mean loss": (
        _book_figure_of_the_mean_loss,
        "windows",
    ),
    "the recipe's prediction length never reaches the samples": (
        _recipe_prefix_dropped,
        "recipe-1.0",
    ),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_a_planted_assembly_mistake_fails_its_cell(
    mistake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant, cell = PLANTED[mistake]
    plant(monkeypatch)
    failing = _failing()
    assert cell in failing, f"{mistake}: only {sorted(failing)} fail"


def _flags(settings: dict[str, Any]) -> list[str]:
    """``train``'s flags for spec settings, as a user writes them."""
    flags: list[str] = []
    for key, value in settings.items():
        if key in ("prefixes", "num_preds"):  # no flags: the recipe's (--recipe gives them)
            continue
        if (key, value) in run_spec.SWITCHES:
            flags.append(run_spec.SWITCHES[key, value])
        elif value is True:
            flags.append(f"--{key.replace('_', '-')}")
        else:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.parametrize("option", run_checks.OPTIONS)
def test_trains_flags_give_the_spec_the_cell_checks(option: str) -> None:
    """``rosetta-rnn train`` with the flags of an option (on top of the base's) builds the very
    spec its cell holds to the reference: a flag parsed but dropped fails here."""
    from rosetta_rnn.cli import build_parser
    from rosetta_rnn.run_args import spec_from_args as _spec

    base = {
        key: getattr(run_checks.BASE, key)
        for key in ("batch_size", "num_steps", "num_hiddens", "max_tokens", "dtype", "seed")
    }
    settings = {**base, **run_checks.OPTIONS[option]}
    args = build_parser().parse_args(["train", *_flags(settings)])
    assert _spec(args, None) == replace(run_checks.BASE, **run_checks.OPTIONS[option])


@pytest.mark.parametrize(
    ("backend", "grad"), [("numpy", "bptt"), ("torch", "autograd"), ("jax", "bptt")]
)
@pytest.mark.parametrize("cell", [["--cell", "rnn"], ["--cell", "gru", "--gru", "reset-after"]])
def test_train_never_reads_the_model_from_the_parameter_names(
    backend: str,
    grad: str,
    cell: list[str],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cell is decided once, when the run is built: training, its held-out perplexity,
    its samples and its checkpoint run with ``core.cells.cell_of`` made to fail."""
    from cli_run import run_cli

    from rosetta_rnn.core import cells

    pytest.importorskip(f"rosetta_rnn.backends.{backend}")

    def guessed(params: Any) -> str:
        raise AssertionError("the model was read from the parameters' names")

    monkeypatch.setattr(cells, "cell_of", guessed)
    code, _, err = run_cli(
        capsys, "train", "--corpus", str(run_checks.write_text(tmp_path)), "--backend", backend,
        "--grad", grad, *cell, "--epochs", "10", "--num-hiddens", "8", "--batch-size", "4",
        "--num-steps", "5", "--max-tokens", "400", "--train-fraction", "0.8", "--dtype",
        "float64", "--checkpoint", str(tmp_path / "run.safetensors"),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run.safetensors").is_file()

"""The training loop on its own: d2l's defaults, the epoch's bookkeeping and clock, a corpus
too short for one minibatch, and an interrupted epoch continued from a snapshot."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import model, training
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.training import TrainConfig, Trainer, TrainingDiverged

CORPUS = np.resize(np.array([3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0]), 150)
SMALL = {"batch_size": 3, "num_steps": 4, "num_hiddens": 8}


def _trainer(seed: int = 0, **overrides: object) -> Trainer:
    cfg = TrainConfig(**{**SMALL, **overrides})  # type: ignore[arg-type]
    ops = numpy_backend.make_ops("float64", "cpu")
    params = model.init_params(7, cfg.num_hiddens, np.random.default_rng(seed), "float64")
    params = {k: v * 10 for k, v in params.items()}
    step = numpy_backend.make_train_step(ops)
    return Trainer(ops, step, model.to_backend(ops, params), CORPUS, cfg, np.random.default_rng(1))


def test_the_defaults_are_the_chapters() -> None:
    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.num_steps, cfg.num_hiddens) == (32, 35, 512)
    assert (cfg.lr, cfg.epochs, cfg.clip) == (1.0, 500, 1.0)
    assert (cfg.sampling, cfg.activation, cfg.loss) == ("sequential", "tanh", "all-steps")
    assert cfg.embed_dim is None and cfg.detach and not cfg.reset_state


def test_an_epoch_counts_its_tokens_and_times_itself() -> None:
    trainer = _trainer()
    t0 = time.perf_counter()
    result = trainer.run_epoch()
    wall = time.perf_counter() - t0
    steps = len(result.grad_norms)
    assert steps > 1 and result.tokens == steps * 3 * 4
    assert 0 < result.seconds <= wall
    assert result.tokens_per_sec == pytest.approx(result.tokens / result.seconds, rel=1e-12)
    assert result.epoch == 1 and trainer.epoch == 1 and trainer.step == 0
    assert result.max_grad_norm == max(result.grad_norms)


def test_a_corpus_too_short_for_one_minibatch_is_a_user_error() -> None:
    trainer = _trainer()
    trainer.corpus_ids = CORPUS[:10]
    with pytest.raises(UserError, match="too short for one minibatch"):
        trainer.run_epoch()


class _Stop(Exception):
    pass


class _StepClock:
    """A clock that moves one second per training step and stands still otherwise."""

    def __init__(self, trainer: Trainer) -> None:
        self.now = 1000.0
        real = trainer.step_fn

        def timed_step(*args):  # type: ignore[no-untyped-def]
            self.now += 1.0
            return real(*args)

        trainer.step_fn = timed_step

    def perf_counter(self) -> float:
        return self.now


def test_the_epoch_clock_counts_training_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer()
    clock = _StepClock(trainer)
    monkeypatch.setattr(training.time, "perf_counter", clock.perf_counter)
    result = trainer.run_epoch()
    steps = len(result.grad_norms)
    assert result.seconds == steps and result.tokens_per_sec == 3 * 4


def test_an_epoch_of_more_than_256_minibatches_runs_every_one() -> None:
    """Past 256 a step count is no longer a cached small int: counts compare by value."""
    trainer = _trainer(batch_size=1, num_steps=1, sampling="sequential")
    trainer.corpus_ids = np.resize(CORPUS, 300)
    result = trainer.run_epoch()
    assert len(result.grad_norms) == result.tokens == 299


@pytest.mark.parametrize("stop_after", [1, 3])
@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_an_interrupted_epoch_continues_exactly_from_its_snapshot(
    sampling: str, stop_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = _trainer(sampling=sampling)
    straight.run_epoch()
    want = straight.run_epoch()

    first = _trainer(sampling=sampling)
    first.run_epoch()
    clock = _StepClock(first)
    monkeypatch.setattr(training.time, "perf_counter", clock.perf_counter)

    def stop(i: int) -> None:
        if i == stop_after - 1:
            raise _Stop

    with pytest.raises(_Stop):
        first.run_epoch(on_step=stop)
    tensors, position = first.snapshot()
    assert position["step"] == stop_after and isinstance(position["step"], int)
    assert position["totals"]["seconds"] == stop_after
    assert "state" in tensors  # the carried state (sequential partitioning continues it)

    resumed = _trainer(seed=99, sampling=sampling)  # other parameters: the snapshot's win
    ops = resumed.ops
    resumed.params = model.to_backend(ops, {k: tensors[k] for k in model.PARAM_NAMES})
    resumed.restore(tensors, position)
    clock = _StepClock(resumed)
    clock.now = 5000.0  # time between the stop and the resume is not training time
    monkeypatch.setattr(training.time, "perf_counter", clock.perf_counter)
    got = resumed.run_epoch()
    assert got.seconds == len(got.grad_norms)  # the clock carries on from the snapshot
    assert got.grad_norms == want.grad_norms
    assert got.perplexity == want.perplexity
    for k in model.PARAM_NAMES:
        assert np.array_equal(resumed.params[k], straight.params[k]), k


def test_the_configuration_refuses_contradictions_and_saves_no_clip_as_none() -> None:
    with pytest.raises(UserError, match="--no-detach needs --sampling sequential"):
        TrainConfig(detach=False, sampling="random")
    with pytest.raises(UserError, match="contradict"):
        TrainConfig(detach=False, reset_state=True)
    assert TrainConfig(clip=float("inf")).to_dict()["clip"] is None
    assert TrainConfig(clip=0.5).to_dict()["clip"] == 0.5


def test_a_blow_up_names_its_epoch_and_step() -> None:
    trainer = _trainer()
    trainer.run_epoch()
    real = trainer.step_fn
    calls = [0]

    def nan_on_second(*args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        new, hidden, loss, norm = real(*args)
        return new, hidden, loss * np.nan if calls[0] == 2 else loss, norm

    trainer.step_fn = nan_on_second
    with pytest.raises(TrainingDiverged, match="at epoch 2, step 2: loss nan"):
        trainer.run_epoch()


def test_a_snapshot_between_epochs_continues_exactly() -> None:
    straight = _trainer(sampling="random")
    for _ in range(3):
        straight.run_epoch()
    first = _trainer(sampling="random")
    first.run_epoch()
    tensors, position = first.snapshot()
    assert position["step"] == 0 and position["totals"] is None and "state" not in tensors
    resumed = _trainer(seed=99, sampling="random")
    resumed.params = model.to_backend(resumed.ops, {k: tensors[k] for k in model.PARAM_NAMES})
    resumed.restore(tensors, position)
    resumed.run_epoch()
    resumed.run_epoch()
    assert resumed.epoch == 3
    for k in model.PARAM_NAMES:
        assert np.array_equal(resumed.params[k], straight.params[k]), k


def test_option_strings_built_at_run_time_mean_the_same() -> None:
    """argv and JSON give equal strings, not the interned literals."""
    built = {
        "sampling": "".join(["ran", "dom"]),
        "loss": "".join(["all-", "steps"]),
        "activation": "".join(["ta", "nh"]),
    }
    a = _trainer(**built).run_epoch()
    b = _trainer(sampling="random").run_epoch()  # loss and activation: core's own literals
    assert a.tokens == len(a.grad_norms) * 3 * 4  # the loss saw every step
    assert a.grad_norms == b.grad_norms and a.perplexity == b.perplexity
    TrainConfig(detach=False, sampling="".join(["seq", "uential"]))  # no contradiction

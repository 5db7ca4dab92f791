"""The training loop of d2l's ``train_ch8``, backend-neutral.

Sequential partitioning carries the hidden state from one minibatch to the next (detached,
so gradients stop at the minibatch boundary; with ``detach=False`` every step backpropagates
through the epoch so far); random sampling starts every minibatch from zeros, and so does
sequential partitioning with ``reset_state=True`` (what d2l's ``use_random_iter=True`` run
does: the chapter passes that flag with its sequential iterator). Loss and
gradient norm are checked every step; a non-finite value stops training.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import data
from .cells import initial_state
from .contract import StepFn
from .errors import UserError
from .model import ACTIVATIONS, Params, to_numpy
from .ops import Ops

LOSSES = ("all-steps", "last-step")
STATE_NAMES = ("state", "state_c")  # a checkpoint's carried H, and the LSTM's C


@dataclass
class TrainConfig:
    """Hyperparameters; the defaults are the chapter's."""

    batch_size: int = 32
    num_steps: int = 35
    num_hiddens: int = 512
    lr: float = 1.0
    epochs: int = 500
    clip: float = 1.0  # θ of the global-norm clipping; math.inf means --no-clip
    sampling: str = "sequential"
    activation: str = "tanh"
    embed_dim: int | None = None  # None: one-hot inputs (the chapter); N: a learned embedding
    loss: str = "all-steps"  # or "last-step": only the last character of each subsequence
    detach: bool = True  # False: gradients flow through the whole epoch (sequential only)
    reset_state: bool = False  # True: every minibatch starts from zeros (random always does)
    num_train: int = 10000  # sampling "windows": the training windows, those starting 0 .. N-1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        if not self.detach and self.sampling != "sequential":
            raise UserError(
                f"--no-detach needs --sampling sequential ({self.sampling} sampling resets "
                "the state every minibatch)"
            )
        if not self.detach and self.reset_state:
            raise UserError("--no-detach and --reset-state contradict each other")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clip"] = None if math.isinf(self.clip) else self.clip
        return d


@dataclass
class EpochResult:
    epoch: int  # 1-based
    perplexity: float
    tokens_per_sec: float
    tokens: int
    max_grad_norm: float
    seconds: float
    grad_norms: list[float] = field(default_factory=list)
    book_perplexity: float = math.nan
    """The plain mean over the epoch's minibatches of exp(the minibatch's mean loss): what
    d2l 1.0's plot draws. ``perplexity`` is exp of the token-weighted mean loss."""


class TrainingDiverged(UserError):
    """Loss or gradient norm became NaN or infinite."""

    exit_code = 3


class TrainingInterrupted(Exception):
    """A stop was requested (SIGINT); the trainer stopped after a whole step."""


class Trainer:
    """Runs epochs of SGD on one backend. ``params`` are backend arrays.

    The trainer's position (epochs done, minibatches done in the current epoch, the generator
    state when that epoch began, the carried hidden state and the epoch's running totals) is
    everything needed to continue exactly: see ``snapshot`` and ``restore``.
    """

    def __init__(
        self,
        ops: Ops,
        step: StepFn,
        params: Params,
        corpus_ids: np.ndarray,
        config: TrainConfig,
        rng: np.random.Generator,
        epoch: int = 0,
        cell: str | None = None,
    ) -> None:
        """``cell``: the model the run trains (``core.run`` tells it once, when it builds the
        run); None reads it from the parameters' names."""
        self.ops = ops
        self.cell = cell
        self.step_fn = step
        self.params = params
        self.corpus_ids = corpus_ids
        self.config = config
        self.rng = rng
        self.epoch = epoch  # epochs completed
        self.step = 0  # minibatches completed in the current epoch
        self.hidden: Any = None  # carried state (sequential partitioning); (H, C) for the LSTM
        self.epoch_rng_state: dict[str, Any] | None = None
        self.last_finite_norm = float("nan")
        self._totals = _Totals()

    def run_epoch(
        self,
        on_step: Callable[[int], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> EpochResult:
        """One pass over the corpus (the rest of it, after a mid-epoch restore)."""
        cfg, ops = self.config, self.ops
        if self.step == 0:
            self.epoch_rng_state = dict(copy.deepcopy(self.rng.bit_generator.state))
            self._totals = _Totals()
            self.hidden = None
        else:  # continue an epoch: replay its draws, skip the minibatches already done
            assert self.epoch_rng_state is not None
            self.rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        totals = self._totals
        start = time.perf_counter() - totals.seconds
        batches = data.data_iter(
            self.corpus_ids, cfg.batch_size, cfg.num_steps, self.rng, cfg.sampling, cfg.num_train
        )
        epoch_inputs: list[np.ndarray] = []  # --no-detach: the epoch so far, time-major
        for i, (X, Y) in enumerate(batches):
            if not cfg.detach:
                epoch_inputs.append(X.T)
            if i < self.step:
                continue
            if self.hidden is None or self._fresh_state_every_minibatch:
                self.hidden = initial_state(ops, self.params, X.shape[0], self.cell)
            # time-major inputs and labels: (num_steps, batch_size); the loss sees the
            # labelled last steps (all of them, or the last one)
            X_t = X.T if cfg.detach else np.concatenate(epoch_inputs)
            Y_t = Y.T if cfg.loss == "all-steps" else Y.T[-1:]
            inputs, labels = ops.asarray(X_t), ops.asarray(Y_t)
            params, hidden, loss, norm = self.step_fn(
                self.params, inputs, labels, self.hidden, cfg.lr, cfg.clip
            )
            loss_f = float(ops.to_numpy(loss))
            norm_f = float(ops.to_numpy(norm))
            if not (math.isfinite(loss_f) and math.isfinite(norm_f)):
                raise TrainingDiverged(
                    f"training diverged at epoch {self.epoch + 1}, step {i + 1}: "
                    f"loss {loss_f}, gradient norm {norm_f} "
                    f"(last finite gradient norm {self.last_finite_norm:.6g})"
                )
            self.params, self.hidden = params, hidden
            self.last_finite_norm = norm_f
            totals.add(loss_f, Y_t.size, norm_f)
            self.step = i + 1
            totals.seconds = time.perf_counter() - start
            if on_step is not None:
                on_step(i)
            if stop_requested is not None and stop_requested():
                raise TrainingInterrupted
        totals.seconds = time.perf_counter() - start
        if totals.tokens == 0:
            raise UserError(
                f"the corpus ({len(self.corpus_ids)} tokens) is too short for one minibatch of "
                f"batch size {cfg.batch_size} × {cfg.num_steps} steps"
            )
        self.epoch += 1
        self.step = 0
        self.hidden = None
        return EpochResult(
            epoch=self.epoch,
            perplexity=math.exp(totals.loss_sum / totals.tokens),
            book_perplexity=totals.exp_sum / len(totals.norms),
            tokens_per_sec=totals.tokens / totals.seconds if totals.seconds > 0 else math.inf,
            tokens=totals.tokens,
            max_grad_norm=totals.max_norm,
            seconds=totals.seconds,
            grad_norms=list(totals.norms),
        )

    @property
    def _fresh_state_every_minibatch(self) -> bool:
        cfg = self.config
        return cfg.sampling != "sequential" or cfg.reset_state or not cfg.detach

    # -- exact continuation ---------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors, position metadata): parameters, the carried state (``state``, and the
        LSTM's memory ``state_c``), and where we are."""
        tensors = to_numpy(self.ops, self.params)
        if self.step > 0 and self.hidden is not None:
            parts = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
            for name, part in zip(STATE_NAMES, parts, strict=False):
                tensors[name] = self.ops.to_numpy(part)
        rng_state = self.epoch_rng_state if self.step > 0 else self.rng.bit_generator.state
        position = {
            "epoch": self.epoch,
            "step": self.step,
            "rng_state": copy.deepcopy(rng_state),
            "totals": asdict(self._totals) if self.step > 0 else None,
            "last_finite_norm": self.last_finite_norm,
        }
        return tensors, position

    def restore(self, tensors: dict[str, np.ndarray], position: dict[str, Any]) -> None:
        """Continue from ``snapshot``'s output (parameters already in ``self.params``)."""
        self.epoch = int(position["epoch"])
        self.step = int(position["step"])
        self.rng.bit_generator.state = copy.deepcopy(position["rng_state"])
        self.last_finite_norm = float(position.get("last_finite_norm", math.nan))
        if self.step > 0:
            self.epoch_rng_state = copy.deepcopy(position["rng_state"])
            self._totals = _Totals(**position["totals"])
            self.hidden = None
            if "state" in tensors:
                H = self.ops.asarray(tensors["state"])
                C = tensors.get(STATE_NAMES[1])
                self.hidden = H if C is None else (H, self.ops.asarray(C))


@dataclass
class _Totals:
    """Running sums of the current epoch."""

    loss_sum: float = 0.0
    tokens: int = 0
    max_norm: float = 0.0
    seconds: float = 0.0
    norms: list[float] = field(default_factory=list)
    exp_sum: float = 0.0  # Σ exp(a minibatch's mean loss), for the book's figure

    def add(self, loss_mean: float, tokens: int, norm: float) -> None:
        self.loss_sum += loss_mean * tokens
        self.exp_sum += math.exp(loss_mean) if loss_mean < 700 else math.inf  # no overflow
        self.tokens += tokens
        self.max_norm = max(self.max_norm, norm)
        self.norms.append(norm)

"""The training loop of d2l's ``train_ch8``, backend-neutral.

Sequential partitioning carries the hidden state from one minibatch to the next (detached,
so gradients stop at the minibatch boundary); random sampling starts every minibatch from
zeros. Loss and gradient norm are checked every step; a non-finite value stops training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import data
from .errors import UserError
from .model import Params, begin_state
from .ops import Ops, Tensor

StepFn = Callable[
    [Params, Tensor, Tensor, Tensor, float, float], tuple[Params, Tensor, Tensor, Tensor]
]


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


class TrainingDiverged(UserError):
    """Loss or gradient norm became NaN or infinite."""


class Trainer:
    """Runs epochs of SGD on one backend. ``params`` are backend arrays."""

    def __init__(
        self,
        ops: Ops,
        step: StepFn,
        params: Params,
        corpus_ids: np.ndarray,
        config: TrainConfig,
        rng: np.random.Generator,
        epoch: int = 0,
    ) -> None:
        self.ops = ops
        self.step = step
        self.params = params
        self.corpus_ids = corpus_ids
        self.config = config
        self.rng = rng
        self.epoch = epoch  # epochs completed
        self.last_finite_norm = float("nan")

    def run_epoch(self, on_step: Callable[[int], None] | None = None) -> EpochResult:
        """One pass over the corpus; returns perplexity and tokens/s of the epoch."""
        cfg, ops = self.config, self.ops
        state: Tensor | None = None
        total_loss, total_tokens, max_norm = 0.0, 0, 0.0
        norms: list[float] = []
        start = time.perf_counter()
        batches = data.data_iter(
            self.corpus_ids, cfg.batch_size, cfg.num_steps, self.rng, cfg.sampling
        )
        for i, (X, Y) in enumerate(batches):
            if state is None or cfg.sampling == "random":
                state = begin_state(ops, X.shape[0], cfg.num_hiddens)
            # time-major inputs and labels: (num_steps, batch_size)
            inputs, labels = ops.asarray(X.T), ops.asarray(Y.T)
            self.params, state, loss, norm = self.step(
                self.params, inputs, labels, state, cfg.lr, cfg.clip
            )
            loss_f = float(ops.to_numpy(loss))
            norm_f = float(ops.to_numpy(norm))
            if not (math.isfinite(loss_f) and math.isfinite(norm_f)):
                raise TrainingDiverged(
                    f"training diverged at epoch {self.epoch + 1}, step {i + 1}: "
                    f"loss {loss_f}, gradient norm {norm_f} "
                    f"(last finite gradient norm {self.last_finite_norm:.6g})"
                )
            self.last_finite_norm = norm_f
            norms.append(norm_f)
            max_norm = max(max_norm, norm_f)
            total_loss += loss_f * Y.size
            total_tokens += Y.size
            if on_step is not None:
                on_step(i)
        seconds = time.perf_counter() - start
        if total_tokens == 0:
            raise UserError(
                f"the corpus ({len(self.corpus_ids)} tokens) is too short for one minibatch of "
                f"batch size {cfg.batch_size} × {cfg.num_steps} steps"
            )
        self.epoch += 1
        return EpochResult(
            epoch=self.epoch,
            perplexity=math.exp(total_loss / total_tokens),
            tokens_per_sec=total_tokens / seconds if seconds > 0 else float("inf"),
            tokens=total_tokens,
            max_grad_norm=max_norm,
            seconds=seconds,
            grad_norms=norms,
        )

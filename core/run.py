"""One training run, specified once and built once.

``RunSpec`` is everything a run is asked for except its length and where it runs: the model
(cell, size, embedding), the trainer's hyperparameters, the data (token kind, how much of the
text, the held-out part), the dtype and the seed. A *recipe* is a named ``RunSpec``: today's
defaults are d2l 0.17's chapter 8.5. A checkpoint keeps the spec whole under ``run``.

``build`` turns a spec, a text and a backend's ops and step into the run: the initial
parameters drawn from the spec's seed (one ``init_params`` for every cell), or a checkpoint's
restored, and the trainer that continues from them. The model is decided here, once: the step
a caller builds for the run is told it (``make_train_step(..., cell=spec.model_cell)``), and
so is the trainer, so nothing reads the model from the parameters' names while it trains.
``rosetta-rnn train``, the clipping experiment and the reference cells that check what they
build (``conformance/run_checks.py``) put their runs together here, so a mistake in how a run
is assembled fails the cell of its setting.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import cells, data, model
from .contract import StepFn
from .errors import CheckpointError, UserError
from .ops import Ops
from .training import TrainConfig, Trainer

CELL_KINDS = ("rnn", "gru", "lstm")
GRU_FORMS = ("reset-before", "reset-after")
GATED_NUM_HIDDENS = 256  # d2l 9.1 and 9.2 train their GRU and LSTM with 256 hidden units
LEARNED_EMBED_DIM = 32  # a learned embedding asked for without its size
EPOCHS = 500  # the chapter's


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run is asked for except its length. The defaults are d2l 0.17's
    chapter 8.5 (``RECIPES["d2l-0.17"]``)."""

    batch_size: int = 32
    num_steps: int = 35
    num_hiddens: int = 512
    lr: float = 1.0
    clip: float = 1.0  # math.inf: no clipping
    sampling: str = "sequential"
    activation: str = "tanh"
    embed_dim: int | None = None  # None: one-hot inputs; N: a learned embedding
    loss: str = "all-steps"
    detach: bool = True
    reset_state: bool = False
    token: str = "char"
    max_tokens: int = 10000
    train_fraction: float | None = None
    dtype: str = "float32"
    seed: int = 0
    cell: str = "rnn"  # rnn (the chapter), gru (d2l 9.1) or lstm (d2l 9.2)
    gru: str | None = None  # the GRU's formulation: reset-before (d2l) or reset-after
    forget_bias: float = 0.0  # the LSTM's initial b_f: 0 (d2l) or 1 (Keras' unit_forget_bias)

    @property
    def model_cell(self) -> str:
        """The cell as core names it: ``rnn``, ``gru/reset-before`` ..., ``lstm``."""
        return f"gru/{self.gru or GRU_FORMS[0]}" if self.cell == "gru" else self.cell

    def train_config(self, epochs: int) -> TrainConfig:
        trainer_fields = {f.name for f in fields(TrainConfig)} - {"epochs"}
        return TrainConfig(epochs=epochs, **{k: getattr(self, k) for k in trainer_fields})

    def to_meta(self) -> dict[str, Any]:
        """JSON-safe: no clipping's infinite θ is saved as None."""
        d = asdict(self)
        d["clip"] = None if math.isinf(self.clip) else self.clip
        return d

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str) -> RunSpec:
        """The run a checkpoint was trained with; checkpoints written before ``run`` existed
        keep the trainer's part under ``config`` and the rest at the top level."""
        try:
            if "run" in meta:
                saved = dict(meta["run"])
            else:
                names = {f.name for f in fields(cls)}
                saved = {k: v for k, v in meta["config"].items() if k in names}
                saved.setdefault("reset_state", False)  # older checkpoints lack it
                for k in ("token", "max_tokens", "dtype", "seed", "train_fraction"):
                    saved[k] = meta[k]
            saved["clip"] = math.inf if saved["clip"] is None else saved["clip"]
            return cls(**saved)
        except (KeyError, TypeError):
            raise CheckpointError(f"{source}: cannot resume, it lacks training metadata") from None


RECIPES: dict[str, RunSpec] = {"d2l-0.17": RunSpec()}
"""Named presets of the specification: d2l 0.17's chapter 8.5 (partitioned iterators, 32 × 35
minibatches, 512 hidden units, 500 epochs)."""


SWITCHES = {("clip", math.inf): "--no-clip", ("detach", False): "--no-detach"}
"""Settings that come from a switch rather than from a flag with a value."""


def _as_given(key: str, value: Any) -> str:
    """How ``key = value`` was written on the command line: ``--lr 0.5``, ``--no-clip``."""
    if (key, value) in SWITCHES:
        return SWITCHES[key, value]
    if value is True:
        return f"--{key.replace('_', '-')}"
    return f"--{key.replace('_', '-')} {value}"


def _check_cell(cell: str, given: dict[str, Any]) -> None:
    """The settings that belong to one cell, refused with another (one line each)."""
    if "gru" in given and cell != "gru":
        raise UserError(f"--gru {given['gru']} is the GRU's formulation; it needs --cell gru")
    if "forget_bias" in given and cell != "lstm":
        raise UserError("--forget-bias is the LSTM's forget-gate bias; it needs --cell lstm")
    if cell != "rnn" and given.get("activation", "tanh") != "tanh":
        raise UserError(f"--activation is the RNN's; the {cell} cell uses σ and tanh")


def resolve(
    given: dict[str, Any],
    embedding: str | None = None,
    saved: RunSpec | None = None,
    source: str = "",
    base: RunSpec | None = None,
) -> RunSpec:
    """The spec of a run from the settings a user gave (``given``: only those given) on top of
    ``base`` (a recipe; the chapter's by default), or, for a run that continues the checkpoint
    ``source``, its ``saved`` spec, which a setting may repeat but not change. ``embedding``:
    ``onehot`` or ``learned`` where asked."""
    if saved is None:
        given = dict(given)
        _check_cell(given.get("cell", "rnn"), given)
        if embedding == "learned":
            given.setdefault("embed_dim", LEARNED_EMBED_DIM)
        if given.get("cell") == "gru":
            given.setdefault("gru", GRU_FORMS[0])
        if given.get("cell", "rnn") != "rnn":
            given.setdefault("num_hiddens", GATED_NUM_HIDDENS)
        return replace(base or RECIPES["d2l-0.17"], **given)
    if given.get("cell", saved.cell) != saved.cell:
        raise UserError(
            f"--resume {source}: --cell {given['cell']} differs from the checkpoint's cell "
            f"{saved.cell}; drop it to continue, or start a new run"
        )
    _check_cell(saved.cell, given)
    saved_embedding = "onehot" if saved.embed_dim is None else "learned"
    if embedding is not None and embedding != saved_embedding:
        raise UserError(
            f"--resume {source}: --embedding {embedding} differs from the checkpoint's "
            f"embedding {saved_embedding}; drop it to continue, or start a new run"
        )
    for key, value in given.items():
        if value != getattr(saved, key):
            raise UserError(
                f"--resume {source}: {_as_given(key, value)} differs from the checkpoint's "
                f"{key} {getattr(saved, key)}; drop it to continue, or start a new run"
            )
    return saved


def init_params(spec: RunSpec, vocab_size: int, rng: np.random.Generator) -> model.Params:
    """The model's initial parameters: d2l's draws for the spec's cell (weights N(0, 0.01²) in
    the book's order, zero biases, the LSTM's forget bias as asked, a learned embedding last),
    in float64 from ``rng`` and then cast to the spec's dtype."""
    return cells.init_params(
        spec.model_cell,
        vocab_size,
        spec.num_hiddens,
        rng,
        spec.dtype,
        forget_bias=spec.forget_bias,
        embed_dim=spec.embed_dim,
    )


@dataclass
class Text:
    """The text a run trains on: where it came from, its ids, and the held-out end."""

    source: str
    corpus: data.Corpus
    fingerprint: str
    train_ids: np.ndarray
    heldout_ids: np.ndarray | None


def fingerprint(corpus: data.Corpus) -> str:
    """The sha1 of the token ids: a resumed run must continue on the same ids."""
    return hashlib.sha1(corpus.ids.astype("<i8").tobytes()).hexdigest()


def load_text(spec: RunSpec, source: str | Path) -> Text:
    """The spec's text from ``source``: its first ``max_tokens`` tokens (all when <= 0), the
    last ``1 - train_fraction`` of them held out, and checked long enough for one minibatch."""
    corpus = data.load_corpus(source, spec.token, spec.max_tokens)
    train_ids, heldout_ids = corpus.ids, None
    if spec.train_fraction:  # hold out the end of the corpus
        cut = int(len(corpus.ids) * spec.train_fraction)
        train_ids, heldout_ids = corpus.ids[:cut], corpus.ids[cut:]
        if len(heldout_ids) < 2:
            raise UserError("--train-fraction leaves fewer than 2 tokens to hold out")
    _check_length(len(train_ids), spec, str(source))
    return Text(str(source), corpus, fingerprint(corpus), train_ids, heldout_ids)


def _check_length(n: int, spec: RunSpec, source: str) -> None:
    if n == 0:
        raise UserError(f"corpus {source} has no letters after preprocessing")
    if n < spec.num_steps + 1:
        raise UserError(
            f"corpus {source} has {n} tokens, fewer than --num-steps + 1 = {spec.num_steps + 1}"
        )
    if data.num_batches(n, spec.batch_size, spec.num_steps, spec.sampling) == 0:
        raise UserError(
            f"corpus {source} ({n} tokens) is too short for --batch-size {spec.batch_size} × "
            f"--num-steps {spec.num_steps}; lower them or raise --max-tokens"
        )


@dataclass
class Run:
    """A built run: its spec, its trainer (parameters, position, generator) and the history of
    the epochs a resumed checkpoint had done."""

    spec: RunSpec
    epochs: int
    text: Text
    trainer: Trainer
    history: list[dict[str, Any]]

    def checkpoint(
        self, backend: str, device: str, grad: str, replicas: int = 1
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint of the run keeps now: the tensors (parameters, the carried state)
        and the metadata (the spec under ``run``, where it ran, the text's vocabulary and
        fingerprint, the trainer's position and the history), which ``build`` continues from."""
        tensors, position = self.trainer.snapshot()
        spec, history = self.spec, self.history
        meta = {
            "backend": backend,
            "device": device,
            "dtype": spec.dtype,
            "epoch": self.trainer.epoch,
            "target_epochs": self.epochs,
            "seed": spec.seed,
            "token": spec.token,
            "max_tokens": spec.max_tokens,
            "train_fraction": spec.train_fraction,
            "grad": grad,
            "replicas": replicas,
            "config": self.trainer.config.to_dict(),
            "run": spec.to_meta(),
            "vocab": self.text.corpus.vocab.idx_to_token,
            "corpus_sha1": self.text.fingerprint,
            "corpus_path": str(Path(self.text.source).resolve()),
            "position": position,
            "history": history,
            "perplexity": history[-1]["perplexity"] if history else None,
        }
        return tensors, meta


def build(
    spec: RunSpec,
    ops: Ops,
    step: StepFn,
    text: Text,
    epochs: int,
    resumed: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
    source: str = "",
) -> Run:
    """The run of ``spec`` on ``text`` with a backend's ``ops`` and ``step``: from fresh
    parameters (the spec's seed draws them, then the epochs' offsets and shuffles from the same
    generator), or continued from a checkpoint (``resumed``, read from ``source``), which must
    have been trained on the same text and have fewer than ``epochs`` epochs done."""
    cfg = spec.train_config(epochs)
    rng = np.random.default_rng(spec.seed)
    if resumed is None:
        params = init_params(spec, len(text.corpus.vocab), rng)
        trainer = Trainer(
            ops, step, model.to_backend(ops, params), text.train_ids, cfg, rng, cell=spec.model_cell
        )
        return Run(spec, epochs, text, trainer, [])
    tensors, meta = resumed
    same_text = meta.get("corpus_sha1") == text.fingerprint
    if not same_text or meta["vocab"] != text.corpus.vocab.idx_to_token:
        raise UserError(
            f"--resume {source}: the corpus differs from the one it was trained on; "
            "pass the same --corpus"
        )
    trainer = Trainer(
        ops, step, model.to_backend(ops, tensors), text.train_ids, cfg, rng, cell=spec.model_cell
    )
    try:
        trainer.restore(tensors, meta["position"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: its training position is damaged") from None
    if trainer.epoch >= epochs:
        raise UserError(
            f"--resume {source}: already trained {trainer.epoch} epochs; "
            f"ask for more with --epochs N (the total, > {trainer.epoch})"
        )
    return Run(spec, epochs, text, trainer, list(meta.get("history", [])))

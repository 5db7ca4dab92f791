"""One training run, specified once and built once.

``RunSpec`` is everything a run is asked for except its length and where it runs: the model
(cell, size, embedding), the trainer's hyperparameters, the data (token kind, how much of the
text, the held-out part), the dtype and the seed. A *recipe* is a named ``RunSpec``: today's
defaults are d2l 0.17's chapter 8.5. A checkpoint keeps the spec whole under ``run``.

``engine`` makes what computes a spec's run on a backend: its ops at the spec's dtype on a
device, and the training step (one device's, or a data-parallel engine's) told the spec's
model and activation. ``build`` turns a spec, a text and an engine into the run: the initial
parameters drawn from the spec's seed (one ``init_params`` for every cell), or a checkpoint's
restored, and the trainer that continues from them. The model is decided here, once: the step
is told it and so is the trainer, so nothing reads the model from the parameters' names while
it trains. ``rosetta-rnn train``, the clipping experiment, the benchmark workloads, the
conformance subjects and the reference cells that check what they build
(``conformance/run_checks.py``) put their runs together here, so a mistake in how a run is
assembled fails the cell of its setting.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import cells, data, model, sampling
from .contract import Backend, ReplicaBackend, StepFn
from .errors import BackendUnavailable, CheckpointError, UserError
from .evaluation import perplexity_on, window_perplexity
from .ops import Ops
from .replicas import ReplicatedStep
from .training import EpochResult, TrainConfig, Trainer

CELL_KINDS = ("rnn", "gru", "lstm")
GRU_FORMS = ("reset-before", "reset-after")
LEARNED_EMBED_DIM = 32  # a learned embedding asked for without its size


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run is asked for except its length. The defaults are d2l 0.17's
    chapter 8.5 (``RECIPES["d2l-0.17"]``); ``RECIPES["d2l-1.0"]`` is the current edition's
    chapter 9.5."""

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
    preprocess: str = "lines"  # the text read line by line (0.17) or whole (1.0)
    vocab_order: str = "frequency"  # the vocabulary by frequency (0.17) or sorted (1.0)
    num_train: int = 10000  # sampling "windows": the training windows, starting 0 .. N-1
    num_val: int = 5000  # ... and the validation windows after them (0: no validation)
    prefixes: tuple[str, ...] = ("time traveller", "traveller")  # what the samples start from
    num_preds: int = 50  # how many tokens a sample predicts
    recipe: str = "d2l-0.17"  # the preset the spec started from

    @property
    def model_cell(self) -> str:
        """The cell as core names it: ``rnn``, ``gru/reset-before`` ..., ``lstm``."""
        return f"gru/{self.gru or GRU_FORMS[0]}" if self.cell == "gru" else self.cell

    @property
    def partial_batch(self) -> int:
        """The size of an epoch's last, smaller minibatch: d2l 1.0's windows loader keeps the
        rest of ``num_train``; 0 where every minibatch is whole."""
        return self.num_train % self.batch_size if self.sampling == "windows" else 0

    def train_config(self, epochs: int) -> TrainConfig:
        trainer_fields = {f.name for f in fields(TrainConfig)} - {"epochs"}
        return TrainConfig(epochs=epochs, **{k: getattr(self, k) for k in trainer_fields})

    def to_meta(self) -> dict[str, Any]:
        """As JSON keeps it: no clipping's infinite θ is None, the prefixes a list."""
        d = asdict(self)
        d["clip"] = None if math.isinf(self.clip) else self.clip
        d["prefixes"] = list(self.prefixes)
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
            if "prefixes" in saved:  # JSON keeps a tuple as a list
                saved["prefixes"] = tuple(saved["prefixes"])
            return cls(**saved)
        except (KeyError, TypeError):
            raise CheckpointError(f"{source}: cannot resume, it lacks training metadata") from None


def cell_settings(model_cell: str) -> dict[str, Any]:
    """The spec's ``cell`` and ``gru`` of a model as core names its cell (``rnn``,
    ``gru/reset-after`` ...): the inverse of ``RunSpec.model_cell``."""
    cell, _, gru = model_cell.partition("/")
    return {"cell": cell, "gru": gru or None}


def spec_of(config: TrainConfig, model_cell: str = cells.RNN, **settings: Any) -> RunSpec:
    """The spec of a trainer's ``config`` and a model as core names its cell; ``settings``:
    the rest (dtype, seed ...)."""
    trainer = {k: v for k, v in asdict(config).items() if k != "epochs"}
    return RunSpec(**trainer, **cell_settings(model_cell), **settings)


RECIPES: dict[str, RunSpec] = {
    "d2l-0.17": RunSpec(),
    "d2l-1.0": RunSpec(
        batch_size=1024,
        num_steps=32,
        num_hiddens=32,
        lr=1.0,
        clip=1.0,
        sampling="windows",
        max_tokens=0,
        preprocess="whole",
        vocab_order="sorted",
        num_train=10000,
        num_val=5000,
        prefixes=("it has",),
        num_preds=20,
        recipe="d2l-1.0",
    ),
}
"""Named presets of the specification. ``d2l-0.17``: the 0.17 edition's chapter 8.5 (the text
line by line, the first 10,000 characters, partitioned iterators of 32 × 35 minibatches, 512
hidden units, 500 epochs). ``d2l-1.0``: the current edition's chapter 9.5 (the whole text,
sorted vocabulary, every window of 33 characters, the first 10,000 shuffled into minibatches
of 1,024 and the next 5,000 for validation, 32 hidden units, 100 epochs)."""

RECIPE_GATED: dict[str, dict[str, Any]] = {
    "d2l-0.17": {"num_hiddens": 256},  # d2l 0.17's 9.1 and 9.2
    "d2l-1.0": {"lr": 4.0},  # d2l 1.0's 10.1 and 10.2: 32 hidden units, lr 4
}
"""What the GRU and the LSTM change in a recipe (a flag given still wins)."""

RECIPE_EPOCHS: dict[str, tuple[int, int]] = {"d2l-0.17": (500, 500), "d2l-1.0": (100, 50)}
"""Each recipe's epochs: the RNN's, then the gated cells'."""


def epochs_of(spec: RunSpec) -> int:
    """How long the spec's recipe trains its cell."""
    rnn, gated = RECIPE_EPOCHS[spec.recipe]
    return rnn if spec.cell == "rnn" else gated


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
        recipe = given.get("recipe", base.recipe if base else "d2l-0.17")
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        _check_cell(given.get("cell", "rnn"), given)
        if embedding == "learned":
            given.setdefault("embed_dim", LEARNED_EMBED_DIM)
        if given.get("cell") == "gru":
            given.setdefault("gru", GRU_FORMS[0])
        if given.get("cell", "rnn") != "rnn":
            for key, value in RECIPE_GATED[recipe].items():
                given.setdefault(key, value)
        spec = replace(base or RECIPES[recipe], **given)
        _check_data(spec)
        return spec
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


def _check_data(spec: RunSpec) -> None:
    """The data settings that contradict each other, refused before any text is read."""
    if spec.sampling == "windows" and spec.train_fraction:
        raise UserError(
            "--train-fraction holds out the end of the text; with --sampling windows the "
            "validation windows are --num-val, after the --num-train training ones"
        )
    if spec.num_train <= 0 or spec.num_val < 0:
        raise UserError("--num-train must be positive and --num-val not negative")


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
    val_starts: np.ndarray | None = None  # sampling "windows": where the validation windows start


def fingerprint(corpus: data.Corpus) -> str:
    """The sha1 of the token ids: a resumed run must continue on the same ids."""
    return hashlib.sha1(corpus.ids.astype("<i8").tobytes()).hexdigest()


def load_text(spec: RunSpec, source: str | Path) -> Text:
    """The spec's text from ``source``: its first ``max_tokens`` tokens (all when <= 0), the
    last ``1 - train_fraction`` of them held out, and checked long enough for one minibatch."""
    corpus = data.load_corpus(
        source, spec.token, spec.max_tokens, spec.preprocess, spec.vocab_order
    )
    train_ids, heldout_ids, val_starts = corpus.ids, None, None
    if spec.train_fraction:  # hold out the end of the corpus
        cut = int(len(corpus.ids) * spec.train_fraction)
        train_ids, heldout_ids = corpus.ids[:cut], corpus.ids[cut:]
        if len(heldout_ids) < 2:
            raise UserError("--train-fraction leaves fewer than 2 tokens to hold out")
    if spec.sampling == "windows":
        _check_windows(len(corpus.ids), spec, str(source))
        if spec.num_val:
            val_starts = np.arange(spec.num_train, spec.num_train + spec.num_val)
    else:
        _check_length(len(train_ids), spec, str(source))
    return Text(str(source), corpus, fingerprint(corpus), train_ids, heldout_ids, val_starts)


def _check_windows(n: int, spec: RunSpec, source: str) -> None:
    """A text long enough for the training and the validation windows."""
    have, need = data.num_windows(n, spec.num_steps), spec.num_train + spec.num_val
    if have < need:
        raise UserError(
            f"corpus {source} ({n} tokens) has {have} windows of --num-steps + 1 = "
            f"{spec.num_steps + 1} tokens, fewer than --num-train {spec.num_train} + --num-val "
            f"{spec.num_val}; lower them, or raise --max-tokens (0: the whole text)"
        )


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
class Engine:
    """What computes a run: the backend (``name`` as the user gave it), its ops at the spec's
    dtype on a device, and the training step in the ``grad`` engine compiled as ``mode``;
    ``replicated`` is the step when it is a data-parallel engine's."""

    name: str
    ops: Ops
    step: StepFn
    grad: str
    mode: str
    replicated: ReplicatedStep | None = None

    @property
    def replicas(self) -> int:
        return self.replicated.replicas if self.replicated else 1

    def close(self) -> None:
        """Release a data-parallel engine's processes; nothing to do for one device."""
        if self.replicated is not None:
            self.replicated.close()


def train_step(
    spec: RunSpec,
    backend: Backend[Any],
    ops: Ops,
    grad: str | None = None,
    mode: str | None = None,
    replicas: int = 1,
) -> StepFn:
    """The backend's training step for the spec's model (its cell and activation): one
    device's ``make_train_step``, or with ``replicas`` > 1 the data-parallel engine's
    ``make_replicated_step`` (``backend`` then a ``ReplicaBackend`` told the count before it
    made ``ops``)."""
    if replicas > 1:
        engine = cast(ReplicaBackend[Any], backend)
        return engine.make_replicated_step(
            ops, replicas, grad, mode, spec.activation, spec.model_cell
        )
    return backend.make_train_step(
        ops, grad=grad, mode=mode, activation=spec.activation, cell=spec.model_cell
    )


def engine(
    spec: RunSpec,
    backend: Backend[Any],
    device: str = "cpu",
    grad: str | None = None,
    mode: str | None = None,
    replicas: int = 1,
    name: str | None = None,
) -> Engine:
    """The spec's run on ``backend``: its ops at the spec's dtype on ``device``, refused where
    the device has no float64, and ``train_step``'s step; ``grad`` and ``mode`` default to the
    backend's first. ``name``: the backend as the user asked for it (for messages and a
    checkpoint), its ``NAME`` by default."""
    name = name or backend.NAME
    ops = backend.make_ops(spec.dtype, device)
    if spec.dtype == "float64" and not backend.supports_float64(ops.device):
        raise BackendUnavailable(f"{name} on {ops.device} has no float64; use float32")
    grad = grad or backend.GRAD_MODES[0]  # make_train_step refuses one it lacks
    mode = mode or backend.compile_modes(ops.device)[0]
    step = train_step(spec, backend, ops, grad, mode, replicas)
    replicated = cast(ReplicatedStep, step) if replicas > 1 else None
    return Engine(name, ops, step, grad, mode, replicated)


@dataclass
class Run:
    """A built run: its spec, the engine that computes it, its trainer (parameters, position,
    generator) and the history of the epochs a resumed checkpoint had done."""

    spec: RunSpec
    epochs: int
    text: Text
    engine: Engine
    trainer: Trainer
    history: list[dict[str, Any]]

    @property
    def compiled(self) -> bool:
        """Whether evaluation and sampling go through the backend's compiled passes
        (``ops.forward_loss``, ``ops.decode``): unless the run's step is eager."""
        return self.engine.mode != "eager"

    def params(self) -> model.Params:
        """The parameters where the engine's ops compute (a JAX mesh holds the replicas' on
        every device; evaluation and sampling want them on one)."""
        ops, params = self.engine.ops, self.trainer.params
        if self.engine.replicas == 1:
            return params
        return model.to_backend(ops, model.to_numpy(ops, params))

    def next_epoch(
        self, stop_requested: Callable[[], bool] | None = None
    ) -> tuple[EpochResult, dict[str, Any]]:
        """Train one epoch and add what the history keeps of it: perplexity, speed, the
        gradient norms and, where the spec holds some text out, the held-out perplexity."""
        last = self.trainer.run_epoch(stop_requested=stop_requested)
        entry: dict[str, Any] = {
            "epoch": last.epoch,
            "perplexity": last.perplexity,
            "tokens_per_sec": last.tokens_per_sec,
            "max_grad_norm": last.max_grad_norm,
            "grad_norms": last.grad_norms,
        }
        spec, text = self.spec, self.text
        if spec.sampling == "windows":
            entry["book_perplexity"] = last.book_perplexity
        if text.heldout_ids is not None:
            entry["heldout_perplexity"], _ = perplexity_on(
                self.engine.ops,
                self.params(),
                text.heldout_ids,
                spec.num_steps,
                spec.activation,
                spec.model_cell,
                compiled=self.compiled,
            )
        if text.val_starts is not None:
            entry["val_perplexity"], entry["val_book_perplexity"] = window_perplexity(
                self.engine.ops,
                self.params(),
                text.corpus.ids,
                text.val_starts,
                spec.batch_size,
                spec.num_steps,
                spec.activation,
                spec.model_cell,
                spec.loss == "last-step",
                compiled=self.compiled,
            )
        self.history.append(entry)
        return last, entry

    def sample(
        self, prefix: str, num_preds: int | None = None, params: model.Params | None = None
    ) -> str:
        """``prefix`` and the ``num_preds`` (the spec's) tokens the model greedily predicts
        after it."""
        spec, vocab = self.spec, self.text.corpus.vocab
        ids = vocab.lookup(data.split_text(prefix, spec.token))
        out = sampling.predict(
            self.engine.ops,
            self.params() if params is None else params,
            ids,
            spec.num_preds if num_preds is None else num_preds,
            activation=spec.activation,
            cell=spec.model_cell,
            compiled=self.compiled,
        )
        return data.join_tokens(vocab.to_tokens(out), spec.token)

    def largest_grad_norm(self) -> tuple[float, int, int] | None:
        """(norm, epoch, step) of the largest gradient norm the history saw (before clipping)."""
        best: tuple[float, int, int] | None = None
        for h in self.history:
            for i, g in enumerate(h.get("grad_norms", [])):
                if best is None or g > best[0]:
                    best = (g, h["epoch"], i + 1)
        return best

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint of the run keeps now: the tensors (parameters, the carried state)
        and the metadata (the spec under ``run``, where it ran, the text's vocabulary and
        fingerprint, the trainer's position and the history), which ``build`` continues from."""
        tensors, position = self.trainer.snapshot()
        spec, history, engine = self.spec, self.history, self.engine
        meta = {
            "backend": engine.name,
            "device": engine.ops.device,
            "dtype": spec.dtype,
            "epoch": self.trainer.epoch,
            "target_epochs": self.epochs,
            "seed": spec.seed,
            "token": spec.token,
            "max_tokens": spec.max_tokens,
            "train_fraction": spec.train_fraction,
            "grad": engine.grad,
            "replicas": engine.replicas,
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


def trainer(
    spec: RunSpec,
    ops: Ops,
    step: StepFn,
    params: model.Params,
    ids: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
) -> Trainer:
    """The training loop of ``spec`` over ``ids`` from ``params`` (NumPy arrays or the
    backend's), drawing its epochs' offsets and shuffles from ``rng``; told the spec's model."""
    cfg = spec.train_config(epochs)
    return Trainer(ops, step, model.to_backend(ops, params), ids, cfg, rng, cell=spec.model_cell)


def build(
    spec: RunSpec,
    engine: Engine,
    text: Text,
    epochs: int,
    resumed: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
    source: str = "",
) -> Run:
    """The run of ``spec`` on ``text`` computed by ``engine``: from fresh parameters (the spec's
    seed draws them, then the epochs' offsets and shuffles from the same generator), or
    continued from a checkpoint (``resumed``, read from ``source``), which must have been
    trained on the same text and have fewer than ``epochs`` epochs done."""
    ops, step = engine.ops, engine.step
    rng = np.random.default_rng(spec.seed)
    if resumed is None:
        params = init_params(spec, len(text.corpus.vocab), rng)
        fresh = trainer(spec, ops, step, params, text.train_ids, epochs, rng)
        return Run(spec, epochs, text, engine, fresh, [])
    tensors, meta = resumed
    same_text = meta.get("corpus_sha1") == text.fingerprint
    if not same_text or meta["vocab"] != text.corpus.vocab.idx_to_token:
        raise UserError(
            f"--resume {source}: the corpus differs from the one it was trained on; "
            "pass the same --corpus"
        )
    going = trainer(spec, ops, step, tensors, text.train_ids, epochs, rng)
    try:
        going.restore(tensors, meta["position"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: its training position is damaged") from None
    if going.epoch >= epochs:
        raise UserError(
            f"--resume {source}: already trained {going.epoch} epochs; "
            f"ask for more with --epochs N (the total, > {going.epoch})"
        )
    return Run(spec, epochs, text, engine, going, list(meta.get("history", [])))

"""``rosetta-rnn train``: the chapter's training run, with checkpoints that continue exactly.

A checkpoint holds the parameters, the carried hidden state and the trainer's position (epoch,
minibatch, generator state), so ``--resume`` continues as if never stopped. Ctrl-C finishes
the current step, saves, prints how to resume and exits 130. A NaN or inf stops training
without overwriting the last good checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import numpy as np

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.backends import rules
from rosetta_rnn.core import cells, checkpoint, data, model, sampling
from rosetta_rnn.core.contract import Backend, StepFn
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.errors import BackendUnavailable, CheckpointError, ReplicaLost, UserError
from rosetta_rnn.core.evaluation import perplexity_on
from rosetta_rnn.core.replicas import ReplicatedStep, check_replicas
from rosetta_rnn.core.training import (
    EpochResult,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
)
from rosetta_rnn.helpers import CORPUS_HELP, add_backend_args

SAMPLE_PREFIXES = ("time traveller", "traveller")
INTERRUPTED_PATH = "rosetta-rnn-interrupted.safetensors"


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was asked for except its length: the trainer's hyperparameters
    (``TrainConfig`` less ``epochs``) and the data, dtype and seed. The defaults are the
    chapter's. A checkpoint keeps it whole under ``run``; with ``--resume`` it comes back whole,
    and an explicit flag that disagrees with it is an error."""

    batch_size: int = 32
    num_steps: int = 35
    num_hiddens: int = 512
    lr: float = 1.0
    clip: float = 1.0  # math.inf: --no-clip
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
        """JSON-safe: --no-clip's infinite θ is saved as None."""
        d = asdict(self)
        d["clip"] = None if math.isinf(self.clip) else self.clip
        return d

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str) -> RunConfig:
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


EPOCHS = 500
LEARNED_EMBED_DIM = 32  # --embedding learned without --embed-dim
CELL_KINDS = ("rnn", "gru", "lstm")
GATED_NUM_HIDDENS = 256  # d2l 9.1 and 9.2 train their GRU and LSTM with 256 hidden units
GRU_FORMS = ("reset-before", "reset-after")


def _real(text: str) -> float:
    """A finite number (argparse type), as a one-line error otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _say(out: TextIO, *parts: Any) -> None:
    print(*parts, file=out, flush=True)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings given on the command line (None: not given)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(RunConfig)}
    if args.no_clip:
        given["clip"] = math.inf
    given["detach"] = False if args.no_detach else None
    given["reset_state"] = True if args.reset_state else None
    return given


def _embedding(args: argparse.Namespace) -> str | None:
    """--embedding as asked (an --embed-dim alone asks for a learned one); None: not given."""
    if args.embedding == "onehot" and args.embed_dim is not None:
        raise UserError("--embed-dim goes with --embedding learned")
    return args.embedding or ("learned" if args.embed_dim is not None else None)


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
    """The flags that belong to one cell, refused with another (one line each)."""
    if "gru" in given and cell != "gru":
        raise UserError(f"--gru {given['gru']} is the GRU's formulation; it needs --cell gru")
    if "forget_bias" in given and cell != "lstm":
        raise UserError("--forget-bias is the LSTM's forget-gate bias; it needs --cell lstm")
    if cell != "rnn" and given.get("activation", "tanh") != "tanh":
        raise UserError(f"--activation is the RNN's; the {cell} cell uses σ and tanh")


def _run_config(args: argparse.Namespace, meta: dict[str, Any] | None) -> RunConfig:
    given = {k: v for k, v in _given(args).items() if v is not None}
    embedding = _embedding(args)
    if meta is None:
        _check_cell(given.get("cell", "rnn"), given)
        if embedding == "learned":
            given.setdefault("embed_dim", LEARNED_EMBED_DIM)
        if given.get("cell") == "gru":
            given.setdefault("gru", GRU_FORMS[0])
        if given.get("cell", "rnn") != "rnn":
            given.setdefault("num_hiddens", GATED_NUM_HIDDENS)
        return RunConfig(**given)
    saved = RunConfig.from_meta(meta, args.resume)
    if given.get("cell", saved.cell) != saved.cell:
        raise UserError(
            f"--resume {args.resume}: --cell {given['cell']} differs from the checkpoint's cell "
            f"{saved.cell}; drop it to continue, or start a new run"
        )
    _check_cell(saved.cell, given)
    saved_embedding = "onehot" if saved.embed_dim is None else "learned"
    if embedding is not None and embedding != saved_embedding:
        raise UserError(
            f"--resume {args.resume}: --embedding {embedding} differs from the checkpoint's "
            f"embedding {saved_embedding}; drop it to continue, or start a new run"
        )
    for key, value in given.items():
        if value != getattr(saved, key):
            raise UserError(
                f"--resume {args.resume}: {_as_given(key, value)} differs from the checkpoint's "
                f"{key} {getattr(saved, key)}; drop it to continue, or start a new run"
            )
    return saved


def _validate_corpus(corpus: data.Corpus, cfg: TrainConfig, source: str) -> None:
    n = len(corpus.ids)
    if n == 0:
        raise UserError(f"corpus {source} has no letters after preprocessing")
    if n < cfg.num_steps + 1:
        raise UserError(
            f"corpus {source} has {n} tokens, fewer than --num-steps + 1 = {cfg.num_steps + 1}"
        )
    if data.num_batches(n, cfg.batch_size, cfg.num_steps, cfg.sampling) == 0:
        raise UserError(
            f"corpus {source} ({n} tokens) is too short for --batch-size {cfg.batch_size} × "
            f"--num-steps {cfg.num_steps}; lower them or raise --max-tokens"
        )


def _corpus_fingerprint(corpus: data.Corpus) -> str:
    return hashlib.sha1(corpus.ids.astype("<i8").tobytes()).hexdigest()


def _largest_grad_norm(history: list[dict[str, Any]]) -> tuple[float, int, int] | None:
    """(norm, epoch, step) of the largest gradient norm seen (before clipping)."""
    best: tuple[float, int, int] | None = None
    for h in history:
        for i, g in enumerate(h.get("grad_norms", [])):
            if best is None or g > best[0]:
                best = (g, h["epoch"], i + 1)
    return best


def _sample(ops: Any, params: Any, vocab: data.Vocab, token: str, prefix: str, act: str) -> str:
    ids = vocab.lookup(data.split_text(prefix, token))
    out = sampling.predict(ops, params, ids, 50, activation=act)
    return data.join_tokens(vocab.to_tokens(out), token)


class _StopFlag:
    """SIGINT sets the flag (the trainer stops after the current step); a second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def register(sub: Any) -> None:
    """Add ``train`` to ``sub`` (an ``argparse._SubParsersAction``)."""
    t = sub.add_parser(
        "train",
        help="train on The Time Machine and print samples",
        description="Train the chapter's character-level RNN (one-hot input, tanh, output "
        "layer, SGD with the gradient clipped to global norm θ) on The Time Machine, and "
        "print every 10 epochs the perplexity, the speed and a greedy sample. The defaults "
        "are d2l's: 500 epochs of 32 × 35-token minibatches, 512 hidden units, lr 1, θ = 1, "
        "about 3 minutes with NumPy on two cores. --cell gru or lstm trains d2l 9.1's GRU or "
        "9.2's LSTM instead (256 hidden units, as there), on every backend. --checkpoint "
        "keeps the model for generate, eval and --resume; Ctrl-C saves and says how to resume.",
    )
    add_backend_args(t, None)  # dtype default float32, or the checkpoint's with --resume
    # The run's settings default to None so that --resume can tell what was given explicitly;
    # RunConfig holds the chapter's values.
    t.add_argument(
        "--seed",
        metavar="N",
        type=argtypes.integer,
        help="seed of the one core generator (default 0)",
    )
    t.add_argument("--corpus", metavar="FILE", help=CORPUS_HELP)
    t.add_argument("--token", choices=data.TOKEN_KINDS, help="char or word (default: char)")
    t.add_argument(
        "--max-tokens",
        type=argtypes.integer,
        metavar="N",
        help="train on the first N tokens; <= 0 keeps the whole text (default: 10000)",
    )
    t.add_argument(
        "--batch-size",
        metavar="B",
        type=argtypes.positive_int,
        help="sequences per minibatch (default: 32)",
    )
    t.add_argument(
        "--num-steps",
        metavar="T",
        type=argtypes.positive_int,
        help="tokens per sequence (default: 35)",
    )
    t.add_argument(
        "--num-hiddens",
        metavar="H",
        type=argtypes.positive_int,
        help="hidden units (default: 512; 256 with --cell gru or lstm, as in d2l 9.1 and 9.2)",
    )
    t.add_argument("--lr", type=argtypes.positive_float, help="SGD learning rate (default: 1)")
    t.add_argument(
        "--epochs",
        metavar="N",
        type=argtypes.positive_int,
        help="total epochs, counting those a --resume'd checkpoint has done (default: 500)",
    )
    clip = t.add_mutually_exclusive_group()
    clip.add_argument(
        "--clip",
        type=argtypes.positive_float,
        metavar="THETA",
        help="clip the gradient to global norm θ: g·min(1, θ/‖g‖) (default: 1)",
    )
    clip.add_argument("--no-clip", action="store_true", help="no gradient clipping")
    t.add_argument(
        "--sampling",
        choices=data.SAMPLING_KINDS,
        help="minibatches of consecutive text carrying the state, or random offsets with a "
        "fresh state (default: sequential)",
    )
    t.add_argument(
        "--cell",
        choices=CELL_KINDS,
        help="the recurrent cell: the chapter's RNN, d2l 9.1's GRU or 9.2's LSTM (default: rnn)",
    )
    t.add_argument(
        "--gru",
        choices=GRU_FORMS,
        help="with --cell gru: the reset gate before the recurrent matmul (d2l, Keras "
        "reset_after=False) or after it (torch.nn.GRU, cuDNN) (default: reset-before)",
    )
    t.add_argument(
        "--forget-bias",
        metavar="F",
        type=_real,
        help="with --cell lstm: the forget gate's initial bias (default: 0, as d2l; Keras' "
        "unit_forget_bias is 1)",
    )
    t.add_argument(
        "--activation",
        choices=("tanh", "relu"),
        help="the RNN's hidden layer's (default: tanh; the gated cells' are fixed)",
    )
    t.add_argument(
        "--embedding",
        choices=("onehot", "learned"),
        help="one-hot inputs, or a learned embedding table (default: onehot)",
    )
    t.add_argument(
        "--embed-dim",
        metavar="D",
        type=argtypes.positive_int,
        help=f"size of a learned embedding (default: {LEARNED_EMBED_DIM})",
    )
    t.add_argument(
        "--loss",
        choices=("all-steps", "last-step"),
        help="predict every next token, or only each sequence's last (default: all-steps)",
    )
    state = t.add_mutually_exclusive_group()
    state.add_argument(
        "--no-detach",
        action="store_true",
        help="keep the state in the graph across minibatches (sequential only)",
    )
    state.add_argument(
        "--reset-state",
        action="store_true",
        help="start every minibatch from a zero state, as d2l's use_random_iter=True run does "
        "on its sequential iterator (random sampling always does)",
    )
    t.add_argument(
        "--train-fraction",
        metavar="F",
        type=argtypes.fraction,
        help="train on this first part of the corpus, report perplexity on the rest "
        "(default: train on all of it)",
    )
    t.add_argument(
        "--plot",
        metavar="PNG",
        help="write the perplexity per epoch (and the held-out one) here (default: no plot)",
    )
    t.add_argument(
        "--grad",
        choices=("autograd", "bptt"),
        help="the framework's autodiff, or core's hand-written BPTT on its arrays (default: "
        "autograd where the backend has it; numpy and array-api have bptt only)",
    )
    mode = t.add_mutually_exclusive_group()
    mode.add_argument(
        "--eager",
        action="store_true",
        help="run the step op by op: no jax.jit, tf.function or torch.compile",
    )
    mode.add_argument(
        "--compile",
        nargs="?",
        const=True,
        metavar="MODE",
        help="compile the step: torch.compile on torch (MODE reduce-overhead: CUDA graphs, "
        "GPU only); jax and tensorflow compile by default (jit, tf.function); numpy and "
        "array-api have nothing to compile and refuse it (default: the backend's first mode, "
        "which `rosetta-rnn backends` lists)",
    )
    t.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write a safetensors checkpoint here at the end (default: none; Ctrl-C then "
        f"saves to {INTERRUPTED_PATH})",
    )
    t.add_argument(
        "--save-every",
        type=argtypes.positive_int,
        metavar="N",
        help="also save every N epochs (default: only at the end)",
    )
    t.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue this checkpoint up to --epochs, with its settings (default: a new run)",
    )
    t.add_argument(
        "--replicas",
        metavar="N",
        type=argtypes.positive_int,
        help="data-parallel on N devices of the framework's own engine: each replica takes "
        "an equal shard of every minibatch, the gradients are averaged by the framework's "
        "all-reduce, then clipped and applied once (torch: N processes over torch.distributed; "
        "jax: shard_map over N devices; tensorflow: MirroredStrategy over N devices; numpy and "
        "array-api have none). --batch-size must divide by N (default: 1; a checkpoint resumes "
        "under any N, on any backend)",
    )
    t.add_argument("--json", action="store_true", help="one JSON document on stdout")
    t.set_defaults(func=cmd_train)


@dataclass
class _Data:
    """The text a run trains on: where it came from, its ids, and the held-out end."""

    source: str
    corpus: data.Corpus
    fingerprint: str
    train_ids: np.ndarray
    heldout_ids: np.ndarray | None


def _load_data(
    args: argparse.Namespace, run: RunConfig, cfg: TrainConfig, meta: dict[str, Any] | None
) -> _Data:
    corpus_arg = args.corpus
    if corpus_arg is None and meta and meta.get("corpus_path"):
        if Path(meta["corpus_path"]).is_file():  # the text it was trained on
            corpus_arg = meta["corpus_path"]
    source = data.locate_time_machine(corpus_arg)
    corpus = data.load_corpus(source, run.token, run.max_tokens)
    train_ids, heldout_ids = corpus.ids, None
    if run.train_fraction:  # hold out the end of the corpus
        cut = int(len(corpus.ids) * run.train_fraction)
        train_ids, heldout_ids = corpus.ids[:cut], corpus.ids[cut:]
        if len(heldout_ids) < 2:
            raise UserError("--train-fraction leaves fewer than 2 tokens to hold out")
    _validate_corpus(data.Corpus(train_ids, corpus.vocab, corpus.token), cfg, str(source))
    return _Data(str(source), corpus, _corpus_fingerprint(corpus), train_ids, heldout_ids)


def _trainer(
    args: argparse.Namespace,
    run: RunConfig,
    cfg: TrainConfig,
    ops: Any,
    step: StepFn,
    text: _Data,
    resumed: tuple[dict[str, np.ndarray], dict[str, Any]] | None,
) -> tuple[Trainer, list[dict[str, Any]]]:
    """A trainer from fresh parameters, or continued from a checkpoint; and the history."""
    rng = np.random.default_rng(run.seed)
    if resumed is None:
        vocab_size = len(text.corpus.vocab)
        if run.cell == "rnn":
            init = model.init_params(
                vocab_size, cfg.num_hiddens, rng, run.dtype, embed_dim=cfg.embed_dim
            )
        else:
            init = cells.init_params(
                run.model_cell,
                vocab_size,
                cfg.num_hiddens,
                rng,
                run.dtype,
                forget_bias=run.forget_bias,
                embed_dim=cfg.embed_dim,
            )
        return Trainer(ops, step, model.to_backend(ops, init), text.train_ids, cfg, rng), []
    tensors, meta = resumed
    if (
        meta.get("corpus_sha1") != text.fingerprint
        or meta["vocab"] != text.corpus.vocab.idx_to_token
    ):
        raise UserError(
            f"--resume {args.resume}: the corpus differs from the one it was trained on; "
            "pass the same --corpus"
        )
    trainer = Trainer(ops, step, model.to_backend(ops, tensors), text.train_ids, cfg, rng)
    try:
        trainer.restore(tensors, meta["position"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{args.resume}: its training position is damaged") from None
    if trainer.epoch >= cfg.epochs:
        raise UserError(
            f"--resume {args.resume}: already trained {trainer.epoch} epochs; "
            f"ask for more with --epochs N (the total, > {trainer.epoch})"
        )
    return trainer, list(meta.get("history", []))


def cmd_train(args: argparse.Namespace) -> int:
    resumed = checkpoint.load_model(args.resume) if args.resume else None
    resume_meta = resumed[1] if resumed else None
    run = _run_config(args, resume_meta)
    epochs = args.epochs or (resume_meta or {}).get("target_epochs") or EPOCHS
    cfg = run.train_config(epochs)
    out_path = args.checkpoint or args.resume
    if args.save_every and not out_path:
        raise UserError("--save-every needs --checkpoint PATH to save to")
    if out_path:
        checkpoint.check_writable(out_path)
    if args.plot:
        plots.check_plot_path(args.plot)

    backend = backends.load(args.backend)
    replicas = args.replicas or 1
    if replicas > 1:  # told before the framework starts: JAX and TensorFlow make the devices
        check_replicas(replicas, cfg.batch_size)
        engine = backends.replica_backend(args.backend, backend, replicas)
    ops = backend.make_ops(run.dtype, args.device)
    if run.dtype == "float64" and not backend.supports_float64(ops.device):
        raise BackendUnavailable(f"{args.backend} on {ops.device} has no float64; use float32")
    grad = args.grad or backend.GRAD_MODES[0]  # make_train_step refuses one it lacks
    mode = compile_mode(args, backend, ops.device)
    text = _load_data(args, run, cfg, resume_meta)
    replicated: ReplicatedStep | None = None
    if replicas > 1:
        replicated = engine.make_replicated_step(ops, replicas, grad, mode, cfg.activation)
    step = replicated or backend.make_train_step(
        ops, grad=grad, mode=mode, activation=cfg.activation
    )
    engine_name = replicated.engine if replicated else None
    try:
        return _train(
            args, run, cfg, epochs, out_path, ops, grad, mode, engine_name, step, text, resumed
        )
    finally:
        if replicated is not None:
            replicated.close()


def _kept(out_path: str | None) -> str:
    """What a run that stops on an error leaves, for the end of its line: the checkpoint last
    saved whole (saves are atomic, so an error mid-step cannot damage it), or none."""
    if out_path and Path(out_path).is_file():
        return f"; the last good checkpoint {out_path} is kept"
    return "; no checkpoint was written"


def _train(
    args: argparse.Namespace,
    run: RunConfig,
    cfg: TrainConfig,
    epochs: int,
    out_path: str | None,
    ops: Any,
    grad: str,
    mode: str,
    engine: str | None,
    step: StepFn,
    text: _Data,
    resumed: tuple[dict[str, np.ndarray], dict[str, Any]] | None,
) -> int:
    """The run itself, once its step is built (``engine``: the data-parallel engine, in
    words; None on one device)."""
    replicas = getattr(step, "replicas", 1)
    human = sys.stderr if args.json else sys.stdout
    trainer, history = _trainer(args, run, cfg, ops, step, text, resumed)

    def evaluable() -> model.Params:
        """The parameters where ``ops`` computes (a JAX mesh holds them on every device)."""
        if replicas == 1:
            return trainer.params
        return model.to_backend(ops, model.to_numpy(ops, trainer.params))

    def save(path: str) -> None:
        tensors, position = trainer.snapshot()
        meta = {
            "backend": args.backend,
            "device": ops.device,
            "dtype": run.dtype,
            "epoch": trainer.epoch,
            "target_epochs": epochs,
            "seed": run.seed,
            "token": run.token,
            "max_tokens": run.max_tokens,
            "train_fraction": run.train_fraction,
            "grad": grad,
            "replicas": replicas,
            "config": cfg.to_dict(),
            "run": run.to_meta(),
            "vocab": text.corpus.vocab.idx_to_token,
            "corpus_sha1": text.fingerprint,
            "corpus_path": str(Path(text.source).resolve()),
            "position": position,
            "history": history,
            "perplexity": history[-1]["perplexity"] if history else None,
        }
        checkpoint.save(path, tensors, meta)

    start = f"from epoch {trainer.epoch} to {epochs}" if resumed else f"{epochs} epochs"
    on = f"; {replicas} replicas: {engine}" if engine else ""
    _say(
        human,
        f"{'resuming' if resumed else 'training'} on {backends.framework(args.backend)} "
        f"({args.backend}, {ops.device}, {run.dtype}, grad {grad}, {mode}{on}): "
        f"{len(text.corpus.ids)} tokens, vocab {len(text.corpus.vocab)}, {start}",
    )
    last: EpochResult | None = None
    with (
        _StopFlag() as stop,
        # auto_refresh=False: the bar is drawn once an epoch, no thread runs beside the timed
        # steps whose tokens/s it reports
        Progress(
            "training", total=epochs, unit="epochs", completed=trainer.epoch, auto_refresh=False
        ) as progress,
    ):
        try:
            while trainer.epoch < epochs:
                last = trainer.run_epoch(stop_requested=stop)
                entry = _epoch_entry(last, ops, evaluable, cfg, text)
                history.append(entry)
                progress.advance(
                    info=f"perplexity {last.perplexity:.2f}, {last.tokens_per_sec:.0f} tokens/s"
                )
                if last.epoch % 10 == 0:
                    progress.say(_epoch_line(entry, ops, evaluable(), run, cfg, text), human)
                if out_path and args.save_every and last.epoch % args.save_every == 0:
                    save(out_path)
                if stop():
                    raise TrainingInterrupted
        except TrainingInterrupted:
            progress.close()
            path = out_path or INTERRUPTED_PATH
            save(path)
            _say(
                sys.stderr,
                f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step}; saved {path}\n"
                f"resume with: rosetta-rnn train --resume {path} --epochs {epochs}",
            )
            return 130
        except (TrainingDiverged, ReplicaLost) as e:
            progress.close()
            raise type(e)(f"{e}{_kept(out_path)}") from None
    assert last is not None
    final = evaluable()
    samples = {
        p: _sample(ops, final, text.corpus.vocab, run.token, p, cfg.activation)
        for p in SAMPLE_PREFIXES
    }
    largest = _report(human, last, ops, samples, history, cfg)
    # The checkpoint first: a plot that fails now (its folder gone, a full disk) loses no run.
    if out_path:
        save(out_path)
        _say(human, f"checkpoint written to {out_path}")
    plot_error: UserError | None = None
    if args.plot:
        try:
            plots.perplexity(
                history, args.plot, plot_title(args.backend, ops.device, grad, mode, run)
            )
            _say(human, f"plot written to {args.plot}")
        except UserError as e:
            kept = f"; the checkpoint {out_path} is written" if out_path else ""
            plot_error = UserError(f"{e}{kept}")
    if args.json:
        doc = {
            "backend": args.backend,
            "device": ops.device,
            "dtype": run.dtype,
            "grad": grad,
            "compile": mode,
            "replicas": replicas,
            "engine": engine,
            "cell": run.model_cell,
            "seed": run.seed,
            "token": run.token,
            "max_tokens": run.max_tokens,
            "corpus": text.source,
            "corpus_sha1": text.fingerprint,
            "epochs": trainer.epoch,
            "perplexity": last.perplexity,
            "heldout_perplexity": history[-1].get("heldout_perplexity"),
            "max_grad_norm": largest[0] if largest else None,
            "tokens_per_sec": last.tokens_per_sec,
            "config": cfg.to_dict(),
            "history": history,
            "samples": samples,
            "checkpoint": out_path,
            "plot": None if plot_error or not args.plot else args.plot,
        }
        print(json.dumps(doc))
    if plot_error is not None:
        raise plot_error
    return 0


def _epoch_entry(
    last: EpochResult, ops: Any, params: Callable[[], model.Params], cfg: TrainConfig, text: _Data
) -> dict[str, Any]:
    """What the history keeps of an epoch (and the held-out perplexity, when there is one)."""
    entry: dict[str, Any] = {
        "epoch": last.epoch,
        "perplexity": last.perplexity,
        "tokens_per_sec": last.tokens_per_sec,
        "max_grad_norm": last.max_grad_norm,
        "grad_norms": last.grad_norms,
    }
    if text.heldout_ids is not None:
        entry["heldout_perplexity"], _ = perplexity_on(
            ops, params(), text.heldout_ids, cfg.num_steps, cfg.activation
        )
    return entry


def _epoch_line(
    entry: dict[str, Any],
    ops: Any,
    params: model.Params,
    run: RunConfig,
    cfg: TrainConfig,
    text: _Data,
) -> str:
    """Every tenth epoch: perplexity, held-out perplexity, speed and a greedy sample."""
    sample = _sample(ops, params, text.corpus.vocab, run.token, SAMPLE_PREFIXES[0], cfg.activation)
    held = f"  held-out {entry['heldout_perplexity']:8.3f}" if "heldout_perplexity" in entry else ""
    return (
        f"epoch {entry['epoch']:4d}  perplexity {entry['perplexity']:8.3f}{held}  "
        f"{entry['tokens_per_sec']:9.1f} tokens/sec  {sample!r}"
    )


def _report(
    human: TextIO,
    last: EpochResult,
    ops: Any,
    samples: dict[str, str],
    history: list[dict[str, Any]],
    cfg: TrainConfig,
) -> tuple[float, int, int] | None:
    """The end of a run for a person: speed, samples, the largest norm, held-out perplexity.
    Returns the largest gradient norm seen (and where)."""
    _say(
        human,
        f"perplexity {last.perplexity:.1f}, {last.tokens_per_sec:.1f} tokens/sec on {ops.device}",
    )
    for text in samples.values():
        _say(human, text)
    largest = _largest_grad_norm(history)
    if largest is not None and math.isinf(cfg.clip):
        _say(human, "largest gradient norm {:.4g} (epoch {}, step {})".format(*largest))
    if history and history[-1].get("heldout_perplexity") is not None:
        _say(human, f"held-out perplexity {history[-1]['heldout_perplexity']:.2f}")
    return largest


def plot_title(backend: str, device: str, grad: str, mode: str, run: RunConfig) -> str:
    """What ran, then its configuration: the plot says which run it shows."""
    clip = "no clipping" if math.isinf(run.clip) else f"clip θ = {run.clip:g}"
    state = (
        ", no detach"
        if not run.detach
        else ", state reset per minibatch"
        if run.reset_state
        else ""
    )
    return (
        f"{backend} {run.dtype} on {device}, grad {grad}, {mode}: perplexity per epoch\n"
        f"{run.token}s, batch {run.batch_size} × {run.num_steps} steps, {run.num_hiddens} hidden "
        f"{run.activation if run.cell == 'rnn' else run.model_cell}, lr {run.lr:g}, {clip}, "
        f"{run.sampling}{state}, seed {run.seed}"
    )


def compile_mode(args: argparse.Namespace, backend: Backend, device: str) -> str:
    """``--eager``, ``--compile [MODE]`` or neither -> one of the backend's compile modes.
    A bare ``--compile`` is the backend's first mode that compiles; a backend with none says so."""
    if args.eager:
        return "eager"
    wanted = args.compile
    if wanted is True:
        compiling = [m for m in backend.compile_modes(device) if m != "eager"]
        if not compiling:
            raise UserError(f"the {backend.NAME} backend has nothing to compile; it runs eager")
        wanted = compiling[0]
    return rules.pick_mode(backend.NAME, "compile mode", wanted, backend.COMPILE_MODES)

"""``rosetta-rnn train``: the chapter's training run, with checkpoints that continue exactly.

A checkpoint holds the parameters, the carried hidden state and the trainer's position (epoch,
minibatch, generator state), so ``--resume`` continues as if never stopped. Ctrl-C finishes
the current step, saves, prints how to resume and exits 130. A NaN or inf stops training
without overwriting the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from rosetta_rnn import argtypes, backends, plots
from rosetta_rnn.backends import rules
from rosetta_rnn.core import checkpoint, data, model, sampling
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.contract import Backend
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.errors import BackendUnavailable, ReplicaLost, UserError
from rosetta_rnn.core.evaluation import perplexity_on
from rosetta_rnn.core.replicas import ReplicatedStep, check_replicas
from rosetta_rnn.core.training import (
    EpochResult,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
)
from rosetta_rnn.helpers import CORPUS_HELP, add_backend_args

SAMPLE_PREFIXES = ("time traveller", "traveller")
INTERRUPTED_PATH = "rosetta-rnn-interrupted.safetensors"


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
    given = {f.name: getattr(args, f.name, None) for f in fields(run_spec.RunSpec)}
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


def _spec(args: argparse.Namespace, meta: dict[str, Any] | None) -> run_spec.RunSpec:
    """The run's specification from the flags given, or the checkpoint's with ``--resume``."""
    given = {k: v for k, v in _given(args).items() if v is not None}
    saved = run_spec.RunSpec.from_meta(meta, args.resume) if meta is not None else None
    return run_spec.resolve(given, _embedding(args), saved, args.resume or "")


def _largest_grad_norm(history: list[dict[str, Any]]) -> tuple[float, int, int] | None:
    """(norm, epoch, step) of the largest gradient norm seen (before clipping)."""
    best: tuple[float, int, int] | None = None
    for h in history:
        for i, g in enumerate(h.get("grad_norms", [])):
            if best is None or g > best[0]:
                best = (g, h["epoch"], i + 1)
    return best


def _sample(ops: Any, params: Any, vocab: data.Vocab, run: run_spec.RunSpec, prefix: str) -> str:
    ids = vocab.lookup(data.split_text(prefix, run.token))
    out = sampling.predict(ops, params, ids, 50, activation=run.activation, cell=run.model_cell)
    return data.join_tokens(vocab.to_tokens(out), run.token)


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
    # core.run's RunSpec holds the chapter's values.
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
        choices=run_spec.CELL_KINDS,
        help="the recurrent cell: the chapter's RNN, d2l 9.1's GRU or 9.2's LSTM (default: rnn)",
    )
    t.add_argument(
        "--gru",
        choices=run_spec.GRU_FORMS,
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
        help=f"size of a learned embedding (default: {run_spec.LEARNED_EMBED_DIM})",
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
        f"{backends.summary('grad')})",
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
        f"GPU only); {backends.summary('compile')} (default: the backend's first mode, "
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
        f"all-reduce, then clipped and applied once ({backends.summary('replicas')}). "
        "--batch-size must divide by N (default: 1; a checkpoint resumes under any N, on any "
        "backend)",
    )
    t.add_argument("--json", action="store_true", help="one JSON document on stdout")
    t.set_defaults(func=cmd_train)


def _load_text(
    args: argparse.Namespace, spec: run_spec.RunSpec, meta: dict[str, Any] | None
) -> run_spec.Text:
    """--corpus, or the text a resumed checkpoint was trained on where it still is, or The Time
    Machine."""
    corpus_arg = args.corpus
    if corpus_arg is None and meta and meta.get("corpus_path"):
        if Path(meta["corpus_path"]).is_file():  # the text it was trained on
            corpus_arg = meta["corpus_path"]
    return run_spec.load_text(spec, data.locate_time_machine(corpus_arg))


def cmd_train(args: argparse.Namespace) -> int:
    resumed = checkpoint.load_model(args.resume) if args.resume else None
    resume_meta = resumed[1] if resumed else None
    spec = _spec(args, resume_meta)
    epochs = args.epochs or (resume_meta or {}).get("target_epochs") or run_spec.EPOCHS
    spec.train_config(epochs)  # its contradictions refused before any framework starts
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
        check_replicas(replicas, spec.batch_size)
        engine = backends.replica_backend(args.backend, backend, replicas)
    ops = backend.make_ops(spec.dtype, args.device)
    if spec.dtype == "float64" and not backend.supports_float64(ops.device):
        raise BackendUnavailable(f"{args.backend} on {ops.device} has no float64; use float32")
    grad = args.grad or backend.GRAD_MODES[0]  # make_train_step refuses one it lacks
    mode = compile_mode(args, backend, ops.device)
    text = _load_text(args, spec, resume_meta)
    replicated: ReplicatedStep | None = None
    if replicas > 1:
        replicated = engine.make_replicated_step(
            ops, replicas, grad, mode, spec.activation, spec.model_cell
        )
    step = replicated or backend.make_train_step(
        ops, grad=grad, mode=mode, activation=spec.activation, cell=spec.model_cell
    )
    try:
        built = run_spec.build(spec, ops, step, text, epochs, resumed, args.resume or "")
        return _train(args, built, out_path, ops, grad, mode, replicated)
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
    built: run_spec.Run,
    out_path: str | None,
    ops: Any,
    grad: str,
    mode: str,
    replicated: ReplicatedStep | None,
) -> int:
    """The run itself, once it is built: its epochs, reports, checkpoints and plot."""
    run, text, trainer, history, epochs = (
        built.spec,
        built.text,
        built.trainer,
        built.history,
        built.epochs,
    )
    cfg = trainer.config
    replicas = replicated.replicas if replicated else 1
    engine = replicated.engine if replicated else None
    human = sys.stderr if args.json else sys.stdout
    resumed = args.resume is not None

    def evaluable() -> model.Params:
        """The parameters where ``ops`` computes (a JAX mesh holds them on every device)."""
        if replicas == 1:
            return trainer.params
        return model.to_backend(ops, model.to_numpy(ops, trainer.params))

    def save(path: str) -> None:
        checkpoint.save(path, *built.checkpoint(args.backend, ops.device, grad, replicas))

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
                entry = _epoch_entry(last, ops, evaluable, run, text)
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
    samples = {p: _sample(ops, final, text.corpus.vocab, run, p) for p in SAMPLE_PREFIXES}
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
    last: EpochResult,
    ops: Any,
    params: Callable[[], model.Params],
    run: run_spec.RunSpec,
    text: run_spec.Text,
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
            ops, params(), text.heldout_ids, run.num_steps, run.activation, run.model_cell
        )
    return entry


def _epoch_line(
    entry: dict[str, Any],
    ops: Any,
    params: model.Params,
    run: run_spec.RunSpec,
    cfg: TrainConfig,
    text: run_spec.Text,
) -> str:
    """Every tenth epoch: perplexity, held-out perplexity, speed and a greedy sample."""
    sample = _sample(ops, params, text.corpus.vocab, run, SAMPLE_PREFIXES[0])
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


def plot_title(backend: str, device: str, grad: str, mode: str, run: run_spec.RunSpec) -> str:
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

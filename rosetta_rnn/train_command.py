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
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from rosetta_rnn import argtypes, backends, plots, run_args
from rosetta_rnn.backends import rules
from rosetta_rnn.core import checkpoint, data, run
from rosetta_rnn.core.contract import Backend
from rosetta_rnn.core.display import Progress
from rosetta_rnn.core.errors import ReplicaLost, UserError
from rosetta_rnn.core.replicas import check_replicas
from rosetta_rnn.core.training import EpochResult, TrainingDiverged, TrainingInterrupted
from rosetta_rnn.helpers import CORPUS_HELP, add_backend_args

BOOK_FIGURES = ("book_perplexity", "val_perplexity", "val_book_perplexity")
"""d2l 1.0's figures an epoch of a windows run adds: the plain mean of exp(each minibatch's
mean loss) in training, and the validation perplexity, token-weighted and the book's mean."""
INTERRUPTED_PATH = "rosetta-rnn-interrupted.safetensors"


def _say(out: TextIO, *parts: Any) -> None:
    print(*parts, file=out, flush=True)


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
        "9.2's LSTM instead (256 hidden units, as there), on every backend. --recipe d2l-1.0 "
        "trains the current edition's chapter 9.5 instead (and its 10.1 LSTM and 10.2 GRU), "
        "with a validation perplexity every epoch. --checkpoint keeps the model for generate, "
        "eval and --resume; Ctrl-C saves and says how to resume.",
    )
    add_backend_args(t, None)  # dtype default float32, or the checkpoint's with --resume
    t.add_argument("--corpus", metavar="FILE", help=CORPUS_HELP)
    run_args.add_run_args(t)
    t.add_argument(
        "--epochs",
        metavar="N",
        type=argtypes.positive_int,
        help="total epochs, counting those a --resume'd checkpoint has done (default: 500; "
        "d2l-1.0: 100, 50 with --cell gru or lstm)",
    )
    t.add_argument(
        "--plot",
        metavar="PNG",
        help="write the perplexity per epoch (and the held-out or validation one) here "
        "(default: no plot)",
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
    args: argparse.Namespace, spec: run.RunSpec, meta: dict[str, Any] | None
) -> run.Text:
    """--corpus, or the text a resumed checkpoint was trained on where it still is, or The Time
    Machine."""
    corpus_arg = args.corpus
    if corpus_arg is None and meta and meta.get("corpus_path"):
        if Path(meta["corpus_path"]).is_file():  # the text it was trained on
            corpus_arg = meta["corpus_path"]
    return run.load_text(spec, data.locate_time_machine(corpus_arg))


def cmd_train(args: argparse.Namespace) -> int:
    resumed = checkpoint.load_model(args.resume) if args.resume else None
    resume_meta = resumed[1] if resumed else None
    spec = run_args.spec_from_args(args, resume_meta)
    epochs = args.epochs or (resume_meta or {}).get("target_epochs") or run.epochs_of(spec)
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
        check_replicas(replicas, spec.batch_size, spec.partial_batch)
        backend = backends.replica_backend(args.backend, backend, replicas)
    device = backend.resolve_device(args.device)
    mode = compile_mode(args, backend, device)
    engine = run.engine(spec, backend, device, args.grad, mode, replicas, args.backend)
    try:
        text = _load_text(args, spec, resume_meta)
        return _train(args, run.build(spec, engine, text, epochs, resumed, args.resume or ""))
    finally:
        engine.close()


def _kept(out_path: str | None) -> str:
    """What a run that stops on an error leaves, for the end of its line: the checkpoint last
    saved whole (saves are atomic, so an error mid-step cannot damage it), or none."""
    if out_path and Path(out_path).is_file():
        return f"; the last good checkpoint {out_path} is kept"
    return "; no checkpoint was written"


def _train(args: argparse.Namespace, built: run.Run) -> int:
    """The run itself, once it is built: its epochs, reports, checkpoints and plot."""
    spec, text, trainer, engine = built.spec, built.text, built.trainer, built.engine
    epochs, history, device = built.epochs, built.history, engine.ops.device
    out_path = args.checkpoint or args.resume
    human = sys.stderr if args.json else sys.stdout
    resumed = args.resume is not None
    engine_name = engine.replicated.engine if engine.replicated else None

    def save(path: str) -> None:
        checkpoint.save(path, *built.checkpoint())

    start = f"from epoch {trainer.epoch} to {epochs}" if resumed else f"{epochs} epochs"
    on = f"; {engine.replicas} replicas: {engine_name}" if engine_name else ""
    _say(
        human,
        f"{'resuming' if resumed else 'training'} on {backends.framework(args.backend)} "
        f"({args.backend}, {device}, {spec.dtype}, grad {engine.grad}, {engine.mode}{on}): "
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
                last, entry = built.next_epoch(stop_requested=stop)
                progress.advance(
                    info=f"perplexity {last.perplexity:.2f}, {last.tokens_per_sec:.0f} tokens/s"
                )
                if last.epoch % 10 == 0:
                    progress.say(_epoch_line(entry, built.sample(spec.prefixes[0])), human)
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
    final = built.params()
    samples = {p: built.sample(p, params=final) for p in spec.prefixes}
    largest = built.largest_grad_norm()
    _report(human, last, device, samples, largest, history, spec)
    # The checkpoint first: a plot that fails now (its folder gone, a full disk) loses no run.
    if out_path:
        save(out_path)
        _say(human, f"checkpoint written to {out_path}")
    plot_error: UserError | None = None
    if args.plot:
        try:
            title = plots.run_title(args.backend, device, engine.grad, engine.mode, spec)
            plots.perplexity(history, args.plot, title)
            _say(human, f"plot written to {args.plot}")
        except UserError as e:
            kept = f"; the checkpoint {out_path} is written" if out_path else ""
            plot_error = UserError(f"{e}{kept}")
    if args.json:
        doc = {
            "backend": args.backend,
            "device": device,
            "dtype": spec.dtype,
            "grad": engine.grad,
            "compile": engine.mode,
            "replicas": engine.replicas,
            "engine": engine_name,
            "cell": spec.model_cell,
            "seed": spec.seed,
            "token": spec.token,
            "max_tokens": spec.max_tokens,
            "corpus": text.source,
            "corpus_sha1": text.fingerprint,
            "epochs": trainer.epoch,
            "perplexity": last.perplexity,
            "heldout_perplexity": history[-1].get("heldout_perplexity"),
            **{k: history[-1][k] for k in BOOK_FIGURES if k in history[-1]},
            "max_grad_norm": largest[0] if largest else None,
            "tokens_per_sec": last.tokens_per_sec,
            "config": trainer.config.to_dict(),
            "history": history,
            "samples": samples,
            "checkpoint": out_path,
            "plot": None if plot_error or not args.plot else args.plot,
        }
        print(json.dumps(doc))
    if plot_error is not None:
        raise plot_error
    return 0


def _epoch_line(entry: dict[str, Any], sample: str) -> str:
    """Every tenth epoch: perplexity, held-out perplexity, speed and a greedy sample."""
    held = f"  held-out {entry['heldout_perplexity']:8.3f}" if "heldout_perplexity" in entry else ""
    if "val_perplexity" in entry:
        held += f"  validation {entry['val_perplexity']:8.3f}"
    return (
        f"epoch {entry['epoch']:4d}  perplexity {entry['perplexity']:8.3f}{held}  "
        f"{entry['tokens_per_sec']:9.1f} tokens/sec  {sample!r}"
    )


def _report(
    human: TextIO,
    last: EpochResult,
    device: str,
    samples: dict[str, str],
    largest: tuple[float, int, int] | None,
    history: list[dict[str, Any]],
    spec: run.RunSpec,
) -> None:
    """The end of a run for a person: speed, samples, the largest norm, held-out perplexity."""
    speed = f"{last.tokens_per_sec:.1f} tokens/sec on {device}"
    _say(human, f"perplexity {last.perplexity:.1f}, {speed}")
    for text in samples.values():
        _say(human, text)
    if largest is not None and math.isinf(spec.clip):
        _say(human, "largest gradient norm {:.4g} (epoch {}, step {})".format(*largest))
    end = history[-1] if history else {}
    if end.get("heldout_perplexity") is not None:
        _say(human, f"held-out perplexity {end['heldout_perplexity']:.2f}")
    if "val_perplexity" in end:
        _say(
            human,
            f"validation perplexity {end['val_perplexity']:.2f} (the book's plotted mean "
            f"{end['val_book_perplexity']:.2f}); training {last.perplexity:.2f} (the book's "
            f"{end['book_perplexity']:.2f})",
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

"""The run a user launches, against the reference's: ``reference/run-*`` cells.

The other reference cells drive core's functions directly. These build whole runs the way
``rosetta-rnn train`` does, through ``core.run`` (a spec, ``load_text``, ``build``; NumPy
float64), from a small text file with the Time Machine's kind of lines, and hold each to
``reference.plain_run`` with the same settings and seed: the vocabulary, the initial
parameters, every minibatch of every epoch, each epoch's perplexity and parameters, the
held-out perplexity, and a run resumed from a checkpoint against one that never stopped. A
setting that is parsed but never applied, a seed that draws the wrong thing, a split or a
resume put together wrongly changes one of those, and so fails the cell of that setting
(``tests/test_run_checks.py`` plants such mistakes).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import checkpoint, model
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.errors import first_line

from . import reference as ref
from . import reference_cells
from .checks import Cell, max_error
from .reference_cells import DTYPE
from .tolerances import tolerance

EPOCHS = 2

BASE = replace(
    run_spec.RECIPES["d2l-0.17"],
    batch_size=4,
    num_steps=6,
    num_hiddens=8,
    max_tokens=700,
    dtype=DTYPE,
    seed=11,
)
"""The chapter's recipe at a size that trains in milliseconds (float64, the reference's)."""

WINDOWS_1_0: dict[str, Any] = {
    "preprocess": "whole",
    "vocab_order": "sorted",
    "sampling": "windows",
    "num_train": 150,
    "num_val": 70,
    "batch_size": 16,
    "prefixes": ("it has",),
    "num_preds": 20,
}
"""d2l 1.0's data (``--recipe d2l-1.0``) at ``BASE``'s size: 150 training windows in 9 × 16 + 6,
70 validation windows in 4 × 16 + 6, so that both last minibatches are partial."""

GATED_1_0: dict[str, Any] = {"recipe": "d2l-1.0", "lr": 4.0}
"""d2l 1.0's 10.1 LSTM and 10.2 GRU train at lr 4."""

OPTIONS: dict[str, dict[str, Any]] = {
    "chapter": {},
    "seed": {"seed": 3},
    "gru": {"cell": "gru", "gru": "reset-before"},
    "gru-reset-after": {"cell": "gru", "gru": "reset-after"},
    "lstm": {"cell": "lstm"},
    "forget-bias": {"cell": "lstm", "forget_bias": 1.0},
    "embedding": {"embed_dim": 5},
    "last-step": {"loss": "last-step"},
    "random": {"sampling": "random"},
    "reset-state": {"reset_state": True},
    "no-detach": {"detach": False, "max_tokens": 260},
    "no-clip": {"clip": math.inf, "lr": 0.5},
    "relu": {"activation": "relu", "lr": 0.5},
    "train-fraction": {"train_fraction": 0.8},
    "max-tokens": {"max_tokens": 400},
    "whole-text": {"max_tokens": 0},
    "word": {"token": "word", "max_tokens": 0, "num_steps": 3, "batch_size": 2},
    "preprocess-whole": {"preprocess": "whole"},
    "vocab-sorted": {"vocab_order": "sorted"},
    "windows": {"sampling": "windows", "num_train": 150, "num_val": 70, "batch_size": 16},
    "windows-last-step": {
        "sampling": "windows",
        "num_train": 150,
        "num_val": 0,
        "batch_size": 16,
        "loss": "last-step",
    },
    "recipe-1.0": {**WINDOWS_1_0, "recipe": "d2l-1.0"},
    "recipe-1.0-gru": {**WINDOWS_1_0, **GATED_1_0, "cell": "gru", "gru": "reset-before"},
    "recipe-1.0-lstm": {**WINDOWS_1_0, **GATED_1_0, "cell": "lstm"},
}
"""Each setting of a run (``rosetta-rnn train``'s options), on top of ``BASE``."""

_LINES = (
    "The Time Traveller (for so it will be convenient to speak of him)",
    "was expounding a recondite matter to us. His grey eyes shone and",
    "twinkled, and his usually pale face was flushed and animated.",
    "You must follow me carefully. I shall have to controvert one or two",
    "ideas that are almost universally accepted. The geometry, for instance,",
    "they taught you at school is founded on a misconception.",
    "Is not that rather a large thing to expect us to begin upon? said Filby,",
    "an argumentative person with red hair.",
)


def write_text(folder: str | Path) -> Path:
    """A small text like the book's (punctuation, capitals, lines of different lengths),
    about 1.5k characters and 270 words, in ``folder``."""
    path = Path(folder) / "small-time-machine.txt"
    path.write_text("\n".join(_LINES * 3) + "\n", encoding="utf-8")
    return path


def _cell(name: str, err: float, tol: float, message: str = "") -> Cell:
    """A run's cell involves the cell its option picks, named in the check: no cell column."""
    return reference_cells.cell(f"run-{name}", err, tol, message, model=None)


def _reference_cell(spec: run_spec.RunSpec) -> str:
    return spec.model_cell.replace("/", "-")


def reference_run(spec: run_spec.RunSpec, path: Path, epochs: int) -> dict[str, Any]:
    """``reference.plain_run`` with the settings of ``spec``, and its greedy samples from the
    spec's prefixes after the last epoch."""
    run = ref.plain_run(
        path,
        epochs,
        token=spec.token,
        max_tokens=spec.max_tokens,
        train_fraction=spec.train_fraction,
        seed=spec.seed,
        cell=_reference_cell(spec),
        forget_bias=spec.forget_bias,
        embed_dim=spec.embed_dim,
        num_hiddens=spec.num_hiddens,
        batch_size=spec.batch_size,
        num_steps=spec.num_steps,
        lr=spec.lr,
        theta=spec.clip,
        sampling=spec.sampling,
        reset_state=spec.reset_state,
        detach=spec.detach,
        last_step=spec.loss == "last-step",
        activation=spec.activation,
        text=spec.preprocess,
        vocab_order=spec.vocab_order,
        num_train=spec.num_train,
        num_val=spec.num_val,
    )
    run["samples"] = [_reference_sample(spec, run, prefix) for prefix in spec.prefixes]
    return run


def _reference_sample(spec: run_spec.RunSpec, run: dict[str, Any], prefix: str) -> str:
    """The reference's greedy ``predict`` from ``prefix`` after the run's last epoch, as text
    (a ``<unk>`` as the replacement character, as ``train`` prints it)."""
    vocab = run["vocab"]
    unk = vocab.index("<unk>")
    tokens = list(prefix) if spec.token == "char" else prefix.split()
    ids = [vocab.index(t) if t in vocab else unk for t in tokens]
    params = run["epochs"][-1]["params"] if run["epochs"] else run["init"]
    out = ref.predict(ids, spec.num_preds, params, spec.activation, cell=_reference_cell(spec))
    words = ["\ufffd" if vocab[i] == "<unk>" and spec.token == "char" else vocab[i] for i in out]
    return ("" if spec.token == "char" else " ").join(words)


def core_run(
    spec: run_spec.RunSpec,
    path: Path,
    epochs: int,
    resumed: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
) -> tuple[run_spec.Run, dict[str, Any]]:
    """The run as ``train`` builds it (NumPy float64), ``epochs`` in all (a resumed one
    continues to there): the built run, and what the reference returns of its own."""
    engine = run_spec.engine(spec, numpy_backend)
    batches: list[tuple[np.ndarray, np.ndarray]] = []

    def step(p: Any, x: Any, y: Any, s: Any, lr: float, theta: float) -> Any:
        # the minibatch's own inputs are its last num_steps rows (--no-detach hands the step
        # the whole epoch so far)
        batches.append((np.array(x)[-spec.num_steps :], np.array(y)))
        return engine.step(p, x, y, s, lr, theta)

    text = run_spec.load_text(spec, path)
    built = run_spec.build(spec, replace(engine, step=step), text, epochs, resumed, str(path))
    ops = engine.ops
    out: dict[str, Any] = {
        "vocab": text.corpus.vocab.idx_to_token,
        "init": model.to_numpy(ops, built.trainer.params),
        "epochs": [],
    }
    while built.trainer.epoch < epochs:
        batches.clear()
        result, entry = built.next_epoch()
        out["epochs"].append(
            {
                "minibatches": list(batches),
                "perplexity": result.perplexity,
                "params": model.to_numpy(ops, built.trainer.params),
                "heldout": entry.get("heldout_perplexity"),
                "book_perplexity": entry.get("book_perplexity"),
                "validation": {
                    "perplexity": entry["val_perplexity"],
                    "book_perplexity": entry["val_book_perplexity"],
                }
                if "val_perplexity" in entry
                else None,
            }
        )
    out["samples"] = [built.sample(prefix) for prefix in spec.prefixes]
    return built, out


def compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, str]:
    """The largest relative error between two runs' floats (initial parameters; each epoch's
    perplexities, the book's and the validation figures where the run has them, parameters),
    and the first integer mismatch (vocabulary, minibatch count or content, parameter names,
    greedy samples) in words; inf with it."""
    if got["vocab"] != want["vocab"]:
        return math.inf, "the vocabularies differ"
    if set(got["init"]) != set(want["init"]):
        return math.inf, f"initial parameters {sorted(got['init'])} != {sorted(want['init'])}"
    err = max_error(got["init"], want["init"])
    if len(got["epochs"]) != len(want["epochs"]):
        return math.inf, f"{len(got['epochs'])} epochs, not {len(want['epochs'])}"
    for k, (mine, theirs) in enumerate(zip(got["epochs"], want["epochs"], strict=True), 1):
        if len(mine["minibatches"]) != len(theirs["minibatches"]):
            n, m = len(mine["minibatches"]), len(theirs["minibatches"])
            return math.inf, f"epoch {k}: {n} minibatches, not {m}"
        for b, ((x, y), (rx, ry)) in enumerate(
            zip(mine["minibatches"], theirs["minibatches"], strict=True), 1
        ):
            if x.shape != rx.shape or y.shape != ry.shape or (x != rx).any() or (y != ry).any():
                return math.inf, f"epoch {k}, minibatch {b}: other tokens"
        if (mine["heldout"] is None) != (theirs["heldout"] is None):
            return math.inf, f"epoch {k}: a held-out perplexity on one side only"
        valid, their_valid = mine["validation"], theirs.get("validation")
        if (valid is None) != (their_valid is None):
            return math.inf, f"epoch {k}: a validation perplexity on one side only"
        if (mine["book_perplexity"] is None) != ("book_perplexity" not in theirs):
            return math.inf, f"epoch {k}: the book's training figure on one side only"
        pairs = [(mine["perplexity"], theirs["perplexity"])]
        if mine["heldout"] is not None:
            pairs.append((mine["heldout"], theirs["heldout"]))
        if mine["book_perplexity"] is not None:
            pairs.append((mine["book_perplexity"], theirs["book_perplexity"]))
        if valid is not None:
            pairs += [(valid[key], their_valid[key]) for key in ("perplexity", "book_perplexity")]
        for a, b in pairs:
            err = max(err, abs(a - b) / abs(b))
        err = max(err, max_error(mine["params"], theirs["params"]))
    if got["samples"] != want["samples"]:
        return math.inf, f"greedy samples {got['samples']} != {want['samples']}"
    return err, ""


def check_option(name: str) -> Cell:
    """The run of ``BASE`` with option ``name``, built as ``train`` builds it, against the
    reference's."""
    spec = replace(BASE, **OPTIONS[name])
    with tempfile.TemporaryDirectory() as folder:
        path = write_text(folder)
        _, got = core_run(spec, path, EPOCHS)
        want = reference_run(spec, path, EPOCHS)
    err, message = compare(got, want)
    return _cell(name, err, tolerance(DTYPE, "values"), message)


RESUMED: dict[str, dict[str, Any]] = {
    "resume": {"sampling": "random", "train_fraction": 0.9, "seed": 5},
    "resume-1.0": {**WINDOWS_1_0, "recipe": "d2l-1.0", "seed": 5},
}
"""The runs stopped after one epoch and resumed: 0.17's random sampling with a held-out part,
and 1.0's shuffled windows with validation."""


def check_resume(name: str = "resume") -> Cell:
    """A run checkpointed after one epoch, written to a file, read back and continued for
    another (``train --resume``), against the reference's two epochs without a stop: the
    parameters, the generator's draws and the minibatches continue as if never stopped."""
    spec = replace(BASE, **RESUMED[name])
    with tempfile.TemporaryDirectory() as folder:
        path = write_text(folder)
        first, _ = core_run(spec, path, 1)
        saved = Path(folder) / "run.safetensors"
        checkpoint.save(saved, *first.checkpoint())
        _, got = core_run(spec, path, 2, checkpoint.load_model(saved))
        want = reference_run(spec, path, 2)
    want["init"] = want["epochs"][0]["params"]  # the continued run starts from epoch 1's
    want["epochs"] = want["epochs"][1:]
    err, message = compare(got, want)
    return _cell(name, err, tolerance(DTYPE, "values"), message)


CONCISE = "train/recipe-1.0"
"""The oracles' check: the frameworks' own layers trained as d2l 1.0's concise chapters do."""


def check_concise(oracle: Any) -> Cell:
    """9.6, 10.1 and 10.2: the framework's own layer and dense output (``oracle``, in its dtype
    and on its device) trained by the recipe's trainer on the recipe's data: for each
    minibatch of one epoch of the reference's ``--recipe d2l-1.0`` run (``WINDOWS_1_0``, the
    last minibatch partial; lr 4 for the gated cells), the oracle's gradient from a zero state,
    clipped at θ as one norm, then SGD, against the reference's step from the same parameters;
    the worst error over the steps. Nothing of core runs."""
    cell = _reference_cell(replace(BASE, **run_spec.cell_settings(oracle.cell)))
    gated = GATED_1_0 if oracle.cell != "rnn" else {"recipe": "d2l-1.0"}
    spec = replace(BASE, **WINDOWS_1_0, **gated, **run_spec.cell_settings(oracle.cell))
    worst, at, where = 0.0, "", oracle.device
    try:
        with tempfile.TemporaryDirectory() as folder:
            run = reference_run(spec, write_text(folder), 1)
        params = run["init"]
        minibatches = run["epochs"][0]["minibatches"]
        if minibatches[-1][0].shape[1] == minibatches[0][0].shape[1]:
            raise AssertionError("the recipe's last minibatch is not the partial one")
        for i, (inputs, labels) in enumerate(minibatches):
            zeros = ref.init_state(cell, inputs.shape[1], spec.num_hiddens)
            _, grads, _ = ref.loss_and_grads(params, inputs, labels, zeros, cell=cell)
            want = ref.sgd(params, ref.grad_clipping(grads, spec.clip)[0], spec.lr)
            mine = {k: v.astype(oracle.dtype) for k, v in params.items()}
            _, theirs, _ = oracle.value_and_grad("autograd", mine, inputs, labels, zeros)
            theirs = {k: np.asarray(g, dtype=np.float64) for k, g in theirs.items()}
            got = ref.sgd(params, ref.grad_clipping(theirs, spec.clip)[0], spec.lr)
            err = max_error(got, want)
            if err > worst:
                worst, at = err, f"step {i + 1} of {len(minibatches)}"
            where, params = oracle.device, want
        if max_error(params, run["epochs"][0]["params"]) != 0.0:
            raise AssertionError("the steps do not retrace the reference's epoch")
        tol = tolerance(oracle.dtype, "values")
        message = "" if worst <= tol else f"the clipped SGD step differs most at {at}"
    except Exception as e:  # a layer that cannot run the recipe fails, never passes
        worst, tol, message = math.inf, 0.0, f"{type(e).__name__}: {first_line(e)}"
    passed = worst <= tol
    return Cell(CONCISE, oracle.label, oracle.dtype, where, worst, tol, passed, message, cell)


def _guarded(name: str, run: Callable[[], Cell]) -> Cell:
    """A check that raises fails with the error as its message: it never silently passes."""
    return reference_cells.guarded(f"run-{name}", run, model=None)


def tasks() -> list[tuple[str, Callable[[], Cell]]]:
    """Every ``reference/run-*`` check as (its name, the check not yet run)."""
    found: list[tuple[str, Callable[[], Cell]]] = [
        (
            f"reference/run-{name}",
            functools.partial(_guarded, name, functools.partial(check_option, name)),
        )
        for name in OPTIONS
    ]
    for name in RESUMED:
        check = functools.partial(_guarded, name, functools.partial(check_resume, name))
        found.append((f"reference/run-{name}", check))
    return found

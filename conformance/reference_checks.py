"""Core against the independent reference (``reference.py``): the checks that can see a mistake
every backend would inherit.

The backend checks compare each framework with NumPy float64 running the same core code; these
compare that core code, on NumPy float64, with a plain re-implementation of the chapter that
shares nothing with it. Integers (vocabularies, ids, minibatches, sampled tokens) must be equal;
floats agree to the float64 tolerance. Each check returns one ``reference/*`` cell; the model
checks run once per recurrent cell (``CELL_NAMES``: the chapter's RNN, d2l's two GRU
formulations and its LSTM), named alike and told apart by the Cell's ``cell``.

The random draws are made explicit on the reference's side as d2l defines them (an offset in
[0, num_steps] for sequential partitioning, [0, num_steps - 1] and a shuffle for random
sampling, one uniform per sampled token), drawn from a generator seeded like core's.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import cells, checkpoint, data, evaluation, model, sampling
from rosetta_rnn.core import run as run_spec
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.training import TrainConfig, Trainer, TrainingInterrupted

from . import reference as ref
from . import run_checks
from .checks import Cell, max_error
from .reference_cells import DTYPE
from .reference_cells import cell as _cell
from .reference_cells import exact as _exact
from .reference_cells import guarded as _guarded
from .tolerances import tolerance

TRAIN_EPOCHS = 3
SEED = 7

Arrays = dict[str, np.ndarray]

CORE_CELL: dict[str, str] = {
    "rnn": cells.RNN,
    "gru-reset-before": cells.GRU_RESET_BEFORE,
    "gru-reset-after": cells.GRU_RESET_AFTER,
    "lstm": cells.LSTM,
}
"""The cells as the reference and ``conform`` name them -> core's names."""
CELL_NAMES: tuple[str, ...] = tuple(CORE_CELL)


# --- data -----------------------------------------------------------------------------------


def check_vocab(corpus_path: str | Path | None, token: str) -> Cell:
    """The Time Machine read, tokenised, counted and numbered by core and by the reference."""
    name = f"vocab-{token}"

    def run() -> Cell:
        path = data.locate_time_machine(corpus_path)
        corpus = data.load_corpus(path, token)
        ids, vocab = ref.load_corpus_time_machine(path, token)
        bad = []
        if list(corpus.vocab.idx_to_token) != list(vocab.idx_to_token):
            pairs = zip(corpus.vocab.idx_to_token, vocab.idx_to_token, strict=False)
            first = next(
                (i for i, (a, b) in enumerate(pairs) if a != b),
                min(len(corpus.vocab), len(vocab)),
            )
            bad.append(f"the vocabularies differ from index {first}")
        if corpus.ids.tolist() != ids:
            bad.append(f"the ids differ ({len(corpus.ids)} tokens in core, {len(ids)} here)")
        limited = data.load_corpus(path, token, max_tokens=10000).ids.tolist()
        if limited != ref.load_corpus_time_machine(path, token, max_tokens=10000)[0]:
            bad.append("--max-tokens 10000 keeps other ids")
        return _exact(name, bad, None)

    return _guarded(name, run, None)


class _Forced:
    """A stand-in generator: records the ranges core asks for and answers with chosen draws."""

    def __init__(self, offset: int, order: np.ndarray | None = None) -> None:
        self.offset, self.order = offset, order
        self.asked: list[tuple[int, int]] = []

    def integers(self, low: int, high: int) -> int:
        self.asked.append((int(low), int(high)))
        return self.offset

    def permutation(self, x: Any) -> np.ndarray:
        assert self.order is not None
        return np.asarray(x)[self.order]


def _batches(batches: Iterator[tuple[np.ndarray, np.ndarray]] | list) -> list:
    return [(np.asarray(X).tolist(), np.asarray(Y).tolist()) for X, Y in batches]


ITERATOR_SHAPES = ((2, 3), (3, 5), (4, 7), (1, 4))


def check_iterators() -> Cell:
    """Both iterators at every offset for several shapes: the offset range core asks the
    generator for, and every minibatch, against the reference; a random epoch visits each
    subsequence once, in the drawn order."""
    name = "iterators"

    def run() -> Cell:
        stream = np.random.default_rng(SEED).integers(0, 11, 103)
        shuffle = np.random.default_rng(SEED + 1)
        bad = []
        for B, T in ITERATOR_SHAPES:
            for offset in range(T + 1):
                forced = _Forced(offset)
                got = _batches(data.seq_data_iter_sequential(stream, B, T, forced))  # type: ignore[arg-type]
                if forced.asked != [(0, T + 1)]:
                    bad.append(f"sequential B={B} T={T}: core draws the offset from {forced.asked}")
                if got != _batches(ref.seq_data_iter_sequential(stream.tolist(), B, T, offset)):
                    bad.append(f"sequential B={B} T={T} offset {offset}: other minibatches")
            for offset in range(T):
                n = (len(stream) - offset - 1) // T
                order = shuffle.permutation(n)
                forced = _Forced(offset, order)
                got = _batches(data.seq_data_iter_random(stream, B, T, forced))  # type: ignore[arg-type]
                if forced.asked != [(0, T)]:
                    bad.append(f"random B={B} T={T}: core draws the offset from {forced.asked}")
                want = ref.seq_data_iter_random(stream.tolist(), B, T, offset, order.tolist())
                if got != _batches(want):
                    bad.append(f"random B={B} T={T} offset {offset}: other minibatches")
                starts = [_start(stream, offset, row) for X, _ in got for row in X]
                used = (n // B) * B
                if starts != [offset + T * int(k) for k in order[:used]]:
                    bad.append(f"random B={B} T={T} offset {offset}: not the drawn subsequences")
        return _exact(name, bad, None)

    return _guarded(name, run, None)


def _start(stream: np.ndarray, offset: int, row: list[int]) -> int:
    """Where ``row`` begins in ``stream`` (at or after ``offset``, on the subsequence grid)."""
    T = len(row)
    for j in range(offset, len(stream) - T + 1, T):
        if stream[j : j + T].tolist() == row:
            return j
    return -1


def _core_init(
    cell: str, V: int, H: int, rng: np.random.Generator, embed_dim: int | None, forget_bias: float
) -> Arrays:
    """The initial parameters ``train`` draws for a run of ``cell`` (``core.run``'s)."""
    spec = run_spec.RunSpec(
        num_hiddens=H,
        embed_dim=embed_dim,
        dtype=DTYPE,
        forget_bias=forget_bias,
        **run_spec.cell_settings(CORE_CELL[cell]),
    )
    return run_spec.init_params(spec, V, rng)


def check_init(cell: str = "rnn") -> Cell:
    """core's ``init_params`` and the reference's ``get_params`` from the same seed, with and
    without a learned embedding; the LSTM's with forget bias 0 (d2l) and 1 (Keras)."""

    def run() -> Cell:
        err = 0.0
        for embed_dim in (None, 5):
            for forget_bias in (0.0, 1.0) if cell == "lstm" else (0.0,):
                got = _core_init(cell, 9, 12, np.random.default_rng(SEED), embed_dim, forget_bias)
                want = ref.get_cell_params(
                    cell,
                    9,
                    12,
                    np.random.default_rng(SEED),
                    forget_bias=forget_bias,
                    embed_dim=embed_dim,
                )
                if set(got) != set(want):
                    message = f"names {sorted(got)} vs {sorted(want)}"
                    return _cell("init", math.inf, 0.0, message, cell)
                err = max(err, max_error(got, want))
        return _cell("init", err, tolerance(DTYPE, "values"), model=cell)

    return _guarded("init", run, cell)


# --- training ----------------------------------------------------------------------------------

TRAIN_CORPUS_LENGTH = 160
TRAIN_VOCAB = 7


def _train_corpus() -> np.ndarray:
    """A stream with structure (a repeated phrase with a tenth of its tokens replaced)."""
    rng = np.random.default_rng(SEED)
    phrase = rng.integers(0, TRAIN_VOCAB, 13)
    stream = np.resize(phrase, TRAIN_CORPUS_LENGTH)
    noise = rng.random(TRAIN_CORPUS_LENGTH) < 0.1
    stream[noise] = rng.integers(0, TRAIN_VOCAB, int(noise.sum()))
    return stream


# name -> (TrainConfig overrides, what must hold of the clipping on every step)
TRAIN_MODES: dict[str, tuple[dict[str, Any], str]] = {
    "sequential": ({}, "any"),
    "random": ({"sampling": "random"}, "any"),
    "reset-state": ({"reset_state": True}, "any"),
    "clip-active": ({"clip": 0.05}, "active"),
    "clip-inactive": ({"clip": 1e6}, "inactive"),
    "no-clip": ({"clip": math.inf}, "inactive"),
    "last-step": ({"loss": "last-step"}, "any"),
    "learned-embedding": ({"embed_dim": 4}, "any"),
    "no-detach": ({"detach": False}, "any"),
    "relu": ({"activation": "relu", "lr": 0.2}, "any"),
}


def train_modes(cell: str) -> tuple[str, ...]:
    """The training modes of ``cell``: all for the RNN; a gated cell's φ is fixed (σ gates and
    tanh), so all but ``relu``."""
    return tuple(mode for mode in TRAIN_MODES if cell == "rnn" or mode != "relu")


def _config(overrides: dict[str, Any]) -> TrainConfig:
    base: dict[str, Any] = {"batch_size": 3, "num_steps": 5, "num_hiddens": 10, "lr": 1.0}
    return TrainConfig(**{"clip": 1.0, **base, **overrides})


def _reference_draws(rng: np.random.Generator, cfg: TrainConfig, length: int) -> dict[str, Any]:
    """d2l's draws for one epoch, from a generator seeded like core's."""
    return ref.epoch_draws(rng, cfg.sampling, cfg.num_steps, length)


def _start_params(cell: str, cfg: TrainConfig) -> Arrays:
    """The reference's ``get_params`` ×10 (normal × 0.1): gradient norms of 0.3–3 that clipping
    can act on, while the dynamics stay contracting (at ×30 the RNN's no-detach and last-step
    runs amplify rounding ~1e3 per epoch). The biases are zeros, so ×10 leaves them."""
    params = ref.get_cell_params(
        cell, TRAIN_VOCAB, cfg.num_hiddens, np.random.default_rng(SEED + 2), embed_dim=cfg.embed_dim
    )
    return {k: v * 10 for k, v in params.items()}


def _trainer(params: Arrays, cfg: TrainConfig, cell: str) -> Trainer:
    """core's training loop on NumPy float64 (BPTT), built as ``train`` builds a run's
    (``core.run``: the step told the cell and activation), its generator seeded SEED + 3."""
    spec = run_spec.spec_of(cfg, CORE_CELL[cell], dtype=DTYPE, seed=SEED + 3)
    engine = run_spec.engine(spec, numpy_backend)
    rng = np.random.default_rng(spec.seed)
    return run_spec.trainer(spec, engine.ops, engine.step, params, _train_corpus(), cfg.epochs, rng)


_trained: dict[str, dict[str, Any]] = {}


def train_both(
    overrides: dict[str, Any], epochs: int = TRAIN_EPOCHS, cell: str = "rnn"
) -> dict[str, Any]:
    """Train core (NumPy float64, BPTT) and the reference from the same parameters and seed:
    per epoch the parameters, the perplexity and every step's gradient norm. Cached: the
    training checks and the perplexity check share the runs."""
    key = repr((cell, sorted(overrides.items()), epochs))
    if key not in _trained:
        _trained[key] = _train_both(overrides, epochs, cell)
    return _trained[key]


def _train_both(overrides: dict[str, Any], epochs: int, cell: str) -> dict[str, Any]:
    cfg = _config(overrides)
    corpus = _train_corpus()
    mine = _start_params(cell, cfg)
    trainer = _trainer(mine, cfg, cell)
    draws = np.random.default_rng(SEED + 3)
    out: dict[str, Any] = {"core": [], "reference": [], "config": cfg, "trainer": trainer}
    for _ in range(epochs):
        result = trainer.run_epoch()
        out["core"].append(
            {
                "params": model.to_numpy(trainer.ops, trainer.params),
                "perplexity": result.perplexity,
                "norms": list(result.grad_norms),
            }
        )
        mine, perplexity, steps = ref.train_epoch(
            mine,
            corpus.tolist(),
            cfg.batch_size,
            cfg.num_steps,
            cfg.lr,
            cfg.clip,
            sampling=cfg.sampling,
            reset_state=cfg.reset_state,
            detach=cfg.detach,
            last_step=cfg.loss == "last-step",
            activation=cfg.activation,
            cell=cell,
            **_reference_draws(draws, cfg, len(corpus)),
        )
        out["reference"].append(
            {"params": mine, "perplexity": perplexity, "norms": [n for _, n in steps]}
        )
    return out


def check_train(mode: str, cell: str = "rnn") -> Cell:
    """``TRAIN_EPOCHS`` epochs of core's training loop against the reference's: the parameters
    after every epoch and every step's gradient norm."""
    name = f"train/{mode}"
    overrides, clipping = TRAIN_MODES[mode]

    def run() -> Cell:
        both = train_both(overrides, cell=cell)
        theta = both["config"].clip
        norms = [n for epoch in both["reference"] for n in epoch["norms"]]
        if clipping == "active" and not all(n > theta for n in norms):
            return _cell(name, math.inf, 0.0, "the case does not clip on every step", cell)
        if clipping == "inactive" and not all(n < theta for n in norms):
            return _cell(name, math.inf, 0.0, "the case clips", cell)
        if [len(e["norms"]) for e in both["core"]] != [len(e["norms"]) for e in both["reference"]]:
            return _cell(name, math.inf, 0.0, "another number of minibatches per epoch", cell)
        err = 0.0
        for got, want in zip(both["core"], both["reference"], strict=True):
            err = max(err, max_error(got["params"], want["params"]))
            err = max(err, max_error({"n": np.array(got["norms"])}, {"n": np.array(want["norms"])}))
        return _cell(name, err, tolerance(DTYPE, "values"), model=cell)

    return _guarded(name, run, cell)


def check_perplexity(cell: str = "rnn") -> Cell:
    """The per-epoch perplexity (exp of the label-weighted mean loss) in every training mode."""

    def run() -> Cell:
        err = 0.0
        for mode in train_modes(cell):
            both = train_both(TRAIN_MODES[mode][0], cell=cell)
            got = np.array([e["perplexity"] for e in both["core"]])
            want = np.array([e["perplexity"] for e in both["reference"]])
            err = max(err, max_error({"ppl": got}, {"ppl": want}))
        return _cell("perplexity", err, tolerance(DTYPE, "values"), model=cell)

    return _guarded("perplexity", run, cell)


# --- generation and checkpoints --------------------------------------------------------------

# (prefix, temperature, alpha): greedy, temperatures and α ≠ 1, one and several prefix tokens
GENERATION_CASES: tuple[tuple[tuple[int, ...], float | None, float | None], ...] = (
    ((3,), None, None),
    ((3, 1, 4, 1, 5), None, None),
    ((5, 2), None, None),
    ((2,), 0.6, None),
    ((2, 6, 5, 3), 1.7, None),
    ((0,), None, 0.5),
    ((4, 4, 2), None, 3.0),
)


GENERATE_EPOCHS = 6
"""Generation uses parameters trained this long: the prefix then decides some of the tokens in
every cell (after 2 epochs the gated cells' tokens were the same with and without the
warm-up in all seven cases, so a generation that skipped it would pass)."""


def check_generate(cell: str = "rnn") -> Cell:
    """``predict`` after a warm-up on the prefix, greedy and sampled, against the reference's
    ``predict_ch8`` given the same uniforms. α is sampled by core as temperature 1/α."""

    def run() -> Cell:
        both = train_both({}, epochs=GENERATE_EPOCHS, cell=cell)
        params = both["core"][-1]["params"]
        ops = numpy_backend.make_ops(DTYPE, "cpu")
        P = model.to_backend(ops, params)
        bad = []
        for prefix, temperature, alpha in GENERATION_CASES:
            T = temperature if alpha is None else 1.0 / alpha
            got = sampling.predict(
                ops, P, list(prefix), 40, temperature=T, rng=np.random.default_rng(SEED)
            )
            uniforms = np.random.default_rng(SEED).random(40).tolist()
            want = ref.predict(
                list(prefix),
                40,
                params,
                cell=cell,
                temperature=temperature,
                alpha=alpha,
                uniforms=uniforms if temperature or alpha else None,
            )
            if got != want:
                first = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
                bad.append(f"prefix {prefix} T={temperature} α={alpha}: differs at token {first}")
        return _exact("generate", bad, cell)

    return _guarded("generate", run, cell)


def check_eval(cell: str = "rnn") -> Cell:
    """``rosetta-rnn eval``'s perplexity on a text (chunks of num_steps, the state carried: the
    LSTM's (H, C) both) against the reference's one pass over the whole text from zeros, every
    next token predicted; the RNN with tanh and relu; chunk lengths that do and do not divide
    the text."""

    def run() -> Cell:
        both = train_both({}, cell=cell)  # the train/sequential run's parameters
        params = both["core"][-1]["params"]
        ops = numpy_backend.make_ops(DTYPE, "cpu")
        P = model.to_backend(ops, params)
        ids = _train_corpus()[:61]
        zeros = ref.init_state(cell, 1, params["W_hq"].shape[0])
        err = 0.0
        for activation in ("tanh", "relu") if cell == "rnn" else ("tanh",):
            logits, _ = ref.forward(ids[:-1].reshape(-1, 1), zeros, params, cell, activation)
            z = logits - logits.max(axis=1, keepdims=True)
            log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            want = math.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean())
            for num_steps in (1, 7, 12, 60, 100):
                got, n = evaluation.perplexity_on(ops, P, ids, num_steps, activation)
                if n != len(ids) - 1:
                    message = f"{n} tokens predicted, not {len(ids) - 1}"
                    return _cell("eval", math.inf, 0.0, message, cell)
                err = max(err, abs(got - want) / want)
        return _cell("eval", err, tolerance(DTYPE, "values"), model=cell)

    return _guarded("eval", run, cell)


def _documented_shapes(names: Sequence[str], V: int, H: int, B: int) -> dict[str, tuple[int, ...]]:
    """The checkpoint's orientation, d2l's: W_x· (V, H), W_h· (H, H), b_· (H,), W_hq (H, V),
    b_q (V,); the carried state and the LSTM's memory ``state_c`` (batch_size, H)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        if name in ("state", "state_c"):
            shapes[name] = (B, H)
        elif name == "W_hq":
            shapes[name] = (H, V)
        elif name == "b_q":
            shapes[name] = (V,)
        elif name.startswith("W_x"):
            shapes[name] = (V, H)
        elif name.startswith("W_h"):
            shapes[name] = (H, H)
        elif name.startswith("b_"):
            shapes[name] = (H,)
    return shapes


def _read_back(tensors: Arrays, position: dict[str, Any]) -> Arrays:
    """``tensors`` saved by core's ``checkpoint.save``, read with the ``safetensors`` package."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UserError(
            "reference/checkpoint reads with the safetensors package: "
            "pip install 'rosetta-rnn[test]'"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        checkpoint.save(path, tensors, {"epoch": position["epoch"], "position": position})
        return load_file(str(path))


def _first_step(cell: str) -> Arrays:
    """The reference's first minibatch of the sequential epoch: the parameters after its SGD
    step, and the state it hands to the next minibatch (``state``, the LSTM's C ``state_c``)."""
    cfg = _config({})
    start = _start_params(cell, cfg)
    offset = _reference_draws(np.random.default_rng(SEED + 3), cfg, TRAIN_CORPUS_LENGTH)["offset"]
    batches = ref.seq_data_iter_sequential(
        _train_corpus().tolist(), cfg.batch_size, cfg.num_steps, offset
    )
    X, Y = batches[0]
    zeros = ref.init_state(cell, cfg.batch_size, cfg.num_hiddens)
    _, grads, state = ref.loss_and_grads(start, X.T, Y.T, zeros, cell=cell)
    grads, _ = ref.grad_clipping(grads, cfg.clip)
    after = ref.sgd(start, grads, cfg.lr)
    if cell == "lstm":
        return {**after, "state": state[0], "state_c": state[1]}
    return {**after, "state": state}


def check_checkpoint(cell: str = "rnn") -> Cell:
    """Checkpoints written by core, read with the ``safetensors`` package alone, tensor by
    tensor in the documented orientation (``_documented_shapes``): one after two epochs
    against the reference's trained parameters, and one stopped after the first minibatch,
    whose carried state (the LSTM's H and C) is the reference's after that minibatch."""

    def run() -> Cell:
        both = train_both({}, cell=cell)  # the train/sequential run
        read = _read_back(*both["trainer"].snapshot())
        want = both["reference"][-1]["params"]
        cfg = _config({})
        stopped = _trainer(_start_params(cell, cfg), cfg, cell)
        try:
            stopped.run_epoch(stop_requested=lambda: True)
        except TrainingInterrupted:
            pass
        else:
            return _cell("checkpoint", math.inf, 0.0, "the trainer ran past the stop", cell)
        read_first = _read_back(*stopped.snapshot())
        want_first = _first_step(cell)
        err = 0.0
        V, H = want["b_q"].shape[0], want["W_hq"].shape[0]
        for got, expected in ((read, want), (read_first, want_first)):
            if set(got) != set(expected):
                message = f"tensors {sorted(got)} vs {sorted(expected)}"
                return _cell("checkpoint", math.inf, 0.0, message, cell)
            shapes = _documented_shapes(list(expected), V, H, cfg.batch_size)
            wrong = [f"{k} is {got[k].shape}" for k, s in shapes.items() if got[k].shape != s]
            if wrong:
                return _cell("checkpoint", math.inf, 0.0, "; ".join(wrong), cell)
            err = max(err, max_error(got, expected))
        return _cell("checkpoint", err, tolerance(DTYPE, "values"), model=cell)

    return _guarded("checkpoint", run, cell)


def model_checks(cell: str) -> list[tuple[str, Callable[[], Cell]]]:
    """The checks of one cell as (check name, the check not yet run)."""
    checks: list[tuple[str, Callable[[], Cell]]] = [("init", functools.partial(check_init, cell))]
    checks += [
        (f"train/{mode}", functools.partial(check_train, mode, cell)) for mode in train_modes(cell)
    ]
    checks += [
        ("perplexity", functools.partial(check_perplexity, cell)),
        ("eval", functools.partial(check_eval, cell)),
        ("generate", functools.partial(check_generate, cell)),
        ("checkpoint", functools.partial(check_checkpoint, cell)),
    ]
    return checks


def tasks(
    corpus_path: str | Path | None = None, cells: Sequence[str] = CELL_NAMES
) -> list[tuple[str, Callable[[], Cell]]]:
    """Every ``reference/*`` check as (its task's name, the check not yet run), in order, so a
    caller can count and show them. ``corpus_path``: The Time Machine (else core's lookup).

    The data checks (vocabularies, iterators) and the whole runs built as ``train`` builds them
    (``run_checks``, each option's cell in its name) always run; the model checks
    run for each of ``cells`` (``conform``'s names or core's: ``gru-reset-after`` or
    ``gru/reset-after``), their tasks named like the runner's, ``reference/init [lstm]``."""
    labels = [c.replace("/", "-") for c in cells]
    unknown = [c for c in labels if c not in CORE_CELL]
    if unknown:
        raise UserError(f"unknown cell {unknown[0]!r}; choose from {', '.join(CELL_NAMES)}")
    _trained.clear()  # core may have changed since the last call (the tests patch it)
    found: list[tuple[str, Callable[[], Cell]]] = [
        ("reference/vocab-char", lambda: check_vocab(corpus_path, "char")),
        ("reference/vocab-word", lambda: check_vocab(corpus_path, "word")),
        ("reference/iterators", check_iterators),
        *run_checks.tasks(),
    ]
    for cell in dict.fromkeys(labels):
        found += [(f"reference/{name} [{cell}]", run) for name, run in model_checks(cell)]
    return found


def run_all(corpus_path: str | Path | None = None, cells: Sequence[str] = CELL_NAMES) -> list[Cell]:
    """Every ``reference/*`` cell (see ``tasks``)."""
    return [run() for _, run in tasks(corpus_path, cells)]

"""Core against the independent reference (conformance/reference.py): every reference/* cell
passes, for every recurrent cell, and mistakes planted in core, of the kind every backend would
inherit, fail the cell meant to see them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.conformance import reference_checks as rc
from rosetta_rnn.conformance.checks import Cell
from rosetta_rnn.core import cells, checkpoint, data, evaluation, model, sampling
from rosetta_rnn.core import training as training_mod
from rosetta_rnn.core.errors import UserError

CELLS = ("rnn", "gru-reset-before", "gru-reset-after", "lstm")
DATA_CHECKS = (
    "vocab-char",
    "vocab-word",
    "iterators",
    *(f"run-{name}" for name in (*rc.run_checks.OPTIONS, *rc.run_checks.RESUMED)),
)


def model_checks(cell: str) -> list[str]:
    """What each cell is checked on: every training mode, but relu for a gated cell."""
    modes = [m for m in rc.TRAIN_MODES if cell == "rnn" or m != "relu"]
    return ["init", *(f"train/{m}" for m in modes), "perplexity", "eval", "generate", "checkpoint"]


# (check, cell): cell None for the data checks, which involve none
CASES: list[tuple[str, str | None]] = [(name, None) for name in DATA_CHECKS] + [
    (name, cell) for cell in CELLS for name in model_checks(cell)
]


def task_name(name: str, cell: str | None) -> str:
    return f"reference/{name}" if cell is None else f"reference/{name} [{cell}]"


def run_check(name: str, cell: str | None, corpus: Path) -> Cell:
    """The one reference check (name, cell), run as ``conform`` runs it: from rc.tasks."""
    found = dict(rc.tasks(corpus, cells=[] if cell is None else [cell]))
    return found[task_name(name, cell)]()


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    rc._trained.clear()  # every test trains with the core it patched


@pytest.mark.parametrize(("name", "cell"), CASES, ids=[task_name(n, c)[10:] for n, c in CASES])
def test_core_agrees_with_the_reference(name: str, cell: str | None, timemachine: Path) -> None:
    result = run_check(name, cell, timemachine)
    assert (result.check, result.cell) == (f"reference/{name}", cell)
    assert result.backend == "core" and result.dtype == "float64"
    assert result.passed, f"{result.max_error} > {result.tolerance}: {result.message}"


def test_the_tasks_are_one_per_check_and_cell(timemachine: Path) -> None:
    assert [name for name, _ in rc.tasks(timemachine)] == [task_name(n, c) for n, c in CASES]
    lstm_only = [name for name, _ in rc.tasks(timemachine, cells=["lstm"])]
    assert lstm_only == [task_name(n, None) for n in DATA_CHECKS] + [
        task_name(n, "lstm") for n in model_checks("lstm")
    ]
    # core's names for the cells are taken too (conform's runner passes those)
    assert [name for name, _ in rc.tasks(timemachine, cells=[cells.GRU_RESET_AFTER])][-1] == (
        "reference/checkpoint [gru-reset-after]"
    )
    with pytest.raises(UserError, match="unknown cell 'gru'"):
        rc.tasks(timemachine, cells=["gru"])
    assert rc.CELL_NAMES == CELLS == rc.ref.CELLS


def test_a_missing_corpus_fails_the_vocab_cells(tmp_path: Path) -> None:
    cell = rc.check_vocab(tmp_path / "absent.txt", "char")
    assert not cell.passed and "corpus file not found" in cell.message


# --- planted mistakes: each is caught by the cell meant for it ----------------------------------


def _fault_offset_range(mp: pytest.MonkeyPatch) -> None:
    real = data.seq_data_iter_sequential

    class NarrowRng:  # the offset from [0, num_steps - 1] instead of d2l's [0, num_steps]
        def __init__(self, rng: Any) -> None:
            self.rng = rng

        def integers(self, low: int, high: int) -> int:
            return int(self.rng.integers(low, high - 1))

    def sequential(corpus, batch_size, num_steps, rng):  # type: ignore[no-untyped-def]
        return real(corpus, batch_size, num_steps, NarrowRng(rng))

    mp.setattr(data, "seq_data_iter_sequential", sequential)


def _fault_random_keeps_order(mp: pytest.MonkeyPatch) -> None:
    real = data.seq_data_iter_random

    class NoShuffle:
        def __init__(self, rng: Any) -> None:
            self.rng = rng

        def integers(self, low: int, high: int) -> int:
            return int(self.rng.integers(low, high))

        def permutation(self, x: Any) -> Any:
            self.rng.permutation(x)  # the draw is made, its result ignored
            return np.asarray(x)

    def random(corpus, batch_size, num_steps, rng):  # type: ignore[no-untyped-def]
        return real(corpus, batch_size, num_steps, NoShuffle(rng))

    mp.setattr(data, "seq_data_iter_random", random)


def _fault_vocab_ties_alphabetical(mp: pytest.MonkeyPatch) -> None:
    real_init = data.Vocab.__init__

    def init(self, tokens=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, tokens, *args, **kwargs)
        counts: dict[str, int] = {}
        for line in tokens or []:
            for t in line:
                counts[t] = counts.get(t, 0) + 1
        body = sorted(self.idx_to_token[1:], key=lambda t: (-counts.get(t, 0), t))
        self.idx_to_token = [self.idx_to_token[0], *body]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    mp.setattr(data.Vocab, "__init__", init)


def _fault_clip_epsilon(mp: pytest.MonkeyPatch) -> None:
    def clip(ops, grads, theta):  # type: ignore[no-untyped-def]
        norm = model.global_norm(ops, grads)
        scale = ops.minimum(1.0, theta / (norm + 1e-6))
        return {k: grads[k] * scale for k in model.param_names(grads)}, norm

    mp.setattr(model, "clip_by_global_norm", clip)


def _fault_lr_halved(mp: pytest.MonkeyPatch) -> None:
    real = model.sgd
    mp.setattr(model, "sgd", lambda ops, params, grads, lr: real(ops, params, grads, lr / 2))


def _fault_perplexity_of_means(mp: pytest.MonkeyPatch) -> None:
    """The mean of the minibatches' perplexities instead of exp of the mean loss."""
    real = training_mod._Totals.add

    def add(self, loss_sum, tokens, norm):  # type: ignore[no-untyped-def]
        real(self, loss_sum, tokens, norm)
        self._perplexities = [*getattr(self, "_perplexities", []), math.exp(loss_sum / tokens)]
        self.loss_sum = math.log(float(np.mean(self._perplexities))) * self.tokens

    mp.setattr(training_mod._Totals, "add", add)


def _fault_temperature_multiplies(mp: pytest.MonkeyPatch) -> None:
    def next_token(ops, logits, temperature, rng):  # type: ignore[no-untyped-def]
        if not temperature:
            return sampling.greedy_choice(ops.to_numpy(logits))
        probs = ops.to_numpy(model.softmax(ops, logits * temperature))
        return sampling.inverse_cdf_choice(probs, float(rng.random()))

    mp.setattr(sampling, "next_token", next_token)


def _fault_no_warm_up(mp: pytest.MonkeyPatch) -> None:
    real = sampling.predict

    def predict(ops, params, prefix, num_preds, **kwargs):  # type: ignore[no-untyped-def]
        out = real(ops, params, list(prefix)[-1:], num_preds, **kwargs)
        return list(prefix[:-1]) + out

    mp.setattr(sampling, "predict", predict)


def _fault_checkpoint_transposed(mp: pytest.MonkeyPatch) -> None:
    real = checkpoint.save

    def save(path, tensors, metadata):  # type: ignore[no-untyped-def]
        real(path, {**tensors, "W_xh": np.ascontiguousarray(tensors["W_xh"].T)}, metadata)

    mp.setattr(checkpoint, "save", save)


def _fault_init_order(mp: pytest.MonkeyPatch) -> None:
    real = model.init_params

    def init(vocab_size, num_hiddens, rng, dtype="float64", sigma=0.01, embed_dim=None):  # type: ignore[no-untyped-def]
        W_hh = rng.standard_normal((num_hiddens, num_hiddens)) * sigma  # drawn first
        params = real(vocab_size, num_hiddens, rng, dtype, sigma, embed_dim)
        return {**params, "W_hh": W_hh.astype(dtype)}

    mp.setattr(model, "init_params", init)


def _fault_eval_resets_the_state(mp: pytest.MonkeyPatch) -> None:
    real = model.forward_loss

    def forward_loss(ops, params, inputs, labels, state, activation="tanh", cell=None):  # type: ignore[no-untyped-def]
        return real(ops, params, inputs, labels, state * 0, activation)  # the RNN's: no cell

    mp.setattr(evaluation, "forward_loss", forward_loss)


def _fault_gru_update_swapped(mp: pytest.MonkeyPatch) -> None:
    """H = (1 − Z) ⊙ H_prev + Z ⊙ H̃: the book's update with Z = σ(A_z) in place of 1 − Z =
    σ(−A_z), so core's own GRU on the z gate's negated weights, forward and backward: the
    gradients are the swapped model's, as autodiff of a swapped forward would give them."""
    real_forward, real_backward = cells._gru_forward, cells._gru_backward
    z = ("W_xz", "W_hz", "b_z")

    def negated(params):  # type: ignore[no-untyped-def]
        return {**params, **{k: -params[k] for k in z}}

    def forward(ops, params, inputs, state, reset_after):  # type: ignore[no-untyped-def]
        return real_forward(ops, negated(params), inputs, state, reset_after)

    def backward(ops, params, X, state, cache, dHs, reset_after):  # type: ignore[no-untyped-def]
        grads, dstate, dAs = real_backward(ops, negated(params), X, state, cache, dHs, reset_after)
        return {**grads, **{k: -grads[k] for k in z}}, dstate, {**dAs, "z": -dAs["z"]}

    mp.setattr(cells, "_gru_forward", forward)
    mp.setattr(cells, "_gru_backward", backward)


def _fault_reset_after_computed_reset_before(mp: pytest.MonkeyPatch) -> None:
    """The reset-after candidate tanh(X W_xh + b_xh + R ⊙ (H W_hh + b_hh)) computed the
    book's way, tanh(X W_xh + b_xh + (R ⊙ H) W_hh + b_hh): core's reset-before code with
    b_h = b_xh + b_hh, forward and backward."""
    real_forward, real_backward = cells._gru_forward, cells._gru_backward

    def as_before(params):  # type: ignore[no-untyped-def]
        return {**params, "b_h": params["b_xh"] + params["b_hh"]} if "b_xh" in params else params

    def forward(ops, params, inputs, state, reset_after):  # type: ignore[no-untyped-def]
        return real_forward(ops, as_before(params), inputs, state, False)

    def backward(ops, params, X, state, cache, dHs, reset_after):  # type: ignore[no-untyped-def]
        grads, dstate, dAs = real_backward(ops, as_before(params), X, state, cache, dHs, False)
        if reset_after:  # b_h = b_xh + b_hh: both get b_h's gradient
            grads = {**grads, "b_xh": grads["b_h"], "b_hh": grads.pop("b_h")}
        return grads, dstate, dAs

    mp.setattr(cells, "_gru_forward", forward)
    mp.setattr(cells, "_gru_backward", backward)


def _fault_lstm_gates_in_torch_order(mp: pytest.MonkeyPatch) -> None:
    """The LSTM's gates drawn in torch's order (i, f, c, o), not the book's (i, f, o, c)."""
    rows = cells.PARAMS[cells.LSTM]
    output = [row for row in rows if row[0] in ("W_hq", "b_q")]
    gates = sorted((row for row in rows if row not in output), key=lambda r: "ifco".index(r[0][-1]))
    mp.setitem(cells.PARAMS, cells.LSTM, (*gates, *output))


def _fault_forget_bias_always_one(mp: pytest.MonkeyPatch) -> None:
    real = cells.init_params

    def init(cell, V, H, rng, dtype="float64", sigma=0.01, forget_bias=0.0, embed_dim=None):  # type: ignore[no-untyped-def]
        forget_bias = 1.0 if cell == cells.LSTM else forget_bias  # 1 where 0 was asked
        return real(cell, V, H, rng, dtype, sigma, forget_bias, embed_dim)

    mp.setattr(cells, "init_params", init)


def _fault_lstm_candidate_sigmoid(mp: pytest.MonkeyPatch) -> None:
    """C̃ = σ(X W_xc + H W_hc + b_c) where the book has tanh, forward and backward (σ' =
    σ(1 − σ) where tanh' = 1 − tanh² was): core's LSTM with that one change."""

    def forward(ops, params, inputs, state):  # type: ignore[no-untyped-def]
        W_h = [params[f"W_h{g}"] for g in "ifoc"]
        X = cells._inputs(ops, params, inputs)
        xs = tuple(cells._projection(ops, params, inputs, X, g, f"b_{g}") for g in "ifoc")

        def step(carry, x):  # type: ignore[no-untyped-def]
            H, C = carry
            I, F, O, C_tilde = (
                cells.sigmoid(ops, a + ops.matmul(H, W)) for a, W in zip(x, W_h, strict=True)
            )
            C = F * C + I * C_tilde
            tanh_C = ops.tanh(C)
            H = O * tanh_C
            return (H, C), (H, C, I, F, O, C_tilde, tanh_C)

        return ops.scan(step, (state[0], state[1]), xs)

    def backward(ops, params, X, state, cache, dHs):  # type: ignore[no-untyped-def]
        Hs, Cs, Is, Fs, Os, C_tildes, tanh_Cs = cache
        H_prevs = cells._previous(ops, state[0], Hs)
        W_h_T = [ops.transpose(params[f"W_h{g}"]) for g in "ifoc"]

        def back(carry, x):  # type: ignore[no-untyped-def]
            dH_next, dC_next = carry
            dH_out, C_prev, I, F, O, C_tilde, tanh_C = x
            dH = dH_out + dH_next
            dC = dC_next + dH * O * (1 - tanh_C * tanh_C)
            dAs = (
                dC * C_tilde * I * (1 - I),
                dC * C_prev * F * (1 - F),
                dH * tanh_C * O * (1 - O),
                dC * I * C_tilde * (1 - C_tilde),
            )
            dH_prev = sum(ops.matmul(dA, W) for dA, W in zip(dAs[1:], W_h_T[1:], strict=True))
            return (ops.matmul(dAs[0], W_h_T[0]) + dH_prev, dC * F), dAs

        C_prevs = cells._previous(ops, state[1], Cs)
        xs = (dHs, C_prevs, Is, Fs, Os, C_tildes, tanh_Cs)
        zeros = tuple(ops.zeros(tuple(s.shape)) for s in state)
        dstate, dAs = ops.scan(back, zeros, xs, reverse=True)
        grads = {}
        for g, dA in zip("ifoc", dAs, strict=True):
            grads[f"W_x{g}"] = cells._weight_grad(ops, X, dA)
            grads[f"W_h{g}"] = cells._weight_grad(ops, H_prevs, dA)
            grads[f"b_{g}"] = cells._bias_grad(ops, dA)
        return grads, (dstate[0], dstate[1]), dict(zip("ifoc", dAs, strict=True))

    mp.setattr(cells, "_lstm_forward", forward)
    mp.setattr(cells, "_lstm_backward", backward)


def _fault_eval_restarts_the_memory(mp: pytest.MonkeyPatch) -> None:
    """eval carries the LSTM's H from chunk to chunk but starts every chunk's C from zeros."""
    real = evaluation.forward_loss

    def forward_loss(ops, params, inputs, labels, state, activation="tanh", cell=None):  # type: ignore[no-untyped-def]
        if isinstance(state, tuple):
            state = (state[0], state[1] * 0)
        return real(ops, params, inputs, labels, state, activation, cell)

    mp.setattr(evaluation, "forward_loss", forward_loss)


def _fault_checkpoint_swaps_h_and_c(mp: pytest.MonkeyPatch) -> None:
    """A mid-epoch checkpoint holding the LSTM's C as ``state`` and H as ``state_c``."""
    real = training_mod.Trainer.snapshot

    def snapshot(self):  # type: ignore[no-untyped-def]
        tensors, position = real(self)
        if "state_c" in tensors:
            tensors = {**tensors, "state": tensors["state_c"], "state_c": tensors["state"]}
        return tensors, position

    mp.setattr(training_mod.Trainer, "snapshot", snapshot)


FAULTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[tuple[str, str | None]]]] = {
    "sequential offset drawn from [0, T-1]": (_fault_offset_range, [("iterators", None)]),
    "random sampling without the shuffle": (_fault_random_keeps_order, [("train/random", "rnn")]),
    "vocabulary ties broken alphabetically": (
        _fault_vocab_ties_alphabetical,
        [("vocab-word", None)],
    ),
    "clipping with an epsilon": (
        _fault_clip_epsilon,
        [("train/clip-active", cell) for cell in CELLS],
    ),
    "SGD with half the learning rate": (
        _fault_lr_halved,
        [("train/sequential", cell) for cell in CELLS] + [("train/random", "rnn")],
    ),
    "perplexity as the mean of per-minibatch perplexities": (
        _fault_perplexity_of_means,
        [("perplexity", "rnn"), ("perplexity", "lstm")],
    ),
    "temperature multiplies the logits": (
        _fault_temperature_multiplies,
        [("generate", "rnn"), ("generate", "gru-reset-before")],
    ),
    "generation without the warm-up": (
        _fault_no_warm_up,
        [("generate", "rnn"), ("generate", "lstm")],
    ),
    "checkpoint stores W_xh transposed": (_fault_checkpoint_transposed, [("checkpoint", "rnn")]),
    "init draws W_hh first": (_fault_init_order, [("init", "rnn")]),
    "eval restarts the state every chunk": (_fault_eval_resets_the_state, [("eval", "rnn")]),
    # the gated cells
    "GRU update with Z and 1 - Z swapped": (
        _fault_gru_update_swapped,
        [
            ("train/sequential", "gru-reset-before"),
            ("eval", "gru-reset-before"),
            ("generate", "gru-reset-before"),
            ("train/sequential", "gru-reset-after"),
            ("eval", "gru-reset-after"),
        ],
    ),
    "reset-after candidate computed reset-before": (
        _fault_reset_after_computed_reset_before,
        [("train/sequential", "gru-reset-after"), ("eval", "gru-reset-after")],
    ),
    "LSTM gates drawn in torch's order": (_fault_lstm_gates_in_torch_order, [("init", "lstm")]),
    "forget bias 1 where 0 was asked": (_fault_forget_bias_always_one, [("init", "lstm")]),
    "LSTM candidate with sigmoid instead of tanh": (
        _fault_lstm_candidate_sigmoid,
        [("train/sequential", "lstm"), ("eval", "lstm"), ("generate", "lstm")],
    ),
    "eval restarts the LSTM's memory every chunk": (
        _fault_eval_restarts_the_memory,
        [("eval", "lstm")],
    ),
    "checkpoint swaps the LSTM's H and C": (
        _fault_checkpoint_swaps_h_and_c,
        [("checkpoint", "lstm")],
    ),
}
"""Each planted mistake -> the cells that must fail with it."""

UNTOUCHED: dict[str, list[tuple[str, str]]] = {
    "GRU update with Z and 1 - Z swapped": [("eval", "lstm"), ("eval", "rnn")],
    "reset-after candidate computed reset-before": [("eval", "gru-reset-before")],
    "LSTM gates drawn in torch's order": [("init", "gru-reset-before")],
    "forget bias 1 where 0 was asked": [("init", "gru-reset-after")],
    "eval restarts the LSTM's memory every chunk": [("eval", "gru-reset-after")],
}
"""Some mistakes of one cell, and cells of another cell that must still pass with them: the
plant is confined to what it names."""


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_planted_core_mistake_fails_its_cell(
    fault: str, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant, failing = FAULTS[fault]
    plant(monkeypatch)
    for name, cell in failing:
        result = run_check(name, cell, timemachine)
        assert not result.passed, f"{fault} went through {task_name(name, cell)}"
        assert "Error:" not in result.message, f"{fault} crashed the check: {result.message}"
    for name, cell in UNTOUCHED.get(fault, []):
        result = run_check(name, cell, timemachine)
        assert result.passed, f"{fault} failed {task_name(name, cell)}: {result.message}"


def test_conform_json_holds_the_reference_cells(
    timemachine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    base = ["conform", "--backends", "numpy", "--dtype", "float64", "--no-oracles", "--json"]
    # two of the four cells: the backend matrix runs for each asked-for cell too, and the
    # gated cells' take minutes on two cores; every cell's reference checks run above
    asked = ("rnn", "gru-reset-after")
    assert main([*base, "--corpus", str(timemachine), "--cells", *asked]) == 0
    doc = json.loads(capsys.readouterr().out)
    ref_cells = [c for c in doc["cells"] if c["check"].startswith("reference/")]
    assert [(c["check"], c["cell"]) for c in ref_cells] == [
        (f"reference/{name}", cell) for name, cell in CASES if cell in (None, *asked)
    ]
    assert doc["passed"] and all(c["passed"] for c in ref_cells)
    assert any(c["backend"] == "numpy" for c in doc["cells"])  # the backend matrix ran too

    assert main([*base, "--no-reference", "--cells", "rnn"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cells"] and not any(c["check"].startswith("reference/") for c in doc["cells"])


def test_conform_without_the_corpus_fails_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    argv = ["conform", "--backends", "numpy", "--dtype", "float64", "--no-oracles"]
    assert main([*argv, "--cells", "rnn", "--corpus", str(tmp_path / "absent.txt")]) == 1
    out = capsys.readouterr().out
    assert "FAIL reference/vocab-char" in out and "corpus file not found" in out


CONSISTENT = {
    "GRU update with Z and 1 - Z swapped": (cells.GRU_RESET_BEFORE, cells.GRU_RESET_AFTER),
    "reset-after candidate computed reset-before": (cells.GRU_RESET_AFTER,),
    "LSTM candidate with sigmoid instead of tanh": (cells.LSTM,),
}


@pytest.mark.parametrize("fault", list(CONSISTENT))
def test_a_planted_cell_mistake_is_made_in_forward_and_backward_alike(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted BPTT is the gradient of the planted loss (central differences): a framework's
    autodiff of the planted forward would agree with it, so no backend cell could see it."""
    from rosetta_rnn.backends import numpy as numpy_backend
    from rosetta_rnn.conformance.tolerances import tolerance

    FAULTS[fault][0](monkeypatch)
    ops = numpy_backend.make_ops("float64", "cpu")
    for cell in CONSISTENT[fault]:
        rng = np.random.default_rng(1)
        shapes = cells.param_shapes(cell, 4, 3)
        params = {k: rng.standard_normal(s) * 0.5 for k, s in shapes.items()}
        inputs, labels = rng.integers(0, 4, (4, 2)), rng.integers(0, 4, (2, 2))
        H_0 = rng.standard_normal((2, 3)) * 0.5
        state = (H_0, H_0 * 0.7) if cell == cells.LSTM else H_0
        _, grads, _, _ = cells.bptt(ops, cell, params, inputs, labels, state)
        h, diff, scale = 1e-5, 0.0, 0.0
        for name, p in params.items():
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + h
                up = float(cells.forward_loss(ops, cell, params, inputs, labels, state)[0])
                p[idx] = old - h
                down = float(cells.forward_loss(ops, cell, params, inputs, labels, state)[0])
                p[idx] = old
                diff = max(diff, abs((up - down) / (2 * h) - grads[name][idx]))
                scale = max(scale, abs(grads[name][idx]))
        assert diff / scale <= tolerance("float64", "fd"), f"{cell}: {diff / scale:.1e}"

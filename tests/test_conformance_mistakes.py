"""The suite catches real mistakes: deliberately broken adapters fail, with a message that
names the mistake. The broken adapters are built on PyTorch; the suspects the suite compares
against are built on NumPy, so a match is a match of behaviour, not of objects."""

from __future__ import annotations

import dataclasses

import pytest

from rosetta_rnn.conformance import checks, mistakes
from rosetta_rnn.conformance.problems import CELLS, Problem, cell_label
from rosetta_rnn.conformance.subjects import BackendSubject, TorchRNNOracle
from rosetta_rnn.core import cells, model

torch_backend = pytest.importorskip("rosetta_rnn.backends.torch", reason="needs PyTorch")

PROBLEMS = [Problem(8, 16, 3, 5, "moderate", 0), Problem(6, 7, 2, 4, "saturating", 5)]
RB, RA, LSTM = cells.GRU_RESET_BEFORE, cells.GRU_RESET_AFTER, cells.LSTM


def _cell(name: str, subject: object, problem: Problem) -> checks.Cell:
    quantity, kind, exact = checks.CHECKS[name]
    return checks.compare(name, subject, problem, quantity, kind, exact)


CASES = [
    # (broken adapter, the check that must flag it, words the message must contain)
    (mistakes.LabelsBatchMajor, "loss", "time-major (d2l-en #1349)"),
    (mistakes.LabelsBatchMajor, "train/sequential", "time-major"),
    (mistakes.SecondBias, "hidden", "second bias"),
    (mistakes.SecondBias, "logits", "second bias"),
    (mistakes.ClipEpsilon, "clip/above", "epsilon"),
    (mistakes.ClipEpsilon, "train/random", "epsilon"),
    (mistakes.Float32Leak, "hidden", "float32 leaked into a float64 run"),
    (mistakes.Float32Leak, "grads/autograd", "float32 leaked"),
    (mistakes.FrameworkRNG, "sample/temperature", "core generator"),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=["moderate", "saturating"])
@pytest.mark.parametrize(
    ("broken", "check", "words"), CASES, ids=[f"{c[0].__name__}-{c[1]}" for c in CASES]
)
def test_broken_adapter_is_flagged_and_named(
    broken: type[BackendSubject], check: str, words: str, problem: Problem
) -> None:
    if check.startswith("train") and problem.scale != "moderate":
        pytest.skip("one problem is enough for the 100-step trajectory")
    subject = broken(torch_backend, "float64")
    cell = _cell(check, subject, problem)
    assert not cell.passed
    assert words in cell.message, cell.message


@pytest.mark.parametrize("cell", [RB, LSTM], ids=cell_label)
@pytest.mark.parametrize(
    ("broken", "check", "words"),
    [
        (mistakes.LabelsBatchMajor, "loss", "time-major"),
        (mistakes.ClipEpsilon, "clip/above", "epsilon"),
        (mistakes.Float32Leak, "hidden", "float32 leaked"),
        (mistakes.FrameworkRNG, "sample/temperature", "core generator"),
    ],
    ids=lambda c: getattr(c, "__name__", ""),
)
def test_the_cell_free_mistakes_are_named_on_gated_cells(
    broken: type[BackendSubject], check: str, words: str, cell: str
) -> None:
    problem = dataclasses.replace(PROBLEMS[0], cell=cell)
    result = _cell(check, broken(torch_backend, "float64"), problem)
    assert not result.passed and words in result.message, result.message


class HardSigmoidAutograd(mistakes.HardSigmoid):
    """The hard_sigmoid twin with gradients, as a real torch adapter has them: torch's autograd
    of its forward pass."""

    def value_and_grad(self, mode, params, inputs, labels, state):  # type: ignore[no-untyped-def]
        import torch

        P = {k: v.requires_grad_(True) for k, v in self.put(params).items()}
        X, Y = self._inputs(inputs, labels)
        Hs, final = self.recurrence(P, X, self.put_state(state))
        loss = model.output_loss(self.ops, P, Hs, Y)
        names = list(P)
        grads = torch.autograd.grad(loss, [P[k] for k in names])
        return (
            self.get(loss.detach()),
            {k: self.get(g) for k, g in zip(names, grads, strict=True)},
            self.get_state(
                tuple(s.detach() for s in final) if isinstance(final, tuple) else final.detach()
            ),
        )


GATED_CASES = [
    # (broken adapter, its cell, the check that must flag it, words the message must contain)
    (mistakes.GateOrderZR, RB, "hidden", "z and r swapped"),
    (mistakes.GateOrderZR, RA, "grads/autograd", "z and r swapped"),
    (mistakes.GateOrderZR, RA, "train/sequential", "z and r swapped"),
    (mistakes.ResetOtherForm, RB, "hidden", "the reset gate in the other GRU formulation"),
    (mistakes.ResetOtherForm, RA, "grads/bptt", "the reset gate in the other GRU formulation"),
    (mistakes.BhnOutside, RA, "hidden", "b_hn outside the reset product"),
    (mistakes.BhnOutside, RA, "grads/autograd", "b_hn outside the reset product"),
    (mistakes.ForgetBiasOne, LSTM, "hidden", "forget bias is 1 more"),
    (mistakes.ForgetBiasOne, LSTM, "grads/bptt", "forget bias is 1 more"),
    (mistakes.HardSigmoid, RB, "hidden", "hard_sigmoid in place of sigmoid"),
    (mistakes.HardSigmoid, RA, "logits", "Keras 3's relu6"),
    (mistakes.HardSigmoid, LSTM, "loss", "hard_sigmoid in place of sigmoid"),
    (HardSigmoidAutograd, LSTM, "grads/autograd", "Keras 3's relu6"),
    (mistakes.HardSigmoidKeras2, RA, "hidden", "Keras 2's clip(0.2x + 0.5, 0, 1)"),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=["moderate", "saturating"])
@pytest.mark.parametrize(
    ("broken", "cell", "check", "words"),
    GATED_CASES,
    ids=[f"{c[0].__name__}-{cell_label(c[1])}-{c[2]}" for c in GATED_CASES],
)
def test_broken_gated_adapter_is_flagged_and_named(
    broken: type[BackendSubject], cell: str, check: str, words: str, problem: Problem
) -> None:
    if check.startswith("train") and problem.scale != "moderate":
        pytest.skip("one problem is enough for the 100-step trajectory")
    subject = broken(torch_backend, "float64")
    result = _cell(check, subject, dataclasses.replace(problem, cell=cell))
    assert not result.passed
    assert result.cell == cell_label(cell)
    assert words in result.message, result.message


CELL_MISTAKES = [  # the mistakes that only some cells can make
    name
    for name, build in mistakes.MISTAKES.items()
    if set(getattr(build(), "cells", CELLS)) < set(CELLS)
]


@pytest.mark.parametrize("cell", cells.CELLS, ids=cell_label)
@pytest.mark.parametrize("problem", PROBLEMS, ids=["moderate", "saturating"])
def test_each_cell_mistake_is_told_apart_from_every_other(cell: str, problem: Problem) -> None:
    """The diagnosis names the first suspect that matches: on these problems exactly one of
    them reproduces each broken twin's hidden states, so no other name can come first."""
    problem = dataclasses.replace(problem, cell=cell)
    quantity = checks.CHECKS["hidden"][0]
    outputs = {}
    for name in CELL_MISTAKES:
        suspect = mistakes.MISTAKES[name]()
        if cell in suspect.cells:
            outputs[name] = quantity(suspect, problem, "float64")
    reference = quantity(checks.reference(), problem, "float64")
    tol = checks.tolerance("float64", "values")
    for name, got in outputs.items():
        assert checks.max_error(got, reference) > 1e3 * tol, f"{name} does not change {cell}"
        same = [other for other, theirs in outputs.items() if checks.max_error(got, theirs) <= tol]
        assert same == [name], f"{name} on {cell} is also {same}"


@pytest.mark.parametrize("name", CELL_MISTAKES)
def test_a_cell_mistake_leaves_the_other_cells_alone(name: str) -> None:
    """A suspect applies to its cells only: on every other cell the twin is the backend."""
    twin = type(mistakes.MISTAKES[name]())(torch_backend, "float64")
    for cell in CELLS:
        if cell not in twin.cells:
            assert _cell("hidden", twin, dataclasses.replace(PROBLEMS[0], cell=cell)).passed


@pytest.mark.parametrize("cell", cells.CELLS, ids=cell_label)
def test_the_hard_sigmoid_twin_is_core_with_sigmoid(cell: str) -> None:
    """gated_forward with σ is core's forward: the twin differs from core by its gate alone."""
    from rosetta_rnn.backends import numpy as numpy_backend

    ops = numpy_backend.make_ops("float64", "cpu")
    for problem in PROBLEMS:
        params, inputs, _, state = dataclasses.replace(problem, cell=cell, embed_dim=3).draw()
        ours, _ = mistakes.gated_forward(ops, params, inputs, state, cells.sigmoid)
        core, _ = cells.any_forward(ops, params, inputs, state)
        assert checks.max_error({"H": ours}, {"H": core}) <= 1e-15


@pytest.mark.parametrize("check", ["params", "clip/below", "clip/inf", "sample/greedy"])
def test_mistakes_do_not_leak_into_unrelated_checks(check: str) -> None:
    # clipping with an epsilon only shows when clipping happens; greedy needs no uniforms
    for broken in (mistakes.ClipEpsilon, mistakes.FrameworkRNG):
        assert _cell(check, broken(torch_backend, "float64"), PROBLEMS[0]).passed
    # a gated cell's wrong formula leaves the stored parameters and the clipping alone
    if not check.startswith("sample"):
        for broken, cell in ((mistakes.GateOrderZR, RA), (mistakes.ForgetBiasOne, LSTM)):
            problem = dataclasses.replace(PROBLEMS[0], cell=cell)
            assert _cell(check, broken(torch_backend, "float64"), problem).passed


def test_second_bias_in_the_torch_oracle_is_named() -> None:
    """Loading b_h into both of torch.nn.RNN's biases: the classic porting mistake."""
    cell = _cell("hidden", TorchRNNOracle("float64", second_bias=True), PROBLEMS[0])
    assert not cell.passed and "second bias" in cell.message
    assert _cell("hidden", TorchRNNOracle("float64"), PROBLEMS[0]).passed


def test_an_unknown_bug_is_still_flagged() -> None:
    class SignFlip(BackendSubject):
        def forward(self, params, inputs, state):  # type: ignore[no-untyped-def]
            out = super().forward(params, inputs, state)
            return {**out, "logits": -out["logits"]}

    for cell in CELLS:
        problem = dataclasses.replace(PROBLEMS[0], cell=cell)
        result = _cell("logits", SignFlip(torch_backend, "float64"), problem)
        assert not result.passed and result.message == "differs"

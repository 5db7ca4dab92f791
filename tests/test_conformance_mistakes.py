"""The suite catches real mistakes: deliberately broken adapters fail, with a message that
names the mistake. The broken adapters are built on PyTorch; the suspects the suite compares
against are built on NumPy, so a match is a match of behaviour, not of objects."""

from __future__ import annotations

import pytest

from rosetta_rnn.conformance import checks, mistakes
from rosetta_rnn.conformance.problems import Problem
from rosetta_rnn.conformance.subjects import BackendSubject, TorchRNNOracle

torch_backend = pytest.importorskip("rosetta_rnn.backends.torch", reason="needs PyTorch")

PROBLEMS = [Problem(8, 16, 3, 5, "moderate", 0), Problem(6, 7, 2, 4, "saturating", 5)]


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


@pytest.mark.parametrize("check", ["params", "clip/below", "clip/inf", "sample/greedy"])
def test_mistakes_do_not_leak_into_unrelated_checks(check: str) -> None:
    # clipping with an epsilon only shows when clipping happens; greedy needs no uniforms
    for broken in (mistakes.ClipEpsilon, mistakes.FrameworkRNG):
        assert _cell(check, broken(torch_backend, "float64"), PROBLEMS[0]).passed


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

    cell = _cell("logits", SignFlip(torch_backend, "float64"), PROBLEMS[0])
    assert not cell.passed and cell.message == "differs"

"""The conformance suite as pytest: every check for every installed backend × dtype (and GPU
when there is one), NumPy float64 as the reference, shapes drawn by hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rosetta_rnn import backends
from rosetta_rnn.conformance import checks, runner
from rosetta_rnn.conformance.problems import DEFAULT_PROBLEMS, SCALES, Problem
from rosetta_rnn.conformance.subjects import BackendSubject, KerasRNNOracle, TorchRNNOracle
from rosetta_rnn.core.errors import BackendUnavailable

DTYPES = ("float64", "float32")
# a fraction of the profile's examples: each example runs a backend and the reference
EXAMPLES = settings(max_examples=max(3, settings.default.max_examples // 4))


def _subject_params() -> list:
    params = []
    for name in backends.BACKENDS:
        try:
            module = backends.load(name)
            gpus = [d for d in module.devices() if d != "cpu"]
        except BackendUnavailable as e:
            for dtype in DTYPES:
                params.append(
                    pytest.param(
                        (name, dtype, "cpu"),
                        id=f"{name}-{dtype}",
                        marks=pytest.mark.skip(reason=f"{name} not installed: {e}"),
                    )
                )
            continue
        for dtype in DTYPES:
            params.append(pytest.param((name, dtype, "cpu"), id=f"{name}-{dtype}"))
            for gpu in gpus[:1]:
                params.append(pytest.param((name, dtype, gpu), id=f"{name}-{dtype}-{gpu}"))
    return params


_subjects: dict[tuple[str, str, str], BackendSubject] = {}


@pytest.fixture(scope="module", params=_subject_params())
def backend(request: pytest.FixtureRequest) -> BackendSubject:
    key = request.param
    if key not in _subjects:
        _subjects[key] = BackendSubject.load(*key)
    return _subjects[key]


problems = st.builds(
    Problem,
    vocab_size=st.integers(1, 10),
    num_hiddens=st.integers(1, 12),
    batch_size=st.integers(1, 4),
    num_steps=st.integers(1, 8),
    scale=st.sampled_from(SCALES),
    seed=st.integers(0, 2**31 - 1),
    embed_dim=st.none() | st.integers(1, 6),
    last_step_loss=st.booleans(),
)
plain_problems = problems.filter(lambda p: p.plain)


def _assert(cell: checks.Cell) -> None:
    assert cell.passed, (
        f"{cell.check}[{cell.backend}-{cell.dtype}-{cell.device}]: max error {cell.max_error:.3g} "
        f"> tolerance {cell.tolerance:g}: {cell.message}"
    )


def _check(name: str, subject: object, problem: Problem) -> None:
    quantity, kind, exact = checks.CHECKS[name]
    _assert(checks.compare(name, subject, problem, quantity, kind, exact))


def test_interface(backend: BackendSubject) -> None:
    _assert(checks.check_interface(backend))


@EXAMPLES
@given(problem=problems)
def test_params(backend: BackendSubject, problem: Problem) -> None:
    _check("params", backend, problem)


@EXAMPLES
@given(problem=problems)
def test_forward(backend: BackendSubject, problem: Problem) -> None:
    for name in ("embedding", "hidden", "logits"):
        _check(name, backend, problem)


@EXAMPLES
@given(problem=problems)
def test_loss(backend: BackendSubject, problem: Problem) -> None:
    _check("loss", backend, problem)
    _check("perplexity", backend, problem)


@pytest.mark.parametrize("mode", ["autograd", "bptt"])
@EXAMPLES
@given(problem=problems)
def test_grads(backend: BackendSubject, mode: str, problem: Problem) -> None:
    if mode not in backend.grad_modes:
        pytest.skip(f"{backend.backend} has no --grad {mode}")
    _check(f"grads/{mode}", backend, problem)


@EXAMPLES
@given(problem=problems)
def test_clipping(backend: BackendSubject, problem: Problem) -> None:
    for branch in ("above", "below", "inf"):
        _check(f"clip/{branch}", backend, problem)


@pytest.mark.parametrize("problem", DEFAULT_PROBLEMS[:2], ids=["moderate", "d2l"])
def test_sampling(backend: BackendSubject, problem: Problem) -> None:
    for name in ("sample/greedy", "sample/temperature", "sample/ties"):
        _check(name, backend, problem)


@pytest.mark.parametrize("sampling", ["sequential", "random", "no-detach"])
@pytest.mark.parametrize(
    "problem",
    [DEFAULT_PROBLEMS[0], DEFAULT_PROBLEMS[1], DEFAULT_PROBLEMS[4], DEFAULT_PROBLEMS[5]],
    ids=["moderate", "d2l", "embedding", "last-step"],
)
def test_training(backend: BackendSubject, sampling: str, problem: Problem) -> None:
    _check(f"train/{sampling}", backend, problem)


def test_checkpoint_loads_everywhere(backend: BackendSubject) -> None:
    loaders, _ = runner.subjects(backends.BACKENDS, (backend.dtype,), "cpu")
    for problem in DEFAULT_PROBLEMS[:2]:
        _assert(checks.check_checkpoint(backend, problem, loaders))


def test_reference_bptt_against_finite_differences() -> None:
    for problem in DEFAULT_PROBLEMS:
        _assert(checks.check_bptt_vs_fd(problem))


ORACLES = {
    "torch.nn.RNN": ("torch", TorchRNNOracle),
    "keras.SimpleRNN": ("tensorflow", KerasRNNOracle),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("oracle_name", list(ORACLES))
@EXAMPLES
@given(problem=plain_problems)
def test_oracle(oracle_name: str, dtype: str, problem: Problem) -> None:
    framework, cls = ORACLES[oracle_name]
    pytest.importorskip(framework, reason=f"the {oracle_name} oracle needs {framework}")
    oracle = cls(dtype)
    for name in runner.ORACLE_CHECKS:
        _check(name, oracle, problem)


def test_max_error_is_relative_to_the_reference() -> None:
    import numpy as np

    ref = {"a": np.array([2.0, -4.0])}
    assert checks.max_error({"a": np.array([2.0, -4.4])}, ref) == pytest.approx(0.1)
    assert checks.max_error({"a": np.array([2.0])}, ref) == math.inf
    assert checks.max_error({}, ref) == math.inf
    assert checks.max_error({"a": np.array([2.0, np.nan])}, ref) == math.inf
    # one scale for the whole quantity: the largest reference entry of any of its arrays
    two = {"a": np.array([1.0]), "b": np.array([1e-9])}
    assert checks.max_error({"a": np.array([1.0]), "b": np.array([2e-9])}, two) == pytest.approx(
        1e-9
    )

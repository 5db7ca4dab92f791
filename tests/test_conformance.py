"""The conformance suite as pytest: every check for every installed backend × dtype (and GPU
when there is one) × cell (the RNN, both GRU formulations, the LSTM), NumPy float64 as the
reference, shapes drawn by hypothesis."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rosetta_rnn import backends
from rosetta_rnn.backends import rules
from rosetta_rnn.conformance import checks, run_checks, runner
from rosetta_rnn.conformance.problems import (
    CELL_LABELS,
    CELLS,
    DEFAULT_PROBLEMS,
    SCALES,
    Problem,
    cell_label,
)
from rosetta_rnn.conformance.subjects import BackendSubject, KerasRNNOracle, TorchRNNOracle
from rosetta_rnn.core import cells
from rosetta_rnn.core.errors import BackendUnavailable

DTYPES = ("float64", "float32")
# a fraction of the profile's examples: each example runs a backend and the reference. The
# checks whose meaning depends on the cell run for each cell (ci: 3 examples each, 12 per
# backend × dtype); params and clipping, which only see the parameters and gradients the cell
# has, draw the cell with the rest of the problem (ci: 6 examples over the 4 cells).
EXAMPLES = settings(max_examples=max(3, settings.default.max_examples // 4))
EXAMPLES_PER_CELL = settings(max_examples=max(3, settings.default.max_examples // 8))
BY_CELL = pytest.mark.parametrize("cell", CELLS, ids=cell_label)
GATED = (cells.GRU_RESET_BEFORE, cells.GRU_RESET_AFTER, cells.LSTM)


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
any_cell_problems = st.builds(dataclasses.replace, problems, cell=st.sampled_from(CELLS))


def _of(cell: str, problem: Problem) -> Problem:
    """The drawn shapes, regime and seed as a problem of ``cell``."""
    return dataclasses.replace(problem, cell=cell)


def _assert(cell: checks.Cell) -> None:
    assert cell.passed, (
        f"{cell.check}[{cell.backend}-{cell.dtype}-{cell.device}, {cell.cell}]: max error "
        f"{cell.max_error:.3g} > tolerance {cell.tolerance:g}: {cell.message}"
    )


def _check(name: str, subject: object, problem: Problem) -> None:
    quantity, kind, exact = checks.CHECKS[name]
    result = checks.compare(name, subject, problem, quantity, kind, exact)
    _assert(result)
    assert result.cell == (None if name in checks.CELL_FREE else cell_label(problem.cell))


def test_interface(backend: BackendSubject) -> None:
    _assert(checks.check_interface(backend))


def _every_cell(test: Callable[..., None]) -> Callable[..., None]:
    """An explicit example of each cell on top of the drawn ones (which may miss a cell)."""
    for i, cell in enumerate(CELLS):
        test = example(problem=Problem(5, 4, 2, 3, "moderate", i, embed_dim=i or None, cell=cell))(
            test
        )
    return test


@EXAMPLES
@_every_cell
@given(problem=any_cell_problems)
def test_params(backend: BackendSubject, problem: Problem) -> None:
    _check("params", backend, problem)


@BY_CELL
@EXAMPLES_PER_CELL
@given(problem=problems)
def test_forward(backend: BackendSubject, cell: str, problem: Problem) -> None:
    for name in ("embedding", "hidden", "logits"):
        _check(name, backend, _of(cell, problem))


@BY_CELL
@EXAMPLES_PER_CELL
@given(problem=problems)
def test_loss(backend: BackendSubject, cell: str, problem: Problem) -> None:
    _check("loss", backend, _of(cell, problem))
    _check("perplexity", backend, _of(cell, problem))


@pytest.mark.parametrize("mode", ["autograd", "bptt"])
@BY_CELL
@EXAMPLES_PER_CELL
@given(problem=problems)
def test_grads(backend: BackendSubject, cell: str, mode: str, problem: Problem) -> None:
    if mode not in backend.grad_modes:
        pytest.skip(f"{backend.backend} has no --grad {mode}")
    _check(f"grads/{mode}", backend, _of(cell, problem))


@EXAMPLES
@_every_cell
@given(problem=any_cell_problems)
def test_clipping(backend: BackendSubject, problem: Problem) -> None:
    for branch in ("above", "below", "inf"):
        _check(f"clip/{branch}", backend, problem)


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        pytest.param(cells.RNN, DEFAULT_PROBLEMS[0], id="rnn-moderate"),
        pytest.param(cells.RNN, DEFAULT_PROBLEMS[1], id="rnn-d2l"),
    ]
    + [pytest.param(c, DEFAULT_PROBLEMS[0], id=f"{cell_label(c)}-moderate") for c in GATED],
)
def test_sampling(backend: BackendSubject, cell: str, problem: Problem) -> None:
    for name in ("sample/greedy", "sample/temperature"):
        _check(name, backend, _of(cell, problem))


def test_sampling_ties(backend: BackendSubject) -> None:
    _check("sample/ties", backend, DEFAULT_PROBLEMS[0])


TRAINING = {
    "moderate": DEFAULT_PROBLEMS[0],
    "d2l": DEFAULT_PROBLEMS[1],
    "embedding": DEFAULT_PROBLEMS[4],
    "last-step": DEFAULT_PROBLEMS[5],
}
"""The training check's problems (it starts from the chapter's initialisation at their
shapes)."""
CI_TRAINING = [
    # (cell, problem, sampling): the RNN's every sampling, no-detach on two problems (its
    # sequence grows every step, so JAX and TensorFlow compile the step anew each time: the
    # RNN's no-detach on all four was half of this file's time); each gated cell once, chosen
    # so that together they carry a state (the LSTM's (H, C) pair too), reset it, learn an
    # embedding and train on the last step. The matrix (``rosetta-rnn conform``) runs every
    # sampling on all six problems for every cell.
    *[(cells.RNN, name, s) for name in TRAINING for s in ("sequential", "random")],
    (cells.RNN, "d2l", "no-detach"),
    (cells.RNN, "last-step", "no-detach"),
    (cells.RNN, "d2l", "windows"),  # d2l 1.0's loader: a shuffle per epoch, a partial minibatch
    (cells.GRU_RESET_AFTER, "moderate", "windows"),
    (cells.GRU_RESET_BEFORE, "moderate", "sequential"),
    (cells.GRU_RESET_AFTER, "embedding", "random"),
    (cells.LSTM, "last-step", "sequential"),
]


@pytest.mark.parametrize(
    ("cell", "problem", "sampling"),
    [
        pytest.param(cell, TRAINING[name], s, id=f"{cell_label(cell)}-{name}-{s}")
        for cell, name, s in CI_TRAINING
    ],
)
def test_training(backend: BackendSubject, cell: str, problem: Problem, sampling: str) -> None:
    _check(f"train/{sampling}", backend, _of(cell, problem))


@BY_CELL
def test_checkpoint_loads_everywhere(backend: BackendSubject, cell: str) -> None:
    loaders, _ = runner.subjects(backends.BACKENDS, (backend.dtype,), "cpu")
    for problem in DEFAULT_PROBLEMS[:2] if cell == cells.RNN else DEFAULT_PROBLEMS[4:5]:
        result = checks.check_checkpoint(backend, _of(cell, problem), loaders)
        _assert(result)
        assert result.cell == cell_label(cell)


FD_PROBLEMS = (
    *DEFAULT_PROBLEMS[:1],
    Problem(10, 8, 2, 6, "d2l", 1),  # the d2l regime at a size finite differences can afford
    *DEFAULT_PROBLEMS[2:],
)
"""The default problems, the large d2l one made small: a gated cell has up to 4× the RNN's
parameters and finite differences evaluate the loss twice per parameter."""


@BY_CELL
def test_reference_bptt_against_finite_differences(cell: str) -> None:
    for problem in DEFAULT_PROBLEMS if cell == cells.RNN else FD_PROBLEMS:
        result = checks.check_bptt_vs_fd(_of(cell, problem))
        _assert(result)
        assert result.cell == cell_label(cell)


ORACLES = {
    "torch.nn.RNN": ("torch", TorchRNNOracle, cells.RNN),
    "torch.nn.GRU": ("torch", TorchRNNOracle, cells.GRU_RESET_AFTER),
    "torch.nn.LSTM": ("torch", TorchRNNOracle, cells.LSTM),
    "keras.SimpleRNN": ("tensorflow", KerasRNNOracle, cells.RNN),
    "keras.GRU-reset-before": ("tensorflow", KerasRNNOracle, cells.GRU_RESET_BEFORE),
    "keras.GRU-reset-after": ("tensorflow", KerasRNNOracle, cells.GRU_RESET_AFTER),
    "keras.LSTM": ("tensorflow", KerasRNNOracle, cells.LSTM),
}
"""Every framework layer loaded with our parameters, and the cell it computes."""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("oracle_name", list(ORACLES))
@EXAMPLES
@given(problem=plain_problems)
def test_oracle(oracle_name: str, dtype: str, problem: Problem) -> None:
    framework, cls, cell = ORACLES[oracle_name]
    pytest.importorskip(framework, reason=f"the {oracle_name} oracle needs {framework}")
    oracle = cls(dtype, cell=cell)
    assert oracle.label == f"oracle:{oracle_name.split('-')[0]}"
    for name in runner.ORACLE_CHECKS:
        _check(name, oracle, _of(cell, problem))


def test_torch_has_no_reset_before_oracle() -> None:
    """torch.nn.GRU is reset-after: the matrix runs Keras alone for d2l's GRU."""
    pytest.importorskip("torch", reason="needs PyTorch")
    assert cells.GRU_RESET_BEFORE not in TorchRNNOracle.CELLS
    with pytest.raises(Exception, match="reset-after"):
        TorchRNNOracle("float64", cell=cells.GRU_RESET_BEFORE)


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


# --- conform: the asked device, skipped columns, progress, help -------------------------------

TINY = (Problem(4, 3, 2, 3, "moderate", 0), Problem(5, 4, 1, 2, "d2l", 1))
"""Two small plain problems: a whole column runs in seconds (for each cell)."""
TORCH_ORACLES = "oracle:torch.nn.RNN, oracle:torch.nn.GRU, oracle:torch.nn.LSTM"


class Pretend:
    """A real backend that claims ``gpus`` GPUs: its arrays stay on the CPU, labelled
    ``gpu:N``, so the matrix's device logic runs on any machine."""

    def __init__(self, module: object, gpus: int, float64: bool = True) -> None:
        self._module, self._gpus, self._float64 = module, gpus, float64

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)

    def resolve_device(self, device: str) -> str:
        name = self._module.NAME
        return rules.resolve_device(device, lambda: self._gpus, name, f"{name} sees no GPU")

    def supports_float64(self, device: str) -> bool:
        return self._float64 or device == "cpu"

    def devices(self) -> list[str]:
        return ["cpu", *(f"gpu:{i}" for i in range(self._gpus))]

    def make_ops(self, dtype: str = "float32", device: str = "cpu") -> object:
        label = self.resolve_device(device)
        ops = self._module.make_ops(dtype, "cpu")
        ops.device = label
        return ops


def _pretend(monkeypatch: pytest.MonkeyPatch, **fakes: object) -> None:
    """``backends.load`` gives ``fakes[name]`` (a Pretend, or an exception to raise)."""
    real = backends.load

    def load(spec: str) -> object:
        fake = fakes.get(spec)
        if isinstance(fake, Exception):
            raise fake
        return real(spec) if fake is None else fake

    monkeypatch.setattr(backends, "load", load)


def _tiny_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command plans the TINY problems instead of the six default ones."""
    monkeypatch.setattr(runner, "plan", functools.partial(runner.plan, problems=TINY))


def _nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def execute(*args: object, **kwargs: object) -> None:
        raise AssertionError("a check ran before the device error")

    monkeypatch.setattr(runner, "execute", execute)


def _torch_module() -> object:
    try:
        return backends.load("torch")
    except BackendUnavailable as e:
        pytest.skip(str(e))


def test_conform_on_a_gpu_torch_does_not_see_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's command as it is, on a machine whose torch sees no GPU: it used to skip the
    torch columns, drop the torch oracle without a word and pass on the reference cells."""
    from rosetta_rnn.cli import main

    if _torch_module().devices() != ["cpu"]:
        pytest.skip("torch sees a GPU here (the next test pretends it does not)")
    _nothing_runs(monkeypatch)
    assert main(["conform", "--backends", "torch", "--device", "gpu"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("rosetta-rnn: error: nothing can run on device 'gpu': ")
    assert f"torch, {TORCH_ORACLES}: " in line


@pytest.mark.parametrize("device", ["gpu", "gpu:1"])
def test_a_device_no_requested_backend_has_is_exit_2_before_anything_runs(
    device: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rosetta_rnn.backends import numpy as numpy_backend
    from rosetta_rnn.cli import main

    gpus = 0 if device == "gpu" else 1  # gpu:1 where there is only gpu:0
    _pretend(monkeypatch, numpy=Pretend(numpy_backend, gpus), torch=Pretend(_torch_module(), gpus))
    _nothing_runs(monkeypatch)
    assert main(["conform", "--backends", "numpy", "torch", "--device", device]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert f"nothing can run on device {device!r}" in line
    assert "numpy: " in line and f"torch, {TORCH_ORACLES}: " in line


@pytest.mark.parametrize("text", ["tpu", "gpu:", "gpu:x", "cuda:0", "GPU"])
def test_a_device_that_is_no_device_is_an_argument_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rosetta_rnn.cli import main

    assert main(["conform", "--device", text]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "argument --device: expected auto, cpu, gpu or gpu:N" in line


def test_a_backend_without_the_asked_gpu_fails_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy has a GPU, torch has none: the numpy cells all pass on the GPU, but the torch
    columns and each torch oracle are named as skipped and the matrix fails."""
    from rosetta_rnn.backends import numpy as numpy_backend

    _pretend(monkeypatch, numpy=Pretend(numpy_backend, 1), torch=Pretend(_torch_module(), 0))
    planned = runner.plan(
        ["numpy", "torch"], ["float64"], "gpu", TINY, with_reference=False, cells=[cells.LSTM]
    )
    assert [(s.column, s.reason, s.fails) for s in planned.skipped] == [
        ("torch", "torch sees no GPU", True),
        ("oracle:torch.nn.LSTM", "torch sees no GPU", True),
    ]
    assert {t.device for t in planned.tasks if not t.label.startswith("bptt-vs-fd")} == {"gpu:0"}
    report = runner.execute(planned)
    assert all(c.passed for c in report.cells)  # the same NumPy code: error 0 everywhere
    assert {c.device for c in report.cells if c.check != "bptt-vs-fd"} == {"gpu:0"}
    assert {c.cell for c in report.cells} == {None, "lstm"}
    assert report.problems == [
        "torch was skipped: torch sees no GPU",
        "oracle:torch.nn.LSTM was skipped: torch sees no GPU",
    ]
    assert not report.passed and not report.to_dict()["passed"]


def test_conform_names_each_column_it_could_not_run_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rosetta_rnn.backends import numpy as numpy_backend
    from rosetta_rnn.cli import main

    _pretend(monkeypatch, numpy=Pretend(numpy_backend, 1), torch=Pretend(_torch_module(), 0))
    _tiny_plans(monkeypatch)
    argv = ["conform", "--backends", "numpy", "torch", "--device", "gpu", "--dtype", "float64"]
    assert main([*argv, "--no-reference", "--cells", "rnn", "gru-reset-before"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "FAIL torch was skipped: torch sees no GPU" in lines
    assert "FAIL oracle:torch.nn.RNN was skipped: torch sees no GPU" in lines
    assert not any("torch.nn.GRU" in line for line in lines)  # torch has no reset-before GRU
    # the one column that ran, and bptt-vs-fd: NumPy float64 on the CPU wherever the matrix is
    assert lines[0].split()[1:] == ["cell", "numpy-float64", "numpy-float64-gpu:0"]
    assert lines[-1].endswith(" passed, 0 failed, 2 not run as asked on gpu")


def test_float64_missing_on_the_asked_device_fails_its_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rosetta_rnn.backends import numpy as numpy_backend

    _pretend(monkeypatch, numpy=Pretend(numpy_backend, 1, float64=False))
    planned = runner.plan(["numpy"], DTYPES, "gpu", TINY, with_oracles=False, with_reference=False)
    (skip,) = planned.skipped
    assert skip == runner.Skip(
        "numpy-float64-gpu:0", "numpy has no float64 on gpu:0; ask for --dtype float32", True
    )
    columns = {t.label.split()[1] for t in planned.tasks if not t.label.startswith("bptt-vs-fd")}
    assert columns == {"numpy-float32-gpu:0"}


def test_an_oracle_that_ran_elsewhere_than_asked_fails_the_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An oracle asked for gpu:0 that runs on the CPU (as the Keras one did, on TensorFlow's
    default device): its cells say where they ran and the matrix fails."""

    class CpuBound(TorchRNNOracle):
        def __init__(self, dtype: str, device: str = "cpu", cell: str = cells.RNN) -> None:
            super().__init__(dtype, "cpu", cell=cell)
            self.device = device  # says the asked device; its tensors stay on the CPU

    _pretend(monkeypatch, torch=Pretend(_torch_module(), 1))
    monkeypatch.setitem(runner.ORACLES, "torch", CpuBound)
    planned = runner.plan(
        ["torch"], ["float64"], "gpu", TINY, with_reference=False, cells=[cells.RNN]
    )
    # one GPU: the data-parallel cells are said to be left out (nobody asked for them by name)
    need = "train/replicas and grads/replicas need 4 GPUs, one per replica; it sees 1"
    assert [(s.column, s.reason, s.fails) for s in planned.skipped] == [
        ("torch-float64-gpu:0", need, False)
    ]
    report = runner.execute(planned)
    oracle_cells = [c for c in report.cells if c.backend == "oracle:torch.nn.RNN"]
    assert [c.check for c in oracle_cells] == [*runner.ORACLE_CHECKS, run_checks.CONCISE]
    assert {c.device for c in oracle_cells} == {"cpu"}
    assert report.problems == ["oracle:torch.nn.RNN-float64 ran on cpu, not on gpu:0"]
    assert not report.passed


def test_replica_cells_asked_for_on_too_few_gpus_fail_the_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--checks train/replicas`` on a machine with fewer GPUs than replicas is not a pass
    with nothing run: the column's skip fails the matrix. With four GPUs the cells are there."""
    only = ["train/replicas"]
    _pretend(monkeypatch, torch=Pretend(_torch_module(), 2))
    planned = runner.plan(
        ["torch"], ["float64"], "gpu", TINY, False, False, cells=[cells.RNN], only=only
    )
    assert not planned.tasks
    assert [(s.reason, s.fails) for s in planned.skipped] == [
        ("train/replicas and grads/replicas need 4 GPUs, one per replica; it sees 2", True)
    ]
    _pretend(monkeypatch, torch=Pretend(_torch_module(), 4))
    planned = runner.plan(
        ["torch"], ["float64"], "gpu", TINY, False, False, cells=[cells.RNN], only=only
    )
    assert not planned.skipped
    assert [t.label for t in planned.tasks] == ["train/replicas torch-float64-gpu:0 [rnn]"]


def test_the_keras_oracle_says_where_tensorflow_ran_it() -> None:
    """Asked for a GPU TensorFlow does not have, TensorFlow runs the layer on its CPU without
    a word: the oracle reports the device its outputs are on."""
    pytest.importorskip("tensorflow", reason="the Keras oracle needs TensorFlow")
    from rosetta_rnn.conformance.subjects import tf_device_label

    assert tf_device_label("/job:localhost/replica:0/task:0/device:GPU:1") == "gpu:1"
    assert tf_device_label("/job:localhost/replica:0/task:0/device:CPU:0") == "cpu"
    if backends.load("tensorflow").devices() != ["cpu"]:
        pytest.skip("TensorFlow sees a GPU here")
    oracle = KerasRNNOracle("float32", "gpu:0")
    params, inputs, _, state = TINY[0].draw()
    oracle.forward(params, inputs, state)
    assert oracle.device == "cpu"


def test_a_named_backend_that_is_not_installed_fails_an_unnamed_one_is_a_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rosetta_rnn.cli import main

    absent = {n: BackendUnavailable(f"{n} is not installed here") for n in backends.BACKENDS[1:]}
    monkeypatch.setattr(backends, "load", _loader_by_spec(absent))
    _tiny_plans(monkeypatch)
    base = ["conform", "--dtype", "float64", "--no-reference", "--cells", "rnn"]

    assert main([*base, "--backends", "numpy", "jax"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "FAIL jax was skipped: jax is not installed here" in lines

    assert main(base) == 0  # every backend, as many as are installed
    lines = capsys.readouterr().out.splitlines()
    for name in absent:
        assert f"skipped {name}: {name} is not installed here" in lines
    assert "skipped oracle:torch.nn.RNN: torch is not installed here" in lines
    assert not any(line.startswith("FAIL") for line in lines)


def _loader_by_spec(absent: dict[str, Exception]) -> Callable[[str], object]:
    real = backends.load

    def load(spec: str) -> object:
        if spec in absent:
            raise absent[spec]
        return real(spec)

    return load


class RecordedProgress:
    """What the command shows on a terminal, recorded."""

    last: RecordedProgress | None = None

    def __init__(self, description: str, total: int | None, unit: str = "", **_: object) -> None:
        self.total, self.unit = total, unit
        self.shown: list[str] = []
        self.advanced = 0
        self.total_before_first_cell: int | None = None
        RecordedProgress.last = self

    def __enter__(self) -> RecordedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def describe(self, description: str, total: int | None = None, reset: bool = False) -> None:
        if reset:
            self.total, self.shown, self.advanced = total, [], 0
        else:
            self.shown.append(description)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self.advanced == 0:
            self.total_before_first_cell = self.total
        self.advanced += int(n)


def test_conform_shows_each_cell_and_the_total_up_front(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rosetta_rnn import conform_command
    from rosetta_rnn.cli import main

    monkeypatch.setattr(conform_command, "Progress", RecordedProgress)
    _tiny_plans(monkeypatch)
    argv = ["conform", "--backends", "numpy", "--dtype", "float64", "--no-oracles"]
    assert main([*argv, "--no-reference", "--json", "--cells", "lstm", "rnn"]) == 0
    found = json.loads(capsys.readouterr().out)["cells"]
    bar = RecordedProgress.last
    assert bar is not None and bar.unit == "cells"
    assert bar.total_before_first_cell == bar.advanced == len(found)
    assert [label.rstrip() for label in bar.shown] == [
        " ".join(
            [c["check"]]
            + ([] if c["check"] == "bptt-vs-fd" else ["numpy-float64"])
            + ([f"[{c['cell']}]"] if c["cell"] else [])
        )
        for c in found
    ]
    # the asked cells, in the asked order; interface and sample/ties involve none
    assert list(dict.fromkeys(c["cell"] for c in found if c["cell"])) == ["lstm", "rnn"]
    assert {c["check"] for c in found if c["cell"] is None} == {"interface", "sample/ties"}
    for cell in ("lstm", "rnn"):
        mine = {c["check"] for c in found if c["cell"] == cell}
        assert mine == {*checks.CHECKS, "checkpoint", "bptt-vs-fd"} - {
            "grads/autograd",  # numpy has BPTT only
            *checks.CELL_FREE,
            *checks.REPLICA_CHECKS,  # numpy is the one device the replicas are held to
        }


def test_the_matrix_plans_every_check_for_every_backend_dtype_and_cell() -> None:
    """Every installed backend × dtype × cell has every check it can run; each oracle runs
    the cells its layer computes (torch has no reset-before GRU)."""
    planned = runner.plan(backends.BACKENDS, DTYPES, "cpu", TINY, with_reference=False)
    labels = {t.label for t in planned.tasks}
    subjects, _ = runner.subjects(backends.BACKENDS, DTYPES, "cpu")
    assert len(subjects) >= 2
    for subject in subjects:
        where = runner.column(subject.label, subject.dtype, subject.device)
        assert {f"interface {where}", f"sample/ties {where}"} <= labels
        for label in CELL_LABELS:
            for name in [*checks.CHECKS, "checkpoint"]:
                if name not in checks.CELL_FREE and checks.applicable(name, subject):
                    assert f"{name} {where} [{label}]" in labels
    oracle_cells = {
        (t.label.split()[1].rsplit("-", 1)[0], t.label.split()[-1])
        for t in planned.tasks
        if t.label.startswith("hidden oracle:")
    }
    expected = set()
    for framework, oracle in runner.ORACLES.items():
        if any(s.backend == framework for s in subjects):
            expected |= {(oracle.label_of(c), f"[{cell_label(c)}]") for c in oracle.CELLS}
    assert oracle_cells == expected


def test_conform_cells_refuses_an_unknown_cell_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rosetta_rnn.cli import main

    _nothing_runs(monkeypatch)
    assert main(["conform", "--cells", "rnn", "gru"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert (
        "argument --cells: expected one of rnn, gru-reset-before, gru-reset-after, lstm, "
        "got 'gru'" in line
    )


def test_the_table_has_a_block_per_cell(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row per check and cell, the cell in its own column; the oracle columns are named
    by framework (the row's cell says which layer)."""
    from rosetta_rnn.cli import main

    _tiny_plans(monkeypatch)
    argv = ["conform", "--backends", "numpy", "--dtype", "float32", "--no-reference"]
    assert main([*argv, "--cells", "gru-reset-after", "rnn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["check", "cell", "numpy-float32"]
    rows = [line.split()[:2] for line in lines[1:-1] if line.strip()]
    assert rows[:2] == [["interface", "0.0e+00"], ["sample/ties", "0.0e+00"]]
    cells_in_order = [row[1] for row in rows[2:]]
    blocks = list(dict.fromkeys(cells_in_order))
    assert blocks == ["gru-reset-after", "rnn"]
    assert cells_in_order == sorted(cells_in_order, key=blocks.index)  # one block each
    assert [row[0] for row in rows[2:] if row[1] == "rnn"][:3] == ["params", "embedding", "hidden"]


def test_conform_help_says_what_it_proves_how_long_and_what_the_exit_codes_mean() -> None:
    from rosetta_rnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["conform"].format_help().split())
    for words in (
        "NumPy float64",
        "torch.nn.RNN, GRU and LSTM, Keras SimpleRNN, GRU (both reset_after) and LSTM",
        "--cells CELL [CELL ...]",
        "conformance/reference.py",
        "takes about 40 minutes on a 2-core CPU, and the 112 onnx cells 6 seconds more; --cells "
        "rnn about 6 minutes",
        "on ONNX Runtime and on onnx's reference evaluator",
        "train/replicas and grads/replicas run data-parallel training",
        "Exit status: 0 every cell passed",
        "1 a cell failed",
        "; 2 bad arguments, or nothing can run",
        "(default: cpu)",
        "(default: float64 float32)",
    ):
        assert words in text

"""Every installed backend against the contract and against NumPy float64, in every gradient
engine and compile mode it offers: the properties all backends share, tested once.

The conformance suite (tests/test_conformance.py) checks each quantity in the backend's default
modes; this file runs the other modes (eager JAX and TensorFlow, torch.compile, core's BPTT
everywhere), the CLI, dtypes, one-line refusals and the process state a backend may change.
Errors are ``conformance.checks.max_error`` against ``conformance.tolerances``.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnn_problems import random_problem

from rosetta_rnn import backends
from rosetta_rnn.cli import main
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import contract, model
from rosetta_rnn.core.errors import BackendUnavailable, UserError
from rosetta_rnn.core.ops import OPERATIONS, Ops

DTYPES = ("float32", "float64")
REF = backends.load("numpy").make_ops("float64", "cpu")


def _installed() -> list[Any]:
    out = []
    for name in backends.BACKENDS:
        try:
            backends.load(name)
        except BackendUnavailable as e:
            out.append(pytest.param(name, marks=pytest.mark.skip(reason=f"not installed: {e}")))
        else:
            out.append(name)
    return out


INSTALLED = _installed()


def _modes() -> list[Any]:
    """(backend, grad, compile mode) for every installed backend's CPU modes."""
    out = []
    for name in INSTALLED:
        if not isinstance(name, str):
            continue
        mod = backends.load(name)
        for grad in mod.GRAD_MODES:
            for mode in mod.compile_modes("cpu"):
                out.append(pytest.param(name, grad, mode, id=f"{name}-{grad}-{mode}"))
    return out


MODES = _modes()


def _cli_modes() -> list[Any]:
    """Each compile mode with the backend's default engine, and each other engine in the default
    mode: every engine and every mode once through the CLI (the full cross product runs above,
    one step each, where a cold torch.compile costs seconds rather than a training run)."""
    out = []
    for param in MODES:
        name, grad, mode = param.values
        mod = backends.load(name)
        if grad == mod.GRAD_MODES[0] or mode == mod.compile_modes("cpu")[0]:
            out.append(param)
    return out


# --- the contract ----------------------------------------------------------------------------


def _protocol_members() -> dict[str, Any]:
    members = {name: None for name in contract.Backend.__annotations__}
    for name, fn in vars(contract.Backend).items():
        if inspect.isfunction(fn) and not name.startswith("_"):
            members[name] = fn
    return members


@pytest.mark.parametrize("name", INSTALLED)
def test_each_backend_provides_the_contract(name: str) -> None:
    mod = backends.load(name)
    for member, fn in _protocol_members().items():
        assert hasattr(mod, member), member
        if fn is None:
            continue
        want = [p for p in inspect.signature(fn).parameters if p != "self"]
        got = list(inspect.signature(getattr(mod, member)).parameters)
        assert got[: len(want)] == want, member  # same names in the same order (extras after)
    assert mod.NAME == name
    assert set(mod.compile_modes("cpu")) <= set(mod.COMPILE_MODES) and mod.GRAD_MODES
    for dtype in DTYPES:
        ops = mod.make_ops(dtype, "cpu")
        assert isinstance(ops, Ops) and (ops.name, ops.dtype, ops.device) == (name, dtype, "cpu")
        assert [op for op in OPERATIONS if not callable(getattr(ops, op, None))] == []


def test_the_operations_are_the_protocols_methods() -> None:
    assert OPERATIONS[:3] == ("asarray", "to_numpy", "zeros") and "scan" in OPERATIONS
    assert not {"name", "dtype", "device"} & set(OPERATIONS)


@pytest.mark.parametrize("name", INSTALLED)
def test_unknown_engines_and_modes_are_one_line(name: str) -> None:
    mod = backends.load(name)
    ops = mod.make_ops("float64", "cpu")
    with pytest.raises(BackendUnavailable, match=f"the {name} backend has no --grad 'nope'"):
        mod.make_train_step(ops, grad="nope")
    with pytest.raises(BackendUnavailable, match=f"the {name} backend has no compile mode 'x'"):
        mod.make_train_step(ops, mode="x")
    with pytest.raises(BackendUnavailable, match="no compile mode 'x'"):
        mod.make_forward(ops, mode="x")


def test_the_registry_passes_an_option_only_to_a_backend_that_takes_one() -> None:
    with pytest.raises(UserError, match="backend 'numpy' takes no option"):
        backends.load("numpy:fast")
    with pytest.raises(UserError, match="unknown backend 'nope:x'; choose from numpy"):
        backends.load("nope:x")


# --- every engine and mode against NumPy float64 ---------------------------------------------


def _problem(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return random_problem(rng, 7, 6, 3, 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "grad", "mode"), MODES)
def test_every_mode_takes_the_reference_step(name: str, grad: str, mode: str, dtype: str) -> None:
    """One SGD step with clipping active and one without: parameters, H_T, loss and norm."""
    mod = backends.load(name)
    params, X, Y, s = _problem(3)
    _, ref_grads, _, _ = model.bptt(REF, params, X, Y, s)
    norm = float(model.global_norm(REF, ref_grads))
    ops = mod.make_ops(dtype, "cpu")
    step = mod.make_train_step(ops, grad=grad, mode=mode)
    ref_step = backends.load("numpy").make_train_step(REF)
    args = (
        model.to_backend(ops, {k: v.astype(dtype) for k, v in params.items()}),
        ops.asarray(X),
        ops.asarray(Y),
        ops.asarray(s.astype(dtype)),
    )
    for theta in (norm / 2, math.inf):
        new, H_T, loss, got_norm = step(*args, 0.7, theta)
        want = ref_step(params, X, Y, s, 0.7, theta)
        got = {k: ops.to_numpy(v) for k, v in new.items()}
        got |= {
            "H_T": ops.to_numpy(H_T),
            "loss": ops.to_numpy(loss),
            "norm": ops.to_numpy(got_norm),
        }
        ref = dict(want[0]) | {"H_T": want[1], "loss": want[2], "norm": want[3]}
        assert {k: v.dtype for k, v in got.items()} == dict.fromkeys(got, np.dtype(dtype))
        assert max_error(got, ref) <= tolerance(dtype, "grads"), theta


@pytest.mark.parametrize(("name", "grad", "mode"), MODES)
def test_every_mode_runs_the_forward_and_relu(name: str, grad: str, mode: str) -> None:
    mod = backends.load(name)
    params, X, Y, s = _problem(4)
    ops = mod.make_ops("float64", "cpu")
    P, Xb, Yb, sb = model.to_backend(ops, params), ops.asarray(X), ops.asarray(Y), ops.asarray(s)
    loss, H_T = mod.make_forward(ops, mode)(P, Xb, Yb, sb)
    ref_loss, ref_H = model.forward_loss(REF, params, X, Y, s)
    got = {"loss": ops.to_numpy(loss), "H_T": ops.to_numpy(H_T)}
    assert max_error(got, {"loss": ref_loss, "H_T": ref_H}) <= tolerance("float64", "values")
    # relu: the derivative at 0 is 0 in core's BPTT and in every framework's autodiff
    step = mod.make_train_step(ops, grad=grad, mode=mode, activation="relu")
    new = step(P, Xb, Yb, sb, 0.5, math.inf)[0]
    want = backends.load("numpy").make_train_step(REF, activation="relu")(
        params, X, Y, s, 0.5, math.inf
    )[0]
    got_p = {k: ops.to_numpy(v) for k, v in new.items()}
    assert max_error(got_p, want) <= tolerance("float64", "grads")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", INSTALLED)
def test_arrays_keep_the_asked_dtype(name: str, dtype: str) -> None:
    ops = backends.load(name).make_ops(dtype, "cpu")
    x = ops.asarray(np.array([0.5, 2.0]))
    for made in (
        x,
        ops.asarray(np.ones(3, np.float32)),
        ops.zeros((2, 3)),
        ops.one_hot(ops.asarray(np.array([0, 2])), 4),
        ops.cast(x > 1),
        ops.minimum(1.0, x),
        ops.minimum(x, 1.0),
        1.0 - x * x,  # Python scalars are weakly typed everywhere
    ):
        assert ops.to_numpy(made).dtype == np.dtype(dtype)
    assert ops.to_numpy(ops.asarray(np.arange(3))).dtype.kind == "i"  # integers stay integers
    if dtype == "float64":  # Python numbers are not rounded through float32 on the way
        assert float(ops.to_numpy(ops.minimum(0.1, x))[0]) == 0.1


# --- through the CLI -------------------------------------------------------------------------

SMALL = ["--batch-size", "4", "--num-steps", "8", "--num-hiddens", "16", "--epochs", "4"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("the time traveller was expounding a recondite matter to us\n" * 10)
    return path


def _train(corpus: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    argv = ["train", "--corpus", str(corpus), *SMALL, "--dtype", "float64", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def numpy_run(tiny_corpus: Path) -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        argv = ["train", "--corpus", str(tiny_corpus), *SMALL, "--dtype", "float64", "--json"]
        assert main([*argv, "--backend", "numpy"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize(("name", "grad", "mode"), _cli_modes())
def test_cli_training_matches_numpy_in_every_mode(
    name: str,
    grad: str,
    mode: str,
    tiny_corpus: Path,
    numpy_run: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = _train(tiny_corpus, capsys, "--backend", name, "--grad", grad, "--compile", mode)
    assert (doc["backend"], doc["grad"]) == (name, grad)
    got = [h["perplexity"] for h in doc["history"]]
    want = [h["perplexity"] for h in numpy_run["history"]]
    assert max_error({"p": np.array(got)}, {"p": np.array(want)}) <= tolerance("float64", "train")
    assert doc["samples"] == numpy_run["samples"]


def test_a_bare_compile_on_a_backend_with_nothing_to_compile_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--backend", "numpy", "--compile"]) == 2
    assert capsys.readouterr().err == (
        "rosetta-rnn: error: the numpy backend has nothing to compile; it runs eager\n"
    )


# --- importing changes nothing ---------------------------------------------------------------

# Each framework's process-wide precision switches, read in a fresh interpreter before and
# after importing our backend module; a run that asks for a precision then applies it.
_STATE = {
    "jax": (
        "import jax; state = lambda: [bool(jax.config.jax_enable_x64), "
        "str(jax.config.jax_default_matmul_precision)]",
        "make_ops('float64')",
        [True, "None"],
    ),
    "torch": (
        "import torch; state = lambda: [torch.backends.cuda.matmul.allow_tf32, "
        "torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()]",
        "make_ops('float32')",
        None,  # TF32 switches move only on a CUDA device
    ),
    "tensorflow": (
        "import tensorflow as tf; "
        "state = lambda: [tf.config.experimental.tensor_float_32_execution_enabled()]",
        "make_ops('float32')",
        [False],
    ),
}


@pytest.mark.parametrize("name", [n for n in INSTALLED if n in _STATE])
def test_importing_a_backend_changes_no_framework_setting(name: str) -> None:
    setup, run, after_run = _STATE[name]
    code = (
        f"import importlib, json, os; {setup}; before = state(); "
        f"env = dict(os.environ); mod = importlib.import_module('rosetta_rnn.backends.{name}'); "
        f"imported = state(); same_env = env == dict(os.environ); mod.{run}; "
        "print(json.dumps([before, imported, same_env, state()]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, imported, same_env, ran = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == before and same_env
    assert ran == (after_run if after_run is not None else before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpys_short_row_reductions_are_numpys_own(dtype: str) -> None:
    """The NumPy backend folds a row's maximum in halves and sums rows and columns with einsum
    (faster over the vocabulary's short rows): the maximum is NumPy's exactly, the sums to
    their rounding, for odd and even widths, a width of one, and any keepdims; other shapes
    take NumPy's own reductions."""
    ops = backends.load("numpy").make_ops(dtype, "cpu")
    rng = np.random.default_rng(7)
    eps = float(np.finfo(dtype).eps)
    for rows, cols in [(1, 1), (5, 1), (6, 2), (7, 3), (33, 28), (4, 29), (3, 512)]:
        x = rng.standard_normal((rows, cols)).astype(dtype)
        x[0, -1] = 9.0  # a maximum in the odd column folded last
        for axis in (-1, 1):
            for keep in (False, True):
                got = ops.max(x, axis, keepdims=keep)
                assert np.array_equal(got, x.max(axis=axis, keepdims=keep))
        for axis in (-1, 0, 1):
            for keep in (False, True):
                got, want = ops.sum(x, axis, keepdims=keep), x.sum(axis=axis, keepdims=keep)
                assert got.shape == want.shape and got.dtype == want.dtype
                bound = 2 * eps * max(rows, cols) * np.abs(x).sum(axis=axis, keepdims=keep)
                assert (np.abs(got - want) <= bound).all()  # both within n·eps of Σ|x|
    cube = rng.standard_normal((2, 3, 4)).astype(dtype)
    assert np.array_equal(ops.max(cube, -1), cube.max(-1))
    assert np.array_equal(ops.sum(cube, 0), cube.sum(0)) and float(ops.sum(cube)) == cube.sum()

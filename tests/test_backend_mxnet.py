"""The ``mxnet`` backend: core's math computed by MXNet in its own environment, reached through
arrays held by its worker (``backends.remote``; its mechanism is ``test_remote``'s).

Each gradient engine in each compile mode against NumPy float64, ``hybridize`` seen to have
built MXNet's graphs (and ``eager`` seen not to), arrays released in the worker, and the errors
a user can cause (a missing environment, a GPU) as one line. Agreement of whole runs and
checkpoints is ``test_agreement``'s and ``test_conformance``'s (every registered backend)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from cli_run import run_cli

from rosetta_rnn import backends
from rosetta_rnn.backends import environments
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.problems import CELLS, Problem
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import model
from rosetta_rnn.core.errors import BackendUnavailable

pytestmark = pytest.mark.mxnet
DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def mx() -> Any:
    return backends.load("mxnet")


def _problem(cell: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, Any]:
    params, inputs, labels, state = Problem(cell=cell, seed=11).draw()
    assert all(np.any(v != 0) for v in params.values())  # nonzero biases: nothing hidden
    return params, inputs, labels, state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["hybridize", "eager"])
@pytest.mark.parametrize("grad", ["autograd", "bptt"])
@pytest.mark.parametrize("cell", CELLS)
def test_each_engine_and_mode_steps_as_numpy_float64(
    mx: Any, cell: str, grad: str, mode: str, dtype: str
) -> None:
    """One training step (gradients, d2l's clipping at a θ below the norm, SGD) in the
    worker: the new parameters, the loss, the norm and the final state within the table."""
    params, inputs, labels, state = _problem(cell)
    ref = numpy_backend.make_ops("float64", "cpu")
    want = numpy_backend.make_train_step(ref, cell=cell)(params, inputs, labels, state, 0.5, 0.1)
    assert float(want[3]) > 0.1  # the clip acts
    ops = mx.make_ops(dtype)
    step = mx.make_train_step(ops, grad, mode, cell=cell)
    P = model.to_backend(ops, {k: v.astype(dtype) for k, v in params.items()})
    S = tuple(map(ops.asarray, state)) if isinstance(state, tuple) else ops.asarray(state)
    new, final, loss, norm = step(P, ops.asarray(inputs), ops.asarray(labels), S, 0.5, 0.1)
    values = tolerance(dtype, "values")
    assert max_error(model.to_numpy(ops, new), want[0]) <= values
    assert abs(float(np.asarray(loss)) - float(want[2])) <= values * max(1.0, abs(float(want[2])))
    assert abs(float(np.asarray(norm)) - float(want[3])) <= tolerance(dtype, "grads") * float(
        want[3]
    )
    got = final if isinstance(final, tuple) else (final,)
    wanted = want[1] if isinstance(want[1], tuple) else (want[1],)
    for g, w in zip(got, wanted, strict=True):
        assert max_error({"s": np.asarray(g)}, {"s": w}) <= values


def test_hybridize_builds_mxnets_graphs_and_eager_does_not(mx: Any) -> None:
    """What says the compiled mode ran: the worker's hybridized blocks, one per kind, model and
    dtype asked for; an eager step adds none."""
    params, inputs, labels, state = _problem("lstm")
    ops = mx.make_ops("float64")
    P = model.to_backend(ops, params)
    X, Y = ops.asarray(inputs), ops.asarray(labels)
    S = tuple(map(ops.asarray, state))
    ops.worker.call("programs", forget=True)
    for grad in ("autograd", "bptt"):
        mx.make_train_step(ops, grad, "eager", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    mx.make_forward(ops, "eager", cell="lstm")(P, X, Y, S)
    assert ops.worker.call("programs") == []
    mx.make_train_step(ops, "autograd", "hybridize", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    assert ops.worker.call("programs", forget=True) == ["forward lstm tanh float64"]
    mx.make_train_step(ops, "bptt", "hybridize", cell="lstm")(P, X, Y, S, 1.0, 1.0)
    assert ops.worker.call("programs", forget=True) == ["bptt lstm tanh float64"]
    mx.make_forward(ops, "hybridize", cell="lstm")(P, X, Y, S)
    assert ops.worker.call("programs") == ["forward lstm tanh float64"]


def test_decoding_in_the_worker_equals_numpys_host_loop(mx: Any) -> None:
    """``ops.decode`` (core's loop run in the worker) and NumPy's host loop: the same tokens,
    greedy and with the same uniforms at a temperature."""
    from rosetta_rnn.core import sampling

    params, _, _, _ = _problem("gru/reset-after")
    ref = numpy_backend.make_ops("float64", "cpu")
    ops = mx.make_ops("float64")
    P = model.to_backend(ops, params)
    for temperature in (None, 0.7):
        want = sampling.predict(
            ref,
            params,
            [3, 1, 4],
            30,
            temperature=temperature,
            rng=np.random.default_rng(2),
            compiled=False,
        )
        got = sampling.predict(
            ops, P, [3, 1, 4], 30, temperature=temperature, rng=np.random.default_rng(2)
        )
        assert got == want


def test_the_worker_releases_what_the_main_process_dropped(mx: Any) -> None:
    """Arrays dropped here go in the worker too, those of an ops object replaced by another
    included (every ``make_ops`` makes a new one)."""
    ops = mx.make_ops("float32")
    ops.release_dropped()
    held = ops.worker.call("free", [])
    for _ in range(20):
        ops = mx.make_ops("float32")
        kept = [ops.asarray(np.ones((4, 4))) for _ in range(50)]
        del kept
    gc.collect()
    ops.release_dropped()
    assert ops.worker.call("free", []) <= held


def test_a_missing_environment_or_a_gpu_is_one_line(
    mx: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BackendUnavailable, match="has no CUDA"):
        mx.make_ops("float32", "gpu")
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    assert environments.status("mxnet") == "missing"
    with pytest.raises(BackendUnavailable, match="rosetta-rnn backends --setup mxnet"):
        backends.load("mxnet")
    assert "--setup mxnet" in backends.info("mxnet")["error"]


def test_train_without_the_environment_says_how_to_make_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    code, out, err = run_cli(capsys, "train", "--backend", "mxnet", "--epochs", "1")
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and "rosetta-rnn backends --setup mxnet" in err

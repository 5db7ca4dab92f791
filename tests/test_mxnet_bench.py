"""The bench's Gluon peers (``gluon.rnn.RNN``/``GRU``/``LSTM``, MXNet in its own environment):
each computes core's training step, forward loss and greedy text, within the tolerance table,
for the RNN, the reset-after GRU and the LSTM in float32 and float64; the path each reads back
is what MXNet ran; a missing environment is an error that says how to set it up. No timing.

The ``mxnet`` fixture sets MXNet's environment up the first time and fails, never skips, if it
cannot; the peers share its worker."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn.backends import environments
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.backends.worker import Worker
from rosetta_rnn.benchmarks import peers, runner, workloads
from rosetta_rnn.benchmarks.workloads import Shape
from rosetta_rnn.conformance.checks import max_error
from rosetta_rnn.conformance.problems import Problem
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, sampling
from rosetta_rnn.core.errors import BackendUnavailable

pytestmark = pytest.mark.mxnet

GLUON = {
    cells.RNN: "gluon.rnn.RNN",
    cells.GRU_RESET_AFTER: "gluon.rnn.GRU",
    cells.LSTM: "gluon.rnn.LSTM",
}
PAIRED_BIASES = {
    cells.RNN: ("b_h",),
    cells.GRU_RESET_AFTER: ("b_z", "b_r"),
    cells.LSTM: ("b_i", "b_f", "b_o", "b_c"),
}
"""core's biases Gluon keeps as torch does, an ``i2h_bias`` and an ``h2h_bias``: both take the
gradient step (their sum moves twice core's step) and both count in the clipping norm."""
DTYPES = ("float64", "float32")


@pytest.fixture(autouse=True)
def _shared_worker(mxnet: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The peers use the session's worker rather than starting their own."""
    monkeypatch.setitem(peers.WORKERS, "mxnet", mxnet)
    yield


def _states(state: object) -> dict[str, np.ndarray]:
    parts = state if isinstance(state, tuple) else (state,)
    return {f"state{i}": np.asarray(s) for i, s in enumerate(parts)}


def _draw(cell: str, seed: int = 7) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, object]:
    """Nonzero biases, asymmetric matrices, a nonzero start state (conformance's problems)."""
    params, inputs, labels, state = Problem(cell=cell, seed=seed).draw()
    assert all(np.any(v != 0) for v in params.values())
    square = [v for v in params.values() if v.ndim == 2 and v.shape[0] == v.shape[1]]
    assert square and all(np.abs(v - v.T).max() > 0.1 for v in square)
    return params, inputs, labels, state


def _peer(cell: str, dtype: str, params: dict[str, np.ndarray], shape: Shape) -> peers.Peer:
    peer = peers.make_peer(GLUON[cell], shape.vocab_size, shape.num_hiddens, dtype, "cpu")
    peer.set_params({k: v.astype(dtype) for k, v in params.items()})
    return peer


def _shape(params: dict[str, np.ndarray]) -> Shape:
    H, V = params["W_hq"].shape
    return Shape(3, 5, H, V)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(GLUON))
def test_gluon_train_step_equals_core(cell: str, dtype: str) -> None:
    """One step, clipped (θ half the gradient's norm): the loss, the final state, the norm
    (Gluon's: each paired bias counts twice) and every new parameter equal core's NumPy
    float64 step with core's gradients."""
    params, inputs, labels, state = _draw(cell)
    ref = numpy_backend.make_ops("float64", "cpu")
    loss, grads, final = cells.bptt_value_and_grad(ref, "tanh", cell)(params, inputs, labels, state)
    paired = PAIRED_BIASES[cell]
    norm = math.sqrt(
        sum(float(np.sum(g * g)) for g in grads.values())
        + sum(float(np.sum(grads[b] ** 2)) for b in paired)
    )
    lr, theta = 0.5, 0.5 * norm
    scale = min(1.0, theta / norm)  # d2l's clip: it acts here
    new = {k: p - lr * scale * grads[k] * (2 if k in paired else 1) for k, p in params.items()}

    peer = _peer(cell, dtype, params, _shape(params))
    assert isinstance(peer, peers.GluonPeer) and peer.cell == cell
    got_loss, got_final = peer.step_once(inputs, labels, state, lr, theta)
    values, grad_tol = tolerance(dtype, "values"), tolerance(dtype, "grads")
    where = (cell, dtype)
    assert max_error({"loss": np.asarray(got_loss)}, {"loss": np.asarray(loss)}) <= values, where
    assert max_error(_states(got_final), _states(final)) <= values, where
    assert peer.grad_norm is not None
    assert max_error({"norm": np.asarray(peer.grad_norm)}, {"norm": np.asarray(norm)}) <= grad_tol
    got = peer.get_params()
    assert set(got) == set(new) and {v.dtype.name for v in got.values()} == {dtype}, where
    errors = {k: max_error({k: got[k]}, {k: new[k]}) for k in new}
    assert max(errors.values()) <= values, (where, errors)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(GLUON))
def test_gluon_forward_loss_and_greedy_tokens_equal_core(cell: str, dtype: str) -> None:
    """Through the calls the bench times (one request each): the forward loss from a zero
    state, and 12 greedy tokens, against core in NumPy float64."""
    params, inputs, labels, _ = _draw(cell, seed=11)
    ref = numpy_backend.make_ops("float64", "cpu")
    zeros = cells.initial_state(ref, params, inputs.shape[1], cell)
    loss, _ = cells.any_forward_loss(ref, params, inputs, labels, zeros, "tanh", cell)
    peer = _peer(cell, dtype, params, _shape(params))
    got = peer.forward(inputs, labels)()
    values = tolerance(dtype, "values")
    assert max_error({"loss": np.asarray(got)}, {"loss": np.asarray(loss)}) <= values, (cell, dtype)
    want = sampling.predict(ref, params, [2], 12, cell=cell)
    assert peer.generate(2, 12)() == want, (cell, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(GLUON))
def test_greedy_ties_go_to_the_lowest_index(cell: str, dtype: str) -> None:
    """Logits equal to b_q (W_hq = 0), whose maximum is shared by tokens 2 and 5: every
    prediction is 2, as core's (NumPy's argmax)."""
    params, _, _, _ = _draw(cell)
    params["W_hq"] = np.zeros_like(params["W_hq"])
    b_q = np.linspace(-1.0, 0.5, params["b_q"].size)
    b_q[2] = b_q[5] = 1.0
    params["b_q"] = b_q
    peer = _peer(cell, dtype, params, _shape(params))
    ref = numpy_backend.make_ops("float64", "cpu")
    assert peer.generate(1, 6)() == [1, 2, 2, 2, 2, 2, 2]
    assert sampling.predict(ref, params, [1], 6, cell=cell) == [1, *[2] * 6]


@pytest.mark.parametrize("cell", list(GLUON))
def test_the_timed_training_call_carries_the_state_as_step_once(cell: str) -> None:
    """Two timed calls (one request each, the state kept in the worker and detached) give the
    parameters of two ``step_once`` steps, each from the state the last one ended in."""
    params, inputs, labels, _ = _draw(cell, seed=3)
    shape = _shape(params)
    timed, stepped = _peer(cell, "float64", params, shape), _peer(cell, "float64", params, shape)
    call = timed.train(inputs, labels, 0.5, 0.05)
    losses = [call(), call()]
    H = np.zeros((inputs.shape[1], shape.num_hiddens))
    state: object = (H, H) if cell == cells.LSTM else H
    want = []
    for _ in range(2):
        loss, state = stepped.step_once(inputs, labels, state, 0.5, 0.05)
        want.append(loss)
    tol = tolerance("float64", "values")
    assert max_error({"loss": np.asarray(losses)}, {"loss": np.asarray(want)}) <= tol
    assert max_error(timed.get_params(), stepped.get_params()) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_gluon_peer_says_what_mxnet_ran(dtype: str) -> None:
    """Read in the worker from one more call under MXNet's profiler: the fused RNN operator
    (and its backward in training), the hybridized graph, oneDNN's kernel in float32 and
    MXNet's own in float64, the build features and the threads."""
    for cell, name in GLUON.items():
        for case in workloads.peer_cases(
            name, "cpu", dtype, Shape(2, 3, 8), ["train", "forward", "generate"]
        ):
            call, _ = case.build()
            call()
            path = case.engine["path"]()
            where = (name, dtype, case.workload)
            layer = name.removeprefix("gluon.")
            kernel = "oneDNN's RNN primitive" if dtype == "float32" else "MXNet's own CPU kernel"
            assert path["recurrence"] == f"gluon.{layer}: MXNet's fused RNN operator, {kernel}"
            ops = ["RNN", "_backward_RNN"] if case.workload == "train" else ["RNN"]
            assert path["recurrent_ops"] == ops, where
            assert path["hybridized"] is True and path["hybridize"] == "static_alloc, static_shape"
            assert {"MKLDNN", "OPENMP"} <= set(path["features"].split(",")), where
            assert "OMP_NUM_THREADS=" in path["threads"], where
            assert "MXNET_CPU_WORKER_NTHREADS=" in path["threads"], where
            assert case.cell == cell and case.mode == peers.GluonPeer.modes[case.workload]


def test_the_kernel_the_path_names_is_the_one_onednn_runs() -> None:
    """The path's kernel is MXNet's rule (rnn.cc), checked against oneDNN's own log: a worker
    with ``MKLDNN_VERBOSE=1`` logs an ``rnn`` primitive for a float32 step and none for
    float64."""
    env = environments.get("mxnet")
    python = str(environments.python("mxnet"))
    logged = {}
    for dtype in DTYPES:
        with Worker(python, env.handlers, name="mxnet", env={"MKLDNN_VERBOSE": "1"}) as w:
            peer = w.call("gluon_peer_new", cells.LSTM, 7, 8, dtype)
            ids = np.ones((3, 2), np.int64)
            w.call("gluon_peer_prepare", peer, "train", ids, ids)
            w.call("gluon_peer_run", peer, "train")
            w._stderr.seek(0)  # the worker's stdout (oneDNN's log) goes to its stderr
            logged[dtype] = w._stderr.read().decode(errors="replace")
    assert "exec,cpu,rnn," in logged["float32"] and ",backward," in logged["float32"]
    assert "exec,cpu,rnn," not in logged["float64"]


def test_a_missing_environment_is_an_error_saying_how_to_set_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a peer left out: making a Gluon peer, and a bench that chose one, fail in one line
    naming ``rosetta-rnn backends --setup mxnet``."""
    monkeypatch.setenv("ROSETTA_RNN_ENVS", str(tmp_path))
    monkeypatch.delitem(peers.WORKERS, "mxnet")
    setup = "rosetta-rnn backends --setup mxnet"
    with pytest.raises(BackendUnavailable, match=setup):
        peers.make_peer("gluon.rnn.LSTM", 7, 8, "float32", "cpu")
    with pytest.raises(BackendUnavailable, match=setup):
        runner.check_environments(["torch.nn.RNN", "gluon.rnn.GRU"])
    runner.check_environments(["torch.nn.RNN"])  # no environment of its own: nothing to check


def test_gluon_peers_are_chosen_for_mxnet_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by framework ``mxnet`` as the other peers are by their backends: a run whose
    mxnet backend runs on the CPU gets each cell's Gluon peer, every workload; one without it
    none."""
    monkeypatch.setattr(runner, "backend_cases", lambda *args, **kwargs: [])  # the peers alone
    cfg = runner.BenchConfig(cells=list(GLUON), sweep=False, shape=Shape(2, 3, 8))
    groups = runner._groups(cfg, {"mxnet": ["cpu"]}, list(peers.PEER_NAMES))
    chosen = {(c.name, c.cell, c.workload) for _, cases in groups for c in cases}
    assert chosen == {
        (name, cell, w) for cell, name in GLUON.items() for w in ("train", "forward", "generate")
    }
    assert {c.framework for _, cases in groups for c in cases} == {"mxnet"}
    others = runner._groups(cfg, {"numpy": ["cpu"]}, list(peers.PEER_NAMES))
    assert not {c.name for _, cases in others for c in cases} & set(GLUON.values())
    assert all(peers.PEER_FRAMEWORK[n] == "mxnet" for n in GLUON.values())
    assert {peers.PEER_CELL[n] for n in GLUON.values()} == set(GLUON)

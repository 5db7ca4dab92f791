"""One small test per MXNet claim of docs/frameworks.md (its MXNet column and section 25), each
run in MXNet 1.9.1's own environment through a worker serving ``backends/mxnet_guide.py``.

The ``mxnet`` group sets the environment up the first time (``rosetta-rnn backends --setup
mxnet``) and fails, never skips, if it cannot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rosetta_rnn.backends import environments
from rosetta_rnn.backends.worker import Worker

pytestmark = pytest.mark.mxnet


def _start(env: dict[str, str] | None = None) -> Worker:
    if environments.status("mxnet") != "ready":
        environments.setup("mxnet", say=lambda line: None)
    python = str(environments.python("mxnet"))
    return Worker(python, "rosetta_rnn.backends.mxnet_guide", name="mxnet", env=env)


@pytest.fixture(scope="module")
def guide(mxnet: Worker) -> Worker:
    """MXNet's worker, which serves the guide's requests (``guide_*``), its engine as it
    comes."""
    return mxnet


def _call(worker: Worker, op: str, *args: Any) -> Any:
    return worker.call(op, *args)


def test_mxnet_1_9_1_needs_a_numpy_from_before_1_24(guide: Worker) -> None:
    """NumPy 1.24 removed the alias ``np.bool``, which ``mxnet/numpy/utils.py`` reads when MXNet
    is imported (line 37); NumPy 2.0 brought ``np.bool`` back but removed ``np.PZERO``, read five
    lines further on. With NumPy 1.23's deprecation warnings made errors, the import stops at
    ``np.bool``."""
    got = _call(guide, "guide_numpy_names")
    assert got["numpy"] == "1.23.5" and got["returncode"] == 1
    assert got["last frame"].endswith('mxnet/numpy/utils.py", line 37, in <module>')
    assert got["error"].startswith("DeprecationWarning: `np.bool` is a deprecated alias")
    assert got["mxnet/numpy/utils.py"] == {"37": "bool = onp.bool", "42": "PZERO = onp.PZERO"}
    assert int(np.__version__.split(".")[0]) >= 2  # this environment's NumPy ...
    assert not hasattr(np, "PZERO")  # ... has no PZERO, so MXNet cannot import here either


def test_mxnet_np_is_a_numpy_front_end_with_float32_defaults(guide: Worker) -> None:
    """``npx.set_np()`` makes Gluon take and return ``mxnet.numpy`` arrays (legacy ``NDArray``
    without it); a Python list becomes float32, a float64 NumPy array stays float64, float32 +
    float64 promotes; arrays live on a context, ``mx.cpu()``; ``asnumpy()`` copies to NumPy."""
    got = _call(guide, "guide_front_end")
    assert got["gluon returns, without set_np"] == "mxnet.ndarray.ndarray"
    assert got["gluon returns, with set_np"] == "mxnet.numpy"
    assert got["array from a list"] == got["zeros"] == "float32"
    assert np.array([1.0]).dtype.name == "float64"  # NumPy's default, for contrast
    assert got["array from a float64 NumPy array"] == "float64"
    assert got["float32 + float64"] == "float64"
    assert got["float32 * Python float"] == "float32"
    assert got["context"] == "cpu(0)" and got["context is mx.cpu()"]
    assert got["asnumpy"] == "numpy.ndarray"
    assert [round(float(v), 3) for v in got["seed 0, three normals"]] == [2.212, 1.163, 0.774]
    assert got["argmax of ties"] == [1, 0]  # the first maximal index


def test_mxnet_autograd_records_and_writes_the_gradient(guide: Worker) -> None:
    """``attach_grad`` gives a zero ``.grad``; ``backward`` needs ``autograd.record()``; a second
    ``backward`` overwrites ``.grad`` (``grad_req='write'``) where torch adds to it, unless
    ``attach_grad(grad_req='add')``."""
    import torch

    got = _call(guide, "guide_autograd")
    assert got["grad after attach_grad"].tolist() == [0.0, 0.0]
    for case in ("backward outside record", "backward without attach_grad"):
        assert "Cannot differentiate node because it is not in a computational graph" in got[case]
    assert got["grad after one backward"].tolist() == [2.0, 4.0]
    assert got["grad after two (grad_req='write')"].tolist() == [2.0, 4.0]
    assert got["grad after two (grad_req='add')"].tolist() == [4.0, 8.0]
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    assert w.grad is None
    for _ in range(2):
        (w * w).sum().backward()
    assert w.grad.tolist() == [4.0, 8.0]  # torch accumulates


def test_mxnet_backward_frees_the_graph_so_a_carried_state_stops_there(guide: Worker) -> None:
    """h1 = tanh(h0 w) in minibatch k, then tanh(h1 w) in minibatch k + 1: after minibatch k's
    ``backward`` its graph is gone, so the state carried as it is gives minibatch k + 1's
    gradient alone, the same as ``detach()``; kept with ``retain_graph=True``, the gradient
    goes on through both minibatches."""
    got = _call(guide, "guide_autograd")
    h0, w = 1.0, 0.5
    h1 = np.tanh(h0 * w)
    h2 = np.tanh(h1 * w)
    alone = (1 - h2**2) * h1
    through_both = (1 - h2**2) * (h1 + w * (1 - h1**2) * h0)
    assert got["minibatch k + 1 gradient, state as it is"] == pytest.approx(alone, rel=1e-12)
    assert got["minibatch k + 1 gradient, state detach()"] == pytest.approx(alone, rel=1e-12)
    kept = got["minibatch k + 1 gradient, state retain_graph=True"]
    assert kept == pytest.approx(through_both, rel=1e-12)


def test_mxnet_updates_in_place_only_outside_record(guide: Worker) -> None:
    got = _call(guide, "guide_autograd")
    assert got["in-place update outside record"].tolist() == [0.5, 1.0]  # p - 0.25 · 2p
    assert (
        "Assigning to NDArrays that are already in a computational graph"
        in (got["in-place update inside record"])
    )


def test_hybridized_blocks_trace_symbols_with_no_shape_and_basic_indexing(guide: Worker) -> None:
    """Eagerly ``hybrid_forward`` gets ``F = mxnet.ndarray`` and arrays; hybridized, ``F =
    mxnet.symbol`` and symbols: no ``.shape``, no Ellipsis, no ``detach``; slices work."""
    got = _call(guide, "guide_hybridize")
    assert got["eager: F, x"] == "mxnet.ndarray, mxnet.numpy.ndarray"
    assert got["hybridized: F, x"] == "mxnet.symbol, mxnet.symbol.numpy._Symbol"
    for body in ("x.shape", "x[..., 0]", "x[:, 0]", "x.detach()"):
        assert got[f"eager: {body}"] is None, body
    assert got["hybridized: x[:, 0]"] is None
    assert got["hybridized: x.shape"] == "AttributeError: '_Symbol' object has no attribute 'shape'"
    assert got["hybridized: x[..., 0]"].startswith(
        "IndexError: Only integer, slice, or tuple of these types are supported!"
    )
    assert got["hybridized: x.detach()"].startswith("NotImplementedForSymbol")


def test_mxnet_stop_gradient_is_detach_or_a_legacy_operator_on_converted_arrays(
    guide: Worker,
) -> None:
    """``npx`` has no ``stop_gradient``; the legacy ``F.stop_gradient`` refuses ``mxnet.np``
    arrays and works on ``as_nd_ndarray()``, eagerly and hybridized: d/dx Σ x·sg(x²) = x²."""
    got = _call(guide, "guide_hybridize")
    assert got["npx has stop_gradient"] is False
    for mode in ("eager", "hybridized"):
        assert (
            "This is a legacy operator which can only accept legacy ndarrays"
            in (got[f"{mode}: F.stop_gradient(x)"])
        )
        assert got[f"{mode}: F.stop_gradient(x.as_nd_ndarray()).as_np_ndarray()"] is None
        grad = got[f"{mode}: gradient through the converted stop_gradient"]
        assert grad.tolist() == [1.0, 4.0, 9.0], mode


def test_mxnet_engine_raises_at_the_wait_not_at_the_call(guide: Worker) -> None:
    """An out-of-range ``take`` returns at once; its error comes from ``wait_to_read``,
    ``asnumpy`` or ``mx.nd.waitall()``. Under ``MXNET_ENGINE_TYPE=NaiveEngine`` (synchronous)
    it comes from the call itself. Either way the engine goes on working."""
    error = "MXNetError: Check failed: is_valid: take operator contains indices out of bound"
    got = _call(guide, "guide_async_errors")
    assert got["engine"] == "default"
    for wait in ("wait_to_read", "asnumpy", "mx.nd.waitall"):
        assert got[f"{wait}: at the call"] is None, wait
        assert got[f"{wait}: at the wait"] == error, wait
    assert got["the next operator runs"].tolist() == [2.0, 2.0]
    naive = _start({"MXNET_ENGINE_TYPE": "NaiveEngine"})
    try:
        got = naive.call("guide_async_errors")
    finally:
        naive.close()
    assert got["engine"] == "NaiveEngine"
    for wait in ("wait_to_read", "asnumpy", "mx.nd.waitall"):
        assert got[f"{wait}: at the call"] == error, wait
    assert got["the next operator runs"].tolist() == [2.0, 2.0]


def test_gluon_layers_keep_torchs_shapes_with_zero_biases_and_time_major_input(
    guide: Worker,
) -> None:
    """``l0_i2h_weight`` (G·H, in), ``l0_h2h_weight`` (G·H, H) and two biases (G·H,), as torch;
    layout ``TNC`` unless ``NTC`` is asked; biases start at 0 (the LSTM's forget gate too) and
    weights from ``initialize()``'s default ``Uniform(0.07)``; ``rnn.LSTM`` has no
    ``recurrent_activation`` (``rnn.LSTMCell`` has)."""
    got = _call(guide, "guide_gluon_layers")
    H, V = 4, 3
    for kind, gates in (("RNN", 1), ("GRU", 3), ("LSTM", 4)):
        layer = got[kind]
        assert layer["params"] == [
            ["l0_i2h_weight", [gates * H, V]],
            ["l0_h2h_weight", [gates * H, H]],
            ["l0_i2h_bias", [gates * H]],
            ["l0_h2h_bias", [gates * H]],
        ], kind
        assert layer["layout"] == "TNC", kind
        assert layer["bias values"] == [0.0], kind
        assert 0.03 < layer["weights' largest magnitude"] <= 0.07, kind
    assert got["TNC output shape for (T=5, N=2, C=3)"] == [5, 2, H]
    assert got["NTC output shape for (N=2, T=5, C=3)"] == [2, 5, H]
    assert (
        "unexpected keyword argument 'recurrent_activation'"
        in (got["rnn.LSTM(recurrent_activation=...)"])
    )
    assert got["rnn.LSTMCell(recurrent_activation=...)"] == "hard_sigmoid"


def test_gluon_rnn_defaults_to_relu_where_torch_defaults_to_tanh(guide: Worker) -> None:
    """One unit, weight 1, input −1: Gluon's default ``rnn.RNN`` gives relu(−1) = 0."""
    import torch

    got = _call(guide, "guide_default_activation")
    assert got["default: mode"] == "rnn_relu" and got["default"] == 0.0
    assert got["tanh: mode"] == "rnn_tanh"
    assert got["tanh"] == pytest.approx(np.tanh(-1.0), rel=1e-6)
    assert torch.nn.RNN(1, 1).nonlinearity == "tanh"


def test_gluon_float64_layers_initialise_in_float32_then_cast(guide: Worker) -> None:
    """A float64 layer's random ``initialize()`` fails (the initialiser draws float32); zeros
    work, and so does initialising in float32, ``cast("float64")``, then ``set_data``."""
    got = _call(guide, "guide_float64_layers")
    assert "Expecting 0 got 1 in operator _npi_uniform" in got["initialize()"]
    assert "Expecting 0 got 1 in operator _npi_normal" in got["initialize(mx.init.Normal(0.1))"]
    assert got["initialize(mx.init.Zero())"] is None
    assert got["after cast"] == "float64"
    assert got["set_data keeps it exactly"] is True


def test_gluon_clip_global_norm_adds_an_epsilon_and_takes_legacy_float32(guide: Worker) -> None:
    """Gluon's clip scales by θ/(‖g‖ + 1e-8), in float32 on legacy ``NDArray`` only."""
    got = _call(guide, "guide_clip_global_norm")
    for norm, theta in ((2.0, 1.0), (2e-6, 1e-6), (1e-6, 1e-6)):
        n, t = np.float32(norm), np.float32(theta)
        factor = got[f"{norm:g}, {theta:g}"]
        assert factor == pytest.approx(float(t / (n + np.float32(1e-8))), rel=1e-6)
    assert got["1e-06, 1e-06"] == pytest.approx(1 / 1.01, rel=1e-6)  # d2l: 1, torch: 0.5
    assert "Non-uniform data type in Concat" in got["float64"]
    assert "legacy operator which can only accept legacy ndarrays" in got["mxnet.np arrays"]


def test_gluon_cross_entropy_takes_logits_and_averages_per_batch_row(guide: Worker) -> None:
    """``SoftmaxCrossEntropyLoss()`` takes logits (its ``from_logits=False`` means "apply
    log_softmax", the opposite of Keras' flag), the class axis last, and returns one loss per
    index of ``batch_axis=0``: for time-major logits, the mean over the batch of each step."""
    rng = np.random.default_rng(0)
    T, B, V = 4, 3, 5
    logits, labels = rng.normal(size=(T, B, V)), rng.integers(0, V, (T, B))
    got = _call(guide, "guide_cross_entropy", logits, labels)
    assert got["defaults"] == {
        "from_logits": False,
        "axis": -1,
        "sparse_label": True,
        "batch_axis": 0,
    }
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]  # (T, B)
    assert got["default, given logits"].shape == (T,)
    np.testing.assert_allclose(got["default, given logits"], nll.mean(axis=1), rtol=1e-12)
    assert float(got["default, given logits"].mean()) == pytest.approx(nll.mean(), rel=1e-12)
    np.testing.assert_allclose(got["from_logits=True, given log_softmax"], nll.mean(1), rtol=1e-12)
    assert np.abs(got["from_logits=True, given logits"] - nll.mean(1)).max() > 0.1

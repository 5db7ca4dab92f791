"""PyTorch adapter: dtypes, both gradient modes against the NumPy reference, devices, compile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed: pip install 'rosetta-rnn[torch]'"
)

from rnn_problems import random_problem  # noqa: E402

from rosetta_rnn.backends import numpy as numpy_backend  # noqa: E402
from rosetta_rnn.backends import torch as torch_backend  # noqa: E402
from rosetta_rnn.cli import main  # noqa: E402
from rosetta_rnn.core import model  # noqa: E402
from rosetta_rnn.core.errors import BackendUnavailable  # noqa: E402

REF = numpy_backend.make_ops("float64", "cpu")
TOL = {"float64": 1e-12, "float32": 1e-5}


def _problem(seed: int, V: int = 7, H: int = 6, B: int = 3, T: int = 5):
    return random_problem(np.random.default_rng(seed), V, H, B, T)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-300))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes_are_kept(dtype: str) -> None:
    ops = torch_backend.make_ops(dtype, "cpu")
    want = getattr(torch, dtype)
    assert ops.asarray(np.zeros(3)).dtype == want
    assert ops.zeros((2,)).dtype == want
    assert ops.one_hot(ops.asarray(np.array([1, 0])), 3).dtype == want
    assert ops.asarray(np.array([1, 2])).dtype == torch.int64
    assert ops.minimum(1.0, ops.asarray(np.array([0.5, 2.0]))).dtype == want


@pytest.mark.parametrize("grad", ["autograd", "bptt"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(3))
def test_loss_state_and_grads_match_numpy(dtype: str, grad: str, seed: int) -> None:
    p, X, Y, s = _problem(seed)
    ref_loss, ref_grads, ref_H, _ = model.bptt(REF, p, X, Y, s)
    ops = torch_backend.make_ops(dtype, "cpu")
    vg = (
        torch_backend.autograd_value_and_grad(ops)
        if grad == "autograd"
        else model.bptt_value_and_grad(ops)
    )
    loss, grads, H_T = vg(model.to_backend(ops, p), ops.asarray(X), ops.asarray(Y), ops.asarray(s))
    assert _rel(ops.to_numpy(loss), np.asarray(ref_loss)) <= TOL[dtype]
    assert _rel(ops.to_numpy(H_T), ref_H) <= TOL[dtype]
    for k in model.PARAM_NAMES:
        assert grads[k].dtype == getattr(torch, dtype)
        assert _rel(ops.to_numpy(grads[k]), ref_grads[k]) <= TOL[dtype], k


@pytest.mark.parametrize("theta", [0.01, float("inf")])
@pytest.mark.parametrize("grad", ["autograd", "bptt"])
def test_train_step_matches_numpy(grad: str, theta: float) -> None:
    p, X, Y, s = _problem(9)
    ref = numpy_backend.make_train_step(REF)(p, X, Y, s, 0.7, theta)
    ops = torch_backend.make_ops("float64", "cpu")
    step = torch_backend.make_train_step(ops, grad=grad)
    got = step(model.to_backend(ops, p), ops.asarray(X), ops.asarray(Y), ops.asarray(s), 0.7, theta)
    assert not got[1].requires_grad  # the carried state is detached
    for k in model.PARAM_NAMES:
        assert _rel(ops.to_numpy(got[0][k]), ref[0][k]) <= 1e-12
    assert _rel(ops.to_numpy(got[3]), np.asarray(ref[3])) <= 1e-12


def test_argmax_ties_go_to_the_lowest_index() -> None:
    ops = torch_backend.make_ops("float64", "cpu")
    assert int(ops.argmax(ops.asarray(np.array([[1.0, 3.0, 3.0, 0.0]])), axis=-1)[0]) == 1


def test_devices_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_backend, "_gpu_count", lambda: 0)
    assert torch_backend.resolve_device("auto") == "cpu"
    with pytest.raises(BackendUnavailable, match="no gpu:0"):
        torch_backend.resolve_device("gpu")
    with pytest.raises(BackendUnavailable, match="unknown device"):
        torch_backend.resolve_device("tpu")


def test_device_choice_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_backend, "_gpu_count", lambda: 2)
    assert torch_backend.resolve_device("auto") == "gpu:0"
    assert torch_backend.resolve_device("gpu") == "gpu:0"
    assert torch_backend.resolve_device("gpu:1") == "gpu:1"
    with pytest.raises(BackendUnavailable, match="no gpu:2"):
        torch_backend.resolve_device("gpu:2")
    assert torch_backend._torch_device("gpu:1") == torch.device("cuda", 1)
    assert torch_backend.devices() == ["cpu", "gpu:0", "gpu:1"]


def test_tf32_is_off() -> None:
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text("the time traveller was expounding a recondite matter to us\n" * 20)
    return path


SMALL = [
    "--batch-size",
    "4",
    "--num-steps",
    "8",
    "--num-hiddens",
    "16",
    "--epochs",
    "5",
    "--dtype",
    "float64",
    "--json",
]


def _history(capsys: pytest.CaptureFixture[str], *args: str) -> list[float]:
    assert main(["train", *args, *SMALL]) == 0
    return [h["perplexity"] for h in json.loads(capsys.readouterr().out)["history"]]


@pytest.mark.parametrize("extra", [["--grad", "autograd"], ["--grad", "bptt"], ["--compile"]])
def test_cli_training_matches_numpy(
    tiny_corpus: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    ref = _history(capsys, "--corpus", str(tiny_corpus), "--backend", "numpy")
    got = _history(capsys, "--corpus", str(tiny_corpus), "--backend", "torch", *extra)
    assert max(abs(a - b) / b for a, b in zip(got, ref, strict=True)) <= 1e-9


def test_reduce_overhead_needs_a_cuda_device() -> None:
    ops = torch_backend.make_ops("float32", "cpu")
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        torch_backend.make_train_step(ops, compiled="reduce-overhead")
    assert "reduce-overhead" in torch_backend.COMPILE_MODES
    assert torch_backend.CUDA_ONLY_MODES == ("reduce-overhead",)

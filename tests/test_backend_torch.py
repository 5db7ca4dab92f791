"""What is torch's own in the torch backend: the carried state cut from autograd's graph,
devices, TF32 switched off on a CUDA device, CUDA-graph replay refused on a CPU. Agreement with
NumPy in every mode is tests/test_backends.py's; the quantities, tests/test_conformance.py's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed: pip install 'rosetta-rnn[torch]'"
)

from rnn_problems import random_problem  # noqa: E402

from rosetta_rnn.backends import torch as torch_backend  # noqa: E402
from rosetta_rnn.core import model  # noqa: E402
from rosetta_rnn.core.errors import BackendUnavailable  # noqa: E402


def test_the_returned_state_is_detached() -> None:
    p, X, Y, s = random_problem(np.random.default_rng(9), 7, 6, 3, 5)
    ops = torch_backend.make_ops("float64", "cpu")
    for grad in torch_backend.GRAD_MODES:
        step = torch_backend.make_train_step(ops, grad=grad)
        args = model.to_backend(ops, p), ops.asarray(X), ops.asarray(Y), ops.asarray(s)
        new, H_T, loss, _ = step(*args, 0.7, 1.0)
        assert not H_T.requires_grad and not loss.requires_grad
        assert not any(v.requires_grad for v in new.values())


def test_devices_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_backend, "_gpu_count", lambda: 0)
    assert torch_backend.resolve_device("auto") == "cpu"
    # the message says why, as JAX's and TensorFlow's do: a CPU build, or no GPU it can see
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailable, match=r"is a CPU-only build; install a CUDA build"):
        torch_backend.resolve_device("gpu")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with pytest.raises(BackendUnavailable, match=r"\(CUDA 12.6\) sees no GPU: check the driver"):
        torch_backend.resolve_device("gpu:0")
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


def test_a_float32_run_on_a_cuda_device_turns_tf32_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a (stand-in) GPU, make_ops switches TF32 off; on the CPU it leaves torch alone."""
    monkeypatch.setattr(torch_backend, "_gpu_count", lambda: 1)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch_backend.make_ops("float32", "cpu")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        torch_backend.make_ops("float32", "gpu:0")  # makes no CUDA call: only a device label
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_reduce_overhead_needs_a_cuda_device() -> None:
    ops = torch_backend.make_ops("float32", "cpu")
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        torch_backend.make_train_step(ops, mode="reduce-overhead")
    assert "reduce-overhead" in torch_backend.COMPILE_MODES
    assert "reduce-overhead" not in torch_backend.compile_modes("cpu")
    assert "reduce-overhead" in torch_backend.compile_modes("gpu:0")

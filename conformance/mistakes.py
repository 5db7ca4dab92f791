"""Known mistakes, each a deliberately broken adapter of the NumPy backend.

The suite uses them twice: tests run the checks on them to prove each is caught, and a failing
cell is compared against each of them to name the likely cause in its message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import model, sampling
from rosetta_rnn.core.contract import StepFn

from .subjects import Arrays, BackendSubject


def _batch_major(labels: Any) -> Any:
    """The labels of d2l-en #1349: (B, T) flattened, read as if they were time-major (T, B)."""
    return labels.T.reshape(labels.shape)


class LabelsBatchMajor(BackendSubject):
    """Labels not transposed to time-major (d2l's TensorFlow chapter, d2l-en #1349)."""

    mistake = "labels are not time-major (d2l-en #1349)"

    def value_and_grad(self, mode, params, inputs, labels, state):
        return super().value_and_grad(mode, params, inputs, _batch_major(labels), state)

    def make_step(self, mode: str) -> StepFn:
        step = super().make_step(mode)
        return lambda p, x, y, s, lr, theta: step(p, x, _batch_major(y), s, lr, theta)


class SecondBias(BackendSubject):
    """b_h added twice in the recurrence (torch.nn.RNN's bias_hh loaded with b_h)."""

    mistake = "a second bias: b_h is added twice (torch.nn.RNN's bias_hh must be zero)"

    def put(self, params: Arrays) -> Any:
        doubled = {**params}
        if "b_h" in doubled and "W_hh" in doubled:  # only model parameters, not gradients
            doubled["b_h"] = 2 * params["b_h"]
        return super().put(doubled)

    def transfer(self, params: Arrays) -> Arrays:
        return model.to_numpy(self.ops, BackendSubject.put(self, params))


def _clip_with_epsilon(ops: Any, grads: Any, theta: float, eps: float = 1e-6) -> tuple[Any, Any]:
    norm = model.global_norm(ops, grads)
    scale = ops.minimum(1.0, theta / (norm + eps))
    return {k: grads[k] * scale for k in model.param_names(grads)}, norm


class ClipEpsilon(BackendSubject):
    """Clipping as torch's ``clip_grad_norm_``: g·θ/(‖g‖ + 1e-6)."""

    mistake = "clipping adds an epsilon: g·θ/(‖g‖ + 1e-6), like torch's clip_grad_norm_"

    def clip(self, grads: Arrays, theta: float) -> tuple[Arrays, np.ndarray]:
        clipped, norm = _clip_with_epsilon(self.ops, self.put(grads), theta)
        return {k: self.get(v) for k, v in clipped.items()}, self.get(norm)

    def make_step(self, mode: str) -> StepFn:
        ops = self.ops
        vg = self.module.make_value_and_grad(ops, mode)

        def step(p, x, y, s, lr, theta):
            loss, grads, H_T = vg(p, x, y, s)
            clipped, norm = _clip_with_epsilon(ops, grads, theta)
            return model.sgd(ops, p, clipped, lr), H_T, loss, norm

        return step


class Float32Leak(BackendSubject):
    """A float64 run whose arrays are silently float32 (a default dtype leaking in)."""

    mistake = "float32 leaked into a float64 run"

    def __init__(self, module: Any, dtype: str, device: str = "cpu") -> None:
        super().__init__(module, dtype, device)
        leaky = module.make_ops("float32", device)
        leaky.dtype = dtype  # claims float64, computes float32
        self.ops = leaky


class FrameworkRNG(BackendSubject):
    """Sampling uniforms from the framework's own generator instead of the core's."""

    mistake = "sampling does not use the core generator's uniforms (a framework RNG decides)"

    def predict(self, params, prefix, n, temperature, seed):
        own_rng = np.random.default_rng()  # unseeded: what torch.multinomial & co. amount to
        return sampling.predict(
            self.ops, self.put(params), prefix, n, temperature=temperature, rng=own_rng
        )


MISTAKES: dict[str, Callable[[], BackendSubject]] = {
    "labels-batch-major": lambda: LabelsBatchMajor(numpy_backend, "float64"),
    "second-bias": lambda: SecondBias(numpy_backend, "float64"),
    "clip-epsilon": lambda: ClipEpsilon(numpy_backend, "float64"),
    "float32-leak": lambda: Float32Leak(numpy_backend, "float64"),
    "framework-rng": lambda: FrameworkRNG(numpy_backend, "float64"),
}

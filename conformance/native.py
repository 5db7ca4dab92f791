"""Framework-native RNN layers loaded with core's parameters, and read back: the one place that
maps core's names and orientation onto ``torch.nn.RNN`` + ``nn.Linear`` and Keras ``SimpleRNN`` +
``Dense``. The conformance oracles and the benchmark peers both build their models through it.

- torch keeps weights as (out, in): ``weight_ih_l0 = W_xhᵀ``, ``weight_hh_l0 = W_hhᵀ``,
  ``linear.weight = W_hqᵀ``; it has two biases whose sum is core's ``b_h`` (``bias_hh_l0 = 0``).
- Keras keeps them as core does, (in, out): ``[kernel, recurrent_kernel, bias] = [W_xh, W_hh,
  b_h]`` and ``Dense [kernel, bias] = [W_hq, b_q]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


def load_torch(rnn: Any, linear: Any, params: Arrays, second_bias: bool = False) -> None:
    """Copy core's parameters into ``rnn`` and ``linear`` (dtype and device are theirs).
    ``second_bias`` loads b_h into both biases: the mistake the conformance suite names."""
    import torch

    def put(target: Any, value: np.ndarray) -> None:
        target.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    with torch.no_grad():
        put(rnn.weight_ih_l0, params["W_xh"].T)
        put(rnn.weight_hh_l0, params["W_hh"].T)
        put(rnn.bias_ih_l0, params["b_h"])
        put(rnn.bias_hh_l0, params["b_h"] if second_bias else np.zeros_like(params["b_h"]))
        put(linear.weight, params["W_hq"].T)
        put(linear.bias, params["b_q"])


def read_torch(rnn: Any, linear: Any) -> Arrays:
    """core's parameters from a torch model; ``b_h`` is the sum of torch's two biases."""

    def n(x: Any) -> np.ndarray:
        return np.array(x.detach().cpu().numpy())

    return {
        "W_xh": n(rnn.weight_ih_l0).T,
        "W_hh": n(rnn.weight_hh_l0).T,
        "b_h": n(rnn.bias_ih_l0) + n(rnn.bias_hh_l0),
        "W_hq": n(linear.weight).T,
        "b_q": n(linear.bias),
    }


def torch_grads(rnn: Any, linear: Any) -> dict[str, Any]:
    """The ``.grad`` of each torch parameter under core's names and orientation (torch tensors)."""
    return {
        "W_xh": rnn.weight_ih_l0.grad.T,
        "W_hh": rnn.weight_hh_l0.grad.T,
        "b_h": rnn.bias_ih_l0.grad,
        "W_hq": linear.weight.grad.T,
        "b_q": linear.bias.grad,
    }


KERAS_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")
"""core's names in the order of ``[*rnn.trainable_weights, *dense.trainable_weights]``."""


def load_keras(rnn: Any, dense: Any, params: Arrays) -> None:
    """Copy core's parameters into a built ``SimpleRNN`` and ``Dense``."""
    rnn.set_weights([params["W_xh"], params["W_hh"], params["b_h"]])
    dense.set_weights([params["W_hq"], params["b_q"]])


def read_keras(rnn: Any, dense: Any) -> Arrays:
    """core's parameters from a ``SimpleRNN`` and ``Dense``."""
    values = [*rnn.get_weights(), *dense.get_weights()]
    return dict(zip(KERAS_NAMES, values, strict=True))

"""Framework-native recurrent layers loaded with core's parameters, and read back: torch's
``nn.RNN``/``nn.GRU``/``nn.LSTM`` + ``nn.Linear`` and Keras' ``SimpleRNN``/``GRU``/``LSTM`` +
``Dense``. The conformance oracles and the benchmark peers build their models through it; the
names, gate orders and bias pairs are core.convert's (the same mapping ``rosetta-rnn convert``
writes), so the oracles also prove the converter.

- torch keeps weights as (out, in), its gates stacked (r, z, n) for the GRU and (i, f, g, o)
  for the LSTM, and two biases per gate; core's single bias goes in ``bias_ih``, ``bias_hh`` is
  zero (except the reset-after candidate's, which is core's ``b_hh``).
- Keras keeps them as core does, (in, out), gates (z, r, h) and (i, f, c, o), one bias (two rows
  for GRU(reset_after=True)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rosetta_rnn.core import convert
from rosetta_rnn.core.cells import GRU_RESET_AFTER, GRU_RESET_BEFORE, LSTM, RNN

Arrays = dict[str, np.ndarray]


def torch_layer(cell: str, vocab_size: int, num_hiddens: int, dtype: Any, device: Any) -> Any:
    """An empty torch layer for ``cell``: nn.RNN (tanh), nn.GRU (reset-after) or nn.LSTM."""
    import torch

    kinds = {RNN: torch.nn.RNN, GRU_RESET_AFTER: torch.nn.GRU, LSTM: torch.nn.LSTM}
    if cell not in kinds:
        raise convert.ConversionError(convert.NO_TORCH_RESET_BEFORE)
    return kinds[cell](vocab_size, num_hiddens, dtype=dtype, device=device)


def keras_layer(cell: str, num_hiddens: int, dtype: str, **options: Any) -> Any:
    """An empty Keras layer for ``cell`` returning every step: SimpleRNN, GRU (reset_after as
    the cell says) or LSTM."""
    import keras

    if cell == RNN:
        return keras.layers.SimpleRNN(num_hiddens, return_sequences=True, dtype=dtype, **options)
    if cell in (GRU_RESET_BEFORE, GRU_RESET_AFTER):
        return keras.layers.GRU(
            num_hiddens,
            reset_after=cell == GRU_RESET_AFTER,
            return_sequences=True,
            dtype=dtype,
            **options,
        )
    return keras.layers.LSTM(num_hiddens, return_sequences=True, dtype=dtype, **options)


def load_torch(rnn: Any, linear: Any, params: Arrays, second_bias: bool = False) -> None:
    """Copy core's parameters into ``rnn`` and ``linear`` (dtype and device are theirs).
    ``second_bias`` loads the RNN's b_h into both biases: the mistake the suite names."""
    import torch

    state = convert.to_torch(convert.from_params(params))
    if second_bias:
        state["rnn.bias_hh_l0"] = state["rnn.bias_ih_l0"]
    with torch.no_grad():
        for name, value in state.items():
            module, attr = name.split(".", 1)
            target = getattr(rnn if module == "rnn" else linear, attr)
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _torch_arrays(rnn: Any, linear: Any, grad: bool) -> Arrays:
    def n(x: Any) -> np.ndarray:
        return np.array((x.grad if grad else x).detach().cpu().numpy())

    return {
        name: n(getattr(rnn if name.startswith("rnn.") else linear, name.split(".", 1)[1]))
        for name in convert.TORCH_NAMES
    }


def read_torch(rnn: Any, linear: Any) -> Arrays:
    """core's parameters from a torch model; a bias core keeps once is the sum of the pair."""
    return convert.to_params(convert.from_torch(_torch_arrays(rnn, linear, grad=False)))


def torch_grads(rnn: Any, linear: Any) -> Arrays:
    """The ``.grad`` of each torch parameter under core's names and orientation (NumPy)."""
    return convert.grads_to_params(convert.from_torch(_torch_arrays(rnn, linear, grad=True)))


def load_keras(rnn: Any, dense: Any, params: Arrays) -> None:
    """Copy core's parameters into a built recurrent layer and ``Dense``."""
    w = convert.to_keras(convert.from_params(params))
    rnn.set_weights([w["rnn.kernel"], w["rnn.recurrent_kernel"], w["rnn.bias"]])
    dense.set_weights([w["dense.kernel"], w["dense.bias"]])


def _keras_arrays(values: list[Any]) -> Arrays:
    return {name: np.asarray(v) for name, v in zip(convert.KERAS_NAMES, values, strict=True)}


def read_keras(rnn: Any, dense: Any) -> Arrays:
    """core's parameters from a Keras recurrent layer and ``Dense``."""
    return convert.to_params(
        convert.from_keras(_keras_arrays([*rnn.get_weights(), *dense.get_weights()]))
    )


def keras_grads(values: list[Any]) -> Arrays:
    """core's gradients from the gradients of ``[*rnn.trainable_weights,
    *dense.trainable_weights]`` (kernel, recurrent_kernel, bias, Dense kernel, Dense bias)."""
    return convert.grads_to_params(convert.from_keras(_keras_arrays(values)))

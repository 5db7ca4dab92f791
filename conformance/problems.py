"""Small seeded problems: parameters, inputs, labels and an initial state, for any cell."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rosetta_rnn.core import cells, model

CELLS: tuple[str, ...] = (cells.RNN, *cells.CELLS)
"""Every cell under core's names: rnn, gru/reset-before, gru/reset-after, lstm."""


def cell_label(cell: str) -> str:
    """A cell as ``conform`` names it (its ``--cells`` and ``--json``): ``gru-reset-after``."""
    return cell.replace("/", "-")


CELL_LABELS: dict[str, str] = {cell_label(c): c for c in CELLS}
"""``conform``'s name of each cell -> core's."""

SCALES = ("d2l", "moderate", "saturating")
"""Parameter regimes: d2l's initialisation (normal × 0.01, biases zero), moderate weights, and
input weights and biases so large that most tanh units, and a gated cell's sigmoid gates,
saturate. The recurrent weights keep a spectral radius below one: in a chaotic recurrence
(radius well above one) any two roundings drift apart exponentially with num_steps, which says
nothing about the backends."""

_REGIMES = {"moderate": (0.5, 0.3, 0.9), "saturating": (4.0, 2.0, 0.5), "distinct": (0.5, 0.3, 0.8)}
"""(input weights' σ, biases' σ, the recurrent weights' spectral radius) of each regime.
``distinct`` (``rosetta-rnn verify``'s): moderate, and each gate's input weights at their own
scale and its biases about their own nonzero mean, so no two gates look alike and a swapped,
missing or doubled bias or gate cannot hide."""


def _gate_spread(k: int) -> tuple[float, float]:
    """The ``distinct`` regime's (input-weight scale, bias mean) of the k-th gate."""
    return 0.6 + 0.35 * k, (0.3 + 0.2 * k) * (-1) ** k


State = Any
"""H (batch_size, num_hiddens) as float64 NumPy; the LSTM's the pair (H, C)."""


@dataclass(frozen=True)
class Problem:
    vocab_size: int = 8
    num_hiddens: int = 16
    batch_size: int = 3
    num_steps: int = 5
    scale: str = "moderate"
    seed: int = 0
    embed_dim: int | None = None  # a learned embedding E instead of one-hot inputs
    last_step_loss: bool = False  # the loss sees only the last step
    cell: str = cells.RNN  # core's name: rnn, gru/reset-before, gru/reset-after or lstm
    zero_state: bool = False  # start from H = 0 (and C = 0): a model that takes no state

    @property
    def plain(self) -> bool:
        """The model a framework's own layer can run (the oracles): one-hot inputs, the loss
        over every step."""
        return self.embed_dim is None and not self.last_step_loss

    @property
    def label(self) -> str:
        return cell_label(self.cell)

    def draw(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, State]:
        """float64 (params, inputs, labels, state); inputs and labels are time-major, the
        LSTM's state is the pair (H, C)."""
        rng = np.random.default_rng(self.seed)
        if self.cell == cells.RNN:
            params = self._rnn_params(rng)
        else:
            params = self._gated_params(rng)
        V, H, B, T = self.vocab_size, self.num_hiddens, self.batch_size, self.num_steps
        inputs = rng.integers(0, V, (T, B))
        labels = rng.integers(0, V, (1 if self.last_step_loss else T, B))
        state = np.tanh(rng.standard_normal((B, H)))
        if self.cell == cells.LSTM:  # the memory is unbounded: any real
            memory = rng.standard_normal((B, H))
            if self.zero_state:
                return params, inputs, labels, (state * 0, memory * 0)
            return params, inputs, labels, (state, memory)
        return params, inputs, labels, state * 0 if self.zero_state else state

    def _rnn_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        V, H, D = self.vocab_size, self.num_hiddens, self.embed_dim
        params = model.init_params(V, H, rng, "float64", embed_dim=D)  # d2l: normal × 0.01
        if self.scale != "d2l":
            w_in, bias, radius = _REGIMES[self.scale]
            params["W_xh"] = rng.standard_normal((D or V, H)) * w_in
            if D:
                params["E"] = rng.standard_normal((V, D))
            params["W_hh"] = rng.standard_normal((H, H)) * (radius / np.sqrt(H))
            params["b_h"] = rng.standard_normal(H) * bias
            if self.scale == "distinct":
                params["b_h"] += _gate_spread(0)[1]
            self._output_layer(params, rng)
        return params

    def _gated_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The cell's own init (d2l: normal × 0.01, biases zero), then the regime drawn in the
        table's order: every gate's input weights, recurrent weights (each its own spectral
        radius below one) and biases, E, the output layer."""
        V, H, D = self.vocab_size, self.num_hiddens, self.embed_dim
        params = cells.init_params(self.cell, V, H, rng, "float64", embed_dim=D)
        if self.scale != "d2l":
            w_in, bias, radius = _REGIMES[self.scale]
            gates: list[str] = []  # the order each gate's input weights come in
            for name in cells.param_names(self.cell):
                if name.startswith("W_x"):
                    gates.append(name[3:])
                    scale = _gate_spread(len(gates) - 1)[0] if self.scale == "distinct" else 1
                    params[name] = rng.standard_normal((D or V, H)) * w_in * scale
                elif name.startswith("W_h") and name != "W_hq":
                    params[name] = rng.standard_normal((H, H)) * (radius / np.sqrt(H))
                elif name.startswith("b_") and name != "b_q":
                    params[name] = rng.standard_normal(H) * bias
                    if self.scale == "distinct":  # b_xh and b_hh: the candidate's both
                        params[name] += _gate_spread(len(gates) - 1)[1] + 0.1 * (name == "b_hh")
            if D:
                params["E"] = rng.standard_normal((V, D))
            self._output_layer(params, rng)
        return params

    def _output_layer(self, params: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        # the output layer stays moderate in every regime: overconfident logits make the
        # loss itself ill-conditioned (a loss of 1e-9 from logits of 10 keeps no float32
        # digits), which is about log-softmax, not about saturating tanh or gates
        V, H = self.vocab_size, self.num_hiddens
        params["W_hq"] = rng.standard_normal((H, V)) * 0.5
        params["b_q"] = rng.standard_normal(V) * 0.3

    def corpus(self, length: int = 400) -> np.ndarray:
        """A token stream with structure (a repeated random phrase plus noise) for training."""
        rng = np.random.default_rng(self.seed + 1)
        phrase = rng.integers(0, self.vocab_size, 23)
        ids = np.resize(phrase, length)
        noise = rng.random(length) < 0.1
        ids[noise] = rng.integers(0, self.vocab_size, int(noise.sum()))
        return ids


def state_parts(state: State) -> tuple[Any, ...]:
    """A state as a tuple: (H,), or the LSTM's (H, C)."""
    return tuple(state) if isinstance(state, tuple) else (state,)


def state_arrays(state: State, prefix: str = "H_T") -> dict[str, np.ndarray]:
    """A final state as named arrays: ``H_T``, and ``C_T`` for the LSTM's memory."""
    names = (prefix, prefix.replace("H", "C", 1))
    return {n: np.asarray(s) for n, s in zip(names, state_parts(state), strict=False)}


def for_cell(problems: Sequence[Problem], cell: str) -> list[Problem]:
    """The same shapes, regimes and seeds as problems of ``cell``."""
    return [dataclasses.replace(p, cell=cell) for p in problems]


DEFAULT_PROBLEMS = (
    Problem(8, 16, 3, 5, "moderate", 0),
    Problem(28, 32, 4, 7, "d2l", 1),
    Problem(5, 6, 1, 1, "saturating", 2),
    Problem(12, 9, 2, 12, "saturating", 3),
    Problem(9, 10, 3, 6, "moderate", 4, embed_dim=5),
    Problem(7, 8, 2, 6, "saturating", 5, last_step_loss=True),
)
"""What ``rosetta-rnn conform`` runs for every cell (the pytest suite draws shapes with
hypothesis)."""

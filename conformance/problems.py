"""Small seeded problems: parameters, inputs, labels and an initial state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rosetta_rnn.core import model

SCALES = ("d2l", "moderate", "saturating")
"""Parameter regimes: d2l's initialisation (normal × 0.01), moderate weights, and input
weights and biases so large that most tanh units saturate. The recurrent weights keep a
spectral radius below one: in a chaotic recurrence (radius well above one) any two roundings
drift apart exponentially with num_steps, which says nothing about the backends."""


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

    @property
    def plain(self) -> bool:
        """The chapter's model exactly (what the torch.nn.RNN and Keras oracles can run)."""
        return self.embed_dim is None and not self.last_step_loss

    def draw(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """float64 (params, inputs, labels, state); inputs and labels are time-major."""
        rng = np.random.default_rng(self.seed)
        V, H, B, T = self.vocab_size, self.num_hiddens, self.batch_size, self.num_steps
        D = self.embed_dim
        params = model.init_params(V, H, rng, "float64", embed_dim=D)  # d2l: normal × 0.01
        if self.scale != "d2l":
            w_in, bias, radius = {"moderate": (0.5, 0.3, 0.9), "saturating": (4.0, 2.0, 0.5)}[
                self.scale
            ]
            params["W_xh"] = rng.standard_normal((D or V, H)) * w_in
            if D:
                params["E"] = rng.standard_normal((V, D))
            params["W_hh"] = rng.standard_normal((H, H)) * (radius / np.sqrt(H))
            params["b_h"] = rng.standard_normal(H) * bias
            # the output layer stays moderate in every regime: overconfident logits make the
            # loss itself ill-conditioned (a loss of 1e-9 from logits of 10 keeps no float32
            # digits), which is about log-softmax, not about saturating tanh
            params["W_hq"] = rng.standard_normal((H, V)) * 0.5
            params["b_q"] = rng.standard_normal(V) * 0.3
        inputs = rng.integers(0, V, (T, B))
        labels = rng.integers(0, V, (1 if self.last_step_loss else T, B))
        state = np.tanh(rng.standard_normal((B, H)))
        return params, inputs, labels, state

    def corpus(self, length: int = 400) -> np.ndarray:
        """A token stream with structure (a repeated random phrase plus noise) for training."""
        rng = np.random.default_rng(self.seed + 1)
        phrase = rng.integers(0, self.vocab_size, 23)
        ids = np.resize(phrase, length)
        noise = rng.random(length) < 0.1
        ids[noise] = rng.integers(0, self.vocab_size, int(noise.sum()))
        return ids


DEFAULT_PROBLEMS = (
    Problem(8, 16, 3, 5, "moderate", 0),
    Problem(28, 32, 4, 7, "d2l", 1),
    Problem(5, 6, 1, 1, "saturating", 2),
    Problem(12, 9, 2, 12, "saturating", 3),
    Problem(9, 10, 3, 6, "moderate", 4, embed_dim=5),
    Problem(7, 8, 2, 6, "saturating", 5, last_step_loss=True),
)
"""What ``rosetta-rnn conform`` runs (the pytest suite draws shapes with hypothesis)."""

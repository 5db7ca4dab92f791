"""A plain NumPy float64 reference of d2l's chapter "RNN implementation from scratch".

This module is a test oracle. It is written from the book's text (Dive into Deep Learning,
"Text Preprocessing", "Language Models and the Dataset", "Recurrent Neural Network
Implementation from Scratch") with the book's names, its per-time-step loops and its order of
operations, and it shares no code with the library: it imports only the standard library and
NumPy. The book's random draws (the iterators' offset and shuffle, the parameter
initialisation, the sampled predictions) are explicit arguments here.

Conventions: token ids are ints; the model's inputs and labels are time-major ``(T, B)``;
every array of numbers is float64.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Text preprocessing
# ---------------------------------------------------------------------------------------------


def read_time_machine(path: Any) -> list[str]:
    """The book's lines: every run of non-letters becomes one space, stripped, lower-cased."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]


def tokenize(lines: Sequence[str], token: str = "word") -> list[list[str]]:
    """Split each line into word tokens (``line.split()``) or character tokens (``list(line)``)."""
    if token == "word":
        return [line.split() for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"unknown token type: {token!r}")


def count_corpus(tokens: Sequence[Any]) -> collections.Counter:
    """Count token frequencies; a 2D list (a list of lines) is flattened first."""
    if len(tokens) == 0 or isinstance(tokens[0], list):
        tokens = [token for line in tokens for token in line]
    return collections.Counter(tokens)


class Vocab:
    """The book's vocabulary: ``<unk>`` at 0, reserved tokens, then tokens by falling frequency."""

    def __init__(
        self,
        tokens: Sequence[Any] | None = None,
        min_freq: int = 0,
        reserved_tokens: Sequence[str] | None = None,
    ) -> None:
        if tokens is None:
            tokens = []
        if reserved_tokens is None:
            reserved_tokens = []
        counter = count_corpus(tokens)
        # sorted() is stable, also with reverse=True: ties keep the Counter's first-seen order.
        self._token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token: list[str] = ["<unk>", *reserved_tokens]
        self.token_to_idx: dict[str, int] = {
            token: idx for idx, token in enumerate(self.idx_to_token)
        }
        for token, freq in self._token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.idx_to_token.append(token)
                self.token_to_idx[token] = len(self.idx_to_token) - 1

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens: Any) -> Any:
        """A token's index (unknown tokens give ``unk``); a list or tuple gives a list."""
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(token) for token in tokens]

    def to_tokens(self, indices: Any) -> Any:
        """The token at an index; a list or tuple of indices gives a list of tokens."""
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[index] for index in indices]

    @property
    def unk(self) -> int:
        """The index of the unknown token."""
        return 0

    @property
    def token_freqs(self) -> list[tuple[str, int]]:
        """``(token, count)`` pairs, most frequent first."""
        return self._token_freqs


def load_corpus_time_machine(
    path: Any, token: str = "char", max_tokens: int = -1
) -> tuple[list[int], Vocab]:
    """The corpus as token ids (all lines concatenated, no separators) and its vocabulary."""
    lines = read_time_machine(path)
    tokens = tokenize(lines, token)
    vocab = Vocab(tokens)
    corpus = [vocab[tok] for line in tokens for tok in line]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


# ---------------------------------------------------------------------------------------------
# Minibatches of sequences
# ---------------------------------------------------------------------------------------------


def _check_sizes(batch_size: int, num_steps: int) -> None:
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size}, {num_steps}")


def seq_data_iter_random(
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    offset: int,
    order: Sequence[int],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The book's random sampling; ``offset`` and ``order`` are its two random draws.

    ``offset`` is ``random.randint(0, num_steps - 1)``; ``order`` is the shuffled order of the
    subsequences, a permutation of ``range(num_subseqs)``. X and Y are int64 ``(B, num_steps)``.
    """
    _check_sizes(batch_size, num_steps)
    if not 0 <= offset <= num_steps - 1:
        raise ValueError(f"offset must be in [0, {num_steps - 1}], got {offset}")
    corpus = list(corpus)[offset:]
    num_subseqs = max((len(corpus) - 1) // num_steps, 0)
    order = [int(k) for k in order]
    if sorted(order) != list(range(num_subseqs)):
        raise ValueError(f"order must be a permutation of range({num_subseqs})")
    # The book: initial_indices = list(range(0, num_subseqs * num_steps, num_steps)), shuffled.
    initial_indices = [num_steps * k for k in order]

    def data(pos: int) -> list[int]:
        return corpus[pos : pos + num_steps]

    num_batches = num_subseqs // batch_size
    batches = []
    for i in range(0, batch_size * num_batches, batch_size):
        initial_indices_per_batch = initial_indices[i : i + batch_size]
        X = [data(j) for j in initial_indices_per_batch]
        Y = [data(j + 1) for j in initial_indices_per_batch]
        batches.append((np.array(X, dtype=np.int64), np.array(Y, dtype=np.int64)))
    return batches


def seq_data_iter_sequential(
    corpus: Sequence[int], batch_size: int, num_steps: int, offset: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The book's sequential partitioning; ``offset`` is its draw ``random.randint(0, num_steps)``.

    Row i of minibatch k + 1 continues row i of minibatch k. X and Y are int64 ``(B, num_steps)``.
    """
    _check_sizes(batch_size, num_steps)
    if not 0 <= offset <= num_steps:
        raise ValueError(f"offset must be in [0, {num_steps}], got {offset}")
    corpus = list(corpus)
    num_tokens = max(((len(corpus) - offset - 1) // batch_size) * batch_size, 0)
    Xs = np.array(corpus[offset : offset + num_tokens], dtype=np.int64)
    Ys = np.array(corpus[offset + 1 : offset + 1 + num_tokens], dtype=np.int64)
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    batches = []
    for i in range(0, num_steps * num_batches, num_steps):
        X = Xs[:, i : i + num_steps]
        Y = Ys[:, i : i + num_steps]
        batches.append((X.copy(), Y.copy()))
    return batches


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def get_params(
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """The book's parameters, drawn in its order: W_xh, W_hh, b_h, W_hq, b_q (then E).

    ``normal(shape)`` is ``rng.standard_normal(shape) * 0.01``; the biases are zeros. With
    ``embed_dim`` (a learned embedding, not in the book) W_xh is ``(embed_dim, num_hiddens)`` and
    ``E`` ``(vocab_size, embed_dim)`` is drawn last.
    """
    num_inputs = num_outputs = vocab_size
    if embed_dim is not None:
        num_inputs = embed_dim

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape) * 0.01

    params = {
        "W_xh": normal((num_inputs, num_hiddens)),
        "W_hh": normal((num_hiddens, num_hiddens)),
        "b_h": np.zeros(num_hiddens, dtype=np.float64),
        "W_hq": normal((num_hiddens, num_outputs)),
        "b_q": np.zeros(num_outputs, dtype=np.float64),
    }
    if embed_dim is not None:
        params["E"] = normal((vocab_size, embed_dim))
    return params


def init_rnn_state(batch_size: int, num_hiddens: int) -> np.ndarray:
    """The zero hidden state ``(batch_size, num_hiddens)``."""
    return np.zeros((batch_size, num_hiddens), dtype=np.float64)


def _vocab_size(params: dict[str, np.ndarray]) -> int:
    return int(params["W_hq"].shape[1])


def _check_activation(activation: str) -> None:
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")


def _phi(Z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(Z)
    return np.maximum(Z, 0.0)


def _phi_prime(H: np.ndarray, activation: str) -> np.ndarray:
    """phi'(Z) written through H = phi(Z): 1 - H**2 for tanh, 1 where Z > 0 for relu."""
    if activation == "tanh":
        return 1.0 - H**2
    return (H > 0).astype(np.float64)


def _check_ids(inputs: Any, vocab_size: int) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be time-major (T, B), got shape {inputs.shape}")
    if not np.issubdtype(inputs.dtype, np.integer):
        raise ValueError(f"inputs must be integer token ids, got dtype {inputs.dtype}")
    if inputs.size and (inputs.min() < 0 or inputs.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    return inputs


def _step_input(tokens: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """One step's input: the one-hot rows of ``tokens``, or their embedding rows ``E[tokens]``."""
    if "E" in params:
        return params["E"][tokens]
    return np.eye(_vocab_size(params), dtype=np.float64)[tokens]


def rnn(
    inputs: Any,
    state: np.ndarray,
    params: dict[str, np.ndarray],
    activation: str = "tanh",
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The book's ``rnn``: per step, H = phi(X W_xh + H W_hh + b_h) and Y = H W_hq + b_q.

    ``inputs`` are time-major token ids ``(T, B)``. Returns the outputs concatenated along the
    batch axis ``(T * B, V)``, the final state and the list ``[H_1, ..., H_T]``.
    """
    _check_activation(activation)
    inputs = _check_ids(inputs, _vocab_size(params))
    W_xh, W_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
    W_hq, b_q = params["W_hq"], params["b_q"]
    H = state
    outputs = []
    Hs = []
    for t in range(inputs.shape[0]):
        X = _step_input(inputs[t], params)
        H = _phi(X @ W_xh + H @ W_hh + b_h, activation)
        Y = H @ W_hq + b_q
        outputs.append(Y)
        Hs.append(H)
    if not outputs:
        return np.zeros((0, _vocab_size(params)), dtype=np.float64), H, Hs
    return np.concatenate(outputs, axis=0), H, Hs


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed as exp(z - max z) / sum."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def loss_and_grads(
    params: dict[str, np.ndarray],
    inputs: Any,
    labels: Any,
    state: np.ndarray,
    activation: str = "tanh",
) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """Mean cross-entropy over the last ``w`` steps' outputs, its gradients, and H_T.

    ``inputs`` are time-major ``(T, B)``; ``labels`` are time-major ``(w, B)`` with
    ``1 <= w <= T`` and label the outputs of steps ``T - w .. T - 1``. The gradients come from a
    plain per-step backward loop; ``state`` gets none (it is a constant, "detached").
    """
    _check_activation(activation)
    V = _vocab_size(params)
    inputs = _check_ids(inputs, V)
    labels = _check_ids(labels, V)
    T, B = inputs.shape
    w = labels.shape[0]
    if not 1 <= w <= T or labels.shape[1] != B:
        raise ValueError(f"labels must be (w, {B}) with 1 <= w <= {T}, got {labels.shape}")

    # Forward: the book's rnn, then the loss on the last w steps.
    outputs, H_T, Hs = rnn(inputs, state, params, activation)
    y_hat = outputs[(T - w) * B :]  # (w * B, V), time-major
    y = labels.reshape(-1)  # time-major, as the book's Y.T.reshape(-1)
    n = w * B
    log_probs = _log_softmax(y_hat)
    loss = float(-log_probs[np.arange(n), y].sum() / n)

    # dloss / dlogits: (softmax - one_hot) / n for each labelled prediction.
    dy_hat = _softmax(y_hat)
    dy_hat[np.arange(n), y] -= 1.0
    dy_hat /= n

    W_xh, W_hh, W_hq = params["W_xh"], params["W_hh"], params["W_hq"]
    grads = {name: np.zeros_like(p, dtype=np.float64) for name, p in params.items()}
    dH_next = np.zeros_like(H_T, dtype=np.float64)  # gradient reaching H_t from step t + 1
    for t in range(T - 1, -1, -1):
        H_t = Hs[t]
        H_prev = Hs[t - 1] if t > 0 else state
        dH = dH_next.copy()
        if t >= T - w:
            dY = dy_hat[(t - (T - w)) * B : (t - (T - w) + 1) * B]
            grads["W_hq"] += H_t.T @ dY
            grads["b_q"] += dY.sum(axis=0)
            dH += dY @ W_hq.T
        dZ = dH * _phi_prime(H_t, activation)
        X = _step_input(inputs[t], params)
        grads["W_xh"] += X.T @ dZ
        if "E" in params:
            dX = dZ @ W_xh.T
            for b in range(B):
                grads["E"][inputs[t, b]] += dX[b]
        grads["W_hh"] += H_prev.T @ dZ
        grads["b_h"] += dZ.sum(axis=0)
        dH_next = dZ @ W_hh.T
    return loss, grads, H_T


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def grad_clipping(
    grads: dict[str, np.ndarray], theta: float
) -> tuple[dict[str, np.ndarray], float]:
    """The book's clipping: scale all gradients by theta / norm when their global norm > theta.

    Returns the (new) clipped gradients and the global norm before clipping.
    """
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    clipped = {}
    for name, g in grads.items():
        if norm > theta:
            clipped[name] = g * (theta / norm)
        else:
            clipped[name] = g.copy()
    return clipped, norm


def sgd(
    params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float
) -> dict[str, np.ndarray]:
    """The book's ``sgd`` with ``batch_size=1``: ``p - lr * g`` for every parameter."""
    return {name: p - lr * grads[name] for name, p in params.items()}


def train_epoch(
    params: dict[str, np.ndarray],
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    lr: float,
    theta: float,
    *,
    sampling: str = "sequential",
    offset: int = 0,
    order: Sequence[int] | None = None,
    reset_state: bool = False,
    detach: bool = True,
    last_step: bool = False,
    activation: str = "tanh",
) -> tuple[dict[str, np.ndarray], float, list[tuple[float, float]]]:
    """The book's ``train_epoch_ch8``: one pass over the minibatches, clipping, then sgd.

    Returns the parameters after the epoch, the epoch's perplexity and ``(loss, norm)`` per
    minibatch (``norm`` is the global gradient norm before clipping).
    """
    if sampling == "sequential":
        if order is not None:
            raise ValueError("order is the random iterator's shuffle; sequential takes none")
        batches = seq_data_iter_sequential(corpus, batch_size, num_steps, offset)
    elif sampling == "random":
        if order is None:
            raise ValueError("sampling='random' needs order (the shuffled subsequence order)")
        batches = seq_data_iter_random(corpus, batch_size, num_steps, offset, order)
    else:
        raise ValueError(f"sampling must be 'sequential' or 'random', got {sampling!r}")
    if not detach and (sampling != "sequential" or reset_state):
        raise ValueError("detach=False needs sampling='sequential' and reset_state=False")
    if not batches:
        raise ValueError("the corpus is too short for one minibatch")

    num_hiddens = int(params["W_hh"].shape[0])
    state = None
    history = []
    inputs_so_far: list[np.ndarray] = []
    metric = [0.0, 0.0]  # sum of loss * n_labels, sum of n_labels
    for X, Y in batches:
        if state is None or sampling == "random" or reset_state:
            state = init_rnn_state(X.shape[0], num_hiddens)
        inputs = X.T  # time-major (num_steps, B)
        labels = Y.T[-1:] if last_step else Y.T
        if detach:
            loss, grads, state = loss_and_grads(params, inputs, labels, state, activation)
        else:
            # Backpropagation through the whole epoch so far, from a zero state.
            inputs_so_far.append(inputs)
            all_inputs = np.concatenate(inputs_so_far, axis=0)
            zeros = init_rnn_state(X.shape[0], num_hiddens)
            loss, grads, _ = loss_and_grads(params, all_inputs, labels, zeros, activation)
        grads, norm = grad_clipping(grads, theta)
        params = sgd(params, grads, lr)
        n_labels = labels.size
        metric[0] += loss * n_labels
        metric[1] += n_labels
        history.append((loss, norm))
    return params, math.exp(metric[0] / metric[1]), history


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def _sample(probs: np.ndarray, u: float) -> int:
    """Inverse CDF: the smallest i with cumsum(probs)[i] > u * cumsum(probs)[-1], at most V - 1."""
    cdf = np.cumsum(probs)
    target = u * cdf[-1]
    for i in range(len(cdf)):
        if cdf[i] > target:
            return i
    return len(cdf) - 1


def predict(
    prefix: Sequence[int],
    num_preds: int,
    params: dict[str, np.ndarray],
    activation: str = "tanh",
    *,
    temperature: float | None = None,
    alpha: float | None = None,
    uniforms: Iterable[float] | None = None,
) -> list[int]:
    """The book's ``predict_ch8`` on token ids: warm up on ``prefix``, then predict ``num_preds``.

    Greedy (the lowest index among the maxima) unless ``temperature`` (softmax(logits / T)) or
    ``alpha`` (p**alpha / sum, p = softmax(logits)) is given; a sampled choice consumes the next
    number of ``uniforms``. Returns ``prefix`` followed by the predicted ids.
    """
    if len(prefix) == 0:
        raise ValueError("prefix must hold at least one token")
    if num_preds < 0:
        raise ValueError(f"num_preds must be >= 0, got {num_preds}")
    if temperature is not None and alpha is not None:
        raise ValueError("give at most one of temperature and alpha")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    sampled = temperature is not None or alpha is not None
    if sampled and uniforms is None:
        raise ValueError("sampling (temperature or alpha) needs uniforms")
    us = iter(uniforms) if uniforms is not None else iter(())

    num_hiddens = int(params["W_hh"].shape[0])
    state = init_rnn_state(1, num_hiddens)
    outputs = [int(prefix[0])]

    def get_input() -> np.ndarray:
        return np.array([[outputs[-1]]], dtype=np.int64)

    for y in prefix[1:]:  # warm-up period
        _, state, _ = rnn(get_input(), state, params, activation)
        outputs.append(int(y))
    for _ in range(num_preds):  # predict num_preds steps
        logits, state, _ = rnn(get_input(), state, params, activation)
        logits = logits[0]
        if not sampled:
            outputs.append(int(np.argmax(logits)))
            continue
        if temperature is not None:
            probs = _softmax(logits / temperature)
        else:
            p = _softmax(logits)
            probs = p**alpha / np.sum(p**alpha)
        u = next(us, None)
        if u is None:
            raise ValueError("uniforms ran out")
        u = float(u)
        if not 0.0 <= u < 1.0:
            raise ValueError(f"uniforms must lie in [0, 1), got {u}")
        outputs.append(_sample(probs, u))
    return outputs

"""A plain NumPy float64 reference of d2l's chapter "RNN implementation from scratch".

This module is a test oracle. It is written from the book's text (Dive into Deep Learning,
"Text Preprocessing", "Language Models and the Dataset", "Recurrent Neural Network
Implementation from Scratch", and the gated cells of "Gated Recurrent Units (GRU)" and "Long
Short-Term Memory (LSTM)") with the book's names, its per-time-step loops and its order of
operations, and it shares no code with the library: it imports only the standard library and
NumPy. The book's random draws (the iterators' offset and shuffle, the parameter
initialisation, the sampled predictions) are explicit arguments here.

Cells (``cell=``): ``rnn`` (the chapter's), ``gru-reset-before`` (d2l's ``gru``),
``gru-reset-after`` (the candidate of the torch.nn.GRU documentation, which the book does not
write) and ``lstm`` (d2l's ``lstm``).

Conventions: token ids are ints; the model's inputs and labels are time-major ``(T, B)``;
every array of numbers is float64. A GRU's state is H ``(B, num_hiddens)``, the LSTM's the
tuple ``(H, C)``.
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


def read_time_machine_whole(path: Any) -> str:
    """The current edition's text (d2l 1.0, 9.2 ``_preprocess``): the whole file read at once,
    every run of non-letters one space, lower-cased, nothing stripped (a line break is a space)."""
    with open(path, encoding="utf-8") as f:
        raw_text = f.read()
    return re.sub("[^A-Za-z]+", " ", raw_text).lower()


def tokenize_whole(text: str, token: str = "char") -> list[str]:
    """The current edition's tokens of the whole text: characters ``list(text)``, or words
    ``text.split()``."""
    if token == "word":
        return text.split()
    if token == "char":
        return list(text)
    raise ValueError(f"unknown token type: {token!r}")


class SortedVocab(Vocab):
    """The current edition's vocabulary (d2l 1.0, 9.2): ``<unk>``, the reserved tokens and every
    token of at least ``min_freq`` occurrences, in sorted order; ``unk`` is ``<unk>``'s index."""

    def __init__(
        self,
        tokens: Sequence[Any] | None = None,
        min_freq: int = 0,
        reserved_tokens: Sequence[str] | None = None,
    ) -> None:
        super().__init__(tokens, min_freq, reserved_tokens)  # the same tokens, then sorted
        self.idx_to_token = sorted(self.idx_to_token)
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}

    @property
    def unk(self) -> int:
        """The index of the unknown token."""
        return self.token_to_idx["<unk>"]


def load_corpus_time_machine(
    path: Any,
    token: str = "char",
    max_tokens: int = -1,
    *,
    text: str = "lines",
    vocab_order: str = "frequency",
) -> tuple[list[int], Vocab]:
    """The corpus as token ids and its vocabulary.

    ``text="lines"`` (d2l 0.17): the preprocessed lines concatenated, no separators;
    ``text="whole"`` (d2l 1.0): the whole file preprocessed at once. ``vocab_order="frequency"``
    is ``Vocab`` (d2l 0.17), ``"sorted"`` ``SortedVocab`` (d2l 1.0). The ids are truncated to the
    first ``max_tokens`` when > 0, after the vocabulary is built.
    """
    tokens: list[Any]
    if text == "lines":
        tokens = tokenize(read_time_machine(path), token)  # a list of lines
        flat = [tok for line in tokens for tok in line]
    elif text == "whole":
        tokens = flat = tokenize_whole(read_time_machine_whole(path), token)
    else:
        raise ValueError(f"text must be 'lines' or 'whole', got {text!r}")
    if vocab_order == "frequency":
        vocab = Vocab(tokens)
    elif vocab_order == "sorted":
        vocab = SortedVocab(tokens)
    else:
        raise ValueError(f"vocab_order must be 'frequency' or 'sorted', got {vocab_order!r}")
    corpus = [vocab[tok] for tok in flat]
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


def window_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into minibatches of ``batch_size``, in order, the last partial one kept."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = [int(k) for k in order]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def seq_data_iter_windows(
    corpus: Sequence[int], batch_size: int, num_steps: int, starts: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The current edition's dataset (d2l 1.0, 9.3 ``TimeMachine``): window i is the
    ``num_steps + 1`` ids from position i, X its first ``num_steps``, Y its last ``num_steps``;
    one window starts at each i in ``0 .. len(corpus) - num_steps - 1``.

    Minibatches of the windows starting at ``starts``, in that order (``window_batches``, the
    last partial minibatch kept). X and Y are int64 ``(B, num_steps)``.
    """
    _check_sizes(batch_size, num_steps)
    corpus = list(corpus)
    num_windows = max(len(corpus) - num_steps, 0)
    batches = []
    for starts_per_batch in window_batches(starts, batch_size):
        if any(not 0 <= i < num_windows for i in starts_per_batch):
            raise ValueError(f"window starts must lie in [0, {num_windows})")
        windows = [corpus[i : i + num_steps + 1] for i in starts_per_batch]
        X = [window[:-1] for window in windows]
        Y = [window[1:] for window in windows]
        batches.append((np.array(X, dtype=np.int64), np.array(Y, dtype=np.int64)))
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
    return _concat(outputs, params), H, Hs


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed as exp(z - max z) / sum."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _labelled_loss(
    outputs: np.ndarray, labels: np.ndarray, T: int, B: int
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of the last ``w`` steps' outputs and its gradient by the logits.

    ``outputs`` are ``(T * B, V)`` time-major, ``labels`` ``(w, B)``. The gradient is
    ``(softmax - one_hot) / n`` on the ``n = w * B`` labelled rows, ``(n, V)``.
    """
    w = labels.shape[0]
    y_hat = outputs[(T - w) * B :]  # (w * B, V), time-major
    y = labels.reshape(-1)  # time-major, as the book's Y.T.reshape(-1)
    n = w * B
    log_probs = _log_softmax(y_hat)
    loss = float(-log_probs[np.arange(n), y].sum() / n)
    dy_hat = _softmax(y_hat)
    dy_hat[np.arange(n), y] -= 1.0
    dy_hat /= n
    return loss, dy_hat


def _check_problem(
    params: dict[str, np.ndarray], inputs: Any, labels: Any
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(inputs, labels, T, B, w) with the ids, the shapes and ``1 <= w <= T`` checked."""
    V = _vocab_size(params)
    inputs = _check_ids(inputs, V)
    labels = _check_ids(labels, V)
    T, B = inputs.shape
    w = labels.shape[0]
    if not 1 <= w <= T or labels.shape[1] != B:
        raise ValueError(f"labels must be (w, {B}) with 1 <= w <= {T}, got {labels.shape}")
    return inputs, labels, T, B, w


def loss_and_grads(
    params: dict[str, np.ndarray],
    inputs: Any,
    labels: Any,
    state: Any,
    activation: str = "tanh",
    cell: str = "rnn",
) -> tuple[float, dict[str, np.ndarray], Any]:
    """Mean cross-entropy over the last ``w`` steps' outputs, its gradients, and the final state.

    ``inputs`` are time-major ``(T, B)``; ``labels`` are time-major ``(w, B)`` with
    ``1 <= w <= T`` and label the outputs of steps ``T - w .. T - 1``. The gradients come from a
    plain per-step backward loop; ``state`` gets none (it is a constant, "detached"). ``cell``
    is one of ``CELLS``; ``activation`` is the RNN's (a gated cell's is tanh).
    """
    _check_cell(cell, activation)
    if cell == "rnn":
        return _rnn_loss_and_grads(params, inputs, labels, state, activation)
    return _gated_loss_and_grads(cell, params, inputs, labels, state)


def _rnn_loss_and_grads(
    params: dict[str, np.ndarray],
    inputs: Any,
    labels: Any,
    state: np.ndarray,
    activation: str,
) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    _check_activation(activation)
    inputs, labels, T, B, w = _check_problem(params, inputs, labels)

    # Forward: the book's rnn, then the loss on the last w steps.
    outputs, H_T, Hs = rnn(inputs, state, params, activation)
    loss, dy_hat = _labelled_loss(outputs, labels, T, B)

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
            _scatter_embedding(grads, inputs[t], dZ @ W_xh.T)
        grads["W_hh"] += H_prev.T @ dZ
        grads["b_h"] += dZ.sum(axis=0)
        dH_next = dZ @ W_hh.T
    return loss, grads, H_T


def _scatter_embedding(grads: dict[str, np.ndarray], tokens: np.ndarray, dX: np.ndarray) -> None:
    """X = E[tokens]: each row's gradient goes to its token's row of E."""
    for b in range(len(tokens)):
        grads["E"][tokens[b]] += dX[b]


# ---------------------------------------------------------------------------------------------
# Gated cells: d2l 9.1 (GRU) and 9.2 (LSTM)
# ---------------------------------------------------------------------------------------------

CELLS = ("rnn", "gru-reset-before", "gru-reset-after", "lstm")


def _check_cell(cell: str, activation: str = "tanh") -> None:
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    if cell != "rnn" and activation != "tanh":
        raise ValueError(f"the {cell} cell has σ gates and tanh; activation {activation!r} is not")


def get_gru_params(
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    *,
    reset_after: bool = False,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """d2l 9.1's ``get_params``: ``three()`` for the update gate (W_xz, W_hz, b_z), the reset
    gate (W_xr, W_hr, b_r) and the candidate (W_xh, W_hh, b_h), then W_hq, b_q (then E).

    ``normal(shape)`` is ``rng.standard_normal(shape) * 0.01``; the biases are zeros. With
    ``reset_after`` the candidate has two biases, b_xh outside the reset and b_hh inside it (the
    torch.nn.GRU documentation's b_in and b_hn), both zeros. With ``embed_dim`` the W_x· are
    ``(embed_dim, num_hiddens)`` and ``E`` ``(vocab_size, embed_dim)`` is drawn last.
    """
    num_inputs = num_outputs = vocab_size
    if embed_dim is not None:
        num_inputs = embed_dim

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape) * 0.01

    def three() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            normal((num_inputs, num_hiddens)),
            normal((num_hiddens, num_hiddens)),
            np.zeros(num_hiddens, dtype=np.float64),
        )

    W_xz, W_hz, b_z = three()  # update gate
    W_xr, W_hr, b_r = three()  # reset gate
    W_xh, W_hh, b_h = three()  # candidate hidden state
    W_hq = normal((num_hiddens, num_outputs))
    b_q = np.zeros(num_outputs, dtype=np.float64)
    params = {"W_xz": W_xz, "W_hz": W_hz, "b_z": b_z, "W_xr": W_xr, "W_hr": W_hr, "b_r": b_r}
    params |= {"W_xh": W_xh, "W_hh": W_hh}
    if reset_after:
        params |= {"b_xh": b_h, "b_hh": np.zeros(num_hiddens, dtype=np.float64)}
    else:
        params["b_h"] = b_h
    params |= {"W_hq": W_hq, "b_q": b_q}
    if embed_dim is not None:
        params["E"] = normal((vocab_size, embed_dim))
    return params


def get_lstm_params(
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    *,
    forget_bias: float = 0.0,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """d2l 9.2's ``get_lstm_params``: ``three()`` for the input gate (W_xi, W_hi, b_i), the
    forget gate (f), the output gate (o) and the candidate memory cell (c), then W_hq, b_q
    (then E).

    The biases are zeros but b_f, which is ``forget_bias`` (0 in the book; 1 is Keras'
    ``unit_forget_bias``). ``embed_dim`` as in ``get_gru_params``.
    """
    num_inputs = num_outputs = vocab_size
    if embed_dim is not None:
        num_inputs = embed_dim

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape) * 0.01

    def three() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            normal((num_inputs, num_hiddens)),
            normal((num_hiddens, num_hiddens)),
            np.zeros(num_hiddens, dtype=np.float64),
        )

    W_xi, W_hi, b_i = three()  # input gate
    W_xf, W_hf, b_f = three()  # forget gate
    W_xo, W_ho, b_o = three()  # output gate
    W_xc, W_hc, b_c = three()  # candidate memory cell
    W_hq = normal((num_hiddens, num_outputs))
    b_q = np.zeros(num_outputs, dtype=np.float64)
    params = {
        "W_xi": W_xi, "W_hi": W_hi, "b_i": b_i,
        "W_xf": W_xf, "W_hf": W_hf, "b_f": b_f + forget_bias,
        "W_xo": W_xo, "W_ho": W_ho, "b_o": b_o,
        "W_xc": W_xc, "W_hc": W_hc, "b_c": b_c,
        "W_hq": W_hq, "b_q": b_q,
    }  # fmt: skip
    if embed_dim is not None:
        params["E"] = normal((vocab_size, embed_dim))
    return params


def get_cell_params(
    cell: str,
    vocab_size: int,
    num_hiddens: int,
    rng: np.random.Generator,
    *,
    forget_bias: float = 0.0,
    embed_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """The ``get_params`` of ``cell``; ``forget_bias`` is the LSTM's only."""
    _check_cell(cell)
    if forget_bias != 0.0 and cell != "lstm":
        raise ValueError(f"forget_bias is the LSTM's forget-gate bias; the {cell} has none")
    if cell == "rnn":
        return get_params(vocab_size, num_hiddens, rng, embed_dim=embed_dim)
    if cell == "lstm":
        return get_lstm_params(
            vocab_size, num_hiddens, rng, forget_bias=forget_bias, embed_dim=embed_dim
        )
    reset_after = cell == "gru-reset-after"
    return get_gru_params(
        vocab_size, num_hiddens, rng, reset_after=reset_after, embed_dim=embed_dim
    )


def init_gru_state(batch_size: int, num_hiddens: int) -> np.ndarray:
    """The zero hidden state ``(batch_size, num_hiddens)``."""
    return np.zeros((batch_size, num_hiddens), dtype=np.float64)


def init_lstm_state(batch_size: int, num_hiddens: int) -> tuple[np.ndarray, np.ndarray]:
    """The zero hidden state and memory cell ``(H, C)``, each ``(batch_size, num_hiddens)``."""
    return (
        np.zeros((batch_size, num_hiddens), dtype=np.float64),
        np.zeros((batch_size, num_hiddens), dtype=np.float64),
    )


def init_state(cell: str, batch_size: int, num_hiddens: int) -> Any:
    """The zero state of ``cell``: H, or (H, C) for the LSTM."""
    _check_cell(cell)
    if cell == "lstm":
        return init_lstm_state(batch_size, num_hiddens)
    if cell == "rnn":
        return init_rnn_state(batch_size, num_hiddens)
    return init_gru_state(batch_size, num_hiddens)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + exp(-x)), the book's ``torch.sigmoid``."""
    return 1.0 / (1.0 + np.exp(-x))


def gru(
    inputs: Any,
    state: np.ndarray,
    params: dict[str, np.ndarray],
    reset_after: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, np.ndarray]]]:
    """d2l 9.1's ``gru``, per step:

        Z = σ(X W_xz + H W_hz + b_z), R = σ(X W_xr + H W_hr + b_r),
        H̃ = tanh(X W_xh + (R ⊙ H) W_hh + b_h), H = Z ⊙ H + (1 − Z) ⊙ H̃, Y = H W_hq + b_q.

    ``reset_after``: the torch.nn.GRU documentation's candidate instead,
    H̃ = tanh(X W_xh + b_xh + R ⊙ (H W_hh + b_hh)). Returns the outputs ``(T * B, V)``, the
    final H and, per step, what the backward pass needs.
    """
    inputs = _check_ids(inputs, _vocab_size(params))
    W_xz, W_hz, b_z = params["W_xz"], params["W_hz"], params["b_z"]
    W_xr, W_hr, b_r = params["W_xr"], params["W_hr"], params["b_r"]
    W_xh, W_hh = params["W_xh"], params["W_hh"]
    W_hq, b_q = params["W_hq"], params["b_q"]
    H = state
    outputs = []
    steps = []
    for t in range(inputs.shape[0]):
        X = _step_input(inputs[t], params)
        H_prev = H
        Z = sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
        R = sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
        if reset_after:
            G = (H @ W_hh) + params["b_hh"]
            H_tilde = np.tanh((X @ W_xh) + params["b_xh"] + R * G)
        else:
            G = R * H
            H_tilde = np.tanh((X @ W_xh) + (G @ W_hh) + params["b_h"])
        H = Z * H + (1 - Z) * H_tilde
        Y = H @ W_hq + b_q
        outputs.append(Y)
        steps.append({"X": X, "H_prev": H_prev, "Z": Z, "R": R, "G": G, "H_tilde": H_tilde, "H": H})
    return _concat(outputs, params), H, steps


def lstm(
    inputs: Any,
    state: tuple[np.ndarray, np.ndarray],
    params: dict[str, np.ndarray],
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], list[dict[str, np.ndarray]]]:
    """d2l 9.2's ``lstm``, per step:

        I = σ(X W_xi + H W_hi + b_i), F = σ(X W_xf + H W_hf + b_f), O = σ(X W_xo + H W_ho + b_o),
        C̃ = tanh(X W_xc + H W_hc + b_c), C = F ⊙ C + I ⊙ C̃, H = O ⊙ tanh(C), Y = H W_hq + b_q.

    Returns the outputs ``(T * B, V)``, the final ``(H, C)`` and, per step, what the backward
    pass needs.
    """
    inputs = _check_ids(inputs, _vocab_size(params))
    W_xi, W_hi, b_i = params["W_xi"], params["W_hi"], params["b_i"]
    W_xf, W_hf, b_f = params["W_xf"], params["W_hf"], params["b_f"]
    W_xo, W_ho, b_o = params["W_xo"], params["W_ho"], params["b_o"]
    W_xc, W_hc, b_c = params["W_xc"], params["W_hc"], params["b_c"]
    W_hq, b_q = params["W_hq"], params["b_q"]
    H, C = state
    outputs = []
    steps = []
    for t in range(inputs.shape[0]):
        X = _step_input(inputs[t], params)
        H_prev, C_prev = H, C
        I = sigmoid((X @ W_xi) + (H @ W_hi) + b_i)
        F = sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
        O = sigmoid((X @ W_xo) + (H @ W_ho) + b_o)
        C_tilde = np.tanh((X @ W_xc) + (H @ W_hc) + b_c)
        C = F * C + I * C_tilde
        H = O * np.tanh(C)
        Y = (H @ W_hq) + b_q
        outputs.append(Y)
        steps.append(
            {"X": X, "H_prev": H_prev, "C_prev": C_prev, "I": I, "F": F, "O": O}
            | {"C_tilde": C_tilde, "C": C, "H": H}
        )
    return _concat(outputs, params), (H, C), steps


def _concat(outputs: list[np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
    """The steps' outputs along the batch axis, ``(T * B, V)``, as the book's ``torch.cat``."""
    if not outputs:
        return np.zeros((0, _vocab_size(params)), dtype=np.float64)
    return np.concatenate(outputs, axis=0)


def forward(
    inputs: Any,
    state: Any,
    params: dict[str, np.ndarray],
    cell: str = "rnn",
    activation: str = "tanh",
) -> tuple[np.ndarray, Any]:
    """Any cell over the steps of ``inputs``: the outputs ``(T * B, V)`` and the final state."""
    _check_cell(cell, activation)
    if cell == "rnn":
        outputs, H, _ = rnn(inputs, state, params, activation)
        return outputs, H
    if cell == "lstm":
        outputs, HC, _ = lstm(inputs, state, params)
        return outputs, HC
    outputs, H, _ = gru(inputs, state, params, reset_after=cell == "gru-reset-after")
    return outputs, H


def _gru_step_backward(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    s: dict[str, np.ndarray],
    dH: np.ndarray,
    reset_after: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the GRU backwards: adds its share to ``grads``; returns (dH_prev, dX)."""
    X, H_prev, Z, R, G, H_tilde = s["X"], s["H_prev"], s["Z"], s["R"], s["G"], s["H_tilde"]
    W_xz, W_hz = params["W_xz"], params["W_hz"]
    W_xr, W_hr = params["W_xr"], params["W_hr"]
    W_xh, W_hh = params["W_xh"], params["W_hh"]
    # H = Z ⊙ H_prev + (1 − Z) ⊙ H̃
    dZ = dH * (H_prev - H_tilde)
    dH_tilde = dH * (1 - Z)
    dH_prev = dH * Z
    # Z = σ(A_z), σ'(A) = σ(A)(1 − σ(A)); H̃ = tanh(A_h), tanh'(A) = 1 − tanh(A)²
    dA_z = dZ * Z * (1 - Z)
    dA_h = dH_tilde * (1 - H_tilde**2)
    if reset_after:
        # A_h = X W_xh + b_xh + R ⊙ G, G = H_prev W_hh + b_hh
        dR = dA_h * G
        dG = dA_h * R
        grads["W_hh"] += H_prev.T @ dG
        grads["b_hh"] += dG.sum(axis=0)
        grads["b_xh"] += dA_h.sum(axis=0)
        dH_prev += dG @ W_hh.T
    else:
        # A_h = X W_xh + G W_hh + b_h, G = R ⊙ H_prev
        dG = dA_h @ W_hh.T
        dR = dG * H_prev
        grads["W_hh"] += G.T @ dA_h
        grads["b_h"] += dA_h.sum(axis=0)
        dH_prev += dG * R
    # R = σ(A_r)
    dA_r = dR * R * (1 - R)
    # A_g = X W_xg + H_prev W_hg + b_g for g = z, r; A_h's X W_xh
    grads["W_xz"] += X.T @ dA_z
    grads["W_hz"] += H_prev.T @ dA_z
    grads["b_z"] += dA_z.sum(axis=0)
    grads["W_xr"] += X.T @ dA_r
    grads["W_hr"] += H_prev.T @ dA_r
    grads["b_r"] += dA_r.sum(axis=0)
    grads["W_xh"] += X.T @ dA_h
    dH_prev += dA_z @ W_hz.T + dA_r @ W_hr.T
    dX = dA_z @ W_xz.T + dA_r @ W_xr.T + dA_h @ W_xh.T
    return dH_prev, dX


def _lstm_step_backward(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    s: dict[str, np.ndarray],
    dH: np.ndarray,
    dC_next: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the LSTM backwards: adds its share to ``grads``; returns
    (dH_prev, dC_prev, dX). ``dC_next`` is the gradient reaching C from the next step."""
    X, H_prev, C_prev = s["X"], s["H_prev"], s["C_prev"]
    I, F, O, C_tilde, C = s["I"], s["F"], s["O"], s["C_tilde"], s["C"]
    # H = O ⊙ tanh(C)
    tanh_C = np.tanh(C)
    dO = dH * tanh_C
    dC = dC_next + dH * O * (1 - tanh_C**2)
    # C = F ⊙ C_prev + I ⊙ C̃
    dF = dC * C_prev
    dI = dC * C_tilde
    dC_tilde = dC * I
    dC_prev = dC * F
    # I, F, O = σ(A_·), σ' = σ(1 − σ); C̃ = tanh(A_c), tanh' = 1 − tanh²
    dA_i = dI * I * (1 - I)
    dA_f = dF * F * (1 - F)
    dA_o = dO * O * (1 - O)
    dA_c = dC_tilde * (1 - C_tilde**2)
    # A_g = X W_xg + H_prev W_hg + b_g
    dH_prev = np.zeros_like(H_prev)
    dX = np.zeros_like(X)
    for g, dA in (("i", dA_i), ("f", dA_f), ("o", dA_o), ("c", dA_c)):
        grads[f"W_x{g}"] += X.T @ dA
        grads[f"W_h{g}"] += H_prev.T @ dA
        grads[f"b_{g}"] += dA.sum(axis=0)
        dH_prev += dA @ params[f"W_h{g}"].T
        dX += dA @ params[f"W_x{g}"].T
    return dH_prev, dC_prev, dX


def _gated_loss_and_grads(
    cell: str, params: dict[str, np.ndarray], inputs: Any, labels: Any, state: Any
) -> tuple[float, dict[str, np.ndarray], Any]:
    inputs, labels, T, B, w = _check_problem(params, inputs, labels)

    # Forward: the book's gru or lstm, then the loss on the last w steps.
    final: Any  # H, or the LSTM's (H, C)
    if cell == "lstm":
        outputs, final, steps = lstm(inputs, state, params)
        dC_next = np.zeros_like(state[1], dtype=np.float64)  # gradient reaching C_t from t + 1
    else:
        outputs, final, steps = gru(inputs, state, params, cell == "gru-reset-after")
    loss, dy_hat = _labelled_loss(outputs, labels, T, B)

    W_hq = params["W_hq"]
    grads = {name: np.zeros_like(p, dtype=np.float64) for name, p in params.items()}
    H_0 = state[0] if cell == "lstm" else state
    dH_next = np.zeros_like(H_0, dtype=np.float64)  # gradient reaching H_t from step t + 1
    for t in range(T - 1, -1, -1):
        s = steps[t]
        dH = dH_next.copy()
        if t >= T - w:
            dY = dy_hat[(t - (T - w)) * B : (t - (T - w) + 1) * B]
            grads["W_hq"] += s["H"].T @ dY
            grads["b_q"] += dY.sum(axis=0)
            dH += dY @ W_hq.T
        if cell == "lstm":
            dH_next, dC_next, dX = _lstm_step_backward(params, grads, s, dH, dC_next)
        else:
            dH_next, dX = _gru_step_backward(params, grads, s, dH, cell == "gru-reset-after")
        if "E" in params:
            _scatter_embedding(grads, inputs[t], dX)
    return loss, grads, final


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
    cell: str = "rnn",
) -> tuple[dict[str, np.ndarray], float, list[tuple[float, float]]]:
    """The book's ``train_epoch_ch8``: one pass over the minibatches, clipping, then sgd.

    Returns the parameters after the epoch, the epoch's perplexity and ``(loss, norm)`` per
    minibatch (``norm`` is the global gradient norm before clipping). ``cell``'s state (the
    LSTM's (H, C)) is carried, reset and detached alike. ``sampling="windows"`` is the current
    edition's epoch (d2l 1.0): ``order`` holds the training windows' starts in their shuffled
    order (``seq_data_iter_windows``), and every minibatch starts from a zero state.
    """
    if sampling == "sequential":
        if order is not None:
            raise ValueError("order is the random iterator's shuffle; sequential takes none")
        batches = seq_data_iter_sequential(corpus, batch_size, num_steps, offset)
    elif sampling == "random":
        if order is None:
            raise ValueError("sampling='random' needs order (the shuffled subsequence order)")
        batches = seq_data_iter_random(corpus, batch_size, num_steps, offset, order)
    elif sampling == "windows":
        if order is None:
            raise ValueError("sampling='windows' needs order (the training windows' starts)")
        batches = seq_data_iter_windows(corpus, batch_size, num_steps, order)
    else:
        raise ValueError(f"sampling must be 'sequential', 'random' or 'windows', got {sampling!r}")
    if not detach and (sampling != "sequential" or reset_state):
        raise ValueError("detach=False needs sampling='sequential' and reset_state=False")
    if not batches:
        raise ValueError("the corpus is too short for one minibatch")

    _check_cell(cell, activation)
    num_hiddens = int(params["W_hq"].shape[0])
    state = None
    history = []
    inputs_so_far: list[np.ndarray] = []
    metric = [0.0, 0.0]  # sum of loss * n_labels, sum of n_labels
    for X, Y in batches:
        if state is None or sampling != "sequential" or reset_state:
            state = init_state(cell, X.shape[0], num_hiddens)
        inputs = X.T  # time-major (num_steps, B)
        labels = Y.T[-1:] if last_step else Y.T
        if detach:
            loss, grads, state = loss_and_grads(params, inputs, labels, state, activation, cell)
        else:
            # Backpropagation through the whole epoch so far, from a zero state.
            inputs_so_far.append(inputs)
            all_inputs = np.concatenate(inputs_so_far, axis=0)
            zeros = init_state(cell, X.shape[0], num_hiddens)
            loss, grads, _ = loss_and_grads(params, all_inputs, labels, zeros, activation, cell)
        grads, norm = grad_clipping(grads, theta)
        params = sgd(params, grads, lr)
        n_labels = labels.size
        metric[0] += loss * n_labels
        metric[1] += n_labels
        history.append((loss, norm))
    return params, math.exp(metric[0] / metric[1]), history


def epoch_draws(rng: np.random.Generator, sampling: str, num_steps: int, length: int) -> dict:
    """One epoch's random draws as d2l makes them, from ``rng``: an offset in [0, num_steps] for
    sequential partitioning; an offset in [0, num_steps - 1] and a shuffle of the subsequences
    for random sampling (``train_epoch``'s ``offset`` and ``order``)."""
    if sampling == "sequential":
        return {"offset": int(rng.integers(0, num_steps + 1))}
    offset = int(rng.integers(0, num_steps))
    return {"offset": offset, "order": rng.permutation((length - offset - 1) // num_steps).tolist()}


def text_perplexity(
    params: dict[str, np.ndarray], ids: Sequence[int], cell: str = "rnn", activation: str = "tanh"
) -> float:
    """exp of the mean cross-entropy of predicting every next token of ``ids`` in one pass
    from a zero state (a held-out text's perplexity)."""
    tokens = np.asarray(ids)
    zeros = init_state(cell, 1, int(params["W_hq"].shape[0]))
    logits, _ = forward(tokens[:-1].reshape(-1, 1), zeros, params, cell, activation)
    log_probs = _log_softmax(logits)
    return math.exp(-float(log_probs[np.arange(len(tokens) - 1), tokens[1:]].mean()))


def perplexities(losses: Sequence[float], n_labels: Sequence[int]) -> tuple[float, float]:
    """Two figures of minibatches with mean losses ``losses`` over ``n_labels`` labels each:
    exp of the label-weighted mean loss, exp(Σ_b loss_b·n_b / Σ_b n_b), and the plain mean of
    the minibatches' exp(loss_b) (the figure d2l 1.0's plot draws)."""
    if len(losses) == 0 or len(losses) != len(n_labels):
        raise ValueError("give one label count per minibatch loss, at least one")
    weighted = sum(loss * n for loss, n in zip(losses, n_labels, strict=True)) / sum(n_labels)
    return math.exp(weighted), sum(math.exp(loss) for loss in losses) / len(losses)


def window_perplexities(
    params: dict[str, np.ndarray],
    corpus: Sequence[int],
    starts: Sequence[int],
    batch_size: int,
    num_steps: int,
    *,
    last_step: bool = False,
    cell: str = "rnn",
    activation: str = "tanh",
) -> tuple[float, float]:
    """The current edition's validation: the windows starting at ``starts``, in that order,
    ``batch_size`` at a time (the last partial minibatch kept), each minibatch from a zero state;
    ``perplexities`` of their losses (every step's labels, or the last step's)."""
    num_hiddens = int(params["W_hq"].shape[0])
    losses, n_labels = [], []
    for X, Y in seq_data_iter_windows(corpus, batch_size, num_steps, starts):
        inputs = X.T  # time-major (num_steps, B)
        labels = Y.T[-1:] if last_step else Y.T
        zeros = init_state(cell, X.shape[0], num_hiddens)
        outputs, _ = forward(inputs, zeros, params, cell, activation)
        loss, _ = _labelled_loss(outputs, labels, *inputs.shape)
        losses.append(loss)
        n_labels.append(labels.size)
    return perplexities(losses, n_labels)


def plain_run(
    path: Any,
    epochs: int,
    *,
    token: str = "char",
    max_tokens: int = 10000,
    train_fraction: float | None = None,
    seed: int = 0,
    cell: str = "rnn",
    forget_bias: float = 0.0,
    embed_dim: int | None = None,
    num_hiddens: int = 512,
    batch_size: int = 32,
    num_steps: int = 35,
    lr: float = 1.0,
    theta: float = 1.0,
    sampling: str = "sequential",
    reset_state: bool = False,
    detach: bool = True,
    last_step: bool = False,
    activation: str = "tanh",
    text: str = "lines",
    vocab_order: str = "frequency",
    num_train: int = 10000,
    num_val: int = 5000,
) -> dict[str, Any]:
    """A whole training run as the book's code makes it, from the text file ``path``: its
    corpus (``text`` and ``vocab_order`` as ``load_corpus_time_machine``'s; the first
    ``max_tokens`` tokens, all when <= 0; the last ``1 - train_fraction`` held out), the
    parameters drawn from a generator seeded ``seed`` and then every epoch's draws from the same
    generator, ``epochs`` epochs of ``train_epoch``.

    Returns the vocabulary, the initial parameters, each epoch's minibatches (time-major
    inputs and labels), perplexity, parameters and held-out perplexity (None without a held-out
    part).

    ``sampling="windows"`` is the current edition's run (d2l 1.0, 9.3 and 9.5): the training
    windows start at ``0 .. num_train - 1``, the validation windows at ``num_train ..
    num_train + num_val - 1`` (``seq_data_iter_windows``); each epoch draws one
    ``rng.permutation(num_train)``, the training windows' order, then validates in order with the
    epoch's final parameters. Its epochs add ``book_perplexity`` (training) and ``validation``
    (``perplexity`` and ``book_perplexity``, as ``perplexities``; None with ``num_val`` 0);
    ``heldout`` is None.
    """
    corpus, vocab = load_corpus_time_machine(
        path, token, max_tokens, text=text, vocab_order=vocab_order
    )
    train, heldout = corpus, None
    if sampling == "windows":
        if train_fraction is not None:
            raise ValueError("sampling='windows' holds out num_val windows; no train_fraction")
        if num_train < 1 or num_val < 0:
            raise ValueError(f"num_train must be >= 1, num_val >= 0, got {num_train}, {num_val}")
        num_windows = max(len(corpus) - num_steps, 0)
        if num_windows < num_train + num_val:
            raise ValueError(
                f"the corpus has {num_windows} windows of {num_steps + 1} ids, fewer than "
                f"num_train + num_val = {num_train + num_val}"
            )
        validation_starts = list(range(num_train, num_train + num_val))
    elif train_fraction:
        cut = int(len(corpus) * train_fraction)
        train, heldout = corpus[:cut], corpus[cut:]
    rng = np.random.default_rng(seed)
    params = get_cell_params(
        cell, len(vocab), num_hiddens, rng, forget_bias=forget_bias, embed_dim=embed_dim
    )
    run: dict[str, Any] = {"vocab": vocab.idx_to_token, "init": params, "epochs": []}
    for _ in range(epochs):
        if sampling == "windows":
            draws: dict[str, Any] = {"order": rng.permutation(num_train).tolist()}
            batches = seq_data_iter_windows(train, batch_size, num_steps, draws["order"])
        else:
            draws = epoch_draws(rng, sampling, num_steps, len(train))
            if sampling == "sequential":
                batches = seq_data_iter_sequential(train, batch_size, num_steps, draws["offset"])
            else:
                batches = seq_data_iter_random(
                    train, batch_size, num_steps, draws["offset"], draws["order"]
                )
        params, perplexity, history = train_epoch(
            params,
            train,
            batch_size,
            num_steps,
            lr,
            theta,
            sampling=sampling,
            reset_state=reset_state,
            detach=detach,
            last_step=last_step,
            activation=activation,
            cell=cell,
            **draws,
        )
        minibatches = [(X.T, (Y.T[-1:] if last_step else Y.T)) for X, Y in batches]
        if sampling != "windows":
            run["epochs"].append(
                {
                    "minibatches": minibatches,
                    "perplexity": perplexity,
                    "params": params,
                    "heldout": None
                    if heldout is None
                    else text_perplexity(params, heldout, cell, activation),
                }
            )
            continue
        _, book_perplexity = perplexities(
            [loss for loss, _ in history], [labels.size for _, labels in minibatches]
        )
        validation = None  # num_val 0: no validation windows
        if validation_starts:
            val_perplexity, val_book_perplexity = window_perplexities(
                params,
                train,
                validation_starts,
                batch_size,
                num_steps,
                last_step=last_step,
                cell=cell,
                activation=activation,
            )
            validation = {"perplexity": val_perplexity, "book_perplexity": val_book_perplexity}
        run["epochs"].append(
            {
                "minibatches": minibatches,
                "perplexity": perplexity,
                "book_perplexity": book_perplexity,
                "params": params,
                "heldout": None,
                "validation": validation,
            }
        )
    return run


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
    cell: str = "rnn",
    temperature: float | None = None,
    alpha: float | None = None,
    uniforms: Iterable[float] | None = None,
) -> list[int]:
    """The book's ``predict_ch8`` on token ids: warm up on ``prefix``, then predict ``num_preds``.

    Greedy (the lowest index among the maxima) unless ``temperature`` (softmax(logits / T)) or
    ``alpha`` (p**alpha / sum, p = softmax(logits)) is given; a sampled choice consumes the next
    number of ``uniforms``. Returns ``prefix`` followed by the predicted ids. ``cell``'s state
    (the LSTM's (H, C)) is carried from step to step.
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

    _check_cell(cell, activation)
    num_hiddens = int(params["W_hq"].shape[0])
    state = init_state(cell, 1, num_hiddens)
    outputs = [int(prefix[0])]

    def get_input() -> np.ndarray:
        return np.array([[outputs[-1]]], dtype=np.int64)

    for y in prefix[1:]:  # warm-up period
        _, state = forward(get_input(), state, params, cell, activation)
        outputs.append(int(y))
    for _ in range(num_preds):  # predict num_preds steps
        logits, state = forward(get_input(), state, params, cell, activation)
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

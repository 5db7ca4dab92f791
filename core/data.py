"""The Time Machine pipeline, as in d2l: read, tokenize, vocabulary, corpus, minibatch iterators.

Every random choice (iterator offsets and shuffles) comes from the core NumPy generator.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import atomic_file

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
DATA_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
DATA_FILENAME = "timemachine.txt"
DATA_DIR_ENV = "ROSETTA_RNN_DATA"
CACHE_DIR_ENV = "ROSETTA_RNN_CACHE"
TOKEN_KINDS = ("char", "word")
SAMPLING_KINDS = ("sequential", "random", "windows")
PREPROCESS_KINDS = ("lines", "whole")
"""How the text is read: d2l 0.17's, line by line, each line stripped and the lines joined
with nothing between them; or d2l 1.0's, the whole file at once, so a line break is a space."""
VOCAB_ORDERS = ("frequency", "sorted")
"""d2l 0.17's vocabulary: ``<unk>`` first, then by frequency; d2l 1.0's: the sorted set of the
tokens and ``<unk>`` (at character level ``' '`` is 0, ``<unk>`` 1, ``a``..``z`` 2..27)."""


# --- where the text comes from -------------------------------------------------------------


def cache_dir() -> Path:
    """``$ROSETTA_RNN_CACHE``, or ``$XDG_CACHE_HOME/rosetta-rnn``, or ``~/.cache/rosetta-rnn``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rosetta-rnn"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha1: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically; a file whose sha1 differs is not kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1()
    try:
        with atomic_file(dest) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 16), b""):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != sha1:  # raising here leaves nothing behind
                raise DataError(
                    f"downloaded {url} has sha1 {digest.hexdigest()}, expected {sha1}; not kept"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download The Time Machine from {url} ({reason}); pass --corpus FILE "
            f"or set {DATA_DIR_ENV} to a folder holding {DATA_FILENAME}"
        ) from None
    return dest


def locate_time_machine(corpus: str | os.PathLike[str] | None = None) -> Path:
    """Find the text: ``corpus``; ``$ROSETTA_RNN_DATA``; the sha1-checked cache; a download."""
    if corpus is not None:
        path = Path(corpus)
        if not path.is_file():
            raise DataError(f"corpus file not found: {path}")
        return path
    if os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV]) / DATA_FILENAME
        if not path.is_file():
            raise DataError(f"{DATA_DIR_ENV} is set but {path} does not exist")
        return path
    cached = cache_dir() / DATA_FILENAME
    if cached.is_file():
        if sha1_of(cached) == DATA_SHA1:
            return cached
        cached.unlink()  # a damaged or foreign copy: fetch a good one instead
    return download(DATA_URL, cached, DATA_SHA1)


# --- d2l's preprocessing -------------------------------------------------------------------


def preprocess(line: str) -> str:
    """d2l: keep letters only, collapse the rest into one space, strip, lower-case."""
    return re.sub("[^A-Za-z]+", " ", line).strip().lower()


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The file's lines after ``preprocess`` (d2l's ``read_time_machine``)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [preprocess(line) for line in f]
    except OSError as e:
        raise DataError(f"cannot read corpus {path}: {e.strerror or e}") from None


def read_whole(path: str | os.PathLike[str]) -> str:
    """The whole file, every run of non-letters one space, lower case (d2l 1.0's
    ``_preprocess``): not stripped, so a line break is a space."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return re.sub("[^A-Za-z]+", " ", f.read()).lower()
    except OSError as e:
        raise DataError(f"cannot read corpus {path}: {e.strerror or e}") from None


def tokenize(lines: Iterable[str], token: str = "char") -> list[list[str]]:
    """Each line as a list of characters or of words."""
    if token == "char":
        return [list(line) for line in lines]
    if token == "word":
        return [line.split() for line in lines]
    raise ValueError(f"unknown token kind {token!r}; choose from {', '.join(TOKEN_KINDS)}")


class Vocab:
    """d2l's vocabulary: ``<unk>`` at 0, reserved tokens next, then by frequency (ties keep
    first-seen order); tokens rarer than ``min_freq`` are left out and map to ``<unk>``."""

    def __init__(
        self,
        tokens: Iterable[str] | Iterable[Iterable[str]] = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
    ) -> None:
        flat = [t for line in tokens for t in ([line] if isinstance(line, str) else line)]
        counter = collections.Counter(flat)
        self.token_freqs = sorted(counter.items(), key=lambda kv: kv[1], reverse=True)
        self.idx_to_token = ["<unk>", *reserved_tokens]
        for tok, freq in self.token_freqs:
            if freq < min_freq:
                break
            if tok not in self.idx_to_token:
                self.idx_to_token.append(tok)
        self.token_to_idx = {tok: i for i, tok in enumerate(self.idx_to_token)}
        self.unk = 0

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from its index order (as stored in a checkpoint); ``<unk>`` is
        wherever the order has it."""
        vocab = cls()
        vocab.idx_to_token = list(idx_to_token)
        vocab.token_to_idx = {tok: i for i, tok in enumerate(vocab.idx_to_token)}
        vocab.unk = vocab.token_to_idx.get("<unk>", 0)
        return vocab

    @classmethod
    def sorted(cls, tokens: Iterable[str]) -> Vocab:
        """d2l 1.0's vocabulary: the sorted set of ``tokens`` and ``<unk>``."""
        return cls.from_tokens(sorted(set(tokens) | {"<unk>"}))

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, token: str) -> int:
        return self.token_to_idx.get(token, self.unk)

    def lookup(self, tokens: Iterable[str]) -> list[int]:
        return [self[t] for t in tokens]

    def to_tokens(self, indices: Iterable[int]) -> list[str]:
        return [self.idx_to_token[int(i)] for i in indices]


@dataclass
class Corpus:
    """Token ids of the whole text and the vocabulary they index."""

    ids: np.ndarray
    vocab: Vocab
    token: str

    def decode(self, indices: Iterable[int]) -> str:
        return join_tokens(self.vocab.to_tokens(indices), self.token)


UNK_CHAR = "\ufffd"
"""How ``<unk>`` reads in generated character text: Unicode's replacement character, one
character for one token, since ``<unk>`` is no character of the text. Word text keeps the word
``<unk>``, as word-level corpora write it."""


def join_tokens(tokens: Sequence[str], token: str) -> str:
    if token == "char":
        return "".join(UNK_CHAR if t == "<unk>" else t for t in tokens)
    return " ".join(tokens)


def split_text(text: str, token: str) -> list[str]:
    """Text as tokens (characters, or whitespace-separated words), as it is."""
    return list(text) if token == "char" else text.split()


def read_prefix(text: str, token: str) -> tuple[str, list[str]]:
    """A user's prefix read the way the corpus' text was: d2l's ``preprocess`` inside a line
    (letters only, lower case, every run of anything else one space). Not stripped: a prefix
    is the start of a text, and a space it ends with is where the continuation begins.
    Returns the text as read and its tokens."""
    read = re.sub("[^A-Za-z]+", " ", text).lower()
    return read, split_text(read, token)


def read_tokens(
    path: str | os.PathLike[str], token: str = "char", preprocess: str = "lines"
) -> list[str]:
    """Every token of the text, read as ``preprocess`` says (``PREPROCESS_KINDS``)."""
    if preprocess == "lines":
        return [t for line in tokenize(read_lines(path), token) for t in line]
    if preprocess == "whole":
        return tokenize([read_whole(path)], token)[0]
    kinds = ", ".join(PREPROCESS_KINDS)
    raise ValueError(f"unknown preprocess {preprocess!r}; choose from {kinds}")


def make_vocab(tokens: Sequence[str], order: str = "frequency") -> Vocab:
    """The vocabulary of ``tokens`` in ``order`` (``VOCAB_ORDERS``)."""
    if order == "frequency":
        return Vocab(tokens)
    if order == "sorted":
        return Vocab.sorted(tokens)
    raise ValueError(f"unknown vocabulary order {order!r}; choose from {', '.join(VOCAB_ORDERS)}")


def load_corpus(
    path: str | os.PathLike[str],
    token: str = "char",
    max_tokens: int = -1,
    preprocess: str = "lines",
    vocab_order: str = "frequency",
) -> Corpus:
    """d2l's ``load_corpus_time_machine``: ids of every token, truncated to ``max_tokens`` > 0
    (the vocabulary is the whole text's); the text read and the vocabulary ordered as 0.17
    (the defaults) or 1.0 does."""
    tokens = read_tokens(path, token, preprocess)
    vocab = make_vocab(tokens, vocab_order)
    ids = np.fromiter((vocab[t] for t in tokens), dtype=np.int64, count=len(tokens))
    if max_tokens > 0:
        ids = ids[:max_tokens]
    return Corpus(ids=ids, vocab=vocab, token=token)


# --- minibatch iterators (d2l semantics, core generator) ----------------------------------


def seq_data_iter_random(
    corpus: Sequence[int] | np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random sampling: a random offset in [0, num_steps - 1], then shuffled, non-overlapping
    subsequences; each minibatch is independent of the last. Yields (X, Y), (batch, steps)."""
    corpus = np.asarray(corpus)
    corpus = corpus[int(rng.integers(0, num_steps)) :]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = rng.permutation(np.arange(0, num_subseqs * num_steps, num_steps))
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i : i + batch_size]
        X = np.stack([corpus[j : j + num_steps] for j in starts])
        Y = np.stack([corpus[j + 1 : j + 1 + num_steps] for j in starts])
        yield X, Y


def seq_data_iter_sequential(
    corpus: Sequence[int] | np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sequential partitioning: a random offset in [0, num_steps], the rest cut into
    ``batch_size`` rows; row i of minibatch k+1 continues row i of minibatch k."""
    corpus = np.asarray(corpus)
    offset = int(rng.integers(0, num_steps + 1))
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset : offset + num_tokens].reshape(batch_size, -1)
    Ys = corpus[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i : i + num_steps], Ys[:, i : i + num_steps]


def num_windows(num_tokens: int, num_steps: int) -> int:
    """How many windows of ``num_steps + 1`` consecutive tokens a text has: one starting at
    each position (d2l 1.0's dataset)."""
    return max(0, num_tokens - num_steps)


def window_batches(
    corpus: Sequence[int] | np.ndarray, starts: np.ndarray, batch_size: int, num_steps: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The windows starting at ``starts``, ``batch_size`` at a time in that order, the last
    minibatch partial where they run out (d2l 1.0's loader keeps it). X is a window without its
    last token, Y without its first; (batch, steps)."""
    corpus = np.asarray(corpus)
    steps = np.arange(num_steps + 1)
    for i in range(0, len(starts), batch_size):
        windows = corpus[np.asarray(starts[i : i + batch_size])[:, None] + steps]
        yield windows[:, :-1], windows[:, 1:]


def seq_data_iter_windows(
    corpus: Sequence[int] | np.ndarray,
    batch_size: int,
    num_steps: int,
    rng: np.random.Generator,
    num_train: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """d2l 1.0's training loader: the windows starting at 0 .. ``num_train`` - 1, in an order
    drawn afresh each epoch (one ``permutation``), the last partial minibatch kept. Each
    minibatch is independent of the last."""
    if num_windows(len(corpus), num_steps) < num_train:
        raise ValueError(f"the text has fewer than {num_train} windows of {num_steps + 1} tokens")
    return window_batches(corpus, rng.permutation(num_train), batch_size, num_steps)


def data_iter(
    corpus: Sequence[int] | np.ndarray,
    batch_size: int,
    num_steps: int,
    rng: np.random.Generator,
    sampling: str = "sequential",
    num_train: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of minibatches of the chosen kind (``num_train``: the training windows of
    ``windows``)."""
    if sampling == "sequential":
        return seq_data_iter_sequential(corpus, batch_size, num_steps, rng)
    if sampling == "random":
        return seq_data_iter_random(corpus, batch_size, num_steps, rng)
    if sampling == "windows":
        return seq_data_iter_windows(corpus, batch_size, num_steps, rng, num_train)
    raise ValueError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLING_KINDS)}")


def num_batches(
    num_tokens: int, batch_size: int, num_steps: int, sampling: str, num_train: int = 0
) -> int:
    """How many minibatches an epoch has at the worst offset (0 means the corpus is too short)."""
    if sampling == "windows":
        if num_windows(num_tokens, num_steps) < num_train:
            return 0
        return -(-num_train // batch_size)
    if sampling == "random":
        return max(0, (num_tokens - num_steps) // num_steps // batch_size)
    return max(0, ((num_tokens - num_steps - 1) // batch_size) // num_steps)

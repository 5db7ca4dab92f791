"""The Time Machine pipeline: d2l's figures, vocabulary, iterators, where the text comes from."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rosetta_rnn.core import data
from rosetta_rnn.core.errors import DataError


def test_shared_copy_is_d2ls_file(timemachine: Path) -> None:
    assert data.sha1_of(timemachine) == data.DATA_SHA1
    assert len(data.read_lines(timemachine)) == 3221


def test_char_figures(timemachine: Path) -> None:
    corpus = data.load_corpus(timemachine, "char")
    assert len(corpus.vocab) == 28
    assert len(corpus.ids) == 170580
    assert corpus.vocab.idx_to_token[:4] == ["<unk>", " ", "e", "t"]  # d2l's order


def test_word_figures(timemachine: Path) -> None:
    corpus = data.load_corpus(timemachine, "word")
    assert len(corpus.vocab) == 4580
    assert len(corpus.ids) == 32775
    assert corpus.vocab.idx_to_token[1:4] == ["the", "i", "and"]


def test_max_tokens_truncates(timemachine: Path) -> None:
    corpus = data.load_corpus(timemachine, "char", max_tokens=10000)
    assert len(corpus.ids) == 10000
    assert len(corpus.vocab) == 28  # the vocabulary is built on the whole text, as in d2l


def test_preprocess() -> None:
    assert data.preprocess("  The Time-Traveller (for so it will be convenient!) ") == (
        "the time traveller for so it will be convenient"
    )
    assert data.preprocess("1234 --") == ""


def test_vocab_order_unk_min_freq_reserved() -> None:
    vocab = data.Vocab([["b", "a", "b"], ["c", "b", "a"]], min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "b", "a"]
    assert vocab["c"] == 0 and vocab["zzz"] == 0
    assert vocab.lookup(["a", "b"]) == [3, 2]
    assert vocab.to_tokens([2, 3]) == ["b", "a"]
    again = data.Vocab.from_tokens(vocab.idx_to_token)
    assert again.token_to_idx == vocab.token_to_idx


def test_vocab_ties_keep_first_seen_order() -> None:
    assert data.Vocab(["x", "y", "z", "y"]).idx_to_token == ["<unk>", "y", "x", "z"]


# d2l demonstrates both iterators on list(range(35)) with batch_size 2 and num_steps 5.
SEQ = list(range(35))


@pytest.mark.parametrize("seed", range(5))
def test_random_iterator_on_range35(seed: int) -> None:
    batches = list(data.seq_data_iter_random(SEQ, 2, 5, np.random.default_rng(seed)))
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (2, 5)
        assert (Y == X + 1).all()  # labels are the inputs shifted by one
        assert (np.diff(X, axis=1) == 1).all()  # each row is a contiguous subsequence
        starts += list(X[:, 0])
    offsets = {s % 5 for s in starts}
    assert len(offsets) == 1  # one random offset per epoch
    assert len(set(starts)) == len(starts)  # non-overlapping subsequences
    assert len(batches) == ((35 - offsets.pop()) - 1) // 5 // 2


@pytest.mark.parametrize("seed", range(5))
def test_sequential_iterator_on_range35(seed: int) -> None:
    batches = list(data.seq_data_iter_sequential(SEQ, 2, 5, np.random.default_rng(seed)))
    assert batches
    offset = int(batches[0][0][0, 0])
    assert 0 <= offset <= 5
    for X, Y in batches:
        assert X.shape == Y.shape == (2, 5)
        assert (Y == X + 1).all()
    for (X0, _), (X1, _) in itertools.pairwise(batches):
        assert (X1[:, 0] == X0[:, -1] + 1).all()  # rows continue across minibatches


def test_iterators_are_reproducible_from_the_seed() -> None:
    for sampling in data.SAMPLING_KINDS:
        a = list(data.data_iter(SEQ, 2, 5, np.random.default_rng(7), sampling))
        b = list(data.data_iter(SEQ, 2, 5, np.random.default_rng(7), sampling))
        assert all(
            (x1 == x2).all() and (y1 == y2).all() for (x1, y1), (x2, y2) in zip(a, b, strict=True)
        )


@given(
    n=st.integers(2, 400),
    batch_size=st.integers(1, 8),
    num_steps=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    sampling=st.sampled_from(data.SAMPLING_KINDS),
)
def test_num_batches_is_a_lower_bound(
    n: int, batch_size: int, num_steps: int, seed: int, sampling: str
) -> None:
    got = len(
        list(
            data.data_iter(
                np.arange(n), batch_size, num_steps, np.random.default_rng(seed), sampling
            )
        )
    )
    assert got >= data.num_batches(n, batch_size, num_steps, sampling)


# --- where the text comes from ----------------------------------------------------------


def test_locate_prefers_corpus_then_env(
    tmp_path: Path, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("hello world\n")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(timemachine.parent))
    assert data.locate_time_machine(mine) == mine
    assert data.locate_time_machine() == timemachine.parent / data.DATA_FILENAME
    with pytest.raises(DataError, match="not found"):
        data.locate_time_machine(tmp_path / "missing.txt")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        data.locate_time_machine()


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_verifies_and_caches(
    tmp_path: Path, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DATA_URL", _file_url(timemachine))
    got = data.locate_time_machine()
    assert got == tmp_path / "cache" / data.DATA_FILENAME
    assert data.sha1_of(got) == data.DATA_SHA1
    assert [p.name for p in got.parent.iterdir()] == [data.DATA_FILENAME]  # no temp file left
    # the cache is used without downloading again
    monkeypatch.setattr(data, "DATA_URL", "http://127.0.0.1:9/unreachable")
    assert data.locate_time_machine() == got


def test_damaged_cache_is_replaced(
    tmp_path: Path, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    (tmp_path / data.DATA_FILENAME).write_text("not the time machine")
    monkeypatch.setattr(data, "DATA_URL", _file_url(timemachine))
    assert data.sha1_of(data.locate_time_machine()) == data.DATA_SHA1


def test_sha1_mismatch_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("some other book\n")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DATA_URL", _file_url(wrong))
    with pytest.raises(DataError, match="sha1"):
        data.locate_time_machine()
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "DATA_URL", "http://127.0.0.1:9/timemachine.txt")
    with pytest.raises(DataError) as info:
        data.locate_time_machine()
    message = str(info.value)
    assert "\n" not in message and "--corpus" in message and data.DATA_DIR_ENV in message
    assert list(tmp_path.iterdir()) == []


def test_a_local_copy_gives_the_same_corpus(tmp_path: Path, timemachine: Path) -> None:
    copy = tmp_path / "copy.txt"
    shutil.copy(timemachine, copy)
    assert hashlib.sha1(copy.read_bytes()).hexdigest() == data.DATA_SHA1
    assert (data.load_corpus(copy).ids == data.load_corpus(timemachine).ids).all()


def test_a_prefix_is_read_as_the_text_within_a_line() -> None:
    assert data.read_prefix("Time Traveller 1895!", "char") == (
        "time traveller ",
        list("time traveller "),
    )
    assert data.read_prefix("  Hello,   World ", "word") == (" hello world ", ["hello", "world"])
    assert data.read_prefix("time traveller ", "char")[0] == "time traveller "  # as given
    assert data.read_prefix("1895!", "char") == (" ", [" "])  # no letters: the caller refuses


def test_unk_reads_as_one_replacement_character_in_character_text() -> None:
    assert data.join_tokens(["a", "<unk>", "b"], "char") == "a\ufffdb"
    assert data.join_tokens(["a", "<unk>"], "word") == "a <unk>"


def test_split_text_by_characters_or_words() -> None:
    assert data.split_text("time  mach", "char") == list("time  mach")
    assert data.split_text("time  mach", "word") == ["time", "mach"]
    assert data.join_tokens(["t", "i"], "char") == "ti"
    assert data.join_tokens(["time", "machine"], "word") == "time machine"


def test_an_unreadable_corpus_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="cannot read corpus"):
        data.read_lines(tmp_path)  # a folder


def test_the_cache_folder_is_named_after_the_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROSETTA_RNN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert data.cache_dir() == Path("/somewhere") / "rosetta-rnn"


class _AtOffset:
    """A generator stand-in that draws a chosen offset (and shuffles nothing)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def integers(self, low: int, high: int) -> int:
        assert low <= self.offset < high
        return self.offset

    def permutation(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
@pytest.mark.parametrize(("n", "batch_size", "num_steps"), [(40, 2, 3), (41, 3, 4), (9, 2, 3)])
def test_num_batches_is_the_count_at_the_worst_offset(
    n: int, batch_size: int, num_steps: int, sampling: str
) -> None:
    offsets = range(num_steps) if sampling == "random" else range(num_steps + 1)
    counts = [
        len(list(data.data_iter(np.arange(n), batch_size, num_steps, _AtOffset(o), sampling)))  # type: ignore[arg-type]
        for o in offsets
    ]
    assert data.num_batches(n, batch_size, num_steps, sampling) == min(counts)
    assert type(data.num_batches(n, batch_size, num_steps, sampling)) is int


def test_option_strings_are_compared_by_value() -> None:
    """Options arrive as strings built at run time (argv, JSON), not as interned literals."""
    char, word = "".join(["ch", "ar"]), "".join(["wo", "rd"])
    assert data.split_text("ab c", char) == ["a", "b", " ", "c"]
    assert data.join_tokens(["a", "b"], char) == "ab"
    assert data.tokenize(["ab c"], word) == [["ab", "c"]]
    assert data.tokenize(["ab"], char) == [["a", "b"]]
    random = "".join(["ran", "dom"])
    n = data.num_batches(10, 3, 1, random)
    assert n == data.num_batches(10, 3, 1, "random") == 3
    assert data.num_batches(10, 3, 1, "sequential") == 2
    rng = np.random.default_rng(0)
    assert len(list(data.data_iter(np.arange(10), 3, 1, rng, random))) == 3
    sequential = "".join(["seq", "uential"])
    got = data.data_iter(np.arange(10), 3, 1, np.random.default_rng(5), sequential)
    want = data.data_iter(np.arange(10), 3, 1, np.random.default_rng(5), "sequential")
    assert [x.tolist() for x, _ in got] == [x.tolist() for x, _ in want]


def test_a_cache_whose_sha1_sorts_before_the_right_one_is_replaced(
    tmp_path: Path, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "new" / "cache"))  # made on the way
    cached = tmp_path / "new" / "cache" / data.DATA_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_text("not the time machine 43")  # sha1 0739... < 090b...
    assert data.sha1_of(cached) < data.DATA_SHA1
    monkeypatch.setattr(data, "DATA_URL", _file_url(timemachine))
    assert data.sha1_of(data.locate_time_machine()) == data.DATA_SHA1


def test_the_download_makes_the_cache_folder(
    tmp_path: Path, timemachine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "a" / "b" / data.DATA_FILENAME
    got = data.download(_file_url(timemachine), dest, data.DATA_SHA1)
    assert got == dest and data.sha1_of(dest) == data.DATA_SHA1


def test_max_tokens_zero_or_less_keeps_the_whole_text(timemachine: Path) -> None:
    whole = len(data.load_corpus(timemachine).ids)
    assert len(data.load_corpus(timemachine, max_tokens=0).ids) == whole
    assert len(data.load_corpus(timemachine, max_tokens=-1).ids) == whole
    assert len(data.load_corpus(timemachine, max_tokens=1).ids) == 1


@pytest.mark.parametrize("sampling", data.SAMPLING_KINDS)
def test_a_corpus_shorter_than_a_minibatch_has_zero_batches(sampling: str) -> None:
    assert data.num_batches(2, 2, 3, sampling) == 0


def test_a_download_whose_sha1_sorts_low_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.txt"
    other.write_text("not the time machine 43")  # sha1 0739... < 090b...
    dest = tmp_path / "cache" / data.DATA_FILENAME
    with pytest.raises(data.DataError):
        data.download(_file_url(other), dest, data.DATA_SHA1)
    assert not dest.exists()


# --- d2l 1.0's reading, vocabulary and windows ---------------------------------------------


def test_the_current_editions_text_and_vocabulary(tmp_path: Path) -> None:
    """The whole file at once, a line break one space, not stripped; the sorted vocabulary with
    ``<unk>`` where sorting puts it, and unknown tokens mapped there (not to 0)."""
    path = tmp_path / "t.txt"
    path.write_text("Hello, World!\nby  H.G.\n", encoding="utf-8")
    assert data.read_whole(path) == "hello world by h g "
    assert "".join(data.read_tokens(path, "char", "lines")) == "hello worldby h g"
    corpus = data.load_corpus(path, "char", 0, "whole", "sorted")
    vocab = corpus.vocab
    assert vocab.idx_to_token == [" ", "<unk>", "b", "d", "e", "g", "h", "l", "o", "r", "w", "y"]
    assert vocab.unk == 1 and vocab["z"] == 1 and vocab[" "] == 0
    assert corpus.decode(corpus.ids) == "hello world by h g "
    again = data.Vocab.from_tokens(vocab.idx_to_token)
    assert again.unk == 1 and again["q"] == 1
    words = data.load_corpus(path, "word", 0, "whole", "sorted")
    assert words.vocab.idx_to_token == ["<unk>", "by", "g", "h", "hello", "world"]


def test_the_time_machine_as_the_current_edition_reads_it() -> None:
    """173,428 characters read whole (170,580 line by line), ' ' 0, <unk> 1, a..z 2..27, and
    173,396 windows of 33."""
    path = data.locate_time_machine()
    whole = data.load_corpus(path, "char", 0, "whole", "sorted")
    lines = data.load_corpus(path, "char", 0, "lines", "frequency")
    assert (len(whole.ids), len(lines.ids)) == (173428, 170580)
    assert whole.vocab.idx_to_token == [" ", "<unk>", *"abcdefghijklmnopqrstuvwxyz"]
    assert data.num_windows(len(whole.ids), 32) == 173396


def test_window_batches_keep_the_last_partial_minibatch() -> None:
    ids = np.arange(100) * 10
    batches = list(data.window_batches(ids, np.array([5, 0, 7, 3, 9]), 2, 3))
    assert [len(X) for X, _ in batches] == [2, 2, 1]
    X, Y = batches[0]
    assert X.tolist() == [[50, 60, 70], [0, 10, 20]]
    assert Y.tolist() == [[60, 70, 80], [10, 20, 30]]


def test_windows_are_shuffled_by_one_permutation_of_the_training_windows() -> None:
    ids = np.arange(50)
    got = list(data.data_iter(ids, 4, 3, np.random.default_rng(2), "windows", num_train=10))
    order = np.random.default_rng(2).permutation(10)
    assert [len(X) for X, _ in got] == [4, 4, 2]
    assert np.concatenate([X[:, 0] for X, _ in got]).tolist() == order.tolist()
    assert data.num_batches(50, 4, 3, "windows", num_train=10) == 3
    assert data.num_batches(12, 4, 3, "windows", num_train=10) == 0  # 9 windows only
    with pytest.raises(ValueError, match="fewer than 10 windows"):
        list(data.data_iter(np.arange(12), 4, 3, np.random.default_rng(0), "windows", 10))

"""core.evaluation.perplexity_on: the chunks it reads the text in, and what it returns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core import model
from rosetta_rnn.core.evaluation import perplexity_on


class _ChunkRecorder:
    """The NumPy ops, recording the shape of every integer array handed to ``asarray``."""

    def __init__(self) -> None:
        self._ops = numpy_backend.make_ops("float64", "cpu")
        self.shapes: list[tuple[int, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)

    def asarray(self, x: np.ndarray) -> Any:
        if np.issubdtype(np.asarray(x).dtype, np.integer):
            self.shapes.append(tuple(np.shape(x)))
        return self._ops.asarray(x)


def _params(ops: Any, vocab: int = 6, hidden: int = 5) -> dict[str, Any]:
    params = model.init_params(vocab, hidden, np.random.default_rng(0), "float64", sigma=0.5)
    return model.to_backend(ops, params)


@pytest.mark.parametrize(
    "length, chunks",
    [(71, [35, 35]), (72, [35, 35, 1]), (36, [35]), (2, [1])],
)
def test_the_text_is_read_in_chunks_of_35_by_default(length: int, chunks: list[int]) -> None:
    ops = _ChunkRecorder()
    ids = np.random.default_rng(1).integers(0, 6, length)
    _, n = perplexity_on(ops, _params(ops), ids)
    # inputs and labels of each chunk: (steps, batch 1)
    assert ops.shapes == [s for c in chunks for s in [(c, 1), (c, 1)]]
    assert n == length - 1 == sum(chunks)


@pytest.mark.parametrize("num_steps, chunks", [(4, [4, 4, 2]), (10, [10]), (1, [1] * 10)])
def test_num_steps_sets_the_chunk_length(num_steps: int, chunks: list[int]) -> None:
    ops = _ChunkRecorder()
    ids = np.random.default_rng(1).integers(0, 6, 11)
    ppl, n = perplexity_on(ops, _params(ops), ids, num_steps=num_steps)
    assert [s[0] for s in ops.shapes[::2]] == chunks and n == 10
    # the state is carried from chunk to chunk: the same as one pass over the text
    loss, _ = model.forward_loss(ops, _params(ops), ids[:-1, None], ids[1:, None], np.zeros((1, 5)))
    assert ppl == pytest.approx(math.exp(float(loss)), rel=1e-12)


def test_the_hidden_size_comes_from_the_parameters() -> None:
    ops = _ChunkRecorder()
    ids = np.random.default_rng(1).integers(0, 6, 9)
    ppl, n = perplexity_on(ops, _params(ops, hidden=3), ids, num_steps=3)
    loss, _ = model.forward_loss(
        ops, _params(ops, hidden=3), ids[:-1, None], ids[1:, None], np.zeros((1, 3))
    )
    assert n == 8 and ppl == pytest.approx(math.exp(float(loss)), rel=1e-12)

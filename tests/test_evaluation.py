"""core.evaluation: the chunks perplexity_on reads the text in, what it returns, and the
compiled pass per chunk of JAX and TensorFlow."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from rosetta_rnn import backends
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.tolerances import tolerance
from rosetta_rnn.core import cells, model
from rosetta_rnn.core.evaluation import perplexity_on, window_perplexity


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


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
@pytest.mark.parametrize("cell", [cells.RNN, cells.LSTM])
def test_compiled_chunks_give_the_op_by_op_perplexities(backend: str, cell: str) -> None:
    """JAX and TensorFlow run each chunk through their compiled ``forward_loss`` (every chunk
    went there), with the state carried between chunks; the figures are the op-by-op pass's
    and NumPy float64's, for the held-out pass and d2l 1.0's windowed validation."""
    pytest.importorskip(backend)
    rng = np.random.default_rng(2)
    if cell == cells.RNN:
        arrays = model.init_params(6, 5, rng, "float64", sigma=0.5)
    else:
        arrays = cells.init_params(cell, 6, 5, rng, "float64", sigma=0.5)
    ids = rng.integers(0, 6, 40)
    starts = np.arange(0, 30, 3)
    reference = numpy_backend.make_ops("float64", "cpu")
    want = perplexity_on(reference, arrays, ids, num_steps=7)
    want_windows = window_perplexity(reference, arrays, ids, starts, 4, 5)
    ops = backends.load(backend).make_ops("float64", "cpu")
    calls: list[tuple[int, ...]] = []
    compiled = ops.forward_loss

    def counted(params: Any, inputs: Any, *rest: Any) -> Any:
        calls.append(tuple(inputs.shape))
        return compiled(params, inputs, *rest)

    ops.forward_loss = counted  # type: ignore[method-assign]
    P = model.to_backend(ops, arrays)
    got = perplexity_on(ops, P, ids, num_steps=7)
    assert calls == [(7, 1)] * 5 + [(4, 1)]  # 39 predictions: five chunks of 7, then 4
    got_windows = window_perplexity(ops, P, ids, starts, 4, 5)
    assert calls[6:] == [(5, 4), (5, 4), (5, 2)]  # ten windows, four at a time
    eager = perplexity_on(ops, P, ids, num_steps=7, compiled=False)
    assert len(calls) == 9  # the op-by-op pass does not go through it
    tol = tolerance("float64", "values")
    assert got[1] == eager[1] == want[1] == 39
    assert got[0] == pytest.approx(want[0], rel=tol) and eager[0] == pytest.approx(want[0], rel=tol)
    assert got_windows == pytest.approx(want_windows, rel=tol)

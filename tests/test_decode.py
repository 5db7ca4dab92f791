"""Decoding in one call (``ops.decode``: JAX's ``lax.scan`` under ``jit``, TensorFlow's
``tf.function``, torch's loop on the device, as it is and under ``torch.compile``, NumPy's lean
loop for the chapter's RNN) prints the same text as core's host loop, one token a call, and as
NumPy float64, for every cell, greedy and sampled with core's uniforms.

Texts agree only where no choice is a near-tie that rounding could flip, so the case is built
so that none is: the margins of every choice are measured in NumPy float64 and held well above
float32's rounding before the texts are compared."""

from __future__ import annotations

import numpy as np
import pytest

from rosetta_rnn import backends
from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.conformance.problems import CELLS, Problem
from rosetta_rnn.core import cells, model, sampling

PREFIX = [1, 4, 2]
TOKENS = 40
TEMPERATURES = (None, 0.5, 1.0)
MARGIN = 1e-3
"""Every greedy choice's top-two logit gap, and every sampled choice's distance from u·total
to the nearest cumulative probability, at least this in NumPy float64: far above what float32
rounding (about 1e-6 here) can move."""


def _params(cell: str, seed: int) -> dict[str, np.ndarray]:
    params, *_ = Problem(12, 16, 1, 1, "distinct", seed, cell=cell).draw()
    params["W_hq"] = params["W_hq"] * 4  # confident logits: wide greedy margins
    return params


def _margins(params: dict[str, np.ndarray], text: list[int], temperature, seed: int) -> float:
    """The smallest margin of the choices that made ``text`` (NumPy float64)."""
    ops = numpy_backend.make_ops("float64", "cpu")
    state = cells.initial_state(ops, params, 1)
    Hs, _ = cells.any_forward(ops, params, np.asarray(text[:-1]).reshape(-1, 1), state)
    logits = np.asarray(model.output_layer(ops, params, Hs))[len(PREFIX) - 1 :]
    uniforms = np.random.default_rng(seed).random(TOKENS)
    worst = np.inf
    for row, u in zip(logits, uniforms, strict=True):
        if temperature is None:
            top = np.sort(row)[-2:]
            worst = min(worst, top[1] - top[0])
        else:
            z = row / temperature
            p = np.exp(z - z.max())
            cdf = np.cumsum(p / p.sum())
            worst = min(worst, np.abs(cdf - u * cdf[-1]).min())
    return float(worst)


DECODERS = ["numpy", "jax", "tensorflow", "torch"]


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_decoding_prints_the_host_loops_text(backend: str, cell: str) -> None:
    _same_texts(backend, cell, TEMPERATURES, ("float32", "float64"))


def test_torch_compiled_decoding_prints_the_host_loops_text() -> None:
    """torch's step under ``torch.compile`` (inductor), on the LSTM, whose state is a pair."""
    _same_texts("torch", cells.LSTM, (None, 1.0), ("float32",), "torch.compile")


def _same_texts(
    backend: str, cell: str, temperatures: tuple, dtypes: tuple, mode: str | None = None
) -> None:
    pytest.importorskip(backend)
    mod = backends.load(backend)
    reference = numpy_backend.make_ops("float64", "cpu")
    for temperature in temperatures:
        seed = {None: 0, 0.5: 1, 1.0: 2}[temperature]
        params = _params(cell, seed)
        want = sampling.predict(
            reference,
            params,
            PREFIX,
            TOKENS,
            temperature=temperature,
            rng=np.random.default_rng(seed),
        )
        assert _margins(params, want, temperature, seed) >= MARGIN, (cell, temperature)
        for dtype in dtypes:
            ops = mod.make_ops(dtype, "cpu")
            assert hasattr(ops, "decode")
            if mode is not None:
                ops.decode_mode = mode
            P = {k: ops.asarray(v) for k, v in params.items()}
            rng = np.random.default_rng(seed)
            compiled = sampling.predict(ops, P, PREFIX, TOKENS, temperature=temperature, rng=rng)
            rest = rng.random()  # the generator moved as far as the host loop moves it
            rng = np.random.default_rng(seed)
            host = sampling.predict(
                ops, P, PREFIX, TOKENS, temperature=temperature, rng=rng, compiled=False
            )
            assert compiled == host == want, (cell, temperature, dtype)
            assert rest == rng.random()


def test_numpy_decodes_the_one_hot_rnn_alone() -> None:
    """NumPy's lean loop is the chapter's RNN with one-hot inputs; a gated cell or a learned
    embedding goes through the host loop (and gives its text)."""
    ops = numpy_backend.make_ops("float64", "cpu")
    rnn = _params(cells.RNN, 0)
    assert ops.decodes(rnn, None)
    assert not ops.decodes(_params(cells.LSTM, 0), None)
    embedded, *_ = Problem(12, 16, 1, 1, "distinct", 0, embed_dim=5).draw()
    assert not ops.decodes(embedded, None)
    for params in (_params(cells.LSTM, 0), embedded):
        rng = np.random.default_rng(3)
        out = sampling.predict(ops, params, PREFIX, 5, temperature=0.5, rng=rng)
        host = sampling.predict(
            ops, params, PREFIX, 5, temperature=0.5, rng=np.random.default_rng(3), compiled=False
        )
        assert out == host and len(out) == len(PREFIX) + 5


@pytest.mark.parametrize("backend", [*DECODERS, "torch:torch.compile"])
def test_decoding_breaks_ties_towards_the_lowest_index(backend: str) -> None:
    """Two logits exactly 50 (their output columns zero), the rest far below: every greedy
    token is the lower index of the two, in the decoder and the host loop alike."""
    backend, _, mode = backend.partition(":")
    pytest.importorskip(backend)
    params = _params(cells.RNN, 0)
    params["W_hq"][:, [4, 9]] = 0.0
    params["b_q"][[4, 9]] = 50.0  # the pair wins every step, whatever the state
    ops = backends.load(backend).make_ops("float32", "cpu")
    if mode:
        ops.decode_mode = mode
    P = {k: ops.asarray(v) for k, v in params.items()}
    for compiled in (True, False):
        text = sampling.predict(ops, P, PREFIX, 6, compiled=compiled)
        assert text[len(PREFIX) :] == [4] * 6, (backend, mode, compiled)

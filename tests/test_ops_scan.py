"""core.ops: python_scan, Ops.scan's semantics as a plain loop (order, reverse, tuples), and the
Ops protocol that isinstance checks a backend against."""

from __future__ import annotations

import numpy as np

from rosetta_rnn.backends import numpy as numpy_backend
from rosetta_rnn.core.ops import Ops, python_scan

OPS = numpy_backend.make_ops("float64", "cpu")


def _running(carry: list[float], x: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Appends each step's x to the carry and emits how many steps came before."""
    return [*carry, float(x)], np.array(float(len(carry)))


def test_the_walk_is_forward_by_default() -> None:
    carry, ys = python_scan(OPS, _running, [], np.array([10.0, 20.0, 30.0]))
    assert carry == [10.0, 20.0, 30.0]
    assert ys.tolist() == [0.0, 1.0, 2.0]


def test_reverse_walks_back_and_keeps_ys_in_time_order() -> None:
    carry, ys = python_scan(OPS, _running, [], np.array([10.0, 20.0, 30.0]), reverse=True)
    assert carry == [30.0, 20.0, 10.0]
    assert ys.tolist() == [2.0, 1.0, 0.0]  # y_t at position t: x_0 was seen last


def test_tuple_inputs_and_tuple_outputs() -> None:
    def step(c: float, x: tuple[np.ndarray, np.ndarray]) -> tuple[float, tuple]:
        a, b = x
        return c + float(a * b), (a + b, np.array(c), a - b)

    xs = (np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    carry, (s, seen, d) = python_scan(OPS, step, 0.0, xs)
    assert carry == 32.0
    assert s.tolist() == [5.0, 7.0, 9.0] and d.tolist() == [-3.0, -3.0, -3.0]
    assert seen.tolist() == [0.0, 4.0, 14.0]
    carry, (s, seen, d) = python_scan(OPS, step, 0.0, xs, reverse=True)
    assert carry == 32.0 and s.tolist() == [5.0, 7.0, 9.0] and seen.tolist() == [28.0, 18.0, 0.0]


def test_a_custom_unstack_is_used() -> None:
    calls: list[int] = []

    def unstack(x: np.ndarray) -> list[np.ndarray]:
        calls.append(len(x))
        return list(x)

    carry, ys = python_scan(OPS, _running, [], np.array([1.0, 2.0]), unstack=unstack)
    assert calls == [2] and carry == [1.0, 2.0] and ys.tolist() == [0.0, 1.0]


def test_ops_is_a_protocol_isinstance_can_check() -> None:
    assert isinstance(OPS, Ops)
    assert not isinstance(object(), Ops)

"""Requests for a worker run in the main environment's interpreter (tests/test_worker.py)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def describe() -> dict[str, Any]:
    return {"numpy": np.__version__, "pid": os.getpid()}


def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": tuple(args), "kwargs": kwargs}


def chatty(x: np.ndarray) -> np.ndarray:
    print("a library printing to stdout")  # must not reach the channel
    os.write(1, b"and one writing to file descriptor 1\n")
    return x * 2


def fail(message: str) -> None:
    raise ValueError(message)


def die(code: int) -> None:
    os.write(2, b"dying on purpose\n")
    os._exit(code)


def unsendable(kind: str) -> Any:
    return {1, 2} if kind == "set" else np.complex128(1 + 2j)


HANDLERS = {
    "describe": describe,
    "echo": echo,
    "chatty": chatty,
    "fail": fail,
    "die": die,
    "unsendable": unsendable,
}

"""The wire format between rosetta-rnn and a worker in another Python environment.

A message is a 4-byte big-endian length, a UTF-8 JSON header of that length, then the raw bytes
of its arrays, one after another. The header is ``{"body": ..., "arrays": [...]}``: ``body`` is
JSON in which each array stands as ``{"__array__": i}``, a tuple as ``{"__tuple__": [...]}``,
and ``arrays`` gives each array's dtype (one of ``DTYPES``) and shape. Nothing is pickled: a
message can carry numbers, strings, lists, tuples, string-keyed dicts and NumPy arrays, and
anything else is refused when it is written.

It imports nothing but the standard library and NumPy, because both sides run it: the main
environment and the worker's (whose NumPy may be older: MXNet's needs 1.23).
"""

from __future__ import annotations

import json
import math
import struct
from typing import IO, Any

import numpy as np

DTYPES = ("float32", "float64", "int32", "int64", "bool")
"""The array dtypes a message may carry (little-endian on the wire)."""
MAX_HEADER = 64 * 1024 * 1024
MAX_ARRAY_BYTES = 1 << 34
"""The largest header and the largest array a message may have (16 GiB: far above any
model here, below what a corrupt length could make a reader try to allocate)."""


class WireError(Exception):
    """A message that cannot be written or read (a value of another type, a cut stream)."""


def _flatten(value: Any, arrays: list[np.ndarray]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        if value.dtype.name not in DTYPES:
            raise WireError(f"a {value.dtype} scalar cannot be sent; use {DTYPES}")
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.name not in DTYPES:
            raise WireError(f"an array of dtype {value.dtype} cannot be sent; use {DTYPES}")
        arrays.append(value.astype(value.dtype.newbyteorder("<"), order="C"))
        return {"__array__": len(arrays) - 1}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, arrays) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise WireError("only dicts with string keys can be sent")
        if "__array__" in value or "__tuple__" in value:
            raise WireError("a dict key may not be __array__ or __tuple__")
        return {k: _flatten(v, arrays) for k, v in value.items()}
    raise WireError(f"a {type(value).__name__} cannot be sent")


def _restore(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__array__" in value:
            i = value["__array__"]
            if type(i) is not int or not 0 <= i < len(arrays):
                raise WireError(f"an array reference {i!r} names no array of the message")
            return arrays[i]
        if "__tuple__" in value:
            return tuple(_restore(v, arrays) for v in value["__tuple__"])
        return {k: _restore(v, arrays) for k, v in value.items()}
    return value


def encode(body: Any) -> bytes:
    """One message: the length, the header and the arrays' bytes."""
    arrays: list[np.ndarray] = []
    flat = _flatten(body, arrays)
    specs = [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays]
    header = json.dumps({"body": flat, "arrays": specs}, allow_nan=True).encode()
    if len(header) > MAX_HEADER:
        raise WireError(f"a header of {len(header)} bytes is more than this format allows")
    return b"".join([struct.pack(">I", len(header)), header, *(a.tobytes() for a in arrays)])


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise WireError(f"the stream ended after {0 if not data else len(data)} of {n} bytes")
    return data


def read(stream: IO[bytes]) -> Any:
    """The next message's body, its arrays in place; ``WireError`` if the stream ends or the
    message is not one this format writes."""
    (size,) = struct.unpack(">I", _read_exactly(stream, 4))
    if size > MAX_HEADER:
        raise WireError(f"a header of {size} bytes is more than this format allows")
    raw_header = _read_exactly(stream, size)
    try:
        header = json.loads(raw_header)
        specs, body = header["arrays"], header["body"]
        arrays = [_array(stream, spec) for spec in specs]
        return _restore(body, arrays)
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # JSON, layout, nesting
        raise WireError(f"a malformed message: {type(e).__name__}: {e}") from None


def _array(stream: IO[bytes], spec: dict[str, Any]) -> np.ndarray:
    """One array of the message, read from the stream as its spec describes."""
    if spec["dtype"] not in DTYPES:
        raise WireError(f"an array of dtype {spec['dtype']} is not part of the format")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise WireError(f"an array shape must be a list of sizes >= 0, not {shape!r}")
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise WireError(f"an array of {nbytes} bytes is more than this format allows")
    raw = _read_exactly(stream, nbytes)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.name)


def write(stream: IO[bytes], body: Any) -> None:
    stream.write(encode(body))
    stream.flush()

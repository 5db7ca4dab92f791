"""Checkpoints: the safetensors format (written and read here, no pickle) with JSON metadata.

Layout of a safetensors file: 8 bytes little-endian header length N, N bytes of JSON header
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}``), then the raw
little-endian tensor bytes. Our metadata is one JSON document under the key ``rosetta_rnn``.
Everything is validated before a tensor is used; writes are atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .files import atomic_write_bytes

FORMAT = "rosetta-rnn-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "rosetta_rnn"
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
}
_CODES = {v: k for k, v in _DTYPES.items()}


def encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> bytes:
    """The safetensors bytes of ``tensors`` with ``metadata`` stored as JSON."""
    return encode_raw(tensors, {METADATA_KEY: json.dumps(metadata)})


def _header(data: bytes, bad: Callable[[str], CheckpointError]) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of safetensors bytes and its length N (the body starts at 8 + N)."""
    if len(data) < 8:
        raise bad("file too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise bad("not a safetensors file, or truncated header")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("header is not JSON (not a safetensors file?)") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    return header, n


def _tensors(
    header: Mapping[str, Any],
    body: memoryview,
    bad: Callable[[str], CheckpointError],
    unknown_dtype: Callable[[str, str], CheckpointError] | None = None,
) -> dict[str, np.ndarray]:
    """Every tensor the header (less ``__metadata__``) describes, each checked to lie inside
    ``body`` with as many bytes as its shape needs. A dtype outside ``_DTYPES`` is a malformed
    entry, or ``unknown_dtype(name, dtype)`` when given (a file of another program)."""
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = info.get("dtype") if isinstance(info, dict) else None
        if unknown_dtype is not None and isinstance(code, str) and code not in _DTYPES:
            raise unknown_dtype(name, code)
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has a malformed entry") from None
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= len(body):
            raise bad(f"tensor {name!r} lies outside the file (truncated?)")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise bad(f"tensor {name!r} has {end - begin} bytes for shape {list(shape)}")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return tensors


def decode(data: bytes, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse and validate safetensors bytes -> (tensors, our metadata)."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{source} is not a valid rosetta-rnn checkpoint: {why}")

    header, n = _header(data, bad)
    raw_meta = header.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or METADATA_KEY not in raw_meta:
        raise bad("no rosetta-rnn metadata")
    try:
        metadata = json.loads(raw_meta[METADATA_KEY])
    except (TypeError, json.JSONDecodeError):
        raise bad("metadata is not JSON") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise bad("metadata is of another format")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format {version}; this rosetta-rnn reads up to "
            f"{FORMAT_VERSION} (upgrade rosetta-rnn)"
        )
    return _tensors(header, memoryview(data)[8 + n :], bad), metadata


def parse_safetensors(
    data: bytes, source: str = "file"
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Any safetensors bytes -> (tensors, the raw ``__metadata__`` map, ``{}`` when absent), with
    ``decode``'s checks of the layout but none of our metadata: a file another program wrote
    (``safetensors.torch.save_file(model.state_dict())``). F32, F64 and I64 tensors are read;
    another dtype (F16, BF16 ...) is one error naming it."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{source} is not a valid safetensors file: {why}")

    def unknown_dtype(name: str, code: str) -> CheckpointError:
        return CheckpointError(
            f"{source}: tensor {name!r} is {code}, which rosetta-rnn does not read (F32, F64 "
            "and I64 only); save the weights as float32 or float64 (in torch: model.float())"
        )

    header, n = _header(data, bad)
    raw_meta = header.get("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
    ):
        raise bad("__metadata__ is not a map of strings to strings")
    return _tensors(header, memoryview(data)[8 + n :], bad, unknown_dtype), dict(raw_meta)


def read_safetensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read any safetensors file -> (tensors, raw metadata): ``parse_safetensors`` of its bytes.
    Never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_safetensors(data, source=str(path))


def encode_raw(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` with ``metadata`` as the raw ``__metadata__`` map
    (``encode`` stores our metadata under ``METADATA_KEY`` this way)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _CODES:
            raise ValueError(f"cannot store dtype {a.dtype} of {name}")
        blob = a.tobytes()
        header[name] = {
            "dtype": _CODES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the whole new one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None


def save(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> None:
    """Atomically write a checkpoint (``format`` and ``format_version`` are added)."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    atomic_write(path, encode(tensors, meta))


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and validate a checkpoint -> (tensors, metadata). Never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    return decode(data, source=str(path))


def model_metadata(metadata: Mapping[str, Any], source: str) -> tuple[list[str], int, str]:
    """Validate what a model needs from the metadata -> (vocab tokens, num_hiddens, dtype)."""
    vocab = metadata.get("vocab")
    config = metadata.get("config")
    dtype = metadata.get("dtype")
    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab)):
        raise CheckpointError(f"{source}: metadata has no valid vocabulary")
    if not isinstance(config, dict) or not isinstance(config.get("num_hiddens"), int):
        raise CheckpointError(f"{source}: metadata has no valid config.num_hiddens")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{source}: metadata dtype {dtype!r} is not float32 or float64")
    return vocab, int(config["num_hiddens"]), str(dtype)


def model_cell(metadata: Mapping[str, Any], source: str) -> str:
    """The cell a checkpoint holds, as ``core.model.cell_of`` names it: the run's ``cell``
    (``gru`` with its ``gru`` formulation), ``rnn`` for a checkpoint written before cells."""
    from .cells import CELLS, RNN

    run = metadata.get("run")
    run = run if isinstance(run, dict) else {}
    cell = run.get("cell") or RNN
    if cell == "gru":
        cell = f"gru/{run.get('gru') or 'reset-before'}"
    if cell != RNN and cell not in CELLS:
        raise CheckpointError(f"{source}: metadata cell {cell!r} is not one this rosetta-rnn knows")
    return str(cell)


def load_model(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint and check that its parameters (five, or six with a learned embedding,
    or a gated cell's) fit its cell, vocabulary and size."""
    from . import cells
    from .cells import RNN, cell_of
    from .model import param_shapes

    tensors, metadata = load(path)
    vocab, num_hiddens, dtype = model_metadata(metadata, str(path))
    embed_dim = metadata["config"].get("embed_dim")
    if embed_dim is not None and not (isinstance(embed_dim, int) and embed_dim > 0):
        raise CheckpointError(f"{path}: metadata config.embed_dim {embed_dim!r} is not valid")
    cell = model_cell(metadata, str(path))
    if cell_of(tensors) != cell:
        raise CheckpointError(f"{path}: its parameters are a {cell_of(tensors)}'s, not a {cell}'s")
    if cell == RNN:
        expected = param_shapes(len(vocab), num_hiddens, embed_dim)
    else:
        expected = cells.param_shapes(cell, len(vocab), num_hiddens, embed_dim)
    for name in expected:
        if name not in tensors:
            raise CheckpointError(f"{path}: parameter {name} is missing")
        if tensors[name].shape != expected[name]:
            raise CheckpointError(
                f"{path}: parameter {name} has shape {list(tensors[name].shape)}, expected "
                f"{list(expected[name])} for vocab {len(vocab)} and {num_hiddens} hiddens"
            )
        if tensors[name].dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: parameter {name} is {tensors[name].dtype}, not {dtype}")
    return tensors, metadata


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early, before any training, when ``path`` cannot be written later."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a folder")
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"cannot write {path}: folder {path.parent} is not writable")

"""Checkpoints: safetensors round trip, compatibility with the safetensors library, validation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from rosetta_rnn.core import checkpoint, model
from rosetta_rnn.core.errors import CheckpointError

META = {
    "dtype": "float64",
    "backend": "numpy",
    "epoch": 3,
    "config": {"num_hiddens": 4},
    "vocab": ["<unk>", " ", "a", "b", "c"],
}


def _params(dtype: str = "float64") -> dict[str, np.ndarray]:
    return model.init_params(5, 4, np.random.default_rng(0), dtype, sigma=1.0)


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    params = _params()
    checkpoint.save(path, params, META)
    tensors, meta = checkpoint.load_model(path)
    assert meta["epoch"] == 3 and meta["format_version"] == checkpoint.FORMAT_VERSION
    for k in model.PARAM_NAMES:
        assert tensors[k].dtype == params[k].dtype
        assert np.array_equal(tensors[k], params[k])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_the_safetensors_library_reads_and_writes_our_files(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    params = _params("float32")
    checkpoint.save(path, params, {**META, "dtype": "float32"})
    theirs = safetensors_numpy.load_file(str(path))
    assert all(np.array_equal(theirs[k], params[k]) for k in params)
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()[checkpoint.METADATA_KEY])["epoch"] == 3
    # and a file written by the library, with our metadata, loads here
    other = tmp_path / "theirs.safetensors"
    meta = {
        checkpoint.METADATA_KEY: json.dumps(
            {"format": checkpoint.FORMAT, "format_version": 1, **META}
        )
    }
    safetensors_numpy.save_file(_params(), str(other), metadata=meta)
    tensors, _ = checkpoint.load_model(other)
    assert np.array_equal(tensors["W_hh"], _params()["W_hh"])


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), META)
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 8):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"truncated|too short"):
            checkpoint.load(path)


def test_not_safetensors_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"\x80\x04\x95" + b"pickle bytes" * 20)
    with pytest.raises(CheckpointError, match="not a valid"):
        checkpoint.load(path)


def test_newer_format_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.atomic_write(
        path,
        checkpoint.encode(_params(), {"format": checkpoint.FORMAT, "format_version": 99, **META}),
    )
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.load(path)


def test_shape_mismatch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), {**META, "config": {"num_hiddens": 6}})
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load_model(path)


def test_lying_offsets_are_rejected(tmp_path: Path) -> None:
    blob = checkpoint.encode(_params(), {"format": checkpoint.FORMAT, "format_version": 1, **META})
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["W_hh"]["data_offsets"][1] += 10**6
    head = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + blob[8 + n :])
    with pytest.raises(CheckpointError, match="outside the file"):
        checkpoint.load(path)


def test_missing_checkpoint_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.save(tmp_path / "no" / "m.safetensors", _params(), META)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), META)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        checkpoint.save(path, {"bad": np.array(["text"])}, META)
    assert path.read_bytes() == before


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        checkpoint.save(path, _params(), META)
        assert path.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
    finally:
        os.umask(mask)

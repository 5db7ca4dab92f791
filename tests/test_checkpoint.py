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


def _raw(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def _ours(extra: dict | None = None) -> dict:
    meta = {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION, **META}
    return {"__metadata__": {checkpoint.METADATA_KEY: json.dumps({**meta, **(extra or {})})}}


def test_the_header_is_padded_to_eight_bytes() -> None:
    for n in range(1, 9):  # names of every length: every padding from 0 to 7
        data = checkpoint.encode({"x" * n: np.zeros(3)}, {"epoch": 1})
        (length,) = struct.unpack("<Q", data[:8])
        assert length % 8 == 0 and data[8 + length - 1 : 8 + length] in (b" ", b"}")


@pytest.mark.parametrize("fmt", ["another-tool", "zzz", "", None])
def test_metadata_of_another_format_is_rejected(fmt: object) -> None:
    with pytest.raises(CheckpointError, match="another format"):
        checkpoint.decode(_raw(_ours({"format": fmt})))


def test_a_negative_dimension_is_rejected() -> None:
    header = {**_ours(), "W": {"dtype": "F64", "shape": [-1], "data_offsets": [0, 8]}}
    with pytest.raises(CheckpointError, match="outside the file"):
        checkpoint.decode(_raw(header, np.zeros(1).tobytes()))


@pytest.mark.parametrize("embed_dim", [0, -2, 1.5, "4"])
def test_an_invalid_embed_dim_is_rejected(tmp_path: Path, embed_dim: object) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), {**META, "config": {"num_hiddens": 4, "embed_dim": embed_dim}})
    with pytest.raises(CheckpointError, match="embed_dim"):
        checkpoint.load_model(path)


def test_check_writable(tmp_path: Path) -> None:
    checkpoint.check_writable(tmp_path / "new.safetensors")  # a writable folder: fine
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.check_writable(tmp_path / "no" / "m.safetensors")
    with pytest.raises(CheckpointError, match="it is a folder"):
        checkpoint.check_writable(tmp_path)


def test_a_folder_in_place_of_a_checkpoint_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "m.safetensors")


def test_large_tensors_round_trip(tmp_path: Path) -> None:
    """Byte counts past the small-integer cache (an identity test of ints would fail here)."""
    params = model.init_params(60, 70, np.random.default_rng(1), "float64", sigma=1.0)
    path = tmp_path / "big.safetensors"
    checkpoint.save(path, params, {**META, "config": {"num_hiddens": 70}, "vocab": ["x"] * 60})
    tensors, _ = checkpoint.load_model(path)
    assert all(np.array_equal(tensors[k], params[k]) for k in model.PARAM_NAMES)


@pytest.mark.parametrize("vocab", ["abcde", [], ["a", 1], None])
def test_an_invalid_vocabulary_is_rejected(tmp_path: Path, vocab: object) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), {**META, "vocab": vocab})
    with pytest.raises(CheckpointError, match="no valid vocabulary"):
        checkpoint.load_model(path)

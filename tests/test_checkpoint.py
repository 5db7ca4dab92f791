"""Checkpoints: safetensors round trip, compatibility with the safetensors library, validation."""

from __future__ import annotations

import errno
import json
import os
import re
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
    for cut, why in [
        (4, "file too short"),
        (7, "file too short"),  # one byte short of the header length: still one error
        (20, "not a safetensors file, or truncated header"),
        (len(data) - 8, "tensor 'b_q' lies outside the file"),
    ]:
        path.write_bytes(data[:cut])
        # the whole message: the path alone holds this test's name, "truncated" included
        whole = f"{path} is not a valid rosetta-rnn checkpoint: {why}"
        with pytest.raises(CheckpointError, match=re.escape(whole)):
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


@pytest.mark.parametrize("declared", [6, 2])  # parameters smaller and larger than declared
def test_shape_mismatch_is_rejected(tmp_path: Path, declared: int) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), {**META, "config": {"num_hiddens": declared}})
    expected = (
        f"parameter W_xh has shape [5, 4], expected [5, {declared}] for vocab 5 and {declared}"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected)):
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
    # not just "embed_dim": the path holds this test's name, which has it too
    with pytest.raises(CheckpointError, match=re.escape(f"config.embed_dim {embed_dim!r} is not")):
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


def _whole(why: str) -> str:
    """The pattern of decode's whole message (source "checkpoint") for ``why``."""
    return "^" + re.escape(f"checkpoint is not a valid rosetta-rnn checkpoint: {why}") + "$"


def test_a_header_one_byte_short_is_truncated_even_if_it_parses() -> None:
    head = json.dumps(_ours()).encode() + b"   "  # padding: still JSON without its last byte
    data = struct.pack("<Q", len(head)) + head
    assert checkpoint.decode(data)[1]["epoch"] == 3
    with pytest.raises(
        CheckpointError, match=_whole("not a safetensors file, or truncated header")
    ):
        checkpoint.decode(data[:-1])


def test_the_header_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert checkpoint.MAX_HEADER_BYTES == 100 * 1024 * 1024  # 100 MiB, in the header length field
    head = json.dumps(_ours()).encode()
    head += b" " * (-len(head) % 8 + 256)  # past 256: a length that is not a cached small int
    data = struct.pack("<Q", len(head)) + head
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", len(head))
    assert checkpoint.decode(data)[1]["epoch"] == 3  # a header of exactly the limit is read
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", len(head) - 1)
    with pytest.raises(
        CheckpointError, match=_whole("not a safetensors file, or truncated header")
    ):
        checkpoint.decode(data)  # one byte over: refused although the file holds all of it


def test_a_header_that_is_not_utf8_is_rejected() -> None:
    head = b'{"a": "\xff\xfe"}'
    with pytest.raises(
        CheckpointError, match=_whole("header is not JSON (not a safetensors file?)")
    ):
        checkpoint.decode(struct.pack("<Q", len(head)) + head)


@pytest.mark.parametrize(
    "header",
    [{}, {"__metadata__": {"format": "pt"}}, {"__metadata__": ["rosetta_rnn"]}],
    ids=["no metadata", "foreign metadata", "metadata not an object"],
)
def test_a_file_without_our_metadata_is_rejected(header: dict) -> None:
    with pytest.raises(CheckpointError, match=_whole("no rosetta-rnn metadata")):
        checkpoint.decode(_raw(header))


@pytest.mark.parametrize("value", [5, ["a"], "{oops"], ids=["number", "list", "broken"])
def test_metadata_that_is_not_a_json_string_is_rejected(value: object) -> None:
    header = {"__metadata__": {checkpoint.METADATA_KEY: value}}
    with pytest.raises(CheckpointError, match=_whole("metadata is not JSON")):
        checkpoint.decode(_raw(header))


def test_an_older_format_version_is_read() -> None:
    _, meta = checkpoint.decode(_raw(_ours({"format_version": 0})))
    assert meta["format_version"] == 0


def test_files_are_written_in_format_version_1(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), META)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert json.loads(header["__metadata__"][checkpoint.METADATA_KEY])["format_version"] == 1
    with pytest.raises(CheckpointError, match=r"format 2; this rosetta-rnn reads up to 1 \("):
        checkpoint.decode(_raw(_ours({"format_version": 2})))


@pytest.mark.parametrize(
    "entry",
    [
        {"shape": [1], "data_offsets": [0, 8]},
        {"dtype": "BF16", "shape": [1], "data_offsets": [0, 8]},
        {"dtype": "F64", "data_offsets": [0, 8]},
        {"dtype": "F64", "shape": ["one"], "data_offsets": [0, 8]},
        {"dtype": "F64", "shape": None, "data_offsets": [0, 8]},
        {"dtype": "F64", "shape": [1], "data_offsets": [0]},
        {"dtype": "F64", "shape": [1], "data_offsets": 8},
    ],
    ids=["no dtype", "unknown dtype", "no shape", "text dim", "null shape", "one offset", "int"],
)
def test_a_malformed_tensor_entry_is_rejected(entry: dict) -> None:
    with pytest.raises(CheckpointError, match=_whole("tensor 'W' has a malformed entry")):
        checkpoint.decode(_raw({**_ours(), "W": entry}, np.zeros(1).tobytes()))


@pytest.mark.parametrize("offsets", [[8, 0], [-1, 7], [0, 24]], ids=["reversed", "neg", "past"])
def test_offsets_outside_the_body_are_rejected(offsets: list[int]) -> None:
    header = {**_ours(), "W": {"dtype": "F64", "shape": [1], "data_offsets": offsets}}
    with pytest.raises(
        CheckpointError, match=_whole("tensor 'W' lies outside the file (truncated?)")
    ):
        checkpoint.decode(_raw(header, np.zeros(2).tobytes()))


@pytest.mark.parametrize("offsets, size", [([8, 24], 16), ([8, 12], 4)])
def test_a_byte_count_that_does_not_fit_the_shape_is_rejected(
    offsets: list[int], size: int
) -> None:
    header = {**_ours(), "W": {"dtype": "F64", "shape": [1], "data_offsets": offsets}}
    with pytest.raises(CheckpointError, match=_whole(f"tensor 'W' has {size} bytes for shape [1]")):
        checkpoint.decode(_raw(header, np.zeros(3).tobytes()))


def test_an_empty_tensor_round_trips() -> None:
    """Zero bytes at offsets [b, b]: begin == end is inside the file."""
    tensors = {"empty": np.zeros(0), "x": np.arange(3.0), "end": np.zeros((2, 0))}
    meta = {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION}
    back, _ = checkpoint.decode(checkpoint.encode(tensors, meta))
    assert back["empty"].shape == (0,) and back["end"].shape == (2, 0)
    assert np.array_equal(back["x"], np.arange(3.0))


@pytest.mark.parametrize("embed_dim", [1, 3])
def test_a_learned_embedding_loads(tmp_path: Path, embed_dim: int) -> None:
    params = model.init_params(5, 4, np.random.default_rng(0), "float64", 1.0, embed_dim)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, params, {**META, "config": {"num_hiddens": 4, "embed_dim": embed_dim}})
    tensors, _ = checkpoint.load_model(path)
    assert tensors[model.EMBEDDING].shape == (5, embed_dim)
    assert tensors["W_xh"].shape == (embed_dim, 4)


@pytest.mark.parametrize(
    "config", [None, [4], {}, {"num_hiddens": "4"}, {"num_hiddens": 4.0}], ids=str
)
def test_an_invalid_num_hiddens_is_rejected(tmp_path: Path, config: object) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), {**META, "config": config})
    with pytest.raises(CheckpointError, match=r"metadata has no valid config\.num_hiddens$"):
        checkpoint.load_model(path)


@pytest.mark.parametrize("stored, declared", [("float64", "float32"), ("float32", "float64")])
def test_parameters_of_another_dtype_are_rejected(
    tmp_path: Path, stored: str, declared: str
) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(stored), {**META, "dtype": declared})
    with pytest.raises(CheckpointError, match=f"parameter W_xh is {stored}, not {declared}$"):
        checkpoint.load_model(path)


def test_a_failed_write_is_one_line_with_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.mkdir()  # the rename onto it fails: EISDIR
    with pytest.raises(CheckpointError) as e:
        checkpoint.atomic_write(path, b"data")
    assert str(e.value) == f"cannot write {path}: {os.strerror(errno.EISDIR)}"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_a_failed_read_is_one_line_with_the_os_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _params(), META)

    def failing_read(self: Path) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))

    monkeypatch.setattr(Path, "read_bytes", failing_read)  # a disk error, as root cannot make one
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    assert str(e.value) == f"cannot read checkpoint {path}: {os.strerror(errno.EIO)}"

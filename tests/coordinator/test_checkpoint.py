"""Checkpoint files: round trips, content addressing, atomic writes, corruption detection."""

import hashlib
import os
import re
from dataclasses import replace

import numpy as np
import pytest

from fedmask.coordinator import checkpoint
from fedmask.coordinator.aggregation import FedAdam
from fedmask.coordinator.checkpoint import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointRef,
    FileRef,
    adapter_from_bytes,
    iter_chunks,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)

LAYOUT = [
    {"name": "base.layer.0.lora_A", "shape": [4, 8], "dtype": "float32"},
    {"name": "base.layer.0.lora_B", "shape": [8, 4], "dtype": "float32"},
]


def vector_of(round_number: int, size: int = 64, dtype=np.float32) -> np.ndarray:
    return (np.arange(size, dtype=np.float64) * 0.37 - round_number).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    vector = vector_of(3, dtype=dtype)
    ref = save_checkpoint(tmp_path, 3, vector, LAYOUT)
    loaded, layout = load_checkpoint(tmp_path, ref)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, vector)
    assert layout == LAYOUT
    assert ref.round_number == 3 and ref.optimizer is None


def test_files_are_named_by_round_and_content_and_hash_to_the_reference(tmp_path):
    ref = save_checkpoint(tmp_path, 7, vector_of(7), LAYOUT, FedAdam(lr=0.1).state_dict())
    data = (tmp_path / ref.adapter.name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref.adapter.sha256 == ref.version
    assert len(data) == ref.adapter.size_bytes
    assert re.fullmatch(rf"round-000007-{ref.version[:16]}\.adapter\.safetensors", ref.adapter.name)
    assert ref.optimizer is not None and ref.optimizer.name.endswith(".optimizer.safetensors")
    # Only the final files: no temporary file is left behind.
    assert sorted(os.listdir(tmp_path)) == sorted([ref.adapter.name, ref.optimizer.name])
    # Same content, same name; different content, a new file beside the old one.
    assert save_checkpoint(tmp_path, 7, vector_of(7), LAYOUT).adapter == ref.adapter
    other = save_checkpoint(tmp_path, 7, vector_of(8), LAYOUT)
    assert other.adapter.name != ref.adapter.name
    np.testing.assert_array_equal(load_checkpoint(tmp_path, ref)[0], vector_of(7))


def test_optimizer_state_round_trip_continues_fedadam_bit_for_bit(tmp_path):
    rng = np.random.default_rng(11)
    updates = [rng.normal(scale=0.1, size=64) for _ in range(3)]
    straight = FedAdam(lr=0.05, tau=1e-2)
    expected = vector_of(0)
    for delta in updates:
        expected = straight.apply(expected, delta)

    first = FedAdam(lr=0.05, tau=1e-2)
    x = first.apply(vector_of(0), updates[0])
    ref = save_checkpoint(tmp_path, 1, x, LAYOUT, first.state_dict())

    vector, _ = load_checkpoint(tmp_path, ref)
    resumed = FedAdam(lr=0.05, tau=1e-2)
    resumed.load_state_dict(load_optimizer_state(tmp_path, ref))
    for delta in updates[1:]:
        vector = resumed.apply(vector, delta)
    np.testing.assert_array_equal(vector, expected)


def test_no_optimizer_state_loads_as_none(tmp_path):
    ref = save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT)
    assert load_optimizer_state(tmp_path, ref) is None


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[-5] ^= 0x01
    elif how == "truncate":
        del data[-9:]
    elif how == "extend":
        data += b"\0"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, message",
    [
        ("flip", "does not match its SHA-256"),
        ("truncate", "truncated: .* bytes on disk"),
        ("extend", "longer than recorded"),
        ("delete", "missing"),
    ],
)
def test_a_damaged_adapter_is_refused(tmp_path, how, message):
    ref = save_checkpoint(tmp_path, 2, vector_of(2), LAYOUT, FedAdam(lr=0.1).state_dict())
    path = tmp_path / ref.adapter.name
    if how == "delete":
        path.unlink()
    else:
        _corrupt(path, how)
    with pytest.raises(CheckpointCorrupt, match=message):
        load_checkpoint(tmp_path, ref)
    with pytest.raises(CheckpointCorrupt, match=message):
        iter_chunks(tmp_path, ref, 16)  # refused before the first chunk


def test_a_damaged_optimizer_state_is_refused(tmp_path):
    optimizer = FedAdam(lr=0.1)
    optimizer.apply(np.zeros(64), np.ones(64))
    ref = save_checkpoint(tmp_path, 2, vector_of(2), LAYOUT, optimizer.state_dict())
    _corrupt(tmp_path / ref.optimizer.name, "flip")
    with pytest.raises(CheckpointCorrupt, match="does not match its SHA-256"):
        load_optimizer_state(tmp_path, ref)


def test_a_reference_to_another_round_is_refused(tmp_path):
    ref = save_checkpoint(tmp_path, 2, vector_of(2), LAYOUT)
    with pytest.raises(CheckpointError, match="not the adapter file of round 3"):
        replace(ref, round_number=3)


def _renamed_to_round(directory, ref: FileRef, round_number: int) -> FileRef:
    """The same bytes under the name of another round (an operator's restore gone wrong): the name
    still carries the hash, so only the round recorded inside the file tells them apart."""
    name = re.sub(r"^round-\d+", f"round-{round_number:06d}", ref.name)
    assert name != ref.name
    os.replace(directory / ref.name, directory / name)
    return FileRef(name, ref.sha256, ref.size_bytes)


def test_a_file_of_another_round_under_this_round_s_name_is_refused(tmp_path):
    optimizer = FedAdam(lr=0.1)
    optimizer.apply(np.zeros(64), np.ones(64))
    ref = save_checkpoint(tmp_path, 3, vector_of(3), LAYOUT, optimizer.state_dict())
    adapter = _renamed_to_round(tmp_path, ref.adapter, 2)
    assert ref.optimizer is not None
    moved = CheckpointRef(2, adapter, _renamed_to_round(tmp_path, ref.optimizer, 2))
    with pytest.raises(CheckpointCorrupt, match="holds round 3, not 2"):
        load_checkpoint(tmp_path, moved)
    with pytest.raises(CheckpointCorrupt, match="holds round 3, not 2"):
        load_optimizer_state(tmp_path, moved)


def test_a_reference_with_another_hash_is_refused(tmp_path):
    ref = save_checkpoint(tmp_path, 2, vector_of(2), LAYOUT)
    other = save_checkpoint(tmp_path, 2, vector_of(5), LAYOUT)
    with pytest.raises(CheckpointError, match="does not carry its hash"):
        FileRef(ref.adapter.name, other.adapter.sha256, ref.adapter.size_bytes)


@pytest.mark.parametrize(
    "name", ["../round-000001-0123456789abcdef.adapter.safetensors", "/etc/passwd", "round-1-x.adapter.safetensors"]
)
def test_file_names_cannot_leave_the_directory(name):
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        FileRef(name, "0123456789abcdef" * 4, 100)


def test_chunks_reassemble_to_the_versioned_adapter(tmp_path):
    vector = vector_of(4, size=1000)
    ref = save_checkpoint(tmp_path, 4, vector, LAYOUT)
    chunks = list(iter_chunks(tmp_path, ref, 1000))
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= 1000
    data = b"".join(chunks)
    assert data == (tmp_path / ref.adapter.name).read_bytes()
    round_number, received, layout = adapter_from_bytes(data, ref.version)
    assert round_number == 4 and layout == LAYOUT
    np.testing.assert_array_equal(received, vector)


def test_received_bytes_are_checked_against_the_version(tmp_path):
    ref = save_checkpoint(tmp_path, 4, vector_of(4), LAYOUT)
    data = bytearray(b"".join(iter_chunks(tmp_path, ref, 64)))
    data[-1] ^= 0x80
    with pytest.raises(CheckpointCorrupt, match="announced version"):
        adapter_from_bytes(bytes(data), ref.version)
    with pytest.raises(CheckpointCorrupt, match="announced version"):
        adapter_from_bytes(bytes(data[:-10]), ref.version)


def test_a_well_formed_file_of_the_wrong_kind_is_refused():
    import safetensors.numpy

    description = '{"format": "something-else"}'
    data = safetensors.numpy.save({"vector": np.zeros(4, np.float32)}, metadata={"fedmask": description})
    with pytest.raises(CheckpointCorrupt, match="not a fedmask.global-adapter/1 file"):
        adapter_from_bytes(data, hashlib.sha256(data).hexdigest())
    with pytest.raises(CheckpointCorrupt, match="too short"):
        adapter_from_bytes(b"abc", hashlib.sha256(b"abc").hexdigest())


@pytest.mark.parametrize("chunk_bytes", [0, -1, 1.5, True])
def test_chunk_size_is_validated(tmp_path, chunk_bytes):
    ref = save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT)
    with pytest.raises(ValueError, match="chunk_bytes"):
        iter_chunks(tmp_path, ref, chunk_bytes)


@pytest.mark.parametrize(
    "round_number, vector, layout, message",
    [
        (-1, vector_of(1), LAYOUT, "round numbers"),
        (1, np.array([1.0, np.nan], dtype=np.float32), LAYOUT, "NaN"),
        (1, np.zeros((2, 2), dtype=np.float32), LAYOUT, "1-D"),
        (1, np.zeros(0, dtype=np.float32), LAYOUT, "non-empty"),
        (1, np.zeros(3, dtype=np.int32), LAYOUT, "float32 or float64"),
        (1, [0.0, 1.0], LAYOUT, "numpy array"),
        (1, vector_of(1), {"scale": float("nan")}, "not plain JSON"),
        (1, vector_of(1), {"shapes": {1, 2}}, "not plain JSON"),
    ],
)
def test_save_validates_its_inputs(tmp_path, round_number, vector, layout, message):
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path, round_number, vector, layout)
    assert os.listdir(tmp_path) == []


def test_optimizer_state_is_validated(tmp_path):
    with pytest.raises(CheckpointError, match="finite float array"):
        save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT, {"m": np.array([np.inf])})
    with pytest.raises(CheckpointError, match="not plain JSON"):
        save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT, {"lr": object()})


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def fail(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT, FedAdam(lr=0.1).state_dict())
    assert os.listdir(tmp_path) == []


def test_checkpoint_refs_validate_round_numbers(tmp_path):
    ref = save_checkpoint(tmp_path, 1, vector_of(1), LAYOUT)
    with pytest.raises(CheckpointError, match="round numbers"):
        CheckpointRef(True, ref.adapter)

"""Global-adapter checkpoints: immutable, content-addressed files, written durably.

One checkpoint is one or two files in a checkpoint directory:

- the **adapter file** ``round-NNNNNN-<sha256[:16]>.adapter.safetensors``: the global adapter as
  one flat float vector (tensor ``vector``) with the opaque ``layout`` JSON (tensor names, shapes,
  dtypes) and the round number in the safetensors metadata. Its SHA-256 is the adapter's
  *version hash*: what participants download (``iter_chunks``) and check.
- the optional **optimizer file** ``round-NNNNNN-<sha256[:16]>.optimizer.safetensors``: the
  server optimizer's ``state_dict`` (array entries as tensors, the rest as JSON metadata), so that
  FedAdam's moments survive a restart. It is never sent to participants.

A file is written to a temporary name in the same directory, flushed, fsynced, renamed into
place with ``os.replace`` and the directory fsynced, so once ``save_checkpoint`` returns the
files are on disk under their final names, and a crash at any earlier point leaves at most a
temporary or unreferenced file. Nothing refers to a checkpoint until the store's commit
transaction records its ``CheckpointRef``; files that no commit refers to are orphans, ignored
by every reader and removed by ``FederationStore.collect_garbage``.

Names carry the content hash, so a round that is re-run after a crash writes new files instead
of overwriting any file a committed round could point at.

Every read checks the size and SHA-256 recorded in the ``CheckpointRef`` before parsing a byte,
and refuses a truncated, altered or mismatched file with ``CheckpointCorrupt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from fedmask.durable import fsync_directory, write_atomic

__all__ = [
    "ADAPTER_FORMAT",
    "OPTIMIZER_FORMAT",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointRef",
    "FileRef",
    "adapter_from_bytes",
    "canonical_json",
    "is_checkpoint_file_name",
    "iter_chunks",
    "load_checkpoint",
    "load_optimizer_state",
    "save_checkpoint",
    "verify_files",
]

ADAPTER_FORMAT = "fedmask.global-adapter/1"
OPTIMIZER_FORMAT = "fedmask.server-optimizer/1"
_VECTOR_TENSOR = "vector"
_METADATA_KEY = "fedmask"
_VECTOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"round-(\d{6,})-([0-9a-f]{16})\.(adapter|optimizer)\.safetensors")
_TEMP_PREFIX = ".fedmask-"
_TEMP_SUFFIX = ".tmp"
_READ_BLOCK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint cannot be written or read."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file is missing, truncated, altered, or not what its reference says."""


@dataclass(frozen=True)
class FileRef:
    """One immutable checkpoint file: its name inside the checkpoint directory, SHA-256, size."""

    name: str
    sha256: str
    size_bytes: int

    def __post_init__(self) -> None:
        # Names come back from the database: never let one escape the checkpoint directory.
        if not isinstance(self.name, str) or _FILE_NAME.fullmatch(self.name) is None:
            raise CheckpointError(f"not a checkpoint file name: {self.name!r}")
        if not isinstance(self.sha256, str) or _SHA256.fullmatch(self.sha256) is None:
            raise CheckpointError(f"not a lower-case hex SHA-256: {self.sha256!r}")
        if _FILE_NAME.fullmatch(self.name).group(2) != self.sha256[:16]:  # type: ignore[union-attr]
            raise CheckpointError(f"file name {self.name!r} does not carry its hash {self.sha256[:16]}")
        if isinstance(self.size_bytes, bool) or not isinstance(self.size_bytes, int) or self.size_bytes <= 8:
            raise CheckpointError(f"implausible checkpoint size {self.size_bytes!r}")


@dataclass(frozen=True)
class CheckpointRef:
    """The global adapter after round ``round_number`` (0: the initial adapter), and the server
    optimizer's state at that point if it has any."""

    round_number: int
    adapter: FileRef
    optimizer: FileRef | None = None

    def __post_init__(self) -> None:
        _check_round_number(self.round_number)
        for ref, kind in ((self.adapter, "adapter"), (self.optimizer, "optimizer")):
            if ref is None:
                continue
            match = _FILE_NAME.fullmatch(ref.name)
            assert match is not None  # FileRef checked it
            if int(match.group(1)) != self.round_number or match.group(3) != kind:
                raise CheckpointError(f"{ref.name!r} is not the {kind} file of round {self.round_number}")

    @property
    def version(self) -> str:
        """The adapter's version hash: the SHA-256 of the adapter file participants download."""
        return self.adapter.sha256


# --------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    directory: str | os.PathLike[str],
    round_number: int,
    vector: np.ndarray,
    layout: Any,
    optimizer_state: Mapping[str, Any] | None = None,
    *,
    before_writing: Callable[[list[str]], None] | None = None,
) -> CheckpointRef:
    """Write the global adapter after ``round_number`` (and the optimizer state) durably.

    ``vector`` is a non-empty 1-D float32 or float64 array of finite values; ``layout`` any JSON
    value (stored canonically, returned as parsed JSON). ``optimizer_state`` is a
    ``state_dict()`` of a server optimizer: ``np.ndarray`` entries become tensors, every other
    entry must be JSON. ``before_writing(names)`` is called with the files' final names before
    anything is written (the store records them, so that it deletes only files it knows it
    wrote). When this returns, both files are durable under their final names.
    """
    _check_round_number(round_number)
    vector = _checked_vector(vector)
    description = {"format": ADAPTER_FORMAT, "round": round_number, "layout": layout}
    adapter_bytes = _encode({_VECTOR_TENSOR: vector}, description)
    optimizer_bytes = _encode_optimizer_state(round_number, optimizer_state) if optimizer_state is not None else None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if before_writing is not None:
        names = [file_name(round_number, "adapter", adapter_bytes)]
        if optimizer_bytes is not None:
            names.append(file_name(round_number, "optimizer", optimizer_bytes))
        before_writing(names)
    optimizer_ref = None
    if optimizer_bytes is not None:
        optimizer_ref = _write_immutable(directory, round_number, "optimizer", optimizer_bytes)
    adapter_ref = _write_immutable(directory, round_number, "adapter", adapter_bytes)
    # One directory fsync makes both renames durable.
    fsync_directory(directory)
    return CheckpointRef(round_number, adapter_ref, optimizer_ref)


def file_name(round_number: int, kind: str, data: bytes) -> str:
    """The content-addressed name of a checkpoint file."""
    return f"round-{round_number:06d}-{hashlib.sha256(data).hexdigest()[:16]}.{kind}.safetensors"


def _write_immutable(directory: Path, round_number: int, kind: str, data: bytes) -> FileRef:
    digest = hashlib.sha256(data).hexdigest()
    name = file_name(round_number, kind, data)
    # Same name means same content, so replacing an existing file changes nothing.
    write_atomic(directory / name, data, temp_prefix=_TEMP_PREFIX, temp_suffix=_TEMP_SUFFIX, sync_directory=False)
    return FileRef(name, digest, len(data))


def is_checkpoint_file_name(name: str) -> bool:
    """True for the names this module writes, final or temporary (for garbage collection)."""
    return _FILE_NAME.fullmatch(name) is not None or is_temporary_file_name(name)


def is_temporary_file_name(name: str) -> bool:
    """A file this module was writing when it was interrupted: never referenced by anything."""
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


# --------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(directory: str | os.PathLike[str], ref: CheckpointRef) -> tuple[np.ndarray, Any]:
    """The verified ``(vector, layout)`` of a checkpoint."""
    data = _read_verified(Path(directory), ref.adapter)
    vector, layout, round_number = _parse_adapter(data, ref.adapter.name)
    if round_number != ref.round_number:
        raise CheckpointCorrupt(f"{ref.adapter.name} holds round {round_number}, not {ref.round_number}")
    return vector, layout


def adapter_from_bytes(data: bytes, sha256: str) -> tuple[int, np.ndarray, Any]:
    """For the receiving side of ``iter_chunks``: check the bytes against the announced version
    hash, then parse them into ``(round_number, vector, layout)``."""
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise CheckpointError(f"not a lower-case hex SHA-256: {sha256!r}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointCorrupt(f"adapter bytes hash to {actual}, announced version is {sha256}")
    vector, layout, round_number = _parse_adapter(bytes(data), "the received adapter")
    return round_number, vector, layout


def load_optimizer_state(directory: str | os.PathLike[str], ref: CheckpointRef) -> dict[str, Any] | None:
    """The verified server-optimizer ``state_dict`` saved with a checkpoint (None if none was)."""
    if ref.optimizer is None:
        return None
    data = _read_verified(Path(directory), ref.optimizer)
    description = _description(data, ref.optimizer.name)
    if description.get("format") != OPTIMIZER_FORMAT:
        raise CheckpointCorrupt(f"{ref.optimizer.name} is not a {OPTIMIZER_FORMAT} file")
    if description.get("round") != ref.round_number:
        raise CheckpointCorrupt(f"{ref.optimizer.name} holds round {description.get('round')}, not {ref.round_number}")
    state = description.get("state")
    try:
        tensors = safetensors.numpy.load(data)
    except SafetensorError as exc:
        raise CheckpointCorrupt(f"{ref.optimizer.name}: unreadable optimizer state ({exc})") from None
    if not isinstance(state, dict) or set(state) & set(tensors):
        raise CheckpointCorrupt(f"{ref.optimizer.name}: malformed optimizer state")
    state.update(tensors)
    return state


def verify_files(directory: str | os.PathLike[str], ref: CheckpointRef) -> None:
    """Check that the checkpoint's files are present with the recorded size and SHA-256."""
    for file_ref in (ref.adapter, ref.optimizer):
        if file_ref is not None:
            _read_verified(Path(directory), file_ref, keep=False)


def iter_chunks(directory: str | os.PathLike[str], ref: CheckpointRef, chunk_bytes: int) -> Iterator[bytes]:
    """The adapter file in chunks of ``chunk_bytes`` (the last may be shorter), for streaming to
    participants together with ``ref.version``. The whole file is verified before this returns,
    so a corrupt checkpoint is refused instead of half sent; the receiver checks the hash again
    (``adapter_from_bytes``)."""
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
    _read_verified(Path(directory), ref.adapter, keep=False)
    return _chunks(Path(directory) / ref.adapter.name, ref.adapter.size_bytes, chunk_bytes)


def _chunks(path: Path, size_bytes: int, chunk_bytes: int) -> Iterator[bytes]:
    with _open_checkpoint_file(path) as handle:
        sent = 0
        while chunk := handle.read(chunk_bytes):
            sent += len(chunk)
            yield chunk
    if sent != size_bytes:
        raise CheckpointCorrupt(f"{path.name} changed while it was being sent")


def _read_verified(directory: Path, ref: FileRef, *, keep: bool = True) -> bytes:
    """The file's bytes (or b"" if not ``keep``) after checking its size and SHA-256."""
    path = directory / ref.name
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    with _open_checkpoint_file(path) as handle:
        while block := handle.read(_READ_BLOCK):
            size += len(block)
            if size > ref.size_bytes:
                break
            digest.update(block)
            if keep:
                parts.append(block)
    if size != ref.size_bytes:
        shape = "truncated" if size < ref.size_bytes else "longer than recorded"
        raise CheckpointCorrupt(f"{ref.name} is {shape}: {size} bytes on disk, {ref.size_bytes} recorded")
    if digest.hexdigest() != ref.sha256:
        raise CheckpointCorrupt(f"{ref.name} does not match its SHA-256 ({digest.hexdigest()} != {ref.sha256})")
    return b"".join(parts)


@contextlib.contextmanager
def _open_checkpoint_file(path: Path) -> Iterator[Any]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise CheckpointCorrupt(f"checkpoint file {path.name} is missing from {path.parent}") from None
    with handle:
        yield handle


def _parse_adapter(data: bytes, what: str) -> tuple[np.ndarray, Any, int]:
    description = _description(data, what)
    if description.get("format") != ADAPTER_FORMAT:
        raise CheckpointCorrupt(f"{what} is not a {ADAPTER_FORMAT} file")
    round_number = description.get("round")
    if isinstance(round_number, bool) or not isinstance(round_number, int) or "layout" not in description:
        raise CheckpointCorrupt(f"{what}: malformed fedmask metadata")
    layout = description["layout"]
    try:
        tensors = safetensors.numpy.load(data)
    except SafetensorError as exc:
        raise CheckpointCorrupt(f"{what}: unreadable adapter ({exc})") from None
    if set(tensors) != {_VECTOR_TENSOR}:
        raise CheckpointCorrupt(f"{what} holds tensors {sorted(tensors)}, expected only {_VECTOR_TENSOR!r}")
    try:
        vector = _checked_vector(tensors[_VECTOR_TENSOR])
    except CheckpointError as exc:
        raise CheckpointCorrupt(f"{what}: {exc}") from None
    return vector, layout, round_number


def _description(data: bytes, what: str) -> dict[str, Any]:
    # safetensors.numpy.load returns only the tensors; the metadata sits in the JSON header
    # after an 8-byte little-endian length.
    if len(data) < 8:
        raise CheckpointCorrupt(f"{what} is too short to be a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > len(data) - 8:
        raise CheckpointCorrupt(f"{what}: header length {header_length} exceeds the file")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except ValueError:
        raise CheckpointCorrupt(f"{what}: the safetensors header is not JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    try:
        description = json.loads(metadata[_METADATA_KEY])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise CheckpointCorrupt(f"{what} has no fedmask metadata") from None
    if not isinstance(description, dict):
        raise CheckpointCorrupt(f"{what} has no fedmask metadata")
    return description


# --------------------------------------------------------------------------------------------
# Validation and encoding


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, no NaN or infinity: equal values give equal strings."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"not plain JSON: {exc}") from None


def _check_round_number(round_number: object) -> None:
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
        raise CheckpointError(f"round numbers are integers >= 0, got {round_number!r}")


def _checked_vector(vector: object) -> np.ndarray:
    if not isinstance(vector, np.ndarray):
        raise CheckpointError(f"the adapter must be a numpy array, got {type(vector).__name__}")
    if vector.ndim != 1 or vector.size == 0:
        raise CheckpointError(f"the adapter must be a non-empty 1-D vector, got shape {vector.shape}")
    if vector.dtype not in _VECTOR_DTYPES:
        raise CheckpointError(f"the adapter must be float32 or float64, got {vector.dtype}")
    if not np.isfinite(vector).all():
        raise CheckpointError("the adapter has NaN or infinite values")
    return np.ascontiguousarray(vector)


def _encode_optimizer_state(round_number: int, state: Mapping[str, Any]) -> bytes:
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise CheckpointError("an optimizer state is a mapping with string keys")
    arrays = {}
    scalars = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise CheckpointError(f"optimizer state {key!r} must be a finite float array")
            arrays[key] = np.ascontiguousarray(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"optimizer state {key!r} is not finite")
        else:
            scalars[key] = value
    return _encode(arrays, {"format": OPTIMIZER_FORMAT, "round": round_number, "state": scalars})


def _encode(tensors: dict[str, np.ndarray], description: dict[str, Any]) -> bytes:
    # One metadata entry holding canonical JSON: safetensors writes several entries in a random
    # order, and equal checkpoints must give equal bytes (hence equal names and version hashes).
    return safetensors.numpy.save(tensors, metadata={_METADATA_KEY: canonical_json(description)})

"""The global adapter as it travels to participants: one safetensors file, named by its SHA-256.

A flat float32 vector (``fedmask.adapter.vector`` layout) and, in the safetensors metadata,
the layout and the round whose result it is. No torch here: the coordinator's federation loop
and the participant's download path both use plain numpy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as _load_safetensors
from safetensors.numpy import save as _save_safetensors

_TENSOR = "adapter"
FORMAT = "fedmask-global-adapter/1"


class AdapterPayloadError(ValueError):
    """A downloaded adapter is corrupt, truncated, or not what the task announced."""


@dataclass(frozen=True)
class AdapterPayload:
    vector: np.ndarray  # float32, 1-D
    layout: list[dict[str, object]]  # fedmask.adapter.vector.VectorSpec.to_json()
    round: int  # 0: the initial adapter
    data: bytes  # the serialised file
    sha256: str  # hex digest of ``data``


def pack(vector: np.ndarray, layout: list[dict[str, object]], round_number: int) -> AdapterPayload:
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if vector.ndim != 1 or not np.isfinite(vector).all():
        raise AdapterPayloadError("the global adapter must be a finite 1-D vector")
    metadata = {"format": FORMAT, "layout": json.dumps(layout, sort_keys=True), "round": str(round_number)}
    data = _save_safetensors({_TENSOR: vector}, metadata=metadata)
    return AdapterPayload(vector, layout, round_number, data, hashlib.sha256(data).hexdigest())


def size_bound(layout: list[dict[str, object]], dimension: int, round_number: int) -> int:
    """The most bytes ``pack`` makes of a ``dimension``-value vector with this layout and round:
    what a participant lets a coordinator announce before it downloads anything. The header is
    the one-value file's, plus the digits the shape and offsets gain, plus 8-byte alignment."""
    if dimension < 1:
        raise AdapterPayloadError(f"an adapter has at least one value, not {dimension}")
    one_value = len(pack(np.zeros(1, dtype=np.float32), layout, round_number).data)
    longer_numbers = len(str(dimension)) - 1 + len(str(4 * dimension)) - 1
    return one_value + 4 * (dimension - 1) + longer_numbers + 7


def unpack(data: bytes, expected_sha256: str) -> AdapterPayload:
    """Parse a downloaded adapter after checking its digest against the announced one."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise AdapterPayloadError(
            f"adapter digest {digest[:16]}... does not match the announced {expected_sha256[:16]}..."
        )
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.get("__metadata__", {})
        tensors = _load_safetensors(data)
    except Exception as exc:  # safetensors raises several types on malformed input
        raise AdapterPayloadError(f"malformed adapter file: {exc}") from None
    if metadata.get("format") != FORMAT or set(tensors) != {_TENSOR}:
        raise AdapterPayloadError(f"not a {FORMAT} file")
    vector = tensors[_TENSOR]
    if vector.dtype != np.float32 or vector.ndim != 1 or not np.isfinite(vector).all():
        raise AdapterPayloadError("the adapter must be a finite float32 vector")
    try:
        layout = json.loads(metadata["layout"])
        round_number = int(metadata["round"])
    except (KeyError, ValueError) as exc:
        raise AdapterPayloadError(f"adapter metadata is incomplete: {exc}") from None
    return AdapterPayload(vector, layout, round_number, data, digest)

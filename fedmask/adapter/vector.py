"""Adapter tensors <-> one flat float vector, for secure aggregation to carry.

The layout is a :class:`VectorSpec`: the tensors' names in a stable order (the model's parameter
registration order, which is the same for every participant that builds the same model and
adapter config), their shapes and dtypes. Its :meth:`VectorSpec.fingerprint` lets the
coordinator check that every participant sends vectors of the same layout.

The vector's dtype is float32, or float64 when any tensor is float64; every float16, bfloat16
and float32 value is exactly representable in float32, so ``unflatten(flatten(x)) == x`` bit for
bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

_FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


class VectorLayoutError(ValueError):
    """A vector or a set of tensors does not match the expected layout."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # one of float16, bfloat16, float32, float64

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class VectorSpec:
    tensors: tuple[TensorSpec, ...]

    @property
    def size(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def vector_dtype(self) -> np.dtype:
        wide = any(t.dtype == "float64" for t in self.tensors)
        return np.dtype(np.float64 if wide else np.float32)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.tensors]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, object]]) -> VectorSpec:
        tensors = []
        for item in data:
            dtype = str(item["dtype"])
            if dtype not in _FLOAT_DTYPES:
                raise VectorLayoutError(f"unsupported dtype {dtype!r} for {item['name']!r}")
            raw_shape = item["shape"]
            if not isinstance(raw_shape, (list, tuple)):
                raise VectorLayoutError(f"the shape of {item['name']!r} must be a list, got {raw_shape!r}")
            shape = tuple(int(d) for d in raw_shape)
            tensors.append(TensorSpec(name=str(item["name"]), shape=shape, dtype=dtype))
        return cls(tuple(tensors))

    def fingerprint(self) -> str:
        """SHA-256 of the layout: equal fingerprints mean vectors can be added coordinate-wise."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in _FLOAT_DTYPES.items():
        if value == dtype:
            return name
    raise VectorLayoutError(f"only floating-point tensors can be flattened, got {dtype}")


def spec_of(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> VectorSpec:
    """The layout of ``named_tensors``, in the order given."""
    tensors = []
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            raise VectorLayoutError(f"duplicate tensor name {name!r}")
        seen.add(name)
        tensors.append(TensorSpec(name, tuple(tensor.shape), _dtype_name(tensor.dtype)))
    if not tensors:
        raise VectorLayoutError("no tensors to flatten")
    return VectorSpec(tuple(tensors))


def flatten(named_tensors: Mapping[str, torch.Tensor], spec: VectorSpec) -> np.ndarray:
    """Concatenate the tensors named in ``spec`` (in its order) into one vector."""
    missing = [t.name for t in spec.tensors if t.name not in named_tensors]
    if missing:
        raise VectorLayoutError(f"tensors missing from the adapter: {missing[:5]}")
    out = np.empty(spec.size, dtype=spec.vector_dtype)
    torch_dtype = torch.float64 if out.dtype == np.float64 else torch.float32
    offset = 0
    for t in spec.tensors:
        tensor = named_tensors[t.name]
        if tuple(tensor.shape) != t.shape or _dtype_name(tensor.dtype) != t.dtype:
            raise VectorLayoutError(
                f"{t.name}: expected shape {t.shape} {t.dtype}, got {tuple(tensor.shape)} {_dtype_name(tensor.dtype)}"
            )
        values = tensor.detach().to(device="cpu", dtype=torch_dtype).reshape(-1).numpy()
        out[offset : offset + t.numel] = values
        offset += t.numel
    return out


def unflatten(vector: np.ndarray, spec: VectorSpec) -> dict[str, torch.Tensor]:
    """Split ``vector`` back into tensors of the recorded names, shapes and dtypes."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.shape[0] != spec.size:
        raise VectorLayoutError(f"vector has shape {vector.shape}, expected ({spec.size},) for this adapter")
    if vector.dtype != spec.vector_dtype:
        raise VectorLayoutError(f"vector dtype is {vector.dtype}, expected {spec.vector_dtype}")
    if not np.all(np.isfinite(vector)):
        raise VectorLayoutError("vector contains NaN or infinite values")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for t in spec.tensors:
        chunk = torch.from_numpy(vector[offset : offset + t.numel].copy())
        out[t.name] = chunk.reshape(t.shape).to(_FLOAT_DTYPES[t.dtype])
        offset += t.numel
    return out


def trainable_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that make up the adapter: those that require gradients, in model order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def model_vector(model: torch.nn.Module, spec: VectorSpec) -> np.ndarray:
    """The model's current adapter values as a flat vector of layout ``spec``."""
    return flatten(dict(trainable_named_parameters(model)), spec)


def load_model_vector(model: torch.nn.Module, vector: np.ndarray, spec: VectorSpec) -> None:
    """Write ``vector`` (layout ``spec``) into the model's adapter parameters, in place."""
    params = dict(trainable_named_parameters(model))
    if set(params) != set(spec.names):
        extra = sorted(set(params) - set(spec.names))[:5]
        missing = sorted(set(spec.names) - set(params))[:5]
        raise VectorLayoutError(f"model adapter does not match the vector layout (missing {missing}, extra {extra})")
    tensors = unflatten(vector, spec)
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)

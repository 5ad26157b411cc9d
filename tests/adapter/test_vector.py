"""Adapter tensors <-> flat vector: bit-exact round trips, stable layout, checked inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmask.adapter.vector import (
    VectorLayoutError,
    VectorSpec,
    flatten,
    load_model_vector,
    model_vector,
    spec_of,
    trainable_named_parameters,
    unflatten,
)


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _awkward_tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # Values that lose bits if converted carelessly: subnormals, -0.0, extremes of the dtype.
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, info.tiny, -info.max, info.max, info.eps], dtype=dtype)
    subnormal = torch.tensor([info.tiny / 4], dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    return {
        "layer.0.lora_A.weight": torch.randn(8, 12, generator=generator).to(dtype),
        "layer.0.lora_B.weight": torch.zeros(12, 8, dtype=dtype),
        "special": torch.cat([special, subnormal]),
        "scalar": torch.tensor(3.25, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    tensors = _awkward_tensors(dtype)
    spec = spec_of(tensors.items())
    vector = flatten(tensors, spec)
    assert vector.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    assert vector.shape == (8 * 12 + 12 * 8 + 7 + 1,)
    back = unflatten(vector, spec)
    assert list(back) == list(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert _bits(back[name]) == _bits(tensor), name


def test_layout_is_the_given_order_and_survives_json() -> None:
    tensors = {"b": torch.ones(2, 3), "a": torch.zeros(4, dtype=torch.float16)}
    spec = spec_of(tensors.items())
    assert spec.names == ("b", "a") and spec.size == 10
    assert spec.to_json() == [
        {"name": "b", "shape": [2, 3], "dtype": "float32"},
        {"name": "a", "shape": [4], "dtype": "float16"},
    ]
    again = VectorSpec.from_json(spec.to_json())
    assert again == spec and again.fingerprint() == spec.fingerprint()
    reordered = spec_of(reversed(list(tensors.items())))
    assert reordered.fingerprint() != spec.fingerprint()
    vector = flatten(tensors, spec)
    np.testing.assert_array_equal(vector, np.array([1] * 6 + [0] * 4, dtype=np.float32))


def test_bad_inputs_are_refused() -> None:
    tensors = {"w": torch.ones(2, 2)}
    spec = spec_of(tensors.items())
    with pytest.raises(VectorLayoutError, match=r"shape \(3,\), expected \(4,\)"):
        unflatten(np.zeros(3, dtype=np.float32), spec)
    with pytest.raises(VectorLayoutError, match="dtype is float64, expected float32"):
        unflatten(np.zeros(4), spec)
    with pytest.raises(VectorLayoutError, match="NaN or infinite"):
        unflatten(np.array([0, np.nan, 0, 0], dtype=np.float32), spec)
    with pytest.raises(VectorLayoutError, match="missing from the adapter"):
        flatten({"v": torch.ones(4)}, spec)
    with pytest.raises(VectorLayoutError, match=r"w: expected shape \(2, 2\)"):
        flatten({"w": torch.ones(4)}, spec)
    with pytest.raises(VectorLayoutError, match="only floating-point"):
        spec_of([("i", torch.ones(2, dtype=torch.int64))])
    with pytest.raises(VectorLayoutError, match="duplicate"):
        spec_of([("w", torch.ones(1)), ("w", torch.ones(1))])
    with pytest.raises(VectorLayoutError, match="unsupported dtype"):
        VectorSpec.from_json([{"name": "w", "shape": [1], "dtype": "int8"}])


def test_model_vector_covers_exactly_the_trainable_parameters() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    spec = spec_of(trainable_named_parameters(model))
    assert spec.names == ("0.bias", "1.weight", "1.bias", "2.weight", "2.bias")
    vector = model_vector(model, spec)
    frozen = model[0].weight.detach().clone()
    load_model_vector(model, vector + np.float32(1), spec)
    assert torch.equal(model[0].weight, frozen)
    np.testing.assert_array_equal(model_vector(model, spec), vector + np.float32(1))
    other = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(VectorLayoutError, match="does not match the vector layout"):
        load_model_vector(other, vector, spec)

"""Tolerances for comparing float32 model computations that may round differently: the same
gradients from another summation order, kernel or batch layout. Derived from float32's unit
roundoff and the model's shape, not measured on one machine."""

from __future__ import annotations

import math
from typing import Any

import torch

FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def rounding_tolerance(model_config: Any) -> float:
    """A bound on the normwise relative error float32 rounding puts on one record's gradient.

    A float32 reduction of n terms has relative error about sqrt(n) * u with high probability
    (probabilistic rounding-error analysis, Higham & Mary 2019), u = 2^-24. The forward and
    backward pass chain L + 2 stages (embeddings, L layers, head and loss), each a handful of
    such reductions over at most n terms (hidden, intermediate or vocabulary width); 8 covers
    the handful. MiniLM: 8 * 8 * sqrt(1536) * u = 1.5e-4; the tiny Qwen2: 4.3e-5. Measured
    errors are about 1e-6, and a real bug is O(1): a swapped record moves the gradient by more
    than its own norm, a scale off by 1% by 1e-2 (``test_the_comparison_catches_real_bugs`` in
    tests/participant/test_per_sample_gradients.py).
    """
    widths = [getattr(model_config, key, 0) or 0 for key in ("hidden_size", "intermediate_size", "vocab_size")]
    stages = model_config.num_hidden_layers + 2
    return float(8 * stages * math.sqrt(max(widths)) * FLOAT32_UNIT_ROUNDOFF)


def normwise_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per record: ||got - expected|| / ||expected|| over every trainable parameter at once."""
    assert list(got) == list(expected)
    flat_got = torch.cat([g.double().flatten(1) for g in got.values()], dim=1)
    flat_expected = torch.cat([g.double().flatten(1) for g in expected.values()], dim=1)
    return (flat_got - flat_expected).norm(dim=1) / flat_expected.norm(dim=1)

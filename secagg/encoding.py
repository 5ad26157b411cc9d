"""Floats <-> integers mod 2^b for secure aggregation.

encode: clip to L2 norm C, scale by gamma, randomised rounding (unbiased: E[round(x)] = x, with
randomness from the injected CSPRNG), reduce mod 2^b. decode: lift the sum to the centred range
[-2^(b-1), 2^(b-1)) and divide by gamma. ``EncodingParams.validate`` guarantees the centred lift
is exact for the number of participants summed.

``decode_checked_sum`` also refuses a sum that no set of correctly encoded updates can produce:
a coordinate beyond s * ceil(C * gamma), or an L2 norm beyond s * (C * gamma + sqrt(d)) (each of
the s updates has norm <= C * gamma before rounding, and rounding moves each coordinate by less
than 1). Secure aggregation hides who sent what, so a participant that uploads garbage (2^31 in
every coordinate, say) cannot be named; but its garbage is not applied to the model.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .errors import SecAggError
from .params import EncodingParams
from .prg import dtype_for_bits
from .rand import RandomSource, uniform_unit_floats


def l2_norm(vector: np.ndarray) -> float:
    """The Euclidean norm, in one pass on this thread. ``np.linalg.norm`` calls the BLAS, whose
    thread pool then spins on the other cores for a while after each call (100 ms of CPU for 20
    norms of 65,536 values, 5 ms apart, on 2 cores): CPU that the other parties on a machine
    and this participant's own transport need."""
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    return math.sqrt(float(np.einsum("i,i->", flat, flat)))


def clip_l2(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` down to L2 norm <= clip_norm; returns (clipped, original norm)."""
    norm = l2_norm(vector)
    if not np.isfinite(norm):
        raise ValueError("the update contains NaN or infinite values")
    if norm > clip_norm:
        return vector * (clip_norm / norm), norm
    return vector, norm


# Values rounded per pass: the pass's temporaries stay in a core's cache. The stream is read in
# order, so the result is the same as in one pass.
_ROUNDING_CHUNK = 1 << 16


def randomized_round(values: np.ndarray, rng: RandomSource) -> np.ndarray:
    """Round each value down or up with probabilities that make the result unbiased."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    rounded: npt.NDArray[np.int64] = np.empty(flat.size, dtype=np.int64)
    for start in range(0, flat.size, _ROUNDING_CHUNK):
        part = flat[start : start + _ROUNDING_CHUNK]
        floor = np.floor(part)
        round_up = uniform_unit_floats(rng, part.size) < (part - floor)
        np.add(floor.astype(np.int64), round_up, out=rounded[start : start + part.size])
    return rounded.reshape(np.shape(values))


def to_modular(integers: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Signed int64 -> unsigned representatives mod 2^b (two's complement, then masked)."""
    dtype = dtype_for_bits(modulus_bits)
    out = integers.astype(np.int64).view(np.uint64)
    if modulus_bits < 64:
        out = out & np.uint64((1 << modulus_bits) - 1)
    return out.astype(dtype)


def centered_lift(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Representatives mod 2^b -> signed int64 in [-2^(b-1), 2^(b-1))."""
    v = values.astype(np.uint64)
    if modulus_bits < 64:
        v = v & np.uint64((1 << modulus_bits) - 1)
        half = np.uint64(1 << (modulus_bits - 1))
        signed = v.astype(np.int64)
        return np.where(v >= half, signed - np.int64(1 << modulus_bits), signed)
    return v.view(np.int64)


def encode(vector: np.ndarray, params: EncodingParams, rng: RandomSource) -> np.ndarray:
    """One participant's float update -> its vector mod 2^b (uint32 for b <= 32, else uint64)."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1:
        raise ValueError(f"updates are 1-D vectors, got shape {vector.shape}")
    clipped, _ = clip_l2(vector, params.clip_norm)
    bound = params.clip_norm * params.scale
    # Float error in clipping could push a coordinate a hair past C * gamma; the headroom proof
    # in EncodingParams.validate needs |value| <= C * gamma exactly.
    scaled = np.clip(clipped * params.scale, -bound, bound)
    return to_modular(randomized_round(scaled, rng), params.modulus_bits)


def decode_sum(total: np.ndarray, params: EncodingParams) -> np.ndarray:
    """The unmasked sum mod 2^b -> the float sum of the clipped updates (up to rounding)."""
    return centered_lift(total, params.modulus_bits).astype(np.float64) / params.scale


class ImplausibleSum(SecAggError):
    """The unmasked sum lies outside what the survivors' correctly encoded updates can add up to:
    some participant did not follow the encoding. The sum must not be used."""


def sum_bounds(params: EncodingParams, survivors: int, dimension: int) -> tuple[int, float]:
    """(coordinate bound, L2 bound) of the lifted sum of ``survivors`` correct encodings."""
    per_coordinate = math.ceil(params.clip_norm * params.scale)
    return survivors * per_coordinate, survivors * (params.clip_norm * params.scale + math.sqrt(dimension))


def decode_checked_sum(total: np.ndarray, params: EncodingParams, survivors: int) -> np.ndarray:
    """``decode_sum``, refusing a sum outside the bounds of ``survivors`` correct encodings."""
    lifted = centered_lift(total, params.modulus_bits)
    coordinate_bound, norm_bound = sum_bounds(params, survivors, lifted.size)
    outside = int(np.count_nonzero(np.abs(lifted) > coordinate_bound))
    if outside:
        raise ImplausibleSum(
            f"{outside} coordinate(s) of the sum exceed what {survivors} clipped updates can add up to "
            f"(+/-{coordinate_bound}): a participant did not follow the encoding"
        )
    norm = l2_norm(lifted.astype(np.float64))
    if norm > norm_bound:
        raise ImplausibleSum(
            f"the sum has L2 norm {norm / params.scale:.4g}, more than {survivors} updates clipped to "
            f"{params.clip_norm:g} can have ({norm_bound / params.scale:.4g}): a participant did not follow "
            "the encoding"
        )
    return lifted.astype(np.float64) / params.scale

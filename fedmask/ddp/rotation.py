"""Randomised Hadamard rotation with a public per-round seed.

x -> H D x / sqrt(n): D is a diagonal of random signs drawn from the seed, H the n x n
Walsh-Hadamard matrix, n the dimension padded with zeros to a power of two. The rotation is
orthonormal (norms and inner products are kept), its own inverse up to the signs, and costs
O(n log n). Why rotate: after it every coordinate of a vector of norm c is a signed sum with
random signs, so it exceeds c * sqrt(2 ln(2/p) / n) with probability at most p (Hoeffding).
The modulus then only has to hold the spread-out coordinates, not a worst-case spike.

The seed is public: it protects nothing, and every participant and the coordinator must use the
same one. ``rotation_seed`` derives it from the round id, so no extra message is needed.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from fedmask.secagg import prg

_DOMAIN = b"fedmask/ddp/rotation/v1"


def padded_dimension(dimension: int) -> int:
    """The smallest power of two >= dimension."""
    if dimension < 1:
        raise ValueError(f"dimension must be positive, got {dimension}")
    return 1 << (dimension - 1).bit_length()


def rotation_seed(round_id: bytes) -> bytes:
    """The public rotation seed of a round: SHA-256 over a domain tag and the round id."""
    if not isinstance(round_id, bytes) or not round_id:
        raise ValueError("round_id must be non-empty bytes")
    return hashlib.sha256(_DOMAIN + len(round_id).to_bytes(4, "big") + round_id).digest()


def _sign_flips(seed: bytes, count: int) -> np.ndarray:
    """``count`` keystream bits (AES-CTR under the seed), least significant first: True where
    D has -1."""
    words = prg.expand(seed, (count + 31) // 32, 32)
    flips: np.ndarray = np.unpackbits(words.view(np.uint8), count=count, bitorder="little").view(bool)
    return flips


def random_signs(seed: bytes, count: int) -> np.ndarray:
    """``count`` values in {-1.0, +1.0}, one keystream bit each (AES-CTR under the seed)."""
    return 1.0 - 2.0 * _sign_flips(seed, count).astype(np.float64)


# The butterflies of the first log2(_BLOCK) levels stay inside blocks of this many values
# (512 KiB), which are transformed one at a time while they sit in cache.
_BLOCK = 1 << 16


def _butterflies(out: np.ndarray, first_half: int, stop: int) -> None:
    """In place: the levels of the transform whose butterflies span 2 * half, half < stop."""
    half = first_half
    while half < stop:
        blocks = out.reshape(-1, 2, half)
        first = blocks[:, 0, :].copy()
        second = blocks[:, 1, :]
        blocks[:, 0, :] += second
        np.subtract(first, second, out=second)
        half *= 2


# The first levels pair values 1, 2, 4, ... apart: short strided runs, slow in numpy. They run
# instead on the transpose of the block seen as rows of _GROUP values, where the same pairs are
# whole rows apart (the same additions in the same order: the result is the same bit for bit).
_GROUP = 64


def _transform_block(block: np.ndarray) -> None:
    """In place: the levels of the transform whose butterflies stay inside ``block``."""
    group = min(_GROUP, block.size)
    rows = block.reshape(-1, group)
    columns = rows.T.copy()  # (group, block / group): value j of each group in row j
    _butterflies(columns.reshape(-1), columns.shape[1], columns.size)
    rows[...] = columns.T
    _butterflies(block, group, block.size)


def _transform(out: np.ndarray, flips: np.ndarray | None = None) -> None:
    """In place: H D out, where D negates the values ``flips`` marks (none if None), each block's
    signs flipped while the block is in cache."""
    n = out.size
    block = min(n, _BLOCK)
    for start in range(0, n, block):
        part = out[start : start + block]
        if flips is not None:  # flip the sign bits: the same as multiplying by -1
            sign_bits = flips[start : start + block].astype(np.uint64)
            sign_bits <<= np.uint64(63)
            np.bitwise_xor(part.view(np.uint64), sign_bits, out=part.view(np.uint64))
        _transform_block(part)
    # The levels that span blocks pair value c of block r with value c of block r + h.
    _butterflies(out, block, n)


def hadamard_transform(vector: np.ndarray) -> np.ndarray:
    """The unnormalised Walsh-Hadamard transform H x (a new array); len(x) a power of two."""
    out = np.array(vector, dtype=np.float64, copy=True)
    if out.size & (out.size - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {out.size}")
    _transform(out)
    return out


def rotate(vector: np.ndarray, seed: bytes) -> np.ndarray:
    """H D x / sqrt(n) of x padded with zeros to n = padded_dimension(len(x))."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1:
        raise ValueError(f"rotate takes a 1-D vector, got shape {vector.shape}")
    n = padded_dimension(vector.size)
    out = np.zeros(n, dtype=np.float64)
    out[: vector.size] = vector
    _transform(out, _sign_flips(seed, n))
    out *= 1.0 / math.sqrt(n)
    return out


def unrotate(rotated: np.ndarray, seed: bytes, dimension: int) -> np.ndarray:
    """The inverse of ``rotate``: D H y / sqrt(n), cut back to the first ``dimension`` values."""
    rotated = np.asarray(rotated, dtype=np.float64)
    n = rotated.size
    if n != padded_dimension(dimension):
        raise ValueError(f"a rotated vector of dimension {dimension} has {padded_dimension(dimension)} values, got {n}")
    out = hadamard_transform(rotated)
    out *= random_signs(seed, n)
    out *= 1.0 / math.sqrt(n)
    return out[:dimension]

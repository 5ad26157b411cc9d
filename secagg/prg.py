"""Mask expansion: 32-byte seeds -> vectors of integers mod 2^b.

The PRG is AES-256 in counter mode (AES-NI through ``cryptography``/OpenSSL). Every seed is
already the output of HKDF bound to the session id (see ``keys``), so each AES key is used for
exactly one mask and the counter can start at zero.

Masks are added into an accumulator chunk by chunk: for each chunk of the vector, every seed's
keystream for that chunk is produced into a small buffer that stays in cache and added at once.
Streaming whole multi-megabyte masks through memory instead halves the throughput.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
_NONCE = b"\x00" * 16
# Elements per chunk: 16 K values (64 KiB at 32 bits) keeps buffer and accumulator in L2.
_CHUNK_VALUES = 16384


def dtype_for_bits(modulus_bits: int) -> np.dtype:
    """The unsigned integer type that carries values mod 2^modulus_bits."""
    if not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be in [1, 64], got {modulus_bits}")
    return np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")


def reduce_modulus(vector: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Reduce in place mod 2^modulus_bits (arithmetic is mod 2^32 or 2^64, which 2^b divides)."""
    width = vector.dtype.itemsize * 8
    if modulus_bits < width:
        np.bitwise_and(vector, vector.dtype.type((1 << modulus_bits) - 1), out=vector)
    return vector


def _keystream(seed: bytes) -> CipherContext:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()


def expand(seed: bytes, dimension: int, modulus_bits: int) -> np.ndarray:
    """The mask of one seed as a fresh array (reference path; ``add_masks`` is the fast one)."""
    dtype = dtype_for_bits(modulus_bits)
    raw = _keystream(seed).update(bytes(dimension * dtype.itemsize))
    return reduce_modulus(np.frombuffer(raw, dtype=dtype).copy(), modulus_bits)


def add_masks(
    accumulator: np.ndarray,
    add_seeds: Iterable[bytes] = (),
    subtract_seeds: Iterable[bytes] = (),
) -> np.ndarray:
    """accumulator += sum PRG(add_seeds) - sum PRG(subtract_seeds), mod 2^(8*itemsize), in place.

    The caller reduces mod 2^b once at the end (``reduce_modulus``).
    """
    if accumulator.ndim != 1 or accumulator.dtype not in (np.dtype("<u4"), np.dtype("<u8")):
        raise ValueError("accumulator must be a 1-D little-endian uint32 or uint64 array")
    streams: list[tuple[CipherContext, bool]] = [(_keystream(s), True) for s in add_seeds]
    streams += [(_keystream(s), False) for s in subtract_seeds]
    if not streams:
        return accumulator
    itemsize = accumulator.dtype.itemsize
    chunk_bytes = _CHUNK_VALUES * itemsize
    zeros = bytes(chunk_bytes)
    # update_into wants room for one extra block beyond the input
    scratch = bytearray(chunk_bytes + 16)
    scratch_values = np.frombuffer(scratch, dtype=accumulator.dtype, count=_CHUNK_VALUES)
    dimension = accumulator.shape[0]
    for start in range(0, dimension, _CHUNK_VALUES):
        stop = min(start + _CHUNK_VALUES, dimension)
        count = stop - start
        target = accumulator[start:stop]
        source = scratch_values[:count]
        plain = zeros if count == _CHUNK_VALUES else memoryview(zeros)[: count * itemsize]
        for stream, positive in streams:
            stream.update_into(plain, scratch)
            if positive:
                np.add(target, source, out=target)
            else:
                np.subtract(target, source, out=target)
    return accumulator


def add_masks_signed(accumulator: np.ndarray, signed_seeds: Sequence[tuple[bytes, int]]) -> np.ndarray:
    """``add_masks`` for (seed, +1 | -1) pairs."""
    return add_masks(
        accumulator,
        (seed for seed, sign in signed_seeds if sign > 0),
        (seed for seed, sign in signed_seeds if sign < 0),
    )

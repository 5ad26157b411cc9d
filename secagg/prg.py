"""Mask expansion: 32-byte seeds -> vectors of integers mod 2^b.

The PRG is AES-256 in counter mode (AES-NI through ``cryptography``/OpenSSL). Every seed is
already the output of HKDF bound to the session id (see ``keys``), so each AES key is used for
exactly one mask and the counter can start at zero.

Masks are added into an accumulator chunk by chunk: for each chunk of the vector, every seed's
keystream for that chunk is produced into a small buffer that stays in cache and added at once.
Streaming whole multi-megabyte masks through memory instead halves the throughput.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
# Values per chunk: 128 K (512 KiB at 32 bits). AES-CTR runs fastest on this machine type from
# about 512 KiB per call (6.4 GB/s against 5.4 at 64 KiB), more than the cache it costs.
_CHUNK_VALUES = 131072


class PartRunner(Protocol):
    """Runs independent jobs, at once if it can, and returns when all have finished (raising
    what a job raised). Injected by the caller: secagg starts no threads of its own.
    ``parts``: how many jobs a vector is cut into."""

    parts: int

    def __call__(self, jobs: Sequence[Callable[[], None]]) -> None: ...


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


def _keystream(seed: bytes, start_block: int = 0) -> CipherContext:
    """AES-256-CTR from counter block ``start_block``: the keystream of ``seed`` from byte
    16 * start_block on (CTR counts the whole 128-bit block big-endian, from zero here)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(start_block.to_bytes(16, "big"))).encryptor()


def expand(seed: bytes, dimension: int, modulus_bits: int) -> np.ndarray:
    """The mask of one seed as a fresh array (reference path; ``add_masks`` is the fast one)."""
    dtype = dtype_for_bits(modulus_bits)
    raw = _keystream(seed).update(bytes(dimension * dtype.itemsize))
    return reduce_modulus(np.frombuffer(raw, dtype=dtype).copy(), modulus_bits)


def add_masks(
    accumulator: np.ndarray,
    add_seeds: Iterable[bytes] = (),
    subtract_seeds: Iterable[bytes] = (),
    *,
    runner: PartRunner | None = None,
) -> np.ndarray:
    """accumulator += sum PRG(add_seeds) - sum PRG(subtract_seeds), mod 2^(8*itemsize), in place.

    With a ``runner`` the work is cut into ``runner.parts`` jobs; AES (OpenSSL) and numpy
    release the GIL, so a thread per job runs on its own core. A vector of at least one chunk
    per part is cut into contiguous parts, each masked with keystreams started at the part's
    offset; a shorter one (SecAgg+ at n = 1000: 11,000 masks of 10^5 values) has its masks
    split between the jobs, each summing its share into its own accumulator, and the partial
    sums added at the end. Either way the result is the same bit for bit (addition mod 2^w).
    The caller reduces mod 2^b once at the end (``reduce_modulus``).
    """
    if accumulator.ndim != 1 or accumulator.dtype not in (np.dtype("<u4"), np.dtype("<u8")):
        raise ValueError("accumulator must be a 1-D little-endian uint32 or uint64 array")
    workers = 1 if runner is None else runner.parts
    if workers < 1:
        raise ValueError(f"a runner needs at least one part, got {workers}")
    signed = [(s, True) for s in add_seeds] + [(s, False) for s in subtract_seeds]
    for seed, _ in signed:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    if not signed:
        return accumulator
    chunks = -(-accumulator.shape[0] // _CHUNK_VALUES)
    if runner is None or workers == 1 or (chunks == 1 and len(signed) == 1):
        _add_masks_part(accumulator, signed, 0)
    elif chunks >= workers:
        # Parts start on a chunk boundary (a whole number of AES blocks).
        bounds = [round(i * chunks / workers) * _CHUNK_VALUES for i in range(workers + 1)]
        bounds[-1] = accumulator.shape[0]
        runner(
            [
                functools.partial(_add_masks_part, accumulator[start:stop], signed, start)
                for start, stop in itertools.pairwise(bounds)
            ]
        )
    else:
        groups = [signed[i::workers] for i in range(min(workers, len(signed)))]
        partial_sums = [accumulator] + [np.zeros_like(accumulator) for _ in groups[1:]]
        pairs = zip(partial_sums, groups, strict=True)
        runner([functools.partial(_add_masks_part, into, group, 0) for into, group in pairs])
        for partial_sum in partial_sums[1:]:
            np.add(accumulator, partial_sum, out=accumulator)
    return accumulator


def _add_masks_part(target: np.ndarray, signed: Sequence[tuple[bytes, bool]], offset: int) -> None:
    """Mask ``target``, the values of the whole vector from index ``offset`` on (chunk-aligned)."""
    itemsize = target.dtype.itemsize
    start_block = offset * itemsize // 16
    streams = [(_keystream(seed, start_block), positive) for seed, positive in signed]
    chunk_bytes = _CHUNK_VALUES * itemsize
    zeros = bytes(chunk_bytes)
    # update_into wants room for one extra block beyond the input
    scratch = bytearray(chunk_bytes + 16)
    scratch_values = np.frombuffer(scratch, dtype=target.dtype, count=_CHUNK_VALUES)
    dimension = target.shape[0]
    for start in range(0, dimension, _CHUNK_VALUES):
        stop = min(start + _CHUNK_VALUES, dimension)
        count = stop - start
        window = target[start:stop]
        source = scratch_values[:count]
        plain = zeros if count == _CHUNK_VALUES else memoryview(zeros)[: count * itemsize]
        for stream, positive in streams:
            stream.update_into(plain, scratch)
            if positive:
                np.add(window, source, out=window)
            else:
                np.subtract(window, source, out=window)


def add_masks_signed(accumulator: np.ndarray, signed_seeds: Sequence[tuple[bytes, int]]) -> np.ndarray:
    """``add_masks`` for (seed, +1 | -1) pairs."""
    return add_masks(
        accumulator,
        (seed for seed, sign in signed_seeds if sign > 0),
        (seed for seed, sign in signed_seeds if sign < 0),
    )

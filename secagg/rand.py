"""Injected randomness.

Nothing in secagg draws randomness on its own: every function that needs it takes a
``RandomSource``. Production code passes ``SystemRandom`` (the OS CSPRNG); tests and
reproducible simulations pass ``SeededRandom``, a deterministic CSPRNG (AES-256-CTR keystream)
that must never be used with a seed an adversary can know when secrets are at stake.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_DRBG_NONCE = b"\x00" * 16


@runtime_checkable
class RandomSource(Protocol):
    def random_bytes(self, count: int) -> bytes:
        """Return ``count`` bytes from a cryptographically secure generator."""
        ...


class SystemRandom:
    """The operating system's CSPRNG (``getrandom``)."""

    def random_bytes(self, count: int) -> bytes:
        return os.urandom(count)

    def __repr__(self) -> str:
        return "SystemRandom()"


class SeededRandom:
    """Deterministic CSPRNG: the AES-256-CTR keystream under a 32-byte seed.

    Tests and reproducible simulations seed it with known values; the distributed-DP encoder
    keys it with 32 bytes of the OS CSPRNG for each update (the masks' own construction, several
    times faster than ``os.urandom`` at megabytes). Two instances with the same seed produce
    the same stream; the stream never repeats within 2^128 blocks.
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"SeededRandom needs a 32-byte seed, got {len(seed)} bytes")
        self._keystream = Cipher(algorithms.AES(seed), modes.CTR(_DRBG_NONCE)).encryptor()

    @classmethod
    def from_int(cls, seed: int) -> SeededRandom:
        """Convenience for tests and ``--seed``: a small integer stretched to 32 bytes."""
        if seed < 0:
            raise ValueError("seed must be non-negative")
        return cls(seed.to_bytes(32, "big"))

    def random_bytes(self, count: int) -> bytes:
        if count < 0:
            raise ValueError("count must be non-negative")
        return self._keystream.update(bytes(count))

    def spawn(self) -> SeededRandom:
        """An independent child stream (keyed by 32 bytes of this one)."""
        return SeededRandom(self.random_bytes(32))

    def __repr__(self) -> str:
        return "SeededRandom(<seed>)"


def random_below(rng: RandomSource, bound: int) -> int:
    """A uniform integer in [0, bound), by rejection sampling (no modulo bias)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    nbits = bound.bit_length()
    nbytes = (nbits + 7) // 8
    excess_bits = nbytes * 8 - nbits
    while True:
        candidate = int.from_bytes(rng.random_bytes(nbytes), "big") >> excess_bits
        if candidate < bound:
            return candidate


def uniform_unit_floats(rng: RandomSource, count: int) -> np.ndarray:
    """``count`` uniform float64 values in [0, 1) with 53 random bits each."""
    raw = np.frombuffer(rng.random_bytes(8 * count), dtype="<u8")
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

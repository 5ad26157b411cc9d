"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^256 + 297.

p is the smallest prime above 2^256, so every 32-byte string is a field element and nothing is
truncated. A share is (x, y) with x the holder's participant id (>= 1) and y < p, carried as
33 big-endian bytes. Reconstruction interpolates at 0 with Lagrange coefficients computed once
per responder set (``LagrangeCache``): in a round most secrets are rebuilt from the same holders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import ShamirError
from .rand import RandomSource, random_below

FIELD_PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33
_STEPS_PER_REDUCTION = 16
_MAX_HOLDER_ID = 1 << 32  # participant ids are uint32 on the wire


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Parse a share value; raises ShamirError if it is not a field element."""
    if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes")
    y = int.from_bytes(data, "big")
    if y >= FIELD_PRIME:
        raise ShamirError("share value is outside the field")
    return y


def _check_holders(holders: Sequence[int], threshold: int) -> None:
    if threshold < 1:
        raise ShamirError("threshold must be at least 1")
    if len(holders) < threshold:
        raise ShamirError(f"{len(holders)} holders cannot carry a {threshold}-of-n sharing")
    if len(set(holders)) != len(holders):
        raise ShamirError("holder ids must be distinct")
    if any(not 0 < x < _MAX_HOLDER_ID for x in holders):
        raise ShamirError(f"holder ids must be in [1, {_MAX_HOLDER_ID})")


def split(
    secrets: Sequence[bytes], *, threshold: int, holders: Sequence[int], rng: RandomSource
) -> dict[int, tuple[int, ...]]:
    """Share each secret t-of-len(holders); returns holder -> (share of secret 0, share of 1, ...).

    Sharing several secrets in one call evaluates their polynomials in one pass over the holders.
    """
    _check_holders(holders, threshold)
    polynomials = []
    for secret in secrets:
        if len(secret) != SECRET_BYTES:
            raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
        coefficients = [int.from_bytes(secret, "big")]
        coefficients += [random_below(rng, FIELD_PRIME) for _ in range(threshold - 1)]
        polynomials.append(coefficients[::-1])  # highest degree first, for Horner
    # Horner's rule over all holders at once (numpy object arrays of Python ints: the loop over
    # holders runs in C). Reducing mod p only every few steps is exact and ~2x faster; with
    # x < 2^32 the accumulator stays below 2^(257 + 16*32) between reductions.
    xs = np.array(list(holders), dtype=object)[:, None]
    acc = np.zeros((len(holders), len(polynomials)), dtype=object)
    by_degree = list(zip(*polynomials, strict=True)) if polynomials else []
    for step, same_degree in enumerate(by_degree, start=1):
        acc = acc * xs + np.array(same_degree, dtype=object)
        if step % _STEPS_PER_REDUCTION == 0:
            acc %= FIELD_PRIME
    acc %= FIELD_PRIME
    return {int(x): tuple(int(v) for v in row) for x, row in zip(holders, acc, strict=True)}


class LagrangeCache:
    """Lagrange coefficients at x = 0, memoised by the (sorted) tuple of x-coordinates."""

    def __init__(self) -> None:
        self._by_points: dict[tuple[int, ...], tuple[int, ...]] = {}

    def coefficients(self, xs: tuple[int, ...]) -> tuple[int, ...]:
        cached = self._by_points.get(xs)
        if cached is None:
            cached = _lagrange_at_zero(xs)
            self._by_points[xs] = cached
        return cached


def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p.

    The x are small ints (participant ids), so the O(t^2) denominator products run on machine-
    sized factors and are reduced once; the t inversions share one modular exponentiation
    (Montgomery's batch inversion). SecAgg+ gives nearly every participant its own holder set,
    so this runs once per rebuilt secret and used to dominate the server's unmask at n = 1000."""
    p = FIELD_PRIME
    count = len(xs)
    # prod_{m != j} x_m from prefix and suffix products.
    prefix = [1] * (count + 1)
    for i, x in enumerate(xs):
        prefix[i + 1] = prefix[i] * x % p
    suffix = [1] * (count + 1)
    for i in range(count - 1, -1, -1):
        suffix[i] = suffix[i + 1] * xs[i] % p
    # xs are distinct (checked by the callers), so "xm != xj" skips exactly m == j.
    denominators = [math.prod([xm - xj for xm in xs if xm != xj]) % p for xj in xs]
    inverses = _batch_inverse(denominators)
    return tuple(prefix[j] * suffix[j + 1] % p * inverses[j] % p for j in range(count))


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses mod p of nonzero field elements with one exponentiation and 3(n-1) products."""
    p = FIELD_PRIME
    running = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        running[i + 1] = running[i] * v % p
    inverse = pow(running[-1], -1, p)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = inverse * running[i] % p
        inverse = inverse * values[i] % p
    return result


def reconstruct(shares: Mapping[int, int], *, threshold: int, cache: LagrangeCache | None = None) -> bytes:
    """Rebuild a 32-byte secret from at least ``threshold`` shares {x: y}.

    Uses the ``threshold`` smallest x so that secrets shared with the same holders reuse one set
    of coefficients. Raises ShamirError on too few shares or on shares that do not come from a
    32-byte secret.
    """
    if len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares, have {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    _check_holders(xs, threshold)
    for x in xs:
        if not 0 <= shares[x] < FIELD_PRIME:
            raise ShamirError("share value is outside the field")
    lambdas = (cache or LagrangeCache()).coefficients(xs)
    p = FIELD_PRIME
    secret = sum(lam * shares[x] for lam, x in zip(lambdas, xs, strict=True)) % p
    if secret >> (8 * SECRET_BYTES):
        raise ShamirError("shares are inconsistent: the interpolated value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")

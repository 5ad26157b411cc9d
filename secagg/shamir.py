"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^256 + 297.

p is the smallest prime above 2^256, so every 32-byte string is a field element and nothing is
truncated. A share is (x, y) with x the holder's participant id (>= 1) and y < p, carried as
33 big-endian bytes. Reconstruction interpolates at 0 with Lagrange coefficients computed once
per holder set, for all of a round's holder sets at once (``reconstruct_many``).
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
_LOOKAHEAD = 64  # secrets ahead that reconstruct_many looks at to choose a reusable holder set


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


def lagrange_at_zero(point_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """Lagrange coefficients at x = 0 for many point sets of one size t: an object array (sets, t)
    with lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p.

    SecAgg+ gives nearly every participant its own holder set (909 sets of 72 at n = 1000), so
    this is vectorised across sets. Written as lambda_j = P / c_j with P = prod_m x_m and
    c_j = x_j * prod_{m != j} (x_m - x_j), every c_j is a product of t integers below 2^bits
    (ids and their differences; bits <= 32): numpy multiplies them exactly in groups of
    62 // bits in int64, Python integers multiply the group products, and one modular inversion
    (Montgomery's trick) serves every c_j of the call.
    """
    sets = np.array(point_sets, dtype=np.int64)
    if sets.ndim != 2 or sets.shape[1] == 0:
        raise ShamirError("point sets must be non-empty and of one size")
    if sets.shape[0] == 0:
        return np.empty((0, sets.shape[1]), dtype=object)
    for xs in point_sets:
        _check_holders(xs, len(xs))
    count, size = sets.shape
    bits = int(sets.max()).bit_length()  # |x_m - x_j| < max x and x_j <= max x: both < 2^bits
    group = max(1, 62 // bits)  # |a product of `group` such factors| < 2^62: exact in int64
    padded = -(-size // group) * group
    p = FIELD_PRIME
    denominators = np.empty((count, size), dtype=object)
    # Sets in chunks, so that the (sets, t, t) difference tensor stays near 16 MB.
    chunk = max(1, (1 << 21) // (size * padded))
    for first in range(0, count, chunk):
        block = sets[first : first + chunk]
        factors = block[:, None, :] - block[:, :, None]  # [s, j, m] = x_m - x_j
        diagonal = np.arange(size)
        factors[:, diagonal, diagonal] = block  # x_j in place of x_j - x_j = 0
        if padded > size:
            factors = np.concatenate([factors, np.ones((*factors.shape[:2], padded - size), np.int64)], axis=2)
        grouped = factors[..., 0::group].copy()  # group i: factors i, i + padded/group, ...
        for member in range(1, group):
            grouped *= factors[..., member::group]
        denominators[first : first + chunk] = grouped.astype(object).prod(axis=-1) % p
    numerators = sets.astype(object).prod(axis=1) % p
    coefficients: np.ndarray = numerators[:, None] * _batch_inverse(denominators) % p
    return coefficients


def _batch_inverse(values: np.ndarray) -> np.ndarray:
    """Inverses mod p of nonzero field elements (object array, any shape) with one modular
    inversion: Montgomery's trick run down the rows of a roughly square table, each step one
    vectorised product over a row."""
    p = FIELD_PRIME
    flat = values.reshape(-1)
    total = flat.shape[0]
    width = max(1, math.isqrt(total))
    rows = -(-total // width)
    padded = np.ones(rows * width, dtype=object)
    padded[:total] = flat
    table = padded.reshape(rows, width)
    running = np.empty_like(table)  # running[i] = table[0] * ... * table[i], per column
    running[0] = table[0]
    for i in range(1, rows):
        running[i] = running[i - 1] * table[i] % p
    # One inversion for the whole table: Montgomery's trick across the last row's columns.
    column_products = [int(v) for v in running[-1]]
    prefix = [1] * (width + 1)
    for i, v in enumerate(column_products):
        prefix[i + 1] = prefix[i] * v % p
    inverse = pow(prefix[-1], -1, p)
    column_inverses = [0] * width
    for i in range(width - 1, -1, -1):
        column_inverses[i] = inverse * prefix[i] % p
        inverse = inverse * column_products[i] % p
    # Back up the rows: inverse[i] = (running[i])^-1, and table[i]^-1 = running[i-1] * inverse[i].
    result = np.empty_like(table)
    inverse_row = np.array(column_inverses, dtype=object)
    for i in range(rows - 1, 0, -1):
        result[i] = running[i - 1] * inverse_row % p
        inverse_row = inverse_row * table[i] % p
    result[0] = inverse_row
    return result.reshape(-1)[:total].reshape(values.shape)


def reconstruct_many(shares: Sequence[Mapping[int, int]], *, threshold: int) -> list[bytes | None]:
    """Rebuild many 32-byte secrets, each from ``threshold`` of its shares {x: y}.

    Any ``threshold`` shares of a secret rebuild it, so the holders are chosen to repeat across
    secrets (``_holder_set``): secrets rebuilt from the same holders share one row of
    coefficients, and the coefficients of all holder sets are computed together
    (``lagrange_at_zero``). An entry is ``None`` where the
    shares interpolate to a field element that is not a 32-byte string: they were not dealt
    from one secret. Raises ShamirError on too few shares or values outside the field.
    """
    point_sets: dict[tuple[int, ...], int] = {}
    rows: list[int] = []
    values: list[list[int]] = []
    for by_holder in shares:
        if len(by_holder) < threshold:
            raise ShamirError(f"need {threshold} shares, have {len(by_holder)}")
    for by_holder, xs in zip(shares, _holder_sets(shares, threshold), strict=True):
        ys = [by_holder[x] for x in xs]
        if any(not 0 <= y < FIELD_PRIME for y in ys):
            raise ShamirError("share value is outside the field")
        rows.append(point_sets.setdefault(xs, len(point_sets)))
        values.append(ys)
    if not values:
        return []
    coefficients = lagrange_at_zero(list(point_sets))
    secrets = (coefficients[rows] * np.array(values, dtype=object)).sum(axis=1) % FIELD_PRIME
    return [None if secret >> (8 * SECRET_BYTES) else int(secret).to_bytes(SECRET_BYTES, "big") for secret in secrets]


def _holder_sets(shares: Sequence[Mapping[int, int]], threshold: int) -> list[tuple[int, ...]]:
    """For each secret, the ``threshold`` holders whose shares rebuild it, chosen so that few
    distinct sets serve all: the last set is reused while its holders hold shares of the next
    secret too; a new set takes the holders that keep holding shares over the longest run of the
    following secrets (ties: smaller x).

    In SecAgg+ the holders of a participant's secrets are a window of its neighbours on the
    Harary cycle, and windows of consecutive participants on the cycle overlap in all but one
    holder. Given the secrets in cycle order, the round's 900 self-mask seeds at n = 1000
    (k = 102, t = 72) need about 40 holder sets instead of 900, and Lagrange coefficients for as
    many. Any order stays correct: it only changes how many sets there are."""
    chosen: list[tuple[int, ...]] = []
    current: tuple[int, ...] = ()
    for index, by_holder in enumerate(shares):
        if current and all(x in by_holder for x in current):
            chosen.append(current)
            continue
        run = dict.fromkeys(by_holder, 1)
        still_holding = set(by_holder)
        for later in shares[index + 1 : index + 1 + _LOOKAHEAD]:
            still_holding.intersection_update(later.keys())
            if len(still_holding) < threshold:
                break
            for x in still_holding:
                run[x] += 1
        current = tuple(sorted(sorted(by_holder, key=lambda x: (-run[x], x))[:threshold]))
        chosen.append(current)
    return chosen


def reconstruct(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Rebuild one 32-byte secret from at least ``threshold`` shares {x: y} (its ``threshold``
    smallest x). Raises ShamirError on too few shares or on shares that do not come from a
    32-byte secret."""
    (secret,) = reconstruct_many([shares], threshold=threshold)
    if secret is None:
        raise ShamirError("shares are inconsistent: the interpolated value is not a 32-byte secret")
    return secret

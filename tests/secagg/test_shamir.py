import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmask.secagg import shamir
from fedmask.secagg.errors import ShamirError
from fedmask.secagg.rand import SeededRandom


def test_field_prime_is_the_smallest_prime_above_2_to_256():
    from sympy import isprime, nextprime

    assert shamir.FIELD_PRIME == nextprime(1 << 256)
    assert isprime(shamir.FIELD_PRIME)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(min_value=2, max_value=12),
    data=st.data(),
)
def test_any_threshold_subset_reconstructs(secret, n, data):
    t = data.draw(st.integers(min_value=1, max_value=n))
    holders = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split([secret], threshold=t, holders=holders, rng=SeededRandom.from_int(n))
    subset = data.draw(st.lists(st.sampled_from(holders), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct({x: shares[x][0] for x in subset}, threshold=t) == secret


def test_all_subsets_of_a_small_sharing():
    secrets = [b"\xff" * 32, b"\x00" * 32]  # the extremes of the secret space
    holders = [3, 5, 8, 13, 21]
    shares = shamir.split(secrets, threshold=3, holders=holders, rng=SeededRandom.from_int(7))
    for size in (3, 4, 5):
        for subset in itertools.combinations(holders, size):
            for index, secret in enumerate(secrets):
                assert shamir.reconstruct({x: shares[x][index] for x in subset}, threshold=3) == secret
    # All at once: every subset and secret in one call (one coefficient row per subset).
    requests = [
        ({x: shares[x][index] for x in subset}, secret)
        for size in (3, 4, 5)
        for subset in itertools.combinations(holders, size)
        for index, secret in enumerate(secrets)
    ]
    assert shamir.reconstruct_many([shares for shares, _ in requests], threshold=3) == [s for _, s in requests]


def test_fewer_than_threshold_shares_are_consistent_with_every_secret():
    """Perfect secrecy: t-1 shares plus any claimed secret define a valid polynomial."""
    holders = [1, 2, 3, 4]
    shares = shamir.split([b"\x42" * 32], threshold=3, holders=holders, rng=SeededRandom.from_int(9))
    two = {1: shares[1][0], 2: shares[2][0]}
    for candidate in (b"\x00" * 32, b"\x42" * 32, b"\x99" * 32):
        # the share at x = 0 is the secret itself: interpolating through it always works
        points = two | {0: int.from_bytes(candidate, "big")}
        xs = tuple(sorted(points))
        # evaluate the interpolating polynomial back at 0 via the same Lagrange machinery
        p = shamir.FIELD_PRIME
        value = 0
        for xj in xs:
            term = points[xj]
            for xm in xs:
                if xm != xj:
                    term = term * (0 - xm) * pow(xj - xm, -1, p) % p
            value = (value + term) % p
        assert value.to_bytes(32, "big") == candidate


def test_shares_are_validated():
    with pytest.raises(ShamirError, match="distinct"):
        shamir.split([b"a" * 32], threshold=2, holders=[1, 1, 2], rng=SeededRandom.from_int(1))
    with pytest.raises(ShamirError, match="holder ids"):
        shamir.split([b"a" * 32], threshold=2, holders=[0, 1, 2], rng=SeededRandom.from_int(1))
    with pytest.raises(ShamirError, match="holders cannot carry"):
        shamir.split([b"a" * 32], threshold=4, holders=[1, 2, 3], rng=SeededRandom.from_int(1))
    with pytest.raises(ShamirError, match="32 bytes"):
        shamir.split([b"a" * 31], threshold=2, holders=[1, 2], rng=SeededRandom.from_int(1))
    with pytest.raises(ShamirError, match="need 3 shares"):
        shamir.reconstruct({1: 5, 2: 6}, threshold=3)
    with pytest.raises(ShamirError, match="outside the field"):
        shamir.decode_share(shamir.FIELD_PRIME.to_bytes(33, "big"))
    with pytest.raises(ShamirError, match="33 bytes"):
        shamir.decode_share(b"\x00" * 32)
    with pytest.raises(ShamirError, match="outside the field"):
        shamir.reconstruct({1: shamir.FIELD_PRIME, 2: 1}, threshold=2)


def test_share_encoding_round_trip():
    for y in (0, 1, shamir.FIELD_PRIME - 1):
        assert shamir.decode_share(shamir.encode_share(y)) == y


def test_inconsistent_shares_are_usually_detected():
    shares = shamir.split([b"\x00" * 32], threshold=2, holders=[1, 2, 3], rng=SeededRandom.from_int(3))
    forged = {1: shares[1][0], 2: (shares[2][0] + (1 << 255)) % shamir.FIELD_PRIME}
    # the forged pair interpolates to a value >= 2^256 with overwhelming probability or to a
    # different secret; it must never silently give back the original
    try:
        assert shamir.reconstruct(forged, threshold=2) != b"\x00" * 32
    except ShamirError:
        pass


def _lagrange_reference(xs: list[int]) -> list[int]:
    """lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p, one modular inverse per factor."""
    p = shamir.FIELD_PRIME
    result = []
    for xj in xs:
        value = 1
        for xm in xs:
            if xm != xj:
                value = value * xm * pow(xm - xj, -1, p) % p
        result.append(value)
    return result


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40),
    # Small ids (seven int64 factors per group), ids near 2^32 (one per group), and between.
    largest=st.sampled_from([50, 1_000, 70_000, 2**31, 2**32 - 1]),
    count=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_lagrange_coefficients_equal_the_definition(size, largest, count, data):
    ids = st.lists(st.integers(1, max(largest, size)), min_size=size, max_size=size, unique=True)
    sets = [data.draw(ids) for _ in range(count)]
    got = shamir.lagrange_at_zero(sets)
    assert got.shape == (count, size)
    assert [[int(v) for v in row] for row in got] == [_lagrange_reference(xs) for xs in sets]


def test_batch_inverse_of_any_shape():
    p = shamir.FIELD_PRIME
    for total in (1, 2, 3, 17, 1000):
        values = np.array([(7**i + i) % p or 1 for i in range(total)], dtype=object).reshape(-1, 1)
        inverses = shamir._batch_inverse(values)
        assert inverses.shape == values.shape
        assert all(int(v) * int(w) % p == 1 for v, w in zip(values.flat, inverses.flat, strict=True))


def test_inconsistent_shares_rebuild_to_none_in_a_batch():
    shares = shamir.split([b"\x01" * 32], threshold=2, holders=[1, 2], rng=SeededRandom.from_int(5))
    good = {x: shares[x][0] for x in (1, 2)}
    # Shares on the line through (0, 2^256) interpolate to the field element 2^256: not 32 bytes.
    p = shamir.FIELD_PRIME
    outside = {1: ((1 << 256) + 5) % p, 2: ((1 << 256) + 10) % p}
    assert shamir.reconstruct_many([good, outside, good], threshold=2) == [b"\x01" * 32, None, b"\x01" * 32]
    with pytest.raises(ShamirError, match="not a 32-byte secret"):
        shamir.reconstruct(outside, threshold=2)


def _ring_windows(n: int, half: int) -> list[list[int]]:
    """Holders of each participant's secrets on a cycle 1..n: itself and `half` on either side."""
    return [[(u + step - 1) % n + 1 for step in range(-half, half + 1)] for u in range(1, n + 1)]


def test_secrets_in_cycle_order_share_few_holder_sets():
    """SecAgg+ at n = 1000 (k = 102, t = 72), 10% of holders gone: consecutive windows reuse one
    holder set, so the Lagrange coefficients are computed for a few dozen sets, not one per secret."""
    n, half, t = 1000, 51, 72
    gone = set(range(5, n + 1, 10))
    holders = [[x for x in window if x not in gone] for window in _ring_windows(n, half)]
    shares = [dict.fromkeys(h, 0) for h in holders]
    chosen = shamir._holder_sets(shares, t)
    for by_holder, xs in zip(shares, chosen, strict=True):
        assert len(xs) == t and len(set(xs)) == t and set(xs) <= set(by_holder)
    assert len(set(chosen)) <= n // 15  # every set serves ~20 consecutive secrets (1 per secret before)
    # Out of cycle order it stays correct, only with more sets.
    shuffled = [shares[i] for i in np.random.default_rng(0).permutation(n)]
    assert all(set(xs) <= set(h) for h, xs in zip(shuffled, shamir._holder_sets(shuffled, t), strict=True))


def test_reconstruct_many_over_ring_windows_is_exact():
    n, half, t = 60, 8, 12
    rng = SeededRandom.from_int(11)
    secrets = [bytes([u]) * 32 for u in range(1, n + 1)]
    by_owner = []
    for secret, window in zip(secrets, _ring_windows(n, half), strict=True):
        dealt = shamir.split([secret], threshold=t, holders=window, rng=rng)
        by_owner.append({x: dealt[x][0] for x in window if x % 7})  # holders 7, 14, ... are gone
    assert shamir.reconstruct_many(by_owner, threshold=t) == secrets

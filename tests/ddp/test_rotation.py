import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from fedmask.ddp import rotation


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_fast_transform_equals_the_hadamard_matrix(n):
    x = np.random.default_rng(n).normal(size=n)
    assert np.allclose(rotation.hadamard_transform(x), hadamard(n) @ x, rtol=0, atol=1e-12)


def _reference_transform(x):
    """H_2n x = [H_n a + H_n b, H_n a - H_n b] for x = [a, b], down to explicit matrices."""
    if x.size <= 256:
        return hadamard(x.size) @ x
    a, b = _reference_transform(x[: x.size // 2]), _reference_transform(x[x.size // 2 :])
    return np.concatenate([a + b, a - b])


def test_fast_transform_across_the_cache_blocks():
    x = np.random.default_rng(7).normal(size=1 << 18)  # four blocks of 2^16
    assert np.allclose(rotation.hadamard_transform(x), _reference_transform(x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 64, 128, 4096, 1 << 17])
def test_transform_makes_the_plain_level_by_level_additions_bit_for_bit(n):
    """Participants and the coordinator must agree on every bit: the levels run in an order
    that suits the cache, but each value gets the additions of the textbook transform."""
    x = np.random.default_rng(n).normal(size=n)
    plain = x.copy()
    half = 1
    while half < n:
        pairs = plain.reshape(-1, 2, half)
        a, b = pairs[:, 0, :].copy(), pairs[:, 1, :].copy()
        pairs[:, 0, :] = a + b
        pairs[:, 1, :] = a - b
        half *= 2
    assert rotation.hadamard_transform(x).tobytes() == plain.tobytes()


def test_transform_refuses_other_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        rotation.hadamard_transform(np.zeros(6))


@pytest.mark.parametrize("dimension,padded", [(1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048)])
def test_padding_to_a_power_of_two(dimension, padded):
    assert rotation.padded_dimension(dimension) == padded
    assert rotation.rotate(np.ones(dimension), rotation.rotation_seed(b"r")).size == padded


def test_rotation_is_orthonormal_and_inverted_exactly():
    seed = rotation.rotation_seed(b"round-3")
    x = np.random.default_rng(0).normal(size=1000)
    y = rotation.rotate(x, seed)
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(x), rel_tol=1e-12)
    assert np.max(np.abs(rotation.unrotate(y, seed, 1000) - x)) < 1e-12
    # inner products are kept too
    z = np.random.default_rng(1).normal(size=1000)
    assert math.isclose(np.dot(rotation.rotate(z, seed), y), np.dot(z, x), rel_tol=1e-10)


def test_a_spike_is_spread_evenly():
    """e_1 * C becomes +-C/sqrt(n) in every coordinate: the reason to rotate before encoding."""
    y = rotation.rotate(np.eye(1, 512, 0)[0] * 3.0, rotation.rotation_seed(b"x"))
    assert np.allclose(np.abs(y), 3.0 / math.sqrt(512))


def test_seeds_are_public_per_round_and_deterministic():
    a, b = rotation.rotation_seed(b"round-1"), rotation.rotation_seed(b"round-2")
    assert a != b and a == rotation.rotation_seed(b"round-1") and len(a) == 32
    signs = rotation.random_signs(a, 4096)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.sum()) < 4 * math.sqrt(4096)
    assert np.array_equal(signs, rotation.random_signs(a, 4096))
    assert not np.array_equal(signs, rotation.random_signs(b, 4096))
    with pytest.raises(ValueError):
        rotation.rotation_seed(b"")


def test_unrotate_checks_the_length():
    with pytest.raises(ValueError, match="1024"):
        rotation.unrotate(np.zeros(512), rotation.rotation_seed(b"r"), 1000)

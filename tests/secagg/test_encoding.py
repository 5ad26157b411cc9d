import math

import numpy as np
import pytest

from fedmask.secagg import encoding
from fedmask.secagg.encoding import encode, to_modular
from fedmask.secagg.params import EncodingParams
from fedmask.secagg.rand import SeededRandom, uniform_unit_floats


def test_clip_scales_down_only_above_the_norm():
    v = np.array([3.0, 4.0])
    clipped, norm = encoding.clip_l2(v, 1.0)
    assert norm == 5.0 and np.allclose(clipped, [0.6, 0.8])
    same, _ = encoding.clip_l2(v, 10.0)
    assert same is v


def test_nan_updates_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        encoding.clip_l2(np.array([1.0, np.nan]), 1.0)


def test_randomized_rounding_is_unbiased_and_stays_on_neighbours():
    rng = SeededRandom.from_int(1)
    values = np.full(200_000, 2.3)
    rounded = encoding.randomized_round(values, rng)
    assert set(np.unique(rounded)) == {2, 3}
    # mean 2.3, standard error sqrt(0.21 / 2e5) ~ 0.001
    assert abs(rounded.mean() - 2.3) < 0.005


def test_l2_norm_is_the_euclidean_norm_within_the_rounding_of_one_pass():
    v = np.random.default_rng(1).normal(size=100_003)
    reference = math.sqrt(math.fsum(float(x) * float(x) for x in v))
    # n rounded products and n - 1 rounded additions, then the square root: relative error
    # below (n + 1) 2^-53 (Higham, Accuracy and Stability, 3.1).
    assert abs(encoding.l2_norm(v) - reference) <= (v.size + 1) * 2.0**-53 * reference
    assert encoding.l2_norm(np.zeros(5)) == 0.0 and encoding.l2_norm(np.array([3.0, 4.0])) == 5.0


def test_randomized_rounding_in_chunks_reads_the_stream_as_one_pass_does():
    values = np.random.default_rng(0).normal(size=3 * (1 << 16) + 5) * 100
    floor = np.floor(values)
    one_pass = floor.astype(np.int64) + (uniform_unit_floats(SeededRandom.from_int(3), values.size) < values - floor)
    assert np.array_equal(encoding.randomized_round(values, SeededRandom.from_int(3)), one_pass)


def test_randomized_rounding_keeps_integers():
    rng = SeededRandom.from_int(2)
    values = np.array([-3.0, 0.0, 7.0])
    assert np.array_equal(encoding.randomized_round(values, rng), [-3, 0, 7])


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_modular_round_trip_of_signed_integers(bits):
    ints = np.array([-(2 ** (bits - 1)), -1, 0, 1, 2 ** (bits - 1) - 1], dtype=np.int64)
    assert np.array_equal(encoding.centered_lift(encoding.to_modular(ints, bits), bits), ints)


def test_sum_of_encodings_decodes_to_sum_of_clipped_updates():
    params = EncodingParams(clip_norm=1.0, scale=2.0**16, modulus_bits=32)
    params.validate(10)
    rng = SeededRandom.from_int(3)
    updates = [np.linspace(-0.1, 0.1, 1000) * (i + 1) for i in range(10)]
    total = np.zeros(1000, dtype=np.uint32)
    for u in updates:
        total += encoding.encode(u, params, rng)
    expected = sum(encoding.clip_l2(u, 1.0)[0] for u in updates)
    decoded = encoding.decode_sum(total, params)
    # each participant's rounding error is below 1/scale per coordinate
    assert np.max(np.abs(decoded - expected)) < 10 / params.scale


def test_encode_refuses_matrices():
    with pytest.raises(ValueError, match="1-D"):
        encoding.encode(np.zeros((2, 2)), EncodingParams(1.0, 1.0, 32), SeededRandom.from_int(0))


def test_a_sum_no_correct_encodings_can_produce_is_refused():
    """The 'huge update' attack: one participant uploads 2^31 in every coordinate (or an update
    it did not clip). The honest sum decodes; the poisoned ones are refused, not applied."""
    params = EncodingParams(clip_norm=1.0, scale=2.0**20, modulus_bits=32)
    rng = SeededRandom.from_int(3)
    d, n = 1000, 5
    updates = [np.random.default_rng(i).normal(size=d) * 10 for i in range(n)]  # norms >> C: clipped
    total = np.zeros(d, dtype=np.uint32)
    for update in updates:
        total += encode(update, params, rng)
    honest = encoding.decode_checked_sum(total, params, n)
    np.testing.assert_array_equal(honest, encoding.decode_sum(total, params))
    assert np.linalg.norm(honest) <= n * params.clip_norm + n * np.sqrt(d) / params.scale

    garbage = total + np.full(d, 1 << 31, dtype=np.uint32)
    with pytest.raises(encoding.ImplausibleSum, match="coordinate"):
        encoding.decode_checked_sum(garbage, params, n)
    # An unclipped update of norm 10C (more than the n = 5 clipped ones can add up to), spread
    # thin so that no coordinate is out of range.
    unclipped = np.full(d, 10 * params.clip_norm / np.sqrt(d))
    big = total + to_modular(np.round(unclipped * params.scale).astype(np.int64), 32)
    with pytest.raises(encoding.ImplausibleSum, match="L2 norm"):
        encoding.decode_checked_sum(big, params, n)
    assert encoding.sum_bounds(params, n, d)[0] == n * (1 << 20)

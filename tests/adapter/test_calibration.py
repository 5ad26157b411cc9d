"""The DP calibration of a two-class decision threshold: the statistic, its sensitivity, the noise,
the solved shift, the head it moves, and its trip through secure aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmask.adapter import calibration
from fedmask.adapter.calibration import (
    BIN_CENTRES,
    BINS,
    CALIBRATION_COORDINATES,
    L2_SENSITIVITY,
    MAX_SHIFT,
    CalibrationError,
    decode_release,
    encode_release,
    margin_histogram,
    noised_release,
    shifted,
    solve_shift,
)
from fedmask.secagg.encoding import ImplausibleSum
from fedmask.secagg.rand import SeededRandom

HEAD_LAYOUT = [
    {"name": "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight", "shape": [2, 3]},
    {"name": "base_model.model.classifier.modules_to_save.default.weight", "shape": [2, 3]},
    {"name": "base_model.model.classifier.modules_to_save.default.bias", "shape": [2]},
]


def test_the_statistic_counts_positives_and_margins_per_bin():
    margins = np.array([-100.0, -8.0, -0.5, 0.0, 0.99, 7.99, 8.0, math.inf, -math.inf])
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0])
    statistic = margin_histogram(margins, labels)
    assert statistic.shape == (CALIBRATION_COORDINATES,) and statistic[0] == 5
    counts = statistic[1:]
    assert counts.sum() == margins.size
    # open bins at both ends; [-8, -7) is bin 1, [0, 1) is bin 9, [7, 8) bin 16, >= 8 bin 17
    assert (counts[0], counts[1], counts[8], counts[9], counts[16], counts[17]) == (2, 1, 1, 2, 1, 2)
    with pytest.raises(ValueError, match="NaN"):
        margin_histogram(np.array([math.nan]), np.array([1]))
    with pytest.raises(ValueError, match="0 or 1"):
        margin_histogram(np.array([0.0]), np.array([2]))


def test_one_record_moves_the_statistic_by_at_most_the_stated_sensitivity():
    generator = np.random.default_rng(7)
    margins = generator.normal(0, 4, 200)
    labels = generator.integers(0, 2, 200)
    full = margin_histogram(margins, labels)
    changes = [np.linalg.norm(full - margin_histogram(np.delete(margins, i), np.delete(labels, i))) for i in range(200)]
    assert max(changes) <= L2_SENSITIVITY + 1e-12
    assert max(changes) == pytest.approx(L2_SENSITIVITY)  # a positive record reaches it: the bound is tight


def test_the_noise_has_the_stated_spread_and_comes_from_the_random_source():
    count = 40_000
    normals = calibration.gaussian(count, SeededRandom(b"\x01" * 32))
    # Five standard errors: a sample mean has sd 1/sqrt(n), a sample variance sqrt(2/n).
    assert abs(normals.mean()) < 5 / math.sqrt(count)
    assert abs(normals.var() - 1.0) < 5 * math.sqrt(2 / count)
    assert not np.array_equal(
        calibration.gaussian(10, SeededRandom(b"\x01" * 32)), calibration.gaussian(10, SeededRandom(b"\x02" * 32))
    )
    again = calibration.gaussian(10, SeededRandom(b"\x01" * 32))
    np.testing.assert_array_equal(again, calibration.gaussian(10, SeededRandom(b"\x01" * 32)))

    statistic = np.zeros(CALIBRATION_COORDINATES)
    releases = np.stack([noised_release(statistic, 3.0, SeededRandom(i.to_bytes(32, "little"))) for i in range(600)])
    assert np.all(releases == np.rint(releases))  # integers: ready for the modular sum
    spread = releases.std()
    samples = releases.size
    # Rounding adds variance 1/12; the sample sd of n values has standard error sd/sqrt(2n).
    expected = math.sqrt((3.0 * L2_SENSITIVITY) ** 2 + 1 / 12)
    assert abs(spread - expected) < 5 * expected / math.sqrt(2 * samples)
    with pytest.raises(ValueError, match="positive"):
        noised_release(statistic, 0.0, SeededRandom(b"\x01" * 32))


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 8.0])
def test_the_gaussian_dp_mu_is_what_the_accountant_prices_one_gaussian_mechanism_at(epsilon):
    """A Gaussian mechanism of noise multiplier 1/mu is exactly mu-GDP: Opacus' PRV accountant
    must price it at epsilon, up to its stated eps_error of 0.01 (it reports the upper end)."""
    from fedmask.participant.ledger import compute_epsilon

    mu = calibration.gaussian_dp_mu(epsilon, 1e-5)
    priced = compute_epsilon("prv", [(1.0 / mu, 1.0, 1)], 1e-5)
    assert epsilon <= priced <= epsilon + 0.02
    # A tenth of mu^2 for the release: its noise is sqrt(10) times that of the whole budget.
    assert calibration.calibration_noise(epsilon, 1e-5) == pytest.approx(math.sqrt(10.0) / mu, rel=1e-12)


def test_the_solved_shift_matches_predicted_positives_to_the_labels():
    counts = np.array([0, 5, 10, 20, 40, 60, 80, 90, 100, 90, 70, 50, 30, 15, 8, 4, 2, 1], dtype=float)
    for positives in (50.0, 200.0, 400.0):
        solved = solve_shift(np.concatenate(([positives], counts)))
        predicted = float(np.sum(counts / (1 + np.exp(-(BIN_CENTRES + solved.shift)))))
        # 60 halvings of a width-16 interval: the shift to ~1e-17, the count to far below 1e-9
        assert predicted == pytest.approx(positives, abs=1e-9)
        assert not solved.clamped and solved.records == counts.sum()
    # More predicted positives than labelled ones: the threshold moves up (negative shift).
    balanced = solve_shift(np.concatenate(([counts.sum() / 2], counts)))
    assert solve_shift(np.concatenate(([100.0], counts))).shift < balanced.shift


def test_any_finite_budget_gets_a_calibration_noise():
    """A config accepts any finite epsilon; e^eps overflows a float past 709, so the conversion
    works in logs. mu grows with epsilon and the release's noise shrinks, never to zero."""
    epsilons = [8.0, 700.0, 1000.0, 1e9]
    mus = [calibration.gaussian_dp_mu(epsilon, 1e-5) for epsilon in epsilons]
    assert all(math.isfinite(mu) for mu in mus) and mus == sorted(mus) and len(set(mus)) == len(mus)
    assert 0 < calibration.calibration_noise(1e9, 1e-5) < calibration.calibration_noise(8.0, 1e-5)


def test_noise_on_empty_bins_adds_no_phantom_records():
    """Over many noised releases of one histogram (half its bins empty) the mean shift stays near
    the noiseless one. The root of an unbiased equation is unbiased to first order only (here
    +0.09, 2.5 standard errors of the mean over the draws); clipping each bin at zero (the
    estimator this replaced) is off by -0.58, 21 standard errors, from the phantom records."""
    counts = np.zeros(BINS)
    counts[3:12] = [10, 40, 90, 160, 200, 160, 90, 40, 10]  # margins in [-6, 3): an unsure model
    exact = solve_shift(np.concatenate(([300.0], counts))).shift
    rng = np.random.default_rng(7)
    std, draws = 29.0, 400  # the summed noise of three parties at eps = 1 (z_cal 11.8, sqrt 2, sqrt 3)
    releases = np.concatenate(([300.0], counts)) + rng.normal(0.0, std, (draws, CALIBRATION_COORDINATES))
    bias = np.mean([solve_shift(release).shift for release in releases]) - exact

    def clipped(release: np.ndarray) -> float:
        return solve_shift(np.concatenate((release[:1], np.clip(release[1:], 0.0, None)))).shift

    clipped_bias = np.mean([clipped(release) for release in releases]) - exact
    assert abs(bias) < 0.15 and clipped_bias < -0.4 and abs(bias) < abs(clipped_bias) / 4


def test_a_release_that_is_mostly_noise_is_clamped_or_refused():
    counts = np.zeros(BINS)
    counts[8] = 100.0
    assert solve_shift(np.concatenate(([99.99], counts))).shift == MAX_SHIFT  # beyond the histogram
    clamped = solve_shift(np.concatenate(([0.001], counts)))
    assert clamped.clamped and clamped.shift == -MAX_SHIFT
    with pytest.raises(CalibrationError, match="nothing to calibrate"):
        solve_shift(np.concatenate(([-5.0], counts)))  # noise drove the positives below zero
    with pytest.raises(CalibrationError, match="nothing to calibrate"):
        solve_shift(np.concatenate(([10.0], -counts)))  # noise left fewer than one record
    with pytest.raises(CalibrationError, match="finite"):
        solve_shift(np.full(CALIBRATION_COORDINATES, math.nan))


def test_the_shift_moves_only_the_class_one_bias_of_the_head():
    vector = np.arange(14, dtype=np.float32)
    moved = shifted(vector, HEAD_LAYOUT, 1.5)
    assert moved[13] == vector[13] + np.float32(1.5)
    np.testing.assert_array_equal(np.delete(moved, 13), np.delete(vector, 13))
    np.testing.assert_array_equal(vector, np.arange(14, dtype=np.float32))  # a copy
    with pytest.raises(CalibrationError, match="no trainable classification-head bias"):
        shifted(vector[:12], HEAD_LAYOUT[:2], 1.0)
    three_classes = [*HEAD_LAYOUT[:2], {"name": HEAD_LAYOUT[2]["name"], "shape": [3]}]
    with pytest.raises(CalibrationError, match="not a two-class head"):
        shifted(np.zeros(15), three_classes, 1.0)


def test_releases_sum_exactly_under_the_modulus_and_implausible_sums_are_refused():
    releases = [np.array([-3.0, *range(-9, 9)]), np.array([400.0, *[25.0] * BINS]), np.full(19, -7.0)]
    bits, participants = 32, 3
    total = sum(encode_release(r, bits, participants).astype(np.uint64) for r in releases) % (1 << bits)
    np.testing.assert_array_equal(decode_release(total, bits, participants, 3), np.sum(releases, axis=0))
    cap = calibration.per_participant_cap(bits, participants)
    np.testing.assert_array_equal(
        decode_release(encode_release(np.full(19, 10.0 * cap), bits, participants), bits, participants, 1),
        np.full(19, float(cap)),  # clipped to the cap
    )
    # A sum only a participant ignoring the cap can produce: refused, not calibrated from.
    forged = np.full(19, 3 * cap, dtype=np.uint64)
    with pytest.raises(ImplausibleSum):
        decode_release(forged, bits, participants, 2)

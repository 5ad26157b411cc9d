"""DP-SGD's coin flips and noise (``fedmask.participant.dp_random``): the laws they must follow,
checked with tolerances from the sample sizes (five standard errors), and their keying."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmask.participant.dp_random import DpRandomness


def test_uniforms_are_52_bit_and_never_0_or_1():
    values = DpRandomness.reproducible("uniforms").uniforms(100_000)
    assert values.dtype == np.float64 and 0.0 < values.min() and values.max() < 1.0
    units = values * 2.0**52 - 0.5  # exact: a 52-bit count plus a half is a float64
    np.testing.assert_array_equal(units, np.floor(units))
    assert units.max() > 2.0**51  # the top bit is used too


def test_the_extreme_draws_stay_inside_the_open_interval():
    class Extremes:
        def random_bytes(self, count: int) -> bytes:
            return (b"\x00" * 8 + b"\xff" * 8) * (count // 16)

    low, high = DpRandomness(Extremes()).uniforms(2)
    assert low == 0.5 * 2.0**-52 and high == 1.0 - 0.5 * 2.0**-52


def test_the_point_nearest_the_centre_gives_finite_normals():
    class Centre:  # every uniform 1/2 + 2^-53: the polar method's smallest s = 2^-103
        def random_bytes(self, count: int) -> bytes:
            return (1 << 63).to_bytes(8, "little") * (count // 8)

    normals = DpRandomness(Centre())._normals(2)
    expected = 2.0**-52 * np.sqrt(-2.0 * np.log(2.0**-103) / 2.0**-103)
    np.testing.assert_array_equal(normals, [expected, expected])


def test_gaussian_noise_has_the_requested_law():
    count, std = 200_000, 3.0
    noise = DpRandomness.reproducible("gaussian").gaussian((400, 500), std, torch.float64).flatten().numpy()
    assert abs(noise.mean()) < 5 * std / math.sqrt(count)
    # The sample std of n normals has relative standard error ~ 1 / sqrt(2n).
    assert noise.std() == pytest.approx(std, rel=5 / math.sqrt(2 * count))
    # The mass within one and beyond three standard deviations, as N(0, std^2) puts it.
    for inside, share in (
        (lambda x: np.abs(x) < std, math.erf(1 / math.sqrt(2))),
        (lambda x: np.abs(x) > 3 * std, math.erfc(3 / math.sqrt(2))),
    ):
        observed = float(np.mean(inside(noise)))
        assert abs(observed - share) < 5 * math.sqrt(share * (1 - share) / count)


def test_gaussian_noise_takes_the_shape_and_dtype_asked_for():
    randomness = DpRandomness.reproducible("shape")
    noise = randomness.gaussian(torch.Size([3, 4]), 0.5, torch.float32)
    assert noise.shape == (3, 4) and noise.dtype == torch.float32
    assert not randomness.gaussian((5,), 0.0, torch.float32).any()
    with pytest.raises(ValueError, match="std"):
        randomness.gaussian((5,), -1.0, torch.float32)
    with pytest.raises(ValueError, match="std"):
        randomness.gaussian((5,), math.nan, torch.float32)


@pytest.mark.parametrize("rate", [0.02, 0.3])
def test_poisson_masks_take_each_record_with_the_sample_rate(rate: float):
    count = 100_000
    mask = DpRandomness.reproducible(f"poisson {rate}").poisson_mask(count, rate)
    assert mask.dtype == torch.bool and mask.shape == (count,)
    assert abs(int(mask.sum()) - count * rate) < 5 * math.sqrt(count * rate * (1 - rate))
    with pytest.raises(ValueError, match="sample_rate"):
        DpRandomness.reproducible("x").poisson_mask(3, 1.5)


def test_a_key_repeats_its_draws_and_fresh_keys_do_not():
    def draws(randomness: DpRandomness) -> np.ndarray:
        return randomness.uniforms(16)

    np.testing.assert_array_equal(draws(DpRandomness.reproducible("a")), draws(DpRandomness.reproducible("a")))
    assert not np.array_equal(draws(DpRandomness.reproducible("a")), draws(DpRandomness.reproducible("b")))
    assert not np.array_equal(draws(DpRandomness.fresh()), draws(DpRandomness.fresh()))

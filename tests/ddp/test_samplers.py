"""Exact noise samplers: the float fast path agrees with the exact path, and the output
distributions match their pmfs (fixed seeds, large samples)."""

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy import stats

from fedmask.ddp import exactmath
from fedmask.ddp import samplers as dpnoise
from fedmask.secagg.rand import SeededRandom


@pytest.fixture(autouse=True)
def _mpmath_precision():
    # mpmath's precision is process-global: set it per test, so that the order in which test
    # modules are imported cannot change it.
    with mpmath.workprec(200):
        yield


# ---- the one floating-point assumption -------------------------------------------------------


def test_numpy_log_and_log1p_meet_the_assumed_accuracy():
    """Margins assume relative error <= LOG_RELATIVE_ERROR for numpy's float64 log and log1p,
    at the arguments the samplers use: U's leading bits (any float in (0, 1) here), k >= 64,
    and |u| <= 1/2 for log1p."""
    rng = SeededRandom.from_int(1)
    u = (
        np.frombuffer(rng.random_bytes(8 * 3000), dtype="<u8")
        >> np.frombuffer(rng.random_bytes(3000), dtype=np.uint8) % 64
    )
    u = u[u > 0]
    uniforms = u.astype(np.float64) * 2.0**-64
    ks = np.unique(np.concatenate([np.arange(64, 2000), (uniforms[:1000] * 2.0**52).astype(np.int64) + 64])).astype(
        np.float64
    )
    small = (uniforms[:2000] - 0.5) * np.concatenate([np.ones(1000), np.full(1000, 1e-9)])
    worst = 0.0
    for fn, ref, xs in ((np.log, mpmath.log, uniforms), (np.log, mpmath.log, ks), (np.log1p, mpmath.log1p, small)):
        got = fn(xs)
        for x, g in zip(xs, got, strict=True):
            exact = ref(mpmath.mpf(float(x)))
            if exact != 0:
                worst = max(worst, float(abs((mpmath.mpf(float(g)) - exact) / exact)))
    assert worst <= dpnoise.LOG_RELATIVE_ERROR, worst


# ---- fast path == exact path ------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 7, 1000, 10**7])
def test_geometric_fast_path_matches_exact_comparisons(scale):
    rng = SeededRandom.from_int(scale)
    u = np.frombuffer(rng.random_bytes(8 * 300), dtype="<u8").copy()
    fast = dpnoise._geometric(scale, u, rng, None)
    for ui, x in zip(u, fast, strict=True):
        assert dpnoise._geometric_exact(scale, int(ui), max(0, int(x) - 2), rng) == x


@pytest.mark.parametrize("k", [2345, 20345])  # E near 2.3, and near 20 where U's interval is wide
def test_geometric_boundary_cases_go_to_the_exact_path_with_the_right_odds(k):
    """u chosen so that e^(-k/scale) lies in U's known interval: the float cannot decide, the
    exact path does, and over the undrawn bits X >= k happens with P(U < e^(-k/scale) | u)."""
    scale = 1000
    lo, _ = exactmath.exp_neg(Fraction(k, scale), 200)
    known = dpnoise._KNOWN_BITS
    leading = math.floor(lo * (1 << known))
    conditional = float(lo * (1 << known) - leading)
    stats_ = dpnoise.SamplerStats()
    rng = SeededRandom.from_int(5)
    draws = dpnoise._geometric(scale, np.full(3000, leading << (64 - known), dtype=np.uint64), rng, stats_)
    assert stats_.exact_decisions == 3000
    assert set(np.unique(draws)) <= {k - 1, k}
    sd = math.sqrt(conditional * (1 - conditional) / 3000)
    assert abs(np.mean(draws == k) - conditional) < 4.5 * sd


@pytest.mark.parametrize("variance", [0.5, 12.25, 1e6 + 0.5, 2.0**45])
def test_discrete_gaussian_acceptance_fast_path_matches_exact(variance):
    rng = SeededRandom.from_int(int(variance) % 1000)
    s2 = Fraction(variance)
    t = math.isqrt(math.floor(s2)) + 1
    y = dpnoise.discrete_laplace(t, 400, rng)
    u = np.frombuffer(rng.random_bytes(8 * 400), dtype="<u8").copy()
    gamma, gamma_error = dpnoise._gaussian_exponent(y, float(s2 / t), float(s2))
    exact_gamma = [(abs(int(v)) * t - s2) ** 2 / (2 * s2 * t * t) for v in y]
    fast = dpnoise._accept(gamma, gamma_error, u, lambda i: exact_gamma[i], rng, None)
    for ui, g, decision in zip(u, exact_gamma, fast, strict=True):
        assert dpnoise._lazy_uniform(int(ui), rng).below_exp_neg(g) == decision
    assert 0.3 < fast.mean() < 1.0


@pytest.mark.parametrize("variance", [0.5, 12.25, 1e6 + 0.5, 1.5e13, 2.0**45])
def test_discrete_gaussian_exponent_float_error_is_within_its_bound(variance):
    """The acceptance exponent's float value is within its stated error of the exact rational,
    from the centre of the proposal to far tails."""
    s2 = Fraction(variance)
    t = math.isqrt(math.floor(s2)) + 1
    sd = math.sqrt(variance)
    ys = sorted({0, 1, t, round(float(s2 / t))} | {round(z * sd) for z in np.linspace(-40, 40, 801)})
    y = np.array(ys, dtype=np.int64)
    gamma, error = dpnoise._gaussian_exponent(y, float(s2 / t), float(s2))
    for v, g, e in zip(y, gamma, error, strict=True):
        exact = (abs(int(v)) * t - s2) ** 2 / (2 * s2 * t * t)
        assert abs(Fraction(float(g)) - exact) <= Fraction(float(e)), (int(v), float(g), float(exact), float(e))


@pytest.mark.parametrize("mean", [0.3, 5.5, 63.9, 1000.5, 1e8 + 0.25, 2.0**45])
def test_poisson_log_pmf_float_error_is_within_its_bound(mean):
    """The float D(k) is within its stated error of the exact enclosure, from the far left tail
    to the far right tail, and the envelope A bounds D(k) + |k - m|/t everywhere checked."""
    shape = dpnoise._poisson_shape(mean)
    m, t = shape.mode, shape.scale
    sd = math.sqrt(mean)
    offsets = [0, 1, -1, 2, 5, -5] + [int(z * sd) for z in (0.5, -0.5, 1, -1, 2, -2, 4, -4, 8, -8, 20, -20, 60)]
    ks = sorted({k for k in (m + o for o in offsets) if k >= 0} | {0, 1, 2, 63, 64, 65})
    ks = np.array([k for k in ks if k <= m + 80 * sd + 100], dtype=np.int64)
    approx, error = shape.log_ratio_float(ks)
    for k, d, e in zip(ks, approx, error, strict=True):
        lo, hi = shape.log_ratio(int(k), 120)
        if d > -700:  # far below that the acceptance probability is 0 in any arithmetic
            assert float(lo) - e <= d <= float(hi) + e, (k, d, float(lo), e)
            assert float(hi - lo) < 1e-20
        assert hi + Fraction(abs(int(k) - m), t) <= Fraction(shape.envelope)


# ---- distributions ------------------------------------------------------------------------------


def _chi_square_pvalue(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square goodness of fit, bins with expectation < 5 pooled into two tail bins."""
    n = samples.size
    expected = pmf * n
    core = expected >= 5
    counts = np.array([np.count_nonzero(samples == v) for v in support[core]])
    left = support[core][0]
    right = support[core][-1]
    obs = np.concatenate([counts, [np.count_nonzero(samples < left), np.count_nonzero(samples > right)]])
    exp = np.concatenate([expected[core], [expected[support < left].sum(), expected[support > right].sum()]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    exp *= obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("scale", [1, 3])
def test_discrete_laplace_matches_its_pmf(scale):
    samples = dpnoise.discrete_laplace(scale, 200_000, SeededRandom.from_int(20 + scale))
    support = np.arange(-60 * scale, 60 * scale + 1)
    pmf = np.exp(-np.abs(support) / scale)
    assert _chi_square_pvalue(samples, support, pmf / pmf.sum()) > 1e-4


@pytest.mark.parametrize("variance", [0.5, 2.7, 30.25])
def test_discrete_gaussian_matches_its_pmf(variance):
    samples = dpnoise.discrete_gaussian(variance, 200_000, SeededRandom.from_int(int(variance * 100)))
    support = np.arange(-int(40 * math.sqrt(variance)) - 10, int(40 * math.sqrt(variance)) + 11)
    pmf = np.exp(-(support.astype(float) ** 2) / (2 * variance))
    pmf /= pmf.sum()
    assert _chi_square_pvalue(samples, support, pmf) > 1e-4
    variance_exact = float(np.sum(pmf * support.astype(float) ** 2))
    assert abs(samples.var() - variance_exact) < 5 * variance_exact * math.sqrt(2 / samples.size)


def test_large_discrete_gaussian_mean_variance_and_tails():
    variance = 1e12
    n = 1 << 18
    samples = dpnoise.discrete_gaussian(variance, n, SeededRandom.from_int(31)).astype(np.float64)
    sd = math.sqrt(variance)
    assert abs(samples.mean()) < 5 * sd / math.sqrt(n)
    assert abs(samples.var() / variance - 1) < 5 * math.sqrt(2 / n)
    for z in (1.0, 2.0, 3.0):
        p = 2 * stats.norm.sf(z)  # the discrete Gaussian at this scale is the normal to 1e-12
        freq = np.mean(np.abs(samples) > z * sd)
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("mean", [0.3, 4.5, 77.7])
def test_poisson_matches_its_pmf(mean):
    samples = dpnoise.poisson(mean, 200_000, SeededRandom.from_int(int(mean * 10)))
    support = np.arange(0, int(mean + 40 * math.sqrt(mean)) + 20)
    assert _chi_square_pvalue(samples, support, stats.poisson.pmf(support, mean)) > 1e-4


@pytest.mark.parametrize("mean", [1e8 + 0.5, 2.0**45])
def test_large_poisson_mean_variance_and_tails(mean):
    n = 1 << 18
    samples = dpnoise.poisson(mean, n, SeededRandom.from_int(41)).astype(np.float64)
    sd = math.sqrt(mean)
    assert abs(samples.mean() - mean) < 5 * sd / math.sqrt(n)
    assert abs(samples.var() / mean - 1) < 5 * math.sqrt(2 / n)
    for z in (-2.0, 2.0, 3.0):
        k = mean + z * sd
        p = stats.poisson.sf(math.floor(k), mean) if z > 0 else stats.poisson.cdf(math.floor(k), mean)
        freq = np.mean(samples > math.floor(k)) if z > 0 else np.mean(samples <= math.floor(k))
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_skellam_matches_its_pmf():
    variance = 9.0
    samples = dpnoise.skellam(variance, 200_000, SeededRandom.from_int(51))
    support = np.arange(-80, 81)
    assert _chi_square_pvalue(samples, support, stats.skellam.pmf(support, variance / 2, variance / 2)) > 1e-4


def test_sums_of_skellam_shares_are_skellam_with_the_summed_variance():
    shares, share_variance, n = 10, 3.3, 60_000
    rng = SeededRandom.from_int(52)
    total = sum(dpnoise.skellam(share_variance, n, rng) for _ in range(shares))
    variance = shares * share_variance
    assert abs(total.var() / variance - 1) < 5 * math.sqrt(2 / n)
    support = np.arange(-150, 151)
    mu = variance / 2
    assert _chi_square_pvalue(total, support, stats.skellam.pmf(support, mu, mu)) > 1e-4


def test_samplers_are_deterministic_given_the_stream_and_differ_across_streams():
    for sampler in (dpnoise.skellam, dpnoise.discrete_gaussian):
        a = sampler(1e6, 1000, SeededRandom.from_int(7))
        b = sampler(1e6, 1000, SeededRandom.from_int(7))
        c = sampler(1e6, 1000, SeededRandom.from_int(8))
        assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 2.0**51])
def test_out_of_range_parameters_are_refused(bad):
    rng = SeededRandom.from_int(0)
    for sampler in (dpnoise.skellam, dpnoise.discrete_gaussian, dpnoise.poisson):
        with pytest.raises(ValueError):
            sampler(bad, 10, rng)
    with pytest.raises(ValueError):
        dpnoise.discrete_laplace(0, 10, rng)


def test_zero_variance_is_no_noise():
    rng = SeededRandom.from_int(0)
    assert not dpnoise.skellam(0.0, 5, rng).any() and not dpnoise.discrete_gaussian(0.0, 5, rng).any()

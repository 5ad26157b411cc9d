"""Participant-level accounting, cross-checked against Google's dp-accounting and against exact
Renyi divergences computed from the pmfs."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special, stats

from fedmask.ddp import accounting as acc
from fedmask.ddp.mechanism import l1_bound

DELTA = 1e-5


def _dp_accounting_epsilon(event, count: int, delta: float = DELTA) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(acc.RDP_ORDERS))
    accountant.compose(event, count)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("noise_multiplier", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("rounds", [1, 10, 1000])
def test_gaussian_rdp_and_conversion_match_dp_accounting(noise_multiplier, rounds):
    ours = acc.epsilon_from_rdp(rounds * acc.gaussian_rdp(4.0, 4.0 * noise_multiplier**2), DELTA)[0]
    theirs = _dp_accounting_epsilon(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    assert math.isclose(ours, theirs, rel_tol=1e-9)


# The grid the calibration actually produces: integer sensitivities of 10^4..10^10 units and
# noise multipliers 0.5..5 (epsilon ~ 8 .. 0.3 per round).
GRID = [
    (l2_sq, z, padded, survivors, rounds)
    for l2_sq in (10**4, 10**8, 10**10)
    for z in (0.5, 1.0, 5.0)
    for padded in (1 << 10, 1 << 20)
    for survivors, rounds in ((3, 1), (10, 20), (100, 300))
]


@pytest.mark.parametrize("mechanism", [acc.SKELLAM, acc.DISCRETE_GAUSSIAN])
def test_distributed_noise_epsilon_matches_dp_accounting_within_one_percent(mechanism):
    """The summed discrete noise at the calibrated scales: our epsilon (the papers' bounds,
    composed) is never below dp-accounting's Gaussian mechanism with the same central variance,
    never above dp-accounting's zCDP form of the same bound, and within 1% of both."""
    for l2_sq, z, padded, survivors, rounds in GRID:
        local = z * z * l2_sq / survivors
        l1 = l1_bound(l2_sq, padded)
        record = acc.NoiseRecord(mechanism, survivors, local, l2_sq, l1, padded)
        ours = acc.epsilon_from_rdp(rounds * record.rdp(), DELTA)[0]
        gaussian = _dp_accounting_epsilon(dp_accounting.GaussianDpEvent(z), rounds)
        central = survivors * local
        if mechanism == acc.SKELLAM:
            # each branch of the bound's minimum alone is a (rho, xi)-zCDP statement
            v = central
            branches = [
                dp_accounting.ZCDpEvent(
                    l2_sq / (2 * v) + l2_sq / (2 * v * v), max(0.0, (6 * l1 - l2_sq) / (4 * v * v))
                ),
                dp_accounting.ZCDpEvent(l2_sq / (2 * v), 3 * l1 / (2 * v)),
            ]
        else:
            k = np.arange(1, survivors)
            tau = 10 * float(np.sum(np.exp(-2 * math.pi**2 * local * k / (k + 1))))
            branches = [dp_accounting.ZCDpEvent((math.sqrt(l2_sq / central) + tau * math.sqrt(padded)) ** 2 / 2)]
        upper = min(_dp_accounting_epsilon(event, rounds) for event in branches)
        case = (l2_sq, z, padded, survivors, rounds)
        assert gaussian * (1 - 1e-12) <= ours <= upper * (1 + 1e-12), case
        assert ours <= 1.01 * gaussian, case
        assert upper <= 1.01 * ours, case


@pytest.mark.parametrize("local_variance,survivors,l2_sq", [(0.5, 10, 1), (0.5, 10, 100), (0.2, 3, 4), (1.0, 50, 4)])
def test_discrete_gaussian_bound_with_small_noise_matches_dp_accounting(local_variance, survivors, l2_sq):
    """Small shares, where the tau terms of Kairouz et al. matter: the per-order minimum of the
    three forms equals the best of dp-accounting's three zCDP events (to 1%)."""
    padded = 16
    l1 = l1_bound(l2_sq, padded)
    record = acc.NoiseRecord(acc.DISCRETE_GAUSSIAN, survivors, local_variance, l2_sq, l1, padded)
    ours = record.epsilon(DELTA)
    k = np.arange(1, survivors)
    tau = 10 * float(np.sum(np.exp(-2 * math.pi**2 * local_variance * k / (k + 1))))
    a = math.sqrt(l2_sq / (survivors * local_variance))
    b = l1 / math.sqrt(survivors * local_variance)
    events = [
        dp_accounting.ZCDpEvent(a * a / 2, tau * padded),
        dp_accounting.ZCDpEvent((a * a + 2 * b * tau + tau * tau * padded) / 2),
        dp_accounting.ZCDpEvent((a + tau * math.sqrt(padded)) ** 2 / 2),
    ]
    best = min(_dp_accounting_epsilon(e, 1) for e in events)
    assert tau > 1e-4
    assert ours <= best * (1 + 1e-12) and ours >= 0.99 * best


def _renyi(log_p: np.ndarray, log_q: np.ndarray, alpha: int) -> float:
    return float(special.logsumexp(alpha * log_p + (1 - alpha) * log_q) / (alpha - 1))


@pytest.mark.parametrize("variance", [4.0, 20.0, 100.0])
@pytest.mark.parametrize("shift", [1, 3])
def test_skellam_bound_holds_against_the_exact_renyi_divergence(variance, shift):
    """1-D Skellam shifted by an integer: the exact divergence from the pmf is below the bound,
    and the bound is tight (within 3%) at large variance and low order."""
    half = int(shift + 30 * math.sqrt(variance) + 40)
    support = np.arange(-half, half + 1)
    log_q = stats.skellam.logpmf(support, variance / 2, variance / 2)
    log_p = stats.skellam.logpmf(support - shift, variance / 2, variance / 2)
    for alpha in (2, 4, 16, 64):
        exact = _renyi(log_p, log_q, alpha)
        bound = acc.skellam_rdp(shift * shift, shift, variance, [alpha])[0]
        assert exact <= bound
    if variance >= 100:
        assert acc.skellam_rdp(shift * shift, shift, variance, [2])[0] <= 1.03 * _renyi(log_p, log_q, 2)


def test_single_discrete_gaussian_bound_is_exact_and_sums_of_two_stay_below_it():
    support = np.arange(-60, 61)
    for variance in (0.3, 2.0, 10.0):
        log_pmf = -(support.astype(float) ** 2) / (2 * variance)
        log_pmf -= special.logsumexp(log_pmf)
        # the sum of two shares, by convolution in the log domain, on -60..60
        pairs = log_pmf[:, None] + log_pmf[None, :]
        index = support[:, None] + support[None, :]
        log_two = np.array([special.logsumexp(pairs[index == k]) for k in support])
        for shift in (1, 2):
            inner = slice(shift, support.size)  # k with k - shift still in the table
            shifted = slice(0, support.size - shift)
            for alpha in (2, 8):
                exact = _renyi(log_pmf[shifted], log_pmf[inner], alpha)
                single = acc.distributed_discrete_gaussian_rdp(shift**2, shift, variance, 1, 1, [alpha])[0]
                assert math.isclose(exact, single, rel_tol=1e-6)  # Canonne et al.: equality
                exact_two = _renyi(log_two[shifted], log_two[inner], alpha)
                bound_two = acc.distributed_discrete_gaussian_rdp(shift**2, shift, variance, 2, 1, [alpha])[0]
                assert exact_two <= bound_two * (1 + 1e-9)


def test_fewer_survivors_mean_a_larger_epsilon():
    records = [acc.NoiseRecord(acc.SKELLAM, s, 1e6, 10**6, 1e6, 1024) for s in (3, 5, 10)]
    epsilons = [r.epsilon(DELTA) for r in records]
    assert epsilons[0] > epsilons[1] > epsilons[2]


def test_accountant_composes_rounds_and_reports_each_round():
    accountant = acc.DistributedDPAccountant(DELTA)
    assert accountant.get_epsilon() == 0.0
    records = [acc.NoiseRecord(acc.DISCRETE_GAUSSIAN, s, 4e6, 10**6, 1e6, 1024) for s in (10, 7, 10)]
    results = [accountant.step(r) for r in records]
    assert results[1].round_epsilon > results[0].round_epsilon  # 7 survivors: less noise
    assert results[0].cumulative_epsilon < results[1].cumulative_epsilon < results[2].cumulative_epsilon
    composed = acc.epsilon_from_rdp(sum(r.rdp() for r in records), DELTA)[0]
    assert results[2].cumulative_epsilon == composed == accountant.get_epsilon()
    # equal to dp-accounting's Gaussian composition at this scale (tau ~ 0)
    z = [math.sqrt(r.survivors * r.local_variance / r.l2_sensitivity_sq) for r in records]
    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(x) for x in z])
    assert math.isclose(composed, _dp_accounting_epsilon(event, 1), rel_tol=1e-9)


def test_accountant_state_round_trips_and_bad_states_are_refused():
    accountant = acc.DistributedDPAccountant(DELTA)
    for s in (5, 4, 6):
        accountant.step(acc.NoiseRecord(acc.SKELLAM, s, 2e5, 10**5, 3e5, 256))
    state = accountant.state_dict()
    restored = acc.DistributedDPAccountant(DELTA)
    restored.load_state_dict(state)
    assert restored.get_epsilon() == accountant.get_epsilon() and len(restored) == 3
    with pytest.raises(ValueError, match="delta"):
        acc.DistributedDPAccountant(1e-6).load_state_dict(state)
    broken = {**state, "history": [{**state["history"][0], "survivors": 0}]}
    with pytest.raises(ValueError, match="survivors"):
        acc.DistributedDPAccountant(DELTA).load_state_dict(broken)
    with pytest.raises(ValueError, match="fields"):
        acc.DistributedDPAccountant(DELTA).load_state_dict({**state, "history": [{"mechanism": "skellam"}]})
    with pytest.raises(ValueError, match="version"):
        acc.DistributedDPAccountant(DELTA).load_state_dict({"history": []})


def test_a_round_without_noise_has_no_finite_epsilon():
    accountant = acc.DistributedDPAccountant(DELTA)
    result = accountant.step(acc.NoiseRecord(acc.NONE, 5, 0.0, 100, 10.0, 16))
    assert result.round_epsilon == math.inf and accountant.get_epsilon() == math.inf


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"mechanism": "laplace"}, "mechanism"),
        ({"survivors": 0}, "survivors"),
        ({"local_variance": -1.0}, "local_variance"),
        ({"local_variance": 0.0}, "positive local_variance"),
        ({"l2_sensitivity_sq": 2.5}, "l2_sensitivity_sq"),
        ({"dimension": 0}, "dimension"),
    ],
)
def test_noise_records_are_validated(fields, match):
    base = {
        "mechanism": acc.SKELLAM,
        "survivors": 3,
        "local_variance": 10.0,
        "l2_sensitivity_sq": 4,
        "l1_sensitivity": 2.0,
        "dimension": 8,
    }
    with pytest.raises(ValueError, match=match):
        acc.NoiseRecord(**{**base, **fields})


def test_conversion_refuses_bad_input():
    rdp = acc.gaussian_rdp(1.0, 1.0)
    with pytest.raises(ValueError):
        acc.epsilon_from_rdp(rdp, 0.0)
    with pytest.raises(ValueError):
        acc.epsilon_from_rdp(rdp[:-1], DELTA)
    with pytest.raises(ValueError):
        acc.epsilon_from_rdp(-rdp, DELTA)

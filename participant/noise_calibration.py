"""The noise a participant's DP-SGD needs: the smallest multiplier that keeps a planned schedule
of steps within its (epsilon, delta) budget, and the calibration release's."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from fedmask.adapter import calibration
from fedmask.adapter.config import ConfigError, TrainingConfig
from fedmask.participant.ledger import (
    compute_epsilon,
)


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    also: tuple[tuple[float, float, int], ...] = (),
) -> float:
    """The smallest noise multiplier (to 1% of epsilon) that keeps ``steps`` Poisson-sampled
    steps at ``sample_rate`` within (epsilon, delta) under the named Opacus accountant, together
    with the events in ``also`` ((noise multiplier, sample rate, steps), e.g. the calibration
    release).

    Plan the whole schedule at once (rounds x local steps): noise set per round from the
    budget left would spend most of it in the first rounds. Cached, and searched with few calls
    of the accountant (a tenth of a second or more each under PRV), from the estimate of the
    Gaussian-DP central limit theorem (microseconds).
    """
    if compute_epsilon(accountant, list(also), delta) >= epsilon:
        raise ConfigError(f"the budget epsilon={epsilon:g} is spent by {also} before any step")

    def spent(noise: float) -> float:
        return compute_epsilon(accountant, [(noise, sample_rate, steps), *also], delta)

    return _smallest_noise(spent, epsilon, _central_limit_guess(epsilon, delta, sample_rate, steps, also))


def _central_limit_guess(
    epsilon: float, delta: float, sample_rate: float, steps: int, also: tuple[tuple[float, float, int], ...]
) -> float:
    """The noise multiplier at which Gaussian DP's central limit theorem (Bu, Dong, Long and Su
    2020: mu = q sqrt(T (e^(1/z^2) - 1)) for T steps at rate q) spends (epsilon, delta) with the
    events in ``also`` (sqrt(T)/z exactly where unsampled). Not a bound: where the search
    starts. At these step counts the theorem is optimistic: 4-7% below PRV's answer from
    epsilon 0.5 to 8 (tens to a thousand steps), so the first step of 10% usually brackets it."""
    mu_squared = calibration.gaussian_dp_mu(epsilon, delta) ** 2
    for noise, rate, count in also:
        mu_squared -= count / noise**2 if rate >= 1 else rate**2 * count * math.expm1(1 / noise**2)
    if mu_squared <= 0:
        return 10.0
    return 1.0 / math.sqrt(math.log1p(mu_squared / (sample_rate**2 * steps)))


def _smallest_noise(spent: Callable[[float], float], epsilon: float, guess: float) -> float:
    """The smallest noise multiplier z with ``epsilon - spent(z)`` in [0, 1% of epsilon], for a
    ``spent`` that decreases with z: a bracket walked out from ``guess`` in steps of 10% (growing
    if it has far to go), then regula falsi on epsilon against log z (Illinois: an end kept
    twice has its weight halved, so neither end sticks)."""
    z, value = guess, spent(guess)
    step = 1.1
    if value > epsilon:  # too little noise: walk up until within budget
        while value > epsilon:
            low, spent_low = z, value
            z *= step
            step = min(step * 1.5, 2.0)
            if z > 1e6:
                raise ConfigError(f"no noise multiplier keeps the steps within epsilon={epsilon:g}")
            value = spent(z)
        high, spent_high = z, value
    else:  # within budget: walk down until over it, unless already within 1%
        while value <= epsilon:
            if epsilon - value <= 0.01 * epsilon:
                return z
            high, spent_high = z, value
            z /= step
            step = min(step * 1.5, 2.0)
            value = spent(z)
        low, spent_low = z, value
    target = 0.995 * epsilon
    over, under = spent_low - target, spent_high - target  # > 0 at the low end, < 0 at the high end
    kept = 0
    for _ in range(60):
        if epsilon - spent_high <= 0.01 * epsilon:
            break
        log_low, log_high = math.log(low), math.log(high)
        middle = math.exp(log_low + over / (over - under) * (log_high - log_low))
        value = spent(middle)
        if value > epsilon:
            low, spent_low, over = middle, value, value - target
            under = under / 2 if kept == -1 else under
            kept = -1
        else:
            high, spent_high, under = middle, value, value - target
            over = over / 2 if kept == 1 else over
            kept = 1
    return high


def calibration_noise_multiplier(config: TrainingConfig) -> float | None:
    """The calibration release's noise multiplier, BUDGET_SHARE of the budget in Gaussian-DP
    terms (:func:`fedmask.adapter.calibration.calibration_noise`); ``None`` when the config plans
    no calibration."""
    if not config.calibrates:
        return None
    return calibration.calibration_noise(config.target_epsilon, config.target_delta)

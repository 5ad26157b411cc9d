"""Distributed differential privacy under secure aggregation.

Each participant adds a share of integer noise to its encoded update before masking; the
unmasked sum then carries the whole noise, and the coordinator never sees an update, nor a sum,
without it. References: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation" (ICML 2021); Agarwal, Kairouz, Liu, "The Skellam
Mechanism for Differentially Private Federated Learning" (NeurIPS 2021).

The participant's encoding (``encode_with_noise``):
    clip to L2 norm C -> rotate (randomised Hadamard, public per-round seed, padded to n = 2^k)
    -> scale by gamma -> conditional randomised rounding (redrawn until the integer vector's
    norm is at most Delta_2) -> add noise (Skellam or discrete Gaussian, exact samplers)
    -> reduce mod 2^b.
The coordinator's decoding (``decode_sum``): lift the unmasked sum to the centred range, refuse
it if any coordinate lies outside the validated bound (a wrap-around, or a participant that did
not follow the encoding), divide by gamma, rotate back, divide by the number of survivors.

``calibrate`` turns the round configuration into a plan: the largest scale gamma whose sum still
fits the modulus with the required probability, and the smallest noise that meets the privacy
target when only the minimum number of survivors t is left. With more survivors there is more
noise in the sum; ``AggregateNoisePlan.noise_record(survivors)`` gives the record from which the
accountant computes the real epsilon of each round.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedmask.ddp import samplers as dpnoise
from fedmask.ddp.accounting import RDP_ORDERS, NoiseRecord, epsilon_from_rdp, gaussian_rdp
from fedmask.ddp.rotation import padded_dimension, rotate, unrotate
from fedmask.secagg.encoding import (
    ImplausibleSum,
    centered_lift,
    clip_l2,
    l2_norm,
    randomized_round,
    to_modular,
)
from fedmask.secagg.errors import ParameterError, SecAggError
from fedmask.secagg.rand import RandomSource, SeededRandom

# Integers on the encoding path stay far inside float64's exact range.
MAX_SCALED_NORM = 2.0**40
MAX_SUM_BOUND = 2**52
# A participant whose rounding misses the bound this many times in a row has an update larger
# than it claims (each try fails with probability below beta = e^-1/2 for an honest update).
MAX_ROUNDING_TRIES = 100


class AggregateNoise(enum.Enum):
    NONE = "none"
    SKELLAM = "skellam"
    DISCRETE_GAUSSIAN = "discrete_gaussian"

    @classmethod
    def parse(cls, value: str | AggregateNoise) -> AggregateNoise:
        if isinstance(value, cls):
            return value
        for member in cls:
            if value == member.value:
                return member
        raise ParameterError(f"aggregate_noise must be one of {', '.join(m.value for m in cls)}, got {value!r}")


class BudgetScope(enum.Enum):
    """Whether ``epsilon`` bounds each round or the whole run of ``rounds`` rounds."""

    PER_ROUND = "per-round"
    RUN = "run"


class WrapAroundDetected(SecAggError):
    """The unmasked sum has coordinates outside the validated bound: it wrapped around 2^b, or
    a participant did not follow the encoding. The sum must not be used."""

    def __init__(self, count: int, bound: int) -> None:
        self.count = count
        self.bound = bound
        super().__init__(
            f"{count} coordinate(s) of the sum lie outside +/-{bound}: the sum wrapped around the "
            "modulus or a participant sent an out-of-range encoding; the round's sum is refused"
        )


@dataclass(frozen=True)
class AggregateNoiseConfig:
    """The round configuration of distributed DP; every field is stated and echoed to the ledger.

    clip_norm        C, the L2 bound of one participant's update (before scaling)
    dimension        d, the length of the update vector
    modulus_bits     b, the secure-aggregation modulus 2^b
    max_participants n, the most participants whose encodings can be summed (wrap-around bound)
    min_survivors    t, the fewest whose sum the coordinator can obtain (the privacy bound)
    epsilon, delta   participant-level target, for one round or the run (``budget_scope``)
    rounds           rounds in the run
    wrap_probability bound on the chance that one round's sum wraps around 2^b
    detection_bits   headroom kept above the bound: a coordinate that wrapped anyway (or that a
                     participant sent out of range) lands outside the bound, and is refused,
                     with probability about 1 - 2^-detection_bits
    rounding_beta    conditional rounding redraws with probability at most beta per try
    """

    mechanism: AggregateNoise
    clip_norm: float
    dimension: int
    modulus_bits: int
    max_participants: int
    min_survivors: int
    epsilon: float | None = None
    delta: float | None = None
    rounds: int | None = None
    budget_scope: BudgetScope | None = None
    wrap_probability: float = 2.0**-40
    detection_bits: int = 1
    rounding_beta: float = math.exp(-0.5)

    def validate(self) -> None:
        if not isinstance(self.mechanism, AggregateNoise):
            raise ParameterError(f"mechanism must be an AggregateNoise, got {self.mechanism!r}")
        _positive_finite("clip_norm", self.clip_norm)
        _integer_in("dimension", self.dimension, 1, 1 << 30)
        _integer_in("modulus_bits", self.modulus_bits, 2, 64)
        _integer_in("max_participants", self.max_participants, 1, 1 << 32)
        _integer_in("min_survivors", self.min_survivors, 1, self.max_participants)
        if not (isinstance(self.wrap_probability, float) and 0 < self.wrap_probability <= 1e-6):
            raise ParameterError(f"wrap_probability must be a float in (0, 1e-6], got {self.wrap_probability!r}")
        _integer_in("detection_bits", self.detection_bits, 0, min(8, self.modulus_bits - 2))
        if not (isinstance(self.rounding_beta, float) and 0 < self.rounding_beta < 1):
            raise ParameterError(f"rounding_beta must be a float in (0, 1), got {self.rounding_beta!r}")
        privacy = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rounds": self.rounds,
            "budget_scope": self.budget_scope,
        }
        if self.mechanism is AggregateNoise.NONE:
            given = sorted(name for name, value in privacy.items() if value is not None)
            if given:
                raise ParameterError(f"aggregate_noise 'none' adds no noise; remove {', '.join(given)}")
            return
        missing = sorted(name for name, value in privacy.items() if value is None)
        if missing:
            raise ParameterError(f"aggregate_noise {self.mechanism.value!r} needs {', '.join(missing)}")
        _positive_finite("epsilon", self.epsilon)
        if not (isinstance(self.delta, float) and 0 < self.delta < 1):
            raise ParameterError(f"delta must be a float in (0, 1), got {self.delta!r}")
        _integer_in("rounds", self.rounds, 1, 1 << 20)
        if not isinstance(self.budget_scope, BudgetScope):
            raise ParameterError(f"budget_scope must be a BudgetScope, got {self.budget_scope!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AggregateNoiseConfig:
        """Parse a round configuration (e.g. from JSON): strings for the enums, unknown keys refused."""
        if not isinstance(raw, Mapping):
            raise ParameterError("the aggregate-noise configuration must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(f"unknown aggregate-noise settings: {', '.join(unknown)}")
        values = dict(raw)
        if "mechanism" not in values:
            raise ParameterError("the aggregate-noise configuration needs 'mechanism'")
        values["mechanism"] = AggregateNoise.parse(values["mechanism"])
        scope = values.get("budget_scope")
        if scope is not None and not isinstance(scope, BudgetScope):
            try:
                values["budget_scope"] = BudgetScope(scope)
            except ValueError:
                raise ParameterError(
                    f"budget_scope must be one of {', '.join(s.value for s in BudgetScope)}, got {scope!r}"
                ) from None
        try:
            config = cls(**values)
        except TypeError as exc:
            raise ParameterError(f"the aggregate-noise configuration is incomplete: {exc}") from None
        config.validate()
        return config

    def describe(self) -> dict[str, object]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


def _positive_finite(name: str, value: object) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ParameterError(f"{name} must be a positive finite number, got {value!r}")


def _integer_in(name: str, value: object, low: int, high: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise ParameterError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def rounded_norm_bound_sq(scaled_clip: float, padded: int, beta: float) -> int:
    """Delta_2^2: the squared L2 bound conditional rounding enforces on the integer vector.

    For ||x|| <= c, randomised rounding stays within c^2 + n/4 + sqrt(2 ln(1/beta)) (c + sqrt(n)/2)
    with probability >= 1 - beta (Kairouz et al. 2021, Lemma 22), and always within
    (c + sqrt(n))^2. Privacy rests only on the check of the rounded vector against this number.
    """
    probable = scaled_clip**2 + padded / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(padded) / 2)
    certain = (scaled_clip + math.sqrt(padded)) ** 2
    return math.floor(min(probable, certain))


def l1_bound(l2_sensitivity_sq: int, padded: int) -> float:
    """An integer vector's L1 norm is at most sqrt(n) ||x||_2 and at most ||x||_2^2."""
    l2 = math.sqrt(l2_sensitivity_sq)
    return l2 * min(math.sqrt(padded), l2)


def _noise_tail(mechanism: AggregateNoise, participants: int, local_variance: float, probability: float) -> float:
    """y with P(|sum of the participants' noise in one coordinate| >= y) <= probability."""
    if mechanism is AggregateNoise.NONE or local_variance == 0:
        return 0.0
    total = participants * local_variance
    log_target = math.log(probability / 2)
    if mechanism is AggregateNoise.DISCRETE_GAUSSIAN:
        # each share is local_variance-subgaussian (Canonne, Kamath, Steinke 2020), so is the sum
        return math.sqrt(-2 * total * log_target)
    # Skellam: Poisson(L) - Poisson(L), L = total / 2; Chernoff with s = asinh(y / 2L):
    # ln P(X >= y) <= -y asinh(y / 2L) + 2L (sqrt(1 + (y / 2L)^2) - 1)
    lam = total / 2

    def log_tail(y: float) -> float:
        r = y / (2 * lam)
        return -y * math.asinh(r) + 2 * lam * (math.sqrt(1 + r * r) - 1)

    low, high = 0.0, math.sqrt(-2 * total * log_target) + 1
    while log_tail(high) > log_target:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        if log_tail(mid) > log_target:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class AggregateNoisePlan:
    """What ``calibrate`` chose. Integer units are those of the encoded vectors (value * scale)."""

    config: AggregateNoiseConfig
    scale: float  # gamma
    padded_dimension: int  # the secure-aggregation dimension
    local_variance: float  # noise per participant and coordinate (0 for 'none')
    l2_sensitivity_sq: int  # Delta_2^2
    l1_sensitivity: float  # Delta_1
    sum_bound: int  # |each coordinate of the sum| <= sum_bound but with prob <= wrap_probability
    round_epsilon: float  # one round, min_survivors left (inf for 'none')
    planned_epsilon: float  # all planned rounds, min_survivors each time (inf for 'none')

    @property
    def modulus_bits(self) -> int:
        return self.config.modulus_bits

    @property
    def headroom_bits(self) -> float:
        """How many bits the modulus has beyond what the centred sum needs."""
        return self.config.modulus_bits - math.log2(2 * self.sum_bound + 1)

    def expected_mse(self, survivors: int) -> float:
        """Expected squared error per coordinate of the decoded average vs the average of the
        clipped updates: (noise + rounding) / (gamma^2 s), rounding variance at most 1/4."""
        return (self.local_variance + 0.25) / (self.scale**2 * survivors)

    def expected_noise_norm(self, survivors: int) -> float:
        """Expected L2 norm of the error in the decoded mean: sqrt(dimension * expected_mse)
        (the rotation spreads the noise evenly, and decoding drops the padding's share). A
        clipped update, and so the mean, has norm at most ``clip_norm``: their ratio says whether
        the noise swamps the signal."""
        return math.sqrt(self.config.dimension * self.expected_mse(survivors))

    def noise_to_clip(self, survivors: int) -> float:
        """The decoded mean's expected error norm over the clip norm (above 1: noise swamps signal)."""
        return self.expected_noise_norm(survivors) / self.config.clip_norm

    def check_survivors(self, survivors: int) -> None:
        low, high = self.config.min_survivors, self.config.max_participants
        if not (isinstance(survivors, int) and low <= survivors <= high):
            raise ParameterError(f"the plan holds for {low}..{high} survivors, got {survivors!r}")

    def noise_record(self, survivors: int) -> NoiseRecord:
        """The noise of a round that ended with ``survivors`` inputs in the sum (for the accountant)."""
        self.check_survivors(survivors)
        return NoiseRecord(
            self.config.mechanism.value,
            survivors,
            self.local_variance,
            self.l2_sensitivity_sq,
            self.l1_sensitivity,
            self.padded_dimension,
        )

    def describe(self) -> dict[str, object]:
        return {
            **self.config.describe(),
            "scale": self.scale,
            "padded_dimension": self.padded_dimension,
            "local_noise_variance": self.local_variance,
            "l2_sensitivity_sq": self.l2_sensitivity_sq,
            "l1_sensitivity": self.l1_sensitivity,
            "sum_bound": self.sum_bound,
            "headroom_bits": self.headroom_bits,
            "round_epsilon_at_min_survivors": self.round_epsilon,
            "planned_epsilon": self.planned_epsilon,
            "expected_mse_at_min_survivors": self.expected_mse(self.config.min_survivors),
            "expected_mse_at_max_participants": self.expected_mse(self.config.max_participants),
            "noise_to_clip_at_min_survivors": self.noise_to_clip(self.config.min_survivors),
            "noise_to_clip_at_max_participants": self.noise_to_clip(self.config.max_participants),
        }


def _privacy_target(config: AggregateNoiseConfig) -> tuple[float, float, int]:
    """(epsilon, delta, rounds) of a mechanism that adds noise; ``validate`` requires all three."""
    if config.epsilon is None or config.delta is None or config.rounds is None:
        raise ParameterError(f"aggregate_noise {config.mechanism.value!r} needs epsilon, delta and rounds")
    return config.epsilon, config.delta, config.rounds


def _composed_epsilon(delta: float, record: NoiseRecord, rounds: int) -> float:
    return epsilon_from_rdp(rounds * record.rdp(), delta)[0]


def _budget_rounds(config: AggregateNoiseConfig, rounds: int) -> int:
    return rounds if config.budget_scope is BudgetScope.RUN else 1


def _minimal_variance(config: AggregateNoiseConfig, l2_sq: int, l1: float, padded: int) -> float:
    """The smallest local variance (to 1e-9 relative) meeting the target with t survivors."""
    target_epsilon, delta, run_rounds = _privacy_target(config)
    rounds = _budget_rounds(config, run_rounds)
    t = config.min_survivors
    mechanism = config.mechanism.value

    def epsilon(variance: float) -> float:
        return _composed_epsilon(delta, NoiseRecord(mechanism, t, variance, l2_sq, l1, padded), rounds)

    # start from the Gaussian mechanism's variance, which never needs more noise
    high = _gaussian_variance(target_epsilon, delta, rounds, l2_sq) / t
    low = high / 2
    while epsilon(high) > target_epsilon:
        low, high = high, high * 2
        if high > 2 * dpnoise.MAX_VARIANCE:
            return math.inf
    while epsilon(low) <= target_epsilon:
        low, high = low / 2, low
    while high - low > 1e-9 * high:
        mid = math.sqrt(low * high) if low > 0 else high / 2
        if epsilon(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def _gaussian_variance(epsilon: float, delta: float, rounds: int, l2_sq: float) -> float:
    """The central Gaussian mechanism's variance for (epsilon, delta) over ``rounds`` (RDP).
    Its RDP depends on l2_sq / variance only, so one search at unit sensitivity serves all."""
    return l2_sq * _unit_gaussian_variance(epsilon, delta, rounds)


@functools.lru_cache(maxsize=256)
def _unit_gaussian_variance(epsilon: float, delta: float, rounds: int) -> float:
    def eps(variance: float) -> float:
        return epsilon_from_rdp(rounds * gaussian_rdp(1.0, variance), delta)[0]

    low, high = 1e-6, 1.0
    while eps(high) > epsilon:
        low, high = high, high * 4
    while eps(low) <= epsilon:
        low, high = low / 4, low
    while high - low > 1e-12 * high:
        mid = (low + high) / 2
        if eps(mid) > epsilon:
            low = mid
        else:
            high = mid
    return high


def central_gaussian_variance(epsilon: float, delta: float, rounds: int, clip_norm: float) -> float:
    """Variance of the central Gaussian mechanism on the sum of updates clipped to ``clip_norm``,
    with the same accounting (RDP, same orders and conversion): the yardstick for the MSE."""
    return _gaussian_variance(epsilon, delta, rounds, clip_norm**2)


def _sum_bound(config: AggregateNoiseConfig, scaled_clip: float, l2_sq: int, variance: float, padded: int) -> int:
    """A bound that every coordinate of the sum of n encodings stays within, but with
    probability at most wrap_probability (half for the updates, half for the noise)."""
    n, p = config.max_participants, config.wrap_probability
    # Updates: the rotated sum HD(sum x_u) has norm <= n c, so each coordinate is a sum with random
    # signs: Hoeffding and a union bound over the n coordinates, plus < 1 of rounding per
    # participant. Never more than n Delta_2, whatever the rotation did. (1 + 1e-9) covers the
    # float error of clipping and rotating.
    spread = n * scaled_clip * (1 + 1e-9) * math.sqrt(2 * math.log(4 * padded / p) / padded) + n
    updates = min(spread, n * math.sqrt(l2_sq))
    noise = _noise_tail(config.mechanism, n, variance, p / (2 * padded))
    return math.ceil(updates + noise)


def _plan_at(config: AggregateNoiseConfig, scale: float) -> AggregateNoisePlan | None:
    """The plan at one scale, or None if its noise is beyond what the samplers support."""
    padded = padded_dimension(config.dimension)
    scaled_clip = config.clip_norm * scale
    l2_sq = max(1, rounded_norm_bound_sq(scaled_clip, padded, config.rounding_beta))
    l1 = l1_bound(l2_sq, padded)
    if config.mechanism is AggregateNoise.NONE:
        variance, round_eps, planned = 0.0, math.inf, math.inf
    else:
        variance = _minimal_variance(config, l2_sq, l1, padded)
        if variance > dpnoise.MAX_VARIANCE:
            return None
        _, delta, rounds = _privacy_target(config)
        record = NoiseRecord(config.mechanism.value, config.min_survivors, variance, l2_sq, l1, padded)
        round_eps = record.epsilon(delta)
        planned = _composed_epsilon(delta, record, rounds)
    bound = _sum_bound(config, scaled_clip, l2_sq, variance, padded)
    return AggregateNoisePlan(config, scale, padded, variance, l2_sq, l1, bound, round_eps, planned)


def _fits(plan: AggregateNoisePlan | None) -> bool:
    if plan is None:
        return False
    usable = plan.config.modulus_bits - 1 - plan.config.detection_bits
    limit = min((1 << usable) - 1, MAX_SUM_BOUND)
    return plan.sum_bound <= limit


def calibrate(config: AggregateNoiseConfig) -> AggregateNoisePlan:
    """The largest scale (least rounding error) whose sum fits the modulus, with the least noise
    that meets the privacy target when only ``min_survivors`` contribute.

    Raises ParameterError, naming the bits needed, if even a scale that maps the clip norm to
    one integer unit would let the sum wrap around.
    """
    config.validate()
    # scaled clip norm c = C * gamma searched on a log scale between 1 and 2^40
    low_c, high_c = 1.0, MAX_SCALED_NORM
    smallest = _plan_at(config, low_c / config.clip_norm)
    if smallest is None:
        raise ParameterError("the noise this target needs is beyond what the samplers support (2^50)")
    if not _fits(smallest):
        needed = math.log2(2 * smallest.sum_bound + 1)
        raise ParameterError(
            f"even at scale {smallest.scale:.3g} (clip norm -> 1 unit) the sum of "
            f"{config.max_participants} encodings needs {needed:.1f} bits, more than the modulus's "
            f"{config.modulus_bits} less {config.detection_bits} for wrap detection: raise "
            "modulus_bits, lower the dimension or relax the privacy target"
        )
    largest = _plan_at(config, high_c / config.clip_norm)
    if largest is not None and _fits(largest):
        return largest
    best: AggregateNoisePlan = smallest
    for _ in range(36):
        mid = math.sqrt(low_c * high_c)
        plan = _plan_at(config, mid / config.clip_norm)
        if plan is not None and _fits(plan):
            best, low_c = plan, mid
        else:
            high_c = mid
    return best


def squared_norm_exact(values: np.ndarray) -> int:
    """sum(values^2) for an int64 vector with |values| < 2^40, exactly (20-bit limbs)."""
    if values.size == 0:
        return 0
    total = 0
    # Each partial sum stays below 2^16 * 2^40 = 2^56 (no int64 overflow), and a chunk's
    # temporaries stay in cache.
    chunk = 1 << 16
    for start in range(0, values.size, chunk):
        magnitude = np.abs(values[start : start + chunk])
        if int(magnitude.max()) >= 1 << 40:
            raise ValueError("values must be below 2^40 in magnitude")
        high = magnitude >> 20
        low = magnitude & ((1 << 20) - 1)
        total += (int(np.dot(high, high)) << 40) + (int(np.dot(high, low)) << 21) + int(np.dot(low, low))
    return total


def conditional_round(scaled: np.ndarray, bound_sq: int, rng: RandomSource) -> np.ndarray:
    """Randomised rounding redrawn until the integer vector's squared norm is <= bound_sq."""
    for _ in range(MAX_ROUNDING_TRIES):
        rounded = randomized_round(scaled, rng)
        if squared_norm_exact(rounded) <= bound_sq:
            return rounded
    raise ParameterError(
        f"randomised rounding exceeded the norm bound {MAX_ROUNDING_TRIES} times: the update is "
        "larger than the clip norm allows"
    )


def encode_with_noise(
    update: np.ndarray, plan: AggregateNoisePlan, rotation_seed: bytes, rng: RandomSource
) -> np.ndarray:
    """A participant's update -> its input to secure aggregation: ``plan.padded_dimension``
    integers mod 2^b (uint32 for b <= 32, else uint64), noise share included.

    ``rotation_seed`` is the round's public seed (``rotation.rotation_seed(round_id)``); ``rng``
    must be the participant's own CSPRNG (``SystemRandom`` in production): rounding and noise
    drawn from a seed anyone knows give no privacy.
    """
    update = np.asarray(update, dtype=np.float64)
    if update.shape != (plan.config.dimension,):
        raise ValueError(f"the update must have shape ({plan.config.dimension},), got {update.shape}")
    # Rounding and noise consume ~50 bytes of randomness per value. They are drawn from an
    # AES-256-CTR stream keyed by 32 bytes of the participant's CSPRNG (the construction the
    # masks use): the OS generator is several times slower at this volume.
    stream = SeededRandom(rng.random_bytes(32))
    clipped, _ = clip_l2(update, plan.config.clip_norm)
    scaled = rotate(clipped, rotation_seed)
    scaled *= plan.scale
    encoded = conditional_round(scaled, plan.l2_sensitivity_sq, stream)
    mechanism = plan.config.mechanism
    if mechanism is AggregateNoise.SKELLAM:
        encoded += dpnoise.skellam(plan.local_variance, plan.padded_dimension, stream)
    elif mechanism is AggregateNoise.DISCRETE_GAUSSIAN:
        encoded += dpnoise.discrete_gaussian(plan.local_variance, plan.padded_dimension, stream)
    return to_modular(encoded, plan.config.modulus_bits)


def lift_sum(total: np.ndarray, plan: AggregateNoisePlan) -> np.ndarray:
    """The unmasked sum mod 2^b -> signed integers, refused if any lies outside the bound."""
    total = np.asarray(total)
    if total.shape != (plan.padded_dimension,):
        raise ValueError(f"the sum must have shape ({plan.padded_dimension},), got {total.shape}")
    if total.dtype.kind != "u":
        raise ValueError(f"the sum must be unsigned integers mod 2^b, got {total.dtype}")
    lifted = centered_lift(total, plan.config.modulus_bits)
    outside = int(np.count_nonzero(np.abs(lifted) > plan.sum_bound))
    if outside:
        raise WrapAroundDetected(outside, plan.sum_bound)
    return lifted


# The chance that honest encodings trip the norm check: negligible.
_NORM_CHECK_LOG_PROBABILITY = -40 * math.log(2)


def sum_norm_bound(plan: AggregateNoisePlan, survivors: int) -> float:
    """An L2 bound on the lifted sum of ``survivors`` correct encodings (before unrotation).

    Signal: each conditionally rounded update has norm <= Delta_2. Noise: the sum of the noise
    shares is sub-Gaussian with variance proxy V = survivors * local variance per coordinate, so
    ||N||^2 <= V (d + 2 sqrt(d t) + 2 t) but with probability e^-t (Hsu, Kakade, Zhang 2012),
    t = 40 ln 2; doubled, which also covers Skellam's slightly heavier tail. A check against sums
    no honest round can produce, not a tight one."""
    signal = survivors * math.sqrt(plan.l2_sensitivity_sq)
    if plan.local_variance == 0:
        return signal
    t, d = -_NORM_CHECK_LOG_PROBABILITY, plan.padded_dimension
    variance = survivors * plan.local_variance
    return signal + 2 * math.sqrt(variance * (d + 2 * math.sqrt(d * t) + 2 * t))


def decode_sum(total: np.ndarray, plan: AggregateNoisePlan, rotation_seed: bytes, survivors: int) -> np.ndarray:
    """The coordinator's side: the unmasked sum of ``survivors`` encodings -> the noisy average
    update (``plan.config.dimension`` floats). Refuses a sum out of range (``WrapAroundDetected``)
    or with a norm no correct encodings can reach (``ImplausibleSum``)."""
    plan.check_survivors(survivors)
    lifted = lift_sum(total, plan)
    norm, bound = l2_norm(lifted.astype(np.float64)), sum_norm_bound(plan, survivors)
    if norm > bound:
        raise ImplausibleSum(
            f"the sum has L2 norm {norm:.4g} (scaled), more than {survivors} encodings can reach with "
            f"their noise ({bound:.4g}): a participant did not follow the encoding"
        )
    average = unrotate(lifted.astype(np.float64) / plan.scale, rotation_seed, plan.config.dimension)
    average /= survivors
    return average


__all__ = [
    "RDP_ORDERS",
    "AggregateNoise",
    "AggregateNoiseConfig",
    "AggregateNoisePlan",
    "BudgetScope",
    "WrapAroundDetected",
    "calibrate",
    "central_gaussian_variance",
    "conditional_round",
    "decode_sum",
    "encode_with_noise",
    "lift_sum",
    "rounded_norm_bound_sq",
    "squared_norm_exact",
]

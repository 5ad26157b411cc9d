"""Exact integer noise for distributed DP: discrete Laplace, discrete Gaussian, Poisson, Skellam.

Every sampler is driven by the injected CSPRNG and is exact: the output distribution is the
stated one, not a floating-point approximation of it. They are also vectorised: a vector of a
million values takes a fraction of a second.

How exactness and speed go together
-----------------------------------
All randomness enters as uniform reals U in (0, 1), each known first to its leading 52 bits
(the top bits of a 64-bit draw; the float x = n 2^-52 is then made exactly, by placing the bits
in a float's mantissa, where numpy's uint64 -> float64 conversion would be the slowest pass of
all). The low bits of the draw that made a discrete Laplace proposal give its sign. Each
randomised decision is one of two kinds:

- a Bernoulli(exp(-g)) trial, decided as ``E > g`` with E = -ln U an exponential variate;
- a geometric variate floor(t * E).

In numpy we compute E and g in float64 together with a rigorous bound on their error, which
covers the 52-bit truncation of U (E lies in [-ln(x + 2^-52), -ln(x)]), the rounding of
every float operation, and the error of numpy's ``log``/``log1p``. Only where the exact answer
could lie on either side of the computed one -- inside the error margin, a chance of about
2^-40 per decision -- is the decision handed to ``exactmath``, which reads further bits of the
same U from the CSPRNG and compares it with rational enclosures of exp(-g). So the fast path
never decides anything the exact computation would decide differently.

The one assumption is an accuracy bound for numpy's float64 ``log`` and ``log1p``: relative
error at most ``LOG_RELATIVE_ERROR`` = 2^-46 (about 128 units in the last place; the
implementations in use are accurate to a few units). The margins use four times that bound,
and ``tests/secagg/test_ddp_samplers.py`` checks the assumption against 200-bit references on
this platform.

The samplers
------------
- discrete Laplace DLap(t), P(y) proportional to exp(-|y|/t): a sign bit and a geometric
  magnitude floor(t * E), rejecting "-0".
- discrete Gaussian N_Z(0, s2) (Canonne, Kamath, Steinke, NeurIPS 2020, Algorithm 3): propose
  y ~ DLap(t) with t = floor(sqrt(s2)) + 1, accept with probability
  exp(-(|y| - s2/t)^2 / (2 s2)). s2 is exact (a float is a rational), so is the test.
- Poisson(mu): propose k = m + y with m = floor(mu), y ~ DLap(t), t = floor(sqrt(mu)) + 1, and
  accept with probability exp(D(k) + |k - m|/t - A), where D(k) = ln(P(k)/P(m)) and A is an
  upper bound of D(k) + |k - m|/t computed once per mean from exact enclosures (the log-pmf is
  concave, so the maximum is at a point found in closed form). Fast path: D(k) through
  Stirling's series in float64 with its error bound; slow path: exact enclosures of ln k!.
- Skellam(mu, mu): the difference of two independent Poisson(mu) variates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from fedmask.ddp import exactmath
from fedmask.secagg.rand import RandomSource

LOG_RELATIVE_ERROR = 2.0**-46
_REL = 4 * LOG_RELATIVE_ERROR
_ULP = 2.0**-52  # one unit of float64 rounding, doubled for safety
_LN2 = math.log(2.0)
_LN_2PI = math.log(2 * math.pi)
# The samplers refuse parameters whose integers could leave the exactly representable range
# of float64 (2^53) on the fast path.
MAX_VARIANCE = 2.0**50
# Below this k, the Poisson log-pmf uses a table of ln k!; above, Stirling's series.
_SMALL_K = 64
_LOG_FACTORIAL_TABLE = np.array(
    [float(sum(exactmath.log_factorial(k, 80)) / 2) for k in range(_SMALL_K)], dtype=np.float64
)
# Values drawn per pass: a pass's float64 temporaries (~0.5 MiB each) stay in a core's cache
# while the few dozen numpy passes of a batch run over them. A million values in one batch run
# about twice as long, every pass going out to memory.
_BATCH = 1 << 16


@dataclass
class SamplerStats:
    """Counters a caller may pass in to see how often the exact path ran."""

    proposals: int = 0
    exact_decisions: int = 0


# A 64-bit draw: U's leading _KNOWN_BITS bits are its top bits; the low _SPARE_BITS are free.
_KNOWN_BITS = 52
_SPARE_BITS = np.uint64(64 - _KNOWN_BITS)
_EXPONENT_OF_ONE = np.uint64(0x3FF0000000000000)  # the bits of 1.0: 1.m for a 52-bit mantissa m


def _uniform_u64(rng: RandomSource, count: int) -> np.ndarray:
    return np.frombuffer(rng.random_bytes(8 * count), dtype="<u8")


def _lazy_uniform(u: int, rng: RandomSource) -> exactmath.LazyUniform:
    """The uniform U that the draw ``u`` starts, for the exact path: its leading bits, and
    further bits from ``rng`` on demand."""
    return exactmath.LazyUniform(u >> int(_SPARE_BITS), _KNOWN_BITS, rng)


def _leading_floats(u: np.ndarray) -> np.ndarray:
    """x = (u >> 12) 2^-52 exactly: 1.m - 1 with m the top 52 bits (exact, by Sterbenz)."""
    bits = u >> _SPARE_BITS
    bits |= _EXPONENT_OF_ONE
    x = bits.view(np.float64)
    x -= 1.0
    return x


def _exponential_bounds(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds [lo, hi] on E = -ln U for U uniform in [x, x + 2^-52), x = _leading_floats(u).

    E lies in (-ln(x + 2^-52), -ln(x)], an interval of width ln(1 + 2^-52/x) <= 2^-52/x. With
    L = log(x) off by at most LOG_RELATIVE_ERROR |ln x| (x is exact), hi = -L (1 + rel) + 2^-50
    and lo = -L (1 - rel) - (1.01 2^-52/x + 2^-50) bound it after rounding (rel = 4 times the
    log error: each multiplication, division and addition rounds by at most 2^-53 relative,
    and E <= 52 ln 2 < 37 keeps the absolute rounding below rel |L|).
    """
    x = _leading_floats(u)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x = np.log(x)
        hi = np.multiply(log_x, -(1 + _REL))
        hi += 2.0**-50
        width = np.divide(1.01 * 2.0**-52, x, out=x)
        width += 2.0**-50
        lo = np.multiply(log_x, -(1 - _REL), out=log_x)
        lo -= width
    if hi.max() == np.inf:
        lo[hi == np.inf] = 36.0  # U < 2^-52: E > 52 ln 2 = 36.04...
    return lo, hi


def _geometric(scale: int, u: np.ndarray, rng: RandomSource, stats: SamplerStats | None) -> np.ndarray:
    """floor(scale * E) with E = -ln U: P(X >= k) = exp(-k/scale)."""
    lo, hi = _exponential_bounds(u)
    # The products are rounded down (up) by the 4 ulp taken off (added to) the scale.
    with np.errstate(invalid="ignore"):
        k_lo = np.floor(np.multiply(lo, scale * (1 - 4 * _ULP), out=lo), out=lo)
        k_hi = np.floor(np.multiply(hi, scale * (1 + 4 * _ULP), out=hi), out=hi)
    np.maximum(k_lo, 0, out=k_lo)
    out: npt.NDArray[np.int64] = k_lo.astype(np.int64)
    undecided = np.flatnonzero(k_lo != k_hi)
    for i in undecided:
        out[i] = _geometric_exact(scale, int(u[i]), int(k_lo[i]), rng)
    if stats is not None:
        stats.exact_decisions += int(undecided.size)
    return out


def _geometric_exact(scale: int, u: int, at_least: int, rng: RandomSource) -> int:
    """The same floor(scale * E), for the same U, by exact comparisons U < exp(-k/scale)."""
    uniform = _lazy_uniform(u, rng)
    k = at_least + 1
    while uniform.below_exp_neg(Fraction(k, scale)):
        k += 1
    return k - 1


def discrete_laplace(scale: int, count: int, rng: RandomSource, stats: SamplerStats | None = None) -> np.ndarray:
    """``count`` draws of DLap(scale): P(y) proportional to exp(-|y| / scale), y in Z."""
    if not (isinstance(scale, int) and scale >= 1):
        raise ValueError(f"the discrete Laplace scale must be a positive integer, got {scale!r}")
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = min(count - filled, _BATCH)
        batch = need + need // max(2 * scale, 8) + 16
        u = _uniform_u64(rng, batch)
        values = _geometric(scale, u, rng, stats)
        sign = np.bitwise_and(u, np.uint64(1)).view(np.int64)  # 1: negative (a bit U does not use)
        if not values.all():
            keep = (values != 0) | (sign == 0)  # "-0" would double the weight of 0
            values, sign = values[keep], sign[keep]
        np.negative(sign, out=sign)
        np.bitwise_xor(values, sign, out=values)  # -v = (v ^ -1) + 1 where the sign is -1
        values -= sign
        values = values[:need]
        out[filled : filled + values.size] = values
        filled += values.size
    return out


# gamma[i] exactly, or its enclosures as a function of the bits of precision
ExactGamma = Callable[[int], Fraction | Callable[[int], exactmath.Enclosure]]


def _accept(
    gamma: np.ndarray,
    gamma_error: np.ndarray,
    u: np.ndarray,
    exact_gamma: ExactGamma,
    rng: RandomSource,
    stats: SamplerStats | None,
) -> np.ndarray:
    """Bernoulli(exp(-gamma)) for each entry, decided as E > gamma with E = -ln U.

    ``exact_gamma(i)`` gives gamma[i] exactly (a Fraction) or as enclosures ``f(bits)``, for
    the entries the float margin cannot settle.
    """
    lo, hi = _exponential_bounds(u)
    bound = gamma + gamma_error
    accept: npt.NDArray[np.bool_] = lo > bound
    np.subtract(gamma, gamma_error, out=bound)
    undecided = ~(hi < bound)
    undecided &= ~accept
    indices = np.flatnonzero(undecided) if undecided.any() else ()
    for i in indices:
        accept[i] = _lazy_uniform(int(u[i]), rng).below_exp_neg(exact_gamma(int(i)))
    if stats is not None:
        stats.exact_decisions += len(indices)
    return accept


def _check_variance(name: str, value: float) -> Fraction:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_VARIANCE):
        raise ValueError(f"{name} must be a finite number in [0, 2^50], got {value!r}")
    return Fraction(float(value))


def _gaussian_exponent(y: np.ndarray, center: float, variance: float) -> tuple[np.ndarray, np.ndarray]:
    """gamma = (|y| - s2/t)^2 / (2 s2) in float64 for integers |y| < 2^53 (exact as floats),
    and a bound on its error: a = |y| - centre is off by a_error = (|y| + centre) ulp (the
    subtraction, and ``center`` = s2/t rounded), then squaring and dividing add 2 ulp gamma:
    ((2 |a| + a_error) a_error / (2 s2) + 2 ulp gamma) 1.01."""
    magnitude = np.abs(y).astype(np.float64)
    a = magnitude - center
    a_error = magnitude
    a_error += center
    a_error *= _ULP
    gamma = np.multiply(a, a)
    gamma /= 2 * variance
    gamma_error = np.abs(a, out=a)
    gamma_error *= 2
    gamma_error += a_error
    gamma_error *= a_error
    gamma_error /= 2 * variance
    gamma_error += np.multiply(gamma, 2 * _ULP, out=a_error)
    gamma_error *= 1.01
    return gamma, gamma_error


def discrete_gaussian(variance: float, count: int, rng: RandomSource, stats: SamplerStats | None = None) -> np.ndarray:
    """``count`` draws of the discrete Gaussian N_Z(0, variance): P(y) proportional to
    exp(-y^2 / (2 variance)). ``variance`` is taken as the exact rational value of the float."""
    s2 = _check_variance("the discrete Gaussian variance", variance)
    if s2 == 0:
        return np.zeros(count, dtype=np.int64)
    s2f = float(s2)
    t = math.isqrt(math.floor(s2)) + 1
    center = float(s2 / t)
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = min(count - filled, _BATCH)
        batch = int(need * 1.36) + 64
        y = discrete_laplace(t, batch, rng, stats)
        gamma, gamma_error = _gaussian_exponent(y, center, s2f)

        def exact(i: int, y: np.ndarray = y) -> Fraction:
            return (abs(int(y[i])) * t - s2) ** 2 / (2 * s2 * t * t)

        accepted = y[_accept(gamma, gamma_error, _uniform_u64(rng, batch), exact, rng, stats)][:need]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
        if stats is not None:
            stats.proposals += batch
    return out


class _PoissonShape:
    """Everything about Poisson(mu) that does not depend on the draw: the proposal's centre m and
    scale t, ln P(m), and the envelope constant A >= max_k D(k) + |k - m| / t."""

    def __init__(self, mean: Fraction) -> None:
        self.mean = mean
        self.mean_float = float(mean)
        self.log_mean = math.log(self.mean_float)
        self.mode = math.floor(mean)
        self.scale = math.isqrt(self.mode) + 1
        self._log_factorial_mode: dict[int, exactmath.Enclosure] = {}
        self.log_pmf_mode = float(sum(self._log_pmf_exact(self.mode, 80)) / 2)
        self.envelope = self._envelope()

    def _log_pmf_exact(self, k: int, bits: int) -> exactmath.Enclosure:
        """ln P(k) = k ln mu - mu - ln k!."""
        ln_mu = exactmath.log(self.mean, bits + max(k, 1).bit_length() + 4)
        ln_fact = exactmath.log_factorial(k, bits + 2)
        return k * ln_mu[0] - self.mean - ln_fact[1], k * ln_mu[1] - self.mean - ln_fact[0]

    def log_ratio(self, k: int, bits: int) -> exactmath.Enclosure:
        """D(k) = ln(P(k) / P(m)) = (k - m) ln mu - ln(k! / m!), enclosed."""
        x = k - self.mode
        ln_mu = exactmath.log(self.mean, bits + max(abs(x), 1).bit_length() + 4)
        if bits not in self._log_factorial_mode:
            self._log_factorial_mode[bits] = exactmath.log_factorial(self.mode, bits + 4)
        fm = self._log_factorial_mode[bits]
        fk = exactmath.log_factorial(k, bits + 4)
        xl = (x * ln_mu[0], x * ln_mu[1]) if x >= 0 else (x * ln_mu[1], x * ln_mu[0])
        return xl[0] - (fk[1] - fm[0]), xl[1] - (fk[0] - fm[1])

    def _envelope(self) -> float:
        """An upper bound of g(k) = D(k) + |k - m| / t over all integers k >= 0, as a float.

        g is concave on each side of m (the Poisson pmf is log-concave). On k >= m its increments
        are ln(mu / (k + 1)) + 1/t, non-negative while k + 1 <= mu e^(1/t); on k <= m the maximum
        is likewise next to mu e^(-1/t). A few integers around those two points are evaluated
        with exact enclosures.
        """
        m, t = self.mode, self.scale
        e_lo, e_hi = exactmath.exp_neg(Fraction(1, t), 80)
        right = (self.mean / e_hi, self.mean / e_lo)  # mu e^(1/t)
        left = (self.mean * e_lo, self.mean * e_hi)  # mu e^(-1/t)
        candidates = {m}
        candidates |= set(range(max(m, math.floor(right[0]) - 2), math.ceil(right[1]) + 3))
        candidates |= set(range(max(0, math.floor(left[0]) - 2), min(m, math.ceil(left[1]) + 2) + 1))
        best = max(self.log_ratio(k, 80)[1] + Fraction(abs(k - m), t) for k in candidates)
        return math.nextafter(float(best) + 2.0**-40, math.inf)

    def log_ratio_float(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """D(k) for k >= 0 in float64, and a bound on its error.

        Near the mean (k >= 64, |k - mu| <= mu/2), with L = log1p((k - mu)/mu) = ln(k/mu):
        ln P(k) = -(k L - (k - mu)) - (ln(2 pi) + ln mu + L)/2 - r(k), Stirling's
        r(k) = 1/(12k) - 1/(360k^3) + 1/(1260k^5) - ... (truncation < 1/(1680 k^7) < 2^-52).
        There |L| <= 1.4 |u|, k <= 1.5 mu and |ln(2 pi mu)|/2 <= 19 for mu <= 2^50; adding up
        the rounding of each operation and the log1p error gives the bound
        |k - mu| (3 rel + 64 ulp) + 1e-12 used below (worked through in docs/distributed-dp.md).
        Elsewhere (rare unless mu is small) a longer formula with a term-by-term bound.
        """
        kf = k.astype(np.float64)
        mu, ln_mu = self.mean_float, self.log_mean
        diff = kf - mu
        near = (k >= _SMALL_K) & (np.abs(diff) <= 0.5 * mu)
        everywhere = bool(near.all())  # the usual case: skip the masked copies
        kn, dn = (kf, diff) if everywhere else (kf[near], diff[near])
        ln_ratio = np.log1p(dn / mu)
        value = kn * ln_ratio
        value -= dn  # k ln(k/mu) - (k - mu)
        ln_ratio *= 0.5
        value += ln_ratio
        inv = 1.0 / kn
        inv2 = inv * inv
        value += inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 / 1260))
        value += 0.5 * (_LN_2PI + ln_mu) + self.log_pmf_mode
        np.negative(value, out=value)
        near_error = np.abs(dn)
        near_error *= 3 * _REL + 64 * _ULP
        near_error += 1e-12
        if everywhere:
            return value, near_error
        d = np.empty_like(kf)
        error = np.empty_like(kf)
        d[near], error[near] = value, near_error
        far = ~near
        d[far], error[far] = self._log_ratio_far(k[far], kf[far])
        return d, error

    def _log_ratio_far(self, k: np.ndarray, kf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, ln_mu = self.mean_float, self.log_mean
        log_pmf = np.empty_like(kf)
        error = np.empty_like(kf)
        small = k < _SMALL_K
        ks = kf[small]
        table = _LOG_FACTORIAL_TABLE[k[small]]
        log_pmf[small] = ks * ln_mu - mu - table
        error[small] = ks * abs(ln_mu) * _REL + (ks * abs(ln_mu) + mu + table) * 2 * _ULP
        big = ~small
        kb = kf[big]
        diff = kb - mu
        u = diff / mu
        near = np.abs(u) <= 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_ratio = np.where(near, np.log1p(np.where(near, u, 0.0)), np.log(kb) - ln_mu)
        ratio_error = np.where(
            near,
            np.abs(ln_ratio) * _REL + np.abs(u) * 4 * _ULP,
            (np.log(kb) + abs(ln_mu)) * _REL + np.abs(ln_ratio) * 2 * _ULP,
        )
        psi = kb * ln_ratio - diff
        half_log = 0.5 * (_LN_2PI + ln_mu + ln_ratio)
        inv = 1.0 / kb
        inv2 = inv * inv
        stirling = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 / 1260))
        log_pmf[big] = -psi - half_log - stirling
        error[big] = (
            kb * ratio_error * 1.01
            + (np.abs(kb * ln_ratio) + np.abs(diff) + np.abs(psi) + np.abs(half_log)) * 4 * _ULP
            + 0.5 * ratio_error
            + 1e-15
        )
        d = log_pmf - self.log_pmf_mode
        return d, error + (np.abs(log_pmf) + abs(self.log_pmf_mode)) * 2 * _ULP


@functools.lru_cache(maxsize=64)
def _poisson_shape(mean: float) -> _PoissonShape:
    return _PoissonShape(Fraction(mean))


def poisson(mean: float, count: int, rng: RandomSource, stats: SamplerStats | None = None) -> np.ndarray:
    """``count`` draws of Poisson(mean), ``mean`` taken as the exact rational value of the float."""
    mu = _check_variance("the Poisson mean", mean)
    if mu == 0:
        return np.zeros(count, dtype=np.int64)
    shape = _poisson_shape(float(mu))
    m, t, envelope = shape.mode, shape.scale, shape.envelope
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = min(count - filled, _BATCH)
        batch = int(need * 1.36) + 64
        k = m + discrete_laplace(t, batch, rng, stats)
        u = _uniform_u64(rng, batch)
        valid = k >= 0
        k, u = k[valid], u[valid]
        d, d_error = shape.log_ratio_float(k)
        distance = np.abs(k - m).astype(np.float64) / t
        gamma = envelope - d - distance
        gamma_error = d_error + (abs(envelope) + np.abs(d) + distance) * 4 * _ULP

        def exact(i: int, k: np.ndarray = k) -> Callable[[int], exactmath.Enclosure]:
            x = Fraction(abs(int(k[i]) - m), t)

            def enclose(bits: int) -> exactmath.Enclosure:
                d_lo, d_hi = shape.log_ratio(int(k[i]), bits)
                return Fraction(envelope) - d_hi - x, Fraction(envelope) - d_lo - x

            return enclose

        accepted = k[_accept(gamma, gamma_error, u, exact, rng, stats)][:need]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
        if stats is not None:
            stats.proposals += batch
    return out


def skellam(variance: float, count: int, rng: RandomSource, stats: SamplerStats | None = None) -> np.ndarray:
    """``count`` draws of the symmetric Skellam distribution with the given variance: the
    difference of two independent Poisson(variance / 2) variates."""
    _check_variance("the Skellam variance", variance)
    half = float(variance) / 2  # exact: halving a float only changes its exponent
    draws: npt.NDArray[np.int64] = poisson(half, count, rng, stats) - poisson(half, count, rng, stats)
    return draws

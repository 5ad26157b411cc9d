"""Exact arithmetic for the rare comparisons the noise samplers cannot settle in floating point.

The samplers in ``dpnoise`` decide almost every Bernoulli trial and every geometric variate with
float64 arithmetic plus a proven error margin. When a value lands inside the margin, the decision
is handed to this module, which settles it exactly:

- ``LazyUniform`` is a uniform real U in (0, 1) whose binary expansion is drawn from the injected
  CSPRNG only as far as needed. It starts from the 64 bits the fast path already used, so the
  fast and the slow path decide on the same U.
- the enclosure functions return rational intervals [lo, hi] guaranteed to contain exp(-r),
  ln(q), ln(k!) or pi, of width at most 2^-bits. Raising ``bits`` shrinks them onto the true
  value, so every comparison of U against such a number terminates with probability one.

The work is done in fixed point: a real x is carried as a pair of integers (lo, hi) with
lo / 2^W <= x <= hi / 2^W, and every operation rounds lo down and hi up. No floating point and no
rounding mode is involved anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from fedmask.secagg.rand import RandomSource

Enclosure = tuple[Fraction, Fraction]
# (lo, hi) integers at an implicit scale 2^W
_Fixed = tuple[int, int]

# A comparison still unsettled at this precision would mean the enclosures are wrong: the chance
# that U agrees with an independent real to 4096 bits is nil.
MAX_BITS = 4096


def _to_fixed(q: Fraction | int, w: int) -> _Fixed:
    q = Fraction(q)
    scaled = q.numerator << w
    return scaled // q.denominator, -((-scaled) // q.denominator)


def _to_fractions(fixed: _Fixed, w: int) -> Enclosure:
    return Fraction(fixed[0], 1 << w), Fraction(fixed[1], 1 << w)


def _mul(a: _Fixed, b: _Fixed, w: int) -> _Fixed:
    """Product of two non-negative enclosures."""
    return (a[0] * b[0]) >> w, -((-(a[1] * b[1])) >> w)


def _div_int(a: _Fixed, n: int) -> _Fixed:
    """A non-negative enclosure divided by a positive integer."""
    return a[0] // n, -((-a[1]) // n)


def _exp_neg_fixed(r: Fraction, w: int) -> _Fixed:
    """exp(-r) for 0 <= r <= 1/2 by its Taylor series, every term bracketed."""
    x = _to_fixed(r, w)
    one = 1 << w
    term = (one, one)  # x^k / k!, bracketed
    lo = hi = one
    k = 0
    while True:
        k += 1
        term = _div_int(_mul(term, x, w), k)
        if k % 2:
            lo, hi = lo - term[1], hi - term[0]
        else:
            lo, hi = lo + term[0], hi + term[1]
        # Lagrange: |remainder| <= x^(k+1)/(k+1)!, which is below the current term's upper bound
        if term[1] <= 1:
            break
    remainder = term[1] + 1
    return max(lo - remainder, 0), hi + remainder


def exp_neg(r: Fraction | int, bits: int) -> Enclosure:
    """An interval containing exp(-r) for rational r >= 0, of width at most 2^-bits."""
    r = Fraction(r)
    if r < 0:
        raise ValueError("exp_neg needs r >= 0")
    if r == 0:
        return Fraction(1), Fraction(1)
    if r > bits:  # exp(-r) < 2^-r < 2^-bits
        return Fraction(0), Fraction(1, 1 << bits)
    # exp(-r) = exp(-s)^(2^halvings) with s <= 1/2; squaring a value <= 1 at most triples its
    # absolute error, so the series carries 2 extra bits per squaring.
    halvings = 0
    while r > Fraction(1 << halvings, 2):
        halvings += 1
    w = bits + 2 * halvings + 16
    value = _exp_neg_fixed(r / (1 << halvings), w)
    for _ in range(halvings):
        value = _mul(value, value, w)
    lo, hi = _to_fractions(value, w)
    return lo, min(hi, Fraction(1))


def _log_mantissa_fixed(y: _Fixed, w: int) -> _Fixed:
    """2 atanh(y) = ln((1 + y) / (1 - y)) for 0 <= y <= 1/3: a series of positive terms."""
    if y[1] == 0:
        return 0, 0
    y2 = _mul(y, y, w)
    power = y
    lo = hi = 0
    k = 0
    while True:
        lo += power[0] // (2 * k + 1)
        hi += -((-power[1]) // (2 * k + 1))
        power = _mul(power, y2, w)
        k += 1
        if power[1] <= 1:
            break
    # tail: sum of power * y^(2j) / (2k + 2j + 1) <= power / (1 - 1/9) <= 2 * power
    hi += 2 * power[1] + 1
    return 2 * lo, 2 * hi


_LN2: dict[int, _Fixed] = {}


def _ln2_fixed(w: int) -> _Fixed:
    if w not in _LN2:
        _LN2[w] = _log_mantissa_fixed(_to_fixed(Fraction(1, 3), w), w)
    return _LN2[w]


def log(q: Fraction | int, bits: int) -> Enclosure:
    """An interval containing ln(q) for rational q > 0, of width at most 2^-bits."""
    q = Fraction(q)
    if q <= 0:
        raise ValueError("log needs a positive argument")
    # q = 2^e * m with m in [1, 2): ln q = e ln 2 + 2 atanh((m - 1) / (m + 1))
    e = q.numerator.bit_length() - q.denominator.bit_length()
    m = q / Fraction(2) ** e
    if m < 1:
        e, m = e - 1, m * 2
    w = bits + max(1, abs(e)).bit_length() + 16
    lo_m, hi_m = _log_mantissa_fixed(_to_fixed((m - 1) / (m + 1), w), w)
    lo_2, hi_2 = _ln2_fixed(w)
    if e >= 0:
        fixed = (lo_m + e * lo_2, hi_m + e * hi_2)
    else:
        fixed = (lo_m + e * hi_2, hi_m + e * lo_2)
    return _to_fractions(fixed, w)


def _arctan_inverse_fixed(n: int, w: int) -> _Fixed:
    """atan(1/n), n >= 2, by its alternating series with shrinking terms."""
    power = ((1 << w) // n, -((-(1 << w)) // n))
    n2 = n * n
    lo = hi = 0
    k = 0
    while True:
        term = (power[0] // (2 * k + 1), -((-power[1]) // (2 * k + 1)))
        if k % 2:
            lo, hi = lo - term[1], hi - term[0]
        else:
            lo, hi = lo + term[0], hi + term[1]
        power = _div_int(power, n2)
        k += 1
        if power[1] <= 1:
            break
    return lo - 2, hi + 2


def pi(bits: int) -> Enclosure:
    """Machin: pi = 16 atan(1/5) - 4 atan(1/239)."""
    w = bits + 16
    lo5, hi5 = _arctan_inverse_fixed(5, w)
    lo239, hi239 = _arctan_inverse_fixed(239, w)
    return _to_fractions((16 * lo5 - 4 * hi239, 16 * hi5 - 4 * lo239), w)


_BERNOULLI: list[Fraction] = [Fraction(1)]


def _bernoulli(n: int) -> Fraction:
    """B_n by the recurrence sum_{k<=n} C(n+1, k) B_k = 0."""
    while len(_BERNOULLI) <= n:
        m = len(_BERNOULLI)
        _BERNOULLI.append(-sum((math.comb(m + 1, k) * _BERNOULLI[k] for k in range(m)), Fraction(0)) / (m + 1))
    return _BERNOULLI[n]


# Up to this k, ln(k!) is the logarithm of the exact integer k!; above, Stirling's series.
EXACT_FACTORIAL_LIMIT = 64


def log_factorial(k: int, bits: int) -> Enclosure:
    """An interval containing ln(k!), of width at most 2^-bits."""
    if k < 0:
        raise ValueError("log_factorial needs k >= 0")
    if k < 2:
        return Fraction(0), Fraction(0)
    if k <= EXACT_FACTORIAL_LIMIT:
        return log(math.factorial(k), bits)
    # ln k! = (k + 1/2) ln k - k + ln(2 pi)/2 + sum_{j=1}^{J} B_2j / (2j (2j-1) k^(2j-1)) + R_J,
    # |R_J| at most the first omitted term (for real k > 0 the series is enveloping).
    w = bits + k.bit_length() + 16
    ln_k = log(k, w)
    pi_lo, pi_hi = pi(w)
    ln_2pi = (log(2 * pi_lo, w)[0], log(2 * pi_hi, w)[1])
    limit = Fraction(1, 1 << (bits + 4))
    series = Fraction(0)
    j = 1
    while True:
        series += _bernoulli(2 * j) / (2 * j * (2 * j - 1) * Fraction(k) ** (2 * j - 1))
        j += 1
        omitted = abs(_bernoulli(2 * j)) / (2 * j * (2 * j - 1) * Fraction(k) ** (2 * j - 1))
        if omitted <= limit:
            break
        if j > 400:
            raise ArithmeticError(f"Stirling's series cannot reach 2^-{bits} for k = {k}")
    half = Fraction(1, 2)
    lo = (k + half) * ln_k[0] - k + half * ln_2pi[0] + series - omitted
    hi = (k + half) * ln_k[1] - k + half * ln_2pi[1] + series + omitted
    return _to_fractions((_to_fixed(lo, bits + 4)[0], _to_fixed(hi, bits + 4)[1]), bits + 4)


class LazyUniform:
    """A uniform real U in (0, 1) known to lie in [n / 2^bits, (n + 1) / 2^bits).

    Further bits come from ``rng`` on demand, 64 at a time, so comparing U with any real p
    (given by shrinking enclosures) is exact.
    """

    def __init__(self, leading: int, bits: int, rng: RandomSource) -> None:
        if not 0 <= leading < 1 << bits:
            raise ValueError("leading bits out of range")
        self._numerator = leading
        self._bits = bits
        self._rng = rng

    @property
    def interval(self) -> Enclosure:
        scale = 1 << self._bits
        return Fraction(self._numerator, scale), Fraction(self._numerator + 1, scale)

    def refine(self) -> None:
        more = int.from_bytes(self._rng.random_bytes(8), "big")
        self._numerator = (self._numerator << 64) | more
        self._bits += 64

    def less_than(self, enclosure: Callable[[int], Enclosure]) -> bool:
        """Whether U < p, where ``enclosure(bits)`` brackets p within 2^-bits."""
        bits = self._bits + 16
        while True:
            p_lo, p_hi = enclosure(bits)
            u_lo, u_hi = self.interval
            if u_hi <= p_lo:
                return True
            if u_lo >= p_hi:
                return False
            if u_hi - u_lo >= p_hi - p_lo:
                self.refine()
            else:
                bits += 64
            if bits > MAX_BITS or self._bits > MAX_BITS:
                raise ArithmeticError("an exact comparison did not settle within 4096 bits")

    def below_exp_neg(self, r: Fraction | int | Callable[[int], Enclosure]) -> bool:
        """Whether U < exp(-r), for r >= 0 rational or given by enclosures ``r(bits)``."""
        if not callable(r):
            rational = Fraction(r)
            return self.less_than(lambda bits: exp_neg(rational, bits))

        def enclose(bits: int) -> Enclosure:
            r_lo, r_hi = r(bits + 2)
            lo, _ = exp_neg(max(r_hi, Fraction(0)), bits + 2)
            _, hi = exp_neg(max(r_lo, Fraction(0)), bits + 2)
            return lo, hi

        return self.less_than(enclose)

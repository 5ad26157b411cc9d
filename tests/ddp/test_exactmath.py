"""The rational enclosures and the lazily drawn uniform behind the samplers' exact path."""

import math
from fractions import Fraction

import mpmath
import pytest

from fedmask.ddp import exactmath
from fedmask.secagg.rand import SeededRandom


@pytest.fixture(autouse=True)
def _mpmath_precision():
    # mpmath's precision is process-global: set it per test, so that the order in which test
    # modules are imported cannot change it.
    with mpmath.workprec(1400):
        yield


def _mp(q: Fraction) -> mpmath.mpf:
    return mpmath.mpf(q.numerator) / q.denominator


def _assert_encloses(enclosure, value, bits):
    lo, hi = enclosure
    assert _mp(lo) <= value <= _mp(hi)
    assert hi - lo <= Fraction(1, 1 << bits)


@pytest.mark.parametrize("bits", [64, 300, 1000])
@pytest.mark.parametrize(
    "r",
    [
        Fraction(0),
        Fraction(1, 7),
        Fraction(1, 2),
        Fraction(1),
        Fraction(45, 2),
        Fraction(10**9 + 7, 10**7),
        Fraction(5000),
    ],
)
def test_exp_neg_encloses(r, bits):
    _assert_encloses(exactmath.exp_neg(r, bits), mpmath.exp(-_mp(r)), bits)


@pytest.mark.parametrize("bits", [64, 400])
@pytest.mark.parametrize(
    "q",
    [
        Fraction(1),
        Fraction(2),
        Fraction(3, 2),
        Fraction(1, 3),
        Fraction(10**14 + 3),
        Fraction(7, 2**70),
        Fraction(2**200 + 1, 3),
    ],
)
def test_log_encloses(q, bits):
    _assert_encloses(exactmath.log(q, bits), mpmath.log(_mp(q)), bits)


def test_pi_encloses():
    _assert_encloses(exactmath.pi(1000), mpmath.pi, 1000)


@pytest.mark.parametrize("k", [0, 1, 2, 17, 64, 65, 300, 10**6, 10**14 + 7, 2**50])
def test_log_factorial_encloses(k):
    for bits in (80, 256):
        _assert_encloses(exactmath.log_factorial(k, bits), mpmath.loggamma(k + 1), bits)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        exactmath.exp_neg(Fraction(-1), 64)
    with pytest.raises(ValueError):
        exactmath.log(Fraction(0), 64)
    with pytest.raises(ValueError):
        exactmath.log_factorial(-1, 64)
    with pytest.raises(ValueError):
        exactmath.LazyUniform(1 << 64, 64, SeededRandom.from_int(0))


class _NoRandomness:
    def random_bytes(self, count):
        raise AssertionError("the comparison should have been settled by the leading bits")


def test_clear_comparisons_use_no_further_bits():
    p = Fraction(1, 3)
    below = exactmath.LazyUniform(int((1 << 64) * 0.3), 64, _NoRandomness())
    above = exactmath.LazyUniform(int((1 << 64) * 0.4), 64, _NoRandomness())
    assert below.less_than(lambda bits: (p, p))
    assert not above.less_than(lambda bits: (p, p))
    assert below.below_exp_neg(Fraction(1))  # 0.3 < e^-1 = 0.367...
    assert not above.below_exp_neg(Fraction(1))


def test_undecided_comparisons_are_exact_in_distribution():
    """U's first 64 bits agree with p = e^(-1/3); P(U < p | those bits) is the fractional part
    of p * 2^64, and the further bits drawn decide with exactly that probability."""
    lo, _ = exactmath.exp_neg(Fraction(1, 3), 200)
    leading = math.floor(lo * (1 << 64))
    conditional = float(lo * (1 << 64) - leading)
    trials = 4000
    rng = SeededRandom.from_int(11)
    hits = sum(exactmath.LazyUniform(leading, 64, rng).below_exp_neg(Fraction(1, 3)) for _ in range(trials))
    sd = math.sqrt(conditional * (1 - conditional) / trials)
    assert abs(hits / trials - conditional) < 4.5 * sd


def test_enclosure_callables_are_accepted():
    rng = SeededRandom.from_int(3)
    # r in [1, 1] given as enclosures: the same decisions as the rational r = 1
    for leading in (0, (1 << 63), (1 << 64) - 1, int(math.exp(-1) * 2**64)):
        a = exactmath.LazyUniform(leading, 64, SeededRandom.from_int(leading % 97))
        b = exactmath.LazyUniform(leading, 64, SeededRandom.from_int(leading % 97))
        assert a.below_exp_neg(lambda bits: (Fraction(1), Fraction(1))) == b.below_exp_neg(Fraction(1))
    assert exactmath.LazyUniform(5, 64, rng).below_exp_neg(lambda bits: (Fraction(0), Fraction(0)))

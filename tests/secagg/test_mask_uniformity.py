"""A masked vector looks uniform and carries no trace of the input (fixed seeds: deterministic)."""

import numpy as np
from scipy import stats

from fedmask.secagg import SecurityMode


def _masked_vectors(make_round, input_value, dimension=1 << 16):
    r = make_round(3, t=2, dimension=dimension, seed=5)
    for u in r.ids:
        r.clients[u].set_input(np.full(dimension, input_value, dtype=np.uint32))
    r.answer(r.advertise())
    bundles = r.server.close_phase()
    return [r.clients[u].receive(bundles[u]).masked for u in r.ids]


def _chi_square_p(values, bins=256):
    counts = np.bincount((values >> np.uint32(24)).astype(np.int64), minlength=bins)
    return stats.chisquare(counts).pvalue


def test_masked_input_is_uniform_even_for_a_constant_input(make_round):
    for masked in _masked_vectors(make_round, 0):
        # top byte, low byte and a middle byte all uniform
        assert _chi_square_p(masked) > 1e-4
        assert _chi_square_p(masked << np.uint32(24)) > 1e-4
        assert _chi_square_p(masked << np.uint32(12)) > 1e-4
        # bits are balanced: each bit set in ~half the coordinates (6 sigma bound)
        bits = np.unpackbits(masked.view(np.uint8)).reshape(-1, 32).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / np.sqrt(masked.size))


def test_masked_input_is_independent_of_the_input(make_round):
    dimension = 1 << 16
    r = make_round(3, t=2, dimension=dimension, seed=6)
    ramp = np.arange(dimension, dtype=np.uint32) * np.uint32(65537)  # a very structured input
    r.clients[1].set_input(ramp)
    r.answer(r.advertise())
    masked = r.clients[1].receive(r.server.close_phase()[1]).masked
    correlation = np.corrcoef(ramp.astype(np.float64), masked.astype(np.float64))[0, 1]
    assert abs(correlation) < 6 / np.sqrt(dimension)
    # the joint histogram of (input top bits, masked top bits) is flat
    table = np.histogram2d(ramp >> 28, masked >> 28, bins=16)[0]
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_same_input_gives_unrelated_masked_vectors_across_sessions(make_round):
    a = _masked_vectors(make_round, 7, dimension=4096)[0]
    r = make_round(3, t=2, dimension=4096, seed=77, mode=SecurityMode.SEMI_HONEST)
    for u in r.ids:
        r.clients[u].set_input(np.full(4096, 7, dtype=np.uint32))
    r.answer(r.advertise())
    b = r.clients[1].receive(r.server.close_phase()[1]).masked
    assert np.mean(a == b) < 0.01

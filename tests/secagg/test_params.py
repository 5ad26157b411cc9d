import math

import numpy as np
import pytest

from fedmask.secagg import encoding
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.params import (
    EncodingParams,
    ProtocolParams,
    SecurityMode,
    check_graph_degree,
    default_threshold,
)
from fedmask.secagg.rand import SeededRandom


def test_headroom_is_reported_in_bits():
    headroom = EncodingParams(clip_norm=1.0, scale=1000.0, modulus_bits=32).validate(100)
    assert headroom.max_abs_sum == 100 * 1000
    assert headroom.bits == pytest.approx(32 - math.log2(2 * 100_000 + 1))


def test_parameters_that_could_wrap_are_refused_with_the_headroom():
    # 2 * 3 * 2^15 + 1 > 2^16
    with pytest.raises(ParameterError, match=r"headroom -?\d+\.\d bits"):
        EncodingParams(clip_norm=1.0, scale=2.0**15, modulus_bits=16).validate(3)


def test_boundary_is_exact():
    # M = n * ceil(C * gamma) = 2^15 - 1 exactly fits 16 bits; one more participant does not.
    ok = EncodingParams(clip_norm=1.0, scale=float(2**15 - 1), modulus_bits=16)
    assert ok.validate(1).bits > 0
    with pytest.raises(ParameterError):
        EncodingParams(clip_norm=1.0, scale=float(2**15), modulus_bits=16).validate(1)


def test_worst_case_sum_inside_validated_parameters_decodes_exactly():
    params = EncodingParams(clip_norm=1.0, scale=float(2**13 - 1), modulus_bits=16)
    n = 4
    params.validate(n)
    rng = SeededRandom.from_int(0)
    for sign in (1.0, -1.0):
        total = np.zeros(1, dtype=np.uint32)
        for _ in range(n):  # every participant at the extreme of the clipped range
            total += encoding.encode(np.array([sign * 5.0]), params, rng)
        total &= np.uint32(0xFFFF)
        assert encoding.decode_sum(total, params)[0] == pytest.approx(sign * n * 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": float("nan")}, "clip_norm"),
        ({"scale": -1.0}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"modulus_bits": 1}, "modulus_bits"),
        ({"modulus_bits": 65}, "modulus_bits"),
    ],
)
def test_encoding_parameters_are_validated(kwargs, match):
    base = {"clip_norm": 1.0, "scale": 10.0, "modulus_bits": 32} | kwargs
    with pytest.raises(ParameterError, match=match):
        EncodingParams(**base).validate(3)


@pytest.mark.parametrize(
    "kwargs, n, match",
    [
        ({"dimension": 0}, 5, "dimension"),
        ({"modulus_bits": 0}, 5, "modulus_bits"),
        ({"threshold": 1}, 5, "threshold"),
        ({"threshold": 6}, 5, "threshold"),
        ({"threshold": 3, "mode": SecurityMode.MALICIOUS}, 6, "half the holders"),
        ({"threshold": 3}, 6, "half the holders"),  # in the semi-honest mode too: the split view
        ({"threshold": 2}, 1, "at least 2"),
    ],
)
def test_protocol_parameters_are_validated(kwargs, n, match):
    base = {"dimension": 10, "modulus_bits": 32, "threshold": 3, "mode": SecurityMode.SEMI_HONEST} | kwargs
    with pytest.raises(ParameterError, match=match):
        ProtocolParams(**base).validate(n)


def test_default_threshold_is_a_strict_two_thirds_majority():
    for n in range(3, 200):
        t = default_threshold(n, SecurityMode.MALICIOUS)
        assert 2 * t > n and t <= n
        ProtocolParams(10, 32, t, SecurityMode.MALICIOUS).validate(n)


def test_digest_changes_with_every_field():
    base = ProtocolParams(10, 32, 3, SecurityMode.SEMI_HONEST)
    variants = [
        ProtocolParams(11, 32, 3, SecurityMode.SEMI_HONEST),
        ProtocolParams(10, 31, 3, SecurityMode.SEMI_HONEST),
        ProtocolParams(10, 32, 4, SecurityMode.SEMI_HONEST),
        ProtocolParams(10, 32, 3, SecurityMode.MALICIOUS),
        ProtocolParams(10, 32, 3, SecurityMode.SEMI_HONEST, neighbours=4),
    ]
    assert len({base.digest(), *(v.digest() for v in variants)}) == 6


@pytest.mark.parametrize("neighbours", [5, 6, 1000])
def test_a_degree_the_participants_cannot_have_is_refused(neighbours):
    with pytest.raises(ParameterError, match=f"degree < 5 .* got {neighbours}"):
        check_graph_degree(neighbours, 5)


@pytest.mark.parametrize("neighbours, holders", [(None, 5), (2, 3), (4, 5)])
def test_a_degree_below_the_participants_is_accepted(neighbours, holders):
    check_graph_degree(neighbours, 5)  # raises nothing
    assert ProtocolParams(10, 32, 3, SecurityMode.SEMI_HONEST, neighbours).holders_per_secret(5) == holders

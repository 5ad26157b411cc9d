"""Exactness under dropouts: every pattern for small n, many random ones for n = 50."""

import itertools

import pytest

from fedmask.secagg import Phase, ProtocolParams, SecurityMode
from fedmask.secagg.rand import SeededRandom, random_below
from fedmask.secagg.simulation import DROPPABLE_PHASES, SimulationConfig, droppable_phases, simulate
from fedmask.testing.runners import RecordingRunner


def _completes(n, t, drop_at, mode):
    """Oracle: the round completes iff at least t participants remain at every phase.
    (Complete graph: every participant holds a share of every secret, itself included.)"""
    phases = droppable_phases(mode)
    remaining = n
    for phase in phases:
        remaining -= sum(1 for p in drop_at.values() if p is phase)
        if mode is SecurityMode.SEMI_HONEST and phase is Phase.UNMASK:
            remaining -= sum(1 for p in drop_at.values() if p is Phase.CONSISTENCY_CHECK)
        if remaining < t:
            return False
    return True


def _survivors(n, drop_at):
    early = (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT)
    return [u for u in range(1, n + 1) if drop_at.get(u) not in early]


def _check(n, t, drop_at, mode, seed=0, dimension=8):
    params = ProtocolParams(dimension, 32, t, mode)
    result = simulate(SimulationConfig(params, n, drop_at, seed=seed))
    if _completes(n, t, drop_at, mode):
        assert not result.aborted, (drop_at, result.abort_reason)
        assert result.exact, drop_at
        assert result.survivors == _survivors(n, drop_at)
    else:
        assert result.aborted and not result.exact, drop_at
        assert "threshold" in result.abort_reason
        assert result.abort_reason.startswith("[")  # names the phase
    assert not result.client_aborts  # honest clients never see a reason to abort


@pytest.mark.parametrize("mode", list(SecurityMode), ids=lambda m: m.value)
@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_every_dropout_set_at_every_phase(n, mode):
    t = n // 2 + 1
    for phase in DROPPABLE_PHASES:
        for size in range(n + 1):
            for dropped in itertools.combinations(range(1, n + 1), size):
                _check(n, t, dict.fromkeys(dropped, phase), mode)


# n = 4 (625 patterns, 10 s) runs in CI's slow step; n = 3 (125) in the default suite.
@pytest.mark.parametrize("n", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_every_mixed_dropout_pattern(n):
    """Each participant drops at any phase or never: (phases + 1)^n patterns."""
    t = n // 2 + 1  # a strict majority, as the malicious-server mode requires
    choices = [None, *DROPPABLE_PHASES]
    for pattern in itertools.product(choices, repeat=n):
        drop_at = {u: p for u, p in zip(range(1, n + 1), pattern, strict=True) if p is not None}
        _check(n, t, drop_at, SecurityMode.MALICIOUS)


def _random_patterns(trials):
    rng = SeededRandom.from_int(50)
    n, t = 50, 26
    for trial in range(trials):
        drop_at = {}
        for u in range(1, n + 1):
            if random_below(rng, 100) < 12:
                drop_at[u] = DROPPABLE_PHASES[random_below(rng, len(DROPPABLE_PHASES))]
        _check(n, t, drop_at, SecurityMode.SEMI_HONEST, seed=trial, dimension=4)


# Slow (about 20 s): the exhaustive small-n tests above stay in the default suite.
@pytest.mark.slow
def test_random_patterns_with_50_participants():
    _random_patterns(25)


@pytest.mark.slow
def test_200_random_patterns_with_50_participants():
    _random_patterns(200)


@pytest.mark.parametrize("bits", [1, 8, 20, 32, 33, 50, 64])
def test_exact_for_every_modulus_width(bits):
    params = ProtocolParams(1000, bits, 3, SecurityMode.SEMI_HONEST)
    result = simulate(SimulationConfig(params, 5, {2: Phase.MASKED_INPUT}, seed=bits))
    assert result.exact


def test_secagg_plus_graph_round_is_exact():
    params = ProtocolParams(64, 32, 5, SecurityMode.SEMI_HONEST, neighbours=6)
    drop_at = {3: Phase.MASKED_INPUT, 11: Phase.UNMASK, 17: Phase.SHARE_KEYS}
    result = simulate(SimulationConfig(params, 30, drop_at, seed=4))
    assert result.exact and not result.aborted
    assert len(result.survivors) == 28


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize(
    ("n", "threshold", "neighbours", "survivors"),
    [(20, 11, None, 18), (30, 5, 6, 28)],  # t above half of the 20 (complete) or 7 (SecAgg+) holders
)
def test_a_short_vector_unmasked_in_parts_gives_the_exact_sum(parts, n, threshold, neighbours, survivors):
    """A vector shorter than a chunk per part, with dropouts: the pairwise seeds derived in parts
    and the masks split between the parts, each into its own sum, in any order of the parts."""
    params = ProtocolParams(1000, 32, threshold, SecurityMode.SEMI_HONEST, neighbours=neighbours)
    drop_at = {3: Phase.MASKED_INPUT, 11: Phase.UNMASK, 17: Phase.SHARE_KEYS}
    runner = RecordingRunner(parts, reverse=True)
    result = simulate(SimulationConfig(params, n, drop_at, seed=parts, runner=runner))
    assert result.exact and not result.aborted
    assert len(result.survivors) == survivors
    assert parts in runner.calls


def test_simulation_is_reproducible_and_seed_dependent():
    params = ProtocolParams(16, 32, 3, SecurityMode.SEMI_HONEST)
    a = simulate(SimulationConfig(params, 4, seed=1))
    b = simulate(SimulationConfig(params, 4, seed=1))
    assert a.exact and b.exact and a.as_dict() == b.as_dict()


def test_upload_is_four_bytes_a_value_at_32_bits():
    params = ProtocolParams(100_000, 32, 3, SecurityMode.SEMI_HONEST)
    result = simulate(SimulationConfig(params, 4, seed=0))
    assert 4.0 <= result.as_dict()["upload_bytes_per_value"] < 4.01

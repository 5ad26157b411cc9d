"""``fedmask bench grpc``: what the processes' CPU time allows the wire round."""

from __future__ import annotations

import pytest

from fedmask.bench.grpc_bench import cpu_bound


def test_the_round_is_put_against_its_processes_cpu_spread_over_the_cores() -> None:
    bound = cpu_bound(0.050, [0.014, 0.015, 0.016], wall_s=0.060, cpus=2)
    assert bound["participant_cpu_s"] == 0.015  # the median participant
    assert bound["cpu_s_total"] == pytest.approx(0.095)
    assert bound["cpu_bound_s"] == pytest.approx(0.0475)
    assert bound["wall_over_cpu_bound"] == pytest.approx(0.060 / 0.0475)


def test_a_round_that_used_no_cpu_has_no_ratio() -> None:
    bound = cpu_bound(0.0, [], wall_s=0.1, cpus=2)
    assert bound["participant_cpu_s"] is None and bound["wall_over_cpu_bound"] is None

"""``secagg.simulation.rehearse``: the throw-away round a process runs before its first real one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedmask.secagg import simulation
from fedmask.secagg.errors import SecAggError
from fedmask.secagg.params import SecurityMode


def test_the_rehearsal_runs_a_whole_malicious_round_with_a_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[simulation.SimulationResult] = []
    configs: list[simulation.SimulationConfig] = []
    real = simulation.simulate

    def recording(config: simulation.SimulationConfig, **kwargs: object) -> simulation.SimulationResult:
        configs.append(config)
        seen.append(real(config))
        return seen[-1]

    monkeypatch.setattr(simulation, "simulate", recording)
    simulation.rehearse()
    (config,), (result,) = configs, seen
    # Signatures, the consistency check and a dropped participant's key rebuilt: every primitive.
    assert config.params.mode is SecurityMode.MALICIOUS and config.drop_at
    assert result.exact and len(result.dropped) == 1 and len(result.survivors) == 3


def test_a_rehearsal_that_does_not_give_the_exact_sum_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = simulation.simulate
    monkeypatch.setattr(
        simulation, "simulate", lambda config, **kwargs: replace(real(config), exact=False, abort_reason="broken")
    )
    with pytest.raises(SecAggError, match="rehearsal round did not give the exact sum: broken"):
        simulation.rehearse()

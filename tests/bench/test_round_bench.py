"""``fedmask bench round``: a demo participant's rounds, phase by phase, the way the node runs them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fedmask.adapter.metrics import METRIC_COORDINATES
from fedmask.bench.round_bench import PHASES, round_bench


@pytest.mark.slow
def test_round_bench_times_every_phase_and_loads_the_model_once() -> None:
    result = CliRunner().invoke(round_bench, ["--rounds", "2", "--records", "60", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    first, second = report["rounds"]
    for row in (first, second):
        assert all(row[phase] >= 0 for phase in PHASES)
        assert row["total"] == pytest.approx(sum(row[phase] for phase in PHASES))
        assert row["train"] > 0 and row["evaluate"] > 0 and row["secure_aggregation"] > 0
    # The node keeps its trainer: only the first round builds the model.
    assert first["load"] > 0 and second["load"] < first["load"] / 100
    # The masked vector: the whole MiniLM LoRA adapter and head, then the metric coordinates.
    assert report["dimension"] > METRIC_COORDINATES
    assert report["wire_round_s"] >= 0
    assert report["startup_s"] >= 0  # imported before round 1, as the node does

"""`fedmask simulate`: a failed round exits non-zero with --json too (its JSON still printed), a
--drop-phase the mode does not have and an impossible --graph degree are refused in one line, and
survivors + dropped never exceed the participants."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.cli.simulate import (
    BASE_BYTES,
    BYTES_PER_HOLDER_COMPLETE,
    BYTES_PER_HOLDER_SPARSE,
    VECTORS_AT_ONCE,
    estimated_peak_bytes,
)
from fedmask.secagg import ProtocolParams, SecurityMode, simulation
from fedmask.secagg.simulation import DROPPABLE_PHASES
from fedmask.testing.cli import assert_one_line_error


def _simulate(*args: str):
    return CliRunner().invoke(main, ["simulate", *args])


@pytest.mark.parametrize("participants, dropout", [("2", "1.0"), ("10", "0.9")])
def test_a_failed_round_exits_non_zero_with_json_after_printing_it(participants, dropout) -> None:
    result = _simulate("-n", participants, "-d", "10", "--dropout", dropout, "--json")
    assert result.exit_code == 1, result.output
    row = json.loads(result.stdout)  # the JSON still comes first, whole, on stdout
    assert row["exact"] is False and row["aborted"] is True
    last = result.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("Error: the round did not give the exact sum:"), result.stderr
    assert "round aborted" in last[0]


def test_a_failed_round_exits_non_zero_without_json() -> None:
    result = _simulate("-n", "2", "-d", "10", "--dropout", "1.0")
    assert_one_line_error(result, "the round did not give the exact sum")
    assert "aborted: True" in result.stdout


def test_an_exact_round_exits_zero_with_json() -> None:
    result = _simulate("-n", "4", "-d", "10", "--dropout", "0.25", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["exact"] is True and row["survivors"] == 3 and row["dropped"] == 1
    assert result.stderr == ""


def test_a_drop_phase_the_mode_lacks_is_refused() -> None:
    result = _simulate("-n", "30", "-d", "1000", "--dropout", "0.2", "--drop-phase", "consistency-check")
    assert_one_line_error(result, "semi-honest", "consistency-check")
    assert result.exit_code == 2


@pytest.mark.parametrize("mode", [m.value for m in SecurityMode])
@pytest.mark.parametrize("phase", [p.value for p in DROPPABLE_PHASES])
def test_survivors_and_dropped_never_exceed_the_participants(mode, phase) -> None:
    result = _simulate("-n", "10", "-d", "10", "--dropout", "0.2", "--drop-phase", phase, "--mode", mode, "--json")
    if mode == "semi-honest" and phase == "consistency-check":
        assert_one_line_error(result, "consistency-check")
        return
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["exact"] is True
    assert row["survivors"] + row["dropped"] <= 10, row
    assert row["dropped"] + row["dropped_after_input"] == 2, row
    # Participants that leave after their masked input are survivors: their inputs are in the sum.
    late = phase in ("consistency-check", "unmask")
    assert (row["survivors"], row["dropped_after_input"]) == ((10, 2) if late else (8, 0)), row


@pytest.mark.parametrize("degree", ["10", "100", "99999999999999999999999"])
def test_a_degree_the_participants_cannot_have_is_refused(degree) -> None:
    result = _simulate("-n", "10", "-d", "10", "--graph", degree)
    assert_one_line_error(result, "degree < 10", f"got {degree}")
    assert result.exit_code == 2


def test_a_non_ascii_digit_degree_is_refused() -> None:
    result = _simulate("-n", "10", "-d", "10", "--graph", "²")
    assert_one_line_error(result, "--graph")


@pytest.mark.parametrize("degree, graph", [("9", "harary-9"), ("4", "harary-4")])
def test_a_degree_below_the_participants_is_accepted(degree, graph) -> None:
    result = _simulate("-n", "10", "-d", "10", "--graph", degree, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["exact"] is True and row["graph"] == graph


def test_bench_modes_reports_a_failed_simulate_run(monkeypatch) -> None:
    """`fedmask bench modes` runs `simulate --json` and stops on a non-zero exit, showing its stderr:
    an exact round still gives its row, a failed one the reason in one Error line."""
    from fedmask.bench import modes_bench

    assert modes_bench.simulate(4, 10, "semi-honest", seed=0, workers=1)["exact"] is True

    real_run = subprocess.run

    def all_drop(command, **kwargs):
        command = [("1.0" if arg == "0.1" else arg) for arg in command]
        return real_run(command, **kwargs)

    monkeypatch.setattr(modes_bench.subprocess, "run", all_drop)
    with pytest.raises(click.ClickException) as raised:
        modes_bench.simulate(4, 10, "semi-honest", seed=0, workers=1)
    assert sys.executable in raised.value.message
    assert "Error: the round did not give the exact sum: [masked-input] round aborted" in raised.value.message


@pytest.mark.parametrize("workers", ["1", "2"])
def test_rehearse_runs_a_tiny_round_with_the_rounds_runner_before_the_timed_one(monkeypatch, workers) -> None:
    from fedmask.cli import simulate as simulate_cli

    events: list[object] = []
    real_round = simulate_cli.simulate_round
    monkeypatch.setattr(simulation, "rehearse", lambda runner: events.append(("rehearse", runner)))
    monkeypatch.setattr(simulate_cli, "simulate_round", lambda config: events.append(config) or real_round(config))
    result = _simulate("-n", "4", "-d", "10", "--workers", workers, "--rehearse", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exact"] is True
    (kind, runner), config = events
    assert kind == "rehearse" and runner is config.runner
    assert (runner is None) == (workers == "1")

    events.clear()
    assert _simulate("-n", "4", "-d", "10", "--json").exit_code == 0
    assert len(events) == 1 and not isinstance(events[0], tuple)  # no rehearsal unless asked


def test_bench_modes_times_warm_rounds(monkeypatch) -> None:
    """Deployed rounds are warm (both roles rehearse first): the bench times rounds the same way."""
    from fedmask.bench import modes_bench

    commands: list[list[str]] = []
    real_run = subprocess.run

    def recording(command, **kwargs):
        commands.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(modes_bench.subprocess, "run", recording)
    assert modes_bench.simulate(4, 10, "malicious", seed=0, workers=1)["exact"] is True
    assert "--rehearse" in commands[0]


def test_a_round_that_cannot_fit_in_memory_is_refused_before_it_starts(monkeypatch) -> None:
    """100,000 participants on a complete graph hold 10^10 shares in one process: refused in one
    line on any machine, not killed for memory (or swapping for hours) after the start."""
    assert_one_line_error(_simulate("-n", "100000", "-d", "10"), "100000 participants x 100000 holders each")
    # A vector too large for the memory (here made 256 MiB), while a small round still runs.
    monkeypatch.setattr("fedmask.cli.simulate.physical_memory_bytes", lambda: 256 << 20)
    refused = _simulate("-n", "10", "-d", "100000000")
    assert_one_line_error(refused, "use a smaller --dim, fewer participants or --graph K")
    assert "this machine has 0.2 GiB" in refused.output
    assert _simulate("-n", "10", "-d", "1000").exit_code == 0


def test_the_memory_estimate_counts_each_value_at_its_width_and_each_holder_by_graph() -> None:
    narrow, wide = (ProtocolParams(10**6, bits, 7, SecurityMode.SEMI_HONEST) for bits in (32, 64))
    assert estimated_peak_bytes(wide, 10) - estimated_peak_bytes(narrow, 10) == VECTORS_AT_ONCE * 4 * 10**6
    complete = ProtocolParams(1, 32, 7, SecurityMode.SEMI_HONEST)
    sparse = ProtocolParams(1, 32, 7, SecurityMode.SEMI_HONEST, neighbours=10)
    assert estimated_peak_bytes(complete, 1000) - BASE_BYTES == 1000 * 1000 * BYTES_PER_HOLDER_COMPLETE + 4 * 4
    assert estimated_peak_bytes(sparse, 1000) - BASE_BYTES == 1000 * 11 * BYTES_PER_HOLDER_SPARSE + 4 * 4

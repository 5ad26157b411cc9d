"""The operator's surface of a running federation, with real processes: a coordinator and three
participant nodes on loopback (mutual TLS, the bundled MiniLM, a few records each).

While it runs, the test drives ``fedmask coordinator status|participants|rounds|ledger --json``,
scrapes ``/metrics``, and revokes one participant (``fedmask pki revoke``) during round 1: the
coordinator reloads the roster before round 2 and does not select it. It ends with ``stop``
(finish the round), escalated by ``stop --now`` (abort it at once), and checks what every command
says afterwards: the coordinator gone, round 2 open for a restart, round 1 in the ledger.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("grpc")

from fedmask import pki  # noqa: E402
from fedmask.cli import main  # noqa: E402
from fedmask.demo.data import PARTIES, generate_records, write_records  # noqa: E402
from fedmask.testing import loopback  # noqa: E402
from fedmask.testing.processes import spawn_cli  # noqa: E402

REVOKED = "bank"
_T = TypeVar("_T")


def _wait_until(what: str, check: Callable[[], _T | None], timeout_s: float, logs: list[Path]) -> _T:
    """Poll ``check`` until it returns something other than None, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for log in logs if log.exists())
    raise AssertionError(f"not within {timeout_s} s: {what}\n{tails}")


def _cli(*args: str) -> Any:
    """``fedmask coordinator ARGS --json``, parsed."""
    result = CliRunner().invoke(main, ["coordinator", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))


def _sample(text: str, series: str) -> float | None:
    """The value of one series line (``name{labels}``) of a scrape, or None if absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_operator_commands_revocation_metrics_and_stop(tmp_path: Path) -> None:
    from fedmask.participant.policy import ParticipantPolicy

    federation = tmp_path / "federation"
    pki.init_federation(federation, federation_name="operations")
    pki.issue(federation, "coordinator", "main", hosts=["localhost"])
    data, policies = {}, {}
    for index, party in enumerate(PARTIES):
        loopback.add_participant(federation, party, valid_days=30)
        data[party] = write_records(generate_records(party, 40, seed=index), tmp_path / f"{party}.jsonl")
        # Round 2 runs with the two left after the revocation: a policy that accepts two.
        policies[party] = tmp_path / f"{party}-policy.toml"
        ParticipantPolicy(min_participants=2).save(policies[party])
    config = {
        "participants": list(PARTIES),
        "rounds": 2,
        "threshold": 2,
        "training": {"mode": "lora", "target_epsilon": 8.0, "epochs": 1.0, "batch_size": 16, "max_seq_len": 32},
        "join_timeout_s": 120.0,
        "phase_timeout_s": 30.0,
        "quorum_grace_s": 60.0,
        "final_report_wait_s": 10.0,
    }
    (tmp_path / "federation.json").write_text(json.dumps(config))
    state = tmp_path / "coordinator"
    port = _free_port()
    logs = [tmp_path / "coordinator.out", *(tmp_path / f"{party}.out" for party in PARTIES)]
    coordinator = spawn_cli(
        ["coordinator", "run", "--federation", str(federation), "--state", str(state),
         "--config", str(tmp_path / "federation.json"), "--port", str(port), "--metrics-port", "0",
         "--log-format", "json"],
        logs[0],
    )  # fmt: skip
    processes = [coordinator]
    try:
        for party, log in zip(PARTIES, logs[1:], strict=True):
            args = ["participant", "node", "--federation", str(federation), "--name", party,
                    "--data", str(data[party]), "--state", str(tmp_path / party),
                    "--coordinator", f"localhost:{port}", "--policy", str(policies[party])]  # fmt: skip
            processes.append(spawn_cli(args, log))

        # --- round 1 runs: status, participants, metrics; the revocation ------------------------------
        def round_open(number: int) -> dict[str, Any] | None:
            if not (state / "status.json").exists():
                return None
            document = _cli("status", "--state", str(state))
            current = document["round"]
            return document if current is not None and current["number"] == number else None

        status = _wait_until("round 1 is open", lambda: round_open(1), 120, logs)
        assert status["coordinator"]["running"] and status["coordinator"]["state"] == "running"
        assert status["rounds_total"] == 2 and status["last_committed"] is None
        assert status["round"]["selected"] == sorted(PARTIES)
        assert set(status["round"]["joined"]) | set(status["round"]["late"]) <= set(PARTIES)
        participants = _cli("participants", "--state", str(state))["participants"]
        assert [p["name"] for p in participants] == sorted(PARTIES)
        assert all(p["organisation"] == p["name"] and p["in_roster"] for p in participants)

        revoked = CliRunner().invoke(main, ["pki", "revoke", REVOKED, "--dir", str(federation)])
        assert revoked.exit_code == 0, revoked.output

        status = _wait_until("round 1 is committed", lambda: round_open(2), 300, logs)
        assert status["last_committed"]["round"] == 1
        assert status["round"]["selected"] == sorted(set(PARTIES) - {REVOKED})  # not selected after revocation
        metrics_url = status["coordinator"]["metrics_url"]
        scrape = _scrape(metrics_url)
        assert _sample(scrape, "fedmask_rounds_committed_total") == 1.0
        assert _sample(scrape, "fedmask_round_survivors") == 3.0
        assert _sample(scrape, "fedmask_current_round") == 2.0
        for party in PARTIES:
            epsilon = _sample(scrape, f'fedmask_participant_epsilon{{participant="{party}"}}')
            assert epsilon is not None and 0 < epsilon <= 8.0
            received = _sample(scrape, f'fedmask_received_bytes_total{{participant="{party}"}}')
            assert received is not None and received > 0
        assert 'fedmask_round_phase_duration_seconds_count{phase="masked-input"} 1.0' in scrape
        ledger = _cli("ledger", "--state", str(state))["ledger"]
        assert [entry["round"] for entry in ledger] == [1]
        assert ledger[0]["survivors"] == sorted(PARTIES)
        participants = {p["name"]: p for p in _cli("participants", "--state", str(state))["participants"]}
        assert participants[REVOKED]["in_roster"] is False
        for command in ("status", "participants", "rounds"):  # what an operator sees (shown with -s or on failure)
            print(CliRunner().invoke(main, ["coordinator", command, "--state", str(state)]).output)
        print(json.dumps(status, indent=2))
        assert all(participants[p]["epsilon"] is not None and participants[p]["epsilon_round"] >= 1 for p in PARTIES)

        # --- stop: finish the round, then escalate to abort it now ---------------------------------
        gentle = CliRunner().invoke(
            main, ["coordinator", "stop", "--state", str(state), "--no-wait", "--reason", "maintenance"]
        )
        assert gentle.exit_code == 0, gentle.output
        assert "is in round 2 and will finish the round, then stop (maintenance)" in gentle.output
        _wait_until(
            "the stop request is acknowledged",
            lambda: _cli("status", "--state", str(state))["coordinator"]["stop_request"] or None,
            30,
            logs,
        )
        now = _cli("stop", "--state", str(state), "--now", "--timeout", "60")
        assert now["request"] == {"mode": "now", "reason": None} and now["round"] == 2, now
        assert now["exit"] == {
            "code": 4,
            "message": "stopped on the operator's request (maintenance) after committing round 1; "
            "restart with the same --state to resume at round 2",
        }, now
        assert coordinator.wait(30) == 4

        # --- afterwards: the durable facts, and no live coordinator ----------------------------------
        status = _cli("status", "--state", str(state))
        assert status["coordinator"]["running"] is False and status["round"] is None
        assert status["open_round"] == {"round": 2, "attempt": 1}
        rounds = _cli("rounds", "--state", str(state))["rounds"]
        assert [(r["round"], r["state"], r["in_progress"]) for r in rounds] == [
            (1, "committed", False),
            (2, "open", False),
        ]
        assert rounds[1]["selected"] == sorted(set(PARTIES) - {REVOKED})
        again = CliRunner().invoke(main, ["coordinator", "stop", "--state", str(state)])
        assert again.exit_code == 1 and again.output.startswith("Error: no coordinator is running"), again.output
        log_lines = [json.loads(line) for line in (state / "coordinator.log").read_text().splitlines()]
        messages = [line["message"] for line in log_lines]
        assert any(f"{REVOKED} was revoked" in message for message in messages)
        assert any(line.get("round") == 2 and line.get("phase") for line in log_lines)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

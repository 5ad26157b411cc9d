"""A failed round is history, not a dead end, with real processes: a coordinator whose selected
participants never come fails round 1 (every attempt), is SIGKILLed, and restarts on the same
state. The restart goes on with round 2 (it used to crash on every start with ``RoundStateError:
round 1 is already failed``), fails the remaining rounds the same way and exits normally; the
store records each round failed once and stays consistent."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("grpc")

from fedmask import pki  # noqa: E402
from fedmask.cli import main  # noqa: E402
from fedmask.testing import loopback  # noqa: E402
from fedmask.testing.processes import spawn_cli  # noqa: E402

PARTIES = ("hospital-a", "hospital-b", "bank")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _coordinator(federation: Path, state: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    args = ["coordinator", "run", "--federation", str(federation), "--state", str(state), "--config", str(config),
            "--port", str(_free_port())]  # fmt: skip
    return spawn_cli(args, log)


def _rounds(state: Path) -> list[dict]:
    result = CliRunner().invoke(main, ["coordinator", "rounds", "--state", str(state), "--json"])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output)["rounds"])


# Slow (two coordinator processes, about 30 s on 2 cores): CI runs it in its second step.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_restart_after_a_failed_round_goes_on_with_the_next(tmp_path: Path) -> None:
    federation = tmp_path / "federation"
    pki.init_federation(federation, federation_name="failed-rounds")
    pki.issue(federation, "coordinator", "main", hosts=["localhost"])
    for party in PARTIES:
        loopback.add_participant(federation, party, valid_days=30)
    config = tmp_path / "federation.json"
    config.write_text(
        json.dumps(
            {
                "participants": list(PARTIES),
                "rounds": 3,
                "threshold": 2,
                "attempts_per_round": 1,
                "join_timeout_s": 1.0,
                "quorum_grace_s": 1.0,
                "final_report_wait_s": 1.0,
                "training": {"mode": "bitfit", "max_seq_len": 16},
            }
        )
    )
    state, log = tmp_path / "coordinator", tmp_path / "coordinator.out"

    first = _coordinator(federation, state, config, log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            # The coordinator may be starting (no store yet, then one without its config): a
            # reader then gets a one-line error, and this poll simply looks again.
            read = CliRunner().invoke(main, ["coordinator", "rounds", "--state", str(state), "--json"])
            if read.exit_code == 0 and any(r["state"] == "failed" for r in json.loads(read.output)["rounds"]):
                break
            time.sleep(0.2)
        assert first.poll() is None, log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)  # no clean exit: the restart must cope with what is on disk
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    before = _rounds(state)
    assert before[0]["round"] == 1 and before[0]["state"] == "failed", before

    second = _coordinator(federation, state, config, log)
    try:
        assert second.wait(180) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    output = log.read_text()
    assert "Traceback" not in output and "already failed" not in output, output[-3000:]
    after = _rounds(state)
    assert [r["round"] for r in after] == [1, 2, 3], after
    assert all(r["state"] == "failed" for r in after), after
    assert after[0] == before[0]  # the failed round 1 stays as it was recorded
    verify = CliRunner().invoke(main, ["coordinator", "verify", "--state", str(state)])
    assert verify.exit_code == 0, verify.output

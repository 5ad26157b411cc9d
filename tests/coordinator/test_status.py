"""The live channel to the operator (``coordinator/status.py``), and the federation loop's side of
it: the status file it keeps, stopping it (request, signal, escalation), and the CA-signed roster
reloaded before every attempt (``pki revoke``/``issue`` without a restart).

The federation runs in-process with the secure-aggregation round replaced by a scripted one
(``_ScriptedRounds``): these tests are about what happens around a round, not inside it."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from fedmask import pki
from fedmask.coordinator import federation as federation_module
from fedmask.coordinator.abort_kinds import AttemptAbort
from fedmask.coordinator.config import FederationConfig, FederationError
from fedmask.coordinator.federation import EXIT_FINISHED, EXIT_STOPPED, Federation, LiveAuthenticator
from fedmask.coordinator.round_server import CoordinatorServer, RoundConfig, RoundOutcome, ServerSettings
from fedmask.coordinator.status import (
    STATUS_FORMAT,
    CoordinatorStatus,
    ParticipantStatus,
    RoundStatus,
    StatusError,
    StatusWriter,
    StopRequest,
    liveness,
    process_started_at,
    read_status,
    status_path,
    stop_request_path,
    take_stop_request,
    write_stop_request,
)
from fedmask.coordinator.store import FederationStore
from fedmask.coordinator.transport import MtlsAuthenticator, ServerSecurity, insecure_security
from fedmask.testing import loopback

PARTIES = ("bank", "hospital-a", "hospital-b")
BELOW_THRESHOLD = "only 1 of 3 participants joined, threshold is 2"


def _status(**changes: object) -> CoordinatorStatus:
    now = time.time()
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "pid_started_at": process_started_at(os.getpid()) or 0.0,
        "started_at": now - 60,
        "heartbeat_at": now,
        "heartbeat_interval_s": 5.0,
        "state": "running",
        "rounds_total": 3,
    }
    fields.update(changes)
    return CoordinatorStatus(**fields)  # type: ignore[arg-type]


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- the status document and its file ------------------------------------------------------------


class TestStatusFile:
    def test_round_trip_through_the_file(self, tmp_path):
        status = _status(
            round=RoundStatus(2, 1, "masked-input", 10.0, 12.0, ["a", "b"], {"a": "in", "b": "dropped"}),
            participants={"a": ParticipantStatus("a", "org-a", last_seen=11.0, epsilon=1.5, epsilon_round=2)},
        )
        writer = StatusWriter(status_path(tmp_path))
        writer.publish(status.to_json())
        writer.close()
        again = read_status(tmp_path)
        assert again == status
        assert again.round is not None and again.round.group(frozenset({"in"})) == ["a"]
        assert json.loads(status_path(tmp_path).read_text())["format"] == STATUS_FORMAT

    def test_only_the_newest_of_a_burst_is_kept_and_no_temporary_file_is_left(self, tmp_path):
        writer = StatusWriter(status_path(tmp_path))
        for number in range(200):
            writer.publish(_status(rounds_total=number + 1).to_json())
        writer.close()
        assert read_status(tmp_path).rounds_total == 200
        assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]

    def test_publish_does_not_wait_for_a_slow_disk(self, tmp_path, monkeypatch):
        """The event loop hands the document over; the writer thread does the disk I/O."""
        from fedmask.coordinator import status as status_module

        release = threading.Event()
        real_write = status_module.write_text_atomic

        def stalled_write(path, text):
            release.wait(10)
            real_write(path, text)

        monkeypatch.setattr(status_module, "write_text_atomic", stalled_write)
        writer = StatusWriter(status_path(tmp_path))
        started = time.monotonic()
        for number in range(50):
            writer.publish(_status(rounds_total=number + 1).to_json())
        assert time.monotonic() - started < 1.0
        release.set()
        writer.close()
        assert read_status(tmp_path).rounds_total == 50

    def test_missing_malformed_and_foreign_documents(self, tmp_path):
        assert read_status(tmp_path) is None
        status_path(tmp_path).write_text("{not json")
        with pytest.raises(StatusError, match="cannot read"):
            read_status(tmp_path)
        status_path(tmp_path).write_text(json.dumps({"format": "something/else"}))
        with pytest.raises(StatusError, match="not a fedmask.coordinator-status/1 document"):
            read_status(tmp_path)
        status_path(tmp_path).write_text(json.dumps({"format": STATUS_FORMAT, "pid": 1}))
        with pytest.raises(StatusError, match="malformed"):
            read_status(tmp_path)


class TestLiveness:
    def test_this_process_with_a_fresh_heartbeat_is_running(self):
        alive = liveness(_status())
        assert alive.running and alive.responsive
        assert alive.summary.startswith(f"running, pid {os.getpid()}")

    def test_a_stale_heartbeat_is_running_but_not_responding(self):
        alive = liveness(_status(heartbeat_at=time.time() - 60))
        assert alive.running and not alive.responsive
        assert "not responding" in alive.summary and "heartbeat 60 s ago" in alive.summary

    def test_a_process_that_is_gone_is_not_running(self):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait(30)
        alive = liveness(_status(pid=child.pid, pid_started_at=1.0))
        assert not alive.running and "is gone" in alive.summary

    def test_a_recycled_pid_is_not_the_coordinator(self):
        if not process_started_at(os.getpid()):
            pytest.skip("this system does not tell process start times")
        alive = liveness(_status(pid_started_at=(process_started_at(os.getpid()) or 0.0) + 100))
        assert not alive.running

    def test_a_coordinator_that_wrote_its_exit_is_not_running(self):
        alive = liveness(_status(exit={"code": 4, "message": "stopped on the operator's request"}))
        assert not alive.running and "stopped on the operator's request" in alive.summary


class TestStopRequest:
    def test_written_taken_once(self, tmp_path):
        write_stop_request(tmp_path, StopRequest("now", "disk replaced"))
        taken = take_stop_request(tmp_path)
        assert taken is not None and taken.mode == "now" and taken.reason == "disk replaced"
        assert taken.requested_by == os.getpid()
        assert take_stop_request(tmp_path) is None
        assert not stop_request_path(tmp_path).exists()

    def test_an_unreadable_request_still_means_stop(self, tmp_path):
        stop_request_path(tmp_path).write_text("garbage")
        taken = take_stop_request(tmp_path)
        assert taken is not None and taken.mode == "after-round" and taken.reason is None


# --- the federation loop around a scripted round ---------------------------------------------------


class _ScriptedRounds:
    """Stands in for ``CoordinatorServer.run_round``: each call records who was selected and runs
    the next step of a script (an async function of the round config returning an outcome)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *steps: Callable[[RoundConfig], Awaitable[RoundOutcome]]):
        self.steps = list(steps)
        self.selected: list[tuple[str, ...]] = []
        self.entered = asyncio.Event()
        scripted = self

        async def run_round(server: CoordinatorServer, config: RoundConfig) -> RoundOutcome:
            scripted.selected.append(config.participants)
            scripted.entered.set()
            step = scripted.steps.pop(0) if scripted.steps else aborted
            return await step(config)

        monkeypatch.setattr(CoordinatorServer, "run_round", run_round)


async def aborted(config: RoundConfig) -> RoundOutcome:
    """An attempt below the threshold: everyone but the first did not join."""
    return RoundOutcome(
        config.round_id,
        config.participants,
        joined=config.participants[:1],
        abort_phase=None,  # the join
        abort_kind=AttemptAbort.BELOW_THRESHOLD,
        abort_reason=BELOW_THRESHOLD,
        dropped={name: "[advertise-keys] did not join in time" for name in config.participants[1:]},
        join_s=0.01,
    )


async def hangs(config: RoundConfig) -> RoundOutcome:
    await asyncio.Event().wait()  # until cancelled
    raise AssertionError("unreachable")


def _tiny_initial() -> tuple[np.ndarray, list[dict[str, object]]]:
    return np.zeros(8, dtype=np.float32), [{"name": "lora.weight", "shape": [8], "dtype": "float32"}]


def _federation(state: Path, security: ServerSecurity | None = None, **kwargs: object) -> Federation:
    config = kwargs.pop("config", None) or FederationConfig(
        participants=PARTIES,
        rounds=2,
        threshold=2,
        security_mode="semi-honest",
        attempts_per_round=2,
        final_report_wait_s=0.01,
    )
    return Federation(
        config,  # type: ignore[arg-type]
        state,
        security or insecure_security(),
        settings=ServerSettings(host="127.0.0.1", port=0),
        initial=_tiny_initial(),
        heartbeat_s=0.05,
        **kwargs,  # type: ignore[arg-type]
    )


class TestStatusOfARun:
    def test_rounds_that_fail_are_in_the_status_and_the_run_ends_finished(self, tmp_path, monkeypatch):
        _ScriptedRounds(monkeypatch)  # every attempt aborts below the threshold
        lines: list[str] = []
        federation = _federation(tmp_path / "state", progress=lines.append)
        asyncio.run(federation.run())
        status = read_status(tmp_path / "state")
        assert status is not None and status.state == "finished" and status.round is None
        assert status.exit == {"code": EXIT_FINISHED, "message": "finished: 2 round(s) run"}
        assert status.federation_id == federation.federation_id and status.pid == os.getpid()
        assert status.listening is not None and status.listening.startswith("127.0.0.1:")
        assert sorted(status.participants) == list(PARTIES)
        assert any("round 2 failed" in line for line in lines)  # the caller's progress still gets every line
        assert not liveness(status).running

    def test_a_relative_log_file_is_recorded_absolute(self, tmp_path, monkeypatch):
        # `coordinator logs --state` may run from another directory than the coordinator's.
        _ScriptedRounds(monkeypatch)
        monkeypatch.chdir(tmp_path)
        asyncio.run(_federation(Path("state"), log_file=Path("logs/coordinator.log")).run())
        status = read_status(tmp_path / "state")
        assert status is not None and status.log_file == str(tmp_path / "logs" / "coordinator.log")

    def test_the_status_follows_the_round_while_it_runs(self, tmp_path, monkeypatch):
        rounds = _ScriptedRounds(monkeypatch, hangs)
        federation = _federation(tmp_path / "state")

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            await asyncio.sleep(0.2)  # a few heartbeats
            status = read_status(tmp_path / "state")
            assert status is not None and status.state == "running" and liveness(status).responsive
            assert status.round is not None and (status.round.number, status.round.attempt) == (1, 1)
            assert status.round.phase == "join" and status.round.selected == list(PARTIES)
            assert status.last_event == "round 1/2 (attempt 1): training task published"
            federation.request_stop(StopRequest("now", "test over"))
            await run

        asyncio.run(scenario())


def _fetches_the_task(federation: Federation, name: str) -> None:
    """``name`` asks for the published task (as a participant does before it trains)."""
    federation.service.last_seen[name] = time.time()


class TestStop:
    def test_stop_now_aborts_the_round_which_stays_open(self, tmp_path, monkeypatch):
        rounds = _ScriptedRounds(monkeypatch, hangs)
        lines: list[str] = []
        federation = _federation(tmp_path / "state", progress=lines.append)

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            federation.request_stop(StopRequest("now", "disk replaced"))
            await asyncio.wait_for(run, 10)

        asyncio.run(scenario())
        assert federation.exit_code == EXIT_STOPPED
        assert federation.exit_message == (
            "stopped on the operator's request (disk replaced); restart with the same --state to resume at round 1"
        )
        status = read_status(tmp_path / "state")
        assert status is not None and status.state == "stopped" and status.exit is not None
        assert status.exit["code"] == EXIT_STOPPED and status.stop_request["reason"] == "disk replaced"
        with FederationStore(tmp_path / "state" / "federation.db", read_only=True) as store:
            interrupted = store.interrupted_round()
        assert interrupted is not None and (interrupted.round_number, interrupted.attempt) == (1, 1)
        assert any("attempt 1 was aborted on the operator's request (disk replaced)" in line for line in lines)
        assert 'fedmask_round_attempts_aborted_total{reason_kind="operator"} 1.0' in federation.metrics.exposition()

    def test_stop_lets_the_attempt_finish_and_starts_no_other(self, tmp_path, monkeypatch):
        release = asyncio.Event()

        async def finishes_when_released(config: RoundConfig) -> RoundOutcome:
            await release.wait()
            return await aborted(config)

        rounds = _ScriptedRounds(monkeypatch, finishes_when_released)
        federation = _federation(tmp_path / "state")

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            _fetches_the_task(federation, "bank")
            federation.request_stop(StopRequest("after-round", None))
            await asyncio.sleep(0.1)
            assert not run.done()  # the attempt in progress is not cut short
            release.set()
            await asyncio.wait_for(run, 10)

        asyncio.run(scenario())
        assert len(rounds.selected) == 1  # the aborted attempt was not followed by another
        assert federation.exit_code == EXIT_STOPPED
        with FederationStore(tmp_path / "state" / "federation.db", read_only=True) as store:
            assert store.interrupted_round().round_number == 1

    def test_a_graceful_stop_while_nobody_has_the_task_stops_at_once(self, tmp_path, monkeypatch):
        # "Finish the round" would otherwise wait out the join timeout with nobody at work.
        rounds = _ScriptedRounds(monkeypatch, hangs)
        lines: list[str] = []
        federation = _federation(tmp_path / "state", progress=lines.append, handle_signals=True)

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(run, 10)

        asyncio.run(scenario())
        assert federation.stop_request is not None and federation.stop_request.mode == "now"
        assert federation.exit_code == EXIT_STOPPED
        assert "stop requested: no participant is at work on round 1: stopping now (SIGTERM received)" in lines

    def test_a_second_signal_escalates_and_a_request_file_says_how(self, tmp_path, monkeypatch):
        rounds = _ScriptedRounds(monkeypatch, hangs)
        federation = _federation(tmp_path / "state", handle_signals=True)

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the loop's handler is in place
            _fetches_the_task(federation, "bank")
            write_stop_request(tmp_path / "state", StopRequest("after-round", "maintenance"))
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert federation.stop_request is not None and federation.stop_request.reason == "maintenance"
            assert not run.done() and not stop_request_path(tmp_path / "state").exists()
            os.kill(os.getpid(), signal.SIGTERM)  # no request file: the second signal aborts now
            await asyncio.wait_for(run, 10)

        asyncio.run(scenario())
        assert federation.stop_request is not None
        assert federation.stop_request.mode == "now" and federation.stop_request.reason == "maintenance"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handed back
        assert federation.exit_code == EXIT_STOPPED

    def test_a_request_file_without_a_signal_is_picked_up_by_the_heartbeat(self, tmp_path, monkeypatch):
        rounds = _ScriptedRounds(monkeypatch, hangs)
        federation = _federation(tmp_path / "state")

        async def scenario() -> None:
            run = asyncio.create_task(federation.run())
            await rounds.entered.wait()
            write_stop_request(tmp_path / "state", StopRequest("now", "no signal allowed"))
            await asyncio.wait_for(run, 10)

        asyncio.run(scenario())
        assert federation.exit_code == EXIT_STOPPED

    def test_a_stop_request_left_from_an_earlier_run_is_discarded(self, tmp_path, monkeypatch):
        _ScriptedRounds(monkeypatch)
        write_stop_request(tmp_path / "state", StopRequest("now", "long ago"))
        lines: list[str] = []
        federation = _federation(tmp_path / "state", progress=lines.append)
        asyncio.run(federation.run())
        assert federation.exit_code == EXIT_FINISHED
        assert any("removed a stop request left from an earlier run" in line for line in lines)


# --- the roster, reloaded before every attempt --------------------------------------------------


@pytest.fixture
def pki_dir(tmp_path) -> Path:
    return loopback.make_federation(tmp_path / "federation", PARTIES)


def _roster_loader(directory: Path) -> Callable[[], pki.Roster]:
    return functools.partial(pki.load_roster, directory, pki.load_ca_certificate(directory))


def _malicious_config(**changes: object) -> FederationConfig:
    settings: dict[str, object] = {
        "participants": PARTIES,
        "rounds": 1,
        "threshold": 2,
        "attempts_per_round": 2,
        "final_report_wait_s": 0.01,
    }
    settings.update(changes)
    return FederationConfig(**settings)  # type: ignore[arg-type]


class TestLiveRoster:
    def test_a_participant_revoked_during_an_attempt_is_not_selected_for_the_next(self, tmp_path, monkeypatch, pki_dir):
        async def revoke_bank(config: RoundConfig) -> RoundOutcome:
            pki.remove_participant(pki_dir, "bank")
            return await aborted(config)

        rounds = _ScriptedRounds(monkeypatch, revoke_bank)
        lines: list[str] = []
        security = insecure_security(pki_dir)
        federation = _federation(
            tmp_path / "state",
            security,
            config=_malicious_config(),
            identity_keys=dict(security.roster.identity_keys),
            roster_loader=_roster_loader(pki_dir),
            progress=lines.append,
        )
        asyncio.run(federation.run())
        assert rounds.selected == [PARTIES, ("hospital-a", "hospital-b")]
        assert "bank was revoked (removed from the roster): not selected from the next round on" in lines
        assert federation.service.roster_names == frozenset({"hospital-a", "hospital-b"})
        assert "bank" not in federation.identity_keys
        status = read_status(tmp_path / "state")
        assert status is not None and status.participants["bank"].in_roster is False
        assert status.roster_version == federation.roster.version

    def test_a_restart_goes_on_without_a_revoked_participant(self, tmp_path, monkeypatch, pki_dir):
        """A config participant missing from the roster is refused at start -- unless an earlier
        round of this federation selected it: then it was revoked and is simply left out."""
        never = _malicious_config(participants=(*PARTIES, "clinic"), threshold=3)
        with pytest.raises(FederationError, match="not in the CA-signed roster: clinic"):
            Federation(never, tmp_path / "elsewhere", insecure_security(pki_dir))
        rounds = _ScriptedRounds(monkeypatch)
        first = _federation(
            tmp_path / "state",
            insecure_security(pki_dir),
            config=_malicious_config(attempts_per_round=1),
            identity_keys=dict(insecure_security(pki_dir).roster.identity_keys),
        )
        asyncio.run(first.run())
        first.store.close()
        pki.remove_participant(pki_dir, "bank")
        lines: list[str] = []
        security = insecure_security(pki_dir)
        again = _federation(
            tmp_path / "state",
            security,
            config=_malicious_config(attempts_per_round=1, rounds=2),
            identity_keys=dict(security.roster.identity_keys),
            allow_config_change=True,
            progress=lines.append,
        )
        asyncio.run(again.run())
        assert rounds.selected == [PARTIES, ("hospital-a", "hospital-b")]
        assert "not in the roster (revoked), so not selected: bank" in lines

    def test_an_older_roster_on_disk_is_refused(self, tmp_path, monkeypatch, pki_dir):
        current = pki.load_roster(pki_dir, pki.load_ca_certificate(pki_dir))
        older = pki.Roster(current.federation, current.version - 1, current.entries)
        _ScriptedRounds(monkeypatch)
        lines: list[str] = []
        security = insecure_security(pki_dir)
        federation = _federation(
            tmp_path / "state",
            security,
            config=_malicious_config(attempts_per_round=1),
            identity_keys=dict(security.roster.identity_keys),
            roster_loader=lambda: older,
            progress=lines.append,
        )
        asyncio.run(federation.run())
        assert federation.roster == current
        assert any("older than version" in line for line in lines)

    def test_too_few_left_in_the_roster_waits_for_an_issue(self, tmp_path, monkeypatch, pki_dir):
        monkeypatch.setattr(federation_module, "ROSTER_POLL_S", 0.05)

        async def revoke_two(config: RoundConfig) -> RoundOutcome:
            pki.remove_participant(pki_dir, "bank")
            pki.remove_participant(pki_dir, "hospital-a")
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, lambda: loopback.add_participant(pki_dir, "bank", force=True))
            return await aborted(config)

        rounds = _ScriptedRounds(monkeypatch, revoke_two)
        lines: list[str] = []
        security = insecure_security(pki_dir)
        federation = _federation(
            tmp_path / "state",
            security,
            config=_malicious_config(),
            identity_keys=dict(security.roster.identity_keys),
            roster_loader=_roster_loader(pki_dir),
            progress=lines.append,
        )
        asyncio.run(federation.run())
        assert rounds.selected == [PARTIES, ("bank", "hospital-b")]
        assert any("round 1 cannot start: only 1 of the participants are in the roster" in line for line in lines)
        assert any("bank was added to the roster: selected again" in line for line in lines)
        # The re-enrolled bank has a new identity key, and that is the one the round uses.
        assert federation.identity_keys["bank"] == federation.roster.identity_keys["bank"]

    def test_mutual_tls_checks_peers_against_the_reloaded_roster(self, pki_dir):
        from fedmask.coordinator.transport import AuthError

        paths = pki.FederationPaths(pki_dir)
        ca = paths.ca_cert.read_bytes()
        bank_certificate = paths.tls_cert("participant", "bank").read_bytes()

        class PeerContext:
            def auth_context(self) -> dict[str, list[bytes]]:
                return {"x509_pem_cert": [bank_certificate]}

        live = LiveAuthenticator(MtlsAuthenticator(ca, pki.load_roster(pki_dir, ca)))
        assert live.identify(PeerContext()) == "bank"  # type: ignore[arg-type]
        live.use_roster(pki.remove_participant(pki_dir, "bank"))
        with pytest.raises(AuthError, match="not in the roster"):
            live.identify(PeerContext())  # type: ignore[arg-type]
        assert live.description == "mutual TLS"

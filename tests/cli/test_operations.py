"""``fedmask coordinator status|rounds|participants|ledger|logs|stop`` in-process, on a store built
by hand and a status file as a running coordinator writes it; ``stop`` against a real coordinator
process (a federation whose rounds never end, so that only the stop ends it). The end-to-end run
with participant nodes is tests/integration/test_operations_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from fedmask.cli import main
from fedmask.cli.operations import follow, last_lines
from fedmask.coordinator.status import (
    CoordinatorStatus,
    ParticipantStatus,
    RoundStatus,
    StatusWriter,
    process_started_at,
    read_status,
    status_path,
)
from fedmask.coordinator.store import FederationStore

PARTIES = ["bank", "hospital-a", "hospital-b"]
ENCODING = {"clip_norm": 1.0, "scale": 2.0**16, "modulus_bits": 32}
COMMANDS = ["status", "rounds", "participants", "ledger", "logs", "stop"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["coordinator", *args])


def invoke_json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def assert_one_line_error(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Round 1 committed (bank dropped), round 2 failed, round 3 open; hospital-b excluded."""
    state = tmp_path / "state"
    with FederationStore(state / "federation.db") as store:
        store.initialise({"participants": PARTIES, "rounds": 4})
        store.commit_initial(store.save_checkpoint(0, np.zeros(4, dtype=np.float32), []))
        store.begin_round(1, b"r1", PARTIES)
        entry = {
            "survivors": ["hospital-a", "hospital-b"],
            "dropped": {"bank": "[masked-input] missed the masked-input deadline (60 s)"},
            "encoding": ENCODING,
            "epsilon": {"hospital-a": 1.5, "hospital-b": 1.25},
            "metrics": {"wall_s": 41.5},
        }
        store.commit_round(1, store.save_checkpoint(1, np.ones(4, dtype=np.float32), []), entry)
        store.begin_round(2, b"r2-a", PARTIES)
        store.begin_round(2, b"r2-b", PARTIES)
        store.fail_round(2, "advertise-keys: only 1 of 3 participants joined, threshold is 2")
        store.exclude("hospital-b", 2, b"r2-b", "sent a share envelope without a valid signature")
        store.begin_round(3, b"r3", ["bank", "hospital-a"])
    return state


def write_live_status(state: Path, **changes: object) -> CoordinatorStatus:
    """The status a coordinator running in round 3 writes (as this process, so it is alive)."""
    now = time.time()
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "pid_started_at": process_started_at(os.getpid()) or 0.0,
        "started_at": now - 600,
        "heartbeat_at": now,
        "heartbeat_interval_s": 5.0,
        "state": "running",
        "rounds_total": 4,
        "listening": "127.0.0.1:7443",
        "metrics_url": "http://127.0.0.1:9464/metrics",
        "roster_version": 6,
        "round": RoundStatus(
            3, 1, "masked-input", now - 30, now - 4, ["bank", "hospital-a"], {"bank": "waiting", "hospital-a": "in"}
        ),
        "participants": {
            "bank": ParticipantStatus("bank", "first-bank", in_roster=False, last_seen=now - 7200),
            "hospital-a": ParticipantStatus("hospital-a", "st-marys", last_seen=now - 2, epsilon=2.5, epsilon_round=3),
            "hospital-b": ParticipantStatus("hospital-b", "st-marys", excluded="round 2: sent a bad envelope"),
        },
        "last_event": "masked-input closed: 1/2 in: hospital-a",
    }
    fields.update(changes)
    status = CoordinatorStatus(**fields)  # type: ignore[arg-type]
    writer = StatusWriter(status_path(state))
    writer.publish(status.to_json())
    writer.close()
    return status


# --- status ------------------------------------------------------------------------------------------


def test_the_calibration_round_is_counted_apart_from_the_training_rounds(tmp_path):
    state = tmp_path / "state"
    with FederationStore(state / "federation.db") as store:
        store.initialise({"participants": PARTIES, "rounds": 1})
        store.commit_initial(store.save_checkpoint(0, np.zeros(4, dtype=np.float32), []))
        for number in (1, 2):  # round 2 is the calibration round of a 1-round federation
            store.begin_round(number, f"r{number}".encode(), PARTIES)
            entry = {"survivors": list(PARTIES), "dropped": {}, "encoding": ENCODING, "epsilon": {}, "metrics": {}}
            store.commit_round(number, store.save_checkpoint(number, np.ones(4, dtype=np.float32), []), entry)
    document = invoke_json("status", "--state", str(state))
    assert document["rounds_committed"] == 1 and document["rounds_total"] == 1
    assert document["calibration"] == "committed"
    result = CliRunner().invoke(main, ["coordinator", "status", "--state", str(state)])
    assert "1 of 1 committed, 0 failed; calibration round committed" in result.output


def test_status_of_a_running_coordinator(state):
    write_live_status(state)
    document = invoke_json("status", "--state", str(state))
    assert document["rounds_total"] == 4 and document["rounds_committed"] == 1 and document["rounds_failed"] == 1
    assert document["last_committed"]["round"] == 1
    assert document["open_round"] == {"round": 3, "attempt": 1}
    coordinator = document["coordinator"]
    assert coordinator["running"] and coordinator["responsive"] and coordinator["pid"] == os.getpid()
    current = document["round"]
    assert (current["number"], current["attempt"], current["phase"]) == (3, 1, "masked-input")
    assert current["joined"] == ["hospital-a"] and current["late"] == ["bank"] and current["gone"] == []
    assert 3 <= current["phase_for_s"] < 60
    with FederationStore(state / "federation.db", read_only=True) as store:
        assert document["federation_id"] == store.federation_id()

    text = invoke("status", "--state", str(state)).output
    assert f"coordinator: running, pid {os.getpid()}" in text and "metrics http://127.0.0.1:9464/metrics" in text
    assert "round 3 of 4 (attempt 1): masked-input for 4 s" in text
    assert "  joined: hospital-a" in text and "  late:   bank" in text and "  gone:   -" in text
    assert "last committed: round 1 at " in text and "1 of 4 committed, 1 failed" in text


def test_status_with_no_coordinator_running(state):
    document = invoke_json("status", "--state", str(state))
    assert document["coordinator"] == {"running": False, "summary": "no coordinator has run here (no status.json)"}
    assert document["round"] is None and document["open_round"]["round"] == 3
    assert "round 3 is open (attempt 1, interrupted" in invoke("status", "--state", str(state)).output

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    write_live_status(state, pid=child.pid)  # a coordinator that was killed
    document = invoke_json("status", "--state", str(state))
    assert document["coordinator"]["running"] is False and document["coordinator"]["state"] == "gone"
    assert "is gone (killed or crashed" in document["coordinator"]["summary"]
    assert document["round"] is None  # what it last wrote is history, not the present


# --- rounds, participants, ledger -------------------------------------------------------------------


def test_rounds(state):
    write_live_status(state)
    rounds = invoke_json("rounds", "--state", str(state))["rounds"]
    assert [(r["round"], r["state"], r["attempts"], r["in_progress"]) for r in rounds] == [
        (1, "committed", 1, False),
        (2, "failed", 2, False),
        (3, "open", 1, True),
    ]
    assert rounds[0]["survivors"] == ["hospital-a", "hospital-b"] and rounds[0]["wall_s"] == 41.5
    assert rounds[0]["dropped"] == {"bank": "[masked-input] missed the masked-input deadline (60 s)"}
    assert rounds[1]["failure_reason"].startswith("advertise-keys: only 1 of 3")
    assert rounds[2]["selected"] == ["bank", "hospital-a"] and rounds[2]["wall_s"] >= 0

    lines = invoke("rounds", "--state", str(state)).output.splitlines()
    assert lines[0].split() == ["ROUND", "STATE", "ATTEMPTS", "SURVIVORS", "DROPPED", "WALL"]
    assert lines[1].split()[:3] == ["1", "committed", "1"] and lines[1].endswith("41.5 s")
    assert lines[3].split()[:4] == ["3", "open", "(in", "progress)"]
    assert "round 1: bank dropped: [masked-input] missed the masked-input deadline (60 s)" in lines
    assert "round 2: failed: advertise-keys: only 1 of 3 participants joined, threshold is 2" in lines


def test_participants_live_and_durable(state):
    write_live_status(state)
    participants = {p["name"]: p for p in invoke_json("participants", "--state", str(state))["participants"]}
    assert list(participants) == PARTIES
    bank, a, b = participants["bank"], participants["hospital-a"], participants["hospital-b"]
    assert (a["online"], a["epsilon"], a["epsilon_round"], a["organisation"]) == (True, 2.5, 3, "st-marys")
    assert a["round_standing"] == "in"
    assert (bank["online"], bank["in_roster"], bank["epsilon"]) == (False, False, None)
    assert b["excluded"].startswith("round 2: sent a share envelope")
    assert (b["epsilon"], b["epsilon_round"]) == (1.25, 1)  # from the ledger: it never reported live

    lines = invoke("participants", "--state", str(state)).output.splitlines()
    assert lines[0].split() == ["NAME", "ORGANISATION", "ONLINE", "LAST", "SEEN", "EPSILON", "ROUND", "STATUS"]
    assert lines[1].split() == ["bank", "first-bank", "no", "2", "h", "ago", "-", "-", "revoked"]
    assert lines[2].split()[:7] == ["hospital-a", "st-marys", "yes", "2", "s", "ago", "2.500"]
    assert "excluded (round 2: sent a share envelope" in lines[3]


def test_participants_from_the_roster_of_a_federation_directory(state, tmp_path):
    from fedmask import pki
    from fedmask.testing.loopback import make_federation

    federation = make_federation(tmp_path / "federation", PARTIES, organisations={"bank": "first-bank"})
    pki.remove_participant(federation, "hospital-a")
    rows = invoke_json("participants", "--state", str(state), "--federation", str(federation))["participants"]
    by_name = {row["name"]: row for row in rows}
    assert by_name["bank"]["organisation"] == "first-bank" and by_name["bank"]["in_roster"] is True
    assert by_name["hospital-a"]["in_roster"] is False
    assert all(row["online"] is False for row in rows)  # no coordinator running


def test_ledger(state):
    ledger = invoke_json("ledger", "--state", str(state))["ledger"]
    with FederationStore(state / "federation.db", read_only=True) as store:
        assert ledger == store.ledger()
    lines = invoke("ledger", "--state", str(state)).output.splitlines()
    assert lines[0].split()[:4] == ["ROUND", "COMMITTED", "ATTEMPT", "SURVIVORS"]
    assert lines[1].split()[0] == "1" and "hospital-a, hospital-b" in lines[1] and "1.500" in lines[1]


def test_an_empty_federation(tmp_path):
    state = tmp_path / "state"
    with FederationStore(state / "federation.db") as store:
        store.initialise({"participants": PARTIES, "rounds": 2})
    assert invoke("rounds", "--state", str(state)).output.strip() == "no rounds yet"
    assert invoke("ledger", "--state", str(state)).output.strip() == "no committed rounds yet"
    assert "last committed: none yet; 0 of 2 committed" in invoke("status", "--state", str(state)).output


# --- logs -----------------------------------------------------------------------------------------


def test_logs_prints_the_file_and_its_tail(state):
    (state / "coordinator.log").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    assert invoke("logs", "--state", str(state)).output.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert invoke("logs", "--state", str(state), "-n", "2").output.splitlines() == ["line 4", "line 5"]
    elsewhere = state.parent / "elsewhere.log"
    elsewhere.write_text("from --log-file\n")
    write_live_status(state, log_file=str(elsewhere))  # the coordinator says where its log is
    assert invoke("logs", "--state", str(state)).output == "from --log-file\n"
    assert invoke_json("logs", "--state", str(state), "--json") == {
        "file": str(elsewhere),
        "lines": ["from --log-file"],
    }
    refused = invoke("logs", "--state", str(state), "--json", "--follow")
    assert refused.exit_code == 2 and "--json prints one document and --follow never ends" in refused.output


def test_last_lines_of_a_file_larger_than_a_block(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"{i:08d} " + "x" * 100 + "\n" for i in range(3000)))
    assert [line[:8] for line in last_lines(path, 3)] == ["00002997", "00002998", "00002999"]
    assert last_lines(path, 0) == []


def test_follow_prints_appended_lines_and_survives_rotation(tmp_path):
    path = tmp_path / "coordinator.log"
    path.write_text("old\n")
    seen: list[str] = []
    done = threading.Event()
    follower = threading.Thread(
        target=follow,
        args=(path, seen.append),
        kwargs={"start_at_end": True, "keep_going": lambda: not done.is_set(), "poll_s": 0.01},
    )
    follower.start()
    try:
        _wait(lambda: follower.is_alive())
        time.sleep(0.05)  # let it open the file and seek to its end
        with path.open("a") as handle:
            handle.write("first\nsec")
            handle.flush()
            _wait(lambda: seen == ["first"])
            handle.write("ond\n")
        _wait(lambda: seen == ["first", "second"])
        path.rename(tmp_path / "coordinator.log.1")  # logrotate
        path.write_text("after rotation\n")
        _wait(lambda: seen == ["first", "second", "after rotation"])
    finally:
        done.set()
        follower.join(10)
    assert not follower.is_alive()


def _wait(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- stop ------------------------------------------------------------------------------------------

# A coordinator whose rounds never end (the secure-aggregation round is replaced), so that only a
# stop ends it: the real federation loop, signal handling and status file, without participants.
HANGING_COORDINATOR = textwrap.dedent(
    """
    import asyncio, sys, time
    import numpy as np
    from fedmask.coordinator.config import FederationConfig
    from fedmask.coordinator.federation import Federation
    from fedmask.coordinator.observability import start_logging
    from fedmask.coordinator.round_server import CoordinatorServer, ServerSettings
    from fedmask.coordinator.transport import insecure_security

    async def never_ends(server, config):
        federation.service.last_seen["a"] = time.time()  # "a" has the task: a graceful stop waits for it
        await asyncio.Event().wait()

    CoordinatorServer.run_round = never_ends
    config = FederationConfig(participants=("a", "b", "c"), rounds=2, threshold=2, security_mode="semi-honest")
    federation = Federation(
        config, sys.argv[1], insecure_security(), settings=ServerSettings(port=0),
        initial=(np.zeros(8, dtype=np.float32), [{"name": "w", "shape": [8], "dtype": "float32"}]),
        heartbeat_s=0.2, handle_signals=True,
    )
    logs = start_logging("text", None)
    asyncio.run(federation.run())
    logs.close()
    sys.exit(federation.exit_code)
    """
)


def test_stop_then_stop_now_against_a_running_coordinator(tmp_path):
    state = tmp_path / "state"
    coordinator = subprocess.Popen(
        [sys.executable, "-c", HANGING_COORDINATOR, str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def in_round_one() -> bool:
            status = read_status(state) if status_path(state).exists() else None
            return status is not None and status.round is not None and status.round.number == 1

        _wait(in_round_one, 60)
        gentle = invoke("stop", "--state", str(state), "--reason", "new disk", "--timeout", "0.5")
        assert gentle.exit_code == 3, gentle.output  # the round never ends by itself
        assert "is still running (join) after 0.5 s; `fedmask coordinator stop --now`" in gentle.output
        assert invoke_json("status", "--state", str(state))["coordinator"]["stop_request"]["mode"] == "after-round"
        now = invoke_json("stop", "--state", str(state), "--now")
        assert now == {
            "pid": coordinator.pid,
            "request": {"mode": "now", "reason": None},
            "round": 1,
            "signalled": True,
            "exit": {
                "code": 4,
                "message": "stopped on the operator's request (new disk); restart with the same --state to resume "
                "at round 1",
            },
        }
        assert coordinator.wait(30) == 4
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait(30)
    output = coordinator.stdout.read() if coordinator.stdout else ""
    assert "stop requested: finishing the attempt of round 1 in progress, then stopping (new disk)" in output
    assert "stop requested: aborting round 1 now (new disk)" in output
    document = invoke_json("status", "--state", str(state))
    assert document["coordinator"]["running"] is False and document["open_round"] == {"round": 1, "attempt": 1}
    assert_one_line_error(invoke("stop", "--state", str(state)), "no coordinator is running", "exited")


@pytest.mark.parametrize("as_json", [False, True])
def test_stop_without_waiting_between_rounds_says_it_stops_at_once(state, as_json):
    """Nobody at work: there is no round to finish, and the answer must not promise one."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        write_live_status(state, pid=child.pid, pid_started_at=process_started_at(child.pid) or 0.0, round=None)
        args = ["stop", "--state", str(state), "--no-wait", "--reason", "maintenance"]
        if as_json:
            assert invoke_json(*args, "--json") == {
                "pid": child.pid,
                "request": {"mode": "after-round", "reason": "maintenance"},
                "round": None,
                "signalled": True,
            }
        else:
            result = invoke(*args)
            assert result.exit_code == 0, result.output
            assert result.output == (
                f"stop requested (SIGTERM sent): coordinator pid {child.pid} is between rounds and will stop "
                "(maintenance)\n"
            )
        assert child.wait(30) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)


def test_stop_without_a_coordinator(state):
    assert_one_line_error(invoke("stop", "--state", str(state)), "no coordinator has run with --state")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    write_live_status(state, pid=child.pid)
    assert_one_line_error(invoke("stop", "--state", str(state), "--now"), "no coordinator is running", "is gone")


# --- bad state directories ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_state_directory(tmp_path, command):
    missing = tmp_path / "nowhere"
    assert_one_line_error(invoke(command, "--state", str(missing)), f"no coordinator state directory at {missing}")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_given_as_state_directory(tmp_path, command):
    regular = tmp_path / "file"
    regular.write_text("not a directory\n")
    assert_one_line_error(invoke(command, "--state", str(regular)), "is not a directory")


@pytest.mark.parametrize("command", ["status", "rounds", "participants", "ledger"])
def test_a_directory_without_a_store(tmp_path, command):
    assert_one_line_error(invoke(command, "--state", str(tmp_path)), "no federation store at", "--state?")


def test_logs_without_a_log_and_a_damaged_status_file(tmp_path, state):
    assert_one_line_error(invoke("logs", "--state", str(tmp_path)), "no coordinator log at")
    status_path(state).write_text("{half a docu")
    assert_one_line_error(invoke("status", "--state", str(state)), "cannot read", "status.json")


READ_ONLY_COMMANDS = ["status", "rounds", "participants", "ledger", "verify"]


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


@pytest.mark.parametrize("command", [*READ_ONLY_COMMANDS, "logs"])
def test_read_only_commands_create_no_file(state, command):
    """They used to leave federation.db-wal and federation.db-shm behind."""
    (state / "coordinator.log").write_text("started\n")
    before = files_under(state)
    result = invoke(command, "--state", str(state))
    assert result.exit_code == 0, result.output
    assert files_under(state) == before


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_an_empty_store_file_is_named_as_such(tmp_path, command):
    """It used to say 'could not switch to WAL journaling (got 'delete')', and create -wal and -shm."""
    (tmp_path / "federation.db").write_bytes(b"")
    database = tmp_path / "federation.db"
    assert_one_line_error(
        invoke(command, "--state", str(tmp_path)), f"{database} is empty: not a fedmask coordinator store"
    )
    assert files_under(tmp_path) == ["federation.db"]


@pytest.mark.parametrize("command", ["status", "rounds", "verify"])
def test_a_damaged_store_is_one_line(state, command):
    """A page SQLite cannot read used to end in a traceback (sqlite3.DatabaseError)."""
    database = state / "federation.db"
    with sqlite3.connect(database) as db:
        (root_page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'rounds'").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with database.open("r+b") as handle:
        handle.seek((root_page - 1) * page_size)
        handle.write(b"\xff" * page_size)
    assert_one_line_error(invoke(command, "--state", str(state)), str(database), "malformed")


def test_a_backup_that_cannot_be_written_is_one_line_and_leaves_nothing(state, tmp_path):
    """It used to end in a traceback: sqlite3.OperationalError: unable to open database file."""
    before = files_under(state)
    missing = tmp_path / "missing" / "backup.db"
    assert_one_line_error(
        invoke("backup", "--state", str(state), "--out", str(missing)),
        f"cannot write the backup {missing}: No such file or directory",
    )
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert_one_line_error(
        invoke("backup", "--state", str(state), "--out", str(not_a_directory / "backup.db")), "Not a directory"
    )
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        assert_one_line_error(
            invoke("backup", "--state", str(state), "--out", str(locked / "backup.db")), "Permission denied"
        )
        assert os.listdir(locked) == []
    assert files_under(state) == before  # and the store it read is as it was


@pytest.mark.parametrize(
    "command", [["logs"], ["status"], ["rounds"], ["participants"], ["ledger"], ["ledger", "--json"], ["verify"]]
)
def test_a_reader_that_stops_early_is_no_error(state, command):
    """`fedmask coordinator logs | head -8` used to print `Error: Broken pipe` and exit 1."""
    (state / "coordinator.log").write_text("".join(f"line {n}\n" for n in range(20_000)))
    child = subprocess.Popen(
        [sys.executable, "-m", "fedmask.cli", "coordinator", *command, "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before the first line: every write fails
    stderr = child.stderr.read().decode()
    assert child.wait(60) == 141, stderr  # as if killed by SIGPIPE, as `cat` would be
    assert stderr == ""


def test_the_state_directory_can_come_from_the_environment(state):
    result = CliRunner(env={"FEDMASK_COORDINATOR_STATE": str(state)}).invoke(main, ["coordinator", "ledger", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ledger"][0]["round"] == 1


def test_coordinator_run_refuses_a_metrics_port_in_use_before_writing_anything(tmp_path):
    from fedmask.testing.loopback import make_federation

    federation = make_federation(tmp_path / "federation", PARTIES)
    config = tmp_path / "federation.json"
    config.write_text(json.dumps({"participants": PARTIES, "rounds": 1}))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["coordinator", "run", "--federation", str(federation), "--state", str(tmp_path / "state"),
             "--config", str(config), "--insecure", "--port", "0", "--metrics-port", str(port)],
        )  # fmt: skip
    assert result.output.strip().splitlines()[-1] == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "state").exists()

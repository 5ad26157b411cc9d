"""The live channel between a running coordinator and ``fedmask coordinator status``/``stop``.

The coordinator keeps ``STATE/status.json`` current: it is rewritten atomically
(``fedmask.durable.write_text_atomic``: a reader sees the old document or the new one, never half)
whenever something an operator cares about changes -- a round opened, its phase changed, a
participant joined or left, a round committed or failed, a report arrived -- and at least every
``heartbeat_interval_s`` seconds. The heartbeat is written by a task on the coordinator's event
loop, so a fresh ``heartbeat_at`` proves the loop is serving, and the pid (with its start time,
against pid reuse) proves the process is there. The file is written from a thread of its own
(``StatusWriter``): the loop only hands over the latest document, never waits on the disk.

To stop a coordinator, ``fedmask coordinator stop`` writes ``STATE/stop-request.json`` (how and
why) and sends SIGTERM to the recorded pid; the coordinator reads the request when the signal
arrives (or at its next heartbeat, should the signal not reach it), deletes it, and finishes or
aborts its round. A plain SIGTERM or SIGINT with no request file means "finish the round"; a
second one means "abort it now".

Durable facts (committed rounds, the ledger, exclusions) are never read from here: they come
from the store. This file only says what the store cannot: what is happening right now.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedmask.durable import write_text_atomic

STATUS_FORMAT = "fedmask.coordinator-status/1"
STATUS_FILE_NAME = "status.json"
STOP_REQUEST_FORMAT = "fedmask.coordinator-stop/1"
STOP_REQUEST_FILE_NAME = "stop-request.json"
DEFAULT_HEARTBEAT_S = 5.0
# A heartbeat older than this many intervals means the event loop is not serving.
STALE_HEARTBEATS = 3
# A participant seen this recently (a call, or a secure-aggregation stream) counts as online.
ONLINE_WINDOW_S = 60.0
# Round standings (``CoordinatorServer.round_roster``) in the three groups ``status`` shows.
JOINED_STANDINGS = frozenset({"joined", "in"})
LATE_STANDINGS = frozenset({"waiting", "connected"})
GONE_STANDINGS = frozenset({"gone", "dropped"})
LIVE_STANDINGS = frozenset({"connected", "joined", "in"})

StopMode = Literal["after-round", "now"]
STOP_MODES: tuple[StopMode, ...] = ("after-round", "now")
CoordinatorState = Literal["starting", "running", "finishing", "stopping", "finished", "stopped", "failed"]


class StatusError(Exception):
    """A status or stop-request file cannot be read (the message says which and why)."""


@dataclass
class RoundStatus:
    """The round being run: its attempt, phase and each selected participant's standing."""

    number: int
    attempt: int
    phase: str  # "join" (training, then joining), a protocol phase, "decode", "commit", "waiting for roster"
    opened_at: float  # this attempt's task was published
    phase_since: float
    selected: list[str]
    standing: dict[str, str] = field(default_factory=dict)  # name -> waiting/connected/joined/gone/dropped/in

    def group(self, standings: frozenset[str]) -> list[str]:
        return sorted(name for name, standing in self.standing.items() if standing in standings)


@dataclass
class ParticipantStatus:
    """One participant of the federation's config, as the running coordinator sees it."""

    name: str
    organisation: str | None = None
    in_roster: bool = True  # False once revoked from the CA-signed roster
    excluded: str | None = None  # why, when proven to misbehave (from the store)
    last_seen: float | None = None  # wall-clock time of its last call or stream activity
    epsilon: float | None = None  # record-level, as it last reported (cumulative)
    epsilon_round: int | None = None


@dataclass
class CoordinatorStatus:
    """The document in ``STATE/status.json``."""

    pid: int
    pid_started_at: float  # the process's start (``process_started_at``): a recycled pid has another
    started_at: float
    heartbeat_at: float
    heartbeat_interval_s: float
    state: CoordinatorState
    rounds_total: int
    federation_id: str | None = None
    listening: str | None = None
    metrics_url: str | None = None
    dashboard_url: str | None = None
    log_file: str | None = None
    roster_version: int | None = None
    round: RoundStatus | None = None
    last_committed: dict[str, Any] | None = None  # {"round": r, "at": wall-clock time}
    participants: dict[str, ParticipantStatus] = field(default_factory=dict)
    stop_request: dict[str, Any] | None = None
    exit: dict[str, Any] | None = None  # {"code": c, "message": "..."} once it has stopped
    last_event: str | None = None
    format: str = STATUS_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CoordinatorStatus:
        if data.get("format") != STATUS_FORMAT:
            raise StatusError(f"not a {STATUS_FORMAT} document (format {data.get('format')!r})")
        fields = dict(data)
        try:
            round_data = fields.pop("round", None)
            participants = fields.pop("participants", {}) or {}
            return cls(
                **fields,
                round=RoundStatus(**round_data) if round_data else None,
                participants={name: ParticipantStatus(**entry) for name, entry in participants.items()},
            )
        except TypeError as exc:
            raise StatusError(f"malformed status document: {exc}") from None


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE_NAME


def stop_request_path(state_dir: Path) -> Path:
    return state_dir / STOP_REQUEST_FILE_NAME


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc/PID/stat``), or None
    when there is no such process (or it has exited and awaits collection by its parent). 0.0
    where the system does not say: then the pid alone is compared."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, and belongs to someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else 0.0
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ")".
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):
        return None  # exited; only its parent has not collected its exit status yet
    try:
        return float(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return 0.0


def read_status(state_dir: Path) -> CoordinatorStatus | None:
    """The last status a coordinator wrote in ``state_dir``, or None if none ever ran there."""
    path = status_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise StatusError(f"{path} is not a JSON object")
    return CoordinatorStatus.from_json(data)


@dataclass(frozen=True)
class Liveness:
    """Whether the coordinator that wrote a status document is running, and how fresh it is."""

    running: bool
    responsive: bool
    heartbeat_age_s: float
    detail: str  # e.g. "pid 1234, heartbeat 2 s ago"; "it exited: ..."; "pid 1234 is gone (...)"

    @property
    def summary(self) -> str:
        """One phrase: "running, pid 1234, heartbeat 2 s ago", "not running: it exited: ..."."""
        if self.running:
            return ("running, " if self.responsive else "running but not responding: ") + self.detail
        return "not running: " + self.detail


def same_process_running(status: CoordinatorStatus) -> bool:
    """The process that wrote ``status`` is still there (its pid, with the same start time where
    the system tells start times: a pid may have been recycled)."""
    started = process_started_at(status.pid)
    if started is None:
        return False
    return not (started and status.pid_started_at and started != status.pid_started_at)


def liveness(status: CoordinatorStatus, now: float | None = None) -> Liveness:
    """Is it running? Its process must exist with the recorded start time (pids are recycled)
    and it must not have written its exit; it is responsive while its heartbeat is fresh."""
    now = time.time() if now is None else now
    age = max(0.0, now - status.heartbeat_at)
    heartbeat = f"heartbeat {age:.0f} s ago"
    if status.exit is not None:
        return Liveness(
            False, False, age, f"it exited with status {status.exit.get('code')}: {status.exit.get('message')}"
        )
    if not same_process_running(status):
        return Liveness(False, False, age, f"pid {status.pid} is gone (killed or crashed; last {heartbeat})")
    responsive = age <= STALE_HEARTBEATS * status.heartbeat_interval_s + 1.0
    return Liveness(True, responsive, age, f"pid {status.pid}, {heartbeat}")


class StatusWriter:
    """Writes the latest published status document from a thread of its own: ``publish`` never
    waits for the disk, and a burst of changes is written once (only the newest matters)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: str | None = None
        self._changed = threading.Condition()
        self._closing = False
        self.failures = 0  # writes that failed (disk full...): the next publish tries again
        self._thread = threading.Thread(target=self._write_loop, name="fedmask-status", daemon=True)
        self._thread.start()

    def publish(self, document: Mapping[str, Any]) -> None:
        text = json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
        with self._changed:
            self._pending = text
            self._changed.notify()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while self._pending is None and not self._closing:
                    self._changed.wait()
                text, self._pending = self._pending, None
                closing = self._closing
            if text is not None:
                self._write(text)
            if closing and text is None:
                return

    def _write(self, text: str) -> None:
        try:
            write_text_atomic(self.path, text)
        except OSError:
            self.failures += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is pending and stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout_s)


@dataclass(frozen=True)
class StopRequest:
    """What ``fedmask coordinator stop`` asks of a running coordinator."""

    mode: StopMode
    reason: str | None = None
    requested_at: float = field(default_factory=time.time)
    requested_by: int = field(default_factory=os.getpid)

    def describe(self) -> str:
        how = "abort the round now" if self.mode == "now" else "finish the round, then stop"
        return how + (f" ({self.reason})" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return {"format": STOP_REQUEST_FORMAT, **asdict(self)}


def write_stop_request(state_dir: Path, request: StopRequest) -> Path:
    path = stop_request_path(state_dir)
    write_text_atomic(path, json.dumps(request.to_json(), sort_keys=True) + "\n")
    return path


def take_stop_request(state_dir: Path) -> StopRequest | None:
    """Read and remove the stop request, if there is one (an unreadable one is removed too and
    taken as a plain "finish the round": someone asked for a stop)."""
    path = stop_request_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
    path.unlink(missing_ok=True)
    if not isinstance(data, dict):
        data = {}
    mode, reason = data.get("mode"), data.get("reason")
    requested_at, requested_by = data.get("requested_at"), data.get("requested_by")
    return StopRequest(
        mode="now" if mode == "now" else "after-round",
        reason=reason if isinstance(reason, str) and reason else None,
        requested_at=float(requested_at) if isinstance(requested_at, int | float) else time.time(),
        requested_by=requested_by if isinstance(requested_by, int) else 0,
    )

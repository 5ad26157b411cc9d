"""The operator's commands for a running (or stopped) federation, under ``fedmask coordinator``:

    status        the federation, its current round and phase, who joined / is late / is gone,
                  the last committed round, whether a coordinator is running
    rounds        every round: state, attempts, survivors, dropped with reasons, wall time
    participants  the roster: organisation, online / last seen, epsilon as reported, excluded
    ledger        the committed ledger entries
    logs          the coordinator's log file (--follow: until interrupted)
    stop          finish (or, with --now, abort) the current round, then exit

Durable facts come from the store, opened read-only (safe while the coordinator writes); live
facts from ``STATE/status.json``, which the running coordinator keeps current
(``fedmask.coordinator.status``). ``--json`` prints one JSON document; without it, a short table.
A bad state directory, a missing store or (for ``stop``) no running coordinator ends in one
``Error:`` line. Output piped into a reader that stops early (``| head``) ends the command quietly,
with status 141 as if killed by SIGPIPE.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import click

from fedmask import pki
from fedmask.coordinator.status import (
    GONE_STANDINGS,
    JOINED_STANDINGS,
    LATE_STANDINGS,
    LIVE_STANDINGS,
    ONLINE_WINDOW_S,
    CoordinatorStatus,
    Liveness,
    StatusError,
    StopRequest,
    liveness,
    read_status,
    same_process_running,
    write_stop_request,
)
from fedmask.coordinator.store import FederationStore, RoundRecord, StoreError

STATE_ENV = "FEDMASK_COORDINATOR_STATE"
LOG_FILE_NAME = "coordinator.log"  # as ``coordinator run`` writes it by default
# ``stop`` exit statuses: 0 it stopped; 3 still running when --timeout passed.
EXIT_STILL_RUNNING = 3

state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path),  # checked by the command, for a one-line error
    envvar=STATE_ENV,
    required=True,
    help=f"The coordinator's state directory (as given to `coordinator run --state`; or ${STATE_ENV}).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


# --- reading the state directory ----------------------------------------------------------------


def checked_state_dir(state_dir: Path) -> Path:
    if not state_dir.exists():
        raise click.ClickException(f"no coordinator state directory at {state_dir}")
    if not state_dir.is_dir():
        raise click.ClickException(f"{state_dir} is not a directory (give the coordinator's --state)")
    return state_dir


@contextlib.contextmanager
def open_store(state_dir: Path) -> Iterator[FederationStore]:
    """The federation's store, read-only; one ``Error:`` line when there is none."""
    checked_state_dir(state_dir)
    try:
        store = FederationStore(state_dir / "federation.db", read_only=True)
    except StoreError as exc:
        raise click.ClickException(f"{exc} (is {state_dir} a coordinator's --state?)") from None
    try:
        yield store
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:  # e.g. locked past the busy timeout, or damaged
        raise click.ClickException(f"cannot read {store.path}: {exc}") from None
    finally:
        store.close()


def load_status(state_dir: Path) -> CoordinatorStatus | None:
    try:
        return read_status(state_dir)
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None


def live_status(state_dir: Path) -> tuple[CoordinatorStatus | None, Liveness | None]:
    status = load_status(state_dir)
    return status, (liveness(status) if status is not None else None)


def emit_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def local_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


# --- status ---------------------------------------------------------------------------------------


def status_document(state_dir: Path, now: float | None = None) -> dict[str, Any]:
    """What ``status --json`` prints: durable facts from the store, live ones from status.json."""
    now = time.time() if now is None else now
    with open_store(state_dir) as store:
        federation_id = store.federation_id()
        config = store.config()
        rounds = store.rounds()
    status, alive = live_status(state_dir)
    committed = [r for r in rounds if r.state.value == "committed"]
    open_rounds = [r for r in rounds if r.state.value == "open"]
    total = config.get("rounds")
    # The round after the last training round is the calibration round (docs/federation.md).
    calibration = [r for r in rounds if isinstance(total, int) and r.round_number > total]
    document: dict[str, Any] = {
        "state_dir": str(state_dir),
        "federation_id": federation_id,
        "rounds_total": total,
        "rounds_committed": sum(1 for r in committed if r not in calibration),
        "rounds_failed": sum(1 for r in rounds if r.state.value == "failed" and r not in calibration),
        "calibration": calibration[-1].state.value if calibration else None,
        "last_committed": (
            {"round": committed[-1].round_number, "at": committed[-1].finished_at} if committed else None
        ),
        "open_round": (
            {"round": open_rounds[-1].round_number, "attempt": open_rounds[-1].attempt} if open_rounds else None
        ),
        "coordinator": coordinator_facts(status, alive),
        "round": None,
        "last_event": status.last_event if status is not None else None,
    }
    if status is not None and alive is not None and alive.running and status.round is not None:
        current = status.round
        document["round"] = {
            "number": current.number,
            "attempt": current.attempt,
            "phase": current.phase,
            "phase_for_s": round(max(0.0, now - current.phase_since), 1),
            "open_for_s": round(max(0.0, now - current.opened_at), 1),
            "selected": current.selected,
            "joined": current.group(JOINED_STANDINGS),
            "late": current.group(LATE_STANDINGS),
            "gone": current.group(GONE_STANDINGS),
            "standing": current.standing,
        }
    return document


def coordinator_facts(status: CoordinatorStatus | None, alive: Liveness | None) -> dict[str, Any]:
    if status is None or alive is None:
        return {"running": False, "summary": "no coordinator has run here (no status.json)"}
    return {
        "running": alive.running,
        "responsive": alive.responsive,
        "summary": alive.summary,
        "pid": status.pid,
        "state": status.state if alive.running or status.exit is not None else "gone",
        "started_at": status.started_at,
        "heartbeat_at": status.heartbeat_at,
        "heartbeat_age_s": round(alive.heartbeat_age_s, 1),
        "listening": status.listening,
        "metrics_url": status.metrics_url,
        "dashboard_url": status.dashboard_url,
        "log_file": status.log_file,
        "roster_version": status.roster_version,
        "stop_request": status.stop_request,
        "exit": status.exit,
    }


def print_status(document: Mapping[str, Any], now: float) -> None:
    coordinator = document["coordinator"]
    click.echo(f"federation {document['federation_id']}  (state {document['state_dir']})")
    line = f"coordinator: {coordinator['summary']}"
    if coordinator.get("running"):
        if coordinator["state"] != "running":  # starting, stopping, finishing
            line += f"; {coordinator['state']}"
        line += f"; listening {coordinator.get('listening') or '-'}"
        if coordinator.get("metrics_url"):
            line += f"; metrics {coordinator['metrics_url']}"
        if coordinator.get("dashboard_url"):
            line += f"; dashboard {coordinator['dashboard_url']}"
    click.echo(line)
    if coordinator.get("stop_request") and coordinator.get("running"):
        request = coordinator["stop_request"]
        click.echo(f"stop requested: {request['mode']}" + (f" ({request['reason']})" if request.get("reason") else ""))
    current = document["round"]
    if current is not None:
        click.echo(
            f"round {current['number']} of {document['rounds_total']} (attempt {current['attempt']}): "
            f"{current['phase']} for {current['phase_for_s']:.0f} s (open {current['open_for_s']:.0f} s)"
        )
        for label in ("joined", "late", "gone"):
            names = current[label]
            click.echo(f"  {label + ':':<8}{', '.join(names) if names else '-'}")
    elif document["open_round"] is not None:
        interrupted = document["open_round"]
        what = "in progress" if coordinator.get("running") else "interrupted; it runs again when a coordinator starts"
        click.echo(f"round {interrupted['round']} is open (attempt {interrupted['attempt']}, {what})")
    else:
        click.echo("no round in progress")
    last = document["last_committed"]
    summary = (
        f"{document['rounds_committed']} of {document['rounds_total']} committed, {document['rounds_failed']} failed"
    )
    if document.get("calibration"):
        summary += f"; calibration round {document['calibration']}"
    if last is not None:
        at = last["at"]
        click.echo(f"last committed: round {last['round']} at {local_time(at)} ({ago(now - at)}); {summary}")
    else:
        click.echo(f"last committed: none yet; {summary}")


@click.command("status")
@state_option
@json_option
def status_command(state_dir: Path, as_json: bool) -> None:
    """The federation now: its round and phase, who joined, who is late or gone, the last
    committed round, and whether a coordinator is running."""
    now = time.time()
    document = status_document(state_dir, now)
    if as_json:
        emit_json(document)
    else:
        print_status(document, now)


# --- rounds ----------------------------------------------------------------------------------------


def round_document(record: RoundRecord, entry: Mapping[str, Any] | None, running: bool, now: float) -> dict[str, Any]:
    if entry is not None:
        wall_s = entry.get("metrics", {}).get("wall_s")
    elif record.finished_at is not None:
        wall_s = round(record.finished_at - record.started_at, 3)
    else:
        wall_s = round(now - record.started_at, 3)
    state = record.state.value
    return {
        "round": record.round_number,
        "state": state,
        "in_progress": state == "open" and running,
        "attempts": record.attempt,
        "round_id": record.round_id.hex(),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "wall_s": wall_s,
        "selected": list(record.selected),
        "survivors": list(entry["survivors"]) if entry is not None else [],
        "dropped": dict(entry["dropped"]) if entry is not None else {},
        "failure_reason": record.failure_reason,
    }


def rounds_document(state_dir: Path, now: float | None = None) -> dict[str, Any]:
    """What ``rounds --json`` prints (and the dashboard's ``/api/rounds.json``)."""
    now = time.time() if now is None else now
    with open_store(state_dir) as store:
        records = store.rounds()
        ledger = {entry["round"]: entry for entry in store.ledger()}
    _, alive = live_status(state_dir)
    running = alive is not None and alive.running
    rounds = [round_document(r, ledger.get(r.round_number), running, now) for r in records]
    return {"state_dir": str(state_dir), "rounds": rounds}


@click.command("rounds")
@state_option
@json_option
def rounds_command(state_dir: Path, as_json: bool) -> None:
    """Every round: committed, failed or open; attempts, survivors, who dropped and why, wall time."""
    document = rounds_document(state_dir)
    rounds = document["rounds"]
    if as_json:
        emit_json(document)
        return
    if not rounds:
        click.echo("no rounds yet")
        return
    rows = []
    for item in rounds:
        state = item["state"] + (" (in progress)" if item["in_progress"] else "")
        if item["state"] == "open" and not item["in_progress"]:
            state = "open (interrupted)"
        wall = f"{item['wall_s']:.1f} s" if isinstance(item["wall_s"], int | float) else "-"
        survivors = ", ".join(item["survivors"]) or "-"
        rows.append([str(item["round"]), state, str(item["attempts"]), survivors, str(len(item["dropped"])), wall])
    for line in table(["ROUND", "STATE", "ATTEMPTS", "SURVIVORS", "DROPPED", "WALL"], rows):
        click.echo(line)
    for item in rounds:
        for name, reason in sorted(item["dropped"].items()):
            click.echo(f"round {item['round']}: {name} dropped: {reason}")
        if item["failure_reason"]:
            click.echo(f"round {item['round']}: failed: {item['failure_reason']}")


# --- participants -------------------------------------------------------------------------------


def participants_document(state_dir: Path, federation_dir: Path | None, now: float) -> list[dict[str, Any]]:
    with open_store(state_dir) as store:
        names = [str(name) for name in store.config().get("participants", [])]
        exclusions = store.exclusions()
        ledger = store.ledger()
    status, alive = live_status(state_dir)
    running = alive is not None and alive.running
    roster = load_roster(federation_dir) if federation_dir is not None else None
    live = status.participants if status is not None else {}
    standing = status.round.standing if status is not None and status.round is not None and running else {}
    # Epsilon as reported: the live report when there is one, else the last committed round's.
    committed_epsilon: dict[str, tuple[int, float]] = {}
    for entry in ledger:
        for name, epsilon in entry.get("epsilon", {}).items():
            committed_epsilon[name] = (int(entry["round"]), float(epsilon))
    participants = []
    for name in names:
        facts = live.get(name)
        last_seen = facts.last_seen if facts is not None else None
        online = running and (
            standing.get(name) in LIVE_STANDINGS or (last_seen is not None and now - last_seen <= ONLINE_WINDOW_S)
        )
        reported = (facts.epsilon_round, facts.epsilon) if facts is not None and facts.epsilon is not None else None
        committed = committed_epsilon.get(name)
        if reported is None or (committed is not None and committed[0] > (reported[0] or 0)):
            reported = committed
        organisation = facts.organisation if facts is not None else None
        in_roster: bool | None = facts.in_roster if facts is not None else None
        if roster is not None:
            organisation = roster.organisations().get(name, organisation)
            in_roster = name in roster.entries
        participants.append(
            {
                "name": name,
                "organisation": organisation,
                "online": online,
                "last_seen": last_seen,
                "last_seen_ago_s": round(now - last_seen, 1) if last_seen is not None else None,
                "round_standing": standing.get(name),
                "epsilon": reported[1] if reported else None,
                "epsilon_round": reported[0] if reported else None,
                "in_roster": in_roster,
                "excluded": exclusions.get(name),
            }
        )
    return participants


def participants_json(state_dir: Path, federation_dir: Path | None = None, now: float | None = None) -> dict[str, Any]:
    """What ``participants --json`` prints (and the dashboard's ``/api/participants.json``)."""
    now = time.time() if now is None else now
    return {"state_dir": str(state_dir), "participants": participants_document(state_dir, federation_dir, now)}


def load_roster(federation_dir: Path) -> pki.Roster:
    try:
        return pki.load_roster(federation_dir, pki.load_ca_certificate(federation_dir))
    except (pki.PkiError, OSError) as exc:
        raise click.ClickException(pki.in_federation_directory(exc, federation_dir)) from None


@click.command("participants")
@state_option
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Read organisations and revocations from this federation directory's roster "
    "(default: as the running coordinator last loaded it).",
)
@json_option
def participants_command(state_dir: Path, federation_dir: Path | None, as_json: bool) -> None:
    """The federation's participants: organisation, online and last seen, the epsilon each last
    reported, and whether it is revoked or excluded."""
    document = participants_json(state_dir, federation_dir)
    participants = document["participants"]
    if as_json:
        emit_json(document)
        return
    rows = []
    for item in participants:
        if item["excluded"]:
            standing = f"excluded ({item['excluded']})"
        elif item["in_roster"] is False:
            standing = "revoked"
        else:
            standing = item["round_standing"] or ("in roster" if item["in_roster"] else "-")
        epsilon = f"{item['epsilon']:.3f}" if item["epsilon"] is not None else "-"
        rows.append(
            [
                item["name"],
                item["organisation"] or "-",
                "yes" if item["online"] else "no",
                ago(item["last_seen_ago_s"]),
                epsilon,
                str(item["epsilon_round"] if item["epsilon_round"] is not None else "-"),
                standing,
            ]
        )
    for line in table(["NAME", "ORGANISATION", "ONLINE", "LAST SEEN", "EPSILON", "ROUND", "STATUS"], rows):
        click.echo(line)


# --- ledger ----------------------------------------------------------------------------------------


def ledger_document(state_dir: Path) -> dict[str, Any]:
    """What ``ledger --json`` prints (and the dashboard's ``/api/ledger.json``): the entries as stored."""
    with open_store(state_dir) as store:
        ledger = store.ledger()
    return {"state_dir": str(state_dir), "ledger": ledger}


@click.command("ledger")
@state_option
@json_option
def ledger_command(state_dir: Path, as_json: bool) -> None:
    """The committed ledger entries, oldest first (with --json: exactly as stored)."""
    document = ledger_document(state_dir)
    ledger = document["ledger"]
    if as_json:
        emit_json(document)
        return
    if not ledger:
        click.echo("no committed rounds yet")
        return
    rows = []
    for entry in ledger:
        epsilon = entry.get("epsilon") or {}
        participant_epsilon = entry.get("participant_epsilon")
        rows.append(
            [
                str(entry["round"]),
                local_time(entry.get("finished_at")),
                str(entry.get("attempt", "-")),
                ", ".join(entry.get("survivors", [])),
                f"{max(epsilon.values()):.3f}" if epsilon else "-",
                f"{participant_epsilon:.3f}" if participant_epsilon is not None else "-",
                str(entry.get("checkpoint", {}).get("version", ""))[:16],
            ]
        )
    headers = ["ROUND", "COMMITTED", "ATTEMPT", "SURVIVORS", "MAX EPSILON", "PARTICIPANT EPSILON", "VERSION"]
    for line in table(headers, rows):
        click.echo(line)


# --- logs ------------------------------------------------------------------------------------------


def log_file_of(state_dir: Path) -> Path:
    """The log file the coordinator of ``state_dir`` writes (it records a ``--log-file`` elsewhere
    in its status), or the default ``STATE/coordinator.log``."""
    status = load_status(state_dir)
    if status is not None and status.log_file:
        return Path(status.log_file)
    return state_dir / LOG_FILE_NAME


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (read from the end: the file may be large)."""
    block = 64 * 1024
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count else []


def follow(
    path: Path,
    write: Callable[[str], None],
    *,
    start_at_end: bool,
    keep_going: Callable[[], bool] = lambda: True,
    poll_s: float = 0.25,
) -> None:
    """Write what is appended to ``path`` as it comes, until ``keep_going()`` is False; a file
    rotated away (or truncated) is reopened at its path."""
    handle: IO[bytes] | None = None
    identity: tuple[int, int] | None = None
    pending = b""
    try:
        while keep_going():
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    time.sleep(poll_s)
                    continue
                stat = os.fstat(handle.fileno())
                identity = (stat.st_dev, stat.st_ino)
                if start_at_end:
                    handle.seek(0, os.SEEK_END)
                start_at_end = False  # a rotated-in file is read from its start
            chunk = handle.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    write(line.decode("utf-8", errors="replace"))
                continue
            try:
                current = path.stat()
                rotated = (current.st_dev, current.st_ino) != identity or current.st_size < handle.tell()
            except FileNotFoundError:
                rotated = False  # moved away, the new one not there yet: keep reading the old
            if rotated:
                handle.close()
                handle = None
                continue
            time.sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()


@click.command("logs")
@state_option
@click.option("-n", "--lines", "count", type=click.IntRange(0), default=None, help="Only the last N lines.")
@click.option("-f", "--follow", "following", is_flag=True, help="Keep printing new lines until interrupted.")
@json_option
def logs_command(state_dir: Path, count: int | None, following: bool, as_json: bool) -> None:
    """Print the coordinator's log file (--follow: keep printing until interrupted; --json: one
    document with the file's path and its lines)."""
    if as_json and following:
        raise click.UsageError("--json prints one document and --follow never ends: give one of them")
    checked_state_dir(state_dir)
    path = log_file_of(state_dir)
    if not path.is_file() and not following:
        raise click.ClickException(f"no coordinator log at {path} (has a coordinator run with --state {state_dir}?)")
    if path.is_file():
        try:
            lines = last_lines(path, count) if count is not None else path.read_text(errors="replace").splitlines()
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
        if as_json:
            emit_json({"file": str(path), "lines": lines})
            return
        for line in lines:
            click.echo(line)
    if following:
        with contextlib.suppress(KeyboardInterrupt):
            follow(path, click.echo, start_at_end=path.is_file())


# --- stop ------------------------------------------------------------------------------------------


def wait_for_exit(status: CoordinatorStatus, timeout_s: float | None, poll_s: float = 0.2) -> bool:
    """Until the coordinator's process is gone (True) or ``timeout_s`` passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if not same_process_running(status):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


@click.command("stop")
@state_option
@click.option("--now", is_flag=True, help="Abort the round in progress at once (default: let it finish).")
@click.option("--reason", default=None, help="Why; logged by the coordinator and kept in its status.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the coordinator to exit.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up waiting after this many seconds (exit status 3) [default: no limit].",
)
@json_option
def stop_command(
    state_dir: Path, now: bool, reason: str | None, wait: bool, timeout_s: float | None, as_json: bool
) -> None:
    """Ask the running coordinator to finish the current round (or abort it, --now), then exit.

    The round in progress is committed if its attempt completes; otherwise it stays open and runs
    again when a coordinator starts on the same state. Prints one line saying what happened (with
    --json, one document: the request, and the exit once the coordinator has gone).
    """
    checked_state_dir(state_dir)
    status, alive = live_status(state_dir)
    if status is None or alive is None:
        raise click.ClickException(f"no coordinator has run with --state {state_dir} (no status.json there)")
    if not alive.running:
        raise click.ClickException(f"no coordinator is running with --state {state_dir}: {alive.detail}")
    request = StopRequest("now" if now else "after-round", reason)
    try:
        write_stop_request(state_dir, request)
    except OSError as exc:
        raise click.ClickException(f"cannot write the stop request in {state_dir}: {exc.strerror or exc}") from None
    signalled = True
    try:
        os.kill(status.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited in the meantime; wait_for_exit sees that
    except PermissionError:
        signalled = False  # another user's process: it reads the request at its next heartbeat
    document: dict[str, Any] = {
        "pid": status.pid,
        "request": {"mode": request.mode, "reason": request.reason},
        "round": status.round.number if status.round is not None else None,
        "signalled": signalled,
    }
    if not wait:
        how = "SIGTERM sent" if signalled else f"picked up within {status.heartbeat_interval_s:g} s"
        if status.round is None:  # between rounds (or finishing): nothing to finish or abort
            what = "is between rounds and will stop" + (f" ({request.reason})" if request.reason else "")
        else:
            what = f"is in round {status.round.number} and will {request.describe()}"
        _stop_result(as_json, document, f"stop requested ({how}): coordinator pid {status.pid} {what}")
        return
    try:
        stopped = wait_for_exit(status, timeout_s)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; coordinator pid {status.pid} still stops as asked ({request.describe()})"
        ) from None
    if not stopped:
        latest = load_status(state_dir) or status
        phase = f" ({latest.round.phase})" if latest.round is not None else ""
        document["still_running"] = {"phase": latest.round.phase if latest.round is not None else None}
        _stop_result(
            as_json,
            document,
            f"coordinator pid {status.pid} is still running{phase} after {timeout_s:g} s; "
            "`fedmask coordinator stop --now` aborts the round at once",
        )
        sys.exit(EXIT_STILL_RUNNING)
    final = load_status(state_dir)
    if final is None or final.exit is None or final.pid != status.pid:
        raise click.ClickException(f"coordinator pid {status.pid} exited without saying how (killed?)")
    document["exit"] = {"code": final.exit.get("code"), "message": final.exit.get("message")}
    _stop_result(
        as_json,
        document,
        f"coordinator pid {status.pid} exited with status {final.exit.get('code')}: {final.exit.get('message')}",
    )


def _stop_result(as_json: bool, document: dict[str, Any], line: str) -> None:
    if as_json:
        emit_json(document)
    else:
        click.echo(line)


OPERATIONS_COMMANDS: tuple[click.Command, ...] = (
    status_command,
    rounds_command,
    participants_command,
    ledger_command,
    logs_command,
    stop_command,
)

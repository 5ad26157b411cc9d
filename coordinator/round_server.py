"""The coordinator's gRPC server: drives ``secagg.server.Server`` through rounds over
``fedmask.secagg.v1.SecureAggregation/Aggregate`` streams (grpc.aio, one event loop).

Two pieces, so that one process can run many rounds (the federated-learning layer picks each
round's parameters and participants, then calls ``run_round``):

- ``CoordinatorServer``: the listening gRPC server -- credentials, message-size limits,
  keepalive, stream limits, health service. ``await server.run_round(config)`` runs one round
  and returns its ``RoundOutcome``; call it again for the next round.
- ``RoundRunner``: one round. ``RoundConfig`` (round id, ``ProtocolParams``, the selected names
  and their enrolled identity keys, deadlines) in, ``RoundOutcome`` (the sum over the survivors,
  or the phase and reason of the abort) out.

One round::

    join        participants open their stream and send Hello; the round starts when every
                selected participant has joined or the join deadline passes (>= t needed)
    RoundStart  to each joined participant: round id, parameters, its id, the names
    phases      for each secagg phase: wait until every expected participant has answered or
                the phase deadline passes, then ``Server.close_phase`` and send its messages
    result      RoundResult to the survivors; the sum stays with the coordinator

Dropouts are participants that miss a deadline, disconnect, abort, or send a message that is
refused; a refused participant's call ends with a status saying why, and the round goes on
without it as long as the threshold allows. A refused message never reaches the state machine
half-checked: the wire decoder checks the format, this module the phase, duplicates and
session, and ``Server.receive`` the content, raising before it changes anything.

Status codes: INVALID_ARGUMENT (malformed or invalid content), FAILED_PRECONDITION (wrong
phase, duplicate, wrong round or session, round already started), PERMISSION_DENIED (not
selected for the round), UNAUTHENTICATED (no valid identity), ALREADY_EXISTS (a second stream
for the same participant), DEADLINE_EXCEEDED (missed the join or a phase deadline),
UNAVAILABLE (no round open for joining), RESOURCE_EXHAUSTED (message over the size limit,
refused by gRPC itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from fedmask.coordinator.abort_kinds import FROM_PROTOCOL, AttemptAbort
from fedmask.coordinator.transport import Authenticator, AuthError, ServerSecurity
from fedmask.parallel import default_runner
from fedmask.proto import transport, wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.proto.secagg.v1 import secagg_pb2_grpc as pb_grpc
from fedmask.secagg.errors import DropKind, InvalidMessage, Phase, ProtocolAbort, Rejection
from fedmask.secagg.messages import Abort, ModularVector
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.prg import PartRunner
from fedmask.secagg.server import Server, ServerConfig, ServerState
from fedmask.secagg.simulation import rehearse

log = logging.getLogger(__name__)

DEFAULT_JOIN_TIMEOUT_S = 300.0
DEFAULT_PHASE_TIMEOUT_S = 60.0
# The slowest link a participant may be on (2 Mbit/s, the nodes' own default): the masked-input
# phase, whose upload is the whole vector, gets the time that upload takes at this rate on top of
# its phase timeout, so that a large adapter is not dropped for its size.
DEFAULT_MIN_BANDWIDTH_BYTES_PER_S = 250_000.0
# gRPC frames every message with a 5-byte prefix (compressed flag + length).
GRPC_MESSAGE_PREFIX_BYTES = 5

Progress = Callable[[str], None]
# What the round server reads from a stream: each message's size on the wire and the envelope
# (None when the bytes are not a ClientEnvelope; see ``_sized_envelope``).
SizedEnvelopes = AsyncIterator[tuple[int, pb.ClientEnvelope | None]]

# The answer to each kind of message the protocol core rejects (it has checked everything).
REJECTION_STATUS: dict[Rejection, grpc.StatusCode] = {
    Rejection.ROUND_OVER: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.WRONG_PHASE: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.DUPLICATE: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.NOT_EXPECTED: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.WRONG_SESSION: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
}


class Refusal(Exception):
    """A call or message is refused with ``code``; the participant is dropped."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RoundConfig:
    """One round. ``participants`` are the names selected for it; ids are their sorted positions
    (1..n). ``identity_keys`` (name -> Ed25519 public key, from the CA-signed roster) are needed
    in the malicious-server mode."""

    round_id: bytes
    params: ProtocolParams
    participants: tuple[str, ...]
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
    phase_timeout_s: float = DEFAULT_PHASE_TIMEOUT_S
    identity_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # Once ``threshold`` participants have joined, wait at most this long for the others (None:
    # wait for everyone until the join deadline). Bounds the cost of a participant that died
    # after it was counted in: the round goes on without it instead of idling to the deadline.
    quorum_grace_s: float | None = None
    min_bandwidth_bytes_per_s: float = DEFAULT_MIN_BANDWIDTH_BYTES_PER_S

    def __post_init__(self) -> None:
        names = tuple(sorted(set(self.participants)))
        if len(names) != len(self.participants):
            raise ValueError("participant names must be distinct")
        for name in names:
            if wire.PARTICIPANT_NAME.fullmatch(name) is None:
                raise ValueError(f"malformed participant name {name!r}")
        if not 1 <= len(self.round_id) <= wire.MAX_ROUND_ID_BYTES:
            raise ValueError(f"round ids are 1 to {wire.MAX_ROUND_ID_BYTES} bytes")
        object.__setattr__(self, "participants", names)
        self.params.validate(len(names))
        if self.params.mode is SecurityMode.MALICIOUS:
            missing = [n for n in names if n not in self.identity_keys]
            if missing:
                raise ValueError(f"malicious-server mode: no enrolled identity key for {', '.join(missing)}")
        if self.join_timeout_s <= 0 or self.phase_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.quorum_grace_s is not None and not self.quorum_grace_s > 0:
            raise ValueError("quorum_grace_s must be positive (or None)")
        if not (self.min_bandwidth_bytes_per_s > 0 and math.isfinite(self.min_bandwidth_bytes_per_s)):
            raise ValueError("min_bandwidth_bytes_per_s must be positive and finite")

    def phase_deadline_s(self, phase: Phase) -> float:
        """How long a phase waits for the participants: the phase timeout, plus for the masked
        input the time its largest allowed upload takes at the minimum bandwidth."""
        if phase is not Phase.MASKED_INPUT:
            return self.phase_timeout_s
        upload = transport.max_participant_message_bytes(self.params, len(self.participants))
        return self.phase_timeout_s + upload / self.min_bandwidth_bytes_per_s

    @property
    def ids(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.participants)}


@dataclass
class RoundOutcome:
    """What the coordinator learnt from a round: the sum over the survivors, or why it aborted."""

    round_id: bytes
    participants: tuple[str, ...]
    joined: tuple[str, ...] = ()
    completed: bool = False
    abort_phase: Phase | None = None
    abort_kind: AttemptAbort | None = None
    abort_reason: str | None = None
    survivors: tuple[str, ...] = ()
    dropped: dict[str, str] = field(default_factory=dict)
    drop_kinds: dict[str, DropKind] = field(default_factory=dict)  # the same names: why, as data
    result: ModularVector | None = field(default=None, repr=False)
    session_id: bytes | None = None
    join_s: float = 0.0  # round opened -> RoundStart sent
    round_s: float = 0.0  # RoundStart sent -> sum computed (or abort)
    coordinator_cpu_s: float = 0.0  # this process's CPU time over round_s
    phase_s: dict[str, float] = field(default_factory=dict)
    # gRPC message bytes (protobuf + 5-byte frame prefix) received from each participant
    bytes_received: dict[str, int] = field(default_factory=dict)
    # Proven to have sent bad messages (exclude them), and accused but silent (skip them in a re-run).
    culprits: dict[str, str] = field(default_factory=dict)
    suspects: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary; the sum itself only as a digest and a preview."""
        summary: dict[str, Any] = {
            "round_id": self.round_id.decode("utf-8", "replace"),
            "completed": self.completed,
            "participants": len(self.participants),
            "joined": len(self.joined),
            "survivors": list(self.survivors),
            "dropped": dict(self.dropped),
            "join_s": round(self.join_s, 6),
            "round_s": round(self.round_s, 6),
            "coordinator_cpu_s": round(self.coordinator_cpu_s, 6),
            "phase_s": {k: round(v, 6) for k, v in self.phase_s.items()},
            "bytes_received": dict(self.bytes_received),
            "culprits": dict(self.culprits),
            "suspects": dict(self.suspects),
        }
        if not self.completed:
            summary["abort_phase"] = self.abort_phase.value if self.abort_phase else None
            summary["abort_kind"] = self.abort_kind.value if self.abort_kind else None
            summary["abort_reason"] = self.abort_reason
        if self.result is not None:
            summary["sum_sha256"] = hashlib.sha256(self.result.tobytes()).hexdigest()
            summary["sum_preview"] = [int(v) for v in self.result[:8]]
        return summary


# What the round queues for a stream's call handler to do: write an envelope, end the call with
# OK, or end it with a status code and details.
_Outgoing = (
    tuple[Literal["send"], pb.ServerEnvelope]
    | tuple[Literal["end"], None]
    | tuple[Literal["error"], tuple[grpc.StatusCode, str]]
)


class _Connection:
    """One participant's stream in one round. The call handler writes what the round queues."""

    def __init__(self, name: str, participant_id: int) -> None:
        self.name = name
        self.participant_id = participant_id
        self.outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self.joined = False  # Hello received
        self.closed = False  # no more messages will be read or written
        self.lost_reason: str | None = None
        self.lost_kind: DropKind | None = None
        self.submitted_in: ServerState | None = None
        self.bytes_received = 0

    def send(self, envelope: pb.ServerEnvelope) -> None:
        if not self.closed:
            self.outbox.put_nowait(("send", envelope))

    def finish(self) -> None:
        """End the call with OK once everything queued is written."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(("end", None))

    def refuse(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with ``code`` once everything queued is written."""
        if not self.closed:
            self.closed = True
            if self.lost_reason is None:
                self.lost_reason, self.lost_kind = f"refused ({code.name}): {details}", DropKind.REFUSED
            self.outbox.put_nowait(("error", (code, details)))


@functools.cache
def _runner() -> PartRunner | None:
    """One thread pool per coordinator process for every round's unmask (a part per core)."""
    return default_runner()


class RoundRunner:
    """Runs one round: admits streams, feeds the state machine, enforces the deadlines."""

    def __init__(self, config: RoundConfig, *, progress: Progress | None = None) -> None:
        self.config = config
        self._ids = config.ids
        self._names = {pid: name for name, pid in self._ids.items()}
        identity_keys: dict[int, bytes] = {}
        if config.params.mode is SecurityMode.MALICIOUS:
            identity_keys = {self._ids[n]: config.identity_keys[n] for n in config.participants}
        self.server = Server(
            ServerConfig(
                config.round_id,
                config.params,
                tuple(self._ids.values()),
                identity_keys,
                runner=_runner(),
            )
        )
        self._connections: dict[int, _Connection] = {}
        self._changed = asyncio.Event()
        # Held around every use of self.server: a phase may be closing in a worker thread.
        self._lock = asyncio.Lock()
        self._progress = progress or (lambda line: None)
        self.started = False  # RoundStart sent
        self.finished = False
        self.outcome = RoundOutcome(config.round_id, config.participants)

    # --- streams ----------------------------------------------------------------------------

    def admit(self, name: str) -> _Connection:
        """Register a new stream of ``name``, or raise Refusal."""
        if self.finished:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "the round is over")
        pid = self._ids.get(name)
        if pid is None:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"participant {name!r} is not selected for this round")
        current = self._connections.get(pid)
        if current is not None and not current.closed:
            raise Refusal(
                grpc.StatusCode.ALREADY_EXISTS, f"participant {name!r} already has a stream open in this round"
            )
        if self.started:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the round has started without {name!r} (it joined late or reconnected); join the next one",
            )
        # Before the round starts a participant may reconnect (its earlier stream is gone).
        connection = _Connection(name, pid)
        self._connections[pid] = connection
        return connection

    async def serve_stream(self, connection: _Connection, requests: SizedEnvelopes) -> None:
        """Read the participant's messages until its stream ends (runs beside the writer)."""
        try:
            async for size, envelope in requests:
                if connection.closed:
                    break
                connection.bytes_received += size
                try:
                    if envelope is None:
                        raise Refusal(
                            grpc.StatusCode.INVALID_ARGUMENT, "not a ClientEnvelope (protobuf decoding failed)"
                        )
                    await self._on_envelope(connection, envelope)
                except Refusal as exc:
                    await self._refuse(connection, exc.code, exc.details)
                    break
            else:
                # grpc.aio ends the request iterator without an error both when the participant
                # half-closes and when its connection is reset, so the two read the same here.
                self._lost(connection, "disconnected (its stream ended)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the transport failed under us: a disconnect
            self._lost(connection, f"disconnected ({type(exc).__name__})")

    def stream_ended(self, connection: _Connection, why: str) -> None:
        """Called by the call handler when the call is over, for whatever reason."""
        self._lost(connection, why)

    def _lost(self, connection: _Connection, reason: str) -> None:
        if connection.lost_reason is None:
            connection.lost_reason, connection.lost_kind = reason, DropKind.DISCONNECTED
            if connection.joined and not self.started and not self.finished:
                self._progress(f"{connection.name} left before the round started ({reason}); not waiting for it")
        connection.closed = True
        self._changed.set()  # the round drops it at its next look (see _apply_disconnects)

    async def _refuse(self, connection: _Connection, code: grpc.StatusCode, details: str) -> None:
        phase = self.server.phase.value if self.started else "join"
        message = f"[{phase}] {details}"
        if self.started:
            async with self._lock:
                self.server.drop(connection.participant_id, f"refused ({code.name}): {details}", DropKind.REFUSED)
        log.info("refused participant %s: %s: %s", connection.name, code.name, message)
        self._progress(f"refused {connection.name}: {code.name}: {message}")
        connection.refuse(code, message)
        self._changed.set()

    async def _on_envelope(self, connection: _Connection, envelope: pb.ClientEnvelope) -> None:
        kind = envelope.WhichOneof("body")
        pid = connection.participant_id
        params = self.config.params
        if kind is None:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "empty envelope (no message in it)")
        if kind == "abort":
            try:
                abort = wire.client_from_proto(envelope, sender=pid, params=params)
            except wire.WireError as exc:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"malformed abort: {exc}") from exc
            assert isinstance(abort, Abort)  # the kind of envelope decided it
            self._progress(f"{connection.name} aborted: {abort.reason}")
            if self.started:
                async with self._lock:
                    self.server.drop(pid, f"aborted: {abort.reason}", DropKind.ABORTED)
            connection.lost_reason, connection.lost_kind = f"aborted: {abort.reason}", DropKind.ABORTED
            connection.finish()
            self._changed.set()
            return
        if not connection.joined:
            if kind != "hello":
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"the first message must be hello, got {kind}")
            hello = wire.client_from_proto(envelope, sender=pid, params=params)
            assert isinstance(hello, wire.Hello)  # the kind of envelope decided it
            if hello.protocol_version != wire.PROTOCOL_VERSION:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"protocol version {hello.protocol_version} is not supported (this coordinator "
                    f"speaks {wire.PROTOCOL_VERSION})",
                )
            connection.joined = True
            joined = sum(1 for c in self._connections.values() if c.joined and not c.closed)
            self._progress(f"{connection.name} joined ({joined}/{len(self._ids)})")
            self._changed.set()
            return
        if not self.started:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"{kind} before the round started")

        try:
            message = wire.client_from_proto(envelope, sender=pid, params=params)
        except wire.WireError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {kind}: {exc}") from exc
        async with self._lock:
            state = self.server.state
            try:
                self.server.receive(message)
            except InvalidMessage as exc:
                raise Refusal(REJECTION_STATUS[exc.kind], f"[{exc.phase.value}] {exc.reason}") from exc
            connection.submitted_in = state
            if not self.server.awaiting:
                self._changed.set()

    # --- the round ----------------------------------------------------------------------------

    def _live(self, pid: int) -> _Connection | None:
        connection = self._connections.get(pid)
        return connection if connection is not None and not connection.closed else None

    def _apply_disconnects(self) -> None:
        for pid in sorted(self.server.awaiting):
            if self._live(pid) is None:
                connection = self._connections.get(pid)
                if connection is not None and connection.lost_reason:
                    self.server.drop(pid, connection.lost_reason, connection.lost_kind or DropKind.DISCONNECTED)
                else:
                    self.server.drop(pid, "not connected", DropKind.DISCONNECTED)

    async def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``done()`` or the timeout; True if done in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.started:
                self._apply_disconnects()
            if done():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _all_joined(self) -> bool:
        return all((c := self._live(pid)) is not None and c.joined for pid in self._ids.values())

    def _joined_count(self) -> int:
        return sum((c := self._live(pid)) is not None and c.joined for pid in self._ids.values())

    def roster(self) -> dict[str, str]:
        """Each selected participant's standing in this round, for status displays:
        ``waiting`` (no stream), ``connected`` (no Hello yet), ``joined``, ``gone`` (its stream
        ended), ``dropped`` (the protocol dropped it) or ``in`` (still in a started round)."""
        dropped = set(self.server.dropped) if self.started else set()
        standing = {}
        for name, pid in self._ids.items():
            connection = self._connections.get(pid)
            if pid in dropped:
                standing[name] = "dropped"
            elif connection is None:
                standing[name] = "waiting"
            elif connection.closed:
                standing[name] = "gone"
            elif self.started:
                standing[name] = "in"
            else:
                standing[name] = "joined" if connection.joined else "connected"
        return standing

    def phase(self) -> str:
        """``join`` until the round starts, then the protocol phase it is in."""
        return self.server.phase.value if self.started else "join"

    def _gone(self, pid: int) -> bool:
        """Joined, then its stream ended: known to be gone (unless it reconnects before the start)."""
        connection = self._connections.get(pid)
        return connection is not None and connection.joined and connection.closed

    def _everyone_accounted(self) -> bool:
        """Every selected participant has joined or is known to be gone."""
        return all(((c := self._live(pid)) is not None and c.joined) or self._gone(pid) for pid in self._ids.values())

    def _ready_to_start(self) -> bool:
        """Everyone is in; or the threshold is, and everyone else is known to be gone (their
        streams ended after joining), so waiting longer would be waiting for nobody."""
        if self._all_joined():
            return True
        return self._everyone_accounted() and self._joined_count() >= self.config.params.threshold

    def _stuck_below_threshold(self) -> bool:
        """Too few are in and everyone else is gone: only a restarted participant rejoining can
        let the round start."""
        return self._everyone_accounted() and self._joined_count() < self.config.params.threshold

    async def _wait_for_joins(self) -> None:
        """Until everyone has joined (or the threshold has, and the rest are known to be gone) or
        the join deadline passes; with a quorum grace period, until that long after ``threshold``
        participants are in (and still in). Below the threshold with everyone else gone, a round
        waits only the quorum grace for a restarted participant to rejoin (none: not at all)."""
        config, t = self.config, self.config.params.threshold
        deadline = time.perf_counter() + config.join_timeout_s
        grace_s = config.quorum_grace_s

        def settled() -> bool:
            in_grace = grace_s is not None and self._joined_count() >= t
            return self._ready_to_start() or self._stuck_below_threshold() or in_grace

        while (remaining := deadline - time.perf_counter()) > 0 and not self._ready_to_start():
            await self._wait(settled, remaining)
            if self._ready_to_start():
                return
            if self._stuck_below_threshold():
                wait = min(grace_s or 0.0, max(0.0, deadline - time.perf_counter()))
                gone = sum(self._gone(pid) for pid in self._ids.values())
                self._progress(
                    f"{self._joined_count()} joined and {gone} gone after joining (threshold {t}): "
                    + (f"waiting up to {wait:.0f} s for one to rejoin" if wait > 0 else "the round cannot start")
                )
                if not await self._wait(lambda: not self._stuck_below_threshold(), wait):
                    return
                continue
            if grace_s is None or self._joined_count() < t:
                continue  # the deadline passed below the threshold
            grace = min(grace_s, max(0.0, deadline - time.perf_counter()))
            self._progress(f"{self._joined_count()} joined (threshold {t}); waiting up to {grace:.0f} s for the rest")
            await self._wait(self._ready_to_start, grace)
            if self._joined_count() >= t:
                return

    async def run(self) -> RoundOutcome:
        """Run the round to its end; never raises for anything a participant does."""
        try:
            return await self._run()
        finally:
            if not self.finished:  # cancelled (coordinator shutting down): tell everyone
                self._finish_aborted(self.server.phase, AttemptAbort.OPERATOR, "the coordinator is shutting down")

    async def _run(self) -> RoundOutcome:
        config, outcome = self.config, self.outcome
        n, t = len(config.participants), config.params.threshold
        self._progress(
            f"waiting for {n} participants to join (threshold {t}, join timeout {config.join_timeout_s:g} s)"
        )
        opened = time.perf_counter()
        await self._wait_for_joins()
        joined = [pid for pid in self._ids.values() if (c := self._live(pid)) is not None and c.joined]
        outcome.joined = tuple(self._names[pid] for pid in joined)
        for pid in self._ids.values():
            if pid not in joined:
                gone = self._connections.get(pid) if self._gone(pid) else None
                if gone is not None:
                    self.server.drop(pid, f"left before the start: {gone.lost_reason}", DropKind.LEFT)
                else:
                    self.server.drop(pid, "did not join in time", DropKind.NOT_JOINED)
                if (connection := self._live(pid)) is not None:
                    connection.refuse(grpc.StatusCode.DEADLINE_EXCEEDED, "[join] no hello in time")
        outcome.join_s = time.perf_counter() - opened
        if len(joined) < t:
            reason = f"only {len(joined)} of {n} participants joined, threshold is {t}"
            return self._finish_aborted(Phase.ADVERTISE_KEYS, AttemptAbort.BELOW_THRESHOLD, reason)

        self.started = True
        self._progress(f"starting with {len(joined)}/{n}: {_names(outcome.joined)}")
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for pid in joined:
            start = wire.RoundStart(config.round_id, config.params, pid, config.participants, config.phase_timeout_s)
            self._connections[pid].send(wire.server_to_proto(start))

        while self.server.state not in (ServerState.COMPLETED, ServerState.ABORTED):
            state = self.server.state
            phase_start = time.perf_counter()
            deadline_s = config.phase_deadline_s(state.phase)
            await self._wait(lambda: not self.server.awaiting, deadline_s)
            async with self._lock:
                self._apply_disconnects()
                for pid in sorted(self.server.awaiting):
                    reason = f"missed the {state.phase.value} deadline ({round(deadline_s, 1):g} s)"
                    self.server.drop(pid, reason, DropKind.DEADLINE)
                    if (connection := self._live(pid)) is not None:
                        connection.refuse(grpc.StatusCode.DEADLINE_EXCEEDED, f"[{state.phase.value}] {reason}")
                dropped_before = set(self.server.dropped_reasons)
                try:
                    # The unmask regenerates masks and a phase's end checks its signatures:
                    # CPU-bound, kept off the event loop so that keepalives and health checks
                    # are still answered.
                    outgoing = await asyncio.to_thread(self.server.close_phase)
                except ProtocolAbort as exc:
                    outcome.round_s = time.perf_counter() - wall_start
                    outcome.coordinator_cpu_s = time.process_time() - cpu_start
                    return self._finish_aborted(exc.phase, FROM_PROTOCOL[exc.kind], exc.reason)
                # Refused at the phase's end (a signature that does not verify): told at once.
                for pid in sorted(set(self.server.dropped_reasons) - dropped_before):
                    if (connection := self._live(pid)) is not None:
                        connection.refuse(grpc.StatusCode.INVALID_ARGUMENT, self.server.dropped_reasons[pid])
                responders = sorted(
                    c.name
                    for pid, c in self._connections.items()
                    if c.submitted_in is state and pid not in self.server.dropped_reasons
                )
            outcome.phase_s[state.phase.value] = time.perf_counter() - phase_start
            self._progress(f"{state.phase.value} closed: {len(responders)}/{n} in: {_names(responders)}")
            for pid, message in outgoing.items():
                if (connection := self._live(pid)) is not None:
                    connection.send(wire.server_to_proto(message))

        outcome.round_s = time.perf_counter() - wall_start
        outcome.coordinator_cpu_s = time.process_time() - cpu_start
        return self._finish_completed()

    def _collect(self) -> None:
        outcome = self.outcome
        for pid, reason in self.server.dropped_reasons.items():
            outcome.dropped.setdefault(self._names[pid], reason)
            outcome.drop_kinds.setdefault(self._names[pid], self.server.dropped_kinds[pid])
        outcome.bytes_received = {c.name: c.bytes_received for c in self._connections.values()}
        outcome.culprits = {self._names[pid]: why for pid, why in self.server.culprits.items()}
        outcome.suspects = {self._names[pid]: why for pid, why in self.server.suspects.items()}
        outcome.session_id = self.server.session_id
        self.finished = True

    def _finish_completed(self) -> RoundOutcome:
        outcome = self.outcome
        outcome.completed = True
        outcome.result = self.server.result
        outcome.survivors = tuple(self._names[pid] for pid in self.server.u3)
        self._collect()
        session_id = self.server.session_id
        if session_id is None:
            raise RuntimeError("a completed round without a session")
        result = wire.server_to_proto(wire.RoundResult(session_id, tuple(self.server.u3)))
        for connection in self._connections.values():
            connection.send(result)
            connection.finish()
        self._progress(f"completed: {len(outcome.survivors)} survivors: {_names(outcome.survivors)}")
        return outcome

    def _finish_aborted(self, phase: Phase, kind: AttemptAbort, reason: str) -> RoundOutcome:
        outcome = self.outcome
        # Before the start the round was in its join, no protocol phase (None); the participants
        # are told the protocol's first phase, the one they were waiting to begin.
        outcome.abort_phase = phase if self.started else None
        outcome.abort_kind, outcome.abort_reason = kind, reason
        self._collect()
        abort = wire.server_to_proto(Abort(phase, reason))
        for connection in self._connections.values():
            connection.send(abort)
            connection.finish()
        self._progress(f"aborted in {phase.value if self.started else 'join'}: {reason}")
        return outcome


def _sized_envelope(data: bytes) -> tuple[int, pb.ClientEnvelope | None]:
    """The request deserializer: the message's size on the wire (counted here, where it is
    known for free) and the envelope, or None when the bytes are not a ClientEnvelope (refused
    with INVALID_ARGUMENT by the round rather than gRPC's bare INTERNAL)."""
    try:
        envelope = pb.ClientEnvelope.FromString(data)
    except DecodeError:
        envelope = None
    return len(data) + GRPC_MESSAGE_PREFIX_BYTES, envelope


def _service_handler(service: SecureAggregationService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        transport.SERVICE,
        {
            "Aggregate": grpc.stream_stream_rpc_method_handler(
                service.Aggregate,
                request_deserializer=_sized_envelope,
                response_serializer=pb.ServerEnvelope.SerializeToString,
            )
        },
    )


class SecureAggregationService(pb_grpc.SecureAggregationServicer):
    """The gRPC face: authenticates each stream and hands it to the round that is open."""

    def __init__(self, authenticator: Authenticator, *, join_wait_s: float, progress: Progress | None = None) -> None:
        self._authenticator = authenticator
        self._join_wait_s = join_wait_s
        self._round: RoundRunner | None = None
        self._round_changed = asyncio.Condition()
        self._progress = progress or (lambda line: None)

    @property
    def current(self) -> RoundRunner | None:
        return self._round

    async def set_round(self, runner: RoundRunner | None) -> None:
        async with self._round_changed:
            self._round = runner
            self._round_changed.notify_all()

    async def _current_round(self, wait_s: float) -> RoundRunner:
        """The round in progress (``admit`` decides whether this stream may join it); a stream
        arriving between two rounds waits a little for the next one."""

        def open_round() -> bool:
            return self._round is not None and not self._round.finished

        async with self._round_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round_changed.wait_for(open_round), wait_s)
            current = self._round
        if current is None or current.finished:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "no round is open for joining; retry later")
        return current

    async def Aggregate(  # noqa: N802 - the gRPC method name
        self, request_iterator: SizedEnvelopes, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            name = self._authenticator.identify(context)
        except AuthError as exc:
            self._progress(f"refused a stream: {exc.code.name}: {exc.details}")
            await context.abort(exc.code, exc.details)
            return
        try:
            runner = await self._current_round(self._join_wait_s)
            connection = runner.admit(name)
        except Refusal as exc:
            self._progress(f"refused {name}: {exc.code.name}: {exc.details}")
            await context.abort(exc.code, exc.details)
            return
        reader = asyncio.create_task(runner.serve_stream(connection, request_iterator))
        why = "stream ended"
        try:
            while True:
                item = await connection.outbox.get()
                if item[0] == "send":
                    await context.write(item[1])
                elif item[0] == "end":
                    why = connection.lost_reason or "round over"
                    return
                else:
                    code, details = item[1]
                    why = connection.lost_reason or details
                    await context.abort(code, details)
        except asyncio.CancelledError:
            why = "disconnected (call cancelled)"
            raise
        finally:
            reader.cancel()
            runner.stream_ended(connection, why)


@dataclass(frozen=True)
class MessageLimits:
    """The largest message the coordinator accepts from a participant and the largest it sends.

    Fixed when the server starts (gRPC options cannot change later), so size them for the
    largest round the server will run: ``for_round(params, n)``."""

    receive_bytes: int
    send_bytes: int

    @classmethod
    def for_round(cls, params: ProtocolParams, num_participants: int) -> MessageLimits:
        return cls(
            transport.max_participant_message_bytes(params, num_participants),
            transport.max_coordinator_message_bytes(num_participants),
        )

    def fits(self, config: RoundConfig) -> bool:
        needed = MessageLimits.for_round(config.params, len(config.participants))
        return needed.receive_bytes <= self.receive_bytes and needed.send_bytes <= self.send_bytes


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    # Plaintext health-only listener for probes that hold no client certificate (container
    # healthchecks); None: none. The health service is also on the main port.
    health_port: int | None = None
    grace_s: float = 2.0  # on stop, how long calls in flight get to finish
    # How long a stream that arrives while no round is open (between two rounds) waits for the
    # next one before it is told UNAVAILABLE (and retries later).
    join_wait_s: float = 5.0


class CoordinatorServer:
    """The listening gRPC server. ``start()``, then ``run_round(config)`` once per round, then
    ``stop()``. One round at a time."""

    def __init__(
        self,
        security: ServerSecurity,
        limits: MessageLimits,
        *,
        settings: ServerSettings | None = None,
        max_participants: int = 1000,
        progress: Progress | None = None,
        extra_services: Sequence[Callable[[grpc.aio.Server], None]] = (),
    ) -> None:
        """``extra_services``: callbacks that add further servicers (the federated-learning
        layer's) to the same server, behind the same credentials and limits."""
        self.security = security
        self._extra_services = tuple(extra_services)
        self.limits = limits
        self.settings = settings or ServerSettings()
        self.max_participants = max_participants
        self._progress = progress or (lambda line: None)
        self.port: int | None = None
        self.health_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._service: SecureAggregationService | None = None
        self._health: health_aio.HealthServicer | None = None

    async def start(self) -> int:
        """Listen; returns the port."""
        # A throw-away round in memory first: the first real round then finds OpenSSL's
        # primitives set up and the protocol's code warm (see secagg.simulation.rehearse).
        rehearse(_runner())
        self._server = grpc.aio.server(
            options=transport.server_options(self.limits.receive_bytes, self.limits.send_bytes),
            # Every participant holds one stream; leave room for health checks and stragglers.
            maximum_concurrent_rpcs=2 * self.max_participants + 16,
        )
        self._service = SecureAggregationService(
            self.security.authenticator, join_wait_s=self.settings.join_wait_s, progress=self._progress
        )
        self._server.add_generic_rpc_handlers((_service_handler(self._service),))
        for add_service in self._extra_services:
            add_service(self._server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"{self.settings.host}:{self.settings.port}"
        port: int
        if self.security.credentials is None:
            port = self._server.add_insecure_port(address)
        else:
            port = self._server.add_secure_port(address, self.security.credentials)
        if port == 0:
            raise OSError(f"could not listen on {address}")
        if self.settings.health_port is not None:
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            health_address = f"{self.settings.host}:{self.settings.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise OSError(f"could not listen on {health_address}")
            await self._health_server.start()
        await self._server.start()
        for service in ("", transport.SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.port = port
        return port

    async def run_round(self, config: RoundConfig) -> RoundOutcome:
        """Run one round to its end. Never raises for anything a participant does: every abort
        is in the outcome."""
        if self._service is None:
            raise RuntimeError("start() the server first")
        if not self.limits.fits(config) or len(config.participants) > self.max_participants:
            raise ValueError("the round needs larger message limits than this server was started with")
        runner = RoundRunner(config, progress=self._progress)
        await self._service.set_round(runner)
        try:
            return await runner.run()
        finally:
            await self._service.set_round(None)

    def round_roster(self) -> dict[str, str]:
        """The open round's roster (see ``RoundRunner.roster``); empty between rounds."""
        current = self._service.current if self._service is not None else None
        return current.roster() if current is not None else {}

    def round_phase(self) -> str | None:
        """The open round's phase (see ``RoundRunner.phase``); None between rounds."""
        current = self._service.current if self._service is not None else None
        return current.phase() if current is not None else None

    async def stop(self) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for server in (self._server, self._health_server):
            if server is not None:
                await server.stop(self.settings.grace_s)


def new_round_id() -> bytes:
    """A round id that never repeats across coordinator runs."""
    return f"fedmask/round/{secrets.token_hex(12)}".encode()


def _names(names: Sequence[str]) -> str:
    """The names, listed for small rounds only."""
    return ", ".join(names) if len(names) <= 20 else f"{len(names)} participants"


class BackgroundCoordinator:
    """A ``CoordinatorServer`` on its own event loop in a daemon thread, for callers that are
    not asyncio code (tests, notebooks)::

        with BackgroundCoordinator(server) as coordinator:
            outcome = coordinator.run_round(config)
    """

    def __init__(self, server: CoordinatorServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fedmask-coordinator", daemon=True)

    def start(self, timeout_s: float = 30.0) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout_s)

    def submit_round(self, config: RoundConfig) -> concurrent.futures.Future[RoundOutcome]:
        """Start a round; returns a concurrent.futures.Future of its outcome."""
        return asyncio.run_coroutine_threadsafe(self.server.run_round(config), self._loop)

    def run_round(self, config: RoundConfig, timeout_s: float = 120.0) -> RoundOutcome:
        return self.submit_round(config).result(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        self._loop.close()

    def __enter__(self) -> BackgroundCoordinator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

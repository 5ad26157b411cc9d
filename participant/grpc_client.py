"""The participant's gRPC shell: dials out to the coordinator and drives ``secagg.client.Client``
through one round over a ``SecureAggregation/Aggregate`` stream.

    outcome = take_part(connection, identity, input_for_round)

The first connection is retried with exponential backoff and jitter (bounded) while the
coordinator is unreachable or has no round open; once the round has started nothing is retried
(the keys of a round cannot be reused). A message from the coordinator that does not fit the wire format, or
that the state machine refuses, aborts the round for this participant with the reason, and the
coordinator is told with an Abort message. Masks come from ``SystemRandom`` unless a test
passes another source.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import queue
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmask.parallel import default_runner
from fedmask.participant.policy import ParticipantPolicy, PolicyViolation
from fedmask.pki.preflight import own_certificate_problem, probe_tls
from fedmask.proto import transport, wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.secagg.client import Client, ClientConfig, ClientState
from fedmask.secagg.errors import Phase
from fedmask.secagg.messages import (
    Abort,
    AdvertiseKeys,
    ClientMessage,
    ConsistencySignature,
    EnvelopeOpening,
    MaskedInput,
    ModularVector,
    ShareKeys,
    UnmaskResponse,
)
from fedmask.secagg.params import SecurityMode
from fedmask.secagg.prg import PartRunner
from fedmask.secagg.rand import RandomSource, SystemRandom
from fedmask.secagg.simulation import rehearse

if TYPE_CHECKING:
    from fedmask.pki import TlsMaterial

log = logging.getLogger(__name__)

# The phase each reply belongs to (for progress and for the ``before_send`` hook).
REPLY_PHASE: dict[type, Phase] = {
    AdvertiseKeys: Phase.ADVERTISE_KEYS,
    ShareKeys: Phase.SHARE_KEYS,
    MaskedInput: Phase.MASKED_INPUT,
    ConsistencySignature: Phase.CONSISTENCY_CHECK,
    UnmaskResponse: Phase.UNMASK,
    EnvelopeOpening: Phase.COMPLAINTS,
}

# Status codes worth another connection attempt before the round has started.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
GRPC_MESSAGE_PREFIX_BYTES = 5  # gRPC frames every message with a flag byte and a 4-byte length
AGGREGATE_METHOD = f"/{transport.SERVICE}/Aggregate"


@functools.cache
def _runner() -> PartRunner | None:
    """One thread pool per participant process for its masking (a part per core)."""
    return default_runner()


@functools.cache
def rehearse_once() -> None:
    """Once per process, before its first connection: a throw-away round in memory, so that the
    first real round does not set up OpenSSL's primitives and Python's code paths while the
    others wait (about a fifth of a small round's CPU in a fresh process)."""
    rehearse(_runner())


@dataclass(frozen=True)
class TlsFiles:
    """Where the participant's TLS files are: the federation CA it trusts, and its own
    certificate and key (None with one-way TLS)."""

    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the coordinator."""

    target: str  # HOST:PORT
    credentials: grpc.ChannelCredentials | None  # None: plaintext (--insecure)
    metadata: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a token
    tls_server_name: str | None = None
    connect_attempts: int = 8
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    round_timeout_s: float = 3600.0  # the whole round, joining included
    rpc_timeout_s: float = 30.0  # a small call (GetTask, Report); transfers add size / bandwidth
    # The slowest link a transfer deadline allows for (250 kB/s = 2 Mbit/s).
    min_bandwidth_bytes_per_s: float = 250_000.0
    # How long a node keeps retrying while the coordinator is unreachable (restarts, outages).
    outage_tolerance_s: float = 3600.0
    # The TLS files behind ``credentials``, for telling apart who refused whose certificate when
    # the connection fails (gRPC reports both as UNAVAILABLE); None: guessed from gRPC's details.
    tls_files: TlsFiles | None = None

    def __post_init__(self) -> None:
        for name in (
            "initial_backoff_s",
            "max_backoff_s",
            "round_timeout_s",
            "rpc_timeout_s",
            "min_bandwidth_bytes_per_s",
            "outage_tolerance_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds (or bytes/s), got {value!r}")
        if self.connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, got {self.connect_attempts}")

    def transfer_deadline_s(self, size_bytes: int) -> float:
        """How long a transfer of ``size_bytes`` may take: a call's time plus the bytes at the
        slowest link allowed (a 100 MB adapter at 2 Mbit/s: 430 s)."""
        return self.rpc_timeout_s + max(0, size_bytes) / self.min_bandwidth_bytes_per_s

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt ``attempt`` (1-based): exponential, capped, with
        "equal jitter" (uniform in [cap/2, cap]) so that participants restarted together do not
        hammer the coordinator in lockstep."""
        cap = min(self.initial_backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return rng.uniform(cap / 2, cap)


@dataclass(frozen=True)
class Identity:
    """Who this participant is. ``identity_key`` and ``enrolled_identity_keys`` (name -> Ed25519
    public key from the CA-signed roster) are needed in the malicious-server mode;
    ``organisations`` (name -> organisation, from the same roster) by a participant policy."""

    name: str
    identity_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    enrolled_identity_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    organisations: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass
class Outcome:
    """How the round ended for this participant."""

    name: str
    completed: bool = False
    round_id: bytes | None = None
    participant_id: int | None = None
    survivors: tuple[int, ...] = ()
    abort_phase: Phase | None = None
    reason: str | None = None
    status: str | None = None  # the gRPC status when the call ended in error
    attempts: int = 0
    bytes_sent: int = 0  # gRPC message bytes (protobuf + 5-byte prefix) of every message sent
    messages_sent: int = 0
    round_s: float = 0.0  # RoundStart received -> RoundResult received
    cpu_s: float = 0.0  # this process's CPU time over the same span

    def summary(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["round_id"] = self.round_id.decode("utf-8", "replace") if self.round_id else None
        d["abort_phase"] = self.abort_phase.value if self.abort_phase else None
        d["survivors"] = list(self.survivors)
        return d


InputProvider = Callable[[wire.RoundStart], ModularVector]
Progress = Callable[[str], None]
BeforeSend = Callable[[Phase], None]


class _RoundNotStarted(Exception):
    """The call failed before RoundStart arrived: another attempt is safe."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self.error = error


def mtls_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client-certificate credentials from ``coordinator.pki.load_tls_material(dir, "participant", name)``."""
    return grpc.ssl_channel_credentials(material.ca_cert, material.private_key, material.cert_chain)


def one_way_tls_credentials(ca_cert: bytes) -> grpc.ChannelCredentials:
    """The coordinator is verified against the federation CA; the participant shows no certificate
    (it authenticates with its enrolment token in the call metadata instead)."""
    return grpc.ssl_channel_credentials(root_certificates=ca_cert)


# How gRPC (BoringSSL) words a failed TLS handshake in a status's details.
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED:?\s*([^:]*)")
_CLOSED_IN_HANDSHAKE = ("Socket closed", "Connection reset", "TLSV1_ALERT", "SSLV3_ALERT", "handshake failed")


def explain_unavailable(connection: Connection, details: str | None) -> str | None:
    """Which side refused which certificate, when a TLS connection failed as UNAVAILABLE.

    With ``connection.tls_files`` one TLS handshake is made with Python's ``ssl`` module and
    classified (``fedmask.pki.preflight.probe_tls``); without, gRPC's details are read. None when
    the TLS handshake is not what failed (the coordinator answered, or nothing is listening).
    """
    files = connection.tls_files
    if files is not None:
        try:
            ca_pem = files.ca_cert.read_bytes()
        except OSError:
            ca_pem = None
        if ca_pem is not None:
            probe = probe_tls(
                connection.target,
                ca_pem,
                cert_file=files.cert,
                key_file=files.key,
                server_name=connection.tls_server_name,
                timeout_s=min(5.0, connection.rpc_timeout_s),
            )
            if probe.outcome == "peer-refused" and files.cert is not None:
                try:
                    ca_cert: x509.Certificate | None = x509.load_pem_x509_certificate(ca_pem)
                except ValueError:
                    ca_cert = None
                own = own_certificate_problem("participant", "NAME", files.cert, ca_cert)
                return probe.summary + (
                    f"; {own}"
                    if own is not None
                    else "; its certificate is valid by this machine's clock and issued by the CA it holds: check "
                    "the coordinator's clock, and that the coordinator serves this federation"
                )
            if probe.outcome in ("refused-peer", "peer-refused", "no-answer"):
                return probe.summary.replace("this side refused", "this participant refused")
            return None
    text = details or ""
    verify = _VERIFY_FAILED.search(text)
    if verify is not None:
        why = verify.group(1).strip() or "verification failed"
        return (
            f"this participant refused the coordinator's TLS certificate: {why}; check that ca/ca.pem and the "
            "coordinator's certificate come from the same federation, and that it is valid for this host name"
        )
    if any(marker.lower() in text.lower() for marker in _CLOSED_IN_HANDSHAKE):
        return (
            "the coordinator closed the connection during the TLS handshake: it most likely refused this "
            "participant's TLS certificate (`fedmask doctor participant` tells)"
        )
    return None


def take_part(
    connection: Connection,
    identity: Identity,
    input_for_round: InputProvider,
    *,
    rng: RandomSource | None = None,
    progress: Progress | None = None,
    before_send: BeforeSend | None = None,
    sleep: Callable[[float], None] = time.sleep,
    jitter: random.Random | None = None,
    policy: ParticipantPolicy | None = None,
    still_wanted: Callable[[], bool] | None = None,
) -> Outcome:
    """Join the coordinator's open round and take part until it ends.

    ``policy``: this participant's own rules (mode, who takes part); a round start that breaks
    them is refused before anything is computed. ``fedmask participant join`` and ``node``
    always pass one; None leaves the checks to the caller (tests, custom shells).

    ``input_for_round(start)`` returns the encoded input (integers mod 2^b, shape (d,)) once the
    round's parameters are known. ``before_send(phase)`` is called just before each protocol
    message goes out (the loopback harness uses it to stop a participant in a chosen phase).
    ``sleep`` and ``jitter`` drive the connection backoff (injectable for tests).
    ``still_wanted()``, asked before each retry, says whether the round this participant set out
    to join is still the coordinator's: a coordinator that restarted re-opens an interrupted round
    under a new id, and joining that one would only end in a refusal at its start (and the round
    going on without this participant) instead of training for it first."""
    progress = progress or (lambda line: None)
    jitter = jitter or random.Random()
    outcome = Outcome(identity.name)
    rehearse_once()
    for attempt in range(1, connection.connect_attempts + 1):
        outcome.attempts = attempt
        try:
            session = _RoundSession(
                connection, identity, input_for_round, rng or SystemRandom(), progress, outcome, policy
            )
            session.run(before_send)
            return outcome
        except _RoundNotStarted as exc:
            code, details = exc.error.code(), exc.error.details()
            if code not in _RETRYABLE or attempt == connection.connect_attempts:
                outcome.status = code.name
                outcome.reason = f"could not join a round at {connection.target}: {code.name}: {details}"
                if code is grpc.StatusCode.UNAVAILABLE and connection.credentials is not None:
                    # A TLS refusal, either way, looks the same as a coordinator that is down.
                    hint = explain_unavailable(connection, details)
                    if hint is not None:
                        outcome.reason += f" ({hint})"
                return outcome
            delay = connection.backoff_s(attempt, jitter)
            progress(f"coordinator not reachable or no round open ({code.name}); retrying in {delay:.2f} s")
            sleep(delay)
            if still_wanted is not None and not still_wanted():
                outcome.status = code.name
                outcome.reason = "the round this participant was joining is no longer open (the coordinator moved on)"
                return outcome
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


class _RoundSession:
    """One Aggregate call: the stream of requests is fed from a queue by the reply loop."""

    def __init__(
        self,
        connection: Connection,
        identity: Identity,
        input_for_round: InputProvider,
        rng: RandomSource,
        progress: Progress,
        outcome: Outcome,
        policy: ParticipantPolicy | None = None,
    ) -> None:
        self.connection = connection
        self.policy = policy
        self.identity = identity
        self.input_for_round = input_for_round
        self.rng = rng
        self.progress = progress
        self.outcome = outcome
        self._outgoing: queue.SimpleQueue[pb.ClientEnvelope | None] = queue.SimpleQueue()
        self._start: wire.RoundStart | None = None
        self._client: Client | None = None
        self._clock: tuple[float, float] | None = None
        self._done = False

    def _requests(self) -> Iterator[pb.ClientEnvelope]:
        while True:
            envelope = self._outgoing.get()
            if envelope is None:
                return
            yield envelope

    def _send(self, message: wire.ClientWireMessage) -> None:
        self.outcome.messages_sent += 1
        self._outgoing.put(wire.client_to_proto(message))

    def _serialize(self, envelope: pb.ClientEnvelope) -> bytes:
        """The request serializer (runs in gRPC's sending thread): counts the bytes sent."""
        data = envelope.SerializeToString()
        self.outcome.bytes_sent += len(data) + GRPC_MESSAGE_PREFIX_BYTES
        return data

    def _close(self) -> None:
        self._outgoing.put(None)

    def run(self, before_send: BeforeSend | None) -> None:
        connection, outcome = self.connection, self.outcome
        channel = _open_channel(connection)
        try:
            aggregate = channel.stream_stream(
                AGGREGATE_METHOD,
                request_serializer=self._serialize,
                response_deserializer=pb.ServerEnvelope.FromString,
            )
            self._send(wire.Hello())
            call = aggregate(self._requests(), metadata=connection.metadata or None, timeout=connection.round_timeout_s)
            try:
                for envelope in call:
                    # Once the round is over for us, read on until the coordinator ends the call,
                    # so that our last message (an Abort) is delivered rather than cancelled.
                    if not self._done and not self._on_envelope(envelope, before_send):
                        self._done = True
                        self._close()
            except grpc.RpcError as error:
                if self._start is None:
                    raise _RoundNotStarted(error) from error
                if not outcome.completed and outcome.reason is None:
                    outcome.status = error.code().name
                    outcome.reason = f"the coordinator ended the call: {error.code().name}: {error.details()}"
                    outcome.abort_phase = self._client.phase if self._client else None
            finally:
                self._close()
                call.cancel()
            if self._start is not None and not outcome.completed and outcome.reason is None:
                outcome.reason = "the coordinator closed the stream before the round ended"
        finally:
            self._stop_clock()
            channel.close()

    def _stop_clock(self) -> None:
        if self._clock is not None:
            wall, cpu = self._clock
            self.outcome.round_s = time.perf_counter() - wall
            self.outcome.cpu_s = time.process_time() - cpu
            self._clock = None

    def _abort(self, phase: Phase | None, reason: str, *, tell_coordinator: bool) -> bool:
        outcome = self.outcome
        outcome.abort_phase = phase
        outcome.reason = reason
        if tell_coordinator:
            self._send(Abort(phase or Phase.ADVERTISE_KEYS, reason))
        self.progress(f"aborted: {reason}")
        return False

    def _on_envelope(self, envelope: pb.ServerEnvelope, before_send: BeforeSend | None) -> bool:
        """Handle one coordinator message; False when the round is over for us."""
        outcome = self.outcome
        client = self._client
        phase = client.phase if client is not None else Phase.ADVERTISE_KEYS
        try:
            message = wire.server_from_proto(envelope, recipient=outcome.participant_id)
        except wire.WireError as exc:
            return self._abort(phase, f"malformed message from the coordinator: {exc}", tell_coordinator=True)

        if isinstance(message, wire.RoundStart):
            if self._start is not None:
                return self._abort(phase, "a second round start in one stream", tell_coordinator=True)
            return self._on_round_start(message, before_send)
        if client is None:
            if isinstance(message, Abort):
                return self._abort(
                    message.phase, f"the coordinator aborted the round: {message.reason}", tell_coordinator=False
                )
            return self._abort(phase, "protocol message before the round start", tell_coordinator=True)
        if isinstance(message, wire.RoundResult):
            if client.state is not ClientState.COMPLETED:
                return self._abort(phase, f"round result while {client.state.value[1]}", tell_coordinator=True)
            if message.session_id != client.session_id:
                return self._abort(phase, "round result for another session", tell_coordinator=True)
            outcome.completed = True
            outcome.survivors = message.survivors
            self._stop_clock()
            self.progress(f"round completed: {len(message.survivors)} survivors")
            return False

        reply = client.receive(message)
        if isinstance(message, Abort):
            return self._abort(
                message.phase, f"the coordinator aborted the round: {message.reason}", tell_coordinator=False
            )
        if isinstance(reply, Abort):
            return self._abort(reply.phase, reply.reason, tell_coordinator=True)
        if reply is not None:
            self._reply(reply, before_send)
        return True

    def _reply(self, reply: ClientMessage, before_send: BeforeSend | None) -> None:
        phase = REPLY_PHASE[type(reply)]
        if before_send is not None:
            before_send(phase)
        self.progress(f"{phase.value}: sending")
        self._send(reply)

    def _on_round_start(self, start: wire.RoundStart, before_send: BeforeSend | None) -> bool:
        outcome, identity = self.outcome, self.identity
        self._start = start
        self._clock = (time.perf_counter(), time.process_time())
        outcome.round_id = start.round_id
        outcome.participant_id = start.participant_id
        params = start.params
        if start.participants[start.participant_id - 1] != identity.name:
            return self._abort(
                Phase.ADVERTISE_KEYS,
                f"the coordinator gave this participant ({identity.name}) the id of "
                f"{start.participants[start.participant_id - 1]!r}",
                tell_coordinator=True,
            )
        if self.policy is not None:
            try:
                self.policy.check_round(
                    params.mode,
                    start.participants,
                    identity.organisations,
                    threshold=params.threshold,
                    neighbours=params.neighbours,
                )
            except PolicyViolation as exc:
                return self._abort(Phase.ADVERTISE_KEYS, str(exc), tell_coordinator=True)
        self.progress(
            f"round {start.round_id.decode('utf-8', 'replace')}: id {start.participant_id} of "
            f"{len(start.participants)}, d={params.dimension}, b={params.modulus_bits}, t={params.threshold}, "
            f"{params.mode.value}"
        )
        identity_keys: dict[int, bytes] = {}
        if params.mode is SecurityMode.MALICIOUS:
            if identity.identity_key is None:
                return self._abort(
                    Phase.ADVERTISE_KEYS,
                    "malicious-server mode needs this participant's identity key",
                    tell_coordinator=True,
                )
            unknown = [n for n in start.participants if n not in identity.enrolled_identity_keys]
            if unknown:
                return self._abort(
                    Phase.ADVERTISE_KEYS,
                    f"participants not in the CA-signed roster: {', '.join(unknown[:5])}",
                    tell_coordinator=True,
                )
            ids = start.participant_ids()
            identity_keys = {ids[n]: identity.enrolled_identity_keys[n] for n in start.participants}
        try:
            client = Client(
                ClientConfig(
                    start.participant_id,
                    start.round_id,
                    params,
                    identity.identity_key if params.mode is SecurityMode.MALICIOUS else None,
                    identity_keys,
                    runner=_runner(),
                ),
                self.rng,
            )
            client.set_input(self.input_for_round(start))
        except ValueError as exc:
            return self._abort(Phase.ADVERTISE_KEYS, f"cannot take part: {exc}", tell_coordinator=True)
        self._client = client
        self._reply(client.start(), before_send)
        return True


def _open_channel(connection: Connection) -> grpc.Channel:
    options = transport.client_options(connection.tls_server_name)
    if connection.credentials is None:
        return grpc.insecure_channel(connection.target, options=options)
    return grpc.secure_channel(connection.target, connection.credentials, options=options)

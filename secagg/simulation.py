"""An in-memory round: n clients and one server exchanging messages directly, with scripted
dropouts. The protocol harness for tests and for ``fedmask simulate``.

Pure like the rest of secagg: randomness is a seeded CSPRNG (so a run can be replayed) and the
clock is injected (``clock=time.perf_counter`` from the caller; without one, timings are 0).
Inputs are drawn one client at a time and folded into the expected sum as the server accepts
them, so the harness itself stays O(d) in memory like the server.

Two round times: ``round_s`` is this process doing everyone's work in turn; ``round_parallel_s``
is what a deployment waits (participants work on their own machines at the same time): for each
phase, the slowest client plus the server's work, network left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import prg
from .client import Client, ClientConfig
from .errors import DropKind, InvalidMessage, Phase, ProtocolAbort, SecAggError
from .messages import (
    Abort,
    AdvertiseKeys,
    ConsistencySignature,
    EnvelopeOpening,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
)
from .params import ProtocolParams, SecurityMode
from .rand import SeededRandom
from .server import Server, ServerConfig

# The phase in which a participant sends each kind of message: "drops at phase P" means it
# sends nothing from P on.
DROPPABLE_PHASES = (
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY_CHECK,
    Phase.UNMASK,
)


def droppable_phases(mode: SecurityMode) -> tuple[Phase, ...]:
    """The phases a participant can drop in under ``mode``: only the malicious mode has the
    consistency check (a semi-honest round goes from the masked inputs straight to the unmask)."""
    if mode is SecurityMode.MALICIOUS:
        return DROPPABLE_PHASES
    return tuple(p for p in DROPPABLE_PHASES if p is not Phase.CONSISTENCY_CHECK)


@dataclass(frozen=True)
class SimulationConfig:
    params: ProtocolParams
    participants: int
    drop_at: Mapping[int, Phase] = field(default_factory=dict)  # participant id -> phase it drops in
    seed: int = 0
    round_id: bytes = b"simulated-round"
    runner: prg.PartRunner | None = None  # runs mask additions in parts (server and clients)


@dataclass
class SimulationResult:
    participants: int
    dimension: int
    threshold: int
    survivors: list[int]
    dropped: dict[int, str]
    exact: bool
    aborted: bool
    abort_reason: str | None
    client_share_s: float
    client_mask_s: float
    server_unmask_s: float
    round_s: float
    # the server's work on the unmask responses as they arrive (their share checks), which a
    # deployment overlaps with waiting for the rest; server_unmask_s starts after the last one
    server_unmask_receive_s: float
    round_parallel_s: float
    upload_bytes_per_participant: float
    client_aborts: dict[int, str] = field(default_factory=dict)
    # phase -> (slowest client, server) seconds: what round_parallel_s adds up
    phase_parallel_s: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int | float | bool | str | None]:
        return {
            "participants": self.participants,
            "dim": self.dimension,
            "threshold": self.threshold,
            "survivors": len(self.survivors),
            # A participant that leaves after its masked input (consistency check, unmask) is in
            # the sum: a survivor, counted apart, never twice.
            "dropped": sum(1 for u in self.dropped if u not in self.survivors),
            "dropped_after_input": sum(1 for u in self.dropped if u in self.survivors),
            "exact": self.exact,
            "aborted": self.aborted,
            "abort_reason": self.abort_reason,
            "client_share_s": self.client_share_s,
            "client_mask_s": self.client_mask_s,
            "server_unmask_s": self.server_unmask_s,
            "server_unmask_receive_s": self.server_unmask_receive_s,
            "round_s": self.round_s,
            "round_parallel_s": self.round_parallel_s,
            "upload_bytes_per_participant": self.upload_bytes_per_participant,
            "upload_bytes_per_value": self.upload_bytes_per_participant / self.dimension,
        }


def payload_bytes(message: object) -> int:
    """Bytes a message carries on the wire, counting its fields at their natural widths
    (ids as 4 bytes, vectors at b <= 32 as 4 bytes a value): the yardstick the gRPC encoding is
    compared against."""
    if isinstance(message, AdvertiseKeys):
        return 4 + len(message.round_id) + 64 + len(message.signature)
    if isinstance(message, ShareKeys):
        envelopes = sum(
            4
            + len(s.ciphertext)
            + len(s.ephemeral_key)
            + len(s.self_mask_share_commitment)
            + len(s.key_share_commitment)
            + len(s.signature)
            for s in message.shares
        )
        return 4 + len(message.session_id) + len(message.self_mask_commitment) + envelopes
    if isinstance(message, MaskedInput):
        complaints = sum(8 + len(c.signature) for c in message.complaints)
        return 4 + len(message.session_id) + message.masked.nbytes + complaints
    if isinstance(message, EnvelopeOpening):
        return 4 + len(message.session_id) + sum(4 + len(secret) for _, secret in message.openings)
    if isinstance(message, ConsistencySignature):
        return 4 + len(message.session_id) + len(message.signature)
    if isinstance(message, UnmaskResponse):
        shares = message.self_mask_shares + message.key_shares
        return 4 + len(message.session_id) + sum(4 + len(s) for _, s in shares)
    if isinstance(message, Abort):
        return 4 + len(message.reason.encode())
    raise TypeError(f"not a client message: {type(message).__name__}")


def random_input(rng: SeededRandom, dimension: int, modulus_bits: int) -> np.ndarray:
    """A uniformly random vector mod 2^b (the worst case for exactness: every bit matters)."""
    return prg.expand(rng.random_bytes(prg.SEED_BYTES), dimension, modulus_bits)


def simulate(config: SimulationConfig, *, clock: Callable[[], float] | None = None) -> SimulationResult:
    params = config.params
    n = config.participants
    now = clock or (lambda: 0.0)
    root = SeededRandom.from_int(config.seed)
    ids = tuple(range(1, n + 1))
    identity_keys: dict[int, bytes] = {}
    identity_private: dict[int, Ed25519PrivateKey] = {}
    if params.mode is SecurityMode.MALICIOUS:
        for u in ids:
            private = Ed25519PrivateKey.from_private_bytes(root.random_bytes(32))
            identity_private[u] = private
            identity_keys[u] = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
    server = Server(ServerConfig(config.round_id, params, ids, identity_keys, config.runner))
    clients = {
        u: Client(
            ClientConfig(u, config.round_id, params, identity_private.get(u), identity_keys, config.runner),
            rng=root.spawn(),
        )
        for u in ids
    }
    input_rng = root.spawn()
    expected = np.zeros(params.dimension, dtype=prg.dtype_for_bits(params.modulus_bits))
    timings: dict[Phase, list[float]] = {phase: [] for phase in Phase}
    server_times: dict[Phase, float] = dict.fromkeys(Phase, 0.0)
    uploaded = dict.fromkeys(ids, 0)
    client_aborts: dict[int, str] = {}
    server_unmask_s = 0.0
    started = now()

    def deliver(u: int, message: object | None, phase: Phase) -> None:
        """Hand a server message to client u and its reply (if any) to the server."""
        if config.drop_at.get(u) is not None and _order(config.drop_at[u]) <= _order(phase):
            server.drop(u, "dropped out (scripted)", DropKind.DISCONNECTED)
            return
        client = clients[u]
        pending_input = None
        if phase is Phase.MASKED_INPUT:
            pending_input = random_input(input_rng, params.dimension, params.modulus_bits)
            client.set_input(pending_input)
        t0 = now()
        reply = client.start() if phase is Phase.ADVERTISE_KEYS else client.receive(message)
        timings[phase].append(now() - t0)
        if reply is None:
            server.drop(u, "sent nothing", DropKind.DEADLINE)
            return
        if isinstance(reply, Abort):
            client_aborts[u] = reply.reason
            server.drop(u, f"client aborted: {reply.reason}", DropKind.ABORTED)
            return
        uploaded[u] += payload_bytes(reply)
        t0 = now()
        try:
            server.receive(reply)
        except InvalidMessage as exc:
            server.drop(u, exc.reason, DropKind.REFUSED)
            return
        finally:
            server_times[phase] += now() - t0
        if pending_input is not None:
            np.add(expected, pending_input, out=expected)

    aborted_reason = None
    try:
        for u in ids:
            deliver(u, None, Phase.ADVERTISE_KEYS)
        while server.phase not in (Phase.COMPLETED, Phase.ABORTED):
            closing = server.phase
            t0 = now()
            try:
                outgoing = server.close_phase()
            finally:
                server_times[closing] += now() - t0
            if closing is Phase.UNMASK:
                server_unmask_s = now() - t0
            # A client's reply to these messages belongs to the server's new phase.
            for u, message in sorted(outgoing.items()):
                deliver(u, message, server.phase)
    except ProtocolAbort as exc:
        aborted_reason = str(exc)
    round_s = now() - started

    completed = server.phase is Phase.COMPLETED
    prg.reduce_modulus(expected, params.modulus_bits)
    exact = completed and np.array_equal(server.result, expected)
    # Average over the participants that went through the whole upload (their masked input
    # is in the sum); those that dropped early uploaded less.
    full_uploads = list(server.u3) or [u for u in ids if uploaded[u]]
    return SimulationResult(
        participants=n,
        dimension=params.dimension,
        threshold=params.threshold,
        survivors=list(server.u3) if completed else [],
        dropped=dict(server.dropped_reasons),
        exact=bool(exact),
        aborted=not completed,
        abort_reason=aborted_reason,
        client_share_s=_mean(timings[Phase.SHARE_KEYS]),
        client_mask_s=_mean(timings[Phase.MASKED_INPUT]),
        server_unmask_s=server_unmask_s,
        round_s=round_s,
        server_unmask_receive_s=server_times[Phase.UNMASK] - server_unmask_s,
        round_parallel_s=sum(max(timings[phase], default=0.0) + server_times[phase] for phase in Phase),
        phase_parallel_s={
            phase.value: (max(timings[phase], default=0.0), server_times[phase])
            for phase in Phase
            if timings[phase] or server_times[phase]
        },
        upload_bytes_per_participant=sum(uploaded[u] for u in full_uploads) / max(1, len(full_uploads)),
        client_aborts=client_aborts,
    )


def rehearse(runner: prg.PartRunner | None = None) -> None:
    """Run one tiny malicious-mode round in memory and throw it away: 4 participants, 64 values,
    one dropping out before its masked input, so that every primitive a round uses (X25519,
    HKDF, AES-GCM, AES-CTR, SHA-256, Ed25519, Shamir) and both state machines run once in this
    process. OpenSSL sets each primitive up, and Python warms each code path, on first use; a
    process that rehearses before it joins a round does not pay for that inside the round.
    Its keys and inputs are seeded and discarded: nothing of it leaves the process."""
    params = ProtocolParams(64, 32, 3, SecurityMode.MALICIOUS)
    config = SimulationConfig(params, 4, {4: Phase.MASKED_INPUT}, round_id=b"rehearsal", runner=runner)
    result = simulate(config)
    if not result.exact:
        raise SecAggError(f"the rehearsal round did not give the exact sum: {result.abort_reason}")


def _order(phase: Phase) -> int:
    # The complaints phase comes right after the masked inputs; scripted drops never target it.
    if phase is Phase.COMPLAINTS:
        return DROPPABLE_PHASES.index(Phase.MASKED_INPUT)
    return DROPPABLE_PHASES.index(phase)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0

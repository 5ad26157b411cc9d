"""Whole rounds with one message damaged on the wire: every message a participant or the
coordinator receives is untrusted input. One message of each round, to a client or to the server,
has bits flipped, bytes replaced, cut or inserted after protobuf encoding. Whatever the damage,
the wire refuses it (``WireError`` or protobuf's ``DecodeError``), or the state machines refuse it
with their own reasons (a client's ``Abort``, the server's ``InvalidMessage`` or
``ProtocolAbort``), or the round completes; nothing else escapes either side.

A participant's message damaged on its way must never make the sum wrong, except where it is
that participant's own masked input (its choice of input): another party's contribution cannot be
spoilt by one participant (as a corrupted share once did). A server message damaged on its way
can only come from the coordinator under mTLS, which computes the sum itself: there the property
is the participant's, that it refuses or completes without raising (a bundle that silently lost a
neighbour's share is caught by the consistency check in malicious mode)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from fedmask.proto import wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.secagg import SecurityMode, prg
from fedmask.secagg.errors import DropKind, InvalidMessage, Phase, ProtocolAbort
from fedmask.secagg.messages import Abort, MaskedInput

ROUNDS_PER_CASE = 40
PARTICIPANTS = 6
OUTCOMES = {"exact", "aborted", "own input changed", "coordinator's own sum changed"}


def _damage(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.5 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op < 0.65 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op < 0.8 and out:
            i = rng.randrange(len(out))
            del out[i : i + rng.randint(1, 4)]
        elif op < 0.9:
            i = rng.randrange(len(out) + 1)
            out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


def _round_with_one_damaged_message(make_round, seed: int, mode, neighbours) -> tuple[str, bool]:
    """The round's outcome, and whether the damaged message got past the wire to a state machine."""
    rng = random.Random(seed)
    r = make_round(PARTICIPANTS, t=4 if neighbours is None else 3, mode=mode, seed=seed, neighbours=neighbours)
    server, params = r.server, r.params
    # Either way, one message a participant and phase: 4 phases, 5 with the consistency check.
    phases = 5 if mode is SecurityMode.MALICIOUS else 4
    target, to_server = rng.randrange(PARTICIPANTS * phases), rng.random() < 0.5
    sent = 0
    damaged: list[object] = []
    reached: list[object] = []

    def carry(message, encode, decode):
        """The message as the receiver decodes it, or None where the wire refuses it."""
        nonlocal sent
        sent += 1
        if sent - 1 != target:
            return message
        damaged.append(message)
        try:
            decoded = decode(_damage(rng, encode(message)))
        except (DecodeError, wire.WireError):
            return None
        reached.append(decoded)
        return decoded

    def deliver(u: int, message) -> None:
        if message is None:
            reply = r.clients[u].start()
        else:
            if not to_server:
                message = carry(
                    message,
                    lambda m: wire.server_to_proto(m).SerializeToString(),
                    lambda b: wire.server_from_proto(pb.ServerEnvelope.FromString(b), recipient=u),
                )
                if message is None:
                    server.drop(u, "refused by the wire", DropKind.REFUSED)
                    return
            reply = r.clients[u].receive(message)
        if reply is None or isinstance(reply, Abort):
            server.drop(u, "aborted" if reply else "sent nothing", DropKind.ABORTED if reply else DropKind.DEADLINE)
            return
        if to_server:
            reply = carry(
                reply,
                lambda m: wire.client_to_proto(m).SerializeToString(),
                lambda b: wire.client_from_proto(pb.ClientEnvelope.FromString(b), sender=u, params=params),
            )
            if reply is None:
                server.drop(u, "refused by the wire", DropKind.REFUSED)
                return
        try:
            server.receive(reply)
        except InvalidMessage as exc:
            server.drop(u, exc.reason, DropKind.REFUSED)

    try:
        for u in r.ids:
            deliver(u, None)
        while server.phase not in (Phase.COMPLETED, Phase.ABORTED):
            for u, message in sorted(server.close_phase().items()):
                deliver(u, message)
    except ProtocolAbort:
        return "aborted", bool(reached)
    if server.phase is not Phase.COMPLETED:
        return "aborted", bool(reached)
    expected = np.zeros(params.dimension, prg.dtype_for_bits(params.modulus_bits))
    for u in server.u3:
        expected += r.inputs[u]
    if np.array_equal(server.result, expected):
        return "exact", bool(reached)
    if not to_server:
        return "coordinator's own sum changed", bool(reached)
    assert damaged and isinstance(damaged[0], MaskedInput), (
        f"seed {seed}: the round completed with a wrong sum after damage to {type(damaged[0]).__name__}"
    )
    return "own input changed", bool(reached)


@pytest.mark.parametrize("neighbours", [None, 3], ids=["complete", "harary-3"])
@pytest.mark.parametrize("mode", list(SecurityMode), ids=lambda m: m.value)
def test_one_damaged_message_is_refused_or_changes_nothing(make_round, mode, neighbours) -> None:
    runs = [_round_with_one_damaged_message(make_round, seed, mode, neighbours) for seed in range(ROUNDS_PER_CASE)]
    assert {outcome for outcome, _ in runs} <= {
        "exact",
        "aborted",
        "own input changed",
        "coordinator's own sum changed",
    }
    # Not only wire refusals: damaged messages that decode reach the state machines.
    assert sum(reached for _, reached in runs) >= ROUNDS_PER_CASE // 4, runs

"""The coordinator's gRPC server over loopback mTLS, in process: honest rounds, hostile messages,
identities, deadlines, health and limits. Every round checks its sum bit for bit against the
plaintext sum of the survivors' inputs, computed here out of band."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_harness import (
    DIM,
    HONEST,
    MALLORY,
    OUTSIDER,
    PARAMS,
    Mallory,
    assert_exact,
    input_of,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmask import pki
from fedmask.coordinator.abort_kinds import AttemptAbort
from fedmask.coordinator.round_server import (
    BackgroundCoordinator,
    CoordinatorServer,
    MessageLimits,
    RoundConfig,
    ServerSettings,
    new_round_id,
)
from fedmask.coordinator.transport import insecure_security, mtls_security, token_security
from fedmask.participant.grpc_client import Connection, Identity, one_way_tls_credentials, take_part
from fedmask.proto import transport, wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.secagg import shamir
from fedmask.secagg.errors import DropKind, Phase
from fedmask.secagg.messages import Abort, AdvertiseKeys, MaskedInput, ShareKeys, UnmaskResponse
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(120)
ALL = (*HONEST, MALLORY)


def test_honest_round_is_exact_and_reports_bytes(round_harness):
    harness = round_harness()
    harness.start_honest(ALL)
    outcome = harness.outcome()
    assert_exact(outcome, ALL)
    assert outcome.dropped == {}
    outcomes = harness.honest_outcomes()
    assert all(o.completed for o in outcomes.values())
    assert {o.survivors for o in outcomes.values()} == {(1, 2, 3, 4)}
    # What each participant counted sending is what the coordinator counted receiving.
    for name, o in outcomes.items():
        assert outcome.bytes_received[name] == o.bytes_sent
        assert o.bytes_sent > 4 * DIM


def test_rounds_run_one_after_another_on_one_server(round_harness):
    first = round_harness(selected=("alice", "bob", "carol"))
    first.start_honest(("alice", "bob", "carol"))
    one = first.outcome()
    second = round_harness(selected=("bob", "carol", "mallory"))
    second.start_honest(("bob", "carol", "mallory"))
    two = second.outcome()
    assert_exact(one, ("alice", "bob", "carol"))
    assert_exact(two, ("bob", "carol", "mallory"))
    assert one.round_id != two.round_id and one.session_id != two.session_id


def _flip_session(message):
    wrong = bytes([message.session_id[0] ^ 1]) + message.session_id[1:]
    return [dataclasses.replace(message, session_id=wrong)]


def _masked_bytes(message: MaskedInput, data: bytes) -> list:
    return [pb.ClientEnvelope(masked_input=pb.MaskedInput(session_id=message.session_id, masked=data))]


def _both_shares(message: UnmaskResponse) -> list:
    owner, share = message.self_mask_shares[0]
    return [dataclasses.replace(message, key_shares=((owner, share),))]


def _packed(message: MaskedInput) -> bytes:
    return wire.pack_vector(message.masked)


# (test id, phase mallory cheats in, what it sends instead, status, words in the details,
#  whether mallory's input is in the sum)
HOSTILE = [
    ("wrong-session-id", Phase.SHARE_KEYS, _flip_session, grpc.StatusCode.FAILED_PRECONDITION, "session id", False),
    (
        "wrong-phase",
        Phase.ADVERTISE_KEYS,
        lambda m: [MaskedInput(0, bytes(32), np.zeros(DIM, np.uint32))],
        grpc.StatusCode.FAILED_PRECONDITION,
        "[advertise-keys] expected AdvertiseKeys, got MaskedInput",
        False,
    ),
    (
        "truncated-vector",
        Phase.MASKED_INPUT,
        lambda m: _masked_bytes(m, _packed(m)[:-4]),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"vector has {4 * DIM - 4} bytes, expected {4 * DIM}",
        False,
    ),
    (
        "oversized-vector",
        Phase.MASKED_INPUT,
        lambda m: _masked_bytes(m, _packed(m) + bytes(4)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"vector has {4 * DIM + 4} bytes",
        False,
    ),
    (
        "vector-over-the-size-limit",
        Phase.MASKED_INPUT,
        lambda m: _masked_bytes(m, _packed(m) + bytes(MessageLimits.for_round(PARAMS, 4).receive_bytes)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
        False,
    ),
    (
        "low-order-curve-point",
        Phase.ADVERTISE_KEYS,
        lambda m: [dataclasses.replace(m, encryption_key=bytes(32))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid encryption key",
        False,
    ),
    (
        "short-public-key",
        Phase.ADVERTISE_KEYS,
        lambda m: [dataclasses.replace(m, masking_key=m.masking_key[:31])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "masking key must be 32 bytes, got 31",
        False,
    ),
    (
        "another-round-id",
        Phase.ADVERTISE_KEYS,
        lambda m: [dataclasses.replace(m, round_id=b"another round")],
        grpc.StatusCode.FAILED_PRECONDITION,
        "another round",
        False,
    ),
    ("duplicate-message", Phase.SHARE_KEYS, lambda m: [m, m], grpc.StatusCode.FAILED_PRECONDITION, "duplicate", False),
    (
        "share-for-a-non-neighbour",
        Phase.SHARE_KEYS,
        lambda m: [dataclasses.replace(m, shares=m.shares[:-1])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "one share for each of its 3 neighbours",
        False,
    ),
    (
        "both-shares-of-one-participant",
        Phase.UNMASK,
        _both_shares,
        grpc.StatusCode.INVALID_ARGUMENT,
        "revealed both shares",
        True,  # its masked input was already in: it counts as a survivor
    ),
    (
        "empty-envelope",
        Phase.MASKED_INPUT,
        lambda m: [pb.ClientEnvelope()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty envelope",
        False,
    ),
]


@pytest.mark.parametrize(
    ("phase", "tamper", "code", "words", "mallory_counts"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_message_is_refused_and_the_sum_stays_exact(round_harness, phase, tamper, code, words, mallory_counts):
    harness = round_harness()
    harness.start_honest(HONEST)
    stream = harness.raw(MALLORY)
    try:
        Mallory(stream).play(until=phase, tamper=tamper)
        got_code, details = stream.status()
    finally:
        stream.close()
    assert got_code is code, details
    assert words in details
    outcome = harness.outcome()
    survivors = (*HONEST, MALLORY) if mallory_counts else HONEST
    assert_exact(outcome, survivors)
    if not mallory_counts:
        assert MALLORY in outcome.dropped
    assert all(o.completed for o in harness.honest_outcomes().values())


def test_duplicate_stream_is_refused_and_cannot_claim_another_name(round_harness):
    """A second stream with mallory's certificate -- claiming to be alice in the metadata, which
    mTLS ignores -- is refused as a duplicate of mallory; the first stream goes on."""
    harness = round_harness()
    harness.start_honest(HONEST)
    first = harness.raw(MALLORY)
    mallory = Mallory(first)  # joined: the round has started
    second = harness.raw(MALLORY, metadata=((transport.METADATA_PARTICIPANT, "alice"),))
    try:
        code, details = second.status()
        assert code is grpc.StatusCode.ALREADY_EXISTS
        assert "'mallory' already has a stream open" in details
        assert isinstance(mallory.play(), wire.RoundResult)
    finally:
        first.close()
        second.close()
    assert_exact(harness.outcome(), ALL)


def test_participant_not_selected_is_refused(round_harness, federation):
    harness = round_harness(selected=HONEST)
    code, details = harness.ended_with(wire.Hello(), name=OUTSIDER)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "'olivia' is not selected" in details
    harness.start_honest(HONEST)
    assert_exact(harness.outcome(), HONEST)


def test_superseded_certificate_is_refused(round_harness, federation):
    """The certificate of eve before it was re-issued still chains to the CA, but the roster
    names the new one."""
    harness = round_harness(selected=HONEST)
    credentials = grpc.ssl_channel_credentials(
        federation.ca_cert, federation.superseded_key, federation.superseded_cert
    )
    code, details = harness.ended_with(wire.Hello(), credentials=credentials)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "not the one in the roster" in details
    harness.start_honest(HONEST)
    assert_exact(harness.outcome(), HONEST)


@pytest.mark.parametrize(
    "who", ["no-client-certificate", "another-ca", "coordinator-certificate", "stolen-certificate"]
)
def test_handshake_refuses_peers_without_a_participant_certificate(round_harness, federation, who):
    """These never get past the TLS handshake: the client sees UNAVAILABLE and the coordinator
    never hears of them; the round is unaffected."""
    harness = round_harness(selected=HONEST)
    ca = federation.ca_cert
    if who == "no-client-certificate":
        credentials = grpc.ssl_channel_credentials(ca)
    elif who == "another-ca":
        foreign = pki.load_tls_material(federation.foreign_directory, "participant", "alice")
        credentials = grpc.ssl_channel_credentials(ca, foreign.private_key, foreign.cert_chain)
    elif who == "coordinator-certificate":  # serverAuth only: not a client certificate
        main = pki.load_tls_material(federation.directory, "coordinator", loopback.COORDINATOR_NAME)
        credentials = grpc.ssl_channel_credentials(ca, main.private_key, main.cert_chain)
    else:  # alice's certificate without alice's key
        alice = pki.load_tls_material(federation.directory, "participant", "alice")
        own = pki.load_tls_material(federation.directory, "participant", MALLORY)
        credentials = grpc.ssl_channel_credentials(ca, own.private_key, alice.cert_chain)
    code, _ = harness.ended_with(wire.Hello(), credentials=credentials)
    assert code is grpc.StatusCode.UNAVAILABLE
    harness.start_honest(HONEST)
    assert_exact(harness.outcome(), HONEST)


def test_silent_participant_misses_the_phase_deadline(round_harness):
    harness = round_harness(phase_timeout_s=3.0)
    harness.start_honest(HONEST)
    stream = harness.raw(MALLORY)
    try:
        Mallory(stream).play(until=Phase.SHARE_KEYS, tamper=lambda m: [])  # then says nothing
        code, details = stream.status()
    finally:
        stream.close()
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "missed the share-keys deadline" in details
    outcome = harness.outcome()
    assert_exact(outcome, HONEST)
    assert "missed the share-keys deadline" in outcome.dropped[MALLORY]


def test_round_starts_without_a_participant_that_never_joins(round_harness):
    harness = round_harness(join_timeout_s=3.0)  # long enough for a loaded machine
    harness.start_honest(HONEST)
    outcome = harness.outcome()
    assert outcome.joined == HONEST
    assert_exact(outcome, HONEST)
    assert "did not join" in outcome.dropped[MALLORY]


def test_quorum_grace_starts_the_round_without_waiting_for_the_join_deadline(round_harness):
    # The join deadline is far beyond how long outcome() waits: only the grace period, which
    # starts once the threshold (3 of 4) has joined, can let this round finish in time.
    harness = round_harness(join_timeout_s=600.0, quorum_grace_s=1.0)
    harness.start_honest(HONEST)
    outcome = harness.outcome(timeout_s=60.0)
    assert outcome.joined == HONEST
    assert_exact(outcome, HONEST)
    assert "did not join in time" in outcome.dropped[MALLORY]


def test_the_masked_input_deadline_grows_with_the_upload_at_the_minimum_bandwidth():
    """A participant on a slow link is not dropped for the size of its adapter: the masked-input
    phase waits its timeout plus the largest allowed upload's time at the minimum bandwidth."""
    big = ProtocolParams(25_000_000, 32, 3, SecurityMode.SEMI_HONEST)  # 100 MB of uint32
    config = RoundConfig(new_round_id(), big, (*HONEST, MALLORY), phase_timeout_s=60.0)
    upload = transport.max_participant_message_bytes(big, 4)
    assert upload > 100_000_000
    assert config.phase_deadline_s(Phase.MASKED_INPUT) == 60.0 + upload / 250_000.0  # 2 Mbit/s: ~460 s
    assert config.phase_deadline_s(Phase.SHARE_KEYS) == 60.0  # small messages: the timeout alone
    faster = RoundConfig(new_round_id(), big, (*HONEST, MALLORY), min_bandwidth_bytes_per_s=12_500_000.0)
    assert faster.phase_deadline_s(Phase.MASKED_INPUT) == faster.phase_timeout_s + upload / 12_500_000.0
    with pytest.raises(ValueError, match="min_bandwidth_bytes_per_s"):
        RoundConfig(new_round_id(), big, (*HONEST, MALLORY), min_bandwidth_bytes_per_s=0.0)


def test_quorum_grace_must_be_positive():
    with pytest.raises(ValueError, match="quorum_grace_s"):
        RoundConfig(new_round_id(), PARAMS, (*HONEST, MALLORY), quorum_grace_s=0.0)


def test_abort_below_threshold_reaches_participants_with_the_reason(round_harness):
    harness = round_harness(join_timeout_s=3.0)  # long enough for a loaded machine
    harness.start_honest(("alice", "bob"))
    outcome = harness.outcome()
    assert not outcome.completed and outcome.result is None
    assert outcome.abort_reason == "only 2 of 4 participants joined, threshold is 3"
    assert outcome.abort_kind is AttemptAbort.BELOW_THRESHOLD
    assert outcome.abort_phase is None  # it never started: the join, no protocol phase
    assert outcome.drop_kinds == {"carol": DropKind.NOT_JOINED, MALLORY: DropKind.NOT_JOINED}
    for o in harness.honest_outcomes().values():
        assert not o.completed
        assert "only 2 of 4 participants joined, threshold is 3" in o.reason


def test_message_before_hello_is_refused_and_the_participant_may_rejoin(round_harness):
    harness = round_harness()
    code, details = harness.ended_with(AdvertiseKeys(0, b"r", bytes(32), bytes(32)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "the first message must be hello" in details
    harness.start_honest(ALL)  # mallory, refused before the round started, joins again
    assert_exact(harness.outcome(), ALL)


def test_share_keys_from_a_dropped_participant_are_not_routed(round_harness):
    """Mallory is refused in share-keys after its (valid) advertisement: it is in U1 but not in U2,
    so nobody receives shares from it and nobody waits for them."""
    harness = round_harness()
    harness.start_honest(HONEST)
    stream = harness.raw(MALLORY)
    try:
        Mallory(stream).play(
            until=Phase.SHARE_KEYS, tamper=lambda m: [ShareKeys(0, m.session_id, (), m.self_mask_commitment)]
        )
        code, _ = stream.status()
    finally:
        stream.close()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert_exact(harness.outcome(), HONEST)


def test_health_service_reports_serving(coordinator, federation):
    channel = grpc.secure_channel(f"127.0.0.1:{coordinator.server.port}", federation.credentials("alice"))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", transport.SERVICE):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert error.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()


def test_message_limits_follow_the_dimension():
    small = MessageLimits.for_round(PARAMS, 4)
    big = MessageLimits.for_round(dataclasses.replace(PARAMS, dimension=1_000_000), 4)
    wide = MessageLimits.for_round(dataclasses.replace(PARAMS, modulus_bits=64), 4)
    assert big.receive_bytes - small.receive_bytes == 4 * (1_000_000 - DIM)
    assert wide.receive_bytes - small.receive_bytes == 4 * DIM  # 8 bytes a value above b = 32
    # An honest masked input with its envelope fits with room to spare.
    envelope = pb.ClientEnvelope(masked_input=pb.MaskedInput(session_id=bytes(32), masked=bytes(4 * DIM)))
    assert envelope.ByteSize() + 5 < small.receive_bytes
    config = RoundConfig(new_round_id(), dataclasses.replace(PARAMS, dimension=2 * DIM), ALL)
    assert not small.fits(config) and big.fits(config)


def _other_server_round(security, names, params, connection_for, **settings):
    """A round on a server of its own (another security setting)."""
    server = CoordinatorServer(
        security, MessageLimits.for_round(params, len(names)), settings=ServerSettings(**settings)
    )
    with BackgroundCoordinator(server) as background:
        future = background.submit_round(RoundConfig(new_round_id(), params, names, join_timeout_s=20))
        with ThreadPoolExecutor(len(names)) as pool:
            futures = [
                pool.submit(
                    take_part,
                    connection_for(name, background.server.port),
                    Identity(name),
                    lambda s, n=name: input_of(n, params.dimension),
                )
                for name in names
            ]
            outcomes = [f.result(60) for f in futures]
        return future.result(60), outcomes, background.server


def test_one_way_tls_with_enrolment_tokens(federation):
    tokens = {name: pki.issue_token(federation.directory, name) for name in HONEST}
    ca = federation.ca_cert

    def connection_for(name, port):
        metadata = ((transport.METADATA_PARTICIPANT, name), (transport.METADATA_TOKEN, tokens[name]))
        return Connection(f"127.0.0.1:{port}", one_way_tls_credentials(ca), metadata, connect_attempts=1)

    security = token_security(federation.directory, loopback.COORDINATOR_NAME)
    outcome, outcomes, _ = _other_server_round(security, HONEST, PARAMS, connection_for)
    assert_exact(outcome, HONEST)
    assert all(o.completed for o in outcomes)

    # A wrong token, and a token presented under another name, are refused.
    server = CoordinatorServer(security, MessageLimits.for_round(PARAMS, 3))
    with BackgroundCoordinator(server) as background:
        for name, token in (("alice", "not-the-token"), ("bob", tokens["alice"])):
            metadata = ((transport.METADATA_PARTICIPANT, name), (transport.METADATA_TOKEN, token))
            connection = Connection(f"127.0.0.1:{background.server.port}", one_way_tls_credentials(ca), metadata)
            refused = take_part(connection, Identity(name), lambda s, name=name: input_of(name))
            assert refused.status == "UNAUTHENTICATED"
            assert f"enrolment token of '{name}' is wrong or expired" in refused.reason
            assert refused.attempts == 1  # not worth retrying


def test_insecure_round_trusts_the_claimed_name(federation):
    def connection_for(name, port):
        return Connection(f"127.0.0.1:{port}", None, ((transport.METADATA_PARTICIPANT, name),))

    outcome, outcomes, _ = _other_server_round(insecure_security(), HONEST, PARAMS, connection_for)
    assert_exact(outcome, HONEST)


def test_plaintext_health_port_for_probes(federation):
    security = insecure_security()
    server = CoordinatorServer(security, MessageLimits.for_round(PARAMS, 3), settings=ServerSettings(health_port=0))
    with BackgroundCoordinator(server) as background:
        health_port = background.server.health_port
        assert health_port and health_port != background.server.port
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_the_coordinator_rehearses_a_round_before_it_listens(monkeypatch):
    # Its first real round must not set up OpenSSL and warm the protocol's code on the clock.
    from fedmask.coordinator import round_server

    listening: list[bool] = []
    server = CoordinatorServer(insecure_security(), MessageLimits.for_round(PARAMS, 3))
    monkeypatch.setattr(round_server, "rehearse", lambda runner: listening.append(server.port is not None))
    with BackgroundCoordinator(server) as background:
        assert background.server.port
    assert listening == [False]


def _malicious_round(federation, identity_key_of=None):
    """A malicious-mode round of HONEST and MALLORY with the enrolled identity keys; each signs
    with ``identity_key_of(name)`` (default: its own). Returns (coordinator, participants) outcomes."""
    roster = pki.load_roster(federation.directory, federation.ca_cert)
    params = ProtocolParams(DIM, 32, 3, SecurityMode.MALICIOUS)  # t = 3 > 4/2 holders
    names = (*HONEST, MALLORY)
    server = CoordinatorServer(
        mtls_security(federation.directory, loopback.COORDINATOR_NAME), MessageLimits.for_round(params, len(names))
    )
    signing_key = identity_key_of or (lambda name: pki.load_identity_key(federation.directory, name))
    with BackgroundCoordinator(server) as background:
        future = background.submit_round(
            RoundConfig(new_round_id(), params, names, join_timeout_s=20, identity_keys=dict(roster.identity_keys))
        )
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {
                name: pool.submit(
                    take_part,
                    Connection(f"127.0.0.1:{background.server.port}", federation.credentials(name)),
                    Identity(name, signing_key(name), dict(roster.identity_keys)),
                    lambda s, n=name: input_of(n),
                )
                for name in names
            }
            outcomes = {name: f.result(60) for name, f in futures.items()}
        return future.result(60), outcomes


def test_malicious_mode_round_with_enrolled_identity_keys(federation):
    outcome, participants = _malicious_round(federation)
    assert all(o.completed for o in participants.values()), [o.reason for o in participants.values()]
    assert_exact(outcome, (*HONEST, MALLORY))
    assert "consistency-check" in outcome.phase_s


def test_keys_signed_by_another_identity_are_refused_and_the_round_goes_on(federation):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    impostor = Ed25519PrivateKey.generate()  # not the identity key the roster enrols for MALLORY

    def identity_key_of(name):
        return impostor if name == MALLORY else pki.load_identity_key(federation.directory, name)

    outcome, participants = _malicious_round(federation, identity_key_of)
    mallory = participants[MALLORY]
    assert mallory.status == "INVALID_ARGUMENT" and "not signed by its enrolled identity" in mallory.reason
    assert "not signed by its enrolled identity" in outcome.dropped[MALLORY]
    assert all(participants[name].completed for name in HONEST)
    assert_exact(outcome, HONEST)


def _forge_survivor_list_signatures(monkeypatch, federation, forgers) -> None:
    """The ``forgers`` sign the survivor list with 64 zero bytes (everything else they sign
    honestly): the participants' signer is libsodium's, its secret key ends with the public one."""
    from fedmask.secagg import keys

    roster = pki.load_roster(federation.directory, federation.ca_cert)
    forged = {roster.identity_keys[name] for name in forgers}
    honest_sign = keys.Signer.sign

    def sign(self, payload):
        if payload.startswith(keys.LABEL_CONSISTENCY) and bytes(self._secret[32:]) in forged:
            return bytes(64)
        return honest_sign(self, payload)

    monkeypatch.setattr(keys.Signer, "sign", sign)


def test_a_bad_survivor_list_signature_is_passed_on_and_does_not_stop_the_round(federation, monkeypatch):
    # The coordinator passes the signatures on unchecked; the participants count t = 3 valid ones.
    _forge_survivor_list_signatures(monkeypatch, federation, {MALLORY})
    outcome, participants = _malicious_round(federation)
    assert all(o.completed for o in participants.values()), [o.reason for o in participants.values()]
    assert_exact(outcome, (*HONEST, MALLORY))
    assert outcome.culprits == {}


def test_bad_survivor_list_signatures_that_stop_the_unmask_get_their_signers_named(federation, monkeypatch):
    # Two of four bad leave 2 valid < t = 3: nobody reveals anything, and the coordinator names both.
    _forge_survivor_list_signatures(monkeypatch, federation, {MALLORY, "alice"})
    outcome, participants = _malicious_round(federation)
    assert not outcome.completed and outcome.result is None
    assert set(outcome.culprits) == {MALLORY, "alice"}
    assert "signed the survivor list with a signature that does not verify" in outcome.culprits[MALLORY]
    assert all("only 2 valid signatures" in o.reason for o in participants.values()), [
        o.reason for o in participants.values()
    ]


def test_bytes_that_are_not_an_envelope_are_refused_clearly(round_harness, federation):
    harness = round_harness()
    channel = federation.channel(federation.credentials(MALLORY), harness.port)
    try:
        aggregate = channel.stream_stream(f"/{transport.SERVICE}/Aggregate")  # raw bytes both ways
        call = aggregate(iter([b"\xff\xff\xff not a protobuf"]), timeout=30)
        with pytest.raises(grpc.RpcError) as error:
            list(call)
    finally:
        channel.close()
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf decoding failed" in error.value.details()
    harness.start_honest(ALL)  # refused before the round started: mallory may join again
    assert_exact(harness.outcome(), ALL)


def test_service_name_matches_the_schema():
    service = pb.DESCRIPTOR.services_by_name["SecureAggregation"]
    assert service.full_name == transport.SERVICE
    assert [m.name for m in service.methods] == ["Aggregate"]


# --- accountability over gRPC ---------------------------------------------------------------------


def _corrupt_share_of(owner_id: int):
    def tamper(response: UnmaskResponse) -> list:
        shares = tuple(
            (o, shamir.encode_share((shamir.decode_share(s) + 1) % shamir.FIELD_PRIME) if o == owner_id else s)
            for o, s in response.self_mask_shares
        )
        return [dataclasses.replace(response, self_mask_shares=shares)]

    return tamper


def test_a_corrupted_share_is_caught_and_the_sum_stays_exact(round_harness):
    """The issue's attack: an enrolled participant adds 1 to its share of another survivor's
    self-mask seed. The coordinator completes with the exact sum and names the liar."""
    harness = round_harness()
    harness.start_honest(HONEST)
    alice_id = harness.config.ids["alice"]
    stream = harness.raw()
    Mallory(stream).play(until=Phase.UNMASK, tamper=_corrupt_share_of(alice_id), then_continue=True)
    stream.close()
    outcome = harness.outcome()
    assert_exact(outcome, (*HONEST, MALLORY))
    assert outcome.culprits == {
        MALLORY: f"revealed a share of participant {alice_id}'s self-mask seed it was never dealt"
    }
    assert all(o.completed for o in harness.honest_outcomes().values())


def _flip_envelopes(message: ShareKeys) -> list:
    envelopes = []
    for envelope in message.shares:
        ciphertext = bytearray(envelope.ciphertext)
        ciphertext[-1] ^= 0x80
        envelopes.append(dataclasses.replace(envelope, ciphertext=bytes(ciphertext)))
    return [dataclasses.replace(message, shares=tuple(envelopes))]


def test_tampered_envelopes_get_their_sender_convicted_and_reveal_nothing(round_harness):
    """One participant flips a byte in every share envelope it sends. Before, every honest
    recipient aborted and the round failed with nobody to blame; now they complain, mallory opens
    the envelopes in question, and the round aborts naming mallory alone."""
    harness = round_harness()
    harness.start_honest(HONEST)
    stream = harness.raw()
    last = Mallory(stream).play(until=Phase.SHARE_KEYS, tamper=_flip_envelopes, then_continue=True)
    stream.close()
    assert isinstance(last, Abort)
    outcome = harness.outcome()
    assert not outcome.completed and outcome.abort_phase is Phase.COMPLAINTS
    assert set(outcome.culprits) == {MALLORY} and "does not decrypt" in outcome.culprits[MALLORY]
    assert outcome.result is None
    honest = harness.honest_outcomes()
    assert all(not o.completed and "complaints about share envelopes" in o.reason for o in honest.values())


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _join_then_die(harness, name: str = MALLORY) -> None:
    """``name`` joins (the server has its Hello), then its process dies."""
    stream = harness.raw(name)
    stream.send(wire.Hello())
    _wait_for(lambda: harness.coordinator.server.round_roster().get(name) == "joined")
    stream.close()
    _wait_for(lambda: harness.coordinator.server.round_roster().get(name) == "gone")


def test_a_participant_gone_after_joining_is_not_waited_for(round_harness):
    """The issue's stall: a participant killed just after joining kept the round waiting the
    whole join timeout (900 s by default). Its stream's end is news: the round starts without it."""
    harness = round_harness(join_timeout_s=600.0)  # far beyond how long outcome() waits
    _join_then_die(harness)
    harness.start_honest(HONEST)
    outcome = harness.outcome(timeout_s=60.0)
    assert outcome.joined == HONEST
    assert_exact(outcome, HONEST)
    assert "left before the start" in outcome.dropped[MALLORY]


@pytest.mark.parametrize("quorum_grace_s", [None, 1.0])
def test_too_few_left_after_deaths_after_joining_is_no_stall(round_harness, quorum_grace_s):
    """The issue's second stall: two deaths after joining in one round held it to the join
    deadline (900 s by default). Two of four gone and t = 3: only a restarted participant
    rejoining could let it start. It waits the quorum grace for that (none: not at all), then
    aborts below the threshold."""
    harness = round_harness(join_timeout_s=600.0, quorum_grace_s=quorum_grace_s)
    _join_then_die(harness, MALLORY)
    _join_then_die(harness, "carol")
    harness.start_honest(("alice", "bob"))
    outcome = harness.outcome(timeout_s=60.0)
    assert not outcome.completed and outcome.abort_kind is AttemptAbort.BELOW_THRESHOLD
    assert outcome.abort_reason == "only 2 of 4 participants joined, threshold is 3"
    assert all("left before the start" in outcome.dropped[name] for name in (MALLORY, "carol"))
    assert outcome.drop_kinds == {MALLORY: DropKind.LEFT, "carol": DropKind.LEFT}
    assert outcome.join_s < 30.0  # not the join deadline
    if quorum_grace_s is not None:
        assert outcome.join_s >= quorum_grace_s  # the rejoin got its chance


def test_one_of_two_gone_rejoining_within_the_grace_lets_the_round_start(round_harness):
    harness = round_harness(join_timeout_s=600.0, quorum_grace_s=60.0)
    _join_then_die(harness, MALLORY)
    _join_then_die(harness, "carol")
    harness.start_honest(("alice", "bob"))
    roster = harness.coordinator.server.round_roster
    _wait_for(lambda: roster().get("alice") == roster().get("bob") == "joined")  # stuck below t = 3
    harness.start_honest(("carol",))  # carol's restarted process, with fresh keys
    outcome = harness.outcome(timeout_s=60.0)
    assert_exact(outcome, HONEST)


def test_a_participant_that_left_may_rejoin_before_the_start(round_harness):
    harness = round_harness(join_timeout_s=600.0)
    _join_then_die(harness)
    # mallory's restarted process joins again with fresh keys. It goes first: were the others in
    # before it, the round would rightly start without it (threshold in, everyone else gone).
    harness.start_honest((MALLORY,))
    _wait_for(lambda: harness.coordinator.server.round_roster().get(MALLORY) == "joined")
    harness.start_honest(HONEST)
    assert_exact(harness.outcome(timeout_s=60.0), ALL)


# --- admission and the first messages: what the stream refuses before the protocol sees it ------


def test_a_stream_of_another_protocol_version_is_refused_and_may_rejoin(round_harness):
    harness = round_harness()
    code, details = harness.ended_with(wire.Hello(protocol_version=wire.PROTOCOL_VERSION + 1))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert f"protocol version {wire.PROTOCOL_VERSION + 1} is not supported" in details
    harness.start_honest(ALL)  # mallory, refused before the round started, joins again
    assert_exact(harness.outcome(), ALL)


def test_a_protocol_message_between_hello_and_the_round_start_is_refused(round_harness):
    harness = round_harness()
    code, details = harness.ended_with(wire.Hello(), AdvertiseKeys(0, b"r", bytes(32), bytes(32)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "advertise_keys before the round started" in details
    # It had joined, then its stream ended: the round does not wait for it.
    harness.start_honest(HONEST)
    outcome = harness.outcome()
    assert_exact(outcome, HONEST)
    assert "advertise_keys before the round started" in outcome.dropped[MALLORY]


def test_a_participant_that_comes_after_the_start_is_refused_and_the_round_goes_on(round_harness):
    """Its keys were not in the roster the others shared against: it must join the next round."""
    harness = round_harness(join_timeout_s=3.0)  # long enough for a loaded machine
    reached, release = threading.Event(), threading.Event()

    def hold_before_the_masked_input(phase: Phase) -> None:
        if phase is Phase.MASKED_INPUT:
            reached.set()
            release.wait(30)

    with ThreadPoolExecutor(len(HONEST)) as pool:
        jobs = [
            pool.submit(
                take_part,
                harness.connection(name),
                Identity(name),
                lambda start, name=name: input_of(name),
                before_send=hold_before_the_masked_input,
            )
            for name in HONEST
        ]
        assert reached.wait(30)  # the round started without mallory and is in its masked-input phase
        try:
            code, details = harness.ended_with(wire.Hello())
        finally:
            release.set()
        assert all(job.result(60).completed for job in jobs)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "the round has started without 'mallory'" in details
    assert_exact(harness.outcome(), HONEST)


def test_a_round_larger_than_the_server_s_message_limits_is_refused(coordinator):
    bigger = ProtocolParams(DIM * 100, 32, 3, SecurityMode.SEMI_HONEST)
    future = coordinator.submit_round(RoundConfig(new_round_id(), bigger, (*HONEST, MALLORY), join_timeout_s=5.0))
    with pytest.raises(ValueError, match="larger message limits than this server was started with"):
        future.result(30)


def test_a_round_config_with_a_malformed_name_or_without_identity_keys_in_malicious_mode_is_refused():
    with pytest.raises(ValueError, match="malformed participant name 'Alice Smith'"):
        RoundConfig(new_round_id(), PARAMS, ("Alice Smith", "bob", "carol", MALLORY))
    malicious = dataclasses.replace(PARAMS, mode=SecurityMode.MALICIOUS)
    with pytest.raises(ValueError, match="no enrolled identity key for carol, mallory"):
        RoundConfig(new_round_id(), malicious, (*HONEST, MALLORY), identity_keys={"alice": bytes(32), "bob": bytes(32)})

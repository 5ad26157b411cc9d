"""The participant's gRPC client: connection backoff with jitter, retry until a round opens,
aborts that carry the coordinator's reason, refusal of a lying round start, and the join CLI."""

from __future__ import annotations

import dataclasses
import random
import re
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedmask import pki
from fedmask.cli.join import join
from fedmask.cli.node import node
from fedmask.coordinator.round_server import (
    BackgroundCoordinator,
    CoordinatorServer,
    MessageLimits,
    RoundConfig,
    ServerSettings,
    new_round_id,
)
from fedmask.coordinator.transport import mtls_security
from fedmask.participant.grpc_client import Connection, Identity, mtls_credentials, take_part
from fedmask.participant.policy import ParticipantPolicy
from fedmask.participant.setup import load_input, read_input
from fedmask.proto import wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.proto.secagg.v1 import secagg_pb2_grpc as pb_grpc
from fedmask.secagg.errors import Phase
from fedmask.secagg.messages import Abort, AdvertiseKeys, ConsistencyRequest, KeyRoster
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(120)
NAMES = ("alice", "bob", "carol")
PARAMS = ProtocolParams(500, 32, 3, SecurityMode.SEMI_HONEST)


def input_of(name: str) -> np.ndarray:
    return random_input(SeededRandom.from_int(len(name) * 7919 + ord(name[0])), PARAMS.dimension, 32)


def provider(name: str):
    """The ``input_for_round`` callback of participant ``name``."""
    return lambda start: input_of(name)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    return loopback.make_federation(tmp_path_factory.mktemp("fed") / "federation", [*NAMES, "olivia"])


@pytest.fixture
def coordinator(federation):
    server = CoordinatorServer(
        mtls_security(federation, loopback.COORDINATOR_NAME),
        MessageLimits.for_round(PARAMS, len(NAMES)),
        settings=ServerSettings(join_wait_s=0.2),
    )
    with BackgroundCoordinator(server) as background:
        yield background


def connection(federation: Path, name: str, port: int, **overrides) -> Connection:
    credentials = mtls_credentials(pki.load_tls_material(federation, "participant", name))
    return Connection(f"127.0.0.1:{port}", credentials, **overrides)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backoff_doubles_up_to_the_cap_with_jitter():
    c = Connection("x:1", None, initial_backoff_s=0.5, max_backoff_s=4.0)
    rng = random.Random(7)
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [c.backoff_s(attempt, rng) for attempt in range(1, 7)]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    # Jitter: two participants restarted together do not retry in lockstep.
    other = [c.backoff_s(attempt, random.Random(8)) for attempt in range(1, 7)]
    assert other != delays


def test_unreachable_coordinator_is_retried_then_given_up_with_a_reason(federation):
    slept: list[float] = []
    target = connection(federation, "alice", free_port(), connect_attempts=4, initial_backoff_s=0.1)
    outcome = take_part(target, Identity("alice"), provider("alice"), sleep=slept.append, jitter=random.Random(1))
    assert not outcome.completed
    assert outcome.attempts == 4 and len(slept) == 3
    assert [0.05 <= slept[0] <= 0.1, 0.1 <= slept[1] <= 0.2, 0.2 <= slept[2] <= 0.4] == [True] * 3
    assert outcome.status == "UNAVAILABLE"
    assert outcome.reason.startswith(f"could not join a round at {target.target}: UNAVAILABLE")
    assert "TLS certificate" not in outcome.reason  # nothing listens: no certificate was refused


def test_a_participant_rehearses_once_per_process_before_it_first_connects(federation, monkeypatch):
    # The first round must not set up OpenSSL and warm the protocol's code while the others wait.
    from fedmask.participant import grpc_client

    calls: list[str] = []
    real_open = grpc_client._open_channel
    monkeypatch.setattr(grpc_client, "rehearse", lambda runner: calls.append("rehearse"))
    monkeypatch.setattr(grpc_client, "_open_channel", lambda c: calls.append("connect") or real_open(c))
    grpc_client.rehearse_once.cache_clear()
    target = connection(federation, "alice", free_port(), connect_attempts=1)
    for _ in range(2):
        assert not take_part(target, Identity("alice"), provider("alice")).completed
    assert calls == ["rehearse", "connect", "connect"]
    grpc_client.rehearse_once.cache_clear()


def test_a_participant_stops_retrying_once_its_round_is_no_longer_wanted(federation):
    slept: list[float] = []
    asked: list[int] = []
    target = connection(federation, "alice", free_port(), connect_attempts=4, initial_backoff_s=0.1)

    def still_wanted() -> bool:
        asked.append(len(slept))
        return len(asked) < 2  # the second look finds the coordinator has moved on

    outcome = take_part(
        target,
        Identity("alice"),
        provider("alice"),
        sleep=slept.append,
        jitter=random.Random(1),
        still_wanted=still_wanted,
    )
    assert not outcome.completed
    assert outcome.attempts == 2 and asked == [1, 2] and len(slept) == 2  # asked after each wait, before retrying
    assert outcome.status == "UNAVAILABLE"
    assert outcome.reason == "the round this participant was joining is no longer open (the coordinator moved on)"


def test_participant_retries_until_a_round_opens(federation, coordinator):
    """The coordinator is up but opens its round only after the participants' first attempts
    were told UNAVAILABLE ("no round is open")."""
    config = RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=30)
    lock = threading.Lock()
    round_future: list = []

    def sleep(seconds: float) -> None:
        with lock:  # the first retry of whoever gets here first opens the round
            if not round_future:
                round_future.append(coordinator.submit_round(config))
        time.sleep(seconds)

    port = coordinator.server.port
    with futures.ThreadPoolExecutor(len(NAMES)) as pool:
        jobs = {
            name: pool.submit(
                take_part,
                connection(federation, name, port, initial_backoff_s=0.05),
                Identity(name),
                provider(name),
                sleep=sleep,
            )  # fmt: skip
            for name in NAMES
        }
        outcomes = {name: job.result(60) for name, job in jobs.items()}
    outcome = round_future[0].result(60)
    assert outcome.completed
    expected = sum((input_of(n) for n in NAMES), np.zeros(PARAMS.dimension, np.uint32))
    np.testing.assert_array_equal(outcome.result, expected)
    assert all(o.completed for o in outcomes.values())
    assert max(o.attempts for o in outcomes.values()) >= 2


def test_refusal_that_retrying_cannot_fix_is_not_retried(federation, coordinator):
    future = coordinator.submit_round(RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=1.0))
    slept: list[float] = []
    outcome = take_part(
        connection(federation, "olivia", coordinator.server.port),
        Identity("olivia"),
        provider("olivia"),
        sleep=slept.append,
    )
    assert (outcome.status, outcome.attempts, slept) == ("PERMISSION_DENIED", 1, [])
    assert "participant 'olivia' is not selected for this round" in outcome.reason
    assert not future.result(30).completed  # nobody selected joined


class _DroppedOut(Exception):
    pass


def test_coordinator_abort_reaches_the_participants_with_its_reason(federation, coordinator):
    """carol disconnects just before sending her shares; with t = 3 the coordinator aborts the
    share-keys phase and alice and bob end with its reason."""
    future = coordinator.submit_round(RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=30))
    port = coordinator.server.port

    def carol_drops(phase: Phase) -> None:
        if phase is Phase.SHARE_KEYS:
            raise _DroppedOut

    with futures.ThreadPoolExecutor(len(NAMES)) as pool:
        jobs = {
            name: pool.submit(
                take_part,
                connection(federation, name, port),
                Identity(name),
                provider(name),
                before_send=carol_drops if name == "carol" else None,
            )  # fmt: skip
            for name in NAMES
        }
        with pytest.raises(_DroppedOut):
            jobs["carol"].result(60)
        outcomes = {name: jobs[name].result(60) for name in ("alice", "bob")}
    outcome = future.result(30)
    reason = "only 2 participants responded, threshold is 3"
    assert not outcome.completed and outcome.abort_phase is Phase.SHARE_KEYS and outcome.abort_reason == reason
    for o in outcomes.values():
        assert not o.completed
        assert o.abort_phase is Phase.SHARE_KEYS
        assert o.reason == f"the coordinator aborted the round: {reason}"


class _ScriptedCoordinator(pb_grpc.SecureAggregationServicer):
    """Answers a participant's hello with ``script`` (server messages, sent at once) and records
    everything the participant sends."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.received: list[pb.ClientEnvelope] = []

    def Aggregate(self, request_iterator, context):  # noqa: N802
        self.received.append(next(request_iterator))  # hello
        for message in self.script:
            yield wire.server_to_proto(message)
        for envelope in request_iterator:
            self.received.append(envelope)


def _against_script(script: list[object], identity: Identity) -> tuple[object, list[str]]:
    """``identity``'s outcome against a coordinator that sends ``script``, and the kinds of the
    messages it sent."""
    servicer = _ScriptedCoordinator(script)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_SecureAggregationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        outcome = take_part(
            Connection(f"127.0.0.1:{port}", None, connect_attempts=1), identity, provider(identity.name)
        )
    finally:
        server.stop(None)
    kinds = [e.WhichOneof("body") for e in servicer.received]
    if kinds[-1] == "abort":
        assert servicer.received[-1].abort.reason == outcome.reason  # the abort says why
    return outcome, kinds


ALICE_START = wire.RoundStart(b"round", PARAMS, 1, NAMES, 10.0)


def test_participant_refuses_a_round_start_with_another_participants_id():
    start = wire.RoundStart(b"round", PARAMS, 2, NAMES, 10.0)  # id 2 is bob's
    outcome, kinds = _against_script([start], Identity("alice"))
    assert not outcome.completed
    assert outcome.reason == "the coordinator gave this participant (alice) the id of 'bob'"
    assert kinds == ["hello", "abort"]  # no key advertisement went out


def test_a_second_round_start_in_one_stream_is_refused():
    """Two starts in one stream would be two rounds on one input: keys and masked input twice."""
    again = wire.RoundStart(b"round-2", PARAMS, 1, (*NAMES, "olivia"), 10.0)
    outcome, kinds = _against_script([ALICE_START, again], Identity("alice"))
    assert not outcome.completed and outcome.reason == "a second round start in one stream"
    assert kinds == ["hello", "advertise_keys", "abort"]  # one advertisement, for the first start only


def test_a_round_result_before_the_round_completed_is_refused():
    """A coordinator cannot make a participant report a round done that it never finished."""
    early = wire.RoundResult(bytes(32), (1, 2, 3))
    outcome, kinds = _against_script([ALICE_START, early], Identity("alice"))
    assert not outcome.completed and outcome.reason.startswith("round result while ")
    assert kinds == ["hello", "advertise_keys", "abort"]


def test_a_protocol_message_before_the_round_start_is_refused():
    roster_request = ConsistencyRequest(bytes(32), (1, 2, 3))
    outcome, kinds = _against_script([roster_request, ALICE_START], Identity("alice"))
    # The wire refuses it before the stream's state machine sees it.
    assert not outcome.completed
    assert outcome.reason == "malformed message from the coordinator: consistency_request before the round started"
    assert kinds == ["hello", "abort"]


def test_a_coordinator_abort_before_the_round_start_ends_the_stream_with_its_reason():
    outcome, kinds = _against_script([Abort(Phase.ADVERTISE_KEYS, "maintenance")], Identity("alice"))
    assert not outcome.completed and outcome.reason == "the coordinator aborted the round: maintenance"
    assert kinds == ["hello"]  # nothing to answer an abort with


def test_a_roster_the_protocol_refuses_ends_the_stream_and_says_why():
    """The secure-aggregation client's own refusal (here: a key roster without this participant's
    keys) goes back to the coordinator as an abort, and the participant stops there."""
    keys = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(2)]
    roster = KeyRoster(b"round", (AdvertiseKeys(2, b"round", keys[0], keys[1]),))
    outcome, kinds = _against_script([ALICE_START, roster], Identity("alice"))
    assert not outcome.completed and outcome.reason == "the roster does not carry this participant's own keys"
    assert outcome.abort_phase is Phase.ADVERTISE_KEYS
    assert kinds == ["hello", "advertise_keys", "abort"]


def test_malicious_mode_needs_the_participant_s_identity_key_and_an_enrolled_roster():
    malicious = wire.RoundStart(b"round", dataclasses.replace(PARAMS, mode=SecurityMode.MALICIOUS), 1, NAMES, 10.0)
    outcome, kinds = _against_script([malicious], Identity("alice"))
    assert not outcome.completed and outcome.reason == "malicious-server mode needs this participant's identity key"
    assert kinds == ["hello", "abort"]
    # carol is not in the CA-signed roster this participant holds (no policy pins the members here).
    key = Ed25519PrivateKey.generate()
    enrolled = {name: Ed25519PrivateKey.generate().public_key().public_bytes_raw() for name in ("alice", "bob")}
    outcome, kinds = _against_script([malicious], Identity("alice", key, enrolled))
    assert not outcome.completed and outcome.reason == "participants not in the CA-signed roster: carol"
    assert kinds == ["hello", "abort"]


def test_a_round_result_for_another_session_is_refused(federation, coordinator, monkeypatch):
    """The coordinator completes the round but names another session in its result: no
    participant reports the round as done."""
    honest = wire.server_to_proto

    def lying(message):  # the coordinator's side only: participants read with server_from_proto
        if isinstance(message, wire.RoundResult):
            message = wire.RoundResult(bytes(b ^ 1 for b in message.session_id), message.survivors)
        return honest(message)

    monkeypatch.setattr(wire, "server_to_proto", lying)
    future = coordinator.submit_round(RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=30))
    port = coordinator.server.port
    with futures.ThreadPoolExecutor(len(NAMES)) as pool:
        jobs = [
            pool.submit(take_part, connection(federation, name, port), Identity(name), provider(name)) for name in NAMES
        ]
        outcomes = [job.result(60) for job in jobs]
    assert future.result(30).completed  # the coordinator holds the sum; the participants say no
    assert all(not o.completed and o.reason == "round result for another session" for o in outcomes)


def test_load_input_checks_shape_type_and_range(tmp_path):
    start = wire.RoundStart(b"r", PARAMS, 1, NAMES, 1.0)
    good = tmp_path / "good.npy"
    np.save(good, np.arange(PARAMS.dimension, dtype=np.int64))
    assert load_input(good, start).dtype == np.uint32
    for name, values, words in [
        ("short", np.zeros(PARAMS.dimension - 1, np.uint32), "shape"),
        ("float", np.zeros(PARAMS.dimension, np.float32), "float32"),
        ("negative", np.full(PARAMS.dimension, -1, np.int64), "outside [0, 2^32)"),
        ("wide", np.full(PARAMS.dimension, 1 << 32, np.int64), "outside [0, 2^32)"),
    ]:
        path = tmp_path / f"{name}.npy"
        np.save(path, values)
        with pytest.raises(ValueError, match=re.escape(words)):
            load_input(path, start)


def test_read_input_refuses_what_no_round_can_use(tmp_path):
    for name, write, words in [
        ("text.npy", lambda p: p.write_text("1,2,3\n"), "is not a .npy file"),
        ("archive.npy", lambda p: np.savez(p.open("wb"), a=np.zeros(3)), "is not a .npy file"),
        ("matrix.npy", lambda p: np.save(p, np.zeros((2, 3), np.uint32)), "shape (2, 3)"),
        ("float.npy", lambda p: np.save(p, np.zeros(3, np.float64)), "float64"),
    ]:
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match=re.escape(words)):
            read_input(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_input(tmp_path / "missing.npy")


def test_join_cli_reads_its_input_before_it_dials(tmp_path):
    """A bad --input fails this participant alone, before it joins (and aborts) anyone's round."""
    bad = tmp_path / "garbage.npy"
    bad.write_text("not numbers")
    result = CliRunner().invoke(
        join,
        ["--federation", str(tmp_path / "none"), "--name", "alice", "--coordinator", "127.0.0.1:1",
         "--input", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for --input" in result.output and "is not a .npy file" in result.output
    assert "federation directory" not in result.output  # nothing else was looked at first


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("localhost:99999", "port 99999 is outside 1-65535"),  # gRPC would dial port 34463
        ("localhost", "is not HOST:PORT"),
        ("http://localhost:7443", "without a scheme"),
    ],
)
def test_join_and_node_refuse_a_coordinator_that_is_not_host_port(tmp_path, target, words):
    node_extra = ["--data", str(tmp_path / "d.jsonl"), "--state", str(tmp_path / "s")]
    for command, extra in ((join, ["--synthetic-seed", "1"]), (node, node_extra)):
        result = CliRunner().invoke(
            command, ["--federation", str(tmp_path), "--name", "alice", "--coordinator", target, *extra]
        )
        assert result.exit_code == 2, result.output
        assert words in result.output


def test_join_cli_insecure_warns_and_exits_3_when_nobody_answers(tmp_path):
    """Without a federation directory there is no roster to pin: the policy is given."""
    policy = tmp_path / "policy.toml"
    ParticipantPolicy(security_mode=SecurityMode.SEMI_HONEST, min_participants=2, min_organisations=1).save(policy)
    result = CliRunner().invoke(
        join,
        ["--federation", str(tmp_path), "--name", "alice", "--coordinator", f"127.0.0.1:{free_port()}",
         "--synthetic-seed", "1", "--insecure", "--connect-attempts", "1", "--policy", str(policy)],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert pki.insecure_warning("participant") in result.stderr
    assert "could not join a round" in result.output


def test_join_cli_without_a_roster_or_policy_says_what_to_do(tmp_path):
    result = CliRunner().invoke(
        join,
        ["--federation", str(tmp_path), "--name", "alice", "--coordinator", "127.0.0.1:1", "--synthetic-seed", "1",
         "--insecure"],
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no CA-signed roster to pin" in result.output


def test_join_cli_needs_exactly_one_input(tmp_path):
    result = CliRunner().invoke(join, ["--federation", str(tmp_path), "--name", "alice", "--coordinator", "x:1"])
    assert result.exit_code == 2
    assert "exactly one of --input FILE.npy and --synthetic-seed N" in result.output


def test_participants_take_part_in_consecutive_rounds(federation, coordinator):
    """As ``join --rounds 2``: each participant reconnects for the next round, possibly before the
    coordinator has opened it (it then waits, or is told UNAVAILABLE and retries)."""
    port = coordinator.server.port

    def two_rounds(name: str) -> list:
        target = connection(federation, name, port, initial_backoff_s=0.05)
        return [take_part(target, Identity(name), provider(name)) for _ in range(2)]

    with futures.ThreadPoolExecutor(len(NAMES)) as pool:
        jobs = [pool.submit(two_rounds, name) for name in NAMES]
        first = coordinator.run_round(RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=30))
        second = coordinator.run_round(RoundConfig(new_round_id(), PARAMS, NAMES, join_timeout_s=30))
        outcomes = [job.result(60) for job in jobs]
    expected = sum((input_of(n) for n in NAMES), np.zeros(PARAMS.dimension, np.uint32))
    for outcome in (first, second):
        assert outcome.completed
        np.testing.assert_array_equal(outcome.result, expected)
    assert first.session_id != second.session_id
    assert all(o.completed for pair in outcomes for o in pair)
    assert {pair[0].round_id for pair in outcomes} == {first.round_id}
    assert {pair[1].round_id for pair in outcomes} == {second.round_id}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"connect_attempts": 0}, "connect_attempts must be at least 1, got 0"),
        ({"round_timeout_s": 0.0}, "round_timeout_s must be a positive number"),
        ({"rpc_timeout_s": float("inf")}, "rpc_timeout_s must be a positive number"),
        ({"min_bandwidth_bytes_per_s": float("nan")}, "min_bandwidth_bytes_per_s must be a positive number"),
        ({"initial_backoff_s": "1"}, "initial_backoff_s must be a positive number"),
    ],
    ids=["no-attempts", "zero-round-timeout", "infinite-rpc-timeout", "nan-bandwidth", "text-backoff"],
)
def test_a_connection_that_could_never_work_is_refused_when_made(setting, message):
    """A deadline of zero or infinity, or a bandwidth of NaN, would end every transfer at once or
    never: refused where it is set, not found out in the middle of a round."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Connection("127.0.0.1:1", None, **setting)  # type: ignore[arg-type]

"""Helpers and fixtures for the gRPC round-server tests (the fixtures are re-exported by
conftest.py): a federation made on the spot, a coordinator on a
background event loop over loopback mTLS, honest participants in threads, and ``RawStream`` for
a hostile participant that writes envelopes of its own choosing."""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedmask import pki
from fedmask.coordinator.round_server import (
    BackgroundCoordinator,
    CoordinatorServer,
    MessageLimits,
    RoundConfig,
    RoundOutcome,
    ServerSettings,
    new_round_id,
)
from fedmask.coordinator.transport import mtls_security
from fedmask.participant.grpc_client import REPLY_PHASE, Connection, Identity, Outcome, mtls_credentials, take_part
from fedmask.proto import wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.proto.secagg.v1 import secagg_pb2_grpc as pb_grpc
from fedmask.secagg import prg
from fedmask.secagg.client import Client, ClientConfig
from fedmask.secagg.errors import Phase
from fedmask.secagg.messages import Abort
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input
from fedmask.testing import loopback

DIM = 1000
HONEST = ("alice", "bob", "carol")
MALLORY = "mallory"
OUTSIDER = "olivia"  # enrolled, never selected
SUPERSEDED = "eve"  # re-issued after the first certificate was saved
PARAMS = ProtocolParams(DIM, 32, 3, SecurityMode.SEMI_HONEST)


@dataclass(frozen=True)
class Federation:
    directory: Path
    superseded_cert: bytes
    superseded_key: bytes
    foreign_directory: Path  # another CA, with a participant named "alice"

    @property
    def ca_cert(self) -> bytes:
        return pki.FederationPaths(self.directory).ca_cert.read_bytes()

    def credentials(self, name: str) -> grpc.ChannelCredentials:
        return mtls_credentials(pki.load_tls_material(self.directory, "participant", name))

    def channel(self, credentials: grpc.ChannelCredentials, port: int) -> grpc.Channel:
        return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    directory = loopback.make_federation(root / "fed", [*HONEST, MALLORY, OUTSIDER, SUPERSEDED])
    paths = pki.FederationPaths(directory)
    old_cert = paths.tls_cert("participant", SUPERSEDED).read_bytes()
    old_key = paths.tls_key("participant", SUPERSEDED).read_bytes()
    loopback.add_participant(directory, SUPERSEDED, force=True)
    foreign = loopback.make_federation(root / "foreign", ["alice"])
    yield Federation(directory, old_cert, old_key, foreign)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def coordinator(federation) -> Iterator[BackgroundCoordinator]:
    """One server for the whole module: every test runs its own round on it, in sequence."""
    server = CoordinatorServer(
        mtls_security(federation.directory, loopback.COORDINATOR_NAME),
        MessageLimits.for_round(PARAMS, 4),
        settings=ServerSettings(join_wait_s=2.0),
        max_participants=8,
    )
    background = BackgroundCoordinator(server)
    background.start()
    try:
        yield background
    finally:
        background.stop()


def input_of(name: str, dimension: int = DIM) -> np.ndarray:
    seed = int.from_bytes(name.encode(), "big")
    return random_input(SeededRandom.from_int(seed), dimension, 32)


def expected_sum(names, dimension: int = DIM) -> np.ndarray:
    total = np.zeros(dimension, dtype=np.uint32)
    for name in names:
        total += input_of(name, dimension)  # uint32 arithmetic wraps: exactly mod 2^32
    return total


def assert_exact(outcome: RoundOutcome, survivors) -> None:
    """The round completed with exactly ``survivors``, and its sum is theirs, bit for bit."""
    assert outcome.completed, outcome.abort_reason
    assert sorted(outcome.survivors) == sorted(survivors), outcome.dropped
    assert outcome.result.dtype == prg.dtype_for_bits(32)
    np.testing.assert_array_equal(outcome.result, expected_sum(survivors, outcome.result.shape[0]))


class RoundHarness:
    """A round on the shared coordinator with honest participants in threads."""

    def __init__(self, coordinator: BackgroundCoordinator, federation: Federation, selected, **config) -> None:
        self.coordinator = coordinator
        self.federation = federation
        config.setdefault("join_timeout_s", 20.0)
        config.setdefault("phase_timeout_s", 20.0)
        params = config.pop("params", PARAMS)
        self.config = RoundConfig(new_round_id(), params, tuple(selected), **config)
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._honest: dict[str, object] = {}
        self.future = coordinator.submit_round(self.config)

    @property
    def port(self) -> int:
        return self.coordinator.server.port

    def connection(self, name: str, **overrides) -> Connection:
        return Connection(f"127.0.0.1:{self.port}", self.federation.credentials(name), **overrides)

    def start_honest(self, names) -> None:
        for name in names:
            self._honest[name] = self._pool.submit(
                take_part, self.connection(name), Identity(name), lambda start, name=name: input_of(name)
            )

    def honest_outcomes(self, timeout_s: float = 60.0) -> dict[str, Outcome]:
        return {name: future.result(timeout_s) for name, future in self._honest.items()}

    def outcome(self, timeout_s: float = 60.0) -> RoundOutcome:
        return self.future.result(timeout_s)

    def raw(self, name: str = MALLORY, *, credentials=None, metadata=()) -> RawStream:
        credentials = credentials or self.federation.credentials(name)
        return RawStream(self.federation.channel(credentials, self.port), metadata)

    def ended_with(self, *messages, name: str = MALLORY, credentials=None) -> tuple[grpc.StatusCode, str]:
        """The status the coordinator ends a raw stream of ``name`` with after ``messages``."""
        stream = self.raw(name, credentials=credentials)
        try:
            for message in messages:
                stream.send(message)
            return stream.status()
        finally:
            stream.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def round_harness(coordinator, federation):
    harnesses: list[RoundHarness] = []

    def make(selected=(*HONEST, MALLORY), **config) -> RoundHarness:
        harness = RoundHarness(coordinator, federation, selected, **config)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        # The next test needs the server free: let this round end however it ends.
        try:
            harness.future.result(60)
        finally:
            harness.close()


_END = object()


class RawStream:
    """One Aggregate call whose envelopes the test writes itself."""

    def __init__(self, channel: grpc.Channel, metadata=()) -> None:
        self._channel = channel
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        stub = pb_grpc.SecureAggregationStub(channel)
        self.call = stub.Aggregate(iter(self._outgoing.get, None), metadata=tuple(metadata) or None, timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for envelope in self.call:
                self._incoming.put(envelope)
        except grpc.RpcError:
            pass
        self._incoming.put(_END)

    def send(self, message_or_envelope) -> None:
        envelope = message_or_envelope
        if not isinstance(envelope, pb.ClientEnvelope):
            envelope = wire.client_to_proto(message_or_envelope)
        self._outgoing.put(envelope)

    def receive(self, timeout_s: float = 30.0) -> pb.ServerEnvelope:
        envelope = self._incoming.get(timeout=timeout_s)
        if envelope is _END:
            raise AssertionError(f"the call ended: {self.call.code()}: {self.call.details()}")
        return envelope

    def status(self, timeout_s: float = 30.0) -> tuple[grpc.StatusCode, str]:
        """The call's final status (waits for it to end)."""
        while True:
            if self._incoming.get(timeout=timeout_s) is _END:
                return self.call.code(), self.call.details() or ""

    def close(self) -> None:
        self._outgoing.put(None)
        self.call.cancel()
        self._channel.close()


class Mallory:
    """A participant that follows the protocol with a real ``secagg.Client`` until the phase a
    test picks, and there sends whatever the test makes of its honest message."""

    def __init__(self, stream: RawStream, name: str = MALLORY) -> None:
        self.stream = stream
        self.name = name
        stream.send(wire.Hello())
        self.start: wire.RoundStart = wire.server_from_proto(stream.receive(), recipient=None)
        assert isinstance(self.start, wire.RoundStart)
        self.id = self.start.participant_id
        self.client = Client(
            ClientConfig(self.id, self.start.round_id, self.start.params), rng=SeededRandom.from_int(self.id)
        )
        self.client.set_input(input_of(name, self.start.params.dimension))

    def play(
        self,
        until: Phase | None = None,
        tamper: Callable[[object], list] | None = None,
        *,
        then_continue: bool = False,
    ) -> object | None:
        """Play honestly; at phase ``until`` send ``tamper(honest_message)`` (envelopes or
        messages) instead and stop, or, with ``then_continue``, go on as if the honest message
        had gone out. Returns the last server message (RoundResult if it got that far)."""
        message = self.client.start()
        while True:
            if tamper is not None and REPLY_PHASE[type(message)] is until:
                for item in tamper(message):
                    self.stream.send(item)
                if not then_continue:
                    return None
            else:
                self.stream.send(message)
            incoming = wire.server_from_proto(self.stream.receive(), recipient=self.id)
            if isinstance(incoming, wire.RoundResult | Abort):
                return incoming
            message = self.client.receive(incoming)

"""Keepalive both ends agree on: participants that wait in a join, pinging as the client options
say, are never dropped by the coordinator's ping policy (GOAWAY too_many_pings).

The coordinator used to set an option gRPC does not know (``min_recv_ping_interval...``), so its
default minimum ping interval (5 minutes) applied, and clients pinging every 30 s were dropped
after about two minutes of waiting in a join. The first test pins the option gRPC reads; the
second waits a minute in a join with pings every 10 s (gRPC clients send none more often)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedmask import pki
from fedmask.coordinator.round_server import (
    BackgroundCoordinator,
    CoordinatorServer,
    MessageLimits,
    RoundConfig,
    new_round_id,
)
from fedmask.coordinator.transport import mtls_security
from fedmask.participant.grpc_client import Connection, Identity, mtls_credentials, take_part
from fedmask.proto import transport
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.testing import loopback

PARAMS = ProtocolParams(100, 32, 2, SecurityMode.SEMI_HONEST)


def test_the_server_accepts_pings_at_the_clients_interval():
    options = dict(transport.server_options(1 << 20, 1 << 20))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= transport.CLIENT_KEEPALIVE_TIME_MS
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in options  # not a gRPC option


@pytest.mark.slow  # a 60-second join wait
@pytest.mark.timeout(180)
def test_participants_waiting_in_a_join_are_not_dropped_for_pinging(tmp_path, monkeypatch):
    monkeypatch.setattr(transport, "CLIENT_KEEPALIVE_TIME_MS", 10_000)
    monkeypatch.setattr(transport, "MIN_CLIENT_PING_INTERVAL_MS", 5_000)
    monkeypatch.setattr(transport, "KEEPALIVE_TIMEOUT_MS", 2000)
    names = ("alice", "bob", "carol")  # carol never joins: the others wait the whole join timeout
    federation = loopback.make_federation(tmp_path / "federation", names)
    server = CoordinatorServer(
        mtls_security(federation, loopback.COORDINATOR_NAME), MessageLimits.for_round(PARAMS, 3), max_participants=3
    )
    with BackgroundCoordinator(server) as coordinator, ThreadPoolExecutor(2) as pool:
        config = RoundConfig(new_round_id(), PARAMS, names, join_timeout_s=60.0, phase_timeout_s=20.0)
        outcome = coordinator.submit_round(config)
        target = f"127.0.0.1:{server.port}"
        waiting = {
            name: pool.submit(
                take_part,
                Connection(target, mtls_credentials(pki.load_tls_material(federation, "participant", name))),
                Identity(name),
                lambda start, seed=seed: np.full(PARAMS.dimension, seed, dtype=np.uint32),
            )
            for seed, name in enumerate(names[:2], start=1)
        }
        results = {name: future.result(120) for name, future in waiting.items()}
        round_outcome = outcome.result(120)
    for name, result in results.items():
        assert result.completed, f"{name}: {result.reason}"
    assert round_outcome.completed and set(round_outcome.survivors) == {"alice", "bob"}
    assert round_outcome.join_s >= 59  # they really waited, pinging all along
    np.testing.assert_array_equal(round_outcome.result, np.full(PARAMS.dimension, 3, dtype=np.uint32))

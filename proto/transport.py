"""Transport settings both ends must agree on: service names, metadata keys, message-size
limits, keepalive. Plain values (gRPC channel options are (key, value) tuples), no grpc import.

Message-size limit (what the coordinator accepts from one participant in one message)::

    limit = value_bytes * d + 400 * n + 64 KiB

``value_bytes * d`` is the masked input (4 bytes a value at b <= 32, 8 above), 400 * n covers the
messages that grow with the number of participants (ShareKeys: ~290 bytes a neighbour, its
envelope with ephemeral key, share commitments and signature; a masked input's complaints: ~75
bytes each; UnmaskResponse: ~40), and 64 KiB covers envelopes, ids and keys. An honest message is
always below it; anything larger is refused by gRPC before it is read (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from fedmask.proto.wire import value_bytes
from fedmask.secagg.params import ProtocolParams

PACKAGE = "fedmask.secagg.v1"
SERVICE = f"{PACKAGE}.SecureAggregation"

# Metadata of the Aggregate call. The participant name is read from here only where there is no
# client certificate to read it from: with an enrolment token (one-way TLS), or --insecure.
METADATA_PARTICIPANT = "fedmask-participant"
METADATA_TOKEN = "fedmask-token"

PER_PARTICIPANT_BYTES = 400
FIXED_OVERHEAD_BYTES = 64 * 1024
# What a participant accepts from the coordinator: rosters, bundles and survivor lists grow with
# n at up to ~330 bytes a participant (a share bundle), so this covers federations of ~20 000.
CLIENT_MAX_RECEIVE_BYTES = 8 * 1024 * 1024

# Keepalive: the coordinator pings every 30 s and drops a peer that does not answer within 10 s,
# so a participant that vanishes without closing its TCP connection (NAT timeout, power loss)
# is noticed even in a long phase. Participants may ping as often as every 10 s.
SERVER_KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_CLIENT_PING_INTERVAL_MS = 10_000
CLIENT_KEEPALIVE_TIME_MS = 30_000
# A participant needs one Aggregate stream per round, plus a health check now and then.
MAX_STREAMS_PER_CONNECTION = 4


def max_participant_message_bytes(params: ProtocolParams, num_participants: int) -> int:
    """The largest message the coordinator accepts from a participant (see the module doc)."""
    return (
        value_bytes(params.modulus_bits) * params.dimension
        + PER_PARTICIPANT_BYTES * num_participants
        + FIXED_OVERHEAD_BYTES
    )


def max_coordinator_message_bytes(num_participants: int) -> int:
    """The largest message the coordinator sends (a roster, bundle or survivor list)."""
    return PER_PARTICIPANT_BYTES * num_participants + FIXED_OVERHEAD_BYTES


def server_options(receive_limit: int, send_limit: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", receive_limit),
        ("grpc.max_send_message_length", send_limit),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.so_reuseport", 0),
    ]


def client_options(tls_server_name: str | None = None) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", -1),
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # A participant may wait minutes for the others without sending data: keep pinging.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 0),
        # Our own backoff handles the first connection; do not let gRPC's hide failures.
        ("grpc.enable_retries", 0),
    ]
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return options

"""The fault proxy on plain TCP: servers on loopback that echo, swallow or pour out bytes, and
clients that time what the proxy does to them. Time bounds are derived from the configured
faults (a delay, a rate, a stall), with slack in proportion, never from the machine's speed."""

from __future__ import annotations

import queue
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fedmask.testing.fault_proxy import DEFAULT_BURST_BYTES, FaultProxy, Faults

pytestmark = pytest.mark.timeout(60)
WAIT_S = 10.0  # how long a test waits for something that should happen at once


class TcpServer:
    """A threaded TCP server on 127.0.0.1 that runs ``handle(socket)`` for each connection and
    keeps the connection errors its handlers run into."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.errors: queue.SimpleQueue[OSError] = queue.SimpleQueue()
        self.accepted = 0
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.accepted += 1
                try:
                    handle(self.request)
                except OSError as exc:
                    server.errors.put(exc)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address: tuple[str, int] = self._server.server_address  # type: ignore[assignment]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="test-tcp-server", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT_S)


def echo(connection: socket.socket) -> None:
    while data := connection.recv(65536):
        connection.sendall(data)


def sink(size: int) -> Callable[[socket.socket], None]:
    """Reads ``size`` bytes, then answers ``ok``."""

    def handle(connection: socket.socket) -> None:
        received = 0
        while received < size and (data := connection.recv(65536)):
            received += len(data)
        connection.sendall(b"ok")

    return handle


def source(size: int) -> Callable[[socket.socket], None]:
    """Sends ``size`` bytes, then closes."""

    def handle(connection: socket.socket) -> None:
        connection.sendall(bytes(size))

    return handle


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def start(handle: Callable[[socket.socket], None]) -> TcpServer:
        servers.append(TcpServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def echo_server(serve) -> TcpServer:
    return serve(echo)


def connect(proxy: FaultProxy) -> socket.socket:
    client = socket.create_connection(proxy.address, timeout=WAIT_S)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def receive_exactly(client: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def round_trip(client: socket.socket, message: bytes) -> float:
    """Seconds from sending ``message`` to receiving it back whole."""
    started = time.monotonic()
    client.sendall(message)
    assert receive_exactly(client, len(message)) == message
    return time.monotonic() - started


def test_forwards_both_ways_and_counts_the_bytes(echo_server):
    message = bytes(range(256)) * 40
    with FaultProxy(echo_server.address) as proxy, connect(proxy) as client:
        round_trip(client, message)
        stats = proxy.wait_for(lambda s: s.bytes_to_client == len(message), WAIT_S)
        assert (stats.connections_accepted, stats.connections_open, stats.bytes_to_target) == (1, 1, len(message))
        client.close()
        stats = proxy.wait_for(lambda s: s.connections_open == 0, WAIT_S)
    assert (stats.connections_reset, stats.stalls, stats.target_unreachable) == (0, 0, 0)


def test_delay_is_added_once_each_way(echo_server):
    delay_s = 0.2
    with FaultProxy(echo_server.address, Faults(delay_s=delay_s)) as proxy, connect(proxy) as client:
        elapsed = round_trip(client, b"ping")
    assert 2 * delay_s <= elapsed < 4 * delay_s


def test_delayed_chunks_keep_their_order_and_overlap_in_flight(echo_server):
    """64 chunks' worth of bytes each way: each chunk arrives delay_s after the proxy read it,
    so the whole echo takes little more than one round trip. A proxy that held each chunk for
    the delay before reading the next would need 64 * delay_s in each direction."""
    delay_s, chunk_bytes, chunks = 0.1, 4096, 64
    data = random.Random(0).randbytes(chunk_bytes * chunks)
    faults = Faults(delay_s=delay_s)
    with FaultProxy(echo_server.address, faults, chunk_bytes=chunk_bytes) as proxy, connect(proxy) as client:
        started = time.monotonic()
        sender = threading.Thread(target=client.sendall, args=(data,))
        sender.start()
        echoed = receive_exactly(client, len(data))
        elapsed = time.monotonic() - started
        sender.join(WAIT_S)
    assert echoed == data
    assert 2 * delay_s <= elapsed < 8 * delay_s


@pytest.mark.parametrize("direction", ["to-target", "to-client"])
def test_bandwidth_cap_paces_each_direction(serve, direction):
    size, rate = 256 * 1024, 512 * 1024.0
    server = serve(sink(size) if direction == "to-target" else source(size))
    with FaultProxy(server.address, Faults(bandwidth_bytes_per_s=rate)) as proxy, connect(proxy) as client:
        started = time.monotonic()
        if direction == "to-target":
            client.sendall(bytes(size))
            assert receive_exactly(client, 2) == b"ok"
        else:
            receive_exactly(client, size)
        elapsed = time.monotonic() - started
        stats = proxy.stats()
    assert (size - DEFAULT_BURST_BYTES) / rate <= elapsed < 3 * size / rate
    moved = stats.bytes_to_target if direction == "to-target" else stats.bytes_to_client
    assert moved == size


def test_reset_after_bytes_aborts_both_sides_with_rst(echo_server):
    with FaultProxy(echo_server.address, Faults(reset_after_bytes=1000)) as proxy, connect(proxy) as client:
        client.sendall(bytes(4000))
        with pytest.raises(ConnectionResetError):
            while client.recv(65536):
                pass
        stats = proxy.wait_for(lambda s: s.connections_open == 0, WAIT_S)
    assert stats.connections_reset == 1
    assert stats.bytes_to_target + stats.bytes_to_client == 1000  # exactly the threshold, then RST
    # The target saw a reset too (a FIN would have been a clean end of its stream, no error).
    assert isinstance(echo_server.errors.get(timeout=WAIT_S), ConnectionError)


def test_resets_limits_how_many_connections_are_reset(echo_server):
    with FaultProxy(echo_server.address, Faults(reset_after_bytes=10, resets=1)) as proxy:
        with connect(proxy) as first, pytest.raises(ConnectionResetError):
            first.sendall(bytes(100))
            while first.recv(65536):
                pass
        with connect(proxy) as second:
            round_trip(second, bytes(100))  # the budget is spent: this one gets through
        stats = proxy.stats()
    assert (stats.connections_accepted, stats.connections_reset) == (2, 1)


def test_reset_after_zero_bytes_resets_on_accept_without_reaching_the_target(echo_server):
    with FaultProxy(echo_server.address, Faults(reset_after_bytes=0, resets=1)) as proxy:
        with pytest.raises(ConnectionResetError), connect(proxy) as refused:  # the RST may beat connect()
            refused.recv(1)
        with connect(proxy) as admitted:
            round_trip(admitted, b"hello")
    assert echo_server.accepted == 1  # only the second connection was forwarded


def test_stall_holds_both_directions_once_then_resumes(echo_server):
    stall_s = 0.6
    faults = Faults(stall_after_bytes=100, stall_s=stall_s)
    with FaultProxy(echo_server.address, faults) as proxy, connect(proxy) as client:
        started = time.monotonic()
        first = round_trip(client, bytes(50))  # 50 bytes each way: the threshold, then the stall
        round_trip(client, bytes(50))
        through_the_stall = time.monotonic() - started
        after = round_trip(client, bytes(50))
        stats = proxy.stats()
    assert first < stall_s
    assert stall_s <= through_the_stall < 3 * stall_s
    assert after < stall_s  # once per connection
    assert stats.stalls == 1


def test_set_faults_makes_an_open_connection_flap(echo_server):
    delay_s = 0.2
    with FaultProxy(echo_server.address) as proxy, connect(proxy) as client:
        round_trip(client, b"up")
        proxy.set_faults(Faults(stall_after_bytes=0, stall_s=3600))  # the link goes down
        client.sendall(b"lost?")
        client.settimeout(3 * delay_s)
        with pytest.raises(TimeoutError):
            client.recv(16)
        client.settimeout(WAIT_S)
        proxy.set_faults(Faults())  # and comes back: the stall ends, nothing was lost
        assert receive_exactly(client, 5) == b"lost?"
        proxy.set_faults(Faults(delay_s=delay_s))
        assert round_trip(client, b"slow") >= 2 * delay_s
        assert proxy.faults == Faults(delay_s=delay_s)


def test_set_faults_resets_a_connection_already_past_the_new_threshold(echo_server):
    with FaultProxy(echo_server.address) as proxy, connect(proxy) as client:
        round_trip(client, bytes(100))
        proxy.set_faults(Faults(reset_after_bytes=50))  # 200 bytes have crossed already
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        assert proxy.stats().connections_reset == 1


def test_unreachable_target_resets_the_client():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    with FaultProxy(("127.0.0.1", closed_port)) as proxy:
        with pytest.raises(ConnectionResetError), connect(proxy) as client:  # the RST may beat connect()
            client.recv(1)
        assert proxy.wait_for(lambda s: s.target_unreachable == 1, WAIT_S).connections_open == 0


def test_wait_for_says_what_it_saw(echo_server):
    with FaultProxy(echo_server.address) as proxy:
        with pytest.raises(TimeoutError, match=r"within 0\.05 s: ProxyStats\(connections_accepted=0"):
            proxy.wait_for(lambda s: s.connections_accepted > 0, 0.05)


def test_close_drops_connections_and_is_idempotent(echo_server):
    proxy = FaultProxy(echo_server.address, Faults(delay_s=0.01)).start()
    address = proxy.address
    client = connect(proxy)
    round_trip(client, b"before")
    proxy.close()
    proxy.close()
    try:
        assert client.recv(1) == b""  # the proxy closed its end
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT_S).close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    assert proxy.stats().connections_open == 0
    with pytest.raises(RuntimeError, match="closed"):
        proxy.start()


def test_address_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        _ = FaultProxy(("127.0.0.1", 1)).address


@pytest.mark.parametrize(
    ("faults", "words"),
    [
        ({"delay_s": -0.1}, "delay_s must be a finite number >= 0, got -0.1"),
        ({"delay_s": float("nan")}, "delay_s must be a finite number >= 0"),
        ({"delay_s": float("inf")}, "delay_s must be a finite number >= 0"),
        ({"bandwidth_bytes_per_s": 0}, "bandwidth_bytes_per_s must be > 0"),
        ({"bandwidth_bytes_per_s": -1.0}, "bandwidth_bytes_per_s must be a finite number >= 0"),
        ({"burst_bytes": 0}, "burst_bytes must be an integer >= 1"),
        ({"reset_after_bytes": -1}, "reset_after_bytes must be an integer >= 0"),
        ({"reset_after_bytes": 1.5}, "reset_after_bytes must be an integer >= 0"),
        ({"reset_after_bytes": True}, "reset_after_bytes must be an integer >= 0"),
        ({"reset_after_bytes": 10, "resets": -1}, "resets must be an integer >= 0"),
        ({"resets": 1}, "resets limits the resets of reset_after_bytes, which is not set"),
        ({"stall_after_bytes": 10}, "stall_after_bytes and stall_s > 0 go together"),
        ({"stall_s": 1.0}, "stall_after_bytes and stall_s > 0 go together"),
        ({"stall_after_bytes": 10, "stall_s": -1.0}, "stall_s must be a finite number >= 0"),
    ],
)
def test_bad_faults_are_refused_with_a_one_line_reason(faults, words):
    with pytest.raises(ValueError) as refused:
        Faults(**faults)
    message = str(refused.value)
    assert words in message
    assert "\n" not in message

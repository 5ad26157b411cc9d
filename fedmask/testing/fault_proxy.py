"""A TCP proxy on loopback that injects network faults between gRPC participants and the
coordinator, for tests of rounds over a bad network.

The kernel's traffic shaper (``tc qdisc ... netem``) is not available where the tests run: the
``sch_netem`` module is missing and it would need root besides. So the faults are made in user
space: participants dial the proxy instead of the coordinator, and the proxy forwards each
connection to the coordinator through the faults of ``Faults``:

- ``delay_s``: one-way latency. Every chunk is delivered ``delay_s`` after the proxy read it, in
  order, in each direction (a round trip gains twice the delay). Chunks in flight overlap, as on
  a long link, so latency alone does not cap throughput.
- ``bandwidth_bytes_per_s``: a link of that capacity. A token bucket of ``burst_bytes`` per
  connection and direction paces the writes, so B bytes take at least (B - burst) / rate.
- ``reset_after_bytes``: a middlebox dropping the connection's state, or a peer host crashing.
  Once that many bytes (both directions together) have crossed a connection, both of its sockets
  are closed with SO_LINGER 0, so that each peer sees a TCP RST. ``resets`` limits how many
  connections are reset (the first ones to reach the threshold), so that a client that
  reconnects gets through in the end.
- ``stall_after_bytes`` and ``stall_s``: a blackholed route or a paused host. Once that many bytes
  have crossed a connection, nothing moves in either direction for ``stall_s`` (the TCP
  connection stays up), then forwarding resumes; once per connection.

``set_faults`` replaces the faults while connections are open (a stall in progress ends, a reset
threshold already passed resets at once), so a test can make a link flap. The proxy runs on its
own event loop in a background thread, for synchronous tests::

    faults = Faults(delay_s=0.02, bandwidth_bytes_per_s=250_000)
    with FaultProxy(("127.0.0.1", coordinator_port), faults) as proxy:
        connection = Connection(proxy.endpoint, credentials)    # participants dial the proxy
        ...
        proxy.set_faults(Faults(stall_after_bytes=0, stall_s=3600))  # the link goes down
        proxy.set_faults(Faults())                                   # and comes back
        assert proxy.stats().connections_reset == 0

The coordinator's certificate covers 127.0.0.1, the proxy's address, so mTLS through the proxy
needs no server-name override. Nothing is random: the same traffic meets the same faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

DEFAULT_BURST_BYTES = 16 * 1024
DEFAULT_CHUNK_BYTES = 64 * 1024
# Chunks read ahead of the writer, per direction. Bounded, so that a slow (capped, stalled)
# direction pushes back on its sender through TCP flow control instead of filling memory.
QUEUED_CHUNKS = 64
_LOOP_TIMEOUT_S = 10.0  # for whatever a caller waits for on the proxy's event loop


@dataclass(frozen=True)
class Faults:
    """The faults of every connection through a ``FaultProxy`` (each direction separately where
    that applies). The defaults inject nothing."""

    delay_s: float = 0.0
    bandwidth_bytes_per_s: float | None = None  # None: as fast as loopback goes
    burst_bytes: int = DEFAULT_BURST_BYTES
    reset_after_bytes: int | None = None
    resets: int | None = None  # how many connections to reset; None: every one
    stall_after_bytes: int | None = None
    stall_s: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds("delay_s", self.delay_s)
        _check_seconds("stall_s", self.stall_s)
        if self.bandwidth_bytes_per_s is not None:
            _check_seconds("bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)
            if self.bandwidth_bytes_per_s == 0:
                raise ValueError("bandwidth_bytes_per_s must be > 0 (None: no cap)")
        _check_count("burst_bytes", self.burst_bytes, minimum=1)
        _check_count("reset_after_bytes", self.reset_after_bytes)
        _check_count("resets", self.resets)
        _check_count("stall_after_bytes", self.stall_after_bytes)
        if self.resets is not None and self.reset_after_bytes is None:
            raise ValueError("resets limits the resets of reset_after_bytes, which is not set")
        if (self.stall_after_bytes is None) != (self.stall_s == 0):
            raise ValueError("stall_after_bytes and stall_s > 0 go together")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_count(name: str, value: object, *, minimum: int = 0) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum} (or None), got {value!r}")


@dataclass(frozen=True)
class ProxyStats:
    """What the proxy has done since it started."""

    connections_accepted: int = 0
    connections_open: int = 0
    connections_reset: int = 0  # by ``reset_after_bytes``, not by the peers
    target_unreachable: int = 0  # accepted connections it could not forward
    stalls: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0


class _ConnectionReset(Exception):
    """Ends the task that reset its connection."""


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target
        self.forwarded = 0  # bytes, both directions
        self.stall_until: float | None = None  # loop time
        self.stalled_under: int | None = None  # the faults generation of its last stall
        self.was_reset = False
        self.tasks: list[asyncio.Task[None]] = []


class _TokenBucket:
    def __init__(self) -> None:
        self.tokens = 0.0
        self.refilled_at: float | None = None  # None: not capped until now; starts full

    def refill(self, now: float, rate: float, burst: int) -> None:
        if self.refilled_at is None:
            self.tokens = float(burst)
        else:
            self.tokens = min(float(burst), self.tokens + (now - self.refilled_at) * rate)
        self.refilled_at = now


class FaultProxy:
    """Listens on ``host:port`` (0: a free port) and forwards every connection to ``target``
    through ``faults``. ``start()``/``close()``, or use it as a context manager."""

    def __init__(
        self,
        target: tuple[str, int],
        faults: Faults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        _check_count("chunk_bytes", chunk_bytes, minimum=1)
        self.target = target
        self._faults = faults or Faults()
        self._host, self._port = host, port
        self._chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        # Loop-thread state.
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._generation = 0
        self._resets_left = self._faults.resets
        self._faults_changed: asyncio.Event | None = None
        # Written by the loop thread, read by any.
        self._stats = ProxyStats()
        self._stats_changed = threading.Condition()

    # --- the caller's side ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed")
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"fault-proxy-{self.target[1]}", daemon=True)
            self._loop, self._thread = loop, thread
            thread.start()
        try:
            self._address = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(_LOOP_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("start() the proxy first")
        return self._address

    @property
    def endpoint(self) -> str:
        """``host:port``, as gRPC targets are written."""
        host, port = self.address
        return f"{host}:{port}"

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults; in effect for open connections too once this returns."""
        loop = self._loop
        if loop is None or self._closed:
            self._faults, self._resets_left = faults, faults.resets
            return
        asyncio.run_coroutine_threadsafe(self._apply(faults), loop).result(_LOOP_TIMEOUT_S)

    def stats(self) -> ProxyStats:
        with self._stats_changed:
            return self._stats

    def wait_for(self, condition: Callable[[ProxyStats], bool], timeout_s: float) -> ProxyStats:
        """The stats once ``condition(stats)`` holds; TimeoutError (with the stats) otherwise."""
        with self._stats_changed:
            if not self._stats_changed.wait_for(lambda: condition(self._stats), timeout_s):
                raise TimeoutError(f"no such proxy stats within {timeout_s:g} s: {self._stats}")
            return self._stats

    def close(self) -> None:
        """Stop listening and drop every connection; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_LOOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_LOOP_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _count(self, **increments: int) -> None:
        with self._stats_changed:
            current = self._stats
            self._stats = ProxyStats(
                **{f.name: getattr(current, f.name) + increments.get(f.name, 0) for f in fields(ProxyStats)}
            )
            self._stats_changed.notify_all()

    # --- the event loop's side -----------------------------------------------------------------

    async def _listen(self) -> tuple[str, int]:
        self._faults_changed = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _apply(self, faults: Faults) -> None:
        self._faults, self._resets_left = faults, faults.resets
        self._generation += 1
        # Whatever waits (a delay, the bucket, a stall) looks at the new faults.
        if self._faults_changed is not None:
            self._faults_changed.set()
        self._faults_changed = asyncio.Event()
        for link in list(self._links):
            link.stall_until = None
            if not link.was_reset and self._reset_due(link.forwarded):
                self._reset(link)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            for writer in (link.client, link.target):
                writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs every connection callback in a task
        self._handlers.add(task)
        self._count(connections_accepted=1, connections_open=1)
        try:
            await self._forward_connection(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only _shutdown cancels it, and waits for it. Ending quietly spares the error that
            # asyncio 3.11's stream callback logs for every cancelled connection task.
            pass
        finally:
            if not client_writer.transport.is_closing():  # cancelled before it was forwarded
                client_writer.transport.abort()
            self._handlers.discard(task)
            self._count(connections_open=-1)

    async def _forward_connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._reset_due(forwarded=0):
            self._spend_reset()
            _abort_with_rst(client_writer)
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._count(target_unreachable=1)
            _abort_with_rst(client_writer)  # the client sees its connection refused
            return
        link = _Link(client_writer, target_writer)
        self._links.add(link)
        graceful = False
        try:
            async with asyncio.TaskGroup() as group:
                for reader, writer, counter in (
                    (client_reader, target_writer, "bytes_to_target"),
                    (target_reader, client_writer, "bytes_to_client"),
                ):
                    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED_CHUNKS)
                    link.tasks.append(group.create_task(self._read(reader, chunks)))
                    link.tasks.append(group.create_task(self._write(link, chunks, writer, counter)))
            graceful = not link.was_reset
        except* (OSError, _ConnectionReset):
            pass  # a peer went away, or this proxy reset the connection: nothing to forward
        finally:
            self._links.discard(link)
            for writer in (client_writer, target_writer):
                if graceful:
                    writer.close()
                else:
                    writer.transport.abort()
        if graceful:
            for writer in (client_writer, target_writer):
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, chunks: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(self._chunk_bytes)
            await chunks.put((loop.time(), chunk))
            if not chunk:
                return

    async def _write(
        self, link: _Link, chunks: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, counter: str
    ) -> None:
        bucket = _TokenBucket()
        while True:
            received_at, chunk = await chunks.get()
            await self._sleep_until(functools.partial(self._delivery_time, received_at))
            if not chunk:
                await self._wait_out_stall(link)
                if writer.can_write_eof():
                    writer.write_eof()
                return
            data = memoryview(chunk)
            while data:
                await self._wait_out_stall(link)
                size = self._bytes_before_next_fault(link, await self._pace(bucket, len(data)))
                if size == 0:  # a fault is due before the next byte
                    self._on_threshold(link)
                    continue
                if self._faults.bandwidth_bytes_per_s is not None:
                    bucket.tokens -= size
                link.forwarded += size
                self._count(**{counter: size})
                writer.write(data[:size])
                data = data[size:]
                self._on_threshold(link)
                await writer.drain()

    async def _sleep_until(self, deadline: Callable[[], float | None]) -> None:
        """Until ``deadline()`` (loop time), asked again whenever the faults change."""
        loop = asyncio.get_running_loop()
        while (at := deadline()) is not None and (remaining := at - loop.time()) > 0:
            changed = self._faults_changed
            assert changed is not None  # set by _listen
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _delivery_time(self, received_at: float) -> float:
        return received_at + self._faults.delay_s

    def _refill_time(self, ready_at: float, pacing: Faults) -> float | None:
        return ready_at if self._faults is pacing else None  # other faults: pace again

    async def _pace(self, bucket: _TokenBucket, size: int) -> int:
        """Wait for the bucket; how many of ``size`` bytes may go now."""
        loop = asyncio.get_running_loop()
        while True:
            faults = self._faults
            rate = faults.bandwidth_bytes_per_s
            if rate is None:
                bucket.refilled_at = None
                return size
            now = loop.time()
            bucket.refill(now, rate, faults.burst_bytes)
            wanted = min(size, faults.burst_bytes)
            if bucket.tokens >= wanted:
                return wanted
            ready_at = now + (wanted - bucket.tokens) / rate
            await self._sleep_until(functools.partial(self._refill_time, ready_at, faults))

    async def _wait_out_stall(self, link: _Link) -> None:
        self._on_threshold(link)
        await self._sleep_until(lambda: link.stall_until)
        link.stall_until = None

    def _bytes_before_next_fault(self, link: _Link, size: int) -> int:
        """How many of ``size`` bytes may cross ``link`` before a reset or a stall is due."""
        faults = self._faults
        limits = [size]
        if faults.reset_after_bytes is not None and self._resets_left != 0:
            limits.append(faults.reset_after_bytes - link.forwarded)
        if faults.stall_after_bytes is not None and link.stalled_under != self._generation:
            limits.append(faults.stall_after_bytes - link.forwarded)
        return max(0, min(limits))

    def _on_threshold(self, link: _Link) -> None:
        """Reset or stall ``link`` if its bytes have reached the threshold."""
        if not link.was_reset and self._reset_due(link.forwarded):
            self._reset(link)
            raise _ConnectionReset
        faults = self._faults
        if (
            faults.stall_after_bytes is not None
            and link.forwarded >= faults.stall_after_bytes
            and link.stalled_under != self._generation
        ):
            link.stalled_under = self._generation
            link.stall_until = asyncio.get_running_loop().time() + faults.stall_s
            self._count(stalls=1)

    def _reset_due(self, forwarded: int) -> bool:
        threshold = self._faults.reset_after_bytes
        return threshold is not None and forwarded >= threshold and self._resets_left != 0

    def _spend_reset(self) -> None:
        if self._resets_left is not None:
            self._resets_left -= 1
        self._count(connections_reset=1)

    def _reset(self, link: _Link) -> None:
        link.was_reset = True
        self._spend_reset()
        _abort_with_rst(link.client)
        _abort_with_rst(link.target)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP RST rather than a FIN, discarding unsent data: the peer's next
    read or write fails with ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

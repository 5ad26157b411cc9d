"""Secure-aggregation rounds over a bad network: participants (``take_part`` in threads) reach
the in-process coordinator over loopback mTLS through ``fedmask.testing.fault_proxy``, which
adds latency, caps bandwidth, resets or stalls their TCP connections. A completed round's sum
is compared bit for bit with the plaintext sum of its survivors; a participant the network cut
off is dropped with the reason that says how.

Participants dial the proxy at 127.0.0.1, which the coordinator's certificate names (see
``loopback.make_federation``), so TLS verifies through the proxy with no server-name override.
The coordinator is this module's own, with message limits for DIM (the round harness's is sized
for d = 1000); the federation and the round harness are tests/coordinator/grpc_harness.py's.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coordinator"))

import grpc_harness  # noqa: E402
from grpc_harness import HONEST, MALLORY, RoundHarness, assert_exact, input_of  # noqa: E402

from fedmask.coordinator.round_server import (  # noqa: E402
    BackgroundCoordinator,
    CoordinatorServer,
    MessageLimits,
    RoundOutcome,
    ServerSettings,
)
from fedmask.coordinator.transport import mtls_security  # noqa: E402
from fedmask.participant.grpc_client import Identity, Outcome, take_part  # noqa: E402
from fedmask.secagg.errors import DropKind, Phase  # noqa: E402
from fedmask.secagg.params import ProtocolParams, SecurityMode  # noqa: E402
from fedmask.testing import loopback  # noqa: E402
from fedmask.testing.fault_proxy import DEFAULT_BURST_BYTES, FaultProxy, Faults, ProxyStats  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ALL = (*HONEST, MALLORY)
VICTIM = MALLORY  # the participant whose link fails
DIM = 20_000
PARAMS = ProtocolParams(DIM, 32, 3, SecurityMode.SEMI_HONEST)
MASKED_INPUT_BYTES = 4 * DIM  # 4 bytes a value at b = 32
# Before its masked input, a participant's connection carries under 10 KB in all (TLS handshake,
# Hello, RoundStart, its keys and shares, the others'); the masked input alone is 80 KB. A fault
# after 40 KB therefore strikes in the middle of the masked input's upload.
MID_MASKED_INPUT_BYTES = MASKED_INPUT_BYTES // 2
# The coordinator's first TLS flight (its certificate chain) alone is over 1 KB: a reset after
# 1000 bytes cuts the handshake, before the coordinator can have seen a Hello.
IN_TLS_HANDSHAKE_BYTES = 1000
WAIT_S = 60.0

# The harness's fixtures, by name; its round_harness runs on this module's coordinator.
federation = grpc_harness.federation
round_harness = grpc_harness.round_harness


@pytest.fixture(scope="module")
def coordinator(federation) -> Iterator[BackgroundCoordinator]:
    """One server for the module, with message limits for DIM: every test runs its own round."""
    server = CoordinatorServer(
        mtls_security(federation.directory, loopback.COORDINATOR_NAME),
        MessageLimits.for_round(PARAMS, len(ALL)),
        settings=ServerSettings(join_wait_s=2.0),
        max_participants=8,
    )
    with BackgroundCoordinator(server) as background:
        yield background


Join = Callable[..., "Future[Outcome]"]


@pytest.fixture
def participants() -> Iterator[Join]:
    """``join(harness, name, through=proxy, sleep=..., **connection_overrides)``: ``take_part``
    in a thread, dialling ``proxy`` (or the coordinator itself); returns the future Outcome."""
    pool = ThreadPoolExecutor(max_workers=len(ALL))

    def join(
        harness: RoundHarness,
        name: str,
        *,
        through: FaultProxy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[str], None] | None = None,
        **overrides: object,
    ) -> Future[Outcome]:
        connection = harness.connection(name, **overrides)
        if through is not None:
            connection = dataclasses.replace(connection, target=through.endpoint)
        return pool.submit(
            take_part,
            connection,
            Identity(name),
            lambda start: input_of(name, start.params.dimension),
            sleep=sleep,
            progress=progress,
            jitter=random.Random(name),
        )

    yield join
    pool.shutdown(wait=True, cancel_futures=True)


def proxy_to(harness: RoundHarness, faults: Faults) -> FaultProxy:
    return FaultProxy(("127.0.0.1", harness.port), faults)


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_round_through_latency_and_a_bandwidth_cap_is_exact(round_harness, participants):
    delay_s, rate = 0.02, 2_000_000 / 8  # 20 ms each way, 2 Mbit/s each way
    harness = round_harness(params=PARAMS)
    with proxy_to(harness, Faults(delay_s=delay_s, bandwidth_bytes_per_s=rate)) as proxy:
        futures = {name: participants(harness, name, through=proxy) for name in ALL}
        outcome = harness.outcome()
        outcomes = {name: future.result(WAIT_S) for name, future in futures.items()}
        stats = proxy.stats()
    assert_exact(outcome, ALL)
    assert outcome.dropped == {}
    assert all(o.completed and o.attempts == 1 for o in outcomes.values())
    assert (stats.connections_accepted, stats.connections_reset) == (len(ALL), 0)
    # Every message crossed the proxy (and TLS and HTTP/2 framing with it).
    assert stats.bytes_to_target > sum(outcome.bytes_received.values())
    # The cap held: a masked input takes its time over a 2 Mbit/s link.
    slowest_upload_s = (MASKED_INPUT_BYTES - DEFAULT_BURST_BYTES) / rate
    assert all(o.round_s >= slowest_upload_s for o in outcomes.values())


@dataclasses.dataclass
class ResetRound:
    outcome: RoundOutcome
    victim: Outcome
    others: dict[str, Outcome]
    proxy: ProxyStats
    phase_timeout_s: float


def run_with_reset_mid_masked_input(round_harness, participants) -> ResetRound:
    harness = round_harness(params=PARAMS)
    with proxy_to(harness, Faults(reset_after_bytes=MID_MASKED_INPUT_BYTES)) as proxy:
        others = {name: participants(harness, name) for name in HONEST}
        victim = participants(harness, VICTIM, through=proxy)
        outcome = harness.outcome()
        return ResetRound(
            outcome,
            victim.result(WAIT_S),
            {name: future.result(WAIT_S) for name, future in others.items()},
            proxy.stats(),
            harness.config.phase_timeout_s,
        )


def test_reset_in_the_middle_of_a_masked_input_drops_only_that_participant(round_harness, participants):
    """The victim's connection is reset once its keys and shares are in: the others' shares of
    its key rebuild its pairwise masks, and the sum is exact over the others."""
    cut = run_with_reset_mid_masked_input(round_harness, participants)
    assert_exact(cut.outcome, HONEST)
    assert cut.outcome.dropped[VICTIM].startswith("[masked-input] "), cut.outcome.dropped
    assert cut.outcome.bytes_received[VICTIM] < MASKED_INPUT_BYTES  # its masked input never arrived
    assert cut.outcome.phase_s["masked-input"] < cut.phase_timeout_s  # noticed at once, not at the deadline
    assert cut.proxy.connections_reset == 1
    assert cut.proxy.bytes_to_target + cut.proxy.bytes_to_client == MID_MASKED_INPUT_BYTES
    # Once the round has started nothing is retried: the victim reports the broken call.
    assert (cut.victim.completed, cut.victim.attempts, cut.victim.status) == (False, 1, "UNAVAILABLE")
    assert all(o.completed for o in cut.others.values())


def test_a_reset_is_reported_as_a_disconnect(round_harness, participants):
    cut = run_with_reset_mid_masked_input(round_harness, participants)
    assert_exact(cut.outcome, HONEST)
    assert cut.outcome.dropped[VICTIM].startswith("[masked-input] disconnected"), cut.outcome.dropped
    assert cut.outcome.drop_kinds == {VICTIM: DropKind.DISCONNECTED}


def test_stall_longer_than_the_phase_deadline_drops_that_participant(round_harness, participants):
    phase_timeout_s = 3.0  # long enough for a loaded machine
    harness = round_harness(params=PARAMS, phase_timeout_s=phase_timeout_s)
    faults = Faults(stall_after_bytes=MID_MASKED_INPUT_BYTES, stall_s=10 * phase_timeout_s)
    with proxy_to(harness, faults) as proxy:
        others = {name: participants(harness, name) for name in HONEST}
        victim = participants(harness, VICTIM, through=proxy)
        outcome = harness.outcome()
        assert proxy.stats().stalls == 1
        proxy.set_faults(Faults())  # the link comes back: the victim learns how its round ended
        stalled = victim.result(WAIT_S)
    assert_exact(outcome, HONEST)
    # The phase timeout, plus the time the largest masked input takes at the minimum bandwidth.
    deadline_s = harness.config.phase_deadline_s(Phase.MASKED_INPUT)
    assert phase_timeout_s < deadline_s < phase_timeout_s + 1
    reason = f"missed the masked-input deadline ({round(deadline_s, 1):g} s)"
    assert outcome.dropped[VICTIM] == f"[masked-input] {reason}"
    assert outcome.drop_kinds == {VICTIM: DropKind.DEADLINE}
    assert (stalled.completed, stalled.status) == (False, "DEADLINE_EXCEEDED")
    assert reason in stalled.reason
    assert all(future.result(WAIT_S).completed for future in others.values())


def test_reset_during_the_tls_handshake_is_retried_and_everyone_takes_part(round_harness, participants):
    """The reset comes before the coordinator has the victim's Hello, so the round waits for it
    (join deadline 20 s) while its client backs off (0.1 to 0.2 s here) and dials again."""
    harness = round_harness(params=PARAMS)
    progress: list[str] = []
    with proxy_to(harness, Faults(reset_after_bytes=IN_TLS_HANDSHAKE_BYTES, resets=1)) as proxy:
        futures = {name: participants(harness, name) for name in HONEST}
        futures[VICTIM] = participants(harness, VICTIM, through=proxy, initial_backoff_s=0.2, progress=progress.append)
        outcome = harness.outcome()
        retried = futures[VICTIM].result(WAIT_S)
        stats = proxy.stats()
    assert_exact(outcome, ALL)
    assert (retried.completed, retried.attempts) == (True, 2)
    assert any("(UNAVAILABLE); retrying" in line for line in progress), progress
    assert (stats.connections_accepted, stats.connections_reset) == (2, 1)


def test_reset_after_joining_is_retried_before_the_round_starts(round_harness, participants):
    """The coordinator has the victim's Hello when its connection is reset: the victim is
    ``gone``, and the round would start without it if the others were in. The test lets the
    victim's backoff end only once the coordinator has noticed, and starts the others only once
    the victim has joined again, so the round starts with everyone."""
    harness = round_harness(params=PARAMS)
    roster = harness.coordinator.server.round_roster
    backoff_over = threading.Event()

    def sleep(seconds: float) -> None:
        assert backoff_over.wait(WAIT_S), "the test never ended the backoff"

    with proxy_to(harness, Faults()) as proxy:
        victim = participants(harness, VICTIM, through=proxy, sleep=sleep)
        wait_until(lambda: roster().get(VICTIM) == "joined")
        proxy.set_faults(Faults(reset_after_bytes=0, resets=1))  # resets the open connection at once
        wait_until(lambda: roster().get(VICTIM) == "gone")
        backoff_over.set()
        wait_until(lambda: proxy.stats().connections_accepted == 2 and roster().get(VICTIM) == "joined")
        others = {name: participants(harness, name) for name in HONEST}
        outcome = harness.outcome()
        rejoined = victim.result(WAIT_S)
        stats = proxy.stats()
    assert_exact(outcome, ALL)
    assert (rejoined.completed, rejoined.attempts) == (True, 2)
    assert (stats.connections_accepted, stats.connections_reset) == (2, 1)
    assert all(future.result(WAIT_S).completed for future in others.values())

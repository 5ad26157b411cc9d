"""What the coordinator tells the operator besides its status file: the Prometheus series
(``coordinator/metrics.py``) and the log (``coordinator/observability.py``), whose sinks sit behind
queues so that a blocked one never stalls the event loop."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fedmask.coordinator.abort_kinds import FROM_PROTOCOL, AttemptAbort
from fedmask.coordinator.metrics import ABORT_REASON_KINDS, DROP_LABELS, DROP_REASON_KINDS, FederationMetrics
from fedmask.coordinator.observability import PROGRESS_LOGGER, JsonLineFormatter, progress_to_log, start_logging
from fedmask.secagg.errors import AbortKind, DropKind

# --- the bounded reason labels ------------------------------------------------------------------


def test_every_drop_kind_has_a_label():
    assert set(DROP_LABELS) == set(DropKind)
    assert len(set(DROP_REASON_KINDS)) == len(DropKind)


def test_every_protocol_abort_kind_has_an_attempt_kind_and_every_attempt_kind_a_label():
    """An abort's kind is data all the way to the metric: no reason text is read."""
    assert set(FROM_PROTOCOL) == set(AbortKind)
    assert ABORT_REASON_KINDS == tuple(kind.value for kind in AttemptAbort)
    metrics = FederationMetrics()
    for kind in AttemptAbort:
        metrics.record_attempt(join_s=0.0, phase_s={}, drop_kinds={}, bytes_received={}, abort_kind=kind)
    text = metrics.exposition()
    for kind in AttemptAbort:
        assert _value(text, f'fedmask_round_attempts_aborted_total{{reason_kind="{kind.value}"}}') == 1


# --- the series after a fake round -------------------------------------------------------------


def _one_round(metrics: FederationMetrics) -> None:
    """Round 1: the first attempt aborts below the threshold, the second completes without bank."""
    metrics.current_round.set(1)
    metrics.record_attempt(
        join_s=3.0,
        phase_s={},
        drop_kinds={"bank": DropKind.NOT_JOINED, "hospital-b": DropKind.NOT_JOINED},
        bytes_received={"hospital-a": 120},
        abort_kind=AttemptAbort.BELOW_THRESHOLD,
    )
    metrics.record_attempt(
        join_s=2.0,
        phase_s={"advertise-keys": 0.1, "share-keys": 0.2, "masked-input": 0.4, "unmask": 0.3},
        drop_kinds={"bank": DropKind.DEADLINE},
        bytes_received={"hospital-a": 1000, "hospital-b": 900, "bank": 0},
        abort_kind=None,
    )
    metrics.record_epsilon("hospital-a", 1.25)
    metrics.record_epsilon("hospital-b", 1.5)
    metrics.record_committed(wall_s=42.0, survivors=2, selected=3)


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in the scrape:\n{text}")


def test_the_scrape_has_every_series_after_a_round():
    metrics = FederationMetrics()
    metrics.rounds_total.set(3)
    _one_round(metrics)
    text = metrics.exposition()
    assert _value(text, "fedmask_rounds_committed_total") == 1
    assert _value(text, "fedmask_rounds_failed_total") == 0
    assert _value(text, "fedmask_rounds_total") == 3
    assert _value(text, "fedmask_current_round") == 1
    assert _value(text, "fedmask_round_survivors") == 2
    assert _value(text, "fedmask_round_selected") == 3
    assert _value(text, 'fedmask_round_attempts_aborted_total{reason_kind="below_threshold"}') == 1
    assert _value(text, 'fedmask_round_attempts_aborted_total{reason_kind="operator"}') == 0  # present from the start
    assert _value(text, 'fedmask_participants_dropped_total{reason_kind="not_joined"}') == 2
    assert _value(text, 'fedmask_participants_dropped_total{reason_kind="deadline"}') == 1
    assert _value(text, 'fedmask_received_bytes_total{participant="hospital-a"}') == 1120
    assert 'fedmask_received_bytes_total{participant="bank"}' not in text  # nothing received, no series
    assert _value(text, 'fedmask_participant_epsilon{participant="hospital-b"}') == 1.5
    assert _value(text, 'fedmask_round_phase_duration_seconds_count{phase="join"}') == 2
    assert _value(text, 'fedmask_round_phase_duration_seconds_sum{phase="join"}') == 5.0
    assert _value(text, 'fedmask_round_phase_duration_seconds_count{phase="masked-input"}') == 1
    assert _value(text, 'fedmask_round_duration_seconds_count{outcome="committed"}') == 1
    assert _value(text, 'fedmask_round_duration_seconds_bucket{le="60.0",outcome="committed"}') == 1
    metrics.record_failed(wall_s=7.0)
    assert _value(metrics.exposition(), "fedmask_rounds_failed_total") == 1


def test_labels_stay_bounded_whatever_the_rounds_bring():
    metrics = FederationMetrics()
    for index in range(50):
        metrics.record_attempt(
            join_s=1.0,
            phase_s={"a-phase-that-does-not-exist": 1.0},
            drop_kinds={f"p{index}": DropKind.DISCONNECTED},
            bytes_received={},
            abort_kind=None,
        )
    text = metrics.exposition()
    kinds = {line.split('reason_kind="')[1].split('"')[0] for line in text.splitlines() if 'reason_kind="' in line}
    assert kinds == set(DROP_REASON_KINDS) | set(ABORT_REASON_KINDS)  # each exported from the start
    assert _value(text, 'fedmask_participants_dropped_total{reason_kind="disconnected"}') == 50
    assert "a-phase-that-does-not-exist" not in text and "p49" not in text


def test_two_federations_do_not_share_counters():
    first, second = FederationMetrics(), FederationMetrics()
    first.record_committed(wall_s=1.0, survivors=2, selected=2)
    assert _value(second.exposition(), "fedmask_rounds_committed_total") == 0


def test_the_endpoint_serves_the_scrape_on_loopback():
    metrics = FederationMetrics()
    _one_round(metrics)
    endpoint = metrics.serve("127.0.0.1", 0)
    try:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            text = response.read().decode("utf-8")
        assert _value(text, "fedmask_rounds_committed_total") == 1
    finally:
        endpoint.close()


# --- the log: queues in front of the sinks -----------------------------------------------------------


class BlockedStream(io.StringIO):
    """A sink that blocks on its first write until released (a stderr pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.blocked.set()
        if not self.release.wait(30):
            raise TimeoutError("never released")
        return super().write(text)


async def _ping_roundtrips(count: int) -> list[float]:
    """Round-trip times of ``count`` pings through a TCP echo server on this event loop."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.readline():
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.005)
    writer.close()
    server.close()
    await server.wait_closed()
    return times


def test_a_blocked_log_sink_does_not_stall_the_event_loop_nor_the_other_sink(tmp_path: Path):
    stream = BlockedStream()
    log_file = tmp_path / "logs" / "coordinator.log"
    handle = start_logging("text", log_file, stream=stream, queue_records=20)
    logger = logging.getLogger(PROGRESS_LOGGER)
    records = 200
    try:

        async def flood_while_serving() -> list[float]:
            async def flood() -> None:
                for index in range(records):
                    logger.info("line %d", index)
                    await asyncio.sleep(0.001)

            flooding = asyncio.create_task(flood())
            times = await _ping_roundtrips(50)
            await flooding
            return times

        times = asyncio.run(flood_while_serving())
        assert stream.blocked.is_set()  # the console sink was stuck the whole time
        assert max(times) < 1.0, f"the event loop stalled: slowest ping {max(times):.3f} s"
        assert handle.close(timeout_s=0.2) is False  # it cannot finish while its sink is blocked
    finally:
        stream.release.set()
    # The file sink was never held up by the blocked console.
    file_lines = log_file.read_text().splitlines()
    assert file_lines[0].endswith("INFO coordinator: line 0")
    written = [line for line in file_lines if "coordinator: line " in line]
    lost_in_file = sum(int(line.split("coordinator: ")[1].split()[0]) for line in file_lines if "lost while" in line)
    assert len(written) + lost_in_file == records
    # The console gets what fitted in its queue, then says how much it lost.
    _wait_for_text(stream, "lost while this log output was blocked")
    console = stream.getvalue().splitlines()
    notice = next(line for line in console if "lost while" in line)
    lost = int(notice.split("coordinator: ")[1].split()[0])
    shown = [line for line in console if "coordinator: line " in line]
    assert lost > 0 and len(shown) + lost <= records


def _wait_for_text(stream: io.StringIO, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in stream.getvalue():
        assert time.monotonic() < deadline, f"{text!r} never written"
        time.sleep(0.01)


def test_the_log_is_restored_and_drained_on_close(tmp_path: Path):
    stream = io.StringIO()
    logger = logging.getLogger("fedmask")
    before = (logger.level, logger.propagate, list(logger.handlers))
    handle = start_logging("text", tmp_path / "coordinator.log", stream=stream)
    logging.getLogger(PROGRESS_LOGGER).info("round 1/2 committed")
    logging.getLogger("fedmask.coordinator.round_server").info("transport detail")  # below WARNING: not shown
    # (not fedmask.pki: the serve and join commands quieten it for the rest of their process)
    logging.getLogger("fedmask.coordinator.store").warning("roster expires soon")
    assert handle.close() is True
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "coordinator: round 1/2 committed",
        "coordinator: roster expires soon",
    ]
    assert len((tmp_path / "coordinator.log").read_text().splitlines()) == 2


def test_json_lines_carry_the_round_fields(tmp_path: Path):
    stream = io.StringIO()
    handle = start_logging("json", tmp_path / "coordinator.log", stream=stream)
    progress = progress_to_log(
        logging.getLogger(PROGRESS_LOGGER), fields=lambda: {"round": 2, "attempt": 1, "phase": "unmask"}
    )
    progress("unmask closed: 3/3 in")
    progress("WARNING: the noise swamps the signal")
    assert handle.close() is True
    for text in (stream.getvalue(), (tmp_path / "coordinator.log").read_text()):
        first, second = (json.loads(line) for line in text.splitlines())
        assert first["message"] == "unmask closed: 3/3 in" and first["level"] == "INFO"
        assert (first["round"], first["attempt"], first["phase"]) == (2, 1, "unmask")
        assert first["logger"] == PROGRESS_LOGGER and first["time"].endswith("+00:00")
        assert second["level"] == "WARNING"


def test_the_json_formatter_includes_an_exception():
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord(PROGRESS_LOGGER, logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    document = json.loads(JsonLineFormatter().format(record))
    assert document["message"] == "failed" and "ValueError: bad" in document["exception"]

"""The coordinator's log: stdlib ``logging`` that never blocks the event loop.

Every progress line of a running federation is a record of the ``fedmask.coordinator`` logger
(``PROGRESS_LOGGER``). ``start_logging`` sends them to stderr and to a log file, as text or as one
JSON object per line, through one bounded queue and one listener thread per sink:

    event loop --QueueHandler.put_nowait--> queue --QueueListener thread--> stderr
               --QueueHandler.put_nowait--> queue --QueueListener thread--> STATE/coordinator.log

Logging on the event loop is a ``put_nowait``: a sink that blocks (a full stderr pipe nobody reads,
a stalled disk) stalls only its own listener thread, never the loop and never the other sink. When
a blocked sink's queue is full, further records for that sink are dropped and counted, and the
sink says how many once it drains (``records lost while this log output was blocked``).

The log file is opened with ``WatchedFileHandler``, so ``logrotate`` may move it away: the next
record goes to a fresh file at the configured path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

PROGRESS_LOGGER = "fedmask.coordinator"
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
# Records a blocked sink may fall behind by before newer ones are dropped (a few MB at most).
DEFAULT_QUEUE_RECORDS = 10_000
# The structured fields a progress record may carry (``extra=``), copied into JSON lines.
RECORD_FIELDS = ("event", "round", "attempt", "phase", "participant")

Progress = Callable[[str], None]


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the
    structured fields the record carries (``RECORD_FIELDS``)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in RECORD_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, sort_keys=False, default=str)


def text_formatter(*, with_date: bool) -> logging.Formatter:
    """``HH:MM:SS coordinator: message`` on a terminal (as the coordinator always printed); the
    file carries the date and level too, since it spans months."""
    if with_date:
        return logging.Formatter("%(asctime)s %(levelname)s coordinator: %(message)s", "%Y-%m-%d %H:%M:%S")
    return logging.Formatter("%(asctime)s coordinator: %(message)s", "%H:%M:%S")


def make_formatter(log_format: LogFormat, *, with_date: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonLineFormatter()
    return text_formatter(with_date=with_date)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` over a bounded queue that drops (and counts) a record rather than wait
    when its sink has fallen ``maxsize`` records behind: the caller never blocks."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0
        self._dropped_lock = threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._dropped_lock:
                self.dropped += 1

    def take_dropped(self) -> int:
        """How many records were dropped since the last call."""
        with self._dropped_lock:
            dropped, self.dropped = self.dropped, 0
        return dropped


class SinkListener(logging.handlers.QueueListener):
    """A ``QueueListener`` for one sink, which reports records its queue handler dropped and
    stops without waiting for ever on a sink that is still blocked."""

    def __init__(self, records: queue.Queue[Any], sink: logging.Handler, source: DroppingQueueHandler) -> None:
        super().__init__(records, sink, respect_handler_level=True)
        self._source = source

    def handle(self, record: logging.LogRecord) -> None:
        dropped = self._source.take_dropped()
        if dropped:
            notice = logging.LogRecord(
                PROGRESS_LOGGER,
                logging.WARNING,
                __file__,
                0,
                f"{dropped} log record(s) lost while this log output was blocked",
                None,
                None,
            )
            super().handle(notice)
        super().handle(record)

    def close(self, timeout_s: float) -> bool:
        """Let the sink write what is queued, for at most ``timeout_s``; True if it finished."""
        thread = self._thread
        if thread is None:
            return True
        try:
            self.enqueue_sentinel()
        except queue.Full:
            return False  # the sink is blocked and its queue is full: leave the daemon thread
        thread.join(timeout_s)
        if thread.is_alive():
            return False
        self._thread = None
        return True


class _OperatorRecords(logging.Filter):
    """The coordinator's progress from INFO up; from the rest of fedmask (transport details,
    library modules) only warnings and errors, which the progress lines do not already say."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PROGRESS_LOGGER:
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING


@dataclass
class LoggingHandle:
    """What ``start_logging`` attached; ``close`` detaches it and drains the sinks."""

    logger: logging.Logger
    handlers: list[DroppingQueueHandler] = field(default_factory=list)
    listeners: list[SinkListener] = field(default_factory=list)
    log_file: Path | None = None
    previous_level: int = logging.NOTSET
    previous_propagate: bool = True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Detach and let each sink finish its queue (``timeout_s`` each); True if all did."""
        for handler in self.handlers:
            self.logger.removeHandler(handler)
        self.logger.setLevel(self.previous_level)
        self.logger.propagate = self.previous_propagate
        finished = True
        for listener in self.listeners:
            finished = listener.close(timeout_s) and finished
            if finished:
                for sink in listener.handlers:
                    sink.close()
        return finished


def start_logging(
    log_format: LogFormat = "text",
    log_file: Path | None = None,
    *,
    stream: IO[str] | None = None,
    queue_records: int = DEFAULT_QUEUE_RECORDS,
    logger_name: str = "fedmask",
) -> LoggingHandle:
    """Send fedmask's operator-facing records to ``stream`` (default stderr) and ``log_file``
    (appended; its directory is made), each sink behind its own bounded queue and thread."""
    sinks: list[logging.Handler] = []
    console = logging.StreamHandler(stream if stream is not None else sys.stderr)
    console.setFormatter(make_formatter(log_format, with_date=False))
    sinks.append(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_sink = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        file_sink.setFormatter(make_formatter(log_format, with_date=True))
        sinks.append(file_sink)
    logger = logging.getLogger(logger_name)
    handle = LoggingHandle(logger, log_file=log_file, previous_level=logger.level, previous_propagate=logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # these sinks are the whole story: no second copy through the root logger
    for sink in sinks:
        records: queue.Queue[Any] = queue.Queue(maxsize=queue_records)
        source = DroppingQueueHandler(records)
        source.addFilter(_OperatorRecords())
        listener = SinkListener(records, sink, source)
        listener.start()
        logger.addHandler(source)
        handle.handlers.append(source)
        handle.listeners.append(listener)
    return handle


def progress_to_log(
    logger: logging.Logger, *, also: Progress | None = None, fields: Callable[[], dict[str, Any]] | None = None
) -> Progress:
    """A ``progress`` callable that logs each line at INFO (with ``fields()`` as structured
    extras), and hands it to ``also`` (an older caller's callback) too."""

    def progress(line: str) -> None:
        extra = fields() if fields is not None else {}
        level = logging.WARNING if line.startswith("WARNING") else logging.INFO
        logger.log(level, line, extra=extra)
        if also is not None:
            also(line)

    return progress


def describe_sinks(handle: LoggingHandle) -> Sequence[str]:
    """Where the log goes, for the start-up line."""
    return ["stderr", *([str(handle.log_file)] if handle.log_file is not None else [])]

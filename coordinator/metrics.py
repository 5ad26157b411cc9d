"""Prometheus metrics of a running federation (``coordinator run --metrics-port N``).

Every series lives in the federation's own ``CollectorRegistry`` (never the process-global
one), so that tests and several federations in one process do not share counters. Labels are
bounded: phases come from the protocol's fixed list, an attempt's abort and a participant's drop
carry their kinds as data (``ABORT_REASON_KINDS``, ``DROP_REASON_KINDS``; the free text is in
the log and the ledger and is never parsed), and
participant names come from the CA-signed roster. No label or value carries a key, a token or a
participant's data.

Series (``fedmask_`` prefix; see docs/operations.md for what each answers):

    fedmask_rounds_committed_total                      counter
    fedmask_rounds_failed_total                         counter
    fedmask_round_attempts_aborted_total{reason_kind}   counter
    fedmask_round_duration_seconds{outcome}             histogram: first attempt opened -> committed/failed
    fedmask_round_phase_duration_seconds{phase}         histogram: join, then each protocol phase
    fedmask_round_survivors                             gauge: survivors of the last committed round
    fedmask_round_selected                              gauge: participants selected for the last committed round
    fedmask_participants_dropped_total{reason_kind}     counter
    fedmask_received_bytes_total{participant}           counter: secure-aggregation bytes received
    fedmask_participant_epsilon{participant}            gauge: record-level epsilon as last reported
    fedmask_current_round                               gauge: the round being run (0 before the first)
    fedmask_rounds_total                                gauge: rounds the federation is configured for
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from fedmask.secagg.errors import DropKind

from .abort_kinds import AttemptAbort

# Why a participant missed a round: the kind its drop carries (secagg DropKind), as a label.
DROP_LABELS: Mapping[DropKind, str] = MappingProxyType(
    {
        DropKind.DEADLINE: "deadline",  # missed a phase deadline
        DropKind.NOT_JOINED: "not_joined",  # never joined before the round started
        DropKind.LEFT: "left",  # joined, then its stream ended before the start
        DropKind.DISCONNECTED: "disconnected",  # its stream ended (or was never open) during the round
        DropKind.REFUSED: "refused",  # sent a message the coordinator refused
        DropKind.ABORTED: "participant_abort",  # aborted the round itself (its policy, an error)
    }
)
DROP_REASON_KINDS = tuple(DROP_LABELS.values())
# Why an attempt of a round aborted: the kind it carries (coordinator/abort_kinds.py).
ABORT_REASON_KINDS = tuple(kind.value for kind in AttemptAbort)
# Phases of a round, as a bounded label: "join" and the secure-aggregation phases.
PHASES = ("join", "advertise-keys", "share-keys", "masked-input", "consistency-check", "complaints", "unmask")

ROUND_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
PHASE_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


@dataclass
class FederationMetrics:
    """The federation's series in their own registry; the federation loop calls the ``record_*``
    methods, ``serve`` exposes them over HTTP."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        registry = self.registry
        self.rounds_committed = Counter("fedmask_rounds_committed", "Rounds committed.", registry=registry)
        self.rounds_failed = Counter("fedmask_rounds_failed", "Rounds whose every attempt failed.", registry=registry)
        self.attempts_aborted = Counter(
            "fedmask_round_attempts_aborted",
            "Attempts of a round that aborted, by kind of reason.",
            ["reason_kind"],
            registry=registry,
        )
        self.round_duration = Histogram(
            "fedmask_round_duration_seconds",
            "Wall time of a round, from its first attempt to its commit or failure.",
            ["outcome"],
            buckets=ROUND_SECONDS_BUCKETS,
            registry=registry,
        )
        self.phase_duration = Histogram(
            "fedmask_round_phase_duration_seconds",
            "Wall time of each phase of an attempt (join: task published to round start).",
            ["phase"],
            buckets=PHASE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.survivors = Gauge("fedmask_round_survivors", "Survivors of the last committed round.", registry=registry)
        self.selected = Gauge(
            "fedmask_round_selected", "Participants selected for the last committed round.", registry=registry
        )
        self.dropped = Counter(
            "fedmask_participants_dropped",
            "Participants that missed an attempt of a round, by kind of reason.",
            ["reason_kind"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "fedmask_received_bytes",
            "Secure-aggregation message bytes received from each participant.",
            ["participant"],
            registry=registry,
        )
        self.epsilon = Gauge(
            "fedmask_participant_epsilon",
            "Record-level epsilon each participant last reported (cumulative, its own accounting).",
            ["participant"],
            registry=registry,
        )
        self.current_round = Gauge(
            "fedmask_current_round", "The round being run (0 before the first).", registry=registry
        )
        self.rounds_total = Gauge("fedmask_rounds_total", "Rounds the federation is configured for.", registry=registry)
        # Every kind appears from the start (at 0), so a dashboard's rate() has a series to read.
        for kind in ABORT_REASON_KINDS:
            self.attempts_aborted.labels(reason_kind=kind)
        for kind in DROP_REASON_KINDS:
            self.dropped.labels(reason_kind=kind)

    def record_attempt(
        self,
        *,
        join_s: float,
        phase_s: Mapping[str, float],
        drop_kinds: Mapping[str, DropKind],
        bytes_received: Mapping[str, int],
        abort_kind: AttemptAbort | None,
    ) -> None:
        """One attempt of a round is over (completed or aborted)."""
        self.phase_duration.labels(phase="join").observe(join_s)
        for phase, seconds in phase_s.items():
            if phase in PHASES:
                self.phase_duration.labels(phase=phase).observe(seconds)
        for kind in drop_kinds.values():
            self.dropped.labels(reason_kind=DROP_LABELS[kind]).inc()
        for participant, received in bytes_received.items():
            if received > 0:
                self.received_bytes.labels(participant=participant).inc(received)
        if abort_kind is not None:
            self.attempts_aborted.labels(reason_kind=abort_kind.value).inc()

    def record_committed(self, *, wall_s: float, survivors: int, selected: int) -> None:
        self.rounds_committed.inc()
        self.round_duration.labels(outcome="committed").observe(wall_s)
        self.survivors.set(survivors)
        self.selected.set(selected)

    def record_failed(self, *, wall_s: float) -> None:
        self.rounds_failed.inc()
        self.round_duration.labels(outcome="failed").observe(wall_s)

    def record_epsilon(self, participant: str, epsilon: float) -> None:
        self.epsilon.labels(participant=participant).set(epsilon)

    def exposition(self) -> str:
        """The scrape text, as ``/metrics`` serves it."""
        return generate_latest(self.registry).decode("utf-8")

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) from a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(host, int(server.server_port), server, thread)


@dataclass
class MetricsEndpoint:
    """A listening ``/metrics`` endpoint; ``close`` stops it."""

    host: str
    port: int
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

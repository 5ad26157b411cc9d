"""The Federation gRPC service: the task board, adapter downloads, and the participants'
reports of the record-level epsilon they have spent.

It also keeps what the operator's status shows of each participant: when it last called
(``last_seen``, wall-clock time) and the epsilon it last reported (``latest_epsilon``); and it
refuses participants no longer in the CA-signed roster (``roster_names``, kept current by the
federation loop) whatever the transport's authentication.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from fedmask import ddp
from fedmask.adapter import payload as adapter_payload
from fedmask.coordinator.config import FederationConfig
from fedmask.proto.fl.v1 import fl_pb2 as fl
from fedmask.proto.fl.v1 import fl_pb2_grpc as fl_grpc

from .transport import Authenticator, AuthError

Progress = Callable[[str], None]


CHUNK_BYTES = 1 << 20
# Adapters offered for download: the current task's and the one before it (a node may still be
# downloading that one when the next is published; one that asks later is told NOT_FOUND and
# asks for its task again). Keeping every round's would grow the coordinator's memory by one
# adapter a round for as long as the federation runs.
OFFERED_ADAPTERS = 2


# --- the task board and the Federation gRPC service -----------------------------------------


@dataclass
class TaskState:
    action: fl.Task.Action = fl.Task.WAIT
    round: int = 0
    round_id: bytes = b""
    adapter: adapter_payload.AdapterPayload | None = None
    published_at: float = 0.0


@dataclass
class ParticipantReport:
    """The record-level (epsilon, delta) a participant has spent: all it reports in the clear."""

    name: str
    round: int
    adapter_round: int
    epsilon: float
    delta: float


class FederationService(fl_grpc.FederationServicer):
    """Tasks, adapter downloads and reports; callers are identified like SecAgg streams."""

    def __init__(
        self,
        config: FederationConfig,
        authenticator: Authenticator,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
        on_report: Callable[[ParticipantReport], None] | None = None,
    ) -> None:
        """``on_report`` is called with every accepted report (for metrics and the status)."""
        self._config = config
        self._authenticator = authenticator
        self._clock = clock
        self._wall_clock = wall_clock
        self._progress = progress or (lambda line: None)
        self._on_report = on_report
        self.task = TaskState()
        self._adapters: dict[str, adapter_payload.AdapterPayload] = {}
        # (round, name) -> report, for rounds not yet committed (``forget_reports_through``)
        self.reports: dict[tuple[int, str], ParticipantReport] = {}
        self._committed_through = 0
        self.final_reports: dict[str, ParticipantReport] = {}
        self.report_arrived = asyncio.Event()
        # Each chunk must fit the server's send limit (sized for the protocol's own messages).
        self.chunk_bytes = CHUNK_BYTES
        self.noise_plan: ddp.AggregateNoisePlan | None = None
        # Participants proven to have misbehaved (from the store): refused on every call.
        self.excluded: dict[str, str] = {}
        # The names in the CA-signed roster as last loaded (None: no roster to check against);
        # a revoked participant is refused here even where the transport does not check.
        self.roster_names: frozenset[str] | None = None
        self.last_seen: dict[str, float] = {}
        self.latest_epsilon: dict[str, tuple[int, float]] = {}  # name -> (round, epsilon)

    def publish(
        self, action: fl.Task.Action, round_number: int, round_id: bytes, adapter: adapter_payload.AdapterPayload
    ) -> None:
        self._adapters.pop(adapter.sha256, None)
        self._adapters[adapter.sha256] = adapter  # the newest last
        while len(self._adapters) > OFFERED_ADAPTERS:
            del self._adapters[next(iter(self._adapters))]
        self.task = TaskState(action, round_number, round_id, adapter, self._clock())

    def forget_reports_through(self, round_number: int) -> None:
        """Round ``round_number`` is committed (its ledger entry holds what its reports said):
        its reports and older ones are dropped, so that months of rounds do not pile up here."""
        self._committed_through = max(self._committed_through, round_number)
        self.reports = {key: report for key, report in self.reports.items() if key[0] > self._committed_through}

    async def _identify(self, context: grpc.aio.ServicerContext) -> str:
        try:
            name = self._authenticator.identify(context)
        except AuthError as exc:
            await _abort(context, exc.code, exc.details)
        if name not in self._config.participants:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"{name} is not a participant of this federation")
        if self.roster_names is not None and name not in self.roster_names:
            await _abort(
                context, grpc.StatusCode.PERMISSION_DENIED, f"{name} is not in the federation's roster (revoked)"
            )
        if name in self.excluded:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} is excluded from this federation: {self.excluded[name]}",
            )
        self.last_seen[name] = self._wall_clock()
        return name

    async def GetTask(  # noqa: N802 - the gRPC method name
        self, request: fl.TaskRequest, context: grpc.aio.ServicerContext
    ) -> fl.Task:
        await self._identify(context)
        task = self.task
        answer = fl.Task(action=task.action, round=task.round, total_rounds=self._config.rounds, retry_after_s=2.0)
        if task.adapter is None:
            answer.action = fl.Task.WAIT
            return answer
        answer.adapter_sha256 = task.adapter.sha256
        answer.adapter_bytes = len(task.adapter.data)
        answer.adapter_round = task.adapter.round
        answer.training_json = json.dumps(self._config.training_config(), sort_keys=True)
        encoding = self._config.encoding()
        answer.encoding_json = json.dumps(
            {
                "clip_norm": encoding.clip_norm,
                "scale": encoding.scale,
                "modulus_bits": encoding.modulus_bits,
                "aggregate_noise": self.noise_plan.config.describe() if self.noise_plan else None,
            },
            sort_keys=True,
        )
        if task.action in (fl.Task.TRAIN, fl.Task.CALIBRATE):
            answer.round_id = task.round_id
            remaining = self._config.join_timeout_s - (self._clock() - task.published_at)
            answer.join_deadline_s = max(0.0, remaining)
        return answer

    async def DownloadAdapter(  # noqa: N802
        self, request: fl.AdapterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fl.AdapterChunk]:
        await self._identify(context)
        adapter = self._adapters.get(request.sha256)
        if adapter is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "no adapter with that digest is offered")
        data = adapter.data
        step = self.chunk_bytes
        for offset in range(0, len(data), step):
            yield fl.AdapterChunk(
                offset=offset, data=data[offset : offset + step], total_bytes=len(data) if offset == 0 else 0
            )

    async def Report(  # noqa: N802
        self, request: fl.ParticipantReport, context: grpc.aio.ServicerContext
    ) -> fl.ReportAck:
        name = await self._identify(context)
        problem = _report_problem(request, self._config.last_round_number)
        if problem:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        report = ParticipantReport(name, request.round, request.adapter_round, request.epsilon, request.delta)
        final = self.task.adapter if self.task.action == fl.Task.FINISHED else None
        if final is not None and request.adapter_round == final.round:
            self.final_reports[name] = report
        elif request.round > self._committed_through:  # a late one for a committed round is of no use
            self.reports[(request.round, name)] = report
        latest = self.latest_epsilon.get(name)
        if latest is None or request.round >= latest[0]:
            self.latest_epsilon[name] = (request.round, request.epsilon)
        self.report_arrived.set()
        if self._on_report is not None:
            self._on_report(report)
        return fl.ReportAck()


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with ``code``: ``context.abort`` raises, which grpc's untyped API cannot say."""
    await context.abort(code, details)
    raise RuntimeError("grpc's context.abort returned")  # it always raises


def _report_problem(request: fl.ParticipantReport, rounds: int) -> str | None:
    if request.round > rounds or request.adapter_round > rounds:
        return f"round numbers run from 0 to {rounds}"
    if not (math.isfinite(request.epsilon) and request.epsilon >= 0):
        return "epsilon must be finite and non-negative"
    if not 0 <= request.delta < 1:
        return "delta must be in [0, 1)"
    return None

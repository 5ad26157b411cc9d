"""The coordinator's task board and adapter downloads (``fedmask.coordinator.service``)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from fedmask.adapter import payload as adapter_payload
from fedmask.coordinator.config import FederationConfig
from fedmask.coordinator.service import FederationService
from fedmask.proto.fl.v1 import fl_pb2 as fl

LAYOUT = [{"name": "lora.weight", "shape": [4], "dtype": "float32"}]


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _Hospital:
    description = "every caller is hospital-a"

    def identify(self, context: object) -> str:
        return "hospital-a"


def _service() -> FederationService:
    config = FederationConfig(participants=("hospital-a", "hospital-b"), rounds=50)
    return FederationService(config, _Hospital())


def _download(service: FederationService, digest: str) -> bytes:
    async def pull() -> bytes:
        request = fl.AdapterRequest(sha256=digest)
        return b"".join([chunk.data async for chunk in service.DownloadAdapter(request, _Context())])

    return asyncio.run(pull())


def test_the_coordinator_offers_the_current_and_the_previous_adapter_and_no_older_one() -> None:
    # Months of rounds must not keep every round's adapter in the coordinator's memory.
    service = _service()
    adapters = [adapter_payload.pack(np.full(4, r, dtype=np.float32), LAYOUT, r) for r in range(6)]
    for number, adapter in enumerate(adapters, start=1):
        service.publish(fl.Task.TRAIN, number, bytes([number]) * 16, adapter)
        service.publish(fl.Task.WAIT, number, b"", adapter)  # the same adapter again: still one offer
    assert _download(service, adapters[-1].sha256) == adapters[-1].data
    assert _download(service, adapters[-2].sha256) == adapters[-2].data  # a node still downloading it
    for old in adapters[:-2]:
        with pytest.raises(_Aborted) as refused:
            _download(service, old.sha256)
        assert refused.value.code is grpc.StatusCode.NOT_FOUND


def test_an_adapter_published_again_is_offered_as_the_newest() -> None:
    service = _service()
    first, second, third = (adapter_payload.pack(np.full(4, r, dtype=np.float32), LAYOUT, r) for r in range(3))
    service.publish(fl.Task.TRAIN, 1, b"a" * 16, first)
    service.publish(fl.Task.TRAIN, 2, b"b" * 16, second)
    service.publish(fl.Task.FINISHED, 2, b"", first)  # a re-run resumes from the first again
    service.publish(fl.Task.TRAIN, 3, b"c" * 16, third)
    assert _download(service, first.sha256) == first.data
    with pytest.raises(_Aborted):
        _download(service, second.sha256)


def _report(service: FederationService, round_number: int, epsilon: float) -> None:
    request = fl.ParticipantReport(round=round_number, adapter_round=round_number - 1, epsilon=epsilon, delta=1e-5)
    asyncio.run(service.Report(request, _Context()))


def test_reports_of_committed_rounds_are_dropped_and_late_ones_not_kept() -> None:
    service = _service()
    for number in (1, 2, 3):
        _report(service, number, float(number))
    service.forget_reports_through(2)
    assert sorted(service.reports) == [(3, "hospital-a")]
    _report(service, 1, 1.0)  # late, for a committed round: its ledger entry is written
    assert sorted(service.reports) == [(3, "hospital-a")]
    assert service.latest_epsilon["hospital-a"] == (3, 3.0)


class _Caller:
    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"every caller is {name}"

    def identify(self, context: object) -> str:
        return self.name


def _every_call(service: FederationService) -> list[object]:
    """What each of the service's three calls answers (or the refusal it ends with)."""
    adapter = adapter_payload.pack(np.zeros(4, dtype=np.float32), LAYOUT, 0)
    service.publish(fl.Task.TRAIN, 1, b"r" * 16, adapter)
    answers: list[object] = []
    calls = (
        lambda: asyncio.run(service.GetTask(fl.TaskRequest(), _Context())),
        lambda: _download(service, adapter.sha256),
        lambda: asyncio.run(
            service.Report(fl.ParticipantReport(round=1, adapter_round=0, epsilon=1.0, delta=1e-5), _Context())
        ),
    )
    for call in calls:
        try:
            answers.append(call())
        except _Aborted as refused:
            answers.append((refused.code, str(refused)))
    return answers


@pytest.mark.parametrize(
    ("caller", "setup", "refusal"),
    [
        ("clinic", lambda s: None, "clinic is not a participant of this federation"),
        ("hospital-b", lambda s: setattr(s, "roster_names", frozenset({"hospital-a"})), "(revoked)"),
        (
            "hospital-b",
            lambda s: s.excluded.update({"hospital-b": "sent bad envelopes in round 3"}),
            "hospital-b is excluded from this federation: sent bad envelopes in round 3",
        ),
    ],
)
def test_only_members_neither_revoked_nor_excluded_are_served(caller, setup, refusal) -> None:
    config = FederationConfig(participants=("hospital-a", "hospital-b"), rounds=50)
    service = FederationService(config, _Caller(caller))
    setup(service)
    answers = _every_call(service)
    assert all(
        isinstance(answer, tuple) and answer[0] is grpc.StatusCode.PERMISSION_DENIED and refusal in answer[1]
        for answer in answers
    ), answers
    assert service.reports == {} and caller not in service.last_seen
    # The same settings serve a member in good standing.
    member = FederationService(config, _Caller("hospital-a"))
    setup(member)
    task, adapter, ack = _every_call(member)
    assert task.action == fl.Task.TRAIN and len(adapter) > 0 and isinstance(ack, fl.ReportAck)

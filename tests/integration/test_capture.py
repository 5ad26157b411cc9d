"""Nothing that depends on a participant's records reaches the coordinator outside the masked
vector.

A federation round runs in this process (coordinator, three participant nodes, a tiny Qwen2 so
that it is quick), and every message the coordinator receives is captured as it arrives: the
secure-aggregation envelopes and the Federation service's requests. Two checks:

1. every field of every message is protocol material (keys, signatures, envelopes, commitments,
   session ids, the masked vector), a round number, or the record-level (epsilon, delta) spent;
2. run again with other records (as many), and those non-protocol values are identical: they do
   not depend on the records. Only the masked vector differs, and it is uniformly random.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
from google.protobuf.message import Message

from fedmask import pki
from fedmask.coordinator.config import FederationConfig
from fedmask.coordinator.federation import Federation
from fedmask.coordinator.round_server import RoundRunner, ServerSettings
from fedmask.coordinator.service import FederationService
from fedmask.coordinator.transport import mtls_security
from fedmask.demo.data import PARTIES, generate_records, write_records
from fedmask.participant.data import load_local_data
from fedmask.participant.node import Node
from fedmask.participant.policy import ParticipantPolicy
from fedmask.participant.setup import setup_connection
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(300)

# (message type, field) pairs a participant may send. Nested messages are walked.
PROTOCOL_FIELDS = {
    "ClientEnvelope": {"hello", "advertise_keys", "share_keys", "masked_input", "consistency_signature",
                       "unmask_response", "envelope_opening", "abort"},
    "Hello": {"protocol_version"},
    "AdvertiseKeys": {"round_id", "encryption_key", "masking_key", "signature"},
    "ShareKeys": {"session_id", "shares", "self_mask_commitment"},
    "EncryptedShareTo": {"recipient", "ciphertext", "ephemeral_key", "self_mask_share_commitment",
                         "key_share_commitment", "signature"},
    "MaskedInput": {"session_id", "masked", "complaints"},
    "ConsistencySignature": {"session_id", "signature"},
    "UnmaskResponse": {"session_id", "self_mask_shares", "key_shares"},
    "OwnerShare": {"owner", "share"},
    "TaskRequest": {"last_round"},
    "AdapterRequest": {"sha256"},
}  # fmt: skip
# Not protocol material, so they must not depend on the records.
PLAIN_FIELDS = {"ParticipantReport": {"round", "adapter_round", "epsilon", "delta"}}


def _walk(message: Message, problems: list[str]) -> None:
    name = message.DESCRIPTOR.name
    allowed = PROTOCOL_FIELDS.get(name, set()) | PLAIN_FIELDS.get(name, set())
    for descriptor, value in message.ListFields():
        if descriptor.name not in allowed:
            problems.append(f"{name}.{descriptor.name}")
        if descriptor.message_type is None:
            continue
        for item in value if descriptor.is_repeated else [value]:
            _walk(item, problems)


def _plain_values(message: Message) -> tuple:
    return tuple((f.name, v) for f, v in message.ListFields() if f.name in PLAIN_FIELDS[message.DESCRIPTOR.name])


def _run_round(tmp: Path, model_path: str, seed: int, monkeypatch) -> tuple[list[Message], list[str]]:
    """One federated round; returns every message the coordinator received, and the node logs."""
    federation = loopback.make_federation(tmp / "federation", PARTIES)
    roster = pki.load_roster(federation, pki.load_ca_certificate(federation))
    captured: list[Message] = []
    lock = threading.Lock()

    def capture(message: Message) -> None:
        with lock:
            captured.append(message)

    original_envelope = RoundRunner._on_envelope

    async def on_envelope(self, connection, envelope):
        capture(envelope)
        return await original_envelope(self, connection, envelope)

    monkeypatch.setattr(RoundRunner, "_on_envelope", on_envelope)
    for method in ("GetTask", "Report"):
        original = getattr(FederationService, method)

        async def wrapped(self, request, context, original=original):
            capture(request)
            return await original(self, request, context)

        monkeypatch.setattr(FederationService, method, wrapped)
    original_download = FederationService.DownloadAdapter

    async def download(self, request, context):
        capture(request)
        async for chunk in original_download(self, request, context):
            yield chunk

    monkeypatch.setattr(FederationService, "DownloadAdapter", download)
    # Three nodes share this process (real deployments give each its own): torch's model code is
    # not for concurrent threads, so their model work takes turns; the protocol runs concurrently.
    torch_turns = threading.Lock()
    for method in ("_training", "_evaluate"):
        original_method = getattr(Node, method)

        def one_at_a_time(self, *args, original_method=original_method, **kwargs):
            with torch_turns:
                return original_method(self, *args, **kwargs)

        monkeypatch.setattr(Node, method, one_at_a_time)
    import fedmask.participant.training as training_module

    original_train = training_module.train_adapter

    def train_in_turn(*args, **kwargs):
        with torch_turns:
            return original_train(*args, **kwargs)

    monkeypatch.setattr(training_module, "train_adapter", train_in_turn)

    config = FederationConfig(
        participants=PARTIES,
        rounds=1,
        training={"model_path": model_path, "task": "causal_lm", "mode": "lora", "target_epsilon": 8.0,
                  "epochs": 1.0, "batch_size": 8, "max_seq_len": 24},
        join_timeout_s=120.0,
        phase_timeout_s=30.0,
        final_report_wait_s=60.0,
    )  # fmt: skip
    listening: list[int] = []
    ready = threading.Event()

    def progress(line: str) -> None:
        if match := re.search(r"listening on [^ ]+:(\d+)", line):
            listening.append(int(match.group(1)))
            ready.set()

    coordinator = Federation(
        config,
        tmp / "coordinator",
        mtls_security(federation, loopback.COORDINATOR_NAME),
        settings=ServerSettings(host="127.0.0.1", port=0),
        progress=progress,
        identity_keys=dict(roster.identity_keys),
    )
    runner = threading.Thread(target=lambda: asyncio.run(coordinator.run()), daemon=True)
    runner.start()
    assert ready.wait(120), "the coordinator did not start"
    logs: list[str] = []
    nodes = []
    for index, party in enumerate(PARTIES):
        records = generate_records(party, 48, seed=seed + index)
        data = load_local_data(write_records(records, tmp / f"{party}.jsonl"))
        local = setup_connection(federation, party, f"localhost:{listening[0]}")
        policy = ParticipantPolicy.pinned_to(roster.entries, roster.version)
        node = Node(
            local.connection, local.identity, data, tmp / party, progress=logs.append, policy=policy, task="causal_lm"
        )

        def follow(node: Node = node, party: str = party) -> None:
            try:
                node.run()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                logs.append(f"{party}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        nodes.append(thread)
    for thread in nodes:
        thread.join(240)
    runner.join(120)
    assert not runner.is_alive() and not any(t.is_alive() for t in nodes), "\n".join(logs[-20:])
    return captured, logs


def test_only_protocol_material_and_sums_leave_a_participant(tmp_path, tiny_qwen2_path, monkeypatch):
    first, logs = _run_round(tmp_path / "a", tiny_qwen2_path, seed=1, monkeypatch=monkeypatch)
    kinds = {m.WhichOneof("body") for m in first if m.DESCRIPTOR.name == "ClientEnvelope"}
    assert {"advertise_keys", "share_keys", "masked_input", "consistency_signature", "unmask_response"} <= kinds
    assert any("secure aggregation completed" in line for line in logs)
    problems: list[str] = []
    for message in first:
        _walk(message, problems)
    assert problems == []

    monkeypatch.undo()
    second, _ = _run_round(tmp_path / "b", tiny_qwen2_path, seed=100, monkeypatch=monkeypatch)
    reports = [sorted(_plain_values(m) for m in run if m.DESCRIPTOR.name in PLAIN_FIELDS) for run in (first, second)]
    assert reports[0] and reports[0] == reports[1]  # the same with other records

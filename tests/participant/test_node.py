"""The participant node's checks on what the coordinator announces (the whole loop runs in
tests/integration/test_federation_e2e.py)."""

from __future__ import annotations

import json

import pytest

from fedmask.coordinator.config import FederationConfig
from fedmask.participant.data import LocalData
from fedmask.participant.grpc_client import Connection, Identity
from fedmask.participant.node import Node, NodeError, NodeState, parse_encoding
from fedmask.participant.policy import ParticipantPolicy
from fedmask.proto.fl.v1 import fl_pb2 as fl

PARTIES = ("hospital-a", "hospital-b", "bank")


def _announced(config: FederationConfig, dimension: int) -> str:
    encoding = config.encoding()
    plan = config.noise_plan(dimension)
    return json.dumps(
        {
            "clip_norm": encoding.clip_norm,
            "scale": encoding.scale,
            "modulus_bits": encoding.modulus_bits,
            "aggregate_noise": plan.config.describe() if plan else None,
        }
    )


def test_plain_encoding_is_parsed():
    config = FederationConfig(participants=PARTIES, threshold=2)
    params, plan = parse_encoding(_announced(config, 300), 300)
    assert plan is None
    assert params.scale == config.encoding().scale and params.modulus_bits == 32


def test_node_calibrates_the_same_noise_plan_itself():
    config = FederationConfig(participants=PARTIES, threshold=2, aggregate_noise="skellam", aggregate_epsilon=5.0)
    _, plan = parse_encoding(_announced(config, 300), 300)
    expected = config.noise_plan(300)
    assert plan.describe() == expected.describe()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"clip_norm": 1.0}),
        json.dumps({"clip_norm": -1, "scale": 1, "modulus_bits": 32}),
        json.dumps({"clip_norm": 1, "scale": 1, "modulus_bits": 32, "aggregate_noise": {"mechanism": "laplace"}}),
    ],
)
def test_unusable_encodings_are_refused(text):
    with pytest.raises(NodeError, match="unusable encoding"):
        parse_encoding(text, 10)


def test_state_survives_a_restart(tmp_path):
    path = tmp_path / "node.json"
    state = NodeState.load(path)
    assert state.uploaded_round_ids == [] and state.last_round == 0
    state.uploaded_round_ids.append("ab12")
    state.last_round = 2
    state.save(path)
    again = NodeState.load(path)
    assert again.uploaded_round_ids == ["ab12"] and again.last_round == 2


# --- the participant's policy against what the coordinator asks --------------------------------


def _task(training: dict, encoding: dict | None = None) -> fl.Task:
    return fl.Task(
        action=fl.Task.TRAIN,
        round=1,
        total_rounds=3,
        round_id=b"r1",
        training_json=json.dumps(training),
        encoding_json=json.dumps(encoding or {"clip_norm": 5.0, "scale": 2.0**20, "modulus_bits": 32}),
    )


def _node(tmp_path, policy: ParticipantPolicy) -> Node:
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    return Node(Connection("127.0.0.1:1", None), Identity("hospital-a"), data, tmp_path, policy=policy)


def test_a_coordinator_cannot_raise_the_participants_budget(tmp_path):
    """The issue's attack: the node took target_epsilon from the task, so a coordinator could
    raise a hospital's record-level epsilon at will (1e9 was accepted)."""
    node = _node(tmp_path, ParticipantPolicy(max_epsilon=8.0))
    with pytest.raises(NodeError, match=r"max_epsilon = 8.*epsilon 1e\+09"):
        node._training(_task({"target_epsilon": 1e9, "target_delta": 1e-5}))
    assert not (tmp_path / "privacy_ledger.json").exists()  # refused before anything is charged
    with pytest.raises(NodeError, match="max_delta"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 0.01}))


def test_the_node_refuses_a_model_or_noise_its_policy_does_not_allow(tmp_path):
    node = _node(tmp_path, ParticipantPolicy(models=("all-minilm-l6-v2",)))
    with pytest.raises(NodeError, match="model /srv/other"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 1e-5, "model_path": "/srv/other"}))
    policy = ParticipantPolicy(aggregate_noise="skellam", max_participant_epsilon=5.0)
    encoding = {"clip_norm": 5.0, "scale": 2.0**20, "modulus_bits": 32, "aggregate_noise": None}
    with pytest.raises(NodeError, match="no aggregate noise"):
        parse_encoding(json.dumps(encoding), 300, policy)

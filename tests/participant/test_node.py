"""The participant node's checks on what the coordinator announces (the whole loop runs in
tests/integration/test_federation_e2e.py)."""

from __future__ import annotations

import json

import pytest

from fedmask.coordinator.federation import FederationConfig
from fedmask.participant.node import NodeError, NodeState, parse_encoding

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

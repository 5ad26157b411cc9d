"""``load_federation_config``: the one validation of a ``coordinator run --config`` file, shared
by ``coordinator run`` (before it writes anything) and ``fedmask doctor coordinator --config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmask.coordinator.config import FederationError, load_federation_config

PARTIES = ["hospital-a", "hospital-b", "bank"]


def _config_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({"participants": PARTIES, "rounds": 2, **changes}))
    return path


def test_a_valid_config_loads(tmp_path):
    config = load_federation_config(_config_file(tmp_path, threshold=2, training={"lora_layers": 2}))
    assert config.participants == tuple(sorted(PARTIES)) and config.rounds == 2 and config.threshold == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"training": {"lora_layers": 99}}, "training: lora_layers is 99, but the model has 6 layers"),
        ({"threshold": 5}, "threshold must be in [2, 3] (shares per secret), got 5"),
        ({"training": {"target_epsilon": -1}}, "training: target_epsilon must be positive and at most 100, got -1"),
        ({"rounds": 0}, "rounds must be an integer from 1 to 10000, got 0"),
        ({"rounds": 10**30}, f"rounds must be an integer from 1 to 10000, got {10**30}"),
        ({"participants": ["bank", "bank", "hospital-a"]}, "participants: bank listed more than once"),
        ({"participants": ["bank"]}, "a federation needs at least 2 distinct participants"),
        ({"server_learning_rate": 0}, "server_learning_rate must be positive"),
        ({"server_learning_rate": 1e400}, "server_learning_rate: expected a finite number, got inf"),
        ({"attempts_per_round": 0}, "attempts_per_round must be at least 1"),
        ({"spare_rounds": -1}, "spare_rounds must be an integer from 0 to 10000"),
        ({"spare_rounds": 10_001}, "spare_rounds must be an integer from 0 to 10000"),
        ({"spare_rounds": 1.5}, "spare_rounds: expected an integer, got 1.5"),
    ],
    ids=[
        "lora-layers-beyond-the-model",
        "threshold-above-participants",
        "negative-epsilon",
        "no-rounds",
        "rounds-beyond-any-budget",
        "a-participant-twice",
        "one-participant",
        "zero-server-lr",
        "infinite-server-lr",
        "no-attempts",
        "negative-spare-rounds",
        "spare-rounds-beyond-any-budget",
        "fractional-spare-rounds",
    ],
)
def test_every_refusal_is_one_federation_error_that_names_the_file(tmp_path, changes, message):
    path = _config_file(tmp_path, **changes)
    with pytest.raises(FederationError) as refused:
        load_federation_config(path)
    assert str(refused.value) == f"{path}: {message}"


@pytest.mark.parametrize("content", [b"{not json", b'{"participants": "\xff"}'], ids=["not-json", "not-utf8"])
def test_a_file_that_is_not_json_is_a_federation_error(tmp_path, content):
    path = tmp_path / "federation.json"
    path.write_bytes(content)
    with pytest.raises(FederationError, match=f"^{path}: "):
        load_federation_config(path)

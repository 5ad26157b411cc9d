"""The participant node's checks on what the coordinator announces (the whole loop runs in
tests/integration/test_federation_e2e.py)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from fedmask.adapter import payload as adapter_payload
from fedmask.adapter.calibration import CALIBRATION_COORDINATES, encode_release
from fedmask.adapter.metrics import METRIC_COORDINATES
from fedmask.adapter.vector import VectorSpec
from fedmask.coordinator.config import FederationConfig
from fedmask.participant.data import LocalData, Record
from fedmask.participant.grpc_client import Connection, Identity
from fedmask.participant.ledger import CALIBRATION_NOTE
from fedmask.participant.node import STARTING_GRACE_S, AdapterWithdrawn, Node, NodeError, NodeState, parse_encoding
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
        # Python's JSON reads Infinity, and integers of any length: neither may escape as OverflowError.
        '{"clip_norm": 1, "scale": 1, "modulus_bits": -Infinity}',
        json.dumps({"clip_norm": 10**400, "scale": 1, "modulus_bits": 32}),
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
    raise a hospital's record-level epsilon at will (1e9 was accepted). 50 is a budget a
    training config allows (at most 100): only the participant's policy stands in the way."""
    node = _node(tmp_path, ParticipantPolicy(max_epsilon=8.0))
    with pytest.raises(NodeError, match=r"max_epsilon = 8.*epsilon 50"):
        node._training(_task({"target_epsilon": 50.0, "target_delta": 1e-5}))
    assert not (tmp_path / "privacy_ledger.json").exists()  # refused before anything is charged
    with pytest.raises(NodeError, match="max_delta"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 0.01}))


def test_the_coordinator_cannot_switch_the_task_the_records_are_for(tmp_path):
    node = _node(tmp_path, ParticipantPolicy())
    with pytest.raises(
        NodeError, match=r"asks for causal_lm training; this participant's records are for classification"
    ):
        node._training(
            _task({"target_epsilon": 4.0, "target_delta": 1e-5, "task": "causal_lm", "model_path": "/srv/qwen2"})
        )
    assert not (tmp_path / "privacy_ledger.json").exists()  # refused before anything is charged


def test_training_settings_the_model_cannot_take_are_refused_in_one_line(tmp_path):
    node = _node(tmp_path, ParticipantPolicy())
    with pytest.raises(NodeError, match="unusable training settings: lora_layers is 99, but the model has 6 layers"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 1e-5, "lora_layers": 99}))
    assert not (tmp_path / "privacy_ledger.json").exists()  # refused before the ledger is made
    with pytest.raises(NodeError, match="unusable training settings: lora_layers must be a positive number"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 1e-5, "lora_layers": 0}))


def test_the_node_refuses_a_model_or_noise_its_policy_does_not_allow(tmp_path):
    node = _node(tmp_path, ParticipantPolicy(models=("all-minilm-l6-v2",)))
    with pytest.raises(NodeError, match="model /srv/other"):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 1e-5, "model_path": "/srv/other"}))
    policy = ParticipantPolicy(aggregate_noise="skellam", max_participant_epsilon=5.0)
    encoding = {"clip_norm": 5.0, "scale": 2.0**20, "modulus_bits": 32, "aggregate_noise": None}
    with pytest.raises(NodeError, match="no aggregate noise"):
        parse_encoding(json.dumps(encoding), 300, policy)


def test_a_coordinator_cannot_ask_for_more_steps_or_epsilon_a_round_than_the_policy_allows(tmp_path, tiny_qwen2_path):
    """The plan (steps a round, the round's epsilon) depends on the records, so it is checked
    once the trainer knows how many there are: still before anything is charged."""
    records = [Record(f"message {i}", i % 2) for i in range(100)]
    data = LocalData(train=records, heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    training = {"target_epsilon": 8.0, "target_delta": 1e-5, "local_steps": 10, "model_path": tiny_qwen2_path}

    def node(policy: ParticipantPolicy, state: str) -> Node:
        return Node(Connection("127.0.0.1:1", None), Identity("hospital-a"), data, tmp_path / state, policy=policy)

    steps = node(ParticipantPolicy(max_local_steps=3), "steps")
    with pytest.raises(NodeError, match=r"max_local_steps = 3.*10 steps a round"):
        steps._training(_task(training))
    assert steps._ledger is not None and steps._ledger.epsilon_spent == 0.0

    per_round = node(ParticipantPolicy(max_epsilon_per_round=0.5), "per-round")
    with pytest.raises(NodeError, match=r"max_epsilon_per_round = 0.5.*this round"):
        per_round._training(_task(training))
    assert per_round._ledger is not None and per_round._ledger.epsilon_spent == 0.0

    config, _ = node(ParticipantPolicy(max_local_steps=10, max_epsilon_per_round=8.0), "allowed")._training(
        _task(training)
    )
    assert config.local_steps == 10


# --- the privacy ledger across crashes and abandoned rounds: each round's update charged once ---

LEDGER_TRAINING = {"target_epsilon": 4.0, "target_delta": 1e-5}
LAYOUT = {"tensors": [{"name": "lora.weight", "shape": [4], "dtype": "float32"}]}
SPEC = VectorSpec.from_json(LAYOUT["tensors"])
STEPS = 5


class _Crash(Exception):
    """The process dies here."""


class _Trainer:
    def __init__(self, config, *, ledger):
        self.config = config
        self.ledger = ledger
        self.spec = SimpleNamespace(to_json=lambda: LAYOUT)


def _ledger_node(tmp_path, monkeypatch, *, task_now=None, take_part=None, trainer=_Trainer) -> tuple[Node, list[str]]:
    from fedmask.participant import node as node_module
    from fedmask.participant import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "LocalTrainer", trainer)
    logs: list[str] = []
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    node = Node(Connection("127.0.0.1:1", None), Identity("hospital-a"), data, tmp_path, progress=logs.append)
    payload = SimpleNamespace(vector=np.zeros(4, dtype=np.float32), layout=LAYOUT, round=0)
    monkeypatch.setattr(node, "download", lambda task, spec: payload)
    monkeypatch.setattr(node, "report", lambda round_number, adapter_round: None)
    monkeypatch.setattr(node, "_evaluate", lambda trainer, vector: None)
    monkeypatch.setattr(node, "get_task", lambda: task_now or _task(LEDGER_TRAINING))

    def joins_and_finishes(connection, identity, input_for_round, **kwargs):
        params = SimpleNamespace(threshold=2, dimension=4 + METRIC_COORDINATES, modulus_bits=32)
        input_for_round(SimpleNamespace(round_id=b"r1", participants=PARTIES, params=params))
        return SimpleNamespace(completed=True, reason="")

    monkeypatch.setattr(node_module, "take_part", take_part or joins_and_finishes)
    return node, logs


def _train(*, crash: bool = False):
    def train_adapter(config, data, *, global_adapter_state, ledger, trainer, on_step, score_heldout):
        assert not score_heldout  # the upload does not wait for a score of the local adapter
        ledger.charge(noise_multiplier=1.1, sample_rate=0.05, steps=STEPS, note="local training")
        if crash:
            raise _Crash
        for step in range(1, STEPS + 1):
            on_step(step, STEPS, 0.5)
        return SimpleNamespace(vector=global_adapter_state + np.float32(0.01))

    return train_adapter


def _ledger_steps(tmp_path) -> tuple[int, list[bool]]:
    data = json.loads((tmp_path / "privacy_ledger.json").read_text())
    return sum(e["steps"] for e in data["entries"]), [e["released"] for e in data["entries"]]


def test_a_crash_mid_training_and_the_retrain_are_charged_once(tmp_path, monkeypatch):
    node, _ = _ledger_node(tmp_path, monkeypatch)
    with pytest.raises(_Crash):
        node._train_and_upload(_task(LEDGER_TRAINING), _train(crash=True))
    assert _ledger_steps(tmp_path) == (STEPS, [False])  # charged before training, still pending

    restarted, logs = _ledger_node(tmp_path, monkeypatch)
    restarted._train_and_upload(_task(LEDGER_TRAINING), _train())
    assert any(f"refunded {STEPS} DP-SGD steps" in line for line in logs)
    assert _ledger_steps(tmp_path) == (STEPS, [True])  # once, and released with the upload


def test_a_crash_after_the_update_entered_the_round_is_never_refunded(tmp_path, monkeypatch):
    def joins_then_dies(connection, identity, input_for_round, **kwargs):
        params = SimpleNamespace(threshold=2, dimension=4 + METRIC_COORDINATES, modulus_bits=32)
        input_for_round(SimpleNamespace(round_id=b"r1", participants=PARTIES, params=params))
        raise _Crash

    node, _ = _ledger_node(tmp_path, monkeypatch, take_part=joins_then_dies)
    with pytest.raises(_Crash):
        node._train_and_upload(_task(LEDGER_TRAINING), _train())
    restarted, logs = _ledger_node(tmp_path, monkeypatch)
    restarted._training(_task(LEDGER_TRAINING))
    assert not any("refunded" in line for line in logs)
    assert _ledger_steps(tmp_path) == (STEPS, [True])


def test_an_update_that_never_left_is_refunded(tmp_path, monkeypatch):
    moved_on = fl.Task(action=fl.Task.WAIT, round=2)
    node, logs = _ledger_node(tmp_path, monkeypatch, task_now=moved_on)
    node._train_and_upload(_task(LEDGER_TRAINING), _train())
    assert any("coordinator abandoned" in line for line in logs)
    assert _ledger_steps(tmp_path) == (0, [])

    def round_ends_before_the_input(connection, identity, input_for_round, **kwargs):
        return SimpleNamespace(completed=False, reason="the round was aborted during key advertising")

    other = tmp_path / "other"
    other.mkdir()
    node, logs = _ledger_node(other, monkeypatch, take_part=round_ends_before_the_input)
    node._train_and_upload(_task(LEDGER_TRAINING), _train())
    assert any("ended before this node's upload" in line for line in logs)
    assert _ledger_steps(other) == (0, [])


def test_a_node_does_not_retry_into_a_round_the_coordinator_reopened_under_a_new_id(tmp_path, monkeypatch):
    # The coordinator restarted while this node was joining: the round it re-opens has another
    # id, so the node stops retrying, is refunded, and trains for the new round on its next task.
    reopened = fl.Task(action=fl.Task.TRAIN, round=1, total_rounds=3, round_id=b"r1-again")
    answers: list[bool] = []

    def coordinator_restarts_during_the_join(connection, identity, input_for_round, *, still_wanted, **kwargs):
        answers.append(still_wanted())  # the same coordinator: go on trying
        monkeypatch.setattr(node, "get_task", lambda: reopened)
        answers.append(still_wanted())  # restarted, round re-opened: give up
        return SimpleNamespace(completed=False, reason="the round this participant was joining is no longer open")

    node, logs = _ledger_node(tmp_path, monkeypatch, take_part=coordinator_restarts_during_the_join)
    node._train_and_upload(_task(LEDGER_TRAINING), _train())
    assert answers == [True, False]
    assert any("no longer open" in line for line in logs)
    assert _ledger_steps(tmp_path) == (0, [])  # nothing of it entered a round: refunded


def test_a_restarted_node_tries_once_to_rejoin_a_round_its_update_never_entered(tmp_path, monkeypatch):
    def dies_while_waiting_for_the_start(connection, identity, input_for_round, **kwargs):
        raise _Crash

    task = _task(LEDGER_TRAINING)
    node, _ = _ledger_node(tmp_path, monkeypatch, take_part=dies_while_waiting_for_the_start)
    with pytest.raises(_Crash):  # joined (recorded), then died before its update was masked
        node._train_and_upload(task, _train())

    restarted, logs = _ledger_node(tmp_path, monkeypatch)
    assert not restarted._already_in(task)  # may rejoin: nothing of it was released
    assert any("trying to rejoin" in line for line in logs)
    restarted.state.uploaded_round_ids.append(task.round_id.hex())  # as the rejoin attempt records
    assert restarted._already_in(task)  # once per process: no retrain loop while the round runs


def test_a_node_whose_update_was_released_never_rejoins(tmp_path, monkeypatch):
    task = _task(LEDGER_TRAINING)
    node, _ = _ledger_node(tmp_path, monkeypatch)
    node._train_and_upload(task, _train())
    restarted, _ = _ledger_node(tmp_path, monkeypatch)
    assert restarted._already_in(task)


# --- the calibration round: one noised release, charged, pending until masked --------------------

RELEASE = np.arange(CALIBRATION_COORDINATES, dtype=np.float64) - 5.0


class _CalibratingTrainer(_Trainer):
    @property
    def calibrates(self):
        return self.config.calibrates  # and the model has a head bias

    def set_adapter_vector(self, vector):
        self.loaded = vector

    def calibration_release(self, records, rng):
        assert self.ledger._pending_tag  # charged pending: refunded if the release never leaves
        self.ledger.charge(noise_multiplier=4.0, sample_rate=1.0, steps=1, note=CALIBRATION_NOTE)
        return RELEASE


def _calibration_task(training: dict, encoding: dict | None = None) -> fl.Task:
    task = _task(training, encoding)
    task.action, task.round, task.round_id = fl.Task.CALIBRATE, 4, b"r4"
    return task


def _joins_with(inputs: list[np.ndarray]):
    def joins(connection, identity, input_for_round, **kwargs):
        params = SimpleNamespace(threshold=2, dimension=CALIBRATION_COORDINATES, modulus_bits=32)
        inputs.append(input_for_round(SimpleNamespace(round_id=b"r4", participants=PARTIES, params=params)))
        return SimpleNamespace(completed=True, reason="")

    return joins


def test_the_calibration_release_is_charged_and_leaves_only_inside_the_masked_input(tmp_path, monkeypatch):
    task = _calibration_task(LEDGER_TRAINING)
    inputs: list[np.ndarray] = []
    node, _ = _ledger_node(
        tmp_path, monkeypatch, task_now=task, take_part=_joins_with(inputs), trainer=_CalibratingTrainer
    )
    node._calibrate_and_upload(task)
    np.testing.assert_array_equal(inputs[0], encode_release(RELEASE, 32, len(PARTIES)))
    entries = json.loads((tmp_path / "privacy_ledger.json").read_text())["entries"]
    assert [(e["note"], e["sample_rate"], e["released"]) for e in entries] == [(CALIBRATION_NOTE, 1.0, True)]
    assert node._already_in(task)  # a restart does not release a second time


def test_a_coordinator_cannot_ask_for_a_calibration_the_training_settings_did_not_plan(tmp_path, monkeypatch):
    """Without ``calibrate`` the budget holds no reserve for the release: a coordinator asking for
    it anyway would have the participant spend epsilon it planned for nothing else."""
    task = _calibration_task({**LEDGER_TRAINING, "calibrate": False})
    node, _ = _ledger_node(tmp_path, monkeypatch, task_now=task, trainer=_CalibratingTrainer)
    with pytest.raises(NodeError, match="do not plan"):
        node._calibrate_and_upload(task)
    assert not (tmp_path / "privacy_ledger.json").exists()  # nothing charged


def test_a_calibration_under_aggregate_noise_is_refused(tmp_path, monkeypatch):
    """Aggregate noise promises participant-level DP; a record-level release would fall outside it."""
    config = FederationConfig(participants=PARTIES, threshold=2, aggregate_noise="skellam", aggregate_epsilon=5.0)
    task = _calibration_task(LEDGER_TRAINING)
    task.encoding_json = _announced(config, CALIBRATION_COORDINATES)
    node, _ = _ledger_node(tmp_path, monkeypatch, task_now=task, trainer=_CalibratingTrainer)
    with pytest.raises(NodeError, match="under aggregate noise; refused"):
        node._calibrate_and_upload(task)
    assert not (tmp_path / "privacy_ledger.json").exists()


def test_a_node_whose_plan_reserves_no_calibration_sits_the_round_out(tmp_path, monkeypatch):
    """A ledger planned before calibration existed holds no reserve for the release: the node says
    so in one line and records the round as done, instead of failing in the coordinator's face."""
    from fedmask.adapter.calibration import CalibrationError

    class _UnplannedTrainer(_CalibratingTrainer):
        def calibration_release(self, records, rng):
            raise CalibrationError("this training plan reserves no budget for calibration")

    task = _calibration_task(LEDGER_TRAINING)
    inputs: list[np.ndarray] = []
    node, logs = _ledger_node(
        tmp_path, monkeypatch, task_now=task, take_part=_joins_with(inputs), trainer=_UnplannedTrainer
    )
    node._calibrate_and_upload(task)
    assert inputs == []  # nothing sent
    assert any("calibration: not taking part: this training plan reserves no budget" in line for line in logs)
    assert node._already_in(task)  # not asked again after a restart


# --- deadlines that scale -------------------------------------------------------------------------


def test_a_node_rides_out_an_outage_up_to_its_tolerance_then_says_so(tmp_path):
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    connection = Connection("127.0.0.1:1", None, outage_tolerance_s=60.0, max_backoff_s=8.0)  # nothing listens
    node = Node(connection, Identity("hospital-a"), data, tmp_path, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(NodeError, match=r"unreachable for GetTask for \d+ s \(outage tolerance 60 s\)"):
        node.get_task()
    assert 60.0 <= sum(slept) < 60.0 + 8.0  # retried for the whole tolerance, and no longer


def test_training_says_how_far_it_is_every_few_seconds_without_the_loss(tmp_path):
    now = [0.0]
    lines: list[str] = []
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    node = Node(
        Connection("127.0.0.1:1", None), Identity("bank"), data, tmp_path, clock=lambda: now[0], progress=lines.append
    )
    on_step = node._training_progress(3)
    for step in range(1, 101):
        now[0] += 0.3  # 30 s of training, a step every 0.3 s
        on_step(step, 100, 0.6931)
    assert 5 <= len(lines) <= 6, lines  # every 5 s, not every step
    assert lines[0] == "round 3: DP-SGD step 17/100"
    assert not any("0.69" in line for line in lines)  # the loss is a figure of the records: not printed


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class _ClockedCoordinator:
    """A coordinator that is unreachable until a time on a fake clock, and the nodes that call
    it: ``sleep`` advances the clock, so retries and their lines take no real time."""

    def __init__(self, tmp_path, max_backoff_s: float) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.lines: list[str] = []
        self._tmp_path = tmp_path
        self._connection = Connection("127.0.0.1:1", None, outage_tolerance_s=100.0, max_backoff_s=max_backoff_s)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def node(self) -> Node:
        data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
        return Node(
            self._connection,
            Identity("hospital-a"),
            data,
            self._tmp_path,
            sleep=self.sleep,
            clock=lambda: self.now,
            progress=self.lines.append,
        )

    def unavailable_until(self, seconds: float):
        def call(stub):
            if self.now < seconds:
                raise _Unavailable()
            return "task"

        return call


def test_an_outage_is_reported_once_and_then_every_30_s_not_on_every_retry(tmp_path):
    coordinator = _ClockedCoordinator(tmp_path, max_backoff_s=8.0)
    node, lines = coordinator.node(), coordinator.lines
    assert node._call("GetTask", coordinator.unavailable_until(0.0)) == "task"  # the coordinator answered once
    assert node._call("GetTask", coordinator.unavailable_until(75.0)) == "task"
    # Lines at the start of the outage and after 30 and 60 s (not one per retry), then the end of it.
    assert len(coordinator.slept) > 10
    assert len(lines) == 4, lines
    assert lines[0].startswith("coordinator unreachable (UNAVAILABLE)") and "giving up after 100 s" in lines[0]
    assert lines[1].startswith("coordinator unreachable for 3") and lines[2].startswith("coordinator unreachable for 6")
    waited = lines[3].removeprefix("coordinator reachable again after ").removesuffix(" s")
    assert 75 <= int(waited) < 75 + 8  # at the first retry after the outage ended (backoff at most 8 s)

    lines.clear()
    assert node._call("GetTask", coordinator.unavailable_until(0.0)) == "task"
    assert lines == []  # nothing to say when nothing failed


def test_a_coordinator_still_starting_is_not_reported_as_an_outage(tmp_path):
    """`make demo` started its nodes with the coordinator and printed a "coordinator unreachable"
    line for each in a healthy start. Until the coordinator has first answered, a node is quiet
    for STARTING_GRACE_S; a coordinator that does not come up is still reported after that."""
    coordinator = _ClockedCoordinator(tmp_path, max_backoff_s=2.0)
    lines = coordinator.lines
    assert coordinator.node()._call("GetTask", coordinator.unavailable_until(STARTING_GRACE_S - 5)) == "task"
    assert lines == []  # it was starting: nothing to say

    start = coordinator.now
    assert coordinator.node()._call("GetTask", coordinator.unavailable_until(start + 40.0)) == "task"
    assert len(lines) == 3, lines  # past the grace, at 30 s, then its return
    assert lines[0].startswith("coordinator unreachable for 2") and "(UNAVAILABLE)" in lines[0]
    assert lines[2].startswith("coordinator reachable again after 4")


def test_transfer_deadlines_grow_with_the_payload():
    connection = Connection("h:1", None, rpc_timeout_s=30.0, min_bandwidth_bytes_per_s=250_000.0)
    assert connection.transfer_deadline_s(0) == 30.0
    assert connection.transfer_deadline_s(100_000_000) == 30.0 + 400.0  # 100 MB at 2 Mbit/s


@pytest.mark.parametrize("field", ["rpc_timeout_s", "min_bandwidth_bytes_per_s", "outage_tolerance_s"])
def test_connection_settings_are_validated(field):
    with pytest.raises(ValueError, match=field):
        Connection("h:1", None, **{field: 0})


class _NotFound(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "no adapter with that digest is offered"


def _download_node(
    tmp_path, monkeypatch, chunks: list[bytes], pulled: list[int], timeouts: list[float], *, offered: bool = True
) -> Node:
    """A node whose coordinator streams ``chunks`` (counting in ``pulled`` those it handed over),
    or, not ``offered``, answers that it offers no adapter with the requested digest."""
    from fedmask.participant import node as node_module

    class Stub:
        def __init__(self, channel):
            pass

        def DownloadAdapter(self, request, *, metadata, timeout):  # noqa: N802 - the gRPC name
            timeouts.append(timeout)
            if not offered:
                raise _NotFound()  # as a server stream does: on the first read
            offset = 0
            for chunk in chunks:
                pulled.append(len(chunk))
                yield fl.AdapterChunk(offset=offset, data=chunk)
                offset += len(chunk)

    monkeypatch.setattr(node_module.fl_grpc, "FederationStub", Stub)
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    connection = Connection("127.0.0.1:1", None, rpc_timeout_s=30.0, min_bandwidth_bytes_per_s=1000.0)
    return Node(connection, Identity("hospital-a"), data, tmp_path)


def test_the_adapter_download_deadline_follows_the_announced_size(tmp_path, monkeypatch):
    from fedmask.adapter import payload as adapter_payload

    packed = adapter_payload.pack(np.zeros(4, dtype=np.float32), SPEC.to_json(), 0)
    pulled: list[int] = []
    timeouts: list[float] = []
    node = _download_node(tmp_path, monkeypatch, [packed.data], pulled, timeouts)
    task = fl.Task(adapter_sha256=packed.sha256, adapter_bytes=len(packed.data), adapter_round=0)
    assert node.download(task, SPEC).vector.tolist() == [0.0] * 4
    assert timeouts == [30.0 + len(packed.data) / 1000.0]


def test_a_coordinator_cannot_make_the_node_download_more_than_its_own_adapter(tmp_path, monkeypatch):
    # A lying coordinator announces (and would stream) far more than this node's model and
    # adapter settings can make: the node refuses before it pulls a byte.
    pulled: list[int] = []
    flood = [bytes(1 << 20)] * 64
    node = _download_node(tmp_path, monkeypatch, flood, pulled, [])
    task = fl.Task(adapter_sha256="0" * 64, adapter_bytes=1 << 40, adapter_round=0)
    with pytest.raises(NodeError, match=r"announces a 1099511627776-byte global adapter; .* at most \d+ bytes"):
        node.download(task, SPEC)
    assert pulled == []


@pytest.mark.parametrize(
    ("layout", "values", "error"),
    [
        ([{"name": "lora.other", "shape": [4], "dtype": "float32"}], 4, "layout differs from this node's model"),
        (SPEC.to_json(), 3, "has 3 values; its layout, and this node's adapter, have 4"),
    ],
)
def test_a_global_adapter_of_another_layout_or_size_is_refused_in_one_line(
    tmp_path, monkeypatch, layout, values, error
):
    # Digest and round as announced, but not this node's adapter: refused before it is used.
    from fedmask.adapter import payload as adapter_payload

    packed = adapter_payload.pack(np.zeros(values, dtype=np.float32), layout, 0)
    node = _download_node(tmp_path, monkeypatch, [packed.data], [], [])
    task = fl.Task(adapter_sha256=packed.sha256, adapter_bytes=len(packed.data), adapter_round=0)
    with pytest.raises(NodeError, match=error):
        node.download(task, SPEC)


def test_an_adapter_the_coordinator_does_not_offer_is_a_task_that_changed(tmp_path, monkeypatch):
    node = _download_node(tmp_path, monkeypatch, [], [], [], offered=False)
    task = fl.Task(round=2, adapter_sha256="ab" * 32, adapter_bytes=100, adapter_round=1)
    with pytest.raises(AdapterWithdrawn, match=r"round 2: the coordinator no longer offers the adapter .*abababab"):
        node.download(task, SPEC)


def _following_node(tmp_path, monkeypatch, tasks: list[fl.Task], offered: set[str]) -> tuple[Node, list[str], list]:
    """A node (model code, training and scoring stubbed) that is handed ``tasks`` in turn and whose
    coordinator offers only the adapters in ``offered``."""
    from fedmask.adapter import model as model_module
    from fedmask.participant import node as node_module

    monkeypatch.setattr(model_module, "import_model_code", lambda: 0.0)
    monkeypatch.setattr(node_module, "rehearse_once", lambda: None)
    lines: list[str] = []
    slept: list[float] = []
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    node = Node(
        Connection("127.0.0.1:1", None),
        Identity("hospital-a"),
        data,
        tmp_path,
        progress=lines.append,
        sleep=slept.append,
    )
    handed = iter(tasks)
    trainer = SimpleNamespace(spec=SPEC)
    payload = SimpleNamespace(vector=np.zeros(4, dtype=np.float32), round=1)

    def download(task, spec):
        if task.adapter_sha256 not in offered:
            raise AdapterWithdrawn(f"round {task.round}: the coordinator no longer offers the adapter")
        return payload

    monkeypatch.setattr(node, "get_task", lambda: next(handed))
    monkeypatch.setattr(node, "_training", lambda task, **kwargs: (None, trainer))
    monkeypatch.setattr(node, "download", download)
    monkeypatch.setattr(node, "_evaluate", lambda trainer, vector: None)
    monkeypatch.setattr(node, "report", lambda round_number, adapter_round: None)
    return node, lines, slept


def test_a_node_whose_download_outlived_the_coordinator_asks_for_the_task_again(tmp_path, monkeypatch):
    # The coordinator restarted while this node downloaded: the restarted one does not (yet)
    # offer that adapter. The node follows the task it is handed next instead of exiting.
    old, new = "aa" * 32, "bb" * 32
    tasks = [
        fl.Task(action=fl.Task.FINISHED, round=3, adapter_sha256=digest, retry_after_s=2.0) for digest in (old, new)
    ]
    node, lines, slept = _following_node(tmp_path, monkeypatch, tasks, offered={new})
    assert node.run()["accuracy"] is None  # finished, on the second task
    assert lines[0] == "round 3: the coordinator no longer offers the adapter; asking for the task again"
    assert slept == [2.0]


def test_a_coordinator_that_keeps_announcing_an_adapter_it_does_not_offer_is_left_in_one_line(tmp_path, monkeypatch):
    tasks = [fl.Task(action=fl.Task.FINISHED, round=3, adapter_sha256="aa" * 32)] * 10
    node, lines, _ = _following_node(tmp_path, monkeypatch, tasks, offered=set())
    with pytest.raises(NodeError, match=r"no longer offers the adapter, 3 times in a row; giving up"):
        node.run()
    assert len(lines) == 2


def test_the_node_imports_the_model_code_before_it_asks_for_a_task(tmp_path, monkeypatch):
    # Round 1 must not wait for Python to import transformers, nor for the protocol's first-use
    # set-up: the node does both when it starts.
    from fedmask.adapter import model as model_module
    from fedmask.participant import node as node_module

    calls: list[str] = []

    class Asked(Exception):
        pass

    def get_task():
        calls.append("get_task")
        raise Asked

    monkeypatch.setattr(model_module, "import_model_code", lambda: calls.append("import") or 0.0)
    monkeypatch.setattr(node_module, "rehearse_once", lambda: calls.append("rehearse"))
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    node = Node(Connection("127.0.0.1:1", None), Identity("hospital-a"), data, tmp_path)
    monkeypatch.setattr(node, "get_task", get_task)
    with pytest.raises(Asked):
        node.run()
    assert calls == ["import", "rehearse", "get_task"]


# --- what the coordinator streams and opens: the node checks both against the task ------------


def _download(tmp_path, monkeypatch, task: fl.Task, chunks) -> object:
    """``node.download`` against a coordinator whose DownloadAdapter stream is ``chunks``."""
    node = _node(tmp_path, ParticipantPolicy())
    stub = SimpleNamespace(DownloadAdapter=lambda request, **kwargs: chunks)
    monkeypatch.setattr(node, "_call", lambda what, call: call(stub))
    return node.download(task, SPEC)


def _announced_adapter(round_number: int, announced_round: int | None = None) -> tuple[fl.Task, bytes]:
    payload = adapter_payload.pack(np.arange(4, dtype=np.float32), SPEC.to_json(), round_number)
    task = _task(LEDGER_TRAINING)
    task.adapter_round = round_number if announced_round is None else announced_round
    task.adapter_bytes, task.adapter_sha256 = len(payload.data), payload.sha256
    return task, payload.data


def _chunks(data: bytes, size: int = 16) -> list[fl.AdapterChunk]:
    return [fl.AdapterChunk(offset=i, data=data[i : i + size]) for i in range(0, len(data), size)]


def test_the_node_downloads_the_announced_adapter(tmp_path, monkeypatch):
    task, data = _announced_adapter(2)
    payload = _download(tmp_path, monkeypatch, task, iter(_chunks(data)))
    assert payload.round == 2 and payload.vector.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_an_older_adapter_announced_as_this_round_s_is_refused(tmp_path, monkeypatch):
    """A replayed global adapter, with its own (valid) digest, under the current round's number."""
    task, data = _announced_adapter(1, announced_round=2)
    with pytest.raises(NodeError, match="the adapter is of round 1, the task announced 2"):
        _download(tmp_path, monkeypatch, task, iter(_chunks(data)))


def test_chunks_out_of_order_are_refused(tmp_path, monkeypatch):
    task, data = _announced_adapter(2)
    chunks = _chunks(data)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(NodeError, match="adapter chunks arrived out of order"):
        _download(tmp_path, monkeypatch, task, iter(chunks))


def test_a_stream_longer_than_announced_is_cut_off_at_once(tmp_path, monkeypatch):
    """The node stops reading as soon as the stream passes the announced size: a coordinator
    cannot fill its memory however long it streams."""
    task, data = _announced_adapter(2)
    pulled = []

    def endless():
        offset = 0
        while len(pulled) < 100_000:
            chunk = fl.AdapterChunk(offset=offset, data=data[:16].ljust(16, b"\0"))
            pulled.append(chunk)
            offset += 16
            yield chunk

    with pytest.raises(NodeError, match="the adapter is larger than announced"):
        _download(tmp_path, monkeypatch, task, endless())
    assert len(pulled) == len(data) // 16 + 1


def _joins_a_round_that(lie: dict, errors: list[str], *, task_dimension: int, round_id: bytes):
    """``take_part`` opening a round that differs from the task by ``lie``; ``input_for_round``'s
    refusal becomes the participant's abort, as in the gRPC client."""

    def joins(connection, identity, input_for_round, **kwargs):
        params = SimpleNamespace(threshold=2, dimension=task_dimension, modulus_bits=32)
        start = SimpleNamespace(round_id=round_id, participants=PARTIES, params=params)
        for key, value in lie.items():
            setattr(start.params if key != "round_id" else start, key, value)
        try:
            input_for_round(start)
        except ValueError as exc:
            errors.append(str(exc))
            return SimpleNamespace(completed=False, reason=f"cannot take part: {exc}")
        return SimpleNamespace(completed=True, reason="")

    return joins


ROUND_LIES = [
    ({"round_id": b"r9"}, "the coordinator opened another round than the task announced"),
    ({"dimension": 4 + METRIC_COORDINATES + 1}, "the round's dimension or modulus does not match the encoded update"),
    ({"modulus_bits": 16}, "the round's dimension or modulus does not match the encoded update"),
]


@pytest.mark.parametrize(("lie", "message"), ROUND_LIES)
def test_a_round_that_is_not_the_task_s_gets_no_update_and_its_charge_is_refunded(tmp_path, monkeypatch, lie, message):
    errors: list[str] = []
    joins = _joins_a_round_that(lie, errors, task_dimension=4 + METRIC_COORDINATES, round_id=b"r1")
    node, _ = _ledger_node(tmp_path, monkeypatch, take_part=joins)
    node._train_and_upload(_task(LEDGER_TRAINING), _train())
    assert errors == [message]
    assert _ledger_steps(tmp_path) == (0, [])  # nothing of it entered a round: refunded


@pytest.mark.parametrize(("lie", "message"), ROUND_LIES)
def test_a_round_that_is_not_the_calibration_task_s_gets_no_release(tmp_path, monkeypatch, lie, message):
    if "dimension" in lie:
        lie = {"dimension": CALIBRATION_COORDINATES + 1}
    message = message.replace("the encoded update", "the calibration release")
    errors: list[str] = []
    task = _calibration_task(LEDGER_TRAINING)
    joins = _joins_a_round_that(lie, errors, task_dimension=CALIBRATION_COORDINATES, round_id=b"r4")
    node, _ = _ledger_node(tmp_path, monkeypatch, task_now=task, take_part=joins, trainer=_CalibratingTrainer)
    node._calibrate_and_upload(task)
    assert errors == [message]
    entries = json.loads((tmp_path / "privacy_ledger.json").read_text())["entries"]
    assert not any(e["released"] for e in entries)  # charged pending, never released


def test_a_round_whose_threshold_is_below_what_the_aggregate_noise_needs_gets_no_update(tmp_path, monkeypatch):
    """The noise was sized for sums of at least ``min_survivors`` updates: a round that could
    complete with fewer would release a sum with less noise than each participant promised."""
    config = FederationConfig(participants=PARTIES, threshold=2, aggregate_noise="skellam", aggregate_epsilon=5.0)
    task = _task(LEDGER_TRAINING)
    task.encoding_json = _announced(config, 4)
    plan = config.noise_plan(4)
    assert plan is not None and plan.config.min_survivors >= 2
    errors: list[str] = []
    joins = _joins_a_round_that({"threshold": plan.config.min_survivors - 1}, errors, task_dimension=4, round_id=b"r1")
    node, _ = _ledger_node(tmp_path, monkeypatch, task_now=task, take_part=joins)
    node._train_and_upload(task, _train())
    assert errors == ["the round's threshold is below the survivors the noise was calibrated for"]
    assert _ledger_steps(tmp_path) == (0, [])


@pytest.mark.parametrize(
    "setting, problem",
    [
        ({"max_grad_norm": 10**400}, "max_grad_norm: expected a finite number, got 1000"),
        ({"learning_rate": float("inf")}, "learning_rate: expected a finite number or null, got inf"),
        ({"epochs": float("nan")}, "epochs: expected a finite number or null, got nan"),
        ({"batch_size": 64.5}, "batch_size: expected an integer, got 64.5"),
        ({"batch_size": "64"}, "batch_size: expected an integer, got '64'"),
        ({"calibrate": 1}, "calibrate: expected true or false, got 1"),
    ],
)
def test_training_settings_of_the_wrong_type_are_refused_in_one_line(tmp_path, setting, problem):
    """The coordinator's JSON is untrusted: a value of the wrong type is refused before a
    comparison meets it (an OverflowError escaped before, or a float batch size reached training)."""
    node = _node(tmp_path, ParticipantPolicy())
    with pytest.raises(NodeError, match=re.escape(f"unusable training settings: {problem}")):
        node._training(_task({"target_epsilon": 4.0, "target_delta": 1e-5, **setting}))
    assert not (tmp_path / "privacy_ledger.json").exists()

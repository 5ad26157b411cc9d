"""The participant's policy: what it accepts whatever the coordinator asks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedmask.adapter.config import TrainingConfig
from fedmask.participant.policy import ParticipantPolicy, PolicyError, PolicyViolation
from fedmask.secagg.params import SecurityMode

ORGS = {"hospital-a": "st-mary", "hospital-b": "st-john", "bank": "first-bank", "ghost": "st-mary"}
MEMBERS = ("bank", "hospital-a", "hospital-b")


def test_defaults_are_the_safe_choice():
    policy = ParticipantPolicy()
    assert policy.security_mode is SecurityMode.MALICIOUS
    assert (policy.min_participants, policy.min_organisations) == (3, 2)
    assert policy.max_epsilon == 8.0 and policy.max_delta == 1e-5
    assert not policy.allow_repeated_input


def test_the_file_round_trips_and_bad_keys_are_named(tmp_path: Path):
    policy = ParticipantPolicy.pinned_to(MEMBERS, roster_version=4, max_epsilon=3.0, max_local_steps=50)
    path = tmp_path / "policy.toml"
    policy.save(path)
    assert ParticipantPolicy.load(path) == policy
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text('max_epsilon = "lots"\n')
    with pytest.raises(PolicyError, match="max_epsilon: expected a positive number"):
        ParticipantPolicy.load(path)
    path.write_text("max_epsilon = 2\nepsilon = 3\n")
    with pytest.raises(PolicyError, match="unknown policy settings: epsilon"):
        ParticipantPolicy.load(path)
    # "no" is a truthy string: taken as a boolean it would allow what it means to refuse.
    path.write_text('allow_repeated_input = "no"\n')
    with pytest.raises(PolicyError, match="allow_repeated_input: expected true or false, got 'no'"):
        ParticipantPolicy.load(path)
    path.write_text('security_mode = "trusting"\n')
    with pytest.raises(PolicyError, match="security_mode"):
        ParticipantPolicy.load(path)
    with pytest.raises(PolicyError, match="cannot read"):
        ParticipantPolicy.load(tmp_path / "missing.toml")
    path.write_bytes(b"max_epsilon = 2\n\xff\xfe")
    with pytest.raises(PolicyError, match=r"is not valid TOML: not UTF-8 text \(byte 16\)"):
        ParticipantPolicy.load(path)


# A round on the complete graph (classic SecAgg) with the smallest threshold there is.
COMPLETE = {"threshold": 2, "neighbours": None}


def test_a_downgrade_to_semi_honest_is_refused():
    """The issue's downgrade: semi-honest mode, n = 2, [ghost, victim]."""
    policy = ParticipantPolicy.pinned_to(MEMBERS, roster_version=1)
    with pytest.raises(PolicyViolation, match=r"security_mode = malicious.*a semi-honest round"):
        policy.check_round(SecurityMode.SEMI_HONEST, ["ghost", "hospital-a"], ORGS, **COMPLETE)
    with pytest.raises(PolicyViolation, match=r"min_participants = 3.*a round of 2"):
        policy.check_round(SecurityMode.MALICIOUS, ["ghost", "hospital-a"], ORGS, **COMPLETE)
    with pytest.raises(PolicyViolation, match="participants it does not know: ghost"):
        policy.check_round(SecurityMode.MALICIOUS, ["ghost", "hospital-a", "bank"], ORGS, **COMPLETE)
    policy.check_round(SecurityMode.MALICIOUS, list(MEMBERS), ORGS, **COMPLETE)


def test_a_threshold_below_the_policy_or_a_sparse_graph_is_refused():
    """The coordinator picks t and the graph; how few colluders may rebuild this participant's
    masks is the participant's to say. SecAgg+'s sparse graph is refused unless accepted."""
    many = [f"p{i:02d}" for i in range(10)]
    orgs = {name: name for name in many}
    policy = ParticipantPolicy(min_threshold=4)
    with pytest.raises(PolicyViolation, match=r"min_threshold = 4.*threshold 3"):
        policy.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=3, neighbours=None)
    policy.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=6, neighbours=None)
    with pytest.raises(PolicyViolation, match=r"allow_sparse_graph = false.*degree 4 over 10 participants"):
        policy.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=4, neighbours=4)
    # A "sparse" degree that reaches everyone is the complete graph: nothing to refuse.
    policy.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=6, neighbours=9)
    accepting = ParticipantPolicy(min_threshold=4, allow_sparse_graph=True)
    accepting.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=4, neighbours=4)
    with pytest.raises(PolicyViolation, match="min_threshold = 4"):
        accepting.check_round(SecurityMode.MALICIOUS, many, orgs, threshold=3, neighbours=4)
    with pytest.raises(PolicyError, match="min_threshold"):
        ParticipantPolicy(min_threshold=1)
    with pytest.raises(PolicyError, match="allow_sparse_graph: expected true or false"):
        ParticipantPolicy(allow_sparse_graph="yes")  # type: ignore[arg-type]


def test_sybils_outside_the_pinned_members_or_one_organisation_are_refused():
    sybils = {**ORGS, "sybil-1": "st-mary", "sybil-2": "st-mary"}
    pinned = ParticipantPolicy.pinned_to(MEMBERS, roster_version=1)
    with pytest.raises(PolicyViolation, match="sybil-1, sybil-2"):
        pinned.check_round(SecurityMode.MALICIOUS, ["hospital-a", "sybil-1", "sybil-2"], sybils, **COMPLETE)
    open_policy = ParticipantPolicy()  # no pinned members: the organisations still count
    with pytest.raises(PolicyViolation, match=r"min_organisations = 2.*1 organisation"):
        open_policy.check_round(SecurityMode.MALICIOUS, ["hospital-a", "sybil-1", "sybil-2"], sybils, **COMPLETE)
    with pytest.raises(PolicyViolation, match="non-members outsider"):
        open_policy.check_round(SecurityMode.MALICIOUS, ["hospital-a", "bank", "outsider"], sybils, **COMPLETE)
    with pytest.raises(PolicyViolation, match="min_roster_version"):
        ParticipantPolicy.pinned_to(MEMBERS, roster_version=5).check_roster(4)


def test_the_coordinator_cannot_raise_the_budget_or_change_the_model():
    policy = ParticipantPolicy(max_epsilon=4.0, max_delta=1e-6, models=("all-minilm-l6-v2",), adapter_modes=("lora",))
    with pytest.raises(PolicyViolation, match=r"max_epsilon = 4.*epsilon 50"):
        policy.check_training(TrainingConfig.create(target_epsilon=50.0, target_delta=1e-6))
    with pytest.raises(PolicyViolation, match="max_delta"):
        policy.check_training(TrainingConfig.create(target_epsilon=2.0, target_delta=1e-5))
    with pytest.raises(PolicyViolation, match="adapter mode bitfit"):
        policy.check_training(TrainingConfig.create(target_epsilon=2.0, target_delta=1e-6, mode="bitfit"))
    with pytest.raises(PolicyViolation, match="model /elsewhere"):
        policy.check_training(TrainingConfig.create(target_epsilon=2.0, target_delta=1e-6, model_path="/elsewhere"))
    policy.check_training(
        TrainingConfig.create(target_epsilon=2.0, target_delta=1e-6, model_path="/opt/m"),
        local_models=["all-minilm-l6-v2"],
    )
    steps = ParticipantPolicy(max_local_steps=10, max_epsilon_per_round=1.0)
    with pytest.raises(PolicyViolation, match="11 steps a round"):
        steps.check_plan(steps_per_round=11, epsilon_increment=0.5)
    with pytest.raises(PolicyViolation, match="epsilon 1.5 this round"):
        steps.check_plan(steps_per_round=10, epsilon_increment=1.5)


def test_required_aggregate_noise_and_repeated_inputs():
    policy = ParticipantPolicy(aggregate_noise="skellam", max_participant_epsilon=5.0)
    with pytest.raises(PolicyViolation, match="no aggregate noise"):
        policy.check_aggregate_noise(None)
    with pytest.raises(PolicyViolation, match="aggregate noise discrete_gaussian"):
        policy.check_aggregate_noise({"mechanism": "discrete_gaussian", "epsilon": 1.0})
    with pytest.raises(PolicyViolation, match="participant-level epsilon 50"):
        policy.check_aggregate_noise({"mechanism": "skellam", "epsilon": 50.0})
    policy.check_aggregate_noise({"mechanism": "skellam", "epsilon": 5.0})
    ParticipantPolicy().check_aggregate_noise(None)
    refused = "--rounds asked for the same input in 2 rounds.*accept-differencing-risk"
    with pytest.raises(PolicyViolation, match=refused):
        ParticipantPolicy().check_repeated_input(2, accept_risk=False)
    ParticipantPolicy().check_repeated_input(2, accept_risk=True)
    ParticipantPolicy().check_repeated_input(1, accept_risk=False)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"security_mode": "malicious"}, "security_mode"),  # a string, not the enum
        ({"min_participants": True}, "min_participants: expected a positive integer"),
        ({"min_organisations": 0}, "min_organisations: expected a positive integer"),
        ({"min_roster_version": 1.5}, "min_roster_version: expected a positive integer"),
        ({"max_local_steps": 0}, "max_local_steps: expected a positive integer"),
        ({"min_participants": 1}, "min_participants: secure aggregation needs at least 2"),
        ({"max_epsilon": math.inf}, "max_epsilon: expected a positive number"),
        ({"max_epsilon": 0.0}, "max_epsilon: expected a positive number"),
        ({"max_epsilon_per_round": -1.0}, "max_epsilon_per_round: expected a positive number"),
        ({"max_delta": 1.0}, r"max_delta: expected a number in \(0, 1\)"),
        ({"max_delta": 0.0}, r"max_delta: expected a number in \(0, 1\)"),
        ({"aggregate_noise": "laplace", "max_participant_epsilon": 1.0}, "aggregate_noise: expected skellam"),
        ({"aggregate_noise": "skellam"}, "aggregate_noise and max_participant_epsilon go together"),
        ({"max_participant_epsilon": 1.0}, "aggregate_noise and max_participant_epsilon go together"),
        ({"adapter_modes": ()}, "adapter_modes: expected some of"),
        ({"adapter_modes": ("lora", "full")}, "adapter_modes: expected some of"),
        ({"members": frozenset({"bank", "hospital-a"})}, "members: 2 names, fewer than min_participants"),
    ],
)
def test_every_setting_is_checked_and_named(settings: dict[str, object], named: str):
    """A policy that cannot mean what it says is refused when it is made, naming the setting:
    an infinite budget, a zero delta or a list of two members for rounds of three would
    otherwise be accepted and enforced as written."""
    with pytest.raises(PolicyError, match=named):
        ParticipantPolicy(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "named"), [("members = [1, 2, 3]", "members"), ('models = "all-minilm-l6-v2"', "models")]
)
def test_a_list_that_is_not_of_names_is_refused_in_the_file(tmp_path: Path, line: str, named: str):
    path = tmp_path / "policy.toml"
    path.write_text(line + "\n")
    with pytest.raises(PolicyError, match=f"{named}: expected a list of strings"):
        ParticipantPolicy.load(path)


def test_the_budgets_are_limits_to_the_last_bit():
    """The largest epsilon and delta allowed are accepted and the next float above is refused:
    a limit enforced with any slack is a limit the coordinator can raise."""
    policy = ParticipantPolicy(max_epsilon=4.0, max_delta=1e-6, aggregate_noise="skellam", max_participant_epsilon=5.0)
    policy.check_training(TrainingConfig.create(target_epsilon=4.0, target_delta=1e-6))
    with pytest.raises(PolicyViolation, match="max_epsilon = 4"):
        policy.check_training(TrainingConfig.create(target_epsilon=math.nextafter(4.0, math.inf), target_delta=1e-6))
    with pytest.raises(PolicyViolation, match="max_delta"):
        policy.check_training(TrainingConfig.create(target_epsilon=4.0, target_delta=math.nextafter(1e-6, 1.0)))
    policy.check_aggregate_noise({"mechanism": "skellam", "epsilon": 5.0})
    with pytest.raises(PolicyViolation, match="max_participant_epsilon = 5"):
        policy.check_aggregate_noise({"mechanism": "skellam", "epsilon": math.nextafter(5.0, math.inf)})


@pytest.mark.parametrize("epsilon", [None, "1.0", math.nan, True])
def test_an_aggregate_noise_epsilon_that_is_not_a_number_is_refused(epsilon: object):
    """The coordinator's task is untrusted: an epsilon it sends as text, null or NaN is no
    smaller than the limit, whatever a comparison with it says."""
    policy = ParticipantPolicy(aggregate_noise="skellam", max_participant_epsilon=5.0)
    with pytest.raises(PolicyViolation, match="max_participant_epsilon = 5"):
        policy.check_aggregate_noise({"mechanism": "skellam", "epsilon": epsilon})


def test_a_round_listing_a_participant_twice_is_refused():
    """Three entries, two people: a name listed twice must not count twice towards
    min_participants (the wire refuses such a list too; the policy does not rely on it)."""
    policy = ParticipantPolicy.pinned_to(MEMBERS, roster_version=1)
    with pytest.raises(PolicyViolation, match="a round listing hospital-a twice"):
        policy.check_round(SecurityMode.MALICIOUS, ["bank", "hospital-a", "hospital-a"], ORGS, **COMPLETE)


def test_the_policy_can_allow_a_repeated_input():
    allowing = ParticipantPolicy(allow_repeated_input=True)
    allowing.check_repeated_input(3, accept_risk=False)

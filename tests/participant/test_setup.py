"""What a participant loads before it talks to the coordinator: credentials, roster, policy."""

from __future__ import annotations

import pytest

from fedmask import pki
from fedmask.participant.policy import ParticipantPolicy
from fedmask.participant.setup import SetupError, load_policy, policy_path, setup_connection
from fedmask.secagg.params import SecurityMode
from fedmask.testing import loopback

NAMES = ("hospital-a", "hospital-b", "bank")


@pytest.fixture
def federation(tmp_path):
    return loopback.make_federation(tmp_path / "federation", NAMES, organisations={"bank": "first-bank"})


def test_the_roster_and_organisations_come_from_the_participants_own_directory(federation):
    local = setup_connection(federation, "bank", "localhost:1")
    assert set(local.identity.enrolled_identity_keys) == set(NAMES)
    assert local.identity.organisations["bank"] == "first-bank"
    assert local.roster is not None and set(local.roster.entries) == set(NAMES)


def test_the_first_use_writes_the_safe_default_pinned_to_the_roster(federation):
    roster = pki.load_roster(federation, pki.load_ca_certificate(federation))
    lines: list[str] = []
    policy = load_policy(None, federation, "bank", roster, announce=lines.append)
    assert policy_path(federation, "bank").is_file() and lines and "members pinned" in lines[0]
    assert policy.security_mode is SecurityMode.MALICIOUS and policy.members == frozenset(NAMES)
    assert policy.min_roster_version == roster.version
    # The second use reads the file: an edit by the participant's operator sticks.
    ParticipantPolicy(max_epsilon=2.0).save(policy_path(federation, "bank"))
    assert load_policy(None, federation, "bank", roster).max_epsilon == 2.0


def test_an_older_roster_than_the_one_pinned_is_refused(federation, tmp_path):
    roster = pki.load_roster(federation, pki.load_ca_certificate(federation))
    pinned = tmp_path / "policy.toml"
    ParticipantPolicy.pinned_to(NAMES, roster.version + 1).save(pinned)
    with pytest.raises(SetupError, match="min_roster_version"):
        load_policy(pinned, federation, "bank", roster)
    with pytest.raises(SetupError, match="no policy file"):
        load_policy(tmp_path / "missing.toml", federation, "bank", roster)


@pytest.mark.parametrize("members", [(), ("bank",)])
def test_a_roster_too_small_to_pin_is_refused_and_nothing_is_written(tmp_path, members):
    """Pinned, a roster of fewer than two would refuse every later round: the participant is told
    to wait for the others, and no policy file is left behind."""
    federation = loopback.make_federation(tmp_path / "federation", members) if members else tmp_path / "federation"
    if not members:
        pki.init_federation(federation, federation_name="empty")
    roster = pki.load_roster(federation, pki.load_ca_certificate(federation))
    with pytest.raises(SetupError, match=rf"lists {len(members)} participant\(s\), too few to pin"):
        load_policy(None, federation, "bank", roster)
    assert not policy_path(federation, "bank").exists()


def test_a_name_outside_the_roster_is_refused_and_nothing_is_written(federation):
    roster = pki.load_roster(federation, pki.load_ca_certificate(federation))
    with pytest.raises(SetupError, match=r"^bnak is not in the roster \(version \d+: bank, hospital-a, hospital-b\)"):
        load_policy(None, federation, "bnak", roster)
    assert not policy_path(federation, "bnak").exists()

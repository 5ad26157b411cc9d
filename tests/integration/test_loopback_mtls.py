"""The coordinator and the participants as separate OS processes over loopback mutual TLS, with
certificates made by ``fedmask.pki`` for the test. The coordinator writes the sum to a file;
the test compares it bit for bit with the plaintext sum of the survivors' inputs, which it
recomputes out of band from their seeds (``fedmask participant join --synthetic-seed``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from fedmask.secagg.errors import Phase
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(180)
DIM = 100_000
NAMES = loopback.participant_names(10)
SEEDS = {name: 1000 + i for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return loopback.make_federation(tmp_path_factory.mktemp("fed") / "federation", NAMES)


@pytest.fixture
def processes() -> Iterator[list[loopback.Process]]:
    """Every process a test starts goes in here and is stopped, whatever happens."""
    started: list[loopback.Process] = []
    try:
        yield started
    finally:
        loopback.stop_all(started)


def run_round(federation, tmp_path, processes, names, *, victim=None, drop_before=None, **coordinator_args):
    """One round; ``victim`` stalls just before sending its ``drop_before`` message and is
    SIGKILLed there. Returns (coordinator summary, sum or None, exit codes by name)."""
    output = tmp_path / "sum.npy"
    coordinator = loopback.start_coordinator(federation, names, dimension=DIM, output=output, **coordinator_args)
    processes.append(coordinator)
    participants = {}
    for name in names:
        dropping = drop_before if name == victim else None
        participants[name] = loopback.start_participant(
            federation, name, coordinator.port, seed=SEEDS[name], drop_before=dropping
        )
        processes.append(participants[name])
    if victim is not None:
        participants[victim].wait_for_line(f"paused before {drop_before.value}", 60)
        participants[victim].kill()
    summary = coordinator.summary(120)
    codes = {name: p.wait(60) for name, p in participants.items()}
    result = np.load(output) if output.exists() else None
    return summary, result, codes, participants


def plaintext_sum(names) -> np.ndarray:
    return loopback.expected_sum((SEEDS[n] for n in names), DIM)


def test_ten_participant_processes_sum_exactly_over_mtls(federation, tmp_path, processes):
    summary, result, codes, participants = run_round(federation, tmp_path, processes, NAMES)
    assert summary["transport"] == "mtls"
    (round_,) = summary["rounds"]
    assert round_["completed"] and round_["survivors"] == NAMES and round_["dropped"] == {}
    assert result.dtype == np.uint32 and result.shape == (DIM,)
    np.testing.assert_array_equal(result, plaintext_sum(NAMES))
    assert codes == dict.fromkeys(NAMES, 0)
    for name, process in participants.items():
        (outcome,) = process.json_summary()["rounds"]
        assert outcome["completed"] and outcome["survivors"] == list(range(1, 11))
        assert outcome["bytes_sent"] == round_["bytes_received"][name]


# The victim's message of this phase is never sent. From masked-input on, its masked input is
# in the sum, so it counts as a survivor (its self mask is rebuilt from the others' shares).
KILLS = [
    pytest.param(Phase.ADVERTISE_KEYS, "semi-honest", False, id="advertise-keys"),
    pytest.param(Phase.SHARE_KEYS, "semi-honest", False, id="share-keys"),
    pytest.param(Phase.MASKED_INPUT, "semi-honest", False, id="masked-input"),
    pytest.param(Phase.CONSISTENCY_CHECK, "malicious", True, id="consistency-check"),
    pytest.param(Phase.UNMASK, "semi-honest", True, id="unmask"),
]


@pytest.mark.parametrize(("phase", "mode", "victim_in_sum"), KILLS)
def test_participant_killed_in_each_phase(federation, tmp_path, processes, phase, mode, victim_in_sum):
    names = NAMES[:6]  # t = 5 by default: one loss is survivable
    victim = names[2]
    summary, result, codes, _ = run_round(
        federation, tmp_path, processes, names, victim=victim, drop_before=phase, mode=mode
    )
    (round_,) = summary["rounds"]
    assert round_["completed"], round_
    survivors = list(names) if victim_in_sum else [n for n in names if n != victim]
    assert round_["survivors"] == survivors
    assert round_["dropped"][victim].startswith(f"[{phase.value}]")
    np.testing.assert_array_equal(result, plaintext_sum(survivors))
    assert all(code == 0 for name, code in codes.items() if name != victim)
    if mode == "malicious":
        assert "consistency-check" in round_["phase_s"]


def test_loss_below_threshold_aborts_with_the_reason(federation, tmp_path, processes):
    names = NAMES[:5]
    victim = names[0]
    summary, result, codes, participants = run_round(
        federation, tmp_path, processes, names, victim=victim, drop_before=Phase.SHARE_KEYS, threshold=5
    )
    (round_,) = summary["rounds"]
    reason = "only 4 participants responded, threshold is 5"
    assert not round_["completed"] and result is None
    assert (round_["abort_phase"], round_["abort_reason"]) == ("share-keys", reason)
    coordinator = processes[0]
    assert coordinator.popen.returncode == 3  # aborted; so do the participants that saw it
    for name in names[1:]:
        assert codes[name] == 3
        (outcome,) = participants[name].json_summary()["rounds"]
        assert outcome["reason"] == f"the coordinator aborted the round: {reason}"
        assert outcome["abort_phase"] == "share-keys"

"""The privacy ledger: Opacus accountant state persisted, epsilon accumulated, budget enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmask.participant.ledger import (
    LedgerError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    PrivacyPlan,
    compute_epsilon,
)

NOISE, RATE, DELTA = 0.9, 0.02, 1e-5


def _plan() -> PrivacyPlan:
    return PrivacyPlan(
        noise_multiplier=NOISE,
        sample_rate=RATE,
        steps_per_round=50,
        planned_rounds=3,
        num_records=1600,
        expected_batch_size=32,
        max_grad_norm=1.0,
    )


def _reference_epsilon(accountant: str, steps: int) -> float:
    reference = PRVAccountant() if accountant == "prv" else RDPAccountant()
    for _ in range(steps):
        reference.step(noise_multiplier=NOISE, sample_rate=RATE)
    return reference.get_epsilon(delta=DELTA)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_accumulates_across_restarts(tmp_path: Path, accountant: str) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, accountant=accountant, epsilon_budget=50, delta=DELTA)
    assert not path.exists() and ledger.steps == 0 and ledger.epsilon_spent == 0.0
    ledger.set_plan(_plan())
    first = ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, note="round 1")
    assert first == pytest.approx(_reference_epsilon(accountant, 50), rel=1e-9)

    # A restart: the accountant's history comes back from the file, so epsilon keeps growing.
    reopened = PrivacyLedger.open(path, accountant=accountant, epsilon_budget=50, delta=DELTA)
    assert reopened.steps == 50 and reopened.epsilon_spent == first
    assert reopened.accountant.state_dict()["history"] == [(NOISE, RATE, 50)]
    assert reopened.plan == _plan()
    second = reopened.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, note="round 2")
    assert second > first
    assert second == pytest.approx(_reference_epsilon(accountant, 100), rel=1e-9)

    stored = json.loads(path.read_text())
    assert stored["format"] == "fedmask-privacy-ledger/1"
    assert stored["accountant_state"]["history"] == [[NOISE, RATE, 100]]
    assert [e["note"] for e in stored["entries"]] == ["round 1", "round 2"]
    assert [e["total_steps_after"] for e in stored["entries"]] == [50, 100]
    assert compute_epsilon(accountant, [(NOISE, RATE, 100)], DELTA) == pytest.approx(second)


def test_refuses_past_budget_without_charging(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    budget = _reference_epsilon("rdp", 120)  # room for 120 steps, not 150
    ledger = PrivacyLedger.open(path, accountant="rdp", epsilon_budget=budget, delta=DELTA)
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=100)
    before = path.read_bytes()
    with pytest.raises(PrivacyBudgetExceeded, match=r"privacy budget exhausted: 100 steps") as info:
        ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50)
    message = str(info.value)
    assert "would reach epsilon=" in message and "Refusing to train" in message
    assert ledger.steps == 100 and path.read_bytes() == before  # nothing was charged
    # What still fits is accepted, and then nothing more.
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=20)
    reopened = PrivacyLedger.open(path, accountant="rdp", epsilon_budget=budget, delta=DELTA)
    with pytest.raises(PrivacyBudgetExceeded):
        reopened.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=1)


def test_other_terms_or_a_foreign_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    PrivacyLedger.open(path, accountant="rdp", epsilon_budget=8, delta=DELTA).charge(
        noise_multiplier=NOISE, sample_rate=RATE, steps=1
    )
    with pytest.raises(LedgerError, match="was made with accountant=rdp, epsilon budget=8"):
        PrivacyLedger.open(path, accountant="rdp", epsilon_budget=10, delta=DELTA)
    with pytest.raises(LedgerError, match="accountant=prv"):
        PrivacyLedger.open(path, accountant="prv", epsilon_budget=8, delta=DELTA)
    foreign = tmp_path / "other.json"
    foreign.write_text('{"hello": 1}')
    with pytest.raises(LedgerError, match="is not a fedmask-privacy-ledger/1 file"):
        PrivacyLedger.open(foreign, accountant="rdp", epsilon_budget=8, delta=DELTA)
    foreign.write_text("{not json")
    with pytest.raises(LedgerError, match="cannot read privacy ledger"):
        PrivacyLedger.open(foreign, accountant="rdp", epsilon_budget=8, delta=DELTA)
    with pytest.raises(LedgerError, match="unknown accountant"):
        PrivacyLedger(accountant="gdp", epsilon_budget=8, delta=DELTA)
    with pytest.raises(LedgerError, match="delta must be in"):
        PrivacyLedger(accountant="rdp", epsilon_budget=8, delta=0)


def test_plan_is_fixed_once_set(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=8, delta=DELTA)
    ledger.set_plan(_plan())
    ledger.set_plan(_plan())  # the same plan again is fine
    changed = PrivacyPlan(**{**_plan().__dict__, "noise_multiplier": 0.5})
    with pytest.raises(LedgerError, match="privacy plan is fixed"):
        ledger.set_plan(changed)
    assert _plan().planned_steps == 150


def test_an_update_that_never_left_is_refunded_and_a_retrain_is_charged_once(tmp_path):
    """The issue's double charge: a node killed while training for a round, restarted, trained
    again for the same round and was charged twice for one contribution. A pending charge (its
    output not released) is refunded on restart; the accounting stays write-ahead."""
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, note="round 1", release_tag="r1")
    ledger.mark_released("r1")
    after_round_1 = ledger.epsilon_spent
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, note="round 2", release_tag="r2")
    assert ledger.epsilon_spent > after_round_1  # charged before the steps run

    # The process dies while training round 2; a new one opens the ledger from disk.
    restarted = PrivacyLedger.open(path, accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    assert restarted.unreleased_tags == ["r2"]
    assert restarted.refund_unreleased() == 50
    assert restarted.epsilon_spent == pytest.approx(after_round_1, rel=1e-12)
    assert restarted.steps == 50
    restarted.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, note="round 2 again", release_tag="r2")
    restarted.mark_released("r2")
    # One charge per released update: as if round 2 had run once.
    assert restarted.epsilon_spent == pytest.approx(_reference_epsilon("rdp", 100), rel=1e-9)
    assert PrivacyLedger.open(path, accountant="rdp", epsilon_budget=8.0, delta=DELTA).refund_unreleased() == 0


def test_a_released_update_is_never_refunded(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=50, release_tag="r1")
    ledger.mark_released("r1")
    assert ledger.refund_unreleased("r1") == 0 and ledger.steps == 50
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=10)  # untagged: released at once
    assert ledger.refund_unreleased() == 0 and ledger.steps == 60
    with pytest.raises(LedgerError, match="no charge is tagged"):
        ledger.mark_released("r9")


def test_charges_inside_pending_release_are_tagged(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    with ledger.pending_release("r1"):
        ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=20)  # as a trainer would
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=10)  # outside: released at once
    assert ledger.unreleased_tags == ["r1"]
    assert ledger.refund_unreleased() == 20 and ledger.steps == 10
    with pytest.raises(LedgerError, match="non-empty"):
        with ledger.pending_release(""):
            pass


def test_epsilon_of_a_history_is_computed_once(monkeypatch) -> None:
    from fedmask.participant import ledger as ledger_module

    created: list[str] = []
    create = ledger_module.create_accountant

    def counting_create(mechanism: str):
        created.append(mechanism)
        return create(mechanism)

    monkeypatch.setattr(ledger_module, "create_accountant", counting_create)
    ledger_module._epsilon.cache_clear()
    history = [(NOISE, RATE, 37)]
    first = compute_epsilon("rdp", history, DELTA)
    assert first == _reference_epsilon("rdp", 37)
    # The same history again (as Opacus keeps it, or as tuples): the accountant is not asked twice.
    assert compute_epsilon("rdp", [(NOISE, RATE, 37)], DELTA) == first
    assert compute_epsilon("rdp", [[NOISE, RATE, 37]], DELTA) == first
    assert created == ["rdp"]
    # Anything that changes epsilon is another entry.
    assert compute_epsilon("rdp", [(NOISE, RATE, 38)], DELTA) > first
    assert compute_epsilon("rdp", history, DELTA * 10) < first
    assert created == ["rdp"] * 3


def test_a_refund_of_one_release_leaves_the_others_charged(tmp_path):
    """The training update of one round and the calibration release of another can both be
    pending; giving up on one must not make the other free."""
    ledger = PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=30, release_tag="r1")
    ledger.charge(noise_multiplier=NOISE, sample_rate=RATE, steps=20, release_tag="r2")
    assert ledger.refund_unreleased("r1") == 30
    assert ledger.unreleased_tags == ["r2"] and ledger.steps == 20
    assert ledger.epsilon_spent == pytest.approx(_reference_epsilon("rdp", 20), rel=1e-9)
    ledger.mark_released("r2")
    assert ledger.refund_unreleased() == 0 and ledger.steps == 20


@pytest.mark.parametrize("budget", [0.0, -1.0, float("inf"), float("nan")])
def test_a_budget_that_is_not_positive_and_finite_is_refused(tmp_path, budget):
    with pytest.raises(LedgerError, match="epsilon budget must be positive and finite"):
        PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=budget, delta=DELTA)
    assert not (tmp_path / "l.json").exists()


def test_checking_no_steps_is_refused(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", accountant="rdp", epsilon_budget=8.0, delta=DELTA)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        ledger.check(noise_multiplier=NOISE, sample_rate=RATE, steps=0)

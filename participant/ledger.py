"""The participant's record-level privacy ledger, persisted across rounds and restarts.

It holds an Opacus accountant (its ``state_dict``: the history of (noise multiplier, sample
rate, steps)), the (epsilon, delta) budget, the privacy plan fixed by the first training run
(noise multiplier, sample rate, steps per round, planned rounds), and one entry per training
run.

Steps are charged *before* they are taken (write-ahead): :meth:`PrivacyLedger.charge` adds them
to the accountant, checks the budget and saves the file atomically, and only then does training
start. A crash mid-round can therefore only over-count the privacy spent, never under-count it.

A charge made for a round's upload is *pending* until just before the update leaves (the node
calls :meth:`PrivacyLedger.mark_released`, saved before anything is sent). A pending charge whose
output never left (a crash mid-training, a round the coordinator abandoned) is refunded by
:meth:`PrivacyLedger.refund_unreleased`: nothing observed, nothing spent. So a crash and a
retrain of the same round is charged once, and a crash after release is never refunded.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import IAccountant, create_accountant

from fedmask.adapter.config import ACCOUNTANTS
from fedmask.durable import PRIVATE, write_atomic

LEDGER_FORMAT = "fedmask-privacy-ledger/1"
CALIBRATION_NOTE = "calibration release"  # the note of the charge for fedmask.adapter.calibration


class LedgerError(ValueError):
    """The ledger file is unreadable or does not belong to this configuration."""


class PrivacyBudgetExceeded(RuntimeError):
    """Training the requested steps would spend more than the ledger's epsilon budget."""


@dataclass(frozen=True)
class PrivacyPlan:
    """How noise is set for the whole schedule; fixed when the first round trains."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    num_records: int
    expected_batch_size: int
    max_grad_norm: float
    # The final calibration release's Gaussian noise multiplier (fedmask.adapter.calibration),
    # planned into the budget with the steps; None: no calibration.
    calibration_noise_multiplier: float | None = None

    @property
    def planned_steps(self) -> int:
        return self.steps_per_round * self.planned_rounds


def compute_epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a Poisson-subsampled Gaussian history under the named Opacus accountant."""
    if not history:
        return 0.0
    return _epsilon(accountant, tuple((float(s), float(q), int(n)) for s, q, n in history), delta)


@functools.lru_cache(maxsize=256)
def _epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    # A pure function of its arguments, and seconds a call under PRV: a round asks it twice for
    # the same history (the policy's projection, then the charge), and trainers with the same
    # plan (the demo's baselines) ask it for the same histories.
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with unsampled_events_allowed():
        return float(acc.get_epsilon(delta=delta))


@contextmanager
def unsampled_events_allowed() -> Iterator[None]:
    """An unsampled Gaussian event (sample rate 1: the calibration release) makes Opacus' PRV
    accountant take log(1 - q) = log(0) on the way to a correct result; numpy warns about it."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


class PrivacyLedger:
    """An Opacus accountant plus budget and plan, optionally backed by a JSON file."""

    def __init__(
        self,
        *,
        accountant: str,
        epsilon_budget: float,
        delta: float,
        path: str | Path | None = None,
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise LedgerError(f"unknown accountant {accountant!r}; expected one of {ACCOUNTANTS}")
        if not (epsilon_budget > 0 and math.isfinite(epsilon_budget)):
            raise LedgerError(f"epsilon budget must be positive and finite, got {epsilon_budget}")
        if not 0 < delta < 1:
            raise LedgerError(f"delta must be in (0, 1), got {delta}")
        self.accountant_name = accountant
        self.epsilon_budget = float(epsilon_budget)
        self.delta = float(delta)
        self.path = Path(path) if path is not None else None
        self.accountant: IAccountant = create_accountant(mechanism=accountant)
        self.plan: PrivacyPlan | None = None
        self.entries: list[dict[str, Any]] = []
        self._epsilon_spent = 0.0
        self._pending_tag: str | None = None

    # ------------------------------------------------------------------ persistence

    @classmethod
    def open(cls, path: str | Path, *, accountant: str, epsilon_budget: float, delta: float) -> PrivacyLedger:
        """Load the ledger at ``path``, or start an empty one there (written on first charge).

        An existing ledger must have been made with the same accountant, budget and delta:
        silently continuing under other terms would misstate the guarantee.
        """
        ledger = cls(accountant=accountant, epsilon_budget=epsilon_budget, delta=delta, path=path)
        path = Path(path)
        if not path.exists():
            return ledger
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
            raise LedgerError(f"cannot read privacy ledger {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{path} is not a {LEDGER_FORMAT} file")
        stored = (data["accountant"], float(data["epsilon_budget"]), float(data["delta"]))
        wanted = (accountant, float(epsilon_budget), float(delta))
        if stored != wanted:
            raise LedgerError(
                f"privacy ledger {path} was made with accountant={stored[0]}, "
                f"epsilon budget={stored[1]:g}, delta={stored[2]:g}; this run asks for "
                f"accountant={wanted[0]}, epsilon budget={wanted[1]:g}, delta={wanted[2]:g}. "
                "Use the ledger's terms or a new ledger file."
            )
        state = data["accountant_state"]
        state["history"] = [tuple(h) for h in state["history"]]
        ledger.accountant.load_state_dict(state)
        ledger.plan = PrivacyPlan(**data["plan"]) if data.get("plan") else None
        ledger.entries = list(data.get("entries", []))
        ledger._epsilon_spent = float(data.get("epsilon_spent", 0.0))
        return ledger

    def to_json(self) -> dict[str, Any]:
        state = self.accountant.state_dict()
        return {
            "format": LEDGER_FORMAT,
            "accountant": self.accountant_name,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "epsilon_spent": self._epsilon_spent,
            "steps": self.steps,
            "plan": asdict(self.plan) if self.plan else None,
            "accountant_state": {
                "mechanism": state["mechanism"],
                "history": [list(h) for h in state["history"]],
            },
            "entries": self.entries,
        }

    def save(self) -> None:
        """Write the ledger atomically and durably (``fedmask.durable``); no-op without a path."""
        if self.path is None:
            return
        write_atomic(self.path, json.dumps(self.to_json(), indent=2).encode("utf-8"), mode=PRIVATE)

    # ------------------------------------------------------------------ accounting

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [tuple(h) for h in self.accountant.history]

    @property
    def steps(self) -> int:
        return sum(int(h[2]) for h in self.accountant.history)

    @property
    def epsilon_spent(self) -> float:
        """Epsilon (at the ledger's delta) of every step charged so far."""
        return self._epsilon_spent

    def set_plan(self, plan: PrivacyPlan) -> None:
        if self.plan is not None and self.plan != plan:
            raise LedgerError(f"the privacy plan is fixed once training starts: have {self.plan}, got {plan}")
        self.plan = plan
        self.save()

    def projected_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after ``steps`` more steps at (noise_multiplier, sample_rate)."""
        trial = create_accountant(mechanism=self.accountant_name)
        trial.history = self.history
        for _ in range(steps):
            trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return compute_epsilon(self.accountant_name, trial.history, self.delta)

    def check(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """The epsilon after ``steps`` more steps; raises if that exceeds the budget.

        Charges nothing: lets a caller refuse before it loads a model.
        """
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        projected = self.projected_epsilon(noise_multiplier, sample_rate, steps)
        if projected > self.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: {self.steps} steps so far have spent "
                f"epsilon={self._epsilon_spent:.4g} (delta={self.delta:g}, "
                f"{self.accountant_name} accountant); {steps} more steps at noise multiplier "
                f"{noise_multiplier:.4g} and sample rate {sample_rate:.4g} would reach "
                f"epsilon={projected:.4g}, over the budget of {self.epsilon_budget:g}. "
                "Refusing to train."
            )
        return projected

    def charge(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        note: str = "",
        release_tag: str | None = None,
    ) -> float:
        """Charge ``steps`` DP-SGD steps before they run; refuse if the budget would be exceeded.

        Returns the epsilon spent once those steps are taken. With ``release_tag`` the charge is
        pending until ``mark_released(release_tag)``: the steps' output has not left the
        participant yet, and if it never does (the process dies, the round moves on), the charge
        is refunded by ``refund_unreleased``. Without a tag the output counts as released at once.
        """
        if release_tag is None:
            release_tag = self._pending_tag
        projected = self.check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        for _ in range(steps):
            self.accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        self._epsilon_spent = projected
        self.entries.append(
            {
                "entry": len(self.entries) + 1,
                "note": note,
                "steps": steps,
                "noise_multiplier": noise_multiplier,
                "sample_rate": sample_rate,
                "epsilon_after": projected,
                "total_steps_after": self.steps,
                "release_tag": release_tag,
                "released": release_tag is None,
            }
        )
        self.save()
        return projected

    @contextmanager
    def pending_release(self, release_tag: str) -> Iterator[None]:
        """Every charge made inside is pending under ``release_tag`` (as if passed to ``charge``),
        so a caller that does not make the charges itself (a trainer) still tags them."""
        if not release_tag:
            raise LedgerError("a release tag must be a non-empty string")
        previous, self._pending_tag = self._pending_tag, release_tag
        try:
            yield
        finally:
            self._pending_tag = previous

    def mark_released(self, release_tag: str) -> None:
        """The output of the charges tagged ``release_tag`` is about to leave the participant: from
        now on they are never refunded. Saved before the caller sends anything."""
        tagged = [e for e in self.entries if e.get("release_tag") == release_tag]
        if not tagged:
            raise LedgerError(f"no charge is tagged {release_tag!r}")
        for entry in tagged:
            entry["released"] = True
        self.save()

    def refund_unreleased(self, release_tag: str | None = None) -> int:
        """Drop the pending charges (all, or those tagged ``release_tag``) whose output never left
        the participant; returns the steps refunded. What was never released was never observed,
        so it costs no privacy; the accountant is rebuilt from the charges that remain."""

        def pending(entry: dict[str, Any]) -> bool:
            unreleased = entry.get("released", True) is False
            return unreleased and (release_tag is None or entry.get("release_tag") == release_tag)

        refunded = [e for e in self.entries if pending(e)]
        if not refunded:
            return 0
        kept = [e for e in self.entries if not pending(e)]
        accountant = create_accountant(mechanism=self.accountant_name)
        for entry in kept:
            for _ in range(int(entry["steps"])):
                accountant.step(noise_multiplier=entry["noise_multiplier"], sample_rate=entry["sample_rate"])
        self.accountant = accountant
        self.entries = kept
        self._epsilon_spent = compute_epsilon(self.accountant_name, self.history, self.delta) if kept else 0.0
        self.save()
        return sum(int(e["steps"]) for e in refunded)

    @staticmethod
    def was_released(path: str | Path, release_tag: str) -> bool:
        """Whether the ledger at ``path`` holds a released charge tagged ``release_tag`` (read
        without opening the accountant; a missing file has released nothing)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
            raise LedgerError(f"cannot read privacy ledger {path}: {exc}") from None
        entries = data.get("entries", []) if isinstance(data, dict) else []
        return any(e.get("release_tag") == release_tag and e.get("released", True) for e in entries)

    @property
    def training_charges(self) -> int:
        """Charges made for training rounds (the calibration release is not one)."""
        return sum(1 for entry in self.entries if entry.get("note") != CALIBRATION_NOTE)

    @property
    def unreleased_tags(self) -> list[str]:
        return sorted({e["release_tag"] for e in self.entries if e.get("released", True) is False})

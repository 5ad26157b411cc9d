"""Held-out metrics that travel inside the masked vector, so the coordinator learns only sums.

A participant's held-out results and its number of training records depend on its records; sent
in the clear, they would tell the coordinator something about one party's data outside every DP
guarantee. Instead the participant appends them, as non-negative integers, to its encoded update:
secure aggregation adds them up with everything else, and the coordinator reads the totals over
the survivors (e.g. the held-out accuracy of the adapter over all survivors' splits).

    [ encoded update (d values) | heldout_correct | heldout_count | heldout_loss_fixed | train_records ]

The loss is carried in fixed point (``LOSS_SCALE``, each record's loss capped at
``MAX_RECORD_LOSS``). Each value is capped so that the sum over ``n`` participants stays below
2^(b-1): then the unmasked totals are exact, and a total above n times the cap shows a participant
did not follow the encoding. With distributed DP (aggregate noise) nothing is appended: the noise
is calibrated for the update alone, and exact totals would fall outside the participant-level
guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmask.secagg.encoding import ImplausibleSum
from fedmask.secagg.prg import dtype_for_bits

METRIC_NAMES: tuple[str, ...] = ("heldout_correct", "heldout_count", "heldout_loss_fixed", "train_records")
METRIC_COORDINATES = len(METRIC_NAMES)
LOSS_SCALE = 256  # 1/256 nat
MAX_RECORD_LOSS = 64.0


@dataclass(frozen=True)
class RoundMetrics:
    """One participant's figures, or (decoded) the totals over the survivors."""

    heldout_correct: int  # records (classification) or tokens (causal LM) predicted right
    heldout_count: int
    heldout_loss_sum: float  # sum of per-record (per-token) held-out loss, nats
    train_records: int

    @property
    def accuracy(self) -> float | None:
        return self.heldout_correct / self.heldout_count if self.heldout_count else None

    @property
    def mean_loss(self) -> float | None:
        return self.heldout_loss_sum / self.heldout_count if self.heldout_count else None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "heldout_accuracy": self.accuracy,
            "heldout_loss": self.mean_loss,
            "heldout_count": self.heldout_count,
            "train_records": self.train_records,
        }


def per_participant_cap(modulus_bits: int, participants: int) -> int:
    """The largest value one participant may put in a metric coordinate: n of them sum below 2^(b-1)."""
    if participants < 1:
        raise ValueError("participants must be at least 1")
    return ((1 << (modulus_bits - 1)) - 1) // participants


def encode_metrics(metrics: RoundMetrics, modulus_bits: int, participants: int) -> np.ndarray:
    """The metric coordinates of one participant, capped (see the module docstring)."""
    cap = per_participant_cap(modulus_bits, participants)
    mean_loss = metrics.heldout_loss_sum / metrics.heldout_count if metrics.heldout_count else 0.0
    loss_fixed = round(min(max(mean_loss, 0.0), MAX_RECORD_LOSS) * LOSS_SCALE) * metrics.heldout_count
    values = (metrics.heldout_correct, metrics.heldout_count, loss_fixed, metrics.train_records)
    if any(v < 0 for v in values) or metrics.heldout_correct > metrics.heldout_count:
        raise ValueError(f"metrics must be non-negative counts with correct <= count, got {metrics}")
    return np.array([min(v, cap) for v in values], dtype=dtype_for_bits(modulus_bits))


def decode_metrics(totals: np.ndarray, modulus_bits: int, participants: int, survivors: int) -> RoundMetrics:
    """The survivors' totals; refuses totals no honest encodings can produce (``ImplausibleSum``)."""
    values = [int(v) for v in np.asarray(totals)]
    if len(values) != METRIC_COORDINATES:
        raise ValueError(f"expected {METRIC_COORDINATES} metric coordinates, got {len(values)}")
    bound = survivors * per_participant_cap(modulus_bits, participants)
    correct, count, loss_fixed, train_records = values
    if max(values) > bound or correct > count or loss_fixed > count * math.ceil(MAX_RECORD_LOSS * LOSS_SCALE):
        raise ImplausibleSum(f"the metric totals {values} cannot come from {survivors} participants")
    return RoundMetrics(correct, count, loss_fixed / LOSS_SCALE, train_records)

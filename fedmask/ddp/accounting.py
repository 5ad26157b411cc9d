"""Participant-level privacy of the aggregates: Renyi DP of the noise in the unmasked sum.

The coordinator sees the sum of the survivors' encoded updates plus the sum of their noise
shares. Neighbouring inputs differ in one participant's update (replaced by zero, its noise
share still in the sum); after conditional rounding that update is an integer vector of L2 norm
at most Delta_2, hence L1 norm at most min(sqrt(d) Delta_2, Delta_2^2). Bounds, for integer
orders alpha > 1:

- Skellam (Agarwal, Kairouz, Liu, NeurIPS 2021, Theorem 3.5 / Corollary 3.6): the sum of s
  symmetric Skellam shares of variance v is Skellam of variance V = s v, and
      eps(alpha) <= alpha Delta_2^2 / (2V) + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 V^2),
                                                 3 Delta_1 / (2V)).
- distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021, Theorem 1 with the RDP form
  of their Section 4): s shares N_Z(0, sigma^2), tau = 10 sum_{k=1}^{s-1} exp(-2 pi^2 sigma^2
  k/(k+1)), a = Delta_2 / (sqrt(s) sigma), b = Delta_1 / (sqrt(s) sigma), d the dimension:
      eps(alpha) <= min(alpha a^2 / 2 + tau d,
                        alpha (a^2 + 2 b tau + tau^2 d) / 2,
                        alpha (a + tau sqrt(d))^2 / 2).
- the Gaussian mechanism, for comparison: alpha Delta_2^2 / (2 V).

Rounds compose by adding RDP. (eps, delta) comes from the conversion of Canonne, Kamath and
Steinke (2020, Proposition 12; also Asoodeh et al. 2020):
    eps = min_alpha  rdp(alpha) + ln(1 - 1/alpha) - (ln delta + ln alpha) / (alpha - 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

# Integer orders only: the Skellam bound is proved for integer alpha.
RDP_ORDERS: tuple[int, ...] = tuple(range(2, 65)) + tuple(range(68, 257, 4)) + (288, 320, 384, 448, 512, 640, 768, 1024)

SKELLAM = "skellam"
DISCRETE_GAUSSIAN = "discrete_gaussian"
NONE = "none"
MECHANISMS = (NONE, SKELLAM, DISCRETE_GAUSSIAN)


def _orders(orders: Sequence[int] | None) -> np.ndarray:
    return np.asarray(RDP_ORDERS if orders is None else orders, dtype=np.float64)


def gaussian_rdp(l2_sensitivity_sq: float, variance: float, orders: Sequence[int] | None = None) -> np.ndarray:
    """RDP of the Gaussian mechanism with L2 sensitivity^2 ``l2_sensitivity_sq``."""
    return _orders(orders) * l2_sensitivity_sq / (2 * variance)


def skellam_rdp(
    l2_sensitivity_sq: float, l1_sensitivity: float, central_variance: float, orders: Sequence[int] | None = None
) -> np.ndarray:
    """RDP of the Skellam mechanism whose noise (in the sum) has variance ``central_variance``."""
    alpha = _orders(orders)
    v = central_variance
    surcharge = np.minimum(
        ((2 * alpha - 1) * l2_sensitivity_sq + 6 * l1_sensitivity) / (4 * v * v),
        3 * l1_sensitivity / (2 * v),
    )
    return alpha * l2_sensitivity_sq / (2 * v) + surcharge


def distributed_discrete_gaussian_rdp(
    l2_sensitivity_sq: float,
    l1_sensitivity: float,
    local_variance: float,
    survivors: int,
    dimension: int,
    orders: Sequence[int] | None = None,
) -> np.ndarray:
    """RDP of the sum of ``survivors`` independent N_Z(0, local_variance) vectors."""
    alpha = _orders(orders)
    k = np.arange(1, survivors, dtype=np.float64)
    tau = 10.0 * float(np.sum(np.exp(-2 * math.pi**2 * local_variance * k / (k + 1))))
    central_sd = math.sqrt(survivors * local_variance)
    a = math.sqrt(l2_sensitivity_sq) / central_sd
    b = l1_sensitivity / central_sd
    rdp: npt.NDArray[np.float64] = np.minimum.reduce(
        [
            alpha * a * a / 2 + tau * dimension,
            alpha * (a * a + 2 * b * tau + tau * tau * dimension) / 2,
            alpha * (a + tau * math.sqrt(dimension)) ** 2 / 2,
        ]
    )
    return rdp


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: Sequence[int] | None = None) -> tuple[float, int]:
    """(eps, best order) for an RDP curve at the given delta."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    alpha = _orders(orders)
    rdp = np.asarray(rdp, dtype=np.float64)
    if rdp.shape != alpha.shape:
        raise ValueError("one RDP value per order")
    if np.any(np.isnan(rdp)) or np.any(rdp < 0):
        raise ValueError("RDP values must be non-negative numbers")
    with np.errstate(invalid="ignore"):
        eps = rdp + np.log1p(-1 / alpha) - (math.log(delta) + np.log(alpha)) / (alpha - 1)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), int(alpha[best])


@dataclass(frozen=True)
class NoiseRecord:
    """The noise the coordinator's view of one round carried, as the ledger records it."""

    mechanism: str
    survivors: int
    local_variance: float  # per participant and coordinate, integer units
    l2_sensitivity_sq: int  # Delta_2^2 of one participant's rounded vector, integer units
    l1_sensitivity: float
    dimension: int  # coordinates the noise was added to (the padded dimension)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if not (isinstance(self.survivors, int) and self.survivors >= 1):
            raise ValueError(f"survivors must be a positive integer, got {self.survivors!r}")
        for name in ("local_variance", "l1_sensitivity"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if not (isinstance(self.l2_sensitivity_sq, int) and self.l2_sensitivity_sq >= 1):
            raise ValueError(f"l2_sensitivity_sq must be a positive integer, got {self.l2_sensitivity_sq!r}")
        if not (isinstance(self.dimension, int) and self.dimension >= 1):
            raise ValueError(f"dimension must be a positive integer, got {self.dimension!r}")
        if self.mechanism != NONE and self.local_variance <= 0:
            raise ValueError(f"{self.mechanism} needs a positive local_variance")

    def rdp(self, orders: Sequence[int] | None = None) -> np.ndarray:
        if self.mechanism == NONE:
            return np.full(len(_orders(orders)), np.inf)
        if self.mechanism == SKELLAM:
            return skellam_rdp(
                self.l2_sensitivity_sq, self.l1_sensitivity, self.survivors * self.local_variance, orders
            )
        return distributed_discrete_gaussian_rdp(
            self.l2_sensitivity_sq, self.l1_sensitivity, self.local_variance, self.survivors, self.dimension, orders
        )

    def epsilon(self, delta: float) -> float:
        if self.mechanism == NONE:
            return math.inf
        return epsilon_from_rdp(self.rdp(), delta)[0]


@dataclass(frozen=True)
class RoundPrivacy:
    round_epsilon: float
    cumulative_epsilon: float
    delta: float


class DistributedDPAccountant:
    """Participant-level (eps, delta) of everything the coordinator has seen, round by round.

    Shaped like Opacus' accountants: ``step`` records a round, ``get_epsilon`` converts the
    composed RDP, ``state_dict``/``load_state_dict`` persist the history (the ledger keeps the
    same records, so the two can be compared).
    """

    def __init__(self, delta: float) -> None:
        if not (isinstance(delta, float) and 0 < delta < 1):
            raise ValueError(f"delta must be a float in (0, 1), got {delta!r}")
        self.delta = delta
        self.history: list[NoiseRecord] = []
        self._rdp = np.zeros(len(RDP_ORDERS))

    def step(self, record: NoiseRecord) -> RoundPrivacy:
        """Add one round; returns its own epsilon and the cumulative epsilon after it."""
        if not isinstance(record, NoiseRecord):
            raise TypeError("step takes a NoiseRecord")
        rdp = record.rdp()
        self.history.append(record)
        self._rdp = self._rdp + rdp
        return RoundPrivacy(record.epsilon(self.delta), self.get_epsilon(), self.delta)

    def get_epsilon(self, delta: float | None = None) -> float:
        if not self.history:
            return 0.0
        if np.any(np.isinf(self._rdp)):
            return math.inf
        return epsilon_from_rdp(self._rdp, self.delta if delta is None else delta)[0]

    def __len__(self) -> int:
        return len(self.history)

    def state_dict(self) -> dict[str, object]:
        return {"version": 1, "delta": self.delta, "history": [asdict(r) for r in self.history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the history with a saved one (validated record by record)."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError("not a version-1 DistributedDPAccountant state")
        delta = state.get("delta")
        if delta != self.delta:
            raise ValueError(f"the saved state is for delta={delta!r}, this accountant uses {self.delta}")
        history = state.get("history")
        if not isinstance(history, list):
            raise ValueError("state['history'] must be a list")
        records = []
        for i, raw in enumerate(history):
            if not isinstance(raw, Mapping) or set(raw) != set(NoiseRecord.__dataclass_fields__):
                raise ValueError(f"history entry {i} does not have the fields of a NoiseRecord")
            records.append(NoiseRecord(**raw))
        self.history = records
        self._rdp = np.zeros(len(RDP_ORDERS))
        for record in records:
            self._rdp = self._rdp + record.rdp()

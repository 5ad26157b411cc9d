"""Round parameters, validated up front. Nothing here has a silent default that matters:
every value that changes security or correctness is stated by the caller and echoed back by
``describe()`` for the ledger.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from dataclasses import dataclass

from .errors import ParameterError

MAX_PARTICIPANT_ID = (1 << 32) - 1


class SecurityMode(enum.Enum):
    """SEMI_HONEST: the classic protocol (honest-but-curious server).
    MALICIOUS: adds signed key advertisements (identity keys enrolled out of band) and the
    consistency check, so a lying server cannot obtain both shares of one participant."""

    SEMI_HONEST = "semi-honest"
    MALICIOUS = "malicious"


@dataclass(frozen=True)
class ProtocolParams:
    """What every party of a round must agree on.

    ``neighbours`` is None for the complete graph (classic SecAgg) or the degree k of the
    SecAgg+ Harary graph. ``threshold`` t: a secret is rebuilt from t shares, and the round
    needs at least t participants at every phase.
    """

    dimension: int
    modulus_bits: int
    threshold: int
    mode: SecurityMode
    neighbours: int | None = None

    def validate(self, num_participants: int) -> None:
        if not 1 <= self.dimension <= 1 << 31:
            raise ParameterError(f"dimension must be in [1, 2^31], got {self.dimension}")
        if not 1 <= self.modulus_bits <= 64:
            raise ParameterError(f"modulus_bits must be in [1, 64], got {self.modulus_bits}")
        if not isinstance(self.mode, SecurityMode):
            raise ParameterError(f"mode must be a SecurityMode, got {self.mode!r}")
        if num_participants < 2:
            raise ParameterError("secure aggregation needs at least 2 participants")
        if num_participants > MAX_PARTICIPANT_ID:
            raise ParameterError(f"at most {MAX_PARTICIPANT_ID} participants")
        holders = self.holders_per_secret(num_participants)
        if not 2 <= self.threshold <= holders:
            raise ParameterError(f"threshold must be in [2, {holders}] (shares per secret), got {self.threshold}")
        # A threshold at or below half the holders lets two disjoint groups each rebuild a
        # secret: a server telling each group a different story (u survived / u dropped) could
        # then get b_u from one and s_u from the other, in either mode.
        if 2 * self.threshold <= holders:
            raise ParameterError(f"the threshold must exceed half the holders, {holders / 2:g}; got {self.threshold}")

    def holders_per_secret(self, num_participants: int) -> int:
        """Shares of each secret: the participant itself plus its neighbours."""
        if self.neighbours is None or self.neighbours >= num_participants - 1:
            return num_participants
        if self.neighbours < 2:
            raise ParameterError(f"the SecAgg+ graph needs degree >= 2, got {self.neighbours}")
        return self.neighbours + 1

    def digest(self) -> bytes:
        """A canonical hash of the parameters, folded into the session id."""
        packed = struct.pack(
            ">QBIQ16s",
            self.dimension,
            self.modulus_bits,
            self.threshold,
            0 if self.neighbours is None else self.neighbours,
            self.mode.value.encode().ljust(16, b"\0"),
        )
        return hashlib.sha256(b"fedmask/secagg/v1/params" + packed).digest()

    def describe(self) -> dict[str, int | str]:
        return {
            "dimension": self.dimension,
            "modulus_bits": self.modulus_bits,
            "threshold": self.threshold,
            "mode": self.mode.value,
            "graph": "complete" if self.neighbours is None else f"harary-{self.neighbours}",
        }


def check_graph_degree(neighbours: int | None, num_participants: int) -> None:
    """Refuse a SecAgg+ degree that a fixed set of ``num_participants`` cannot have.

    ``holders_per_secret`` reads any k >= n - 1 as the complete graph (a federation's round may
    be smaller than the degree it was configured with); where the participants are fixed, a
    k >= n is a mistake that would otherwise be reported as a Harary graph the round never used."""
    if neighbours is not None and neighbours >= num_participants:
        raise ParameterError(
            f"the SecAgg+ graph on {num_participants} participants needs degree < {num_participants}"
            f" (each has at most {num_participants - 1} neighbours), got {neighbours}"
        )


def default_threshold(num_participants: int, mode: SecurityMode, holders: int | None = None) -> int:
    """A threshold that tolerates up to a third of the holders dropping out: floor(2h/3) + 1.

    Strictly more than half the holders, as the malicious-server mode requires."""
    h = num_participants if holders is None else holders
    return max(2, (2 * h) // 3 + 1)


@dataclass(frozen=True)
class Headroom:
    """How far the worst-case sum stays from wrapping around 2^b."""

    max_abs_sum: int
    bits_needed: float
    modulus_bits: int

    @property
    def bits(self) -> float:
        return self.modulus_bits - self.bits_needed


@dataclass(frozen=True)
class EncodingParams:
    """Float -> integer encoding: clip to L2 norm ``clip_norm``, multiply by ``scale``,
    round randomly to an integer, reduce mod 2^``modulus_bits``."""

    clip_norm: float
    scale: float
    modulus_bits: int

    def validate(self, num_participants: int) -> Headroom:
        """Refuse parameters whose sum over ``num_participants`` could wrap; report the headroom.

        After L2 clipping every coordinate is at most C in magnitude; scaling and rounding up
        make it at most ceil(C * scale); the sum of n such values lies in [-M, M] with
        M = n * ceil(C * scale), which is exact mod 2^b iff 2M + 1 <= 2^b.
        """
        for name in ("clip_norm", "scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ParameterError(f"{name} must be a positive finite number, got {value!r}")
        if not 2 <= self.modulus_bits <= 64:
            raise ParameterError(f"modulus_bits must be in [2, 64], got {self.modulus_bits}")
        if num_participants < 1:
            raise ParameterError("num_participants must be at least 1")
        per_coordinate = math.ceil(self.clip_norm * self.scale)
        max_abs_sum = num_participants * per_coordinate
        bits_needed = math.log2(2 * max_abs_sum + 1)
        headroom = Headroom(max_abs_sum, bits_needed, self.modulus_bits)
        if 2 * max_abs_sum + 1 > 1 << self.modulus_bits:
            raise ParameterError(
                f"the sum of {num_participants} updates can reach +/-{max_abs_sum}, which needs "
                f"{bits_needed:.1f} bits but the modulus has {self.modulus_bits} "
                f"(headroom {headroom.bits:.1f} bits): lower scale or clip_norm, or raise modulus_bits"
            )
        return headroom

    def describe(self) -> dict[str, float]:
        return {"clip_norm": self.clip_norm, "scale": self.scale, "modulus_bits": self.modulus_bits}

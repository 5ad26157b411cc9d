"""Why an attempt of a federated round ended without a committed sum, as a bounded set of kinds:
the metrics' ``reason_kind`` label and what the shell reports. Secure aggregation states why it
aborted as data (``AbortKind``); the shell adds its own reasons (an operator's stop, a refused
sum). No kind is worked out from a reason's text, which is for people and may be reworded."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from fedmask.secagg.errors import AbortKind


class AttemptAbort(enum.Enum):
    BELOW_THRESHOLD = "below_threshold"  # too few participants joined or answered
    MISBEHAVIOUR = "misbehaviour"  # a participant was proven to, or accused of, sending bad messages
    UNSAFE_ROUND = "unsafe_round"  # no safe round of this shape (e.g. no graph of the degree)
    IMPLAUSIBLE_SUM = "implausible_sum"  # the sum could not come from clipped, encoded updates
    TOO_FEW_SELECTABLE = "too_few_selectable"  # exclusions and revocations left too few to select
    OPERATOR = "operator"  # stopped by the operator
    CALIBRATION = "calibration"  # the calibration release had nothing to calibrate
    OTHER = "other"  # a protocol kind a server never raises (the table stays total)


# Every kind a secure-aggregation abort can carry, as the attempt's kind.
FROM_PROTOCOL: Mapping[AbortKind, AttemptAbort] = MappingProxyType(
    {
        AbortKind.BELOW_THRESHOLD: AttemptAbort.BELOW_THRESHOLD,
        AbortKind.MISBEHAVIOUR: AttemptAbort.MISBEHAVIOUR,
        AbortKind.UNSAFE_ROUND: AttemptAbort.UNSAFE_ROUND,
        AbortKind.INCONSISTENT: AttemptAbort.OTHER,  # a client's view of a lying server
        AbortKind.PEER_ABORTED: AttemptAbort.OTHER,  # a client's: the server ended the round
        AbortKind.LOCAL: AttemptAbort.OTHER,  # a caller's misuse of the state machine
    }
)

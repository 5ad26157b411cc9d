"""Errors and the phase vocabulary shared by every secagg module.

Two kinds of failure are kept apart:
- ``InvalidMessage``: one message is rejected. The state machine is unchanged; the I/O shell
  answers the sender with the reason and, on the server, treats the sender as dropped.
- ``ProtocolAbort``: the round cannot continue (too few participants, a lying server, ...).
  Every abort names the phase it happened in and a reason a person can act on.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Phase(enum.Enum):
    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    # Only after a complaint about a share envelope: the accused open the envelopes in question,
    # the server decides who misbehaved, and the round aborts naming them.
    COMPLAINTS = "complaints"
    COMPLETED = "completed"
    ABORTED = "aborted"


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ParameterError(SecAggError, ValueError):
    """Parameters that are inconsistent or unsafe (e.g. a sum that could wrap around 2^b)."""


class ShamirError(SecAggError, ValueError):
    """Malformed shares, or too few of them to reconstruct."""


class CryptoError(SecAggError):
    """A cryptographic check failed: bad key, failed decryption, bad signature."""


class Rejection(enum.Enum):
    """Why one message was rejected, for the I/O shell to map to a transport status in one table."""

    ROUND_OVER = "round-over"  # the round has completed or aborted
    WRONG_PHASE = "wrong-phase"  # a message of another phase
    DUPLICATE = "duplicate"  # the sender already sent this message, in this phase or an earlier one
    NOT_EXPECTED = "not-expected"  # the sender is not, or no longer, a participant of this phase
    WRONG_SESSION = "wrong-session"  # a message of another round or session
    INVALID = "invalid"  # the content fails validation


class InvalidMessage(SecAggError):
    """One message was rejected before use; nothing in the state machine changed."""

    def __init__(
        self, phase: Phase, reason: str, *, sender: int | None = None, kind: Rejection = Rejection.INVALID
    ) -> None:
        self.phase = phase
        self.reason = reason
        self.sender = sender
        self.kind = kind
        who = f" from participant {sender}" if sender is not None else ""
        super().__init__(f"[{phase.value}] rejected message{who}: {reason}")


class AbortKind(enum.Enum):
    """Why a round was aborted, as data: a shell counts, reports and reacts to aborts by kind
    without reading the reason's text (which is for people)."""

    BELOW_THRESHOLD = "below-threshold"  # too few participants, share holders, survivors or signatures
    MISBEHAVIOUR = "misbehaviour"  # participants proven (or accused) to have sent bad messages
    UNSAFE_ROUND = "unsafe-round"  # the round's shape cannot be run safely (threshold, graph)
    INCONSISTENT = "inconsistent"  # a message contradicts the round: the server lies, or the wire did
    PEER_ABORTED = "peer-aborted"  # the other side ended the round (a client hears the server's abort)
    LOCAL = "local"  # the caller misused this state machine (no input, no identity key)


class DropKind(enum.Enum):
    """Why a participant left a round, as data (the reason's text is for people)."""

    DEADLINE = "deadline"  # sent nothing before a phase's deadline
    NOT_JOINED = "not-joined"  # selected, but never joined before the start
    LEFT = "left"  # joined, then left before the start
    DISCONNECTED = "disconnected"  # its stream ended during the round
    REFUSED = "refused"  # sent a message that was refused
    ABORTED = "aborted"  # ended the round itself (its policy, an error)


class ProtocolAbort(SecAggError):
    """The round was aborted; ``phase``, ``kind`` and ``reason`` say where and why.

    ``culprits``: participants proven to have sent bad messages (a false complaint, a share or
    envelope that does not match its sender's commitments, an invalid signature), with what they
    did; a federation excludes them. ``suspects``: participants that did not answer a complaint
    against them in time; a re-run of the round goes on without them."""

    def __init__(
        self,
        phase: Phase,
        kind: AbortKind,
        reason: str,
        *,
        culprits: Mapping[int, str] | None = None,
        suspects: Mapping[int, str] | None = None,
    ) -> None:
        self.phase = phase
        self.kind = kind
        self.reason = reason
        self.culprits = dict(culprits or {})
        self.suspects = dict(suspects or {})
        super().__init__(f"[{phase.value}] round aborted: {reason}")

"""The protocol's messages as plain, immutable dataclasses.

Client -> server: AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse,
and EnvelopeOpening (only when accused by a complaint).
Server -> client: KeyRoster, ShareBundle, ConsistencyRequest, UnmaskRequest, and OpenRequest
(only to a participant accused by a complaint).
Either way: Abort.

Messages only carry data; the state machines validate them against what they know (expected
sender, session id, lengths, ranges). Participant ids are integers >= 1; they double as Shamir
x-coordinates. After the roster, every message carries the session id so that a message from
another round or session is refused before it is read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .errors import Phase

# A vector of integers mod 2^b: uint32 when b <= 32, else uint64 (``prg.dtype_for_bits``).
ModularVector = npt.NDArray[np.unsignedinteger]


@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 0, client -> server: the two X25519 public keys (and, in the malicious-server
    mode, an Ed25519 signature over them by the sender's enrolled identity key)."""

    sender: int
    round_id: bytes
    encryption_key: bytes  # c_u^PK, for share transport
    masking_key: bytes  # s_u^PK, for pairwise masks
    signature: bytes = b""


@dataclass(frozen=True)
class KeyRoster:
    """Phase 0, server -> each client: everybody's advertisement (the set U1)."""

    round_id: bytes
    advertisements: tuple[AdvertiseKeys, ...]

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(a.sender for a in self.advertisements)


@dataclass(frozen=True)
class EncryptedShare:
    """One holder's shares of the sender's b_u and s_u^SK: an envelope AES-GCM encrypted for
    ``recipient`` under a key from ``ephemeral_key`` (fresh for this envelope) and the recipient's
    encryption key, with SHA-256 commitments to the two shares inside. In the malicious-server
    mode the sender signs it (``keys.envelope_payload``)."""

    sender: int
    recipient: int
    ciphertext: bytes
    ephemeral_key: bytes
    self_mask_share_commitment: bytes  # to the share of b_sender
    key_share_commitment: bytes  # to the share of s_sender^SK
    signature: bytes = b""


@dataclass(frozen=True)
class ShareKeys:
    """Phase 1, client -> server: one envelope per share holder, and the commitment to b_u."""

    sender: int
    session_id: bytes
    shares: tuple[EncryptedShare, ...]
    self_mask_commitment: bytes


@dataclass(frozen=True)
class ShareBundle:
    """Phase 1, server -> each client in U2: the envelopes addressed to it (senders = its view of
    U2), with each sender's commitment to its b (which the envelope signatures cover)."""

    recipient: int
    session_id: bytes
    shares: tuple[EncryptedShare, ...]
    self_mask_commitments: tuple[tuple[int, bytes], ...] = ()


class ComplaintKind(enum.Enum):
    """What was wrong with an envelope a holder received."""

    # The envelope carries its sender's valid signature (or the mode has none) but does not open,
    # or opens to shares that do not match its commitments. Decided by the sender's opening.
    BAD_ENVELOPE = "bad-envelope"
    # Malicious-server mode: the sender's signature on the envelope does not verify. Decided by
    # the server on the envelope it received from the sender.
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True)
class Complaint:
    """A holder's complaint about the envelope ``accused`` sent it (signed by the holder in the
    malicious-server mode: ``keys.complaint_payload``)."""

    accused: int
    kind: ComplaintKind
    signature: bytes = b""


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 2, client -> server: y_u, the masked input mod 2^b, and the sender's complaints about
    envelopes it received (none in an honest round)."""

    sender: int
    session_id: bytes
    masked: ModularVector = field(repr=False)
    complaints: tuple[Complaint, ...] = ()


@dataclass(frozen=True)
class OpenRequest:
    """Server -> a participant accused by complaints: open the envelopes it sent to these
    complainers (with each complainer's signature on its complaint, in the malicious mode)."""

    session_id: bytes
    complaints: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class EnvelopeOpening:
    """The accused participant's answer: the ephemeral secret of each envelope in question. The
    server checks each against the envelope's ephemeral public key, so it cannot be forged."""

    sender: int
    session_id: bytes
    openings: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ConsistencyRequest:
    """Phase 3 (malicious-server mode), server -> clients in U3: the survivors to sign."""

    session_id: bytes
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class ConsistencySignature:
    """Phase 3, client -> server: the sender's signature over (session id, U3)."""

    sender: int
    session_id: bytes
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, server -> clients: who survived (U3) and who dropped after sharing (U2 \\ U3).

    In the malicious-server mode it also carries the signatures collected in phase 3."""

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 4, client -> server: shares of b_v for surviving neighbours and of s_v^SK for
    neighbours that dropped. Never both for the same v."""

    sender: int
    session_id: bytes
    self_mask_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class Abort:
    """Either direction: the round is over for the sender, with a reason."""

    phase: Phase
    reason: str
    sender: int | None = None


ClientMessage = (
    AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskResponse | EnvelopeOpening | Abort
)
ServerMessage = KeyRoster | ShareBundle | ConsistencyRequest | UnmaskRequest | OpenRequest | Abort

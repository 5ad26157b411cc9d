"""The protocol's messages as plain, immutable dataclasses.

Client -> server: AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse.
Server -> client: KeyRoster, ShareBundle, ConsistencyRequest, UnmaskRequest.
Either way: Abort.

Messages only carry data; the state machines validate them against what they know (expected
sender, session id, lengths, ranges). Participant ids are integers >= 1; they double as Shamir
x-coordinates. After the roster, every message carries the session id so that a message from
another round or session is refused before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import Phase


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
    """One holder's shares of the sender's b_u and s_u^SK, AES-GCM encrypted for ``recipient``."""

    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Phase 1, client -> server: one encrypted share pair per neighbour."""

    sender: int
    session_id: bytes
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareBundle:
    """Phase 1, server -> each client in U2: the shares addressed to it (senders = its view of U2)."""

    recipient: int
    session_id: bytes
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 2, client -> server: y_u, the masked input mod 2^b."""

    sender: int
    session_id: bytes
    masked: np.ndarray = field(repr=False)


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


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskResponse | Abort
ServerMessage = KeyRoster | ShareBundle | ConsistencyRequest | UnmaskRequest | Abort

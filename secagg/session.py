"""What client and server derive alike from the key roster (U1): the session id, the
neighbour graph, and who holds whose shares.

session id = SHA-256(label || round id || parameter digest || every (id, c_pk, s_pk) in U1, by id).
Folding in all advertised keys means a message of another round, or of this round with other
keys, cannot be replayed: its session id differs, and so do all keys derived from it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from . import graph as graphs
from . import keys
from .errors import CryptoError
from .messages import AdvertiseKeys
from .params import MAX_PARTICIPANT_ID, ProtocolParams, SecurityMode

_SESSION_LABEL = b"fedmask/secagg/v1/session"
# A fixed scalar used only to test that a public key is not a low-order point.
_PROBE_KEY = hashlib.sha256(b"fedmask/secagg/v1/probe").digest()


def compute_session_id(round_id: bytes, params: ProtocolParams, roster: tuple[AdvertiseKeys, ...]) -> bytes:
    h = hashlib.sha256(_SESSION_LABEL)
    h.update(struct.pack(">I", len(round_id)) + round_id)
    h.update(params.digest())
    for ad in sorted(roster, key=lambda a: a.sender):
        h.update(struct.pack(">I", ad.sender) + ad.encryption_key + ad.masking_key)
    return h.digest()


def check_advertisement(
    ad: AdvertiseKeys,
    *,
    round_id: bytes,
    params: ProtocolParams,
    identity_keys: Mapping[int, bytes],
    probe_points: bool = True,
    verify_keys: bool = True,
    verify_signature: bool = True,
) -> str | None:
    """Why ``ad`` is unacceptable, or None. Shared by server (on receipt) and client (on roster).

    ``probe_points``: test both keys against low-order points with a throw-away agreement. The
    server does; a client skips it because its real agreements with its neighbours check the
    same thing.
    ``verify_keys``: parse the keys and, in malicious mode, verify the signature. A client does
    this for its neighbours only: it never uses another participant's keys, and at n = 1000 with
    SecAgg+ checking everyone would cost it ten times its real work. The shape checks (id, round,
    key sizes) run for every entry, since all of them feed the session id.
    ``verify_signature=False`` leaves the signature to the caller, which checks many at once
    (``signature_check`` and ``keys.verify_many``); an enrolled identity key is still required."""
    if not isinstance(ad, AdvertiseKeys):
        return f"expected AdvertiseKeys, got {type(ad).__name__}"
    if not isinstance(ad.sender, int) or not 1 <= ad.sender <= MAX_PARTICIPANT_ID:
        return f"participant id {ad.sender!r} out of range"
    if ad.round_id != round_id:
        return f"advertisement of participant {ad.sender} is for another round"
    if ad.encryption_key == ad.masking_key:
        return f"participant {ad.sender} advertised the same key twice"
    for label, key in (("encryption", ad.encryption_key), ("masking", ad.masking_key)):
        if not isinstance(key, bytes) or len(key) != keys.PUBLIC_KEY_BYTES:
            return f"participant {ad.sender} advertised a {label} key of the wrong size"
    if not verify_keys:
        return None
    for label, key in (("encryption", ad.encryption_key), ("masking", ad.masking_key)):
        try:
            keys.check_public_key(key)
            if probe_points:
                keys.exchange(_PROBE_KEY, key)
        except CryptoError as exc:
            return f"participant {ad.sender} advertised an invalid {label} key: {exc}"
    if params.mode is SecurityMode.MALICIOUS:
        identity = identity_keys.get(ad.sender)
        if identity is None:
            return f"participant {ad.sender} has no enrolled identity key"
        if verify_signature and not keys.verify_many([signature_check(ad, round_id, identity)])[0]:
            return unsigned_keys(ad.sender)
    return None


def signature_check(ad: AdvertiseKeys, round_id: bytes, identity: bytes) -> tuple[bytes, bytes, bytes]:
    """What ``keys.verify_many`` takes to check the signature on ``ad``'s keys."""
    return identity, ad.signature, keys.advertisement_payload(round_id, ad.sender, ad.encryption_key, ad.masking_key)


def unsigned_keys(sender: int) -> str:
    return f"the keys of participant {sender} are not signed by its enrolled identity"


@dataclass(frozen=True)
class Session:
    """The agreed state after phase 0."""

    round_id: bytes
    params: ProtocolParams
    session_id: bytes
    advertisements: Mapping[int, AdvertiseKeys]
    graph: graphs.NeighbourGraph

    @classmethod
    def from_roster(cls, round_id: bytes, params: ProtocolParams, roster: tuple[AdvertiseKeys, ...]) -> Session:
        session_id = compute_session_id(round_id, params, roster)
        ids = tuple(sorted(ad.sender for ad in roster))
        if params.neighbours is None or params.neighbours >= len(ids) - 1:
            graph = graphs.complete_graph(ids)
        else:
            # The cycle order comes from the session id, which nobody controls alone.
            graph = graphs.harary_graph(ids, params.neighbours, session_id)
        return cls(round_id, params, session_id, {ad.sender: ad for ad in roster}, graph)

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.advertisements))

    def neighbours(self, participant: int) -> frozenset[int]:
        return self.graph.neighbours(participant)

    def holders(self, participant: int) -> frozenset[int]:
        """Who holds shares of ``participant``'s secrets: its neighbours and itself."""
        return self.graph.neighbours(participant) | {participant}


def check_roster_keys_distinct(roster: tuple[AdvertiseKeys, ...]) -> str | None:
    """Two participants with one key would let one mirror the other's masks (copy attack)."""
    seen: dict[bytes, int] = {}
    for ad in roster:
        for key in (ad.encryption_key, ad.masking_key):
            if key in seen and seen[key] != ad.sender:
                return f"participants {seen[key]} and {ad.sender} advertised the same public key"
            seen[key] = ad.sender
    return None

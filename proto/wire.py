"""The one module that maps protobuf messages (``fedmask.secagg.v1``) to and from the secagg
dataclasses.

Decoding checks everything the format fixes -- field presence, sizes of keys, ids, shares,
ciphertexts and vectors, enum values -- and raises ``WireError`` with a reason; the state
machines then check what only they can know (session, phase, neighbours, signatures). The
coordinator answers a ``WireError`` with INVALID_ARGUMENT.

Identity never comes from a message: client messages carry no sender id, and the decoder is told
who sent them (the name in the sender's TLS certificate, mapped to its participant id).

Vectors travel as packed little-endian bytes: 4 bytes a value when modulus_bits <= 32, else 8.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.secagg import keys, shamir
from fedmask.secagg.errors import ParameterError, Phase
from fedmask.secagg.messages import (
    Abort,
    AdvertiseKeys,
    ClientMessage,
    Complaint,
    ComplaintKind,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    EnvelopeOpening,
    KeyRoster,
    MaskedInput,
    ModularVector,
    OpenRequest,
    ServerMessage,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedmask.secagg.params import MAX_PARTICIPANT_ID, ProtocolParams, SecurityMode
from fedmask.secagg.server import SHARE_CIPHERTEXT_BYTES

# 2: share envelopes with ephemeral keys and commitments, complaints and openings.
PROTOCOL_VERSION = 2
SESSION_ID_BYTES = 32  # SHA-256
MAX_ROUND_ID_BYTES = 256
MAX_REASON_CHARS = 1000
# Participant names as the PKI issues them (a lower-case DNS label).
PARTICIPANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class WireError(ValueError):
    """A message that does not fit the wire format; the reason says which field and why."""


# --- transport-level messages (not part of the sans-I/O protocol) ----------------------------


@dataclass(frozen=True)
class Hello:
    """First message of every stream, participant -> coordinator."""

    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class RoundStart:
    """Coordinator -> participant: the round's configuration and the participant's id in it."""

    round_id: bytes
    params: ProtocolParams
    participant_id: int
    participants: tuple[str, ...]  # sorted names; participants[i] has id i + 1
    phase_timeout_s: float

    def participant_ids(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.participants)}


@dataclass(frozen=True)
class RoundResult:
    """Coordinator -> participant: the round completed with these survivors (U3)."""

    session_id: bytes
    survivors: tuple[int, ...]


# Everything a participant's stream carries, and everything the coordinator's carries.
ClientWireMessage = Hello | ClientMessage
ServerWireMessage = RoundStart | RoundResult | ServerMessage


# --- vectors and parameters -----------------------------------------------------------------


def value_bytes(modulus_bits: int) -> int:
    """Bytes a vector value takes on the wire."""
    if not 1 <= modulus_bits <= 64:
        raise WireError(f"modulus_bits must be in [1, 64], got {modulus_bits}")
    return 4 if modulus_bits <= 32 else 8


def vector_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    return np.dtype("<u4") if value_bytes(modulus_bits) == 4 else np.dtype("<u8")


def pack_vector(vector: ModularVector) -> bytes:
    """A 1-D uint32 or uint64 vector as packed little-endian bytes."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.dtype.kind != "u" or vector.dtype.itemsize not in (4, 8):
        raise WireError("vectors are 1-D uint32 or uint64 arrays")
    return vector.astype(vector.dtype.newbyteorder("<"), copy=False).tobytes()


def unpack_vector(data: bytes, dimension: int, modulus_bits: int) -> ModularVector:
    """A read-only view of ``data`` as ``dimension`` little-endian values; exact length only."""
    dtype = vector_dtype(modulus_bits)
    expected = dimension * dtype.itemsize
    if len(data) != expected:
        raise WireError(
            f"vector has {len(data)} bytes, expected {expected} ({dimension} values of {dtype.itemsize} bytes)"
        )
    return np.frombuffer(data, dtype=dtype)


_MODES = {
    SecurityMode.SEMI_HONEST: pb.SECURITY_MODE_SEMI_HONEST,
    SecurityMode.MALICIOUS: pb.SECURITY_MODE_MALICIOUS,
}
_MODES_BACK = {v: k for k, v in _MODES.items()}

_PHASES = {
    Phase.ADVERTISE_KEYS: pb.PHASE_ADVERTISE_KEYS,
    Phase.SHARE_KEYS: pb.PHASE_SHARE_KEYS,
    Phase.MASKED_INPUT: pb.PHASE_MASKED_INPUT,
    Phase.CONSISTENCY_CHECK: pb.PHASE_CONSISTENCY_CHECK,
    Phase.UNMASK: pb.PHASE_UNMASK,
    Phase.COMPLETED: pb.PHASE_COMPLETED,
    Phase.ABORTED: pb.PHASE_ABORTED,
    Phase.COMPLAINTS: pb.PHASE_COMPLAINTS,
}
_PHASES_BACK: dict[int, Phase] = {v: k for k, v in _PHASES.items()}


def params_to_proto(params: ProtocolParams) -> pb.ProtocolParams:
    return pb.ProtocolParams(
        dimension=params.dimension,
        modulus_bits=params.modulus_bits,
        threshold=params.threshold,
        mode=_MODES[params.mode],
        neighbours=params.neighbours or 0,
    )


def params_from_proto(message: pb.ProtocolParams) -> ProtocolParams:
    mode = _MODES_BACK.get(message.mode)
    if mode is None:
        raise WireError(f"unknown security mode {message.mode}")
    if not 1 <= message.dimension <= 1 << 31:
        raise WireError(f"dimension must be in [1, 2^31], got {message.dimension}")
    if not 1 <= message.modulus_bits <= 64:
        raise WireError(f"modulus_bits must be in [1, 64], got {message.modulus_bits}")
    return ProtocolParams(
        dimension=message.dimension,
        modulus_bits=message.modulus_bits,
        threshold=message.threshold,
        mode=mode,
        neighbours=message.neighbours or None,
    )


# --- field checks -----------------------------------------------------------------------------


def _participant_id(value: int, what: str) -> int:
    if not 1 <= value <= MAX_PARTICIPANT_ID:
        raise WireError(f"{what} must be a participant id >= 1, got {value}")
    return value


def _ids(values: Iterable[int], what: str) -> tuple[int, ...]:
    return tuple(_participant_id(v, what) for v in values)


def _exact(data: bytes, size: int, what: str) -> bytes:
    if len(data) != size:
        raise WireError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _signature(data: bytes, what: str, *, optional: bool) -> bytes:
    if optional and not data:
        return b""
    return _exact(data, keys.SIGNATURE_BYTES, what)


def _round_id(data: bytes) -> bytes:
    if not 1 <= len(data) <= MAX_ROUND_ID_BYTES:
        raise WireError(f"round id must be 1 to {MAX_ROUND_ID_BYTES} bytes, got {len(data)}")
    return data


def _session_id(data: bytes) -> bytes:
    return _exact(data, SESSION_ID_BYTES, "session id")


_COMPLAINT_KINDS = {
    ComplaintKind.BAD_ENVELOPE: pb.COMPLAINT_KIND_BAD_ENVELOPE,
    ComplaintKind.BAD_SIGNATURE: pb.COMPLAINT_KIND_BAD_SIGNATURE,
}
_COMPLAINT_KINDS_BACK: dict[int, ComplaintKind] = {v: k for k, v in _COMPLAINT_KINDS.items()}


def _complaint_kind(value: int) -> ComplaintKind:
    kind = _COMPLAINT_KINDS_BACK.get(value)
    if kind is None:
        raise WireError(f"unknown complaint kind {value}")
    return kind


def _commitment(data: bytes, what: str) -> bytes:
    return _exact(data, keys.COMMITMENT_BYTES, what)


def _envelope(sender: int, recipient: int, body: pb.EncryptedShareTo | pb.EncryptedShareFrom) -> EncryptedShare:
    """An envelope's fields, checked; ``body`` is an EncryptedShareTo or EncryptedShareFrom."""
    return EncryptedShare(
        sender,
        recipient,
        _exact(body.ciphertext, SHARE_CIPHERTEXT_BYTES, "share ciphertext"),
        _exact(body.ephemeral_key, keys.PUBLIC_KEY_BYTES, "envelope ephemeral key"),
        _commitment(body.self_mask_share_commitment, "self-mask share commitment"),
        _commitment(body.key_share_commitment, "key share commitment"),
        _signature(body.signature, "envelope signature", optional=True),
    )


def _envelope_fields(share: EncryptedShare) -> dict[str, bytes]:
    return {
        "ciphertext": share.ciphertext,
        "ephemeral_key": share.ephemeral_key,
        "self_mask_share_commitment": share.self_mask_share_commitment,
        "key_share_commitment": share.key_share_commitment,
        "signature": share.signature,
    }


def _phase(value: int) -> Phase:
    phase = _PHASES_BACK.get(value)
    if phase is None:
        raise WireError(f"unknown phase {value}")
    return phase


def clean_reason(reason: str) -> str:
    """A peer's free-text reason made safe to print: printable characters only, bounded length."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in reason[:MAX_REASON_CHARS])
    return printable + ("..." if len(reason) > MAX_REASON_CHARS else "")


def _kind(envelope: pb.ClientEnvelope | pb.ServerEnvelope, allowed: Collection[str]) -> str:
    """The name of the message in the envelope's ``body``."""
    kind: str | None = envelope.WhichOneof("body")  # the stubs type the field name as Any
    if kind is None:
        raise WireError("empty envelope (no message in it)")
    if kind not in allowed:  # pragma: no cover - the oneof only holds these
        raise WireError(f"unexpected message {kind}")
    return kind


# --- participant -> coordinator ---------------------------------------------------------------

# secagg message type -> the envelope field that carries it
CLIENT_FIELDS: dict[type, str] = {
    Hello: "hello",
    AdvertiseKeys: "advertise_keys",
    ShareKeys: "share_keys",
    MaskedInput: "masked_input",
    ConsistencySignature: "consistency_signature",
    UnmaskResponse: "unmask_response",
    EnvelopeOpening: "envelope_opening",
    Abort: "abort",
}


def client_to_proto(message: ClientWireMessage) -> pb.ClientEnvelope:
    """Encode a participant's message. Its ``sender`` is left out: the coordinator takes the
    sender from the TLS identity of the stream."""
    if isinstance(message, Hello):
        return pb.ClientEnvelope(hello=pb.Hello(protocol_version=message.protocol_version))
    if isinstance(message, AdvertiseKeys):
        return pb.ClientEnvelope(
            advertise_keys=pb.AdvertiseKeys(
                round_id=message.round_id,
                encryption_key=message.encryption_key,
                masking_key=message.masking_key,
                signature=message.signature,
            )
        )
    if isinstance(message, ShareKeys):
        return pb.ClientEnvelope(
            share_keys=pb.ShareKeys(
                session_id=message.session_id,
                shares=[pb.EncryptedShareTo(recipient=s.recipient, **_envelope_fields(s)) for s in message.shares],
                self_mask_commitment=message.self_mask_commitment,
            )
        )
    if isinstance(message, MaskedInput):
        return pb.ClientEnvelope(
            masked_input=pb.MaskedInput(
                session_id=message.session_id,
                masked=pack_vector(message.masked),
                complaints=[
                    pb.Complaint(accused=c.accused, kind=_COMPLAINT_KINDS[c.kind], signature=c.signature)
                    for c in message.complaints
                ],
            )
        )
    if isinstance(message, ConsistencySignature):
        return pb.ClientEnvelope(
            consistency_signature=pb.ConsistencySignature(session_id=message.session_id, signature=message.signature)
        )
    if isinstance(message, UnmaskResponse):
        return pb.ClientEnvelope(
            unmask_response=pb.UnmaskResponse(
                session_id=message.session_id,
                self_mask_shares=[pb.OwnerShare(owner=o, share=s) for o, s in message.self_mask_shares],
                key_shares=[pb.OwnerShare(owner=o, share=s) for o, s in message.key_shares],
            )
        )
    if isinstance(message, EnvelopeOpening):
        return pb.ClientEnvelope(
            envelope_opening=pb.EnvelopeOpening(
                session_id=message.session_id,
                openings=[pb.Opening(holder=h, ephemeral_secret=s) for h, s in message.openings],
            )
        )
    if isinstance(message, Abort):
        return pb.ClientEnvelope(abort=pb.Abort(phase=_PHASES[message.phase], reason=message.reason))
    raise TypeError(f"not a participant message: {type(message).__name__}")


def client_from_proto(envelope: pb.ClientEnvelope, *, sender: int, params: ProtocolParams) -> ClientWireMessage:
    """Decode a participant's message, attributing it to ``sender`` (from the TLS identity).

    Raises WireError when a field does not fit the format."""
    kind = _kind(envelope, CLIENT_FIELDS.values())
    if kind == "hello":
        return Hello(envelope.hello.protocol_version)
    if kind == "advertise_keys":
        advertisement = envelope.advertise_keys
        return AdvertiseKeys(
            sender=sender,
            round_id=_round_id(advertisement.round_id),
            encryption_key=_exact(advertisement.encryption_key, keys.PUBLIC_KEY_BYTES, "encryption key"),
            masking_key=_exact(advertisement.masking_key, keys.PUBLIC_KEY_BYTES, "masking key"),
            signature=_signature(advertisement.signature, "key advertisement signature", optional=True),
        )
    if kind == "share_keys":
        share_keys = envelope.share_keys
        shares = tuple(_envelope(sender, _participant_id(s.recipient, "share recipient"), s) for s in share_keys.shares)
        commitment = _commitment(share_keys.self_mask_commitment, "self-mask commitment")
        return ShareKeys(sender, _session_id(share_keys.session_id), shares, commitment)
    if kind == "masked_input":
        masked_input = envelope.masked_input
        vector = unpack_vector(masked_input.masked, params.dimension, params.modulus_bits)
        complaints = tuple(
            Complaint(
                _participant_id(c.accused, "accused participant"),
                _complaint_kind(c.kind),
                _signature(c.signature, "complaint signature", optional=True),
            )
            for c in masked_input.complaints
        )
        return MaskedInput(sender, _session_id(masked_input.session_id), vector, complaints)
    if kind == "envelope_opening":
        opening = envelope.envelope_opening
        openings = tuple(
            (
                _participant_id(o.holder, "envelope holder"),
                _exact(o.ephemeral_secret, keys.PRIVATE_KEY_BYTES, "ephemeral secret"),
            )
            for o in opening.openings
        )
        return EnvelopeOpening(sender, _session_id(opening.session_id), openings)
    if kind == "consistency_signature":
        consistency = envelope.consistency_signature
        return ConsistencySignature(
            sender,
            _session_id(consistency.session_id),
            _signature(consistency.signature, "consistency signature", optional=False),
        )
    if kind == "unmask_response":
        response = envelope.unmask_response
        return UnmaskResponse(
            sender,
            _session_id(response.session_id),
            _owner_shares(response.self_mask_shares),
            _owner_shares(response.key_shares),
        )
    assert kind == "abort"
    return Abort(_phase(envelope.abort.phase), clean_reason(envelope.abort.reason), sender=sender)


def _owner_shares(shares: Iterable[pb.OwnerShare]) -> tuple[tuple[int, bytes], ...]:
    return tuple(
        (_participant_id(s.owner, "share owner"), _exact(s.share, shamir.SHARE_BYTES, "Shamir share")) for s in shares
    )


# --- coordinator -> participant ---------------------------------------------------------------

SERVER_FIELDS: dict[type, str] = {
    RoundStart: "round_start",
    KeyRoster: "key_roster",
    ShareBundle: "share_bundle",
    ConsistencyRequest: "consistency_request",
    UnmaskRequest: "unmask_request",
    RoundResult: "round_result",
    OpenRequest: "open_request",
    Abort: "abort",
}


def server_to_proto(message: ServerWireMessage) -> pb.ServerEnvelope:
    """Encode a coordinator message. A ShareBundle's recipient is the stream's participant and
    is not repeated on the wire."""
    if isinstance(message, RoundStart):
        return pb.ServerEnvelope(
            round_start=pb.RoundStart(
                round_id=message.round_id,
                params=params_to_proto(message.params),
                participant_id=message.participant_id,
                participants=list(message.participants),
                phase_timeout_ms=round(message.phase_timeout_s * 1000),
            )
        )
    if isinstance(message, KeyRoster):
        return pb.ServerEnvelope(
            key_roster=pb.KeyRoster(
                round_id=message.round_id,
                advertisements=[
                    pb.KeyAdvertisement(
                        participant_id=ad.sender,
                        encryption_key=ad.encryption_key,
                        masking_key=ad.masking_key,
                        signature=ad.signature,
                    )
                    for ad in message.advertisements
                ],
            )
        )
    if isinstance(message, ShareBundle):
        return pb.ServerEnvelope(
            share_bundle=pb.ShareBundle(
                session_id=message.session_id,
                shares=[pb.EncryptedShareFrom(sender=s.sender, **_envelope_fields(s)) for s in message.shares],
                self_mask_commitments=[
                    pb.SelfMaskCommitment(sender=u, commitment=c) for u, c in message.self_mask_commitments
                ],
            )
        )
    if isinstance(message, ConsistencyRequest):
        return pb.ServerEnvelope(
            consistency_request=pb.ConsistencyRequest(session_id=message.session_id, survivors=list(message.survivors))
        )
    if isinstance(message, UnmaskRequest):
        return pb.ServerEnvelope(
            unmask_request=pb.UnmaskRequest(
                session_id=message.session_id,
                survivors=list(message.survivors),
                dropped=list(message.dropped),
                signatures=[pb.SurvivorSignature(signer=u, signature=s) for u, s in message.signatures],
            )
        )
    if isinstance(message, RoundResult):
        return pb.ServerEnvelope(
            round_result=pb.RoundResult(session_id=message.session_id, survivors=list(message.survivors))
        )
    if isinstance(message, OpenRequest):
        return pb.ServerEnvelope(
            open_request=pb.OpenRequest(
                session_id=message.session_id,
                complaints=[pb.ComplaintFrom(complainer=u, signature=s) for u, s in message.complaints],
            )
        )
    if isinstance(message, Abort):
        return pb.ServerEnvelope(abort=pb.Abort(phase=_PHASES[message.phase], reason=message.reason))
    raise TypeError(f"not a coordinator message: {type(message).__name__}")


def server_from_proto(envelope: pb.ServerEnvelope, *, recipient: int | None) -> ServerWireMessage:
    """Decode a coordinator message for participant ``recipient`` (None before RoundStart, which
    is the only message that may come then). Raises WireError when a field does not fit."""
    kind = _kind(envelope, SERVER_FIELDS.values())
    if kind == "round_start":
        return _round_start(envelope.round_start)
    if kind == "abort":
        return Abort(_phase(envelope.abort.phase), clean_reason(envelope.abort.reason))
    if recipient is None:
        raise WireError(f"{kind} before the round started")
    if kind == "key_roster":
        roster = envelope.key_roster
        round_id = _round_id(roster.round_id)
        return KeyRoster(
            round_id,
            tuple(
                AdvertiseKeys(
                    sender=_participant_id(ad.participant_id, "advertising participant"),
                    round_id=round_id,
                    encryption_key=_exact(ad.encryption_key, keys.PUBLIC_KEY_BYTES, "encryption key"),
                    masking_key=_exact(ad.masking_key, keys.PUBLIC_KEY_BYTES, "masking key"),
                    signature=_signature(ad.signature, "key advertisement signature", optional=True),
                )
                for ad in roster.advertisements
            ),
        )
    if kind == "share_bundle":
        bundle = envelope.share_bundle
        shares = tuple(_envelope(_participant_id(s.sender, "share sender"), recipient, s) for s in bundle.shares)
        commitments = tuple(
            (_participant_id(c.sender, "dealer"), _commitment(c.commitment, "self-mask commitment"))
            for c in bundle.self_mask_commitments
        )
        return ShareBundle(recipient, _session_id(bundle.session_id), shares, commitments)
    if kind == "open_request":
        open_request = envelope.open_request
        return OpenRequest(
            _session_id(open_request.session_id),
            tuple(
                (
                    _participant_id(c.complainer, "complainer"),
                    _signature(c.signature, "complaint signature", optional=True),
                )
                for c in open_request.complaints
            ),
        )
    if kind == "consistency_request":
        consistency = envelope.consistency_request
        return ConsistencyRequest(_session_id(consistency.session_id), _ids(consistency.survivors, "survivor"))
    if kind == "unmask_request":
        unmask = envelope.unmask_request
        return UnmaskRequest(
            _session_id(unmask.session_id),
            _ids(unmask.survivors, "survivor"),
            _ids(unmask.dropped, "dropped participant"),
            tuple(
                (
                    _participant_id(s.signer, "signer"),
                    _signature(s.signature, "consistency signature", optional=False),
                )
                for s in unmask.signatures
            ),
        )
    assert kind == "round_result"
    result = envelope.round_result
    return RoundResult(_session_id(result.session_id), _ids(result.survivors, "survivor"))


def _round_start(body: pb.RoundStart) -> RoundStart:
    if not body.HasField("params"):
        raise WireError("round start without protocol parameters")
    params = params_from_proto(body.params)
    names = tuple(body.participants)
    for name in names:
        if PARTICIPANT_NAME.fullmatch(name) is None:
            raise WireError(f"malformed participant name {name[:70]!r}")
    if list(names) != sorted(set(names)):
        raise WireError("the participant names must be sorted and distinct (ids are their positions)")
    if not 1 <= body.participant_id <= len(names):
        raise WireError(f"participant id {body.participant_id} is not in 1..{len(names)}")
    try:
        params.validate(len(names))
    except ParameterError as exc:
        raise WireError(f"unusable round parameters: {exc}") from exc
    return RoundStart(
        round_id=_round_id(body.round_id),
        params=params,
        participant_id=body.participant_id,
        participants=names,
        phase_timeout_s=body.phase_timeout_ms / 1000,
    )

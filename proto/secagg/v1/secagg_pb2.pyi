from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecurityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECURITY_MODE_UNSPECIFIED: _ClassVar[SecurityMode]
    SECURITY_MODE_SEMI_HONEST: _ClassVar[SecurityMode]
    SECURITY_MODE_MALICIOUS: _ClassVar[SecurityMode]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_ADVERTISE_KEYS: _ClassVar[Phase]
    PHASE_SHARE_KEYS: _ClassVar[Phase]
    PHASE_MASKED_INPUT: _ClassVar[Phase]
    PHASE_CONSISTENCY_CHECK: _ClassVar[Phase]
    PHASE_UNMASK: _ClassVar[Phase]
    PHASE_COMPLETED: _ClassVar[Phase]
    PHASE_ABORTED: _ClassVar[Phase]
    PHASE_COMPLAINTS: _ClassVar[Phase]

class ComplaintKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPLAINT_KIND_UNSPECIFIED: _ClassVar[ComplaintKind]
    COMPLAINT_KIND_BAD_ENVELOPE: _ClassVar[ComplaintKind]
    COMPLAINT_KIND_BAD_SIGNATURE: _ClassVar[ComplaintKind]
SECURITY_MODE_UNSPECIFIED: SecurityMode
SECURITY_MODE_SEMI_HONEST: SecurityMode
SECURITY_MODE_MALICIOUS: SecurityMode
PHASE_UNSPECIFIED: Phase
PHASE_ADVERTISE_KEYS: Phase
PHASE_SHARE_KEYS: Phase
PHASE_MASKED_INPUT: Phase
PHASE_CONSISTENCY_CHECK: Phase
PHASE_UNMASK: Phase
PHASE_COMPLETED: Phase
PHASE_ABORTED: Phase
PHASE_COMPLAINTS: Phase
COMPLAINT_KIND_UNSPECIFIED: ComplaintKind
COMPLAINT_KIND_BAD_ENVELOPE: ComplaintKind
COMPLAINT_KIND_BAD_SIGNATURE: ComplaintKind

class ProtocolParams(_message.Message):
    __slots__ = ("dimension", "modulus_bits", "threshold", "mode", "neighbours")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    dimension: int
    modulus_bits: int
    threshold: int
    mode: SecurityMode
    neighbours: int
    def __init__(self, dimension: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., threshold: _Optional[int] = ..., mode: _Optional[_Union[SecurityMode, str]] = ..., neighbours: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version",)
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    def __init__(self, protocol_version: _Optional[int] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("round_id", "encryption_key", "masking_key", "signature")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    def __init__(self, round_id: _Optional[bytes] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EncryptedShareTo(_message.Message):
    __slots__ = ("recipient", "ciphertext", "ephemeral_key", "self_mask_share_commitment", "key_share_commitment", "signature")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_KEY_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARE_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARE_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    recipient: int
    ciphertext: bytes
    ephemeral_key: bytes
    self_mask_share_commitment: bytes
    key_share_commitment: bytes
    signature: bytes
    def __init__(self, recipient: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., ephemeral_key: _Optional[bytes] = ..., self_mask_share_commitment: _Optional[bytes] = ..., key_share_commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("session_id", "shares", "self_mask_commitment")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShareTo]
    self_mask_commitment: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShareTo, _Mapping]]] = ..., self_mask_commitment: _Optional[bytes] = ...) -> None: ...

class Complaint(_message.Message):
    __slots__ = ("accused", "kind", "signature")
    ACCUSED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    accused: int
    kind: ComplaintKind
    signature: bytes
    def __init__(self, accused: _Optional[int] = ..., kind: _Optional[_Union[ComplaintKind, str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("session_id", "masked", "complaints")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    masked: bytes
    complaints: _containers.RepeatedCompositeFieldContainer[Complaint]
    def __init__(self, session_id: _Optional[bytes] = ..., masked: _Optional[bytes] = ..., complaints: _Optional[_Iterable[_Union[Complaint, _Mapping]]] = ...) -> None: ...

class Opening(_message.Message):
    __slots__ = ("holder", "ephemeral_secret")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_SECRET_FIELD_NUMBER: _ClassVar[int]
    holder: int
    ephemeral_secret: bytes
    def __init__(self, holder: _Optional[int] = ..., ephemeral_secret: _Optional[bytes] = ...) -> None: ...

class EnvelopeOpening(_message.Message):
    __slots__ = ("session_id", "openings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OPENINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    openings: _containers.RepeatedCompositeFieldContainer[Opening]
    def __init__(self, session_id: _Optional[bytes] = ..., openings: _Optional[_Iterable[_Union[Opening, _Mapping]]] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("session_id", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class OwnerShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("session_id", "self_mask_shares", "key_shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[OwnerShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[OwnerShare]
    def __init__(self, session_id: _Optional[bytes] = ..., self_mask_shares: _Optional[_Iterable[_Union[OwnerShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[OwnerShare, _Mapping]]] = ...) -> None: ...

class ClientEnvelope(_message.Message):
    __slots__ = ("hello", "advertise_keys", "share_keys", "masked_input", "consistency_signature", "unmask_response", "envelope_opening", "abort")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    UNMASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_OPENING_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    advertise_keys: AdvertiseKeys
    share_keys: ShareKeys
    masked_input: MaskedInput
    consistency_signature: ConsistencySignature
    unmask_response: UnmaskResponse
    envelope_opening: EnvelopeOpening
    abort: Abort
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., advertise_keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeys, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInput, _Mapping]] = ..., consistency_signature: _Optional[_Union[ConsistencySignature, _Mapping]] = ..., unmask_response: _Optional[_Union[UnmaskResponse, _Mapping]] = ..., envelope_opening: _Optional[_Union[EnvelopeOpening, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("round_id", "params", "participant_id", "participants", "phase_timeout_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    params: ProtocolParams
    participant_id: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    phase_timeout_ms: int
    def __init__(self, round_id: _Optional[bytes] = ..., params: _Optional[_Union[ProtocolParams, _Mapping]] = ..., participant_id: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., phase_timeout_ms: _Optional[int] = ...) -> None: ...

class KeyAdvertisement(_message.Message):
    __slots__ = ("participant_id", "encryption_key", "masking_key", "signature")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    participant_id: int
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    def __init__(self, participant_id: _Optional[int] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class KeyRoster(_message.Message):
    __slots__ = ("round_id", "advertisements")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    advertisements: _containers.RepeatedCompositeFieldContainer[KeyAdvertisement]
    def __init__(self, round_id: _Optional[bytes] = ..., advertisements: _Optional[_Iterable[_Union[KeyAdvertisement, _Mapping]]] = ...) -> None: ...

class EncryptedShareFrom(_message.Message):
    __slots__ = ("sender", "ciphertext", "ephemeral_key", "self_mask_share_commitment", "key_share_commitment", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_KEY_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARE_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARE_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    ciphertext: bytes
    ephemeral_key: bytes
    self_mask_share_commitment: bytes
    key_share_commitment: bytes
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., ephemeral_key: _Optional[bytes] = ..., self_mask_share_commitment: _Optional[bytes] = ..., key_share_commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SelfMaskCommitment(_message.Message):
    __slots__ = ("sender", "commitment")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    commitment: bytes
    def __init__(self, sender: _Optional[int] = ..., commitment: _Optional[bytes] = ...) -> None: ...

class ShareBundle(_message.Message):
    __slots__ = ("session_id", "shares", "self_mask_commitments")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShareFrom]
    self_mask_commitments: _containers.RepeatedCompositeFieldContainer[SelfMaskCommitment]
    def __init__(self, session_id: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShareFrom, _Mapping]]] = ..., self_mask_commitments: _Optional[_Iterable[_Union[SelfMaskCommitment, _Mapping]]] = ...) -> None: ...

class ComplaintFrom(_message.Message):
    __slots__ = ("complainer", "signature")
    COMPLAINER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    complainer: int
    signature: bytes
    def __init__(self, complainer: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("session_id", "complaints")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    complaints: _containers.RepeatedCompositeFieldContainer[ComplaintFrom]
    def __init__(self, session_id: _Optional[bytes] = ..., complaints: _Optional[_Iterable[_Union[ComplaintFrom, _Mapping]]] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("session_id", "survivors")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("signer", "signature")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signer: int
    signature: bytes
    def __init__(self, signer: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("session_id", "survivors", "dropped", "signatures")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("session_id", "survivors")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class ServerEnvelope(_message.Message):
    __slots__ = ("round_start", "key_roster", "share_bundle", "consistency_request", "unmask_request", "round_result", "open_request", "abort")
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    KEY_ROSTER_FIELD_NUMBER: _ClassVar[int]
    SHARE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROUND_RESULT_FIELD_NUMBER: _ClassVar[int]
    OPEN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    round_start: RoundStart
    key_roster: KeyRoster
    share_bundle: ShareBundle
    consistency_request: ConsistencyRequest
    unmask_request: UnmaskRequest
    round_result: RoundResult
    open_request: OpenRequest
    abort: Abort
    def __init__(self, round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., key_roster: _Optional[_Union[KeyRoster, _Mapping]] = ..., share_bundle: _Optional[_Union[ShareBundle, _Mapping]] = ..., consistency_request: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., round_result: _Optional[_Union[RoundResult, _Mapping]] = ..., open_request: _Optional[_Union[OpenRequest, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("phase", "reason")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    reason: str
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., reason: _Optional[str] = ...) -> None: ...

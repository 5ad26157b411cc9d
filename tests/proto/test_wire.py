"""fedmask.proto.wire: every message survives protobuf and back unchanged, vectors bit for bit, and every
field the format fixes is checked on the way in."""

from __future__ import annotations

import numpy as np
import pytest

from fedmask.proto import transport, wire
from fedmask.proto.secagg.v1 import secagg_pb2 as pb
from fedmask.secagg import keys, shamir
from fedmask.secagg.errors import Phase
from fedmask.secagg.messages import (
    Abort,
    AdvertiseKeys,
    Complaint,
    ComplaintKind,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    EnvelopeOpening,
    KeyRoster,
    MaskedInput,
    OpenRequest,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.server import SHARE_CIPHERTEXT_BYTES

RNG = SeededRandom.from_int(7)
SID = RNG.random_bytes(32)
PARAMS = ProtocolParams(dimension=1000, modulus_bits=32, threshold=3, mode=SecurityMode.SEMI_HONEST)


def _bytes(n: int) -> bytes:
    return RNG.random_bytes(n)


def _over_the_wire_client(message, sender: int, params: ProtocolParams = PARAMS):
    data = wire.client_to_proto(message).SerializeToString()
    return wire.client_from_proto(pb.ClientEnvelope.FromString(data), sender=sender, params=params)


def _over_the_wire_server(message, recipient: int | None):
    data = wire.server_to_proto(message).SerializeToString()
    return wire.server_from_proto(pb.ServerEnvelope.FromString(data), recipient=recipient)


def _envelope(sender: int, recipient: int, signature: bytes = b"") -> EncryptedShare:
    return EncryptedShare(
        sender, recipient, _bytes(SHARE_CIPHERTEXT_BYTES), _bytes(32), _bytes(32), _bytes(32), signature
    )


def _advertisement(sender: int, signature: bytes = b"") -> AdvertiseKeys:
    return AdvertiseKeys(sender, b"round-1", _bytes(32), _bytes(32), signature)


# --- client messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [b"", b"s" * 64])
def test_advertise_keys_round_trip(signature):
    message = _advertisement(4, signature)
    assert _over_the_wire_client(message, sender=4) == message


@pytest.mark.parametrize("signature", [b"", b"s" * 64])
def test_share_keys_round_trip(signature):
    shares = tuple(_envelope(2, r, signature) for r in (1, 3, 9))
    message = ShareKeys(2, SID, shares, _bytes(32))
    assert _over_the_wire_client(message, sender=2) == message


@pytest.mark.parametrize("signature", [b"", b"c" * 64])
def test_masked_input_complaints_round_trip(signature):
    complaints = (Complaint(2, ComplaintKind.BAD_ENVELOPE, signature), Complaint(7, ComplaintKind.BAD_SIGNATURE))
    params = ProtocolParams(dimension=4, modulus_bits=32, threshold=3, mode=SecurityMode.SEMI_HONEST)
    message = MaskedInput(5, SID, np.arange(4, dtype=np.uint32), complaints)
    decoded = _over_the_wire_client(message, sender=5, params=params)
    assert decoded.complaints == complaints


def test_envelope_opening_round_trip():
    message = EnvelopeOpening(3, SID, ((1, _bytes(32)), (4, _bytes(32))))
    assert _over_the_wire_client(message, sender=3) == message


@pytest.mark.parametrize("bits", [1, 17, 31, 32, 33, 63, 64])
def test_masked_input_is_bit_exact(bits):
    params = ProtocolParams(dimension=1000, modulus_bits=bits, threshold=3, mode=SecurityMode.SEMI_HONEST)
    dtype = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
    values = np.frombuffer(_bytes(1000 * dtype.itemsize), dtype=dtype).copy()
    values &= dtype.type((1 << bits) - 1)
    values[:3] = [0, (1 << bits) - 1, 1]  # the extremes survive too
    decoded = _over_the_wire_client(MaskedInput(5, SID, values), sender=5, params=params)
    assert decoded.sender == 5 and decoded.session_id == SID
    assert decoded.masked.dtype == dtype
    assert decoded.masked.tobytes() == values.tobytes()


def test_vectors_are_packed_little_endian_4_bytes_a_value():
    values = np.array([1, 0x01020304, 0xFFFFFFFF], dtype=np.uint32)
    envelope = wire.client_to_proto(MaskedInput(1, SID, values))
    assert envelope.masked_input.masked == b"\x01\0\0\0\x04\x03\x02\x01\xff\xff\xff\xff"
    big_endian = values.astype(">u4")
    assert wire.pack_vector(big_endian) == envelope.masked_input.masked


def test_wire_adds_under_one_percent_to_a_masked_input():
    values = np.zeros(100_000, dtype=np.uint32)
    size = wire.client_to_proto(MaskedInput(1, SID, values)).ByteSize()
    assert values.nbytes < size < values.nbytes * 1.01


def test_consistency_signature_round_trip():
    message = ConsistencySignature(3, SID, _bytes(64))
    assert _over_the_wire_client(message, sender=3) == message


def test_unmask_response_round_trip():
    message = UnmaskResponse(3, SID, ((1, _bytes(33)), (2, _bytes(33))), ((7, _bytes(33)),))
    assert _over_the_wire_client(message, sender=3) == message


def test_client_abort_round_trip():
    message = Abort(Phase.SHARE_KEYS, "bad share from participant 2", sender=6)
    assert _over_the_wire_client(message, sender=6) == message


def test_hello_round_trip():
    assert _over_the_wire_client(wire.Hello(), sender=1) == wire.Hello(wire.PROTOCOL_VERSION)


def test_no_client_message_can_name_its_sender():
    def field_names(descriptor, seen=()):
        for f in descriptor.fields:
            yield f.name
            if f.message_type is not None and f.message_type not in seen:
                yield from field_names(f.message_type, (*seen, descriptor))

    names = set(field_names(pb.ClientEnvelope.DESCRIPTOR))
    assert not names & {"sender", "participant_id", "participant", "name", "from"}
    envelope = wire.client_to_proto(_advertisement(4))
    assert wire.client_from_proto(envelope, sender=9, params=PARAMS).sender == 9


def test_every_client_message_type_is_mapped():
    oneof = {f.name for f in pb.ClientEnvelope.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert set(wire.CLIENT_FIELDS.values()) == oneof


# --- server messages -----------------------------------------------------------------------------


def test_round_start_round_trip():
    start = wire.RoundStart(
        b"fedmask/abc/round-1",
        ProtocolParams(100_000, 32, 7, SecurityMode.MALICIOUS, 6),
        3,
        ("bank", "clinic-a", "clinic-b", "hospital-a", "hospital-b", "insurer", "lab", "pharmacy", "uni", "zoo"),
        12.5,
    )
    assert _over_the_wire_server(start, recipient=None) == start


@pytest.mark.parametrize("signature", [b"", b"x" * 64])
def test_key_roster_round_trip(signature):
    roster = KeyRoster(b"round-1", tuple(_advertisement(u, signature) for u in (1, 2, 5)))
    assert _over_the_wire_server(roster, recipient=2) == roster


def test_share_bundle_round_trip():
    senders = (1, 2, 3)
    bundle = ShareBundle(4, SID, tuple(_envelope(s, 4) for s in senders), tuple((s, _bytes(32)) for s in senders))
    assert _over_the_wire_server(bundle, recipient=4) == bundle


def test_open_request_round_trip():
    request = OpenRequest(SID, ((2, _bytes(64)), (5, b"")))
    assert _over_the_wire_server(request, recipient=1) == request


def test_consistency_request_round_trip():
    request = ConsistencyRequest(SID, (1, 2, 4))
    assert _over_the_wire_server(request, recipient=1) == request


def test_unmask_request_round_trip():
    request = UnmaskRequest(SID, (1, 2, 4), (3,), ((1, _bytes(64)), (2, _bytes(64))))
    assert _over_the_wire_server(request, recipient=2) == request


def test_round_result_round_trip():
    result = wire.RoundResult(SID, (1, 2, 4))
    assert _over_the_wire_server(result, recipient=2) == result


def test_server_abort_round_trip():
    abort = Abort(Phase.UNMASK, "only 2 participants responded, threshold is 3")
    assert _over_the_wire_server(abort, recipient=None) == abort


def test_every_server_message_type_is_mapped():
    oneof = {f.name for f in pb.ServerEnvelope.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert set(wire.SERVER_FIELDS.values()) == oneof


@pytest.mark.parametrize("mode", list(SecurityMode))
@pytest.mark.parametrize("neighbours", [None, 4])
def test_params_round_trip(mode, neighbours):
    params = ProtocolParams(12345, 20, 5, mode, neighbours)
    assert wire.params_from_proto(wire.params_to_proto(params)) == params


# --- decoding refuses what does not fit -----------------------------------------------------------


def _client_envelope(**body) -> pb.ClientEnvelope:
    return pb.ClientEnvelope(**body)


def _envelope_to(**fields) -> pb.EncryptedShareTo:
    """A well-formed envelope for participant 2, with ``fields`` changed."""
    good = {
        "recipient": 2,
        "ciphertext": bytes(SHARE_CIPHERTEXT_BYTES),
        "ephemeral_key": bytes(32),
        "self_mask_share_commitment": bytes(32),
        "key_share_commitment": bytes(32),
    }
    return pb.EncryptedShareTo(**(good | fields))


@pytest.mark.parametrize(
    "envelope, reason",
    [
        (pb.ClientEnvelope(), "empty envelope"),
        (
            _client_envelope(
                advertise_keys=pb.AdvertiseKeys(round_id=b"r", encryption_key=b"k" * 31, masking_key=b"m" * 32)
            ),
            "encryption key must be 32 bytes",
        ),
        (
            _client_envelope(
                advertise_keys=pb.AdvertiseKeys(
                    round_id=b"r", encryption_key=b"k" * 32, masking_key=b"m" * 32, signature=b"s" * 10
                )
            ),
            "signature must be 64 bytes",
        ),
        (
            _client_envelope(
                advertise_keys=pb.AdvertiseKeys(round_id=b"", encryption_key=b"k" * 32, masking_key=b"m" * 32)
            ),
            "round id",
        ),
        (
            _client_envelope(masked_input=pb.MaskedInput(session_id=SID, masked=bytes(3999))),
            "3999 bytes, expected 4000",
        ),
        (
            _client_envelope(masked_input=pb.MaskedInput(session_id=SID, masked=bytes(4004))),
            "4004 bytes, expected 4000",
        ),
        (
            _client_envelope(masked_input=pb.MaskedInput(session_id=SID[:31], masked=bytes(4000))),
            "session id must be 32",
        ),
        (
            _client_envelope(
                share_keys=pb.ShareKeys(
                    session_id=SID, shares=[pb.EncryptedShareTo(recipient=0, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES))]
                )
            ),
            "share recipient must be a participant id",
        ),
        (
            _client_envelope(
                share_keys=pb.ShareKeys(session_id=SID, shares=[pb.EncryptedShareTo(recipient=2, ciphertext=bytes(5))])
            ),
            "share ciphertext must be",
        ),
        (
            _client_envelope(share_keys=pb.ShareKeys(session_id=SID, shares=[_envelope_to(ephemeral_key=bytes(31))])),
            "envelope ephemeral key must be 32 bytes",
        ),
        (
            _client_envelope(
                share_keys=pb.ShareKeys(session_id=SID, shares=[_envelope_to(key_share_commitment=bytes(16))])
            ),
            "key share commitment must be 32 bytes",
        ),
        (
            _client_envelope(
                share_keys=pb.ShareKeys(session_id=SID, shares=[_envelope_to()], self_mask_commitment=b"")
            ),
            "self-mask commitment must be 32 bytes",
        ),
        (
            _client_envelope(
                masked_input=pb.MaskedInput(
                    session_id=SID, masked=bytes(4000), complaints=[pb.Complaint(accused=2, kind=9)]
                )
            ),
            "unknown complaint kind",
        ),
        (
            _client_envelope(
                envelope_opening=pb.EnvelopeOpening(
                    session_id=SID, openings=[pb.Opening(holder=2, ephemeral_secret=bytes(16))]
                )
            ),
            "ephemeral secret must be 32 bytes",
        ),
        (
            _client_envelope(
                unmask_response=pb.UnmaskResponse(session_id=SID, key_shares=[pb.OwnerShare(owner=2, share=bytes(32))])
            ),
            "Shamir share must be 33 bytes",
        ),
        (
            _client_envelope(consistency_signature=pb.ConsistencySignature(session_id=SID, signature=b"")),
            "signature must be 64",
        ),
        (_client_envelope(abort=pb.Abort(phase=99, reason="x")), "unknown phase"),
    ],
)
def test_malformed_client_messages_are_refused(envelope, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.client_from_proto(envelope, sender=1, params=PARAMS)


def test_a_peer_reason_is_made_printable_and_bounded():
    envelope = pb.ClientEnvelope(abort=pb.Abort(phase=pb.PHASE_UNMASK, reason="\x1b[31mred\n" + "x" * 5000))
    abort = wire.client_from_proto(envelope, sender=1, params=PARAMS)
    assert "\x1b" not in abort.reason and "\n" not in abort.reason
    assert len(abort.reason) <= wire.MAX_REASON_CHARS + 3


@pytest.mark.parametrize(
    "start, reason",
    [
        (pb.RoundStart(round_id=b"r", participant_id=1, participants=["a", "b"]), "without protocol parameters"),
        (
            pb.RoundStart(
                round_id=b"r", params=wire.params_to_proto(PARAMS), participant_id=3, participants=["a", "b", "c"][:2]
            ),
            "participant id 3 is not in 1..2",
        ),
        (
            pb.RoundStart(
                round_id=b"r", params=wire.params_to_proto(PARAMS), participant_id=1, participants=["b", "a", "c"]
            ),
            "sorted and distinct",
        ),
        (
            pb.RoundStart(
                round_id=b"r", params=wire.params_to_proto(PARAMS), participant_id=1, participants=["a", "a", "c"]
            ),
            "sorted and distinct",
        ),
        (
            pb.RoundStart(
                round_id=b"r", params=wire.params_to_proto(PARAMS), participant_id=1, participants=["A", "b", "c"]
            ),
            "malformed participant name",
        ),
        (
            pb.RoundStart(
                round_id=b"r",
                params=pb.ProtocolParams(dimension=10, modulus_bits=32, threshold=9, mode=pb.SECURITY_MODE_SEMI_HONEST),
                participant_id=1,
                participants=["a", "b", "c"],
            ),
            "unusable round parameters",
        ),
        (
            pb.RoundStart(
                round_id=b"r",
                params=pb.ProtocolParams(dimension=10, modulus_bits=32, threshold=2, mode=pb.SECURITY_MODE_UNSPECIFIED),
                participant_id=1,
                participants=["a", "b", "c"],
            ),
            "unknown security mode",
        ),
    ],
)
def test_bad_round_starts_are_refused(start, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.server_from_proto(pb.ServerEnvelope(round_start=start), recipient=None)


def test_protocol_messages_before_the_round_start_are_refused():
    envelope = wire.server_to_proto(ConsistencyRequest(SID, (1, 2)))
    with pytest.raises(wire.WireError, match="before the round started"):
        wire.server_from_proto(envelope, recipient=None)


def test_server_lists_with_id_zero_are_refused():
    envelope = pb.ServerEnvelope(unmask_request=pb.UnmaskRequest(session_id=SID, survivors=[1, 0]))
    with pytest.raises(wire.WireError, match="survivor must be a participant id"):
        wire.server_from_proto(envelope, recipient=1)


# --- sizes -----------------------------------------------------------------------------------------


def test_message_size_limit_covers_every_honest_message_and_little_more():
    n, d = 50, 100_000
    params = ProtocolParams(d, 32, 34, SecurityMode.MALICIOUS)
    limit = transport.max_participant_message_bytes(params, n)
    masked = wire.client_to_proto(MaskedInput(1, SID, np.zeros(d, np.uint32))).ByteSize()
    shares = wire.client_to_proto(
        ShareKeys(1, SID, tuple(_envelope(1, r, bytes(64)) for r in range(2, n + 1)), bytes(32))
    ).ByteSize()
    complaints = tuple(Complaint(u, ComplaintKind.BAD_ENVELOPE, bytes(64)) for u in range(2, n + 1))
    masked_with_complaints = wire.client_to_proto(MaskedInput(1, SID, np.zeros(d, np.uint32), complaints)).ByteSize()
    unmask = wire.client_to_proto(
        UnmaskResponse(1, SID, tuple((u, bytes(shamir.SHARE_BYTES)) for u in range(1, n + 1)), ())
    ).ByteSize()
    assert max(masked, masked_with_complaints, shares, unmask) < limit < 4 * d * 1.25
    roster = wire.server_to_proto(
        KeyRoster(
            b"r" * 64,
            tuple(
                AdvertiseKeys(u, b"r" * 64, bytes(32), bytes(32), bytes(keys.SIGNATURE_BYTES)) for u in range(1, n + 1)
            ),
        )
    ).ByteSize()
    assert roster < transport.max_coordinator_message_bytes(n)

"""The server against hostile participants: each malformed message is refused with its reason
before it is used, and the sender's honest message is still accepted afterwards (a refusal
changes nothing in the state machine)."""

import dataclasses

import pytest

from fedmask.secagg import InvalidMessage, ProtocolParams, Rejection, SecurityMode
from fedmask.secagg.errors import AbortKind, DropKind, Phase, ProtocolAbort
from fedmask.secagg.messages import (
    Complaint,
    ComplaintKind,
    ConsistencySignature,
    EnvelopeOpening,
    MaskedInput,
    UnmaskResponse,
)
from fedmask.secagg.server import ServerConfig


def _share_keys(make_round, mode=SecurityMode.SEMI_HONEST):
    """A round at the share phase and participant 1's honest ShareKeys (not yet delivered)."""
    r = make_round(4, t=3, mode=mode)
    rosters = r.advertise()
    for u in (2, 3, 4):
        r.server.receive(r.clients[u].receive(rosters[u]))
    return r, r.clients[1].receive(rosters[1])


def _refused(server, message, reason: str) -> None:
    with pytest.raises(InvalidMessage) as refusal:
        server.receive(message)
    assert reason in refusal.value.reason


def _with_first_share(message, **changes):
    return dataclasses.replace(message, shares=(dataclasses.replace(message.shares[0], **changes), *message.shares[1:]))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: dataclasses.replace(m, self_mask_commitment=m.self_mask_commitment[:-1]), "self-mask commitment"),
        (lambda m: _with_first_share(m, sender=3), "a share claims another sender"),
        (lambda m: _with_first_share(m, ciphertext=m.shares[0].ciphertext[:-1]), "share ciphertexts are"),
        (lambda m: _with_first_share(m, ephemeral_key=m.shares[0].ephemeral_key + b"\0"), "envelope ephemeral keys"),
        (
            lambda m: _with_first_share(m, key_share_commitment=m.shares[0].key_share_commitment[:16]),
            "share commitments are 32 bytes",
        ),
        (
            lambda m: _with_first_share(m, self_mask_share_commitment=b""),
            "share commitments are 32 bytes",
        ),
        (lambda m: _with_first_share(m, signature=b"\1" * 64), "envelope signatures are 0 bytes in semi-honest mode"),
    ],
    ids=["self-mask-commitment", "sender", "ciphertext", "ephemeral-key", "key-commitment", "b-commitment", "sig"],
)
def test_a_malformed_share_message_is_refused(make_round, tamper, reason):
    r, honest = _share_keys(make_round)
    _refused(r.server, tamper(honest), reason)
    r.server.receive(honest)


def test_an_envelope_signature_of_the_wrong_length_is_refused_in_malicious_mode(make_round):
    r, honest = _share_keys(make_round, mode=SecurityMode.MALICIOUS)
    short = _with_first_share(honest, signature=honest.shares[0].signature[:-1])
    _refused(r.server, short, "envelope signatures are 64 bytes in malicious mode")
    r.server.receive(honest)


def _masked_input_phase(make_round):
    """Participant 4 dealt no shares; participant 1's honest masked input, not yet delivered."""
    r = make_round(4, t=3)
    r.answer(r.advertise(), who=(1, 2, 3))
    bundles = r.server.close_phase()
    for u in (2, 3):
        r.server.receive(r.clients[u].receive(bundles[u]))
    return r, r.clients[1].receive(bundles[1])


def test_a_complaint_about_a_participant_that_sent_no_envelope_is_refused(make_round):
    r, honest = _masked_input_phase(make_round)
    assert isinstance(honest, MaskedInput) and not honest.complaints
    invented = dataclasses.replace(honest, complaints=(Complaint(4, ComplaintKind.BAD_ENVELOPE),))
    _refused(r.server, invented, "complains about participant 4, who sent it no envelope")
    r.server.receive(honest)


def test_two_complaints_about_one_participant_are_refused(make_round):
    r, honest = _masked_input_phase(make_round)
    twice = dataclasses.replace(honest, complaints=(Complaint(2, ComplaintKind.BAD_ENVELOPE),) * 2)
    _refused(r.server, twice, "complains twice about one participant")
    r.server.receive(honest)


def test_a_consistency_signature_of_the_wrong_length_is_refused(make_round):
    r = make_round(4, t=3, mode=SecurityMode.MALICIOUS)
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    requests = r.server.close_phase()
    honest = r.clients[1].receive(requests[1])
    assert isinstance(honest, ConsistencySignature)
    _refused(r.server, dataclasses.replace(honest, signature=honest.signature[:-1]), "malformed signature")
    r.server.receive(honest)


def test_an_unmask_response_without_the_dropped_participant_s_key_share_is_refused(make_round):
    """4 dropped after sharing: every holder must hand over its share of 4's masking key, or
    the server cannot remove the masks 4 shared with the survivors."""
    r = make_round(4, t=3)
    r.answer(r.advertise())
    r.answer(r.server.close_phase(), who=(1, 2, 3))
    requests = r.server.close_phase()
    honest = r.clients[1].receive(requests[1])
    assert isinstance(honest, UnmaskResponse) and [owner for owner, _ in honest.key_shares] == [4]
    _refused(
        r.server,
        dataclasses.replace(honest, key_shares=()),
        "key shares must cover exactly the dropped participants it holds shares of",
    )
    r.server.receive(honest)


@pytest.mark.parametrize(
    ("complaint", "reason"),
    [
        (Complaint(2, "bogus"), "unknown complaint kind"),  # type: ignore[arg-type]
        (Complaint(2, ComplaintKind.BAD_SIGNATURE), "complaints about signatures exist only in malicious-server mode"),
        (
            Complaint(2, ComplaintKind.BAD_ENVELOPE, b"\1" * 64),
            "complaints about signatures exist only in malicious-server mode",
        ),
    ],
    ids=["unknown-kind", "bad-signature-kind", "signed"],
)
def test_a_complaint_that_cannot_be_made_in_semi_honest_mode_is_refused(make_round, complaint, reason):
    r, honest = _masked_input_phase(make_round)
    _refused(r.server, dataclasses.replace(honest, complaints=(complaint,)), reason)
    r.server.receive(honest)


def test_a_server_for_a_participant_listed_twice_cannot_be_made():
    params = ProtocolParams(8, 32, 2, SecurityMode.SEMI_HONEST)
    with pytest.raises(ValueError, match="participant ids must be distinct"):
        ServerConfig(b"round-1", params, (1, 2, 2))


def _opening_of_participant_1(make_round):
    """Participant 3 complains about participant 1's envelope; 1's honest opening, not yet
    delivered."""
    r = make_round(5, t=3)
    r.answer(r.advertise())

    def complain(u, reply):
        return dataclasses.replace(reply, complaints=(Complaint(1, ComplaintKind.BAD_ENVELOPE),)) if u == 3 else reply

    r.answer(r.server.close_phase(), tamper=complain)
    requests = r.server.close_phase()
    assert set(requests) == {1}
    return r, r.clients[1].receive(requests[1])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: dataclasses.replace(m, openings=(*m.openings, (4, m.openings[0][1]))), "nobody complained about"),
        (lambda m: dataclasses.replace(m, openings=m.openings * 2), "nobody complained about"),
        (lambda m: dataclasses.replace(m, openings=((3, m.openings[0][1][:-1]),)), "a 32-byte ephemeral secret"),
    ],
    ids=["unasked", "twice", "short-secret"],
)
def test_an_opening_beyond_the_complaints_or_malformed_is_refused(make_round, tamper, reason):
    r, honest = _opening_of_participant_1(make_round)
    assert isinstance(honest, EnvelopeOpening) and [h for h, _ in honest.openings] == [3]
    _refused(r.server, tamper(honest), reason)
    r.server.receive(honest)


def test_a_message_after_the_round_is_over_is_refused(make_round):
    r = make_round(4, t=3)
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    r.answer(r.server.close_phase())
    r.server.close_phase()
    assert r.server.result is not None
    late = make_round(4, t=3, seed=1).clients[1].start()  # well formed, and for this round id
    with pytest.raises(InvalidMessage) as refusal:
        r.server.receive(late)
    assert refusal.value.kind is Rejection.ROUND_OVER and "the round is completed" in refusal.value.reason


def test_a_key_phase_that_leaves_no_graph_of_the_degree_aborts_with_its_reason(make_round):
    """Degree 3 over 6 participants, one missing the key phase: 5 cannot have a 3-regular graph.
    The round aborts with the reason (a coordinator reports it) instead of raising out of the
    state machine."""
    r = make_round(6, t=3, neighbours=3)
    for u in r.ids[:5]:
        r.server.receive(r.clients[u].start())
    r.server.drop(6, "missed the advertise-keys deadline", DropKind.DEADLINE)
    with pytest.raises(ProtocolAbort) as caught:
        r.server.close_phase()
    assert caught.value.phase is Phase.ADVERTISE_KEYS and caught.value.kind is AbortKind.UNSAFE_ROUND
    assert caught.value.reason == "no 3-regular graph on 5 participants: an odd degree needs an even count"
    assert r.server.phase is Phase.ABORTED

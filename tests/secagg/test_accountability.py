"""No wrong sum is reported as completed, and a participant that sends bad messages is named.

Hostile participants corrupt what they reveal or deal (a share of b_u, an envelope, a commitment,
a complaint); the server finds them through the commitments every dealer makes before anything
is revealed, and through openings of the envelopes a complaint names. Honest parties reveal
nothing beyond what a complainer already held, and the sum, when the round completes, is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedmask.secagg import Phase, ProtocolAbort, SecurityMode, keys, shamir
from fedmask.secagg.client import ClientState
from fedmask.secagg.messages import (
    Abort,
    Complaint,
    ComplaintKind,
    EnvelopeOpening,
    MaskedInput,
    OpenRequest,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.server import ServerState

MODES = [SecurityMode.SEMI_HONEST, SecurityMode.MALICIOUS]


def _to_unmask(r):
    """Advertise, share, mask; in malicious mode also sign the survivor list. Returns the
    unmask requests."""
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    outgoing = r.server.close_phase()
    if r.params.mode is SecurityMode.MALICIOUS:
        r.answer(outgoing)
        outgoing = r.server.close_phase()
    return outgoing


def _plus_one(share: bytes) -> bytes:
    return shamir.encode_share((shamir.decode_share(share) + 1) % shamir.FIELD_PRIME)


def _corrupt_self_mask_share(response: UnmaskResponse, owner: int) -> UnmaskResponse:
    shares = tuple((o, _plus_one(s) if o == owner else s) for o, s in response.self_mask_shares)
    return dataclasses.replace(response, self_mask_shares=shares)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_corrupted_share_is_left_out_and_the_sum_is_exact(make_round, mode):
    """The attack of the issue: an enrolled participant adds 1 to its share of another
    survivor's self-mask seed. Before, every coordinate of the sum came out wrong."""
    r = make_round(4, t=3, mode=mode)
    requests = _to_unmask(r)
    r.answer(requests, tamper=lambda u, reply: _corrupt_self_mask_share(reply, owner=1) if u == 4 else reply)
    assert r.server.close_phase() == {}
    assert r.server.state is ServerState.COMPLETED
    np.testing.assert_array_equal(r.server.result, r.expected_sum(r.ids))
    assert r.server.culprits == {4: "revealed a share of participant 1's self-mask seed it was never dealt"}


def test_too_many_corrupted_shares_abort_naming_the_liars(make_round):
    r = make_round(4, t=3)
    requests = _to_unmask(r)
    r.answer(requests, tamper=lambda u, reply: _corrupt_self_mask_share(reply, owner=1) if u in (3, 4) else reply)
    with pytest.raises(ProtocolAbort, match="good shares, threshold is 3") as aborted:
        r.server.close_phase()
    assert set(aborted.value.culprits) == {3, 4}
    assert r.server.state is ServerState.ABORTED


def test_a_dealer_whose_shares_miss_its_commitment_is_named(make_round):
    """Participant 1 commits to one b and deals shares of another: the rebuilt b does not match."""
    r = make_round(4, t=3)
    r.answer(r.advertise(), tamper=lambda u, m: dataclasses.replace(m, self_mask_commitment=bytes(32)) if u == 1 else m)
    r.answer(r.server.close_phase())
    r.answer(r.server.close_phase())
    with pytest.raises(ProtocolAbort, match="participant 1 dealt shares that do not rebuild") as aborted:
        r.server.close_phase()
    assert set(aborted.value.culprits) == {1}


def _flip_byte(envelope):
    ciphertext = bytearray(envelope.ciphertext)
    ciphertext[20] ^= 0x01
    return dataclasses.replace(envelope, ciphertext=bytes(ciphertext))


def _tampered_share_keys(r, sender: int, *, resign: bool):
    """Participant ``sender`` flips a byte in every envelope it sends (re-signing them when
    ``resign``, as a cheater holding its own identity key can)."""

    def tamper(u, reply):
        if u != sender or not isinstance(reply, ShareKeys):
            return reply
        envelopes = []
        for envelope in reply.shares:
            bad = _flip_byte(envelope)
            if resign:
                payload = keys.envelope_payload_of(
                    reply.session_id, bad, self_mask_commitment=reply.self_mask_commitment
                )
                bad = dataclasses.replace(bad, signature=keys.sign(r.identity[u], payload))
            envelopes.append(bad)
        return dataclasses.replace(reply, shares=tuple(envelopes))

    return tamper


@pytest.mark.parametrize(
    ("mode", "resign", "kind"),
    [
        (SecurityMode.SEMI_HONEST, False, ComplaintKind.BAD_ENVELOPE),
        (SecurityMode.MALICIOUS, True, ComplaintKind.BAD_ENVELOPE),
        (SecurityMode.MALICIOUS, False, ComplaintKind.BAD_SIGNATURE),
    ],
    ids=["semi-honest", "malicious-signed", "malicious-unsigned"],
)
def test_tampered_envelopes_are_complained_about_and_their_sender_convicted(make_round, mode, resign, kind):
    r = make_round(5, t=3, mode=mode)
    r.answer(r.advertise(), tamper=_tampered_share_keys(r, 2, resign=resign))
    masked = r.answer(r.server.close_phase())
    for u in (1, 3, 4, 5):  # every honest recipient complains, and still sends its masked input
        assert isinstance(masked[u], MaskedInput)
        assert [(c.accused, c.kind) for c in masked[u].complaints] == [(2, kind)]
    if kind is ComplaintKind.BAD_SIGNATURE:  # decided on what the server received: no opening
        with pytest.raises(
            ProtocolAbort, match=r"participant 2 sent participant \d a share envelope without a valid signature"
        ):
            r.server.close_phase()
    else:
        requests = r.server.close_phase()
        assert r.server.state is ServerState.COLLECTING_OPENINGS
        assert set(requests) == {2} and isinstance(requests[2], OpenRequest)
        r.answer(requests)
        assert r.clients[2].state is ClientState.OPENED_ENVELOPES
        with pytest.raises(ProtocolAbort, match="participant 2 sent an envelope that does not decrypt"):
            r.server.close_phase()
    assert set(r.server.culprits) == {2}  # the honest complainers are not blamed
    assert r.server.state is ServerState.ABORTED


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_false_complaint_convicts_the_complainer(make_round, mode):
    """Participant 3 claims participant 1's envelope was bad: 1 opens it and it is fine."""
    r = make_round(5, t=3, mode=mode)
    r.answer(r.advertise())

    def lie(u, reply):
        if u != 3:
            return reply
        signature = b""
        if mode is SecurityMode.MALICIOUS:
            payload = keys.complaint_payload(reply.session_id, 3, 1, ComplaintKind.BAD_ENVELOPE.value)
            signature = keys.sign(r.identity[3], payload)
        return dataclasses.replace(reply, complaints=(Complaint(1, ComplaintKind.BAD_ENVELOPE, signature),))

    r.answer(r.server.close_phase(), tamper=lie)
    r.answer(r.server.close_phase())  # 1 opens its envelope for 3
    with pytest.raises(ProtocolAbort, match="participant 3 complained about a valid envelope from participant 1"):
        r.server.close_phase()
    assert set(r.server.culprits) == {3}


def test_an_accused_that_does_not_open_is_a_suspect_not_a_culprit(make_round):
    r = make_round(5, t=3)
    r.answer(r.advertise(), tamper=_tampered_share_keys(r, 2, resign=False))
    r.answer(r.server.close_phase())
    r.server.close_phase()  # OpenRequest to 2, which never answers
    with pytest.raises(ProtocolAbort, match="participant 2 did not open its envelope") as aborted:
        r.server.close_phase()
    assert aborted.value.culprits == {} and set(aborted.value.suspects) == {2}


def test_an_accused_opens_at_most_t_minus_1_envelopes(make_round):
    """A lying server (semi-honest mode has no signed complaints) asks for every envelope:
    t - 1 openings reveal t - 1 shares of b_u and of s_u, which is nothing."""
    r = make_round(5, t=3)
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    client = r.clients[1]
    reply = client.receive(OpenRequest(r.server.session_id, tuple((v, b"") for v in (2, 3, 4, 5))))
    assert isinstance(reply, EnvelopeOpening)
    assert [holder for holder, _ in reply.openings] == [2, 3]
    # After an opening it reveals nothing more, whatever it is asked.
    later = client.receive(UnmaskRequest(r.server.session_id, (1, 2, 3, 4, 5), ()))
    assert isinstance(later, Abort) and client.state is ClientState.ABORTED


def test_a_forged_complaint_opens_nothing_in_malicious_mode(make_round):
    r = make_round(5, t=3, mode=SecurityMode.MALICIOUS)
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    r.answer(r.server.close_phase())  # consistency signatures
    forged = OpenRequest(r.server.session_id, ((2, bytes(64)), (3, bytes(64))))
    reply = r.clients[1].receive(forged)
    assert isinstance(reply, Abort) and "without a valid complaint" in reply.reason


def test_a_split_view_threshold_is_refused_by_the_client(make_round):
    """n = 4, t = 2 (the split-view attack of the issue): the server could rebuild b_u from one
    pair of holders and s_u from the other. The client refuses before dealing anything."""
    r = make_round(4, t=3)
    lowered = dataclasses.replace(r.params, threshold=2)
    for client in r.clients.values():
        client.params = lowered
        client.config = dataclasses.replace(client.config, params=lowered)
    roster = r.advertise()
    reply = r.clients[1].receive(roster[1])
    assert isinstance(reply, Abort) and "does not exceed half of the 4 share holders" in reply.reason
    assert reply.phase is Phase.ADVERTISE_KEYS


def _reseal_for_holder(r, sender: int, holder: int, reply: ShareKeys, *, header: tuple[int, int]) -> ShareKeys:
    """``sender``'s envelope to ``holder`` again, under the same ephemeral key and with the same
    shares (so its commitments still match), but with ``header`` as (sender, recipient) inside."""
    sid = reply.session_id
    envelope = next(e for e in reply.shares if e.recipient == holder)
    ephemeral = keys.AgreementKeyPair.from_private_bytes(r.clients[sender]._envelope_secrets[holder])
    secret = keys.exchange(ephemeral.private_bytes, r.server._current_session().advertisements[holder].encryption_key)
    key = keys.envelope_key(
        secret, session_id=sid, sender=sender, receiver=holder, ephemeral_key=envelope.ephemeral_key
    )
    plaintext = keys.decrypt_share(key, envelope.ciphertext, session_id=sid, sender=sender, receiver=holder)
    _, _, b_bytes, s_bytes = keys.SHARE_PLAINTEXT.unpack(plaintext)
    forged = keys.SHARE_PLAINTEXT.pack(*header, b_bytes, s_bytes)
    ciphertext = keys.encrypt_share(
        key, forged, session_id=sid, sender=sender, receiver=holder, rng=SeededRandom.from_int(7)
    )
    resealed = dataclasses.replace(envelope, ciphertext=ciphertext)
    return dataclasses.replace(reply, shares=tuple(resealed if e is envelope else e for e in reply.shares))


def test_an_envelope_whose_header_names_another_holder_convicts_its_sender(make_round):
    """Participant 2 seals holder 3's shares, with their true commitments, in an envelope whose
    header says it is for holder 4. Holder 3 rightly refuses it; the opening decrypts and the
    commitments match, so only the header shows whose fault it is: 2's, not the complainer's."""
    r = make_round(5, t=3)
    rosters = r.advertise()
    r.answer(rosters, tamper=lambda u, reply: _reseal_for_holder(r, 2, 3, reply, header=(2, 4)) if u == 2 else reply)
    masked = r.answer(r.server.close_phase())
    assert [(c.accused, c.kind) for c in masked[3].complaints] == [(2, ComplaintKind.BAD_ENVELOPE)]
    r.answer(r.server.close_phase())  # 2 opens its envelope for 3
    with pytest.raises(ProtocolAbort, match="participant 2 sent an envelope whose header names other participants"):
        r.server.close_phase()
    assert set(r.server.culprits) == {2}


def test_shares_that_do_not_match_their_commitments_convict_their_sender(make_round):
    r = make_round(5, t=3)

    def recommit(u, reply):
        if u != 2:
            return reply
        first = dataclasses.replace(reply.shares[0], key_share_commitment=bytes(32))
        return dataclasses.replace(reply, shares=(first, *reply.shares[1:]))

    r.answer(r.advertise(), tamper=recommit)
    r.answer(r.server.close_phase())
    r.answer(r.server.close_phase())  # 2 opens the envelope its holder complained about
    with pytest.raises(ProtocolAbort, match="participant 2 sent shares that do not match its own commitments"):
        r.server.close_phase()
    assert set(r.server.culprits) == {2}


def test_an_opening_with_another_secret_convicts_the_accused(make_round):
    """Falsely accused by 3, participant 1 opens with some other key: the server cannot tell what
    the envelope held, and the one who failed to show it is 1."""
    r = make_round(5, t=3)
    r.answer(r.advertise())

    def complain(u, reply):
        return dataclasses.replace(reply, complaints=(Complaint(1, ComplaintKind.BAD_ENVELOPE),)) if u == 3 else reply

    r.answer(r.server.close_phase(), tamper=complain)
    other_secret = SeededRandom.from_int(11).random_bytes(32)
    r.answer(
        r.server.close_phase(),
        tamper=lambda u, reply: dataclasses.replace(reply, openings=((3, other_secret),)),
    )
    with pytest.raises(ProtocolAbort, match="participant 1 opened it with a secret that does not match the envelope"):
        r.server.close_phase()
    assert set(r.server.culprits) == {1}


def test_a_dropped_dealer_whose_shares_rebuild_another_key_is_named(make_round, monkeypatch):
    """Participant 4 deals consistent shares (their commitments match) of a masking key other
    than the one it advertised, then drops out: the rebuilt key cannot remove its masks, and the
    server names 4 instead of reporting a wrong sum."""
    from fedmask.secagg import client as client_module

    r = make_round(5, t=3)
    advertised = r.clients[4]._masking.private_bytes
    other = SeededRandom.from_int(5).random_bytes(32)
    real_split = client_module.shamir.split

    def split(secrets, **kwargs):
        secrets = [other if s == advertised else s for s in secrets]
        return real_split(secrets, **kwargs)

    monkeypatch.setattr(client_module.shamir, "split", split)
    r.answer(r.advertise())
    r.answer(r.server.close_phase(), who=(1, 2, 3, 5))  # 4 drops before its masked input
    r.answer(r.server.close_phase())
    with pytest.raises(ProtocolAbort, match="participant 4 dealt shares that do not rebuild the masking key"):
        r.server.close_phase()
    assert set(r.server.culprits) == {4}

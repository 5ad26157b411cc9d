"""The client against a lying server: every malformed roster, share bundle or survivor list is
refused with its reason, before the client computes or reveals anything from it."""

import dataclasses

import pytest

from fedmask.secagg import SecurityMode
from fedmask.secagg.client import Client, ClientState
from fedmask.secagg.messages import Abort, KeyRoster, MaskedInput, UnmaskRequest
from fedmask.secagg.rand import SeededRandom


def _refusal(client, message) -> str:
    reply = client.receive(message)
    assert isinstance(reply, Abort), f"expected an abort, got {reply!r}"
    assert client.state is ClientState.ABORTED
    return reply.reason


def _rosters(make_round, n=5, t=3):
    r = make_round(n, t=t)
    for u in r.ids:
        r.server.receive(r.clients[u].start())
    return r, r.server.close_phase()


def _bundles(make_round, n=5, t=3, mode=SecurityMode.SEMI_HONEST):
    r = make_round(n, t=t, mode=mode)
    r.answer(r.advertise())
    return r, r.server.close_phase()


# --- the key roster ------------------------------------------------------------------------------


def test_a_roster_of_another_round_is_refused(make_round):
    r, rosters = _rosters(make_round)
    foreign = dataclasses.replace(rosters[1], round_id=b"round-2")
    assert "the roster is for another round" in _refusal(r.clients[1], foreign)


def test_a_roster_listing_a_participant_twice_is_refused(make_round):
    """Twice listed, one participant would be two share holders: with t = 3 of 5, the server
    could hold enough shares of a secret from fewer people than the threshold promises."""
    r, rosters = _rosters(make_round)
    roster = rosters[1]
    doubled = dataclasses.replace(roster, advertisements=(*roster.advertisements, roster.advertisements[1]))
    assert "the roster lists a participant twice" in _refusal(r.clients[1], doubled)


def test_a_roster_shorter_than_the_threshold_is_refused(make_round):
    r, rosters = _rosters(make_round)
    short = dataclasses.replace(rosters[1], advertisements=rosters[1].advertisements[:2])
    assert "only 2 participants advertised keys, threshold is 3" in _refusal(r.clients[1], short)


def test_a_roster_with_no_graph_of_the_round_s_degree_is_refused(make_round):
    """Degree 3 (odd) needs an even number of participants: a roster of 5 (one left out, by a
    lying server or because it missed the key phase) is an abort with the reason, not an
    exception out of the state machine."""
    r = make_round(6, t=3, neighbours=3)
    advertisements = tuple(r.clients[u].start() for u in r.ids[:5])
    reason = _refusal(r.clients[1], KeyRoster(b"round-1", advertisements))
    assert reason == "the roster: no 3-regular graph on 5 participants: an odd degree needs an even count"


# --- the share bundle ----------------------------------------------------------------------------


def test_the_shares_of_another_participant_are_refused(make_round):
    r, bundles = _bundles(make_round)
    assert "received the shares of participant 2" in _refusal(r.clients[1], bundles[2])


def test_a_share_addressed_to_another_participant_is_refused(make_round):
    r, bundles = _bundles(make_round)
    bundle = bundles[1]
    misaddressed = dataclasses.replace(bundle.shares[0], recipient=3)
    tampered = dataclasses.replace(bundle, shares=(misaddressed, *bundle.shares[1:]))
    assert "a share addressed to 3 was delivered here" in _refusal(r.clients[1], tampered)


def test_a_share_from_outside_the_round_is_refused(make_round):
    r, bundles = _bundles(make_round)
    bundle = bundles[1]
    stranger = dataclasses.replace(bundle.shares[0], sender=9)
    tampered = dataclasses.replace(bundle, shares=(*bundle.shares, stranger))
    assert "a share from 9, who is not a neighbour" in _refusal(r.clients[1], tampered)


def test_two_shares_from_one_dealer_are_refused(make_round):
    r, bundles = _bundles(make_round)
    bundle = bundles[1]
    tampered = dataclasses.replace(bundle, shares=(*bundle.shares, bundle.shares[0]))
    assert f"two shares from participant {bundle.shares[0].sender}" in _refusal(r.clients[1], tampered)


def test_a_dealer_s_commitment_listed_twice_is_refused(make_round):
    r, bundles = _bundles(make_round, mode=SecurityMode.MALICIOUS)
    bundle = bundles[1]
    assert bundle.self_mask_commitments
    doubled = (*bundle.self_mask_commitments, bundle.self_mask_commitments[0])
    tampered = dataclasses.replace(bundle, self_mask_commitments=doubled)
    assert "a dealer's commitment to its self mask is listed twice" in _refusal(r.clients[1], tampered)


def test_too_few_share_holders_left_reveals_no_masked_input(make_round):
    """Only one other dealer's envelope: the client's pairwise masks would cover its input with
    one neighbour's mask, which that neighbour (with the server) could remove."""
    r, bundles = _bundles(make_round)
    bundle = bundles[1]
    tampered = dataclasses.replace(bundle, shares=bundle.shares[:1])
    reason = _refusal(r.clients[1], tampered)
    assert "only 2 of this participant's share holders are left, threshold is 3" in reason


def test_a_client_without_its_input_sends_no_masked_input(make_round):
    r = make_round(4, t=3)
    r.clients[1] = Client(r.clients[1].config, SeededRandom.from_int(9))  # never given an input
    r.answer(r.advertise())
    bundles = r.server.close_phase()
    assert "no input was set before the masked-input phase" in _refusal(r.clients[1], bundles[1])
    assert all(isinstance(r.clients[u].receive(bundles[u]), MaskedInput) for u in (2, 3, 4))


# --- the survivor list ---------------------------------------------------------------------------


def test_a_participant_that_never_shared_cannot_be_listed_as_dropped(make_round):
    """5 advertised keys but dealt no shares: listing it as dropped asks every holder for shares
    it never had; an honest client refuses the list rather than answer a server that invents."""
    r = make_round(5, t=3)
    r.answer(r.advertise(), who=(1, 2, 3, 4))
    r.answer(r.server.close_phase())
    request = UnmaskRequest(r.server.session_id, (1, 2, 3, 4), (5,))
    assert "participant 5 is listed as dropped but never shared keys" in _refusal(r.clients[1], request)


@pytest.mark.parametrize("listed", [(1, 2, 3, 4), (1, 2, 3)])
def test_an_honest_survivor_list_is_answered(make_round, listed):
    """The control for the refusals above: the same round and a true list are answered."""
    r = make_round(5, t=3)
    r.answer(r.advertise(), who=(1, 2, 3, 4))
    r.answer(r.server.close_phase(), who=listed)
    reply = r.clients[1].receive(
        UnmaskRequest(r.server.session_id, listed, tuple(u for u in (1, 2, 3, 4) if u not in listed))
    )
    assert not isinstance(reply, Abort), reply


def test_a_survivor_list_with_too_few_of_the_client_s_holders_is_refused(make_round):
    """SecAgg+ (each participant shares with 6 neighbours of 10): five survivors overall meet
    t = 5, but only two of them hold client 1's shares. The list names the others dropped, so
    that client 1 would hand over its shares of their masking keys."""
    r = make_round(10, t=5, neighbours=6)
    r.answer(r.advertise())
    r.answer(r.server.close_phase())
    neighbours = sorted(r.clients[1]._session.neighbours(1))
    strangers = [u for u in r.ids if u != 1 and u not in neighbours]
    survivors = tuple(sorted([1, neighbours[0], *strangers]))
    assert len(survivors) >= 5
    request = UnmaskRequest(r.server.session_id, survivors, tuple(neighbours[1:]))
    reason = _refusal(r.clients[1], request)
    assert "only 2 of this participant's share holders survived, threshold is 5" in reason

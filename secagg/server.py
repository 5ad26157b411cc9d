"""The coordinator's side of one round, as a state machine with no I/O.

The I/O shell feeds every client message to ``receive`` (which validates it before use and
raises ``InvalidMessage`` without changing any state), reports participants that disconnect or
miss a deadline with ``drop``, and calls ``close_phase`` when the phase's deadline passes or
``awaiting`` is empty. ``close_phase`` returns the messages to send, by recipient, or raises
``ProtocolAbort`` with the phase and the reason.

Masked inputs are added into one accumulator as they arrive: memory is O(d), not O(n d).

No wrong sum is reported as completed: every revealed share is checked against its dealer's
commitment (a holder that reveals a bad share is a culprit, and its share is not used), every
rebuilt b_u against u's commitment and every rebuilt s_v^SK against v's public key (a dealer whose
shares do not rebuild its committed secret is a culprit, and the round aborts). A holder that
received a bad envelope complains with its masked input; the server then asks the accused to open
the envelopes in question (state ``COLLECTING_OPENINGS``), decides who misbehaved, and aborts
naming them (``ProtocolAbort.culprits``), so that a re-run can go on without them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

import numpy as np

from . import keys, machine, prg, shamir
from .errors import AbortKind, CryptoError, DropKind, InvalidMessage, Phase, ProtocolAbort, Rejection, ShamirError
from .graph import GraphError
from .machine import Branch
from .messages import (
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
from .params import ProtocolParams, SecurityMode
from .session import Session, check_advertisement, compute_session_id, signature_check, unsigned_keys

_Message = TypeVar("_Message")

_SHARE_PLAINTEXT = keys.SHARE_PLAINTEXT

SHARE_CIPHERTEXT_BYTES = keys.GCM_NONCE_BYTES + 4 + 4 + 2 * shamir.SHARE_BYTES + keys.GCM_TAG_BYTES


class ServerState(enum.Enum):
    COLLECTING_KEYS = Phase.ADVERTISE_KEYS
    COLLECTING_SHARES = Phase.SHARE_KEYS
    COLLECTING_MASKED_INPUTS = Phase.MASKED_INPUT
    COLLECTING_SIGNATURES = Phase.CONSISTENCY_CHECK
    COLLECTING_UNMASK_RESPONSES = Phase.UNMASK
    COLLECTING_OPENINGS = Phase.COMPLAINTS
    COMPLETED = Phase.COMPLETED
    ABORTED = Phase.ABORTED

    @property
    def phase(self) -> Phase:
        return self.value


@dataclass(frozen=True)
class ServerConfig:
    """``participants``: the ids selected for the round. ``identity_keys`` (enrolled Ed25519
    public keys) let the server, in the malicious-server mode, drop badly signed key
    advertisements (checked together when the phase closes) and name whoever sent a bad
    signature on the survivor list when too few could unmask; clients check signatures
    themselves either way.
    ``runner`` (optional) runs the unmask's mask removal and a phase's signature checks in parts,
    one per core (the result is the same bit for bit)."""

    round_id: bytes
    params: ProtocolParams
    participants: tuple[int, ...]
    identity_keys: Mapping[int, bytes] = field(default_factory=dict)
    runner: prg.PartRunner | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participant ids must be distinct")
        self.params.validate(len(self.participants))


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.params = config.params
        self.state = ServerState.COLLECTING_KEYS
        self.abort_reason: str | None = None
        self.abort_kind: AbortKind | None = None
        self.dropped_reasons: dict[int, str] = {}
        self.dropped_kinds: dict[int, DropKind] = {}  # the same participants: why, as data
        self._expected: set[int] = set(config.participants)
        # Each sender's message of this phase (True for a masked input: it is in the sum already).
        self._received: dict[int, ClientMessage | bool] = {}
        self._accepted_types: dict[int, set[type]] = {}  # what each sender has sent so far, by phase
        self._advertisements: dict[int, AdvertiseKeys] = {}
        self._session: Session | None = None
        self._share_keys: dict[int, ShareKeys] = {}
        self._accumulator: ModularVector | None = None
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self._result: ModularVector | None = None
        # (dealer, holder) -> the envelope, and dealer -> its commitment to b: for the checks at
        # unmask time and for deciding complaints
        self._envelopes: dict[tuple[int, int], EncryptedShare] = {}
        self._self_mask_commitments: dict[int, bytes] = {}
        self._complaints: dict[int, tuple[Complaint, ...]] = {}  # complainer -> its complaints
        self._open_requests: dict[int, OpenRequest] = {}  # accused -> what it is asked to open
        # Unmask responses, checked against the dealers' commitments as they arrive (while the
        # others are still on their way): holder -> why one of its shares is not the one dealt.
        self._share_faults: dict[int, str] = {}
        # The survivor-list signatures the unmask requests carried (unchecked; see _close_signatures)
        self._survivor_signatures: tuple[tuple[int, bytes], ...] = ()
        self._share_committers: dict[tuple[str, int], keys.ShareCommitter] = {}
        # Participants proven to have misbehaved, and those that did not answer a complaint.
        self.culprits: dict[int, str] = {}
        self.suspects: dict[int, str] = {}
        self._dtype = prg.dtype_for_bits(self.params.modulus_bits)

    # --- public interface -------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def session_id(self) -> bytes | None:
        return self._session.session_id if self._session else None

    @property
    def awaiting(self) -> frozenset[int]:
        """Participants whose message for the current phase has not arrived yet."""
        return frozenset(self._expected - set(self._received))

    @property
    def dropped(self) -> tuple[int, ...]:
        """Participants that shared keys but did not send a masked input (U2 \\ U3)."""
        return tuple(sorted(set(self.u2) - set(self.u3)))

    @property
    def result(self) -> ModularVector:
        """The sum of the survivors' inputs mod 2^b, once COMPLETED."""
        if self._result is None:
            raise RuntimeError(f"no result in state {self.state.name}")
        return self._result

    def receive(self, message: object) -> None:
        """Validate and record one client message. Raises InvalidMessage (state unchanged) whose
        ``kind`` says why, so that a shell can answer without re-checking anything."""
        phase = self.state.phase
        spec = PHASES.get(self.state)
        sender: int | None = getattr(message, "sender", None)

        def reject(kind: Rejection, reason: str) -> InvalidMessage:
            return InvalidMessage(phase, reason, sender=sender, kind=kind)

        if spec is None:
            raise reject(Rejection.ROUND_OVER, f"the round is {self.state.name.lower()}")
        # A repeat is named as such even when its phase has closed in the meantime.
        sent_before = self._accepted_types.get(sender, set()) if sender is not None else set()
        if type(message) in sent_before or (isinstance(message, spec.accepts) and sender in self._received):
            raise reject(Rejection.DUPLICATE, f"duplicate {type(message).__name__}")
        if not isinstance(message, spec.accepts):
            raise reject(Rejection.WRONG_PHASE, f"expected {spec.accepts.__name__}, got {type(message).__name__}")
        if sender not in self._expected:
            why = "not a participant of this phase"
            if sender is not None:
                why = self.dropped_reasons.get(sender, why)
            raise reject(Rejection.NOT_EXPECTED, f"sender {sender!r} is not expected: {why}")
        if isinstance(message, AdvertiseKeys):
            if message.round_id != self.config.round_id:
                raise reject(Rejection.WRONG_SESSION, "advertisement for another round (round id)")
        elif message.session_id != self.session_id:
            raise reject(Rejection.WRONG_SESSION, "wrong session id (another round or session)")
        problem = spec.validate(self, message)
        if problem:
            raise reject(Rejection.INVALID, problem)
        self._accepted_types.setdefault(sender, set()).add(type(message))
        self._received[sender] = message
        if isinstance(message, MaskedInput):
            accumulator = self._sum_so_far()
            np.add(accumulator, message.masked, out=accumulator)
            self._received[sender] = True  # the vector is in the sum; do not keep it
            if message.complaints:
                self._complaints[sender] = message.complaints
        elif isinstance(message, UnmaskResponse):
            fault = self._uncommitted_share(message)
            if fault is not None:
                self._share_faults[sender] = fault

    def drop(self, participant: int, reason: str, kind: DropKind) -> None:
        """A participant disconnected or missed the deadline. A message already accepted in this
        phase stays (a masked input already in the sum cannot be taken out)."""
        if participant in self._expected and participant not in self._received:
            self._expected.discard(participant)
            self.dropped_reasons[participant] = f"[{self.state.phase.value}] {reason}"
            self.dropped_kinds[participant] = kind

    def close_phase(self) -> dict[int, ServerMessage]:
        """End the current phase: returns {recipient: message}, or raises ProtocolAbort."""
        spec = PHASES.get(self.state)
        if spec is None:
            raise RuntimeError(f"close_phase() in state {self.state.name}")
        for sender, reason in (spec.screen(self) if spec.screen else {}).items():
            del self._received[sender]
            self._advertisements.pop(sender, None)
            self._expected.discard(sender)
            self.dropped_reasons[sender] = f"[{self.state.phase.value}] {reason}"
            self.dropped_kinds[sender] = DropKind.REFUSED
        responders = tuple(sorted(self._received))
        for silent in self._expected - set(responders):
            if silent not in self.dropped_reasons:
                self.dropped_reasons[silent] = f"[{self.state.phase.value}] sent nothing before the deadline"
                self.dropped_kinds[silent] = DropKind.DEADLINE
        if spec.needs_threshold and len(responders) < self.params.threshold:
            culprits = spec.shortfall(self) if spec.shortfall else {}
            named = "".join(f"; participant {u} {why}" for u, why in sorted(culprits.items()))
            self._abort(
                # Short because some were refused for what they sent: they misbehaved.
                AbortKind.MISBEHAVIOUR if culprits else AbortKind.BELOW_THRESHOLD,
                f"only {len(responders)} participants responded, threshold is {self.params.threshold}{named}",
                culprits=culprits,
            )
        try:
            outgoing = spec.close(self, responders)
        except ProtocolAbort as exc:
            self._abort(exc.kind, exc.reason, culprits=exc.culprits, suspects=exc.suspects)
        next_state = machine.next_state(spec.next_state, self)
        self.state = next_state
        self._expected = set(outgoing) if next_state is not ServerState.COMPLETED else set()
        self._received = {}
        return outgoing

    # --- validation, per phase ----------------------------------------------------------------

    def _validate_advertisement(self, ad: AdvertiseKeys) -> str | None:
        # The signature is checked at the phase's end, with everyone's (_screen_advertisements).
        problem = check_advertisement(
            ad,
            round_id=self.config.round_id,
            params=self.params,
            identity_keys=self.config.identity_keys,
            verify_signature=False,
        )
        if problem is None:
            keys_in_use = {
                k for other in self._advertisements.values() for k in (other.encryption_key, other.masking_key)
            }
            if ad.encryption_key in keys_in_use or ad.masking_key in keys_in_use:
                problem = "public key already advertised by another participant"
        if problem is None:
            self._advertisements[ad.sender] = ad
        return problem

    def _validate_share_keys(self, message: ShareKeys) -> str | None:
        expected = self._current_session().neighbours(message.sender)
        recipients = [s.recipient for s in message.shares]
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            return f"expected exactly one share for each of its {len(expected)} neighbours"
        if len(message.self_mask_commitment) != keys.COMMITMENT_BYTES:
            return f"the self-mask commitment must be {keys.COMMITMENT_BYTES} bytes"
        signature_bytes = keys.SIGNATURE_BYTES if self.params.mode is SecurityMode.MALICIOUS else 0
        for share in message.shares:
            if share.sender != message.sender:
                return "a share claims another sender"
            if len(share.ciphertext) != SHARE_CIPHERTEXT_BYTES:
                return f"share ciphertexts are {SHARE_CIPHERTEXT_BYTES} bytes, got {len(share.ciphertext)}"
            if len(share.ephemeral_key) != keys.PUBLIC_KEY_BYTES:
                return f"envelope ephemeral keys are {keys.PUBLIC_KEY_BYTES} bytes"
            if {len(share.self_mask_share_commitment), len(share.key_share_commitment)} != {keys.COMMITMENT_BYTES}:
                return f"share commitments are {keys.COMMITMENT_BYTES} bytes"
            if len(share.signature) != signature_bytes:
                return f"envelope signatures are {signature_bytes} bytes in {self.params.mode.value} mode"
        return None

    def _validate_masked_input(self, message: MaskedInput) -> str | None:
        problem = self._complaint_problem(message.sender, message.complaints)
        if problem:
            return problem
        vector = message.masked
        if not isinstance(vector, np.ndarray) or vector.dtype != self._dtype or vector.ndim != 1:
            return f"masked input must be a 1-D {self._dtype} vector"
        if vector.shape[0] != self.params.dimension:
            return f"masked input has {vector.shape[0]} values, the round has dimension {self.params.dimension}"
        if self.params.modulus_bits < self._dtype.itemsize * 8 and int(vector.max()) >> self.params.modulus_bits:
            return f"masked input has values >= 2^{self.params.modulus_bits}"
        return None

    def _validate_signature(self, message: ConsistencySignature) -> str | None:
        # Verified by the participants (and by the server only if they stop: _bad_survivor_signatures).
        if len(message.signature) != keys.SIGNATURE_BYTES:
            return "malformed signature"
        return None

    # --- checks at a phase's end, many at once --------------------------------------------------

    def _screen_advertisements(self) -> dict[int, str]:
        if self.params.mode is not SecurityMode.MALICIOUS:
            return {}
        senders = sorted(self._received)
        checks = [
            signature_check(self._advertisements[u], self.config.round_id, self.config.identity_keys[u])
            for u in senders
        ]
        valid = keys.verify_many(checks, self.config.runner)
        return {u: unsigned_keys(u) for u, ok in zip(senders, valid, strict=True) if not ok}

    def _bad_survivor_signatures(self) -> dict[int, str]:
        """The senders of the survivor-list signatures the unmask requests carried that do not
        verify. Checked only when too few participants answered the unmask: each participant
        checks the signatures itself and counts only valid ones, so a bad one stops the round
        only where it leaves fewer than t, and then its sender is named."""
        if not self._survivor_signatures:
            return {}
        payload = keys.consistency_payload(self._current_session().session_id, self.u3)
        signers = [(u, signature) for u, signature in self._survivor_signatures if u in self.config.identity_keys]
        checks = [(self.config.identity_keys[u], signature, payload) for u, signature in signers]
        valid = keys.verify_many(checks, self.config.runner)
        bad = "signed the survivor list with a signature that does not verify"
        return {u: bad for (u, _), ok in zip(signers, valid, strict=True) if not ok}

    def _validate_unmask_response(self, message: UnmaskResponse) -> str | None:
        session = self._current_session()
        held_owners = session.holders(message.sender)  # whose secrets the sender holds
        alive = set(self.u3)
        want_b = held_owners & alive
        want_s = held_owners & set(self.dropped)
        b_owners = [owner for owner, _ in message.self_mask_shares]
        s_owners = [owner for owner, _ in message.key_shares]
        if set(b_owners) & set(s_owners):
            return "revealed both shares of one participant"
        if len(set(b_owners)) != len(b_owners) or set(b_owners) != want_b:
            return "self-mask shares must cover exactly the surviving participants it holds shares of"
        if len(set(s_owners)) != len(s_owners) or set(s_owners) != want_s:
            return "key shares must cover exactly the dropped participants it holds shares of"
        try:
            for _, share in message.self_mask_shares + message.key_shares:
                shamir.decode_share(share)
        except ShamirError as exc:
            return f"malformed share: {exc}"
        return None

    def _complaint_problem(self, complainer: int, complaints: tuple[Complaint, ...]) -> str | None:
        accused = [c.accused for c in complaints]
        if len(set(accused)) != len(accused):
            return "complains twice about one participant"
        for complaint in complaints:
            if (complaint.accused, complainer) not in self._envelopes:
                return f"complains about participant {complaint.accused}, who sent it no envelope"
            if not isinstance(complaint.kind, ComplaintKind):
                return "unknown complaint kind"
            if self.params.mode is SecurityMode.MALICIOUS:
                identity = self.config.identity_keys.get(complainer)
                payload = keys.complaint_payload(
                    self._current_session().session_id, complainer, complaint.accused, complaint.kind.value
                )
                try:
                    if identity is None:
                        raise CryptoError("no enrolled identity key")
                    keys.verify(identity, complaint.signature, payload)
                except CryptoError:
                    return f"its complaint about participant {complaint.accused} is not signed by it"
            elif complaint.kind is ComplaintKind.BAD_SIGNATURE or complaint.signature:
                return "complaints about signatures exist only in malicious-server mode"
        return None

    def _validate_opening(self, message: EnvelopeOpening) -> str | None:
        asked = {complainer for complainer, _ in self._open_requests[message.sender].complaints}
        holders = [holder for holder, _ in message.openings]
        if len(set(holders)) != len(holders) or not set(holders) <= asked:
            return "opens envelopes nobody complained about"
        if any(len(secret) != keys.PRIVATE_KEY_BYTES for _, secret in message.openings):
            return f"an opening is a {keys.PRIVATE_KEY_BYTES}-byte ephemeral secret"
        return None

    # --- phase endings ------------------------------------------------------------------------

    def _close_keys(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        roster = tuple(self._advertisements[u] for u in responders)
        try:
            self._session = Session.from_roster(self.config.round_id, self.params, roster)
        except GraphError as exc:  # an odd degree, and one participant missed the key phase
            raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.UNSAFE_ROUND, str(exc)) from None
        assert self._session.session_id == compute_session_id(self.config.round_id, self.params, roster)
        holders = self.params.holders_per_secret(len(responders))
        if holders < self.params.threshold:
            raise ProtocolAbort(
                Phase.ADVERTISE_KEYS, AbortKind.BELOW_THRESHOLD, f"{holders} share holders per secret < threshold"
            )
        self.u1 = responders
        message = KeyRoster(self.config.round_id, roster)
        return {u: message for u in responders}

    def _close_shares(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        self.u2 = responders
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in responders}
        for sender in responders:
            message = self._message_of(sender, ShareKeys)
            self._self_mask_commitments[sender] = message.self_mask_commitment
            for share in message.shares:
                self._envelopes[(sender, share.recipient)] = share
                if share.recipient in inbox:
                    inbox[share.recipient].append(share)
        self._accumulator = np.zeros(self.params.dimension, dtype=self._dtype)
        sid = self._current_session().session_id
        return {
            u: ShareBundle(
                u, sid, tuple(shares), tuple((s.sender, self._self_mask_commitments[s.sender]) for s in shares)
            )
            for u, shares in inbox.items()
        }

    def _close_masked_inputs(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        self.u3 = responders
        if self._complaints:
            return self._start_complaints()
        sid = self._current_session().session_id
        request: ConsistencyRequest | UnmaskRequest
        if self.params.mode is SecurityMode.MALICIOUS:
            request = ConsistencyRequest(sid, self.u3)
        else:
            request = UnmaskRequest(sid, self.u3, self.dropped)
        return {u: request for u in responders}

    def _close_signatures(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        # Passed on unchecked: every participant checks them before it reveals anything, and
        # counts only valid ones (see _bad_survivor_signatures for when the server checks).
        signatures = tuple((u, self._message_of(u, ConsistencySignature).signature) for u in responders)
        self._survivor_signatures = signatures
        request = UnmaskRequest(self._current_session().session_id, self.u3, self.dropped, signatures)
        return {u: request for u in responders}

    # --- complaints -----------------------------------------------------------------------------

    def _start_complaints(self) -> dict[int, ServerMessage]:
        """Decide what can be decided now (signatures, on the envelopes the server received) and
        ask each participant accused of a bad envelope to open it. The round cannot complete any
        more: it aborts once the complaints are decided."""
        to_open: dict[int, list[tuple[int, bytes]]] = {}
        for complainer, complaints in sorted(self._complaints.items()):
            for complaint in complaints:
                if complaint.kind is ComplaintKind.BAD_SIGNATURE:
                    self._decide_signature_complaint(complainer, complaint.accused)
                else:
                    to_open.setdefault(complaint.accused, []).append((complainer, complaint.signature))
        if not to_open:
            raise ProtocolAbort(
                Phase.COMPLAINTS, AbortKind.MISBEHAVIOUR, self._complaints_reason(), culprits=self.culprits
            )
        sid = self._current_session().session_id
        self._open_requests = {accused: OpenRequest(sid, tuple(pairs)) for accused, pairs in to_open.items()}
        return dict(self._open_requests)

    def _decide_signature_complaint(self, complainer: int, accused: int) -> None:
        envelope = self._envelopes[(accused, complainer)]
        identity = self.config.identity_keys.get(accused)
        payload = keys.envelope_payload_of(
            self._current_session().session_id, envelope, self_mask_commitment=self._self_mask_commitments[accused]
        )
        try:
            if identity is None:
                raise CryptoError("no enrolled identity key")
            keys.verify(identity, envelope.signature, payload)
        except CryptoError:
            self.culprits[accused] = f"sent participant {complainer} a share envelope without a valid signature"
            return
        # The envelope the server relayed carries the sender's valid signature.
        self.culprits[complainer] = f"complained about a validly signed envelope from participant {accused}"

    def _open_envelope(self, accused: int, holder: int, ephemeral_secret: bytes) -> str | None:
        """What is wrong with the envelope ``accused`` sent ``holder``, given its opening, or None."""
        envelope = self._envelopes[(accused, holder)]
        session = self._current_session()
        sid = session.session_id
        try:
            ephemeral = keys.AgreementKeyPair.from_private_bytes(ephemeral_secret)
        except CryptoError:
            return "opened it with a malformed secret"
        if ephemeral.public_bytes != envelope.ephemeral_key:
            return "opened it with a secret that does not match the envelope"
        try:
            secret = keys.exchange(ephemeral.private_bytes, session.advertisements[holder].encryption_key)
            key = keys.envelope_key(
                secret, session_id=sid, sender=accused, receiver=holder, ephemeral_key=envelope.ephemeral_key
            )
            plaintext = keys.decrypt_share(key, envelope.ciphertext, session_id=sid, sender=accused, receiver=holder)
            sender, recipient, b_bytes, s_bytes = _SHARE_PLAINTEXT.unpack(plaintext)
            shamir.decode_share(b_bytes)
            shamir.decode_share(s_bytes)
        except (CryptoError, ShamirError, struct.error):
            return "sent an envelope that does not decrypt to two shares"
        if (sender, recipient) != (accused, holder):
            return "sent an envelope whose header names other participants"
        b_commitment = keys.share_commitment(b_bytes, session_id=sid, owner=accused, holder=holder, secret="b")
        s_commitment = keys.share_commitment(s_bytes, session_id=sid, owner=accused, holder=holder, secret="s")
        if (b_commitment, s_commitment) != (envelope.self_mask_share_commitment, envelope.key_share_commitment):
            return "sent shares that do not match its own commitments"
        return None

    def _close_openings(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        for accused, request in sorted(self._open_requests.items()):
            opening = self._message_of(accused, EnvelopeOpening) if accused in self._received else None
            opened = dict(opening.openings) if opening is not None else {}
            for complainer, _ in request.complaints:
                if complainer not in opened:
                    self.suspects.setdefault(accused, f"did not open its envelope for participant {complainer}")
                    continue
                fault = self._open_envelope(accused, complainer, opened[complainer])
                if fault is not None:
                    self.culprits[accused] = f"{fault} (envelope for participant {complainer})"
                else:
                    self.culprits[complainer] = f"complained about a valid envelope from participant {accused}"
        raise ProtocolAbort(
            Phase.COMPLAINTS,
            AbortKind.MISBEHAVIOUR,
            self._complaints_reason(),
            culprits=self.culprits,
            suspects=self.suspects,
        )

    def _complaints_reason(self) -> str:
        named = [f"participant {u} {why}" for u, why in sorted(self.culprits.items())]
        named += [f"participant {u} {why}" for u, why in sorted(self.suspects.items()) if u not in self.culprits]
        return "complaints about share envelopes: " + ("; ".join(named) or "none could be decided")

    # --- unmask ---------------------------------------------------------------------------------

    def _uncommitted_share(self, response: UnmaskResponse) -> str | None:
        """Why one of ``response``'s shares is not the share its dealer committed to, or None."""
        holder = response.sender
        sid = self._current_session().session_id
        for secret, shares in (("b", response.self_mask_shares), ("s", response.key_shares)):
            for owner, share in shares:
                if owner == holder:
                    continue  # its own share: nothing was sent, nothing to check
                envelope = self._envelopes[(owner, holder)]
                expected = envelope.self_mask_share_commitment if secret == "b" else envelope.key_share_commitment
                committer = self._share_committers.get((secret, owner))
                if committer is None:
                    committer = self._share_committers[(secret, owner)] = keys.ShareCommitter(
                        session_id=sid, owner=owner, secret=secret
                    )
                if committer.commit(holder, share) != expected:
                    what = "self-mask seed" if secret == "b" else "masking key"
                    return f"revealed a share of participant {owner}'s {what} it was never dealt"
        return None

    def _checked_shares(
        self, responders: tuple[int, ...]
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        """The revealed shares, by owner and holder, from the holders whose shares all match
        their dealers' commitments (checked on receipt); the others are culprits, and none of
        their shares is used."""
        b_shares: dict[int, dict[int, int]] = {u: {} for u in self.u3}
        s_shares: dict[int, dict[int, int]] = {v: {} for v in self.dropped}
        for holder in responders:
            fault = self._share_faults.get(holder)
            if fault is not None:
                self.culprits[holder] = fault
                continue
            response = self._message_of(holder, UnmaskResponse)
            for shares, into in ((response.self_mask_shares, b_shares), (response.key_shares, s_shares)):
                for owner, share in shares:
                    # Validated on receipt: a share is 33 bytes and a field element.
                    into[owner][holder] = int.from_bytes(share, "big")
        for by_holder in (*b_shares.values(), *s_shares.values()):
            for culprit in self.culprits:
                by_holder.pop(culprit, None)  # a culprit of an earlier phase: trust none of its shares
        return b_shares, s_shares

    def _close_unmask(self, responders: tuple[int, ...]) -> dict[int, ServerMessage]:
        session = self._current_session()
        t = self.params.threshold
        b_shares, s_shares = self._checked_shares(responders)
        for owner, shares in b_shares.items():
            self._check_enough(shares, t, f"the self mask of participant {owner}")
        for owner, shares in s_shares.items():
            self._check_enough(shares, t, f"the masking key of dropped participant {owner}")
        # Every secret at once: the Lagrange coefficients of all holder sets are one computation,
        # and in cycle order neighbouring secrets can share their holder sets.
        position = {u: i for i, u in enumerate(session.graph.cycle)}
        b_owners = sorted(b_shares, key=position.__getitem__)
        s_owners = sorted(s_shares, key=position.__getitem__)
        secrets = shamir.reconstruct_many(
            [*(b_shares[u] for u in b_owners), *(s_shares[v] for v in s_owners)], threshold=t
        )
        rebuilt_b = dict(zip(b_owners, secrets[: len(b_owners)], strict=True))
        rebuilt_s = dict(zip(s_owners, secrets[len(b_owners) :], strict=True))
        sid = session.session_id
        self_mask_seeds: list[bytes] = []
        for u, secret in rebuilt_b.items():
            if (
                secret is None
                or keys.self_mask_commitment(secret, session_id=sid, owner=u) != self._self_mask_commitments[u]
            ):
                self.culprits[u] = "dealt shares that do not rebuild the self-mask seed it committed to"
                raise ProtocolAbort(
                    Phase.UNMASK, AbortKind.MISBEHAVIOUR, f"participant {u} {self.culprits[u]}", culprits=self.culprits
                )
            self_mask_seeds.append(keys.self_mask_seed(secret, sid))
        dropped_keys: list[tuple[int, keys.AgreementKeyPair]] = []
        for v, secret in rebuilt_s.items():
            pair = None if secret is None else keys.AgreementKeyPair.from_private_bytes(secret)
            if pair is None or pair.public_bytes != session.advertisements[v].masking_key:
                self.culprits[v] = "dealt shares that do not rebuild the masking key it advertised"
                raise ProtocolAbort(
                    Phase.UNMASK, AbortKind.MISBEHAVIOUR, f"participant {v} {self.culprits[v]}", culprits=self.culprits
                )
            dropped_keys.append((v, pair))
        total = self._sum_so_far()
        self._remove_masks(total, self_mask_seeds, dropped_keys)
        self._result = prg.reduce_modulus(total, self.params.modulus_bits)
        self._accumulator = None
        return {}

    def _remove_masks(
        self,
        total: np.ndarray,
        self_mask_seeds: list[bytes],
        dropped_keys: list[tuple[int, keys.AgreementKeyPair]],
    ) -> None:
        """Subtract the survivors' self masks and undo their masks shared with the dropped."""
        session = self._current_session()
        survivors = set(self.u3)
        pairs: list[tuple[bytes, bytes]] = []
        undo_added: list[bool] = []
        for v, pair in dropped_keys:
            for u in sorted(session.neighbours(v) & survivors):
                pairs.append((pair.private_bytes, session.advertisements[u].masking_key))
                # Survivor u added +PRG(s_uv) if v > u, -PRG(s_uv) if v < u: undo exactly that.
                undo_added.append(v > u)
        # The agreements on every thread first (9,000 at n = 1000), then the keystreams.
        seeds = keys.pairwise_mask_seeds(pairs, session.session_id, self.config.runner)
        take_away = [seed for seed, added in zip(seeds, undo_added, strict=True) if added]
        add_back = [seed for seed, added in zip(seeds, undo_added, strict=True) if not added]
        prg.add_masks(total, add_back, take_away + self_mask_seeds, runner=self.config.runner)

    def _check_enough(self, shares: dict[int, int], threshold: int, what: str) -> None:
        if len(shares) < threshold:
            raise ProtocolAbort(
                Phase.UNMASK,
                # Short of good shares because some were bad: those who dealt them misbehaved.
                AbortKind.MISBEHAVIOUR if self.culprits else AbortKind.BELOW_THRESHOLD,
                f"{what} has {len(shares)} good shares, threshold is {threshold}",
                culprits=self.culprits,
            )

    def _current_session(self) -> Session:
        """The session agreed when the key roster closed (every later phase has one)."""
        if self._session is None:
            raise RuntimeError(f"no session yet in state {self.state.name}")
        return self._session

    def _sum_so_far(self) -> ModularVector:
        """The accumulator of masked inputs, from the end of the share phase to the unmask."""
        if self._accumulator is None:
            raise RuntimeError(f"no accumulator in state {self.state.name}")
        return self._accumulator

    def _message_of(self, sender: int, kind: type[_Message]) -> _Message:
        """``sender``'s message of this phase, which ``receive`` accepted as a ``kind``."""
        message = self._received[sender]
        if not isinstance(message, kind):
            raise RuntimeError(f"participant {sender} has no {kind.__name__} in state {self.state.name}")
        return message

    def _abort(
        self,
        kind: AbortKind,
        reason: str,
        *,
        culprits: Mapping[int, str] | None = None,
        suspects: Mapping[int, str] | None = None,
    ) -> NoReturn:
        phase = self.state.phase
        self.culprits.update(culprits or {})
        self.suspects.update(suspects or {})
        self.abort_reason, self.abort_kind = f"[{phase.value}] {reason}", kind
        self.state = ServerState.ABORTED
        self._accumulator = None
        raise ProtocolAbort(phase, kind, reason, culprits=self.culprits, suspects=self.suspects)


def _masked_inputs_outcome(server: Server) -> str:
    return "complaints" if server._open_requests else server.params.mode.value


_AFTER_MASKED_INPUTS: Branch[Server, ServerState] = Branch(
    _masked_inputs_outcome,
    {
        "complaints": ServerState.COLLECTING_OPENINGS,
        SecurityMode.MALICIOUS.value: ServerState.COLLECTING_SIGNATURES,
        SecurityMode.SEMI_HONEST.value: ServerState.COLLECTING_UNMASK_RESPONSES,
    },
)


@dataclass(frozen=True)
class PhaseSpec(Generic[_Message]):
    accepts: type[_Message]
    validate: Callable[[Server, _Message], str | None]
    close: Callable[[Server, tuple[int, ...]], dict[int, ServerMessage]]
    next_state: ServerState | Branch[Server, ServerState]
    needs_threshold: bool = True  # the phase aborts when fewer than t participants answer it
    # Checks made on the whole phase at its end, many at once (signatures, in parts on the
    # runner): sender -> why its message is refused. Those senders are dropped before ``close``.
    screen: Callable[[Server], dict[int, str]] | None = None
    # When too few answered (needs_threshold): who, provably, made them stop -> why.
    shortfall: Callable[[Server], dict[int, str]] | None = None


# The transition table: what each state accepts, how it validates, how it ends, what follows.
# Each row is checked on its own (``validate`` takes what the row ``accepts``); ``receive`` calls
# ``validate`` only with a message that is an instance of ``accepts``.
PHASES: dict[ServerState, PhaseSpec[Any]] = {
    ServerState.COLLECTING_KEYS: PhaseSpec(
        AdvertiseKeys,
        Server._validate_advertisement,
        Server._close_keys,
        ServerState.COLLECTING_SHARES,
        screen=Server._screen_advertisements,
    ),
    ServerState.COLLECTING_SHARES: PhaseSpec(
        ShareKeys, Server._validate_share_keys, Server._close_shares, ServerState.COLLECTING_MASKED_INPUTS
    ),
    ServerState.COLLECTING_MASKED_INPUTS: PhaseSpec(
        MaskedInput, Server._validate_masked_input, Server._close_masked_inputs, _AFTER_MASKED_INPUTS
    ),
    ServerState.COLLECTING_SIGNATURES: PhaseSpec(
        ConsistencySignature,
        Server._validate_signature,
        Server._close_signatures,
        ServerState.COLLECTING_UNMASK_RESPONSES,
    ),
    ServerState.COLLECTING_UNMASK_RESPONSES: PhaseSpec(
        UnmaskResponse,
        Server._validate_unmask_response,
        Server._close_unmask,
        ServerState.COMPLETED,
        shortfall=Server._bad_survivor_signatures,
    ),
    # Only after complaints: the accused answer; the phase always ends in an abort naming culprits.
    ServerState.COLLECTING_OPENINGS: PhaseSpec(
        EnvelopeOpening, Server._validate_opening, Server._close_openings, ServerState.ABORTED, needs_threshold=False
    ),
}

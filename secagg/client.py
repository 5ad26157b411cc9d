"""The participant's side of one round, as a state machine with no I/O.

    client = Client(config, rng, input_vector)
    outgoing = client.start()                 # AdvertiseKeys
    outgoing = client.receive(server_message) # the reply, or None when there is none

The transition table ``TRANSITIONS`` is data: (state, message type) -> (handler, next state).
A message that does not fit the table, fails validation, or shows the server lying, aborts
the round for this client: ``receive`` returns an ``Abort`` carrying the phase and the reason,
and the client never reveals anything after that.

The rules that keep an honest client's input private even from a lying server:
- it reveals, for each neighbour v, the share of b_v if v survived or of s_v^SK if v dropped,
  never both, and nothing at all if the survivor list is smaller than the threshold, is not a
  subset of the participants that shared keys, or lists someone as both alive and dropped;
- in the malicious-server mode it checks the signature of every advertised key pair against
  the enrolled identity keys, and reveals only after t signatures on the same survivor list;
- it commits to its b_u and to every share it deals before anything is revealed, and checks
  each share it receives against its dealer's commitments. A bad envelope is not silently
  dropped: the holder complains. The accused opens only the envelopes a (signed) complaint names,
  which reveals nothing a complainer did not already hold, and after an opening it reveals
  nothing more: the round aborts with the culprit named.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import keys, machine, prg, shamir
from .errors import AbortKind, CryptoError, Phase, ProtocolAbort, ShamirError
from .graph import GraphError
from .machine import Branch
from .messages import (
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
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from .params import ProtocolParams, SecurityMode
from .rand import RandomSource
from .session import Session, check_advertisement, check_roster_keys_distinct, signature_check, unsigned_keys

_SHARE_PLAINTEXT = keys.SHARE_PLAINTEXT


class ClientState(enum.Enum):
    READY = (Phase.ADVERTISE_KEYS, "ready to advertise keys")
    AWAITING_ROSTER = (Phase.ADVERTISE_KEYS, "waiting for the key roster")
    AWAITING_SHARES = (Phase.SHARE_KEYS, "waiting for the shares addressed to it")
    AWAITING_CONSISTENCY_REQUEST = (Phase.CONSISTENCY_CHECK, "waiting for the survivor list to sign")
    AWAITING_UNMASK_REQUEST = (Phase.UNMASK, "waiting for the unmask request")
    # It opened envelopes to answer complaints: the round can only abort now.
    OPENED_ENVELOPES = (Phase.COMPLAINTS, "opened envelopes for a complaint; awaiting the abort")
    COMPLETED = (Phase.COMPLETED, "done")
    ABORTED = (Phase.ABORTED, "aborted")

    @property
    def phase(self) -> Phase:
        return self.value[0]


@dataclass(frozen=True)
class ClientConfig:
    """``identity_key`` and ``identity_keys`` (the enrolled Ed25519 public keys of the whole
    federation, by participant id) are required in the malicious-server mode. ``runner``
    (optional) runs the masking in parts, one per core (the result is the same bit for bit)."""

    participant_id: int
    round_id: bytes
    params: ProtocolParams
    identity_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    identity_keys: Mapping[int, bytes] = field(default_factory=dict)
    runner: prg.PartRunner | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.params.mode is SecurityMode.MALICIOUS:
            if self.identity_key is None:
                raise ValueError("malicious-server mode needs the participant's identity key")
            if not self.identity_keys:
                raise ValueError("malicious-server mode needs the enrolled identity keys")


class Client:
    def __init__(self, config: ClientConfig, rng: RandomSource, input_vector: ModularVector | None = None) -> None:
        self.config = config
        self.me = config.participant_id
        self.params = config.params
        self._rng = rng
        self._dtype = prg.dtype_for_bits(self.params.modulus_bits)
        self.state = ClientState.READY
        self.abort_reason: str | None = None
        self.abort_kind: AbortKind | None = None
        self._input: ModularVector | None = None
        if input_vector is not None:
            self.set_input(input_vector)
        self._encryption = keys.AgreementKeyPair.generate(rng)
        self._masking = keys.AgreementKeyPair.generate(rng)
        self._session: Session | None = None
        self._self_mask_secret: bytes | None = None
        # owner -> (share of b_owner, share of s_owner^SK) that this client holds
        self._held_shares: dict[int, tuple[int, int]] = {}
        # neighbour -> pairwise mask seed s_uv, computed once at roster time
        self._pairwise_seeds: dict[int, bytes] = {}
        # holder -> the ephemeral X25519 secret of the envelope sent to it (to answer a complaint)
        self._envelope_secrets: dict[int, bytes] = {}
        # senders whose envelopes this client complained about (they did share keys)
        self._complained: dict[int, Complaint] = {}
        self._signed_survivors: tuple[int, ...] | None = None
        self._identity_signer: keys.Signer | None = None  # made at the first signature

    # --- public interface -------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def session_id(self) -> bytes | None:
        return self._session.session_id if self._session else None

    def set_input(self, vector: ModularVector) -> None:
        """The encoded input (integers mod 2^b); needed before the shares arrive."""
        vector = np.asarray(vector)
        if vector.shape != (self.params.dimension,):
            raise ValueError(f"input must have shape ({self.params.dimension},), got {vector.shape}")
        if vector.dtype != self._dtype:
            raise ValueError(f"input must be {self._dtype} for {self.params.modulus_bits}-bit arithmetic")
        if (
            self.params.modulus_bits < self._dtype.itemsize * 8
            and int(vector.max(initial=0)) >> self.params.modulus_bits
        ):
            raise ValueError(f"input values must be below 2^{self.params.modulus_bits}")
        if self.state not in (ClientState.READY, ClientState.AWAITING_ROSTER, ClientState.AWAITING_SHARES):
            raise ValueError("the input can only be set before the masked input is sent")
        self._input = vector

    def start(self) -> AdvertiseKeys:
        if self.state is not ClientState.READY:
            raise RuntimeError(f"start() called in state {self.state.name}")
        signature = b""
        if self.params.mode is SecurityMode.MALICIOUS:
            payload = keys.advertisement_payload(
                self.config.round_id, self.me, self._encryption.public_bytes, self._masking.public_bytes
            )
            signature = self._signer().sign(payload)
        self.state = ClientState.AWAITING_ROSTER
        return AdvertiseKeys(
            self.me, self.config.round_id, self._encryption.public_bytes, self._masking.public_bytes, signature
        )

    def receive(self, message: object) -> ClientMessage | None:
        """Feed one server message; returns the reply (or an Abort), or None."""
        if self.state in (ClientState.COMPLETED, ClientState.ABORTED):
            return None
        if isinstance(message, Abort):
            self._enter_abort(AbortKind.PEER_ABORTED, f"the server aborted the round: {message.reason}")
            return None
        transition = TRANSITIONS.get((self.state, type(message)))
        if transition is None:
            return self._abort(
                AbortKind.INCONSISTENT, f"unexpected {type(message).__name__} while {self.state.value[1]}"
            )
        handler, next_state = transition
        try:
            reply = handler(self, message)
        except ProtocolAbort as exc:
            return self._abort(exc.kind, exc.reason)
        self.state = machine.next_state(next_state, self)
        return reply

    # --- handlers -----------------------------------------------------------------------------

    def _on_roster(self, roster: KeyRoster) -> ShareKeys:
        params = self.params
        if roster.round_id != self.config.round_id:
            raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, "the roster is for another round")
        ids = [ad.sender for ad in roster.advertisements]
        if len(set(ids)) != len(ids):
            raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, "the roster lists a participant twice")
        mine = [ad for ad in roster.advertisements if ad.sender == self.me]
        if not mine or (mine[0].encryption_key, mine[0].masking_key) != (
            self._encryption.public_bytes,
            self._masking.public_bytes,
        ):
            raise ProtocolAbort(
                Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, "the roster does not carry this participant's own keys"
            )
        for ad in roster.advertisements:
            problem = check_advertisement(
                ad,
                round_id=self.config.round_id,
                params=params,
                identity_keys=self.config.identity_keys,
                probe_points=False,
                verify_keys=False,
            )
            if problem:
                raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, problem)
        problem = check_roster_keys_distinct(roster.advertisements)
        if problem:
            raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, problem)
        if len(ids) < params.threshold:
            raise ProtocolAbort(
                Phase.ADVERTISE_KEYS,
                AbortKind.BELOW_THRESHOLD,
                f"only {len(ids)} participants advertised keys, threshold is {params.threshold}",
            )
        try:
            session = Session.from_roster(self.config.round_id, params, roster.advertisements)
        except GraphError as exc:  # e.g. an odd degree over an odd number of participants
            raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.UNSAFE_ROUND, f"the roster: {exc}") from None
        self._session = session
        holders = sorted(session.holders(self.me))
        if len(holders) < params.threshold:
            raise ProtocolAbort(
                Phase.ADVERTISE_KEYS,
                AbortKind.BELOW_THRESHOLD,
                f"{len(holders)} share holders < threshold {params.threshold}",
            )
        if 2 * params.threshold <= len(holders):
            # Two disjoint groups of holders could each rebuild a secret (the split view).
            raise ProtocolAbort(
                Phase.ADVERTISE_KEYS,
                AbortKind.UNSAFE_ROUND,
                f"threshold {params.threshold} does not exceed half of the {len(holders)} share holders",
            )
        neighbours = sorted(session.neighbours(self.me))
        for v in neighbours:
            problem = check_advertisement(
                session.advertisements[v],
                round_id=self.config.round_id,
                params=params,
                identity_keys=self.config.identity_keys,
                probe_points=False,
                verify_signature=False,
            )
            if problem:
                raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, problem)
        if params.mode is SecurityMode.MALICIOUS:
            checks = [
                signature_check(session.advertisements[v], self.config.round_id, self.config.identity_keys[v])
                for v in neighbours
            ]
            for v, valid in zip(neighbours, keys.verify_many(checks, self.config.runner), strict=True):
                if not valid:
                    raise ProtocolAbort(Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, unsigned_keys(v))
        for v in neighbours:
            try:
                self._pairwise_seeds[v] = keys.pairwise_mask_seed(
                    self._masking.private_bytes, session.advertisements[v].masking_key, session.session_id
                )
            except CryptoError as exc:
                raise ProtocolAbort(
                    Phase.ADVERTISE_KEYS, AbortKind.INCONSISTENT, f"participant {v} advertised an unusable key: {exc}"
                ) from exc

        self._self_mask_secret = self._rng.random_bytes(shamir.SECRET_BYTES)
        split = shamir.split(
            [self._self_mask_secret, self._masking.private_bytes],
            threshold=params.threshold,
            holders=holders,
            rng=self._rng,
        )
        shares = {holder: (b_share, s_share) for holder, (b_share, s_share) in split.items()}
        self._held_shares[self.me] = shares[self.me]
        sid = session.session_id
        commitment = keys.self_mask_commitment(self._self_mask_secret, session_id=sid, owner=self.me)
        envelopes = tuple(
            self._seal(session, holder, shares[holder], commitment) for holder in holders if holder != self.me
        )
        return ShareKeys(self.me, sid, envelopes, commitment)

    def _seal(
        self, session: Session, holder: int, share_pair: tuple[int, int], self_mask_commitment: bytes
    ) -> EncryptedShare:
        """The envelope for ``holder``: its two shares under a fresh ephemeral key, with commitments."""
        sid = session.session_id
        b_share, s_share = (shamir.encode_share(y) for y in share_pair)
        ephemeral = keys.AgreementKeyPair.generate(self._rng)
        secret = keys.exchange(ephemeral.private_bytes, session.advertisements[holder].encryption_key)
        key = keys.envelope_key(
            secret, session_id=sid, sender=self.me, receiver=holder, ephemeral_key=ephemeral.public_bytes
        )
        plaintext = _SHARE_PLAINTEXT.pack(self.me, holder, b_share, s_share)
        ciphertext = keys.encrypt_share(key, plaintext, session_id=sid, sender=self.me, receiver=holder, rng=self._rng)
        b_commitment = keys.share_commitment(b_share, session_id=sid, owner=self.me, holder=holder, secret="b")
        s_commitment = keys.share_commitment(s_share, session_id=sid, owner=self.me, holder=holder, secret="s")
        signature = b""
        if self.params.mode is SecurityMode.MALICIOUS:
            payload = keys.envelope_payload(
                sid,
                self.me,
                holder,
                ephemeral_key=ephemeral.public_bytes,
                ciphertext=ciphertext,
                self_mask_share_commitment=b_commitment,
                key_share_commitment=s_commitment,
                self_mask_commitment=self_mask_commitment,
            )
            signature = self._signer().sign(payload)
        self._envelope_secrets[holder] = ephemeral.private_bytes
        return EncryptedShare(
            self.me, holder, ciphertext, ephemeral.public_bytes, b_commitment, s_commitment, signature
        )

    def _on_shares(self, bundle: ShareBundle) -> MaskedInput:
        session = self._require_session(bundle.session_id, Phase.SHARE_KEYS)
        if bundle.recipient != self.me:
            raise ProtocolAbort(
                Phase.SHARE_KEYS, AbortKind.INCONSISTENT, f"received the shares of participant {bundle.recipient}"
            )
        neighbours = session.neighbours(self.me)
        dealer_commitments = dict(bundle.self_mask_commitments)
        if len(dealer_commitments) != len(bundle.self_mask_commitments):
            raise ProtocolAbort(
                Phase.SHARE_KEYS, AbortKind.INCONSISTENT, "a dealer's commitment to its self mask is listed twice"
            )
        for share in bundle.shares:
            if share.recipient != self.me:
                raise ProtocolAbort(
                    Phase.SHARE_KEYS,
                    AbortKind.INCONSISTENT,
                    f"a share addressed to {share.recipient} was delivered here",
                )
            if share.sender not in neighbours:
                raise ProtocolAbort(
                    Phase.SHARE_KEYS, AbortKind.INCONSISTENT, f"a share from {share.sender}, who is not a neighbour"
                )
            if share.sender in self._held_shares or share.sender in self._complained:
                raise ProtocolAbort(
                    Phase.SHARE_KEYS, AbortKind.INCONSISTENT, f"two shares from participant {share.sender}"
                )
            opened = self._open_share(session, share)
            if opened is not None:
                self._held_shares[share.sender] = opened
            else:
                self._complained[share.sender] = self._complaint(session, share, dealer_commitments.get(share.sender))
        # This client's view of U2 (itself included): every neighbour that sent it an envelope.
        survivors = set(self._held_shares) | set(self._complained)
        if len(survivors) < self.params.threshold:
            raise ProtocolAbort(
                Phase.SHARE_KEYS,
                AbortKind.BELOW_THRESHOLD,
                f"only {len(survivors)} of this participant's share holders are left, threshold is "
                f"{self.params.threshold}",
            )
        if self._input is None:
            raise ProtocolAbort(Phase.MASKED_INPUT, AbortKind.LOCAL, "no input was set before the masked-input phase")

        if self._self_mask_secret is None:
            raise ProtocolAbort(
                Phase.MASKED_INPUT, AbortKind.LOCAL, "no self-mask secret: the key roster was not handled"
            )

        masked = self._input.copy()
        add = [keys.self_mask_seed(self._self_mask_secret, session.session_id)]
        subtract: list[bytes] = []
        for v in sorted(survivors - {self.me}):
            # u adds PRG(s_uv) for v > u and subtracts it for v < u: the pair cancels in the sum.
            (add if v > self.me else subtract).append(self._pairwise_seeds[v])
        prg.add_masks(masked, add, subtract, runner=self.config.runner)
        prg.reduce_modulus(masked, self.params.modulus_bits)
        self._input = None  # neither the plaintext input nor the agreements are needed any more
        self._pairwise_seeds.clear()
        complaints = tuple(self._complained[v] for v in sorted(self._complained))
        return MaskedInput(self.me, session.session_id, masked, complaints)

    def _complaint(self, session: Session, share: EncryptedShare, dealer_commitment: bytes | None) -> Complaint:
        """A complaint about an envelope that did not open to the shares its commitments promise.

        In the malicious-server mode the sender's signature decides which complaint it is: a
        signed bad envelope is the sender's doing (its opening will show it); an unsigned one is
        the relay's or the sender's, and the server, which holds what the sender sent, decides."""
        kind = ComplaintKind.BAD_ENVELOPE
        if self.params.mode is SecurityMode.MALICIOUS:
            identity = self.config.identity_keys.get(share.sender)
            try:
                if identity is None or dealer_commitment is None:
                    raise CryptoError("no identity key or self-mask commitment for the sender")
                payload = keys.envelope_payload_of(session.session_id, share, self_mask_commitment=dealer_commitment)
                keys.verify(identity, share.signature, payload)
            except CryptoError:
                kind = ComplaintKind.BAD_SIGNATURE
        signature = b""
        if self.params.mode is SecurityMode.MALICIOUS:
            payload = keys.complaint_payload(session.session_id, self.me, share.sender, kind.value)
            signature = self._signer().sign(payload)
        return Complaint(share.sender, kind, signature)

    def _on_open_request(self, request: OpenRequest) -> EnvelopeOpening:
        """Open the envelopes this client sent to the complainers, and nothing else. In the
        malicious-server mode only for complaints the complainer signed."""
        session = self._require_session(request.session_id, Phase.COMPLAINTS)
        malicious = self.params.mode is SecurityMode.MALICIOUS
        opened: dict[int, bytes] = {}
        for complainer, signature in request.complaints:
            secret = self._envelope_secrets.get(complainer)
            if secret is None or complainer in opened:
                continue
            if len(opened) == self.params.threshold - 1:
                # Each opening shows the server one share of b_u and of s_u: t - 1 of them reveal
                # nothing, whoever asks, and one bad envelope is enough to convict a cheater.
                break
            if malicious:
                identity = self.config.identity_keys.get(complainer)
                payload = keys.complaint_payload(
                    session.session_id, complainer, self.me, ComplaintKind.BAD_ENVELOPE.value
                )
                try:
                    if identity is None:
                        raise CryptoError("no identity key")
                    keys.verify(identity, signature, payload)
                except CryptoError:
                    continue
            opened[complainer] = secret
        if not opened:
            raise ProtocolAbort(
                Phase.COMPLAINTS, AbortKind.INCONSISTENT, "asked to open envelopes without a valid complaint about them"
            )
        # The round cannot complete after an opening: drop every other secret now.
        self._wipe_secrets()
        return EnvelopeOpening(self.me, session.session_id, tuple(sorted(opened.items())))

    def _on_consistency_request(self, request: ConsistencyRequest) -> ConsistencySignature:
        session = self._require_session(request.session_id, Phase.CONSISTENCY_CHECK)
        survivors = self._check_survivors(session, request.survivors, (), Phase.CONSISTENCY_CHECK)
        self._signed_survivors = survivors
        payload = keys.consistency_payload(session.session_id, survivors)
        return ConsistencySignature(self.me, session.session_id, self._signer().sign(payload))

    def _on_unmask_request(self, request: UnmaskRequest) -> UnmaskResponse:
        session = self._require_session(request.session_id, Phase.UNMASK)
        survivors = self._check_survivors(session, request.survivors, request.dropped, Phase.UNMASK)
        dropped = tuple(sorted(request.dropped))
        if self.params.mode is SecurityMode.MALICIOUS:
            if survivors != self._signed_survivors:
                raise ProtocolAbort(
                    Phase.UNMASK,
                    AbortKind.INCONSISTENT,
                    "the survivor list differs from the one this participant signed",
                )
            self._check_consistency_signatures(session, survivors, request.signatures)

        alive, gone = set(survivors), set(dropped)
        self_mask_shares, key_shares = [], []
        for owner, (b_share, s_share) in sorted(self._held_shares.items()):
            # Exactly one of the two, decided by the server's (checked) lists.
            if owner in alive:
                self_mask_shares.append((owner, shamir.encode_share(b_share)))
            elif owner in gone:
                key_shares.append((owner, shamir.encode_share(s_share)))
        return UnmaskResponse(self.me, session.session_id, tuple(self_mask_shares), tuple(key_shares))

    # --- checks -------------------------------------------------------------------------------

    def _require_session(self, session_id: bytes, phase: Phase) -> Session:
        if self._session is None or session_id != self._session.session_id:
            raise ProtocolAbort(phase, AbortKind.INCONSISTENT, "message from another session (session id mismatch)")
        return self._session

    def _open_share(self, session: Session, share: EncryptedShare) -> tuple[int, int] | None:
        """The two shares in ``share``, or None when the envelope does not open to shares that
        match its commitments (the caller complains)."""
        sid = session.session_id
        try:
            secret = keys.exchange(self._encryption.private_bytes, share.ephemeral_key)
            key = keys.envelope_key(
                secret, session_id=sid, sender=share.sender, receiver=self.me, ephemeral_key=share.ephemeral_key
            )
            plaintext = keys.decrypt_share(key, share.ciphertext, session_id=sid, sender=share.sender, receiver=self.me)
            sender, recipient, b_bytes, s_bytes = _SHARE_PLAINTEXT.unpack(plaintext)
            if (sender, recipient) != (share.sender, self.me):
                return None
            b_share, s_share = shamir.decode_share(b_bytes), shamir.decode_share(s_bytes)
        except (CryptoError, ShamirError, struct.error):
            return None
        owner = share.sender
        expected = (
            keys.share_commitment(b_bytes, session_id=sid, owner=owner, holder=self.me, secret="b"),
            keys.share_commitment(s_bytes, session_id=sid, owner=owner, holder=self.me, secret="s"),
        )
        if expected != (share.self_mask_share_commitment, share.key_share_commitment):
            return None
        return b_share, s_share

    def _check_survivors(
        self, session: Session, survivors: tuple[int, ...], dropped: tuple[int, ...], phase: Phase
    ) -> tuple[int, ...]:
        """The survivor list must be a plausible U3: no duplicates, disjoint from the dropped
        list, a subset of U2 as far as this client can see, at least t long (overall and among
        this client's share holders), and consistent with every neighbour it got shares from."""
        t = self.params.threshold
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise ProtocolAbort(phase, AbortKind.INCONSISTENT, "the survivor or dropped list repeats a participant")
        both = set(survivors) & set(dropped)
        if both:
            raise ProtocolAbort(
                phase, AbortKind.INCONSISTENT, f"participant {min(both)} is listed as both alive and dropped"
            )
        unknown = (set(survivors) | set(dropped)) - set(session.participants)
        if unknown:
            raise ProtocolAbort(phase, AbortKind.INCONSISTENT, f"participant {min(unknown)} never advertised keys")
        if self.me not in survivors:
            raise ProtocolAbort(
                phase, AbortKind.INCONSISTENT, "this participant sent its masked input but is not listed as a survivor"
            )
        if len(survivors) < t:
            raise ProtocolAbort(
                phase,
                AbortKind.BELOW_THRESHOLD,
                f"only {len(survivors)} survivors, threshold is {t}: revealing nothing",
            )
        shared = set(self._held_shares) | set(self._complained)  # neighbours in U2, and this client
        neighbours = session.neighbours(self.me)
        for v in neighbours:
            if v in survivors and v not in shared:
                raise ProtocolAbort(
                    phase, AbortKind.INCONSISTENT, f"participant {v} is listed as a survivor but never shared keys"
                )
            if v in dropped and v not in shared:
                raise ProtocolAbort(
                    phase, AbortKind.INCONSISTENT, f"participant {v} is listed as dropped but never shared keys"
                )
            if phase is Phase.UNMASK and v in shared and v not in survivors and v not in dropped:
                raise ProtocolAbort(
                    phase, AbortKind.INCONSISTENT, f"participant {v} shared keys but is neither alive nor dropped"
                )
        local_survivors = len(set(survivors) & session.holders(self.me))
        if local_survivors < t:
            raise ProtocolAbort(
                phase,
                AbortKind.BELOW_THRESHOLD,
                f"only {local_survivors} of this participant's share holders survived, threshold is {t}",
            )
        return tuple(sorted(survivors))

    def _check_consistency_signatures(
        self, session: Session, survivors: tuple[int, ...], signatures: tuple[tuple[int, bytes], ...]
    ) -> None:
        payload = keys.consistency_payload(session.session_id, survivors)
        t = self.params.threshold
        # One signature per enrolled survivor (the first listed), checked t at a time: t distinct
        # valid signatures are the guarantee; more cost time and add nothing.
        candidates: dict[int, bytes] = {}
        for signer, signature in signatures:
            if signer in survivors and signer in self.config.identity_keys:
                candidates.setdefault(signer, signature)
        pending = list(candidates.items())
        valid = 0
        while valid < t and pending:
            batch, pending = pending[: t - valid], pending[t - valid :]
            checks = [(self.config.identity_keys[signer], signature, payload) for signer, signature in batch]
            valid += sum(keys.verify_many(checks, self.config.runner))
        if valid < t:
            raise ProtocolAbort(
                Phase.UNMASK,
                AbortKind.BELOW_THRESHOLD,
                f"only {valid} valid signatures on the survivor list, threshold is {t}",
            )

    def _abort(self, kind: AbortKind, reason: str) -> Abort:
        phase = self.state.phase
        self._enter_abort(kind, reason)
        return Abort(phase, reason, sender=self.me)

    def _enter_abort(self, kind: AbortKind, reason: str) -> None:
        self.abort_reason, self.abort_kind = reason, kind
        self.state = ClientState.ABORTED
        self._wipe_secrets()  # nothing can be revealed after an abort

    def _wipe_secrets(self) -> None:
        self._held_shares.clear()
        self._pairwise_seeds.clear()
        self._envelope_secrets.clear()
        self._self_mask_secret = None
        self._input = None

    def _signer(self) -> keys.Signer:
        if self._identity_signer is None:
            if self.config.identity_key is None:  # ClientConfig refuses this in the malicious mode
                raise ProtocolAbort(self.state.phase, AbortKind.LOCAL, "no identity key to sign with")
            self._identity_signer = keys.Signer(self.config.identity_key)
        return self._identity_signer


_AFTER_MASKED_INPUT: Branch[Client, ClientState] = Branch(
    lambda client: client.params.mode.value,
    {
        SecurityMode.MALICIOUS.value: ClientState.AWAITING_CONSISTENCY_REQUEST,
        SecurityMode.SEMI_HONEST.value: ClientState.AWAITING_UNMASK_REQUEST,
    },
)

# A handler takes the message of its row's type: ``receive`` looks rows up by ``type(message)``.
Handler = Callable[[Client, Any], ClientMessage]

# (state, message type) -> (handler, next state or a Branch choosing it)
TRANSITIONS: dict[tuple[ClientState, type], tuple[Handler, ClientState | Branch[Client, ClientState]]] = {
    (ClientState.AWAITING_ROSTER, KeyRoster): (Client._on_roster, ClientState.AWAITING_SHARES),
    (ClientState.AWAITING_SHARES, ShareBundle): (Client._on_shares, _AFTER_MASKED_INPUT),
    (ClientState.AWAITING_CONSISTENCY_REQUEST, ConsistencyRequest): (
        Client._on_consistency_request,
        ClientState.AWAITING_UNMASK_REQUEST,
    ),
    (ClientState.AWAITING_UNMASK_REQUEST, UnmaskRequest): (Client._on_unmask_request, ClientState.COMPLETED),
    # Only when accused by a complaint, after its masked input went out.
    (ClientState.AWAITING_CONSISTENCY_REQUEST, OpenRequest): (Client._on_open_request, ClientState.OPENED_ENVELOPES),
    (ClientState.AWAITING_UNMASK_REQUEST, OpenRequest): (Client._on_open_request, ClientState.OPENED_ENVELOPES),
}

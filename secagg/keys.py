"""Key agreement, key derivation, share encryption and signatures, over ``cryptography`` and
libsodium (through pyca's PyNaCl).

- X25519 for both key pairs of a participant: ``c`` (receives Shamir shares) and ``s`` (pairwise
  mask seeds). Low-order peer points are refused (the shared secret would be all zero).
  libsodium computes it (``crypto_scalarmult``): the bytes RFC 7748 defines, as OpenSSL's, and
  the call releases the GIL, so a round's agreements run on as many cores as the caller's
  ``PartRunner`` has, and beside a thread checking signatures (OpenSSL's X25519, through
  ``cryptography``, holds the GIL and stalled both; docs/secagg-bench.md).
- HKDF-SHA256 binds every derived key to the session id and to its purpose, so a key never
  serves two purposes and masks never repeat across rounds.
- Share envelopes: the sender encrypts each holder's shares with AES-256-GCM under a key from a
  fresh ephemeral X25519 key and the holder's ``c`` (ECIES style). One envelope, one ephemeral
  key: revealing that ephemeral secret opens exactly that envelope, and anyone can check the
  opening against the ephemeral public key. That is what makes a complaint about a bad envelope
  decidable without revealing anything else (see ``client`` and ``server``).
- SHA-256 commitments: to each self-mask seed b_u, and to each share a holder receives, so that
  every reconstructed secret and every revealed share is checked.
- Ed25519 signs key advertisements, share envelopes, complaints and the consistency check in the
  malicious-server mode (libsodium, through pyca's PyNaCl, signs for a participant and verifies:
  see ``Signer`` and ``verify``; ``cryptography`` holds and generates the keys). Where a phase
  checks many signatures, ``verify_many`` hands them to the caller's ``PartRunner`` in parts:
  the verification releases the GIL, so the parts run on as many cores.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CryptoError
from .rand import RandomSource

if TYPE_CHECKING:
    from .messages import EncryptedShare
    from .prg import PartRunner

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16

_LABEL = b"fedmask/secagg/v1/"
LABEL_PAIRWISE_MASK = _LABEL + b"pairwise-mask"
LABEL_SELF_MASK = _LABEL + b"self-mask"
LABEL_ADVERTISE = _LABEL + b"advertise-keys"
LABEL_CONSISTENCY = _LABEL + b"consistency-check"
LABEL_ENVELOPE_KEY = _LABEL + b"share-envelope-key"
LABEL_ENVELOPE = _LABEL + b"share-envelope"
LABEL_SELF_MASK_COMMITMENT = _LABEL + b"self-mask-commitment"
LABEL_SHARE_COMMITMENT = _LABEL + b"share-commitment"
LABEL_COMPLAINT = _LABEL + b"share-complaint"
COMMITMENT_BYTES = 32
# The plaintext of a share envelope: sender, recipient, the share of b, the share of s^SK.
SHARE_PLAINTEXT = struct.Struct(">II33s33s")


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


@dataclass(frozen=True)
class AgreementKeyPair:
    """An X25519 key pair: the 32-byte scalar (RFC 7748; clamped where it is used) and its public
    key. ``private_bytes`` is secret: never log it."""

    private_bytes: bytes
    public_bytes: bytes

    @classmethod
    def generate(cls, rng: RandomSource) -> AgreementKeyPair:
        return cls.from_private_bytes(rng.random_bytes(PRIVATE_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> AgreementKeyPair:
        if not isinstance(private_bytes, bytes) or len(private_bytes) != PRIVATE_KEY_BYTES:
            raise CryptoError(f"X25519 private keys are {PRIVATE_KEY_BYTES} bytes")
        return cls(private_bytes, nacl.bindings.crypto_scalarmult_base(private_bytes))

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"AgreementKeyPair(public={self.public_bytes.hex()[:16]}...)"


def check_public_key(public_bytes: bytes) -> bytes:
    """A peer's X25519 public key, checked for its size; raises CryptoError if malformed. (Every
    32 bytes decode to a point; the low-order ones are refused by ``exchange``.)"""
    if not isinstance(public_bytes, bytes) or len(public_bytes) != PUBLIC_KEY_BYTES:
        raise CryptoError(f"X25519 public keys are {PUBLIC_KEY_BYTES} bytes")
    return public_bytes


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def exchange(private_bytes: bytes, peer_public: bytes) -> bytes:
    """Raw X25519. Refuses malformed keys and low-order points. Feed the output to HKDF only."""
    check_public_key(peer_public)
    if len(private_bytes) != PRIVATE_KEY_BYTES:
        raise CryptoError(f"X25519 private keys are {PRIVATE_KEY_BYTES} bytes")
    try:
        return nacl.bindings.crypto_scalarmult(private_bytes, peer_public)
    except nacl.exceptions.RuntimeError as exc:  # libsodium refuses low-order points (all-zero secret)
        raise CryptoError("key agreement failed: peer public key is a low-order point") from exc


def agree(private_bytes: bytes, peer_public: bytes, *, session_id: bytes, info: bytes) -> bytes:
    """X25519 then HKDF-SHA256(salt=session id, info=purpose)."""
    return hkdf(exchange(private_bytes, peer_public), salt=session_id, info=info)


def pairwise_mask_seed(private_bytes: bytes, peer_public: bytes, session_id: bytes) -> bytes:
    """s_uv: the seed both u and v derive for their pairwise mask (symmetric in u, v)."""
    return agree(private_bytes, peer_public, session_id=session_id, info=LABEL_PAIRWISE_MASK)


def pairwise_mask_seeds(
    pairs: Sequence[tuple[bytes, bytes]], session_id: bytes, runner: PartRunner | None = None
) -> list[bytes]:
    """``pairwise_mask_seed`` of each ``(private key, peer public key)``; in ``runner.parts``
    jobs of consecutive pairs when a runner is given (X25519 releases the GIL). Raises the first
    pair's CryptoError, in order, if any fails."""
    derived: list[bytes | CryptoError] = [b""] * len(pairs)

    def derive(start: int, stop: int) -> None:
        for i in range(start, stop):
            try:
                derived[i] = pairwise_mask_seed(*pairs[i], session_id)
            except CryptoError as exc:
                derived[i] = exc

    _in_parts(derive, len(pairs), runner)
    seeds: list[bytes] = []
    for seed in derived:
        if isinstance(seed, CryptoError):
            raise seed
        seeds.append(seed)
    return seeds


def self_mask_seed(self_mask_secret: bytes, session_id: bytes) -> bytes:
    """The PRG seed of b_u, bound to the session so a seed never repeats across rounds."""
    return hkdf(self_mask_secret, salt=session_id, info=LABEL_SELF_MASK)


def envelope_key(shared_secret: bytes, *, session_id: bytes, sender: int, receiver: int, ephemeral_key: bytes) -> bytes:
    """From X25519(e, c_receiver) of one envelope's ephemeral key e: the key of that envelope
    only (the ephemeral public key is bound in, so an opening fits one envelope)."""
    info = LABEL_ENVELOPE_KEY + _u32(sender) + _u32(receiver) + ephemeral_key
    return hkdf(shared_secret, salt=session_id, info=info)


def _share_aad(session_id: bytes, sender: int, receiver: int) -> bytes:
    return session_id + _u32(sender) + _u32(receiver)


def encrypt_share(
    key: bytes, plaintext: bytes, *, session_id: bytes, sender: int, receiver: int, rng: RandomSource
) -> bytes:
    """nonce || AES-256-GCM(plaintext) with (session, sender, receiver) as associated data."""
    nonce = rng.random_bytes(GCM_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_aad(session_id, sender, receiver))


def decrypt_share(key: bytes, ciphertext: bytes, *, session_id: bytes, sender: int, receiver: int) -> bytes:
    if len(ciphertext) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
        raise CryptoError("share ciphertext is too short")
    nonce, body = ciphertext[:GCM_NONCE_BYTES], ciphertext[GCM_NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _share_aad(session_id, sender, receiver))
    except InvalidTag as exc:
        raise CryptoError(
            f"share from {sender} to {receiver} failed authentication (tampered, or another session)"
        ) from exc


# --- commitments -----------------------------------------------------------------------------


def self_mask_commitment(self_mask_secret: bytes, *, session_id: bytes, owner: int) -> bytes:
    """SHA-256 commitment to b_u, sent before any share of it is revealed: the server checks the
    rebuilt b_u against it (hiding: b_u is 256 uniformly random bits)."""
    return hashlib.sha256(LABEL_SELF_MASK_COMMITMENT + session_id + _u32(owner) + self_mask_secret).digest()


def share_commitment(share: bytes, *, session_id: bytes, owner: int, holder: int, secret: str) -> bytes:
    """SHA-256 commitment to the share of ``owner``'s ``secret`` ("b": self-mask seed, "s":
    masking key) that ``holder`` holds. A single share is uniformly random, so it stays hidden."""
    return ShareCommitter(session_id=session_id, owner=owner, secret=secret).commit(holder, share)


class ShareCommitter:
    """``share_commitment`` for the shares of one owner's secret: the common prefix (label,
    secret, session, owner) is hashed once, and each share costs one copy and one update (the
    server checks about 90,000 of them per round at n = 1000)."""

    def __init__(self, *, session_id: bytes, owner: int, secret: str) -> None:
        if secret not in ("b", "s"):
            raise ValueError(f"secret is 'b' or 's', got {secret!r}")
        self._prefix = hashlib.sha256(LABEL_SHARE_COMMITMENT + secret.encode() + session_id + _u32(owner))

    def commit(self, holder: int, share: bytes) -> bytes:
        digest = self._prefix.copy()
        digest.update(_u32(holder) + share)
        return digest.digest()


# --- signatures (malicious-server mode) -------------------------------------------------------


def envelope_payload(
    session_id: bytes,
    sender: int,
    recipient: int,
    *,
    ephemeral_key: bytes,
    ciphertext: bytes,
    self_mask_share_commitment: bytes,
    key_share_commitment: bytes,
    self_mask_commitment: bytes,
) -> bytes:
    """What the sender of a share envelope signs: the envelope, the commitments to the two shares
    in it, and its commitment to b_sender."""
    return (
        LABEL_ENVELOPE
        + session_id
        + _u32(sender)
        + _u32(recipient)
        + ephemeral_key
        + _u32(len(ciphertext))
        + ciphertext
        + self_mask_share_commitment
        + key_share_commitment
        + self_mask_commitment
    )


def envelope_payload_of(session_id: bytes, envelope: EncryptedShare, *, self_mask_commitment: bytes) -> bytes:
    """``envelope_payload`` of an envelope as it travels: what its sender signs."""
    return envelope_payload(
        session_id,
        envelope.sender,
        envelope.recipient,
        ephemeral_key=envelope.ephemeral_key,
        ciphertext=envelope.ciphertext,
        self_mask_share_commitment=envelope.self_mask_share_commitment,
        key_share_commitment=envelope.key_share_commitment,
        self_mask_commitment=self_mask_commitment,
    )


def complaint_payload(session_id: bytes, complainer: int, accused: int, kind: str) -> bytes:
    """What a holder signs when it complains about the envelope ``accused`` sent it."""
    return LABEL_COMPLAINT + session_id + _u32(complainer) + _u32(accused) + _u32(len(kind)) + kind.encode()


def advertisement_payload(round_id: bytes, sender: int, encryption_key: bytes, masking_key: bytes) -> bytes:
    return LABEL_ADVERTISE + _u32(len(round_id)) + round_id + _u32(sender) + encryption_key + masking_key


def consistency_payload(session_id: bytes, survivors: tuple[int, ...]) -> bytes:
    return LABEL_CONSISTENCY + session_id + _u32(len(survivors)) + b"".join(_u32(u) for u in survivors)


def sign(identity_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return identity_key.sign(payload)


class Signer:
    """An identity key that signs many payloads: libsodium (``crypto_sign``) with the key's
    expanded secret derived once, where OpenSSL derives it again for every signature (28 us
    against 43 us a signature on the host of docs/secagg-bench.md; a participant signs one
    envelope per share holder in a round). Ed25519 signatures are deterministic (RFC 8032):
    the bytes are those ``sign`` makes."""

    __slots__ = ("_secret",)

    def __init__(self, identity_key: Ed25519PrivateKey) -> None:
        seed = identity_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        _, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)

    def sign(self, payload: bytes) -> bytes:
        # crypto_sign returns the signature followed by the message
        return bytes(nacl.bindings.crypto_sign(bytes(payload), self._secret)[:SIGNATURE_BYTES])

    def __repr__(self) -> str:
        return "Signer(<identity key>)"


def verify(identity_public: bytes, signature: bytes, payload: bytes) -> None:
    """Raises CryptoError unless ``signature`` is a valid Ed25519 signature of ``payload`` under
    ``identity_public``.

    libsodium checks it (``crypto_sign_open``): faster than OpenSSL's Ed25519 (twice as fast on
    one host measured, 15 % on another; docs/secagg-bench.md), and a malicious-mode round checks
    n signatures per participant and per coordinator phase. It is also the stricter of the two:
    it refuses small-order public keys and non-canonical encodings, which no honest signer
    produces, and under which OpenSSL accepts one signature for every payload."""
    if len(signature) != SIGNATURE_BYTES:
        raise CryptoError(f"Ed25519 signatures are {SIGNATURE_BYTES} bytes")
    if len(identity_public) != nacl.bindings.crypto_sign_PUBLICKEYBYTES:
        raise CryptoError(f"Ed25519 public keys are {nacl.bindings.crypto_sign_PUBLICKEYBYTES} bytes")
    try:
        nacl.bindings.crypto_sign_open(bytes(signature) + bytes(payload), bytes(identity_public))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise CryptoError("signature does not verify") from exc


def check_identity_key(identity_public: bytes) -> None:
    """Raises CryptoError unless ``identity_public`` is an Ed25519 public key that a signature
    can be checked under: 32 bytes encoding a point of the prime-order subgroup. Under a
    small-order key one signature verifies for every payload with OpenSSL's check (``verify``
    refuses it, but a roster should never list such a key)."""
    if len(identity_public) != nacl.bindings.crypto_sign_PUBLICKEYBYTES or not (
        nacl.bindings.crypto_core_ed25519_is_valid_point(bytes(identity_public))
    ):
        raise CryptoError("not a usable Ed25519 public key (not a point of the prime-order subgroup)")


# Fewer checks than this per part cost more to hand to a thread than they take (~50 us each).
_MIN_CHECKS_PER_PART = 2


def verify_many(checks: Sequence[tuple[bytes, bytes, bytes]], runner: PartRunner | None = None) -> list[bool]:
    """Whether each ``(identity public key, signature, payload)`` verifies, as ``verify`` decides;
    in ``runner.parts`` jobs of consecutive checks when a runner is given."""
    valid = [False] * len(checks)

    def check(start: int, stop: int) -> None:
        for i in range(start, stop):
            try:
                verify(*checks[i])
            except CryptoError:
                continue
            valid[i] = True

    _in_parts(check, len(checks), runner)
    return valid


def _in_parts(job: Callable[[int, int], None], count: int, runner: PartRunner | None) -> None:
    """``job(start, stop)`` over ``range(count)``, cut into ``runner.parts`` consecutive parts
    (fewer when there are few items: handing a part to a thread costs about one item)."""
    parts = 1 if runner is None else min(runner.parts, count // _MIN_CHECKS_PER_PART)
    if runner is None or parts <= 1:
        job(0, count)
    else:
        bounds = [count * k // parts for k in range(parts + 1)]
        runner([functools.partial(job, start, stop) for start, stop in itertools.pairwise(bounds)])

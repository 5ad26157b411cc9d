"""Write the known-answer vectors of fedmask's own derivations for the current protocol version.

Run by hand, once per protocol version (tests never run it):

    .venv/bin/python tests/secagg/vectors/generate.py

It writes one JSON file per derivation into ``tests/secagg/vectors/v<PROTOCOL_VERSION>/`` and
refuses to write into a directory that already exists: a published vector set is frozen. Every
output is computed twice, by fedmask and by a short reimplementation of the documented
construction in this file (hashlib and hmac; AES and X25519 from ``cryptography``), and
nothing is written unless the two agree bit for bit.

Fixed inputs: X25519 private keys are the 32-byte scalars in ``SCALARS`` (roster keys are
SHA-256 of a label naming the participant and the key), session ids and seeds are fixed byte
patterns or SHA-256 of a label, and every RandomSource is a ``SeededRandom`` with the seed given
in the file. Encoding: bytes as lowercase hex; uint32/uint64 vector values as fixed-width hex;
other large integers as minimal hex; floats as ``float.hex``; participant ids as JSON integers.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedmask.ddp import rotation
from fedmask.proto.wire import PROTOCOL_VERSION
from fedmask.secagg import client, graph, keys, prg, rand, shamir
from fedmask.secagg.messages import AdvertiseKeys, ComplaintKind
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.session import Session, compute_session_id

VECTORS_DIR = Path(__file__).resolve().parent
MAX_ID = (1 << 32) - 1
FIELD_PRIME = (1 << 256) + 297

SCALARS = {
    "ascending": bytes(range(0x00, 0x20)),
    "ascending-high": bytes(range(0x20, 0x40)),
    "repeated-77": b"\x77" * 32,
    "all-ff": b"\xff" * 32,
    "descending": bytes(range(0xFF, 0xDF, -1)),
}
SESSION_IDS = {
    "hashed": hashlib.sha256(b"fedmask vectors: session id").digest(),
    "zero": bytes(32),
    "all-ff": b"\xff" * 32,
}
ROUND_IDS = {"empty": b"", "short": b"round-1", "long": bytes(range(256))}
SEEDS = {
    "zero": bytes(32),
    "ascending": bytes(range(32)),
    "hashed": hashlib.sha256(b"fedmask vectors: seed").digest(),
    "all-ff": b"\xff" * 32,
}
SECRETS = {
    "zero": bytes(32),
    "ascending": bytes(range(32)),
    "all-ff": b"\xff" * 32,
    "hashed": hashlib.sha256(b"fedmask vectors: secret").digest(),
}
RNG_SEED = hashlib.sha256(b"fedmask vectors: rng").digest()
# initial[i] = i * ACCUMULATOR_MULTIPLIER mod 2^width: a fixed accumulator with every bit in play.
ACCUMULATOR_MULTIPLIER = 0x9E3779B97F4A7C15
FIRST_VALUES = 8


# --- the documented constructions, written out independently of fedmask -----------------------


def spec_hkdf_sha256(secret: bytes, *, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256 and one 32-byte output block."""
    prk = hmac.new(salt or bytes(32), secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def spec_keystream(key: bytes, count: int) -> bytes:
    """AES-256-CTR under ``key``, counter block starting at zero."""
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(count))


def spec_public(scalar: bytes) -> bytes:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes(*raw)


def spec_x25519(scalar: bytes, peer_public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(scalar).exchange(X25519PublicKey.from_public_bytes(peer_public))


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


class SpecRandom:
    """The SeededRandom stream: the AES-256-CTR keystream under the seed, read front to back."""

    def __init__(self, seed: bytes) -> None:
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def random_bytes(self, count: int) -> bytes:
        return self._encryptor.update(bytes(count))

    def below(self, bound: int) -> int:
        """Rejection sampling: the top bit_length(bound) bits of ceil(bits/8) big-endian bytes."""
        nbits = bound.bit_length()
        nbytes = (nbits + 7) // 8
        while True:
            candidate = int.from_bytes(self.random_bytes(nbytes), "big") >> (nbytes * 8 - nbits)
            if candidate < bound:
                return candidate


def spec_values(raw: bytes, width: int, modulus_bits: int) -> list[int]:
    """Little-endian words of ``width`` bits, reduced mod 2^modulus_bits."""
    step = width // 8
    return [int.from_bytes(raw[i : i + step], "little") % (1 << modulus_bits) for i in range(0, len(raw), step)]


def spec_params_digest(dimension: int, modulus_bits: int, threshold: int, mode: str, neighbours: int | None) -> bytes:
    packed = (
        dimension.to_bytes(8, "big")
        + modulus_bits.to_bytes(1, "big")
        + u32(threshold)
        + (neighbours or 0).to_bytes(8, "big")
        + mode.encode().ljust(16, b"\0")
    )
    return hashlib.sha256(b"fedmask/secagg/v1/params" + packed).digest()


def spec_cycle_order(ids: Sequence[int], seed: bytes) -> list[int]:
    """The i-th smallest id takes the i-th little-endian 64-bit keystream word; sort by (word, id)."""
    members = sorted(ids)
    key = hashlib.sha256(b"fedmask/secagg/v1/cycle-order" + seed).digest()
    words = spec_values(spec_keystream(key, 8 * len(members)), 64, 64)
    return [u for _, u in sorted(zip(words, members, strict=True))]


def spec_harary_neighbours(ring: Sequence[int], degree: int) -> dict[int, list[int]]:
    """Each id linked to its degree//2 nearest on either side of the ring, plus the opposite one
    when the degree is odd."""
    count = len(ring)
    linked = {}
    for position, u in enumerate(ring):
        steps = [s for s in range(-(degree // 2), degree // 2 + 1) if s]
        if degree % 2:
            steps.append(count // 2)
        linked[u] = sorted({ring[(position + s) % count] for s in steps})
    return linked


def spec_hadamard(values: list[float]) -> list[float]:
    """Butterflies (a, b) -> (a + b, a - b) over spans 2, 4, ..., n: the float operations of the
    fast transform, in the same order, so the result is bit-identical."""
    out = list(values)
    half = 1
    while half < len(out):
        for start in range(0, len(out), 2 * half):
            for i in range(start, start + half):
                out[i], out[i + half] = out[i] + out[i + half], out[i] - out[i + half]
        half *= 2
    return out


def spec_signs(seed: bytes, count: int) -> list[int]:
    """One keystream bit per sign, least significant bit of each byte first; bit 1 -> -1."""
    stream = spec_keystream(seed, 4 * ((count + 31) // 32))
    return [1 - 2 * ((stream[j // 8] >> (j % 8)) & 1) for j in range(count)]


def spec_envelope_key(
    ephemeral_scalar: bytes, holder_public: bytes, session_id: bytes, sender: int, receiver: int
) -> tuple[bytes, bytes]:
    """HKDF-SHA256(X25519(e, c_receiver), salt=session_id, info=label || u32be(sender) || u32be(receiver) ||
    e's public key); returns (shared secret, key)."""
    shared_secret = spec_x25519(ephemeral_scalar, holder_public)
    info = b"fedmask/secagg/v1/share-envelope-key" + u32(sender) + u32(receiver) + spec_public(ephemeral_scalar)
    return shared_secret, spec_hkdf_sha256(shared_secret, salt=session_id, info=info)


def spec_self_mask_commitment(secret: bytes, session_id: bytes, owner: int) -> bytes:
    return hashlib.sha256(b"fedmask/secagg/v1/self-mask-commitment" + session_id + u32(owner) + secret).digest()


def spec_share_commitment(share: bytes, session_id: bytes, owner: int, holder: int, secret: str) -> bytes:
    tag = {"b": b"b", "s": b"s"}[secret]
    label = b"fedmask/secagg/v1/share-commitment"
    return hashlib.sha256(label + tag + session_id + u32(owner) + u32(holder) + share).digest()


def spec_envelope_payload(
    session_id: bytes,
    sender: int,
    recipient: int,
    ephemeral_key: bytes,
    ciphertext: bytes,
    commitments: tuple[bytes, bytes, bytes],
) -> bytes:
    """label || session_id || u32be(sender) || u32be(recipient) || ephemeral key || u32be(len(ciphertext)) ||
    ciphertext || commitment to the share of b || commitment to the share of s || commitment to b."""
    head = b"fedmask/secagg/v1/share-envelope" + session_id + u32(sender) + u32(recipient) + ephemeral_key
    return head + u32(len(ciphertext)) + ciphertext + b"".join(commitments)


# --- helpers -----------------------------------------------------------------------------------


def agree(what: str, actual: object, expected: object) -> object:
    """Return ``actual`` if it matches the reimplementation; stop the generator otherwise."""
    if actual != expected:
        sys.exit(f"{what}: fedmask gives {actual!r}, the documented construction gives {expected!r}")
    return actual


def word_hex(values: Sequence[int], width: int) -> list[str]:
    return [format(int(v), f"0{width // 4}x") for v in values]


def array_sha256(values: Sequence[int], width: int) -> str:
    return hashlib.sha256(b"".join(int(v).to_bytes(width // 8, "little") for v in values)).hexdigest()


def roster_key(participant: int, purpose: str) -> bytes:
    return spec_public(hashlib.sha256(f"fedmask vectors: participant {participant} {purpose} key".encode()).digest())


def x25519_private(scalar: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(scalar)


# --- one builder per file: (derivation, description, cases) --------------------------------------


def pairwise_mask_seed_vectors():
    pairs = [
        ("ascending", "ascending-high", "hashed"),
        ("ascending", "ascending-high", "zero"),
        ("repeated-77", "all-ff", "hashed"),
        ("ascending", "descending", "all-ff"),
    ]
    cases = []
    for mine, peer, session in pairs:
        session_id = SESSION_IDS[session]
        mine_public, peer_public = spec_public(SCALARS[mine]), spec_public(SCALARS[peer])
        expected = spec_hkdf_sha256(
            spec_x25519(SCALARS[mine], peer_public), salt=session_id, info=b"fedmask/secagg/v1/pairwise-mask"
        )
        seed = agree(
            "pairwise_mask_seed",
            keys.pairwise_mask_seed(SCALARS[mine], peer_public, session_id),
            expected,
        )
        agree(
            "pairwise_mask_seed symmetry",
            keys.pairwise_mask_seed(SCALARS[peer], mine_public, session_id),
            seed,
        )
        cases.append(
            {
                "name": f"{mine}-{peer}-session-{session}",
                "private_key": SCALARS[mine].hex(),
                "public_key": mine_public.hex(),
                "peer_private_key": SCALARS[peer].hex(),
                "peer_public_key": peer_public.hex(),
                "session_id": session_id.hex(),
                "seed": seed.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.pairwise_mask_seed(private_key, peer_public, session_id)",
        "s_uv = HKDF-SHA256(X25519(private_key, peer_public), salt=session_id, "
        "info='fedmask/secagg/v1/pairwise-mask'); the same from either side",
        cases,
    )


def self_mask_seed_vectors():
    cases = []
    for secret_name, session in [("zero", "hashed"), ("ascending", "hashed"), ("all-ff", "zero"), ("hashed", "all-ff")]:
        secret, session_id = SECRETS[secret_name], SESSION_IDS[session]
        expected = spec_hkdf_sha256(secret, salt=session_id, info=b"fedmask/secagg/v1/self-mask")
        seed = agree("self_mask_seed", keys.self_mask_seed(secret, session_id), expected)
        cases.append(
            {
                "name": f"secret-{secret_name}-session-{session}",
                "self_mask_secret": secret.hex(),
                "session_id": session_id.hex(),
                "seed": seed.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.self_mask_seed(self_mask_secret, session_id)",
        "HKDF-SHA256(self_mask_secret, salt=session_id, info='fedmask/secagg/v1/self-mask')",
        cases,
    )


def encrypt_share_vectors():
    share_plaintext = keys.SHARE_PLAINTEXT.pack(3, 7, shamir.encode_share(12345), shamir.encode_share(FIELD_PRIME - 1))
    plaintexts = {
        "share-plaintext": share_plaintext,
        "empty": b"",
        "one-byte": b"\x00",
        "long": bytes(range(256)) * 4,
    }
    cases = []
    for (plaintext_name, sender, receiver), rng_seed in zip(
        [("share-plaintext", 3, 7), ("empty", 1, 2), ("one-byte", MAX_ID, 1), ("long", 1, MAX_ID)],
        [RNG_SEED, SEEDS["zero"], SEEDS["ascending"], SEEDS["hashed"]],
        strict=True,
    ):
        plaintext, session_id = plaintexts[plaintext_name], SESSION_IDS["hashed"]
        key = hashlib.sha256(f"fedmask vectors: share key {sender} to {receiver}".encode()).digest()
        nonce = SpecRandom(rng_seed).random_bytes(12)
        aad = session_id + u32(sender) + u32(receiver)
        expected = nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
        ciphertext = agree(
            "encrypt_share",
            keys.encrypt_share(
                key,
                plaintext,
                session_id=session_id,
                sender=sender,
                receiver=receiver,
                rng=rand.SeededRandom(rng_seed),
            ),
            expected,
        )
        agree(
            "decrypt_share",
            keys.decrypt_share(key, ciphertext, session_id=session_id, sender=sender, receiver=receiver),
            plaintext,
        )
        cases.append(
            {
                "name": f"{plaintext_name}-{sender}-to-{receiver}",
                "key": key.hex(),
                "plaintext": plaintext.hex(),
                "session_id": session_id.hex(),
                "sender": sender,
                "receiver": receiver,
                "rng_seed": rng_seed.hex(),
                "ciphertext": ciphertext.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.encrypt_share(key, plaintext, session_id=, sender=, receiver=, "
        "rng=SeededRandom(rng_seed)) and decrypt_share",
        "nonce (first 12 bytes of rng) || AES-256-GCM(key, nonce, plaintext, aad=session_id || u32be(sender) || "
        "u32be(receiver)); decrypt_share must open it; key = SHA-256('fedmask vectors: share key <sender> to "
        "<receiver>') (share_envelope pins encryption under a real envelope key)",
        cases,
    )


def envelope_key_vectors():
    cases = []
    for ephemeral, holder, sender, receiver, session in [
        ("descending", "ascending-high", 1, 2, "hashed"),
        ("descending", "ascending-high", 2, 1, "hashed"),
        ("repeated-77", "ascending-high", 1, 2, "hashed"),
        ("all-ff", "ascending", 1, MAX_ID, "zero"),
        ("ascending", "repeated-77", MAX_ID, 1, "all-ff"),
    ]:
        session_id = SESSION_IDS[session]
        ephemeral_public, holder_public = spec_public(SCALARS[ephemeral]), spec_public(SCALARS[holder])
        expected_secret, expected_key = spec_envelope_key(
            SCALARS[ephemeral], holder_public, session_id, sender, receiver
        )
        agree("X25519 from the holder's side", spec_x25519(SCALARS[holder], ephemeral_public), expected_secret)
        shared_secret = agree(
            "keys.exchange(ephemeral, holder)",
            keys.exchange(SCALARS[ephemeral], holder_public),
            expected_secret,
        )
        agree(
            "keys.exchange(holder, ephemeral)",
            keys.exchange(SCALARS[holder], ephemeral_public),
            expected_secret,
        )
        key = agree(
            "envelope_key",
            keys.envelope_key(
                shared_secret, session_id=session_id, sender=sender, receiver=receiver, ephemeral_key=ephemeral_public
            ),
            expected_key,
        )
        cases.append(
            {
                "name": f"ephemeral-{ephemeral}-holder-{holder}-{sender}-to-{receiver}-session-{session}",
                "ephemeral_private_key": SCALARS[ephemeral].hex(),
                "ephemeral_public_key": ephemeral_public.hex(),
                "holder_private_key": SCALARS[holder].hex(),
                "holder_public_key": holder_public.hex(),
                "shared_secret": shared_secret.hex(),
                "session_id": session_id.hex(),
                "sender": sender,
                "receiver": receiver,
                "key": key.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.envelope_key(shared_secret, session_id=, sender=, receiver=, ephemeral_key=)",
        "HKDF-SHA256(X25519(e, c_receiver), salt=session_id, info='fedmask/secagg/v1/share-envelope-key' || "
        "u32be(sender) || u32be(receiver) || ephemeral public key); shared_secret = X25519(ephemeral_private_key, "
        "holder_public_key) = X25519(holder_private_key, ephemeral_public_key), both through keys.exchange",
        cases,
    )


ENVELOPE_CASES = {
    # name: (sender, holder, ephemeral scalar, holder's encryption scalar, session, b share, s share, nonce seed,
    #        self-mask secret)
    "1-to-2": (1, 2, "descending", "ascending-high", "hashed", 12345, FIELD_PRIME - 2, RNG_SEED, "hashed"),
    "max-id-to-1": (MAX_ID, 1, "repeated-77", "ascending", "zero", FIELD_PRIME - 1, 0, SEEDS["ascending"], "all-ff"),
    "1-to-max-id": (1, MAX_ID, "all-ff", "descending", "all-ff", 1 << 256, 1, SEEDS["zero"], "zero"),
}


def share_envelope_vectors():
    cases = []
    for name, case in ENVELOPE_CASES.items():
        sender, holder, ephemeral, encryption, session, b_share, s_share, rng_seed, secret_name = case
        session_id, secret = SESSION_IDS[session], SECRETS[secret_name]
        ephemeral_public, holder_public = spec_public(SCALARS[ephemeral]), spec_public(SCALARS[encryption])
        # The sender's side, call for call as the client seals an envelope.
        ephemeral_pair = keys.AgreementKeyPair.from_private_bytes(SCALARS[ephemeral])
        agree("AgreementKeyPair.public_bytes", ephemeral_pair.public_bytes, ephemeral_public)
        spec_secret, spec_key = spec_envelope_key(SCALARS[ephemeral], holder_public, session_id, sender, holder)
        shared_secret = agree("keys.exchange", keys.exchange(ephemeral_pair.private_bytes, holder_public), spec_secret)
        route = {"session_id": session_id, "sender": sender, "receiver": holder}
        key = agree("envelope_key", keys.envelope_key(shared_secret, ephemeral_key=ephemeral_public, **route), spec_key)
        b_bytes, s_bytes = b_share.to_bytes(33, "big"), s_share.to_bytes(33, "big")
        agree("encode_share", (shamir.encode_share(b_share), shamir.encode_share(s_share)), (b_bytes, s_bytes))
        plaintext = agree(
            "SHARE_PLAINTEXT",
            keys.SHARE_PLAINTEXT.pack(sender, holder, b_bytes, s_bytes),
            u32(sender) + u32(holder) + b_bytes + s_bytes,
        )
        nonce = SpecRandom(rng_seed).random_bytes(12)
        ciphertext = agree(
            "encrypt_share",
            keys.encrypt_share(key, plaintext, rng=rand.SeededRandom(rng_seed), **route),
            nonce + AESGCM(spec_key).encrypt(nonce, plaintext, session_id + u32(sender) + u32(holder)),
        )
        ids = {"session_id": session_id, "owner": sender, "holder": holder}
        b_commitment = agree(
            "share_commitment b",
            keys.share_commitment(b_bytes, secret="b", **ids),
            spec_share_commitment(b_bytes, session_id, sender, holder, "b"),
        )
        s_commitment = agree(
            "share_commitment s",
            keys.share_commitment(s_bytes, secret="s", **ids),
            spec_share_commitment(s_bytes, session_id, sender, holder, "s"),
        )
        self_commitment = agree(
            "self_mask_commitment",
            keys.self_mask_commitment(secret, session_id=session_id, owner=sender),
            spec_self_mask_commitment(secret, session_id, sender),
        )
        payload = agree(
            "envelope_payload",
            keys.envelope_payload(
                session_id,
                sender,
                holder,
                ephemeral_key=ephemeral_public,
                ciphertext=ciphertext,
                self_mask_share_commitment=b_commitment,
                key_share_commitment=s_commitment,
                self_mask_commitment=self_commitment,
            ),
            spec_envelope_payload(
                session_id, sender, holder, ephemeral_public, ciphertext, (b_commitment, s_commitment, self_commitment)
            ),
        )
        # The holder's side: the same secret from its own private key, and the envelope opens to the plaintext.
        holder_secret = agree(
            "holder's keys.exchange", keys.exchange(SCALARS[encryption], ephemeral_public), spec_secret
        )
        holder_key = agree(
            "holder's envelope_key", keys.envelope_key(holder_secret, ephemeral_key=ephemeral_public, **route), spec_key
        )
        opened = agree("decrypt_share", keys.decrypt_share(holder_key, ciphertext, **route), plaintext)
        agree("SHARE_PLAINTEXT.unpack", keys.SHARE_PLAINTEXT.unpack(opened), (sender, holder, b_bytes, s_bytes))
        cases.append(
            {
                "name": name,
                "session_id": session_id.hex(),
                "sender": sender,
                "holder": holder,
                "ephemeral_private_key": SCALARS[ephemeral].hex(),
                "ephemeral_public_key": ephemeral_public.hex(),
                "holder_private_key": SCALARS[encryption].hex(),
                "holder_encryption_key": holder_public.hex(),
                "shared_secret": shared_secret.hex(),
                "envelope_key": key.hex(),
                "b_share": format(b_share, "x"),
                "s_share": format(s_share, "x"),
                "plaintext": plaintext.hex(),
                "rng_seed": rng_seed.hex(),
                "ciphertext": ciphertext.hex(),
                "self_mask_share_commitment": b_commitment.hex(),
                "key_share_commitment": s_commitment.hex(),
                "self_mask_secret": secret.hex(),
                "self_mask_commitment": self_commitment.hex(),
                "payload": payload.hex(),
            }
        )
    return (
        "one share envelope end to end: keys.exchange, keys.envelope_key, keys.SHARE_PLAINTEXT, "
        "keys.encrypt_share (rng=SeededRandom(rng_seed)) and decrypt_share, keys.share_commitment (b and s), "
        "keys.self_mask_commitment and keys.envelope_payload",
        "sender seals for holder: shared_secret = X25519(ephemeral, holder_encryption_key) (the holder gets the same "
        "from X25519(holder_private_key, ephemeral_public_key)); envelope_key as in envelope_key.json; plaintext = "
        "u32be(sender) || u32be(holder) || b_share (33 bytes) || s_share (33 bytes); ciphertext = nonce (first 12 "
        "bytes of rng) || AES-256-GCM(envelope_key, nonce, plaintext, aad=session_id || u32be(sender) || "
        "u32be(holder)); the two share commitments with owner = sender; self_mask_commitment of self_mask_secret "
        "with owner = sender; payload = envelope_payload of all of it (the bytes the sender signs)",
        cases,
    )


def self_mask_commitment_vectors():
    cases = []
    for secret_name, session, owner in [
        ("zero", "hashed", 1),
        ("hashed", "hashed", 1),
        ("hashed", "hashed", 2),
        ("ascending", "zero", MAX_ID),
        ("all-ff", "all-ff", 7),
    ]:
        secret, session_id = SECRETS[secret_name], SESSION_IDS[session]
        commitment = agree(
            "self_mask_commitment",
            keys.self_mask_commitment(secret, session_id=session_id, owner=owner),
            spec_self_mask_commitment(secret, session_id, owner),
        )
        cases.append(
            {
                "name": f"secret-{secret_name}-session-{session}-owner-{owner}",
                "self_mask_secret": secret.hex(),
                "session_id": session_id.hex(),
                "owner": owner,
                "commitment": commitment.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.self_mask_commitment(self_mask_secret, session_id=, owner=)",
        "SHA-256('fedmask/secagg/v1/self-mask-commitment' || session_id || u32be(owner) || self_mask_secret)",
        cases,
    )


def share_commitment_vectors():
    cases = []
    for name, secret, value, owner, holder, session in [
        ("b-1-held-by-2", "b", 12345, 1, 2, "hashed"),
        ("s-1-held-by-2", "s", 12345, 1, 2, "hashed"),
        ("b-2-held-by-1", "b", 12345, 2, 1, "hashed"),
        ("s-largest-field-element", "s", FIELD_PRIME - 1, MAX_ID, 1, "zero"),
        ("b-zero-share", "b", 0, 1, MAX_ID, "all-ff"),
        ("s-two-to-256", "s", 1 << 256, 3, 9, "hashed"),
    ]:
        session_id = SESSION_IDS[session]
        share = agree("encode_share", shamir.encode_share(value), value.to_bytes(33, "big"))
        commitment = agree(
            "share_commitment",
            keys.share_commitment(share, session_id=session_id, owner=owner, holder=holder, secret=secret),
            spec_share_commitment(share, session_id, owner, holder, secret),
        )
        cases.append(
            {
                "name": name,
                "share": share.hex(),
                "session_id": session_id.hex(),
                "owner": owner,
                "holder": holder,
                "secret": secret,
                "commitment": commitment.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.share_commitment(share, session_id=, owner=, holder=, secret=)",
        "SHA-256('fedmask/secagg/v1/share-commitment' || tag || session_id || u32be(owner) || u32be(holder) || "
        "share), tag = 'b' (share of the self-mask secret) or 's' (share of the masking private key); share is "
        "the 33-byte encode_share form",
        cases,
    )


def fixed_commitment(what: str) -> bytes:
    return hashlib.sha256(f"fedmask vectors: commitment {what}".encode()).digest()


def envelope_payload_vectors():
    ephemeral_key = spec_public(SCALARS["descending"])
    cases = []
    for name, sender, recipient, session, ciphertext in [
        ("share-envelope-size", 1, 2, "hashed", bytes(range(12 + keys.SHARE_PLAINTEXT.size + 16))),
        ("empty-ciphertext", 2, 1, "hashed", b""),
        ("max-sender", MAX_ID, 1, "zero", b"\xff"),
        ("long-ciphertext", 1, MAX_ID, "all-ff", bytes(range(256)) * 2),
    ]:
        session_id = SESSION_IDS[session]
        b_commitment, s_commitment, self_commitment = (fixed_commitment(w) for w in ("b", "s", "self"))
        payload = agree(
            "envelope_payload",
            keys.envelope_payload(
                session_id,
                sender,
                recipient,
                ephemeral_key=ephemeral_key,
                ciphertext=ciphertext,
                self_mask_share_commitment=b_commitment,
                key_share_commitment=s_commitment,
                self_mask_commitment=self_commitment,
            ),
            spec_envelope_payload(
                session_id, sender, recipient, ephemeral_key, ciphertext, (b_commitment, s_commitment, self_commitment)
            ),
        )
        cases.append(
            {
                "name": name,
                "session_id": session_id.hex(),
                "sender": sender,
                "recipient": recipient,
                "ephemeral_key": ephemeral_key.hex(),
                "ciphertext": ciphertext.hex(),
                "self_mask_share_commitment": b_commitment.hex(),
                "key_share_commitment": s_commitment.hex(),
                "self_mask_commitment": self_commitment.hex(),
                "payload": payload.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.envelope_payload(session_id, sender, recipient, ephemeral_key=, ciphertext=, "
        "self_mask_share_commitment=, key_share_commitment=, self_mask_commitment=)",
        "'fedmask/secagg/v1/share-envelope' || session_id || u32be(sender) || u32be(recipient) || ephemeral_key || "
        "u32be(len(ciphertext)) || ciphertext || self_mask_share_commitment || key_share_commitment || "
        "self_mask_commitment (the bytes the sender of an envelope signs); the commitments are "
        "SHA-256('fedmask vectors: commitment <b|s|self>')",
        cases,
    )


def complaint_payload_vectors():
    cases = []
    for kind, complainer, accused, session in [
        ("bad-envelope", 2, 1, "hashed"),
        ("bad-signature", 2, 1, "hashed"),
        ("bad-envelope", 1, MAX_ID, "zero"),
        ("bad-signature", MAX_ID, 3, "all-ff"),
    ]:
        session_id = SESSION_IDS[session]
        value = ComplaintKind(kind).value
        expected = (
            b"fedmask/secagg/v1/share-complaint"
            + session_id
            + u32(complainer)
            + u32(accused)
            + u32(len(value.encode()))
            + value.encode()
        )
        payload = agree("complaint_payload", keys.complaint_payload(session_id, complainer, accused, value), expected)
        cases.append(
            {
                "name": f"{kind}-{complainer}-accuses-{accused}-session-{session}",
                "session_id": session_id.hex(),
                "complainer": complainer,
                "accused": accused,
                "kind": kind,
                "payload": payload.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.complaint_payload(session_id, complainer, accused, kind)",
        "'fedmask/secagg/v1/share-complaint' || session_id || u32be(complainer) || u32be(accused) || "
        "u32be(len(kind)) || kind (ASCII; a ComplaintKind value): the bytes a holder signs to complain",
        cases,
    )


def advertisement_payload_vectors():
    encryption_key, masking_key = spec_public(SCALARS["ascending"]), spec_public(SCALARS["ascending-high"])
    cases = []
    for round_name, sender in [("short", 1), ("empty", 1), ("long", MAX_ID), ("short", MAX_ID)]:
        round_id = ROUND_IDS[round_name]
        expected = (
            b"fedmask/secagg/v1/advertise-keys"
            + u32(len(round_id))
            + round_id
            + u32(sender)
            + encryption_key
            + masking_key
        )
        payload = agree(
            "advertisement_payload", keys.advertisement_payload(round_id, sender, encryption_key, masking_key), expected
        )
        cases.append(
            {
                "name": f"round-{round_name}-sender-{sender}",
                "round_id": round_id.hex(),
                "sender": sender,
                "encryption_key": encryption_key.hex(),
                "masking_key": masking_key.hex(),
                "payload": payload.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.advertisement_payload(round_id, sender, encryption_key, masking_key)",
        "'fedmask/secagg/v1/advertise-keys' || u32be(len(round_id)) || round_id || u32be(sender) || "
        "encryption_key || masking_key (the bytes an identity key signs)",
        cases,
    )


def consistency_payload_vectors():
    cases = []
    for name, survivors in [
        ("no-survivors", ()),
        ("one", (1,)),
        ("ascending", (1, 2, 3)),
        ("max-id", (1, 2, MAX_ID)),
        ("order-kept", (9, 3, 5)),
    ]:
        session_id = SESSION_IDS["hashed"]
        expected = (
            b"fedmask/secagg/v1/consistency-check" + session_id + u32(len(survivors)) + b"".join(map(u32, survivors))
        )
        payload = agree("consistency_payload", keys.consistency_payload(session_id, survivors), expected)
        cases.append(
            {"name": name, "session_id": session_id.hex(), "survivors": list(survivors), "payload": payload.hex()}
        )
    return (
        "fedmask.secagg.keys.consistency_payload(session_id, survivors)",
        "'fedmask/secagg/v1/consistency-check' || session_id || u32be(len(survivors)) || u32be(each survivor, "
        "in the order given)",
        cases,
    )


PARAMS_CASES = {
    "smallest": (1, 1, 2, "semi-honest", None),
    "complete-b32": (100000, 32, 34, "semi-honest", None),
    "harary-b33-malicious": (1000, 33, 5, "malicious", 8),
    "largest": (1 << 31, 64, MAX_ID, "malicious", 286),
}


def params_digest_vectors():
    cases = []
    for name, (dimension, modulus_bits, threshold, mode, neighbours) in PARAMS_CASES.items():
        params = ProtocolParams(dimension, modulus_bits, threshold, SecurityMode(mode), neighbours)
        expected = spec_params_digest(dimension, modulus_bits, threshold, mode, neighbours)
        digest = agree("ProtocolParams.digest", params.digest(), expected)
        cases.append(
            {
                "name": name,
                "dimension": dimension,
                "modulus_bits": modulus_bits,
                "threshold": threshold,
                "mode": mode,
                "neighbours": neighbours,
                "digest": digest.hex(),
            }
        )
    return (
        "fedmask.secagg.params.ProtocolParams.digest()",
        "SHA-256('fedmask/secagg/v1/params' || u64be(dimension) || u8(modulus_bits) || u32be(threshold) || "
        "u64be(neighbours or 0) || mode value NUL-padded to 16 bytes)",
        cases,
    )


SESSION_CASES = {
    # name: (round id, (dimension, modulus_bits, threshold, mode, neighbours), roster ids in the order given)
    "two-complete": ("short", (100000, 32, 2, "semi-honest", None), (1, 2)),
    "unsorted-roster-empty-round": ("empty", (1, 1, 2, "malicious", None), (MAX_ID, 1, 3)),
    "harary-4-of-8-long-round": ("long", (1000, 33, 3, "malicious", 4), tuple(range(1, 9))),
    "harary-3-of-8": ("short", (1 << 20, 64, 3, "semi-honest", 3), (8, 6, 4, 2, 1, 3, 5, MAX_ID)),
}


def session_inputs(name: str) -> tuple[bytes, ProtocolParams, tuple[AdvertiseKeys, ...]]:
    round_name, (dimension, modulus_bits, threshold, mode, neighbours), ids = SESSION_CASES[name]
    round_id = ROUND_IDS[round_name]
    params = ProtocolParams(dimension, modulus_bits, threshold, SecurityMode(mode), neighbours)
    roster = tuple(AdvertiseKeys(u, round_id, roster_key(u, "encryption"), roster_key(u, "masking")) for u in ids)
    return round_id, params, roster


def session_id_vectors():
    cases = []
    for name in SESSION_CASES:
        round_id, params, roster = session_inputs(name)
        params.validate(len(roster))
        mode, degree = params.mode.value, params.neighbours
        digest = spec_params_digest(params.dimension, params.modulus_bits, params.threshold, mode, degree)
        expected = hashlib.sha256(b"fedmask/secagg/v1/session" + u32(len(round_id)) + round_id + digest)
        for ad in sorted(roster, key=lambda a: a.sender):
            expected.update(u32(ad.sender) + ad.encryption_key + ad.masking_key)
        session_id = agree("compute_session_id", compute_session_id(round_id, params, roster), expected.digest())
        case = {
            "name": name,
            "round_id": round_id.hex(),
            "params": {
                "dimension": params.dimension,
                "modulus_bits": params.modulus_bits,
                "threshold": params.threshold,
                "mode": mode,
                "neighbours": degree,
            },
            "roster": [
                {"sender": ad.sender, "encryption_key": ad.encryption_key.hex(), "masking_key": ad.masking_key.hex()}
                for ad in roster
            ],
            "session_id": session_id.hex(),
        }
        if degree is not None:
            # End to end: the graph Session.from_roster builds from this session id.
            ids = sorted(ad.sender for ad in roster)
            spec = spec_harary_neighbours(spec_cycle_order(ids, session_id), degree)
            built = Session.from_roster(round_id, params, roster)
            case["neighbours"] = {
                str(u): agree("Session.from_roster", sorted(built.neighbours(u)), spec[u]) for u in ids
            }
        cases.append(case)
    return (
        "fedmask.secagg.session.compute_session_id(round_id, params, roster) and, for SecAgg+ params, "
        "Session.from_roster(...).neighbours",
        "SHA-256('fedmask/secagg/v1/session' || u32be(len(round_id)) || round_id || params.digest() || "
        "for each advertisement by ascending sender: u32be(sender) || encryption_key || masking_key); roster keys "
        "are the X25519 public keys of SHA-256('fedmask vectors: participant <id> <encryption|masking> key')",
        cases,
    )


def harary_session_seed() -> bytes:
    return compute_session_id(*session_inputs("harary-4-of-8-long-round"))


def cycle_order_vectors():
    cases = []
    for name, ids, seed in [
        ("five-session-id", (1, 2, 3, 4, 5), harary_session_seed()),
        ("sparse-ids-zero-seed", (MAX_ID, 1000, 10, 2, 1), SEEDS["zero"]),
        ("single-id", (MAX_ID,), SEEDS["hashed"]),
        ("one-byte-seed", tuple(range(1, 41)), b"\x00"),
        ("long-seed", (1, 2, 3, 5, 8, 13, 21, 34), bytes(range(256))),
    ]:
        order = agree("cycle_order", list(graph.cycle_order(ids, seed)), spec_cycle_order(ids, seed))
        cases.append({"name": name, "ids": list(ids), "seed": seed.hex(), "order": order})
    return (
        "fedmask.secagg.graph.cycle_order(ids, seed)",
        "key = SHA-256('fedmask/secagg/v1/cycle-order' || seed); the i-th smallest id takes the i-th "
        "little-endian 64-bit word of AES-256-CTR(key, counter 0); ids sorted by (word, id)",
        cases,
    )


def harary_graph_vectors():
    seed = harary_session_seed()
    cases = []
    for name, ids, degree in [
        ("n7-k2", tuple(range(1, 8)), 2),
        ("n7-k4", tuple(range(1, 8)), 4),
        ("n8-k3", tuple(range(1, 9)), 3),
        ("n8-k5-max-id", (1, 2, 3, 4, 5, 6, 7, MAX_ID), 5),
        ("n7-k6-complete", tuple(range(1, 8)), 6),
    ]:
        built = graph.harary_graph(ids, degree, seed)
        if degree >= len(ids) - 1:
            expected = {u: sorted(set(ids) - {u}) for u in ids}
        else:
            expected = spec_harary_neighbours(spec_cycle_order(ids, seed), degree)
        neighbours = {str(u): agree("harary_graph", sorted(built.neighbours(u)), expected[u]) for u in sorted(ids)}
        cases.append({"name": name, "ids": list(ids), "degree": degree, "seed": seed.hex(), "neighbours": neighbours})
    return (
        "fedmask.secagg.graph.harary_graph(ids, degree, seed).neighbours(u)",
        "H_{degree,n} over cycle_order(ids, seed): the degree//2 nearest on either side, plus the opposite id "
        "when the degree is odd; degree >= n-1 gives the complete graph; seed is a session id",
        cases,
    )


def prg_expand_vectors():
    cases = []
    for seed_name, modulus_bits, dimension in [
        ("zero", 32, 8),
        ("zero", 64, 8),
        ("ascending", 1, 1000),
        ("ascending", 8, 3),
        ("ascending", 31, 7),
        ("hashed", 32, 16389),
        ("hashed", 33, 1001),
        ("hashed", 63, 9),
        ("hashed", 64, 16389),
        ("all-ff", 32, 1),
    ]:
        seed = SEEDS[seed_name]
        width = 32 if modulus_bits <= 32 else 64
        spec = spec_values(spec_keystream(seed, dimension * width // 8), width, modulus_bits)
        values = agree("prg.expand", [int(v) for v in prg.expand(seed, dimension, modulus_bits)], spec)
        cases.append(
            {
                "name": f"seed-{seed_name}-b{modulus_bits}-d{dimension}",
                "seed": seed.hex(),
                "dimension": dimension,
                "modulus_bits": modulus_bits,
                "first_values": word_hex(values[:FIRST_VALUES], width),
                "sha256": array_sha256(values, width),
            }
        )
    return (
        "fedmask.secagg.prg.expand(seed, dimension, modulus_bits)",
        "AES-256-CTR(seed, counter 0) keystream read as little-endian uint32 (b <= 32) or uint64 words, each "
        "reduced mod 2^b; first_values are the first words, sha256 is over the whole array's little-endian bytes",
        cases,
    )


def prg_add_masks_vectors():
    cases = []
    for name, width, dimension, add, subtract in [
        ("u32-one-seed", 32, 10, ["ascending"], []),
        ("u32-across-chunks", 32, 16389, ["ascending", "hashed"], ["all-ff"]),
        ("u64-across-chunks", 64, 16389, ["hashed"], ["ascending", "zero"]),
        ("u64-cancel", 64, 5, ["hashed"], ["hashed"]),
        ("u32-no-seeds", 32, 3, [], []),
    ]:
        modulus = 1 << width
        initial = [(i * ACCUMULATOR_MULTIPLIER) % modulus for i in range(dimension)]
        spec = list(initial)
        for seeds, sign in ((add, 1), (subtract, -1)):
            for seed_name in seeds:
                mask = spec_values(spec_keystream(SEEDS[seed_name], dimension * width // 8), width, width)
                spec = [(a + sign * m) % modulus for a, m in zip(spec, mask, strict=True)]
        accumulator = np.array(initial, dtype="<u4" if width == 32 else "<u8")
        prg.add_masks(accumulator, [SEEDS[s] for s in add], [SEEDS[s] for s in subtract])
        values = agree("prg.add_masks", [int(v) for v in accumulator], spec)
        cases.append(
            {
                "name": name,
                "width": width,
                "dimension": dimension,
                "initial_multiplier": format(ACCUMULATOR_MULTIPLIER, "x"),
                "add_seeds": [SEEDS[s].hex() for s in add],
                "subtract_seeds": [SEEDS[s].hex() for s in subtract],
                "first_values": word_hex(values[:FIRST_VALUES], width),
                "sha256": array_sha256(values, width),
            }
        )
    return (
        "fedmask.secagg.prg.add_masks(accumulator, add_seeds, subtract_seeds)",
        "accumulator (uint<width>, initial[i] = i * initial_multiplier mod 2^width) + sum expand(add) - "
        "sum expand(subtract) mod 2^width, in place; first_values and sha256 (little-endian bytes) of the result",
        cases,
    )


def share_plaintext_vectors():
    agree("client._SHARE_PLAINTEXT is keys.SHARE_PLAINTEXT", client._SHARE_PLAINTEXT is keys.SHARE_PLAINTEXT, True)
    cases = []
    for name, sender, recipient, b_share, s_share in [
        ("zero-shares", 1, 2, 0, 0),
        ("largest-values", 1, MAX_ID, FIELD_PRIME - 1, (1 << 256) - 1),
        ("max-sender", MAX_ID, 1, 12345, FIELD_PRIME - 2),
    ]:
        expected = u32(sender) + u32(recipient) + b_share.to_bytes(33, "big") + s_share.to_bytes(33, "big")
        packed = keys.SHARE_PLAINTEXT.pack(
            sender, recipient, shamir.encode_share(b_share), shamir.encode_share(s_share)
        )
        plaintext = agree("SHARE_PLAINTEXT", packed, expected)
        cases.append(
            {
                "name": name,
                "sender": sender,
                "recipient": recipient,
                "b_share": format(b_share, "x"),
                "s_share": format(s_share, "x"),
                "plaintext": plaintext.hex(),
            }
        )
    return (
        "fedmask.secagg.keys.SHARE_PLAINTEXT.pack(sender, recipient, encode_share(b), encode_share(s)) "
        "(fedmask.secagg.client._SHARE_PLAINTEXT is the same struct)",
        "u32be(sender) || u32be(recipient) || share of the self-mask secret b (33 bytes) || share of the "
        "masking private key (33 bytes): 74 bytes, the plaintext of every share envelope",
        cases,
    )


def shamir_encode_share_vectors():
    cases = []
    for name, value in [
        ("zero", 0),
        ("one", 1),
        ("byte-boundary", 256),
        ("largest-secret", (1 << 256) - 1),
        ("two-to-256", 1 << 256),
        ("largest-field-element", FIELD_PRIME - 1),
    ]:
        encoded = agree("shamir.encode_share", shamir.encode_share(value), value.to_bytes(33, "big"))
        cases.append({"name": name, "value": format(value, "x"), "encoded": encoded.hex()})
    return (
        "fedmask.secagg.shamir.encode_share(y) and decode_share",
        "y < p = 2^256 + 297 as 33 big-endian bytes",
        cases,
    )


def shamir_split_vectors():
    cases = []
    for name, secret_names, threshold, holders, rng_seed in [
        ("threshold-1", ["ascending"], 1, [1, 2], RNG_SEED),
        ("2-of-3", ["hashed"], 2, [1, 2, 3], RNG_SEED),
        ("client-layout-3-of-5", ["hashed", "ascending"], 3, [1, 2, 5, 9, MAX_ID], SEEDS["ascending"]),
        ("unsorted-holders", ["all-ff"], 2, [MAX_ID, 3, 1], SEEDS["zero"]),
        ("17-of-20-past-reduction-step", ["all-ff", "zero"], 17, list(range(1, 21)), SEEDS["hashed"]),
    ]:
        secrets = [SECRETS[s] for s in secret_names]
        spec_rng = SpecRandom(rng_seed)
        polynomials = [
            [int.from_bytes(secret, "big")] + [spec_rng.below(FIELD_PRIME) for _ in range(threshold - 1)]
            for secret in secrets
        ]
        spec = {
            x: tuple(sum(c * x**i for i, c in enumerate(poly)) % FIELD_PRIME for poly in polynomials) for x in holders
        }
        shares = agree(
            "shamir.split",
            shamir.split(secrets, threshold=threshold, holders=holders, rng=rand.SeededRandom(rng_seed)),
            spec,
        )
        ordered = sorted(holders)
        subsets = {tuple(ordered[:threshold]), tuple(ordered[-threshold:]), tuple(ordered)}
        reconstructions = []
        for subset in sorted(subsets):
            rebuilt = [
                shamir.reconstruct({x: shares[x][i] for x in subset}, threshold=threshold) for i in range(len(secrets))
            ]
            agree("shamir.reconstruct", rebuilt, secrets)
            reconstructions.append({"holders": list(subset), "secrets": [s.hex() for s in rebuilt]})
        cases.append(
            {
                "name": name,
                "secrets": [s.hex() for s in secrets],
                "threshold": threshold,
                "holders": holders,
                "rng_seed": rng_seed.hex(),
                "shares": {str(x): [shamir.encode_share(y).hex() for y in shares[x]] for x in holders},
                "reconstructions": reconstructions,
            }
        )
    return (
        "fedmask.secagg.shamir.split(secrets, threshold=, holders=, rng=SeededRandom(rng_seed)) and reconstruct",
        "per secret, coefficients a_1..a_{t-1} = random_below(rng, p) in order; share of holder x = "
        "secret + sum a_i x^i mod p (encoded with encode_share); each listed holder subset rebuilds the secrets",
        cases,
    )


def seeded_random_vectors():
    cases = []
    for name, seed_int, seed, reads in [
        ("zero-seed", None, SEEDS["zero"], [64]),
        ("reads-across-blocks", None, SEEDS["ascending"], [1, 15, 16, 17, 0, 31]),
        ("from-int-0", 0, None, [32]),
        ("from-int-7", 7, None, [32]),
        ("from-int-largest", (1 << 256) - 1, None, [16]),
    ]:
        actual_rng = rand.SeededRandom.from_int(seed_int) if seed is None else rand.SeededRandom(seed)
        spec_rng = SpecRandom(seed_int.to_bytes(32, "big") if seed is None else seed)
        outputs = [agree("SeededRandom", actual_rng.random_bytes(n), spec_rng.random_bytes(n)).hex() for n in reads]
        case = {"name": name, "seed": None if seed is None else seed.hex(), "seed_int": seed_int}
        cases.append(case | {"reads": reads, "outputs": outputs})
    # spawn(): the child is keyed by the next 32 bytes of the parent, which then reads on past them.
    parent, spec_parent = rand.SeededRandom(SEEDS["hashed"]), SpecRandom(SEEDS["hashed"])
    before = agree("SeededRandom", parent.random_bytes(5), spec_parent.random_bytes(5))
    child, spec_child = parent.spawn(), SpecRandom(spec_parent.random_bytes(32))
    child_output = agree("SeededRandom.spawn", child.random_bytes(32), spec_child.random_bytes(32))
    after = agree("SeededRandom after spawn", parent.random_bytes(16), spec_parent.random_bytes(16))
    cases.append(
        {
            "name": "spawn",
            "seed": SEEDS["hashed"].hex(),
            "seed_int": None,
            "reads": [5],
            "outputs": [before.hex()],
            "child_output": child_output.hex(),
            "parent_after_spawn": after.hex(),
        }
    )
    return (
        "fedmask.secagg.rand.SeededRandom(seed).random_bytes, SeededRandom.from_int, spawn",
        "the AES-256-CTR keystream under the 32-byte seed (counter 0), read front to back in the listed read sizes; "
        "from_int(n) uses n as 32 big-endian bytes; spawn() keys a child with the next 32 bytes",
        cases,
    )


def random_below_vectors():
    bounds = [1, 2, 3, 255, 256, 257, 1000, 1 << 32, (1 << 64) - 1, FIELD_PRIME]
    cases = []
    for seed_name in ["zero", "hashed"]:
        seed = SEEDS[seed_name]
        actual_rng, spec_rng = rand.SeededRandom(seed), SpecRandom(seed)
        values = [agree("random_below", rand.random_below(actual_rng, b), spec_rng.below(b)) for b in bounds]
        cases.append(
            {
                "name": f"seed-{seed_name}",
                "seed": seed.hex(),
                "bounds": [format(b, "x") for b in bounds],
                "values": [format(v, "x") for v in values],
                "next_bytes": agree("stream position", actual_rng.random_bytes(8), spec_rng.random_bytes(8)).hex(),
            }
        )
    return (
        "fedmask.secagg.rand.random_below(SeededRandom(seed), bound), one bound after another on one stream",
        "rejection sampling: read ceil(bits/8) big-endian bytes, keep the top bit_length(bound) bits, retry "
        "while >= bound; next_bytes pins how much of the stream was used",
        cases,
    )


def uniform_unit_floats_vectors():
    cases = []
    for seed_name, count in [("zero", 4), ("hashed", 9)]:
        seed = SEEDS[seed_name]
        raw = spec_values(SpecRandom(seed).random_bytes(8 * count), 64, 64)
        spec = [float(w >> 11) * (1.0 / (1 << 53)) for w in raw]
        actual = [float(v) for v in rand.uniform_unit_floats(rand.SeededRandom(seed), count)]
        values = agree("uniform_unit_floats", [v.hex() for v in actual], [v.hex() for v in spec])
        cases.append({"name": f"seed-{seed_name}", "seed": seed.hex(), "count": count, "values": values})
    return (
        "fedmask.secagg.rand.uniform_unit_floats(SeededRandom(seed), count)",
        "(little-endian uint64 word >> 11) * 2^-53 per value, as float.hex",
        cases,
    )


def rotation_seed_vectors():
    cases = []
    for name, round_id in [
        ("one-zero-byte", b"\x00"),
        ("short", ROUND_IDS["short"]),
        ("long", ROUND_IDS["long"]),
        ("thousand-bytes", b"a" * 1000),
    ]:
        expected = hashlib.sha256(b"fedmask/ddp/rotation/v1" + u32(len(round_id)) + round_id).digest()
        seed = agree("rotation_seed", rotation.rotation_seed(round_id), expected)
        cases.append({"name": name, "round_id": round_id.hex(), "seed": seed.hex()})
    return (
        "fedmask.ddp.rotation.rotation_seed(round_id)",
        "SHA-256('fedmask/ddp/rotation/v1' || u32be(len(round_id)) || round_id)",
        cases,
    )


def rotation_vectors():
    seed = rotation.rotation_seed(ROUND_IDS["short"])
    cases = []
    for name, vector in [
        ("dimension-1", [1.0]),
        ("dimension-3-padded-to-4", [1.0, -2.0, 0.5]),
        ("dimension-8-inexact", [0.1, -0.2, 0.3, 1e-3, -5.0, 2.5, 0.0, 7.75]),
        ("dimension-33-padded-to-64", [float(i) / 3.0 - 5.0 for i in range(33)]),
    ]:
        n = 1 << (len(vector) - 1).bit_length()
        signs = agree("random_signs", [int(s) for s in rotation.random_signs(seed, n)], spec_signs(seed, n))
        scale = 1.0 / math.sqrt(n)
        padded = [v * s for v, s in zip(vector + [0.0] * (n - len(vector)), signs, strict=True)]
        spec_rotated = [v * scale for v in spec_hadamard(padded)]
        rotated = [float(v) for v in rotation.rotate(np.array(vector), seed)]
        agree("rotate", [v.hex() for v in rotated], [v.hex() for v in spec_rotated])
        spec_unrotated = [v * s * scale for v, s in zip(spec_hadamard(rotated), signs, strict=True)][: len(vector)]
        unrotated = [float(v) for v in rotation.unrotate(np.array(rotated), seed, len(vector))]
        agree("unrotate", [v.hex() for v in unrotated], [v.hex() for v in spec_unrotated])
        cases.append(
            {
                "name": name,
                "seed": seed.hex(),
                "vector": [v.hex() for v in vector],
                "padded_dimension": n,
                "signs": signs,
                "rotated": [v.hex() for v in rotated],
                "unrotated": [v.hex() for v in unrotated],
            }
        )
    return (
        "fedmask.ddp.rotation.random_signs(seed, n), rotate(vector, seed) and unrotate(rotated, seed, dimension)",
        "signs: one bit of AES-256-CTR(seed) per sign (bit 1 -> -1), least significant bit first; rotate = "
        "H D x * (1/sqrt(n)) with x zero-padded to a power of two n; unrotate = D H y * (1/sqrt(n)), cut back; "
        "seed = rotation_seed('round-1'); floats as float.hex",
        cases,
    )


BUILDERS: dict[str, Callable[[], tuple[str, str, list[dict]]]] = {
    "pairwise_mask_seed": pairwise_mask_seed_vectors,
    "self_mask_seed": self_mask_seed_vectors,
    "envelope_key": envelope_key_vectors,
    "encrypt_share": encrypt_share_vectors,
    "share_envelope": share_envelope_vectors,
    "self_mask_commitment": self_mask_commitment_vectors,
    "share_commitment": share_commitment_vectors,
    "envelope_payload": envelope_payload_vectors,
    "complaint_payload": complaint_payload_vectors,
    "advertisement_payload": advertisement_payload_vectors,
    "consistency_payload": consistency_payload_vectors,
    "params_digest": params_digest_vectors,
    "session_id": session_id_vectors,
    "cycle_order": cycle_order_vectors,
    "harary_graph": harary_graph_vectors,
    "prg_expand": prg_expand_vectors,
    "prg_add_masks": prg_add_masks_vectors,
    "share_plaintext": share_plaintext_vectors,
    "shamir_encode_share": shamir_encode_share_vectors,
    "shamir_split": shamir_split_vectors,
    "seeded_random": seeded_random_vectors,
    "random_below": random_below_vectors,
    "uniform_unit_floats": uniform_unit_floats_vectors,
    "rotation_seed": rotation_seed_vectors,
    "rotation": rotation_vectors,
}


def to_json(value: object, indent: int = 0) -> str:
    """json.dumps with indent 2, except that lists of scalars stay on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}" if items else "{}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(f"{inner}{to_json(v, indent + 2)}" for v in value) + f"\n{pad}]"
    return json.dumps(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=VECTORS_DIR / f"v{PROTOCOL_VERSION}",
        help="where to write (default: the directory of the current protocol version); must not exist",
    )
    output_dir = parser.parse_args().output_dir
    if output_dir.exists():
        sys.exit(f"{output_dir} exists: published vectors are never regenerated (bump PROTOCOL_VERSION instead)")
    files = {}
    for name, build in BUILDERS.items():
        derivation, description, cases = build()
        names = [case["name"] for case in cases]
        if len(set(names)) != len(names):
            sys.exit(f"{name}: case names repeat")
        header = {"protocol_version": PROTOCOL_VERSION, "derivation": derivation, "description": description}
        files[name] = to_json(header | {"cases": cases}) + "\n"
    output_dir.mkdir(parents=True)
    for name, text in files.items():
        (output_dir / f"{name}.json").write_text(text)
    print(f"wrote {len(files)} vector files to {output_dir}")


if __name__ == "__main__":
    main()

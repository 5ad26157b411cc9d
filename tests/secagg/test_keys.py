import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedmask.secagg import keys
from fedmask.secagg.errors import CryptoError
from fedmask.secagg.rand import SeededRandom
from fedmask.testing.runners import RecordingRunner

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def test_x25519_rfc7748_section_6_1():
    alice = keys.AgreementKeyPair.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = keys.AgreementKeyPair.from_private_bytes(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_bytes.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public_bytes.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = keys.exchange(alice.private_bytes, bob.public_bytes)
    assert shared.hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert keys.exchange(bob.private_bytes, alice.public_bytes) == shared


@pytest.mark.parametrize(
    ("scalar", "u", "out"),
    [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (  # the u-coordinate's top bit is set: RFC 7748 masks it
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_x25519_rfc7748_section_5_2_scalar_multiplication(scalar, u, out):
    assert keys.exchange(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == out


def test_x25519_rfc7748_section_5_2_iterated_1000_times():
    k = u = (9).to_bytes(32, "little")
    for i in range(1000):
        k, u = keys.exchange(k, u), k
        if i == 0:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_x25519_gives_the_bytes_openssl_gives_for_any_keys():
    """libsodium computes the agreements (it releases the GIL); OpenSSL, through
    ``cryptography``, must agree on every key, including public keys with the top bit set and
    non-canonical u >= p."""
    rng = SeededRandom.from_int(7748)
    p = 2**255 - 19
    peers = [rng.random_bytes(32) for _ in range(200)]
    peers += [(p + 9).to_bytes(32, "little"), (2**255 - 1).to_bytes(32, "little")]
    for peer in peers:
        private = rng.random_bytes(32)
        pair = keys.AgreementKeyPair.from_private_bytes(private)
        theirs = X25519PrivateKey.from_private_bytes(private)
        assert pair.public_bytes == theirs.public_key().public_bytes(*RAW)
        assert keys.exchange(private, peer) == theirs.exchange(X25519PublicKey.from_public_bytes(peer))


def test_pairwise_seeds_in_parts_are_the_seeds_one_at_a_time():
    rng = SeededRandom.from_int(3)
    pairs = [(rng.random_bytes(32), keys.AgreementKeyPair.generate(rng).public_bytes) for _ in range(9)]
    expected = [keys.pairwise_mask_seed(private, public, b"session") for private, public in pairs]
    runner = RecordingRunner(parts=3, reverse=True)
    assert keys.pairwise_mask_seeds(pairs, b"session", runner) == expected
    assert runner.calls == [3]
    bad = [*pairs[:4], (pairs[4][0], bytes(32)), *pairs[5:]]
    with pytest.raises(CryptoError, match="low-order"):
        keys.pairwise_mask_seeds(bad, b"session", runner)


def test_hkdf_rfc5869_test_case_1():
    okm = keys.hkdf(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_ed25519_rfc8032_test_1():
    secret = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    public = secret.public_key().public_bytes(*RAW)
    assert public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    signature = keys.sign(secret, b"")
    assert signature.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
        "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    keys.verify(public, signature, b"")
    with pytest.raises(CryptoError):
        keys.verify(public, signature, b"x")


def test_the_participant_s_signer_makes_the_rfc8032_signature_and_openssl_s_bytes():
    secret = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    signer = keys.Signer(secret)
    assert signer.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
        "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    other = Ed25519PrivateKey.generate()
    for payload in (b"x", bytes(range(256)) * 3):
        assert keys.Signer(other).sign(payload) == keys.sign(other, payload)
    assert "9d61" not in repr(signer) and "identity key" in repr(signer)


def test_verify_many_agrees_with_verify_in_every_part():
    signer = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = signer.public_key().public_bytes(*RAW)
    checks = [(public, keys.sign(signer, bytes([i])), bytes([i])) for i in range(9)]
    checks[2] = (public, checks[2][1], b"another payload")
    checks[7] = (public, bytes(64), checks[7][2])
    checks[8] = (public, checks[8][1][:63], checks[8][2])  # malformed: not 64 bytes
    expected = [i not in (2, 7, 8) for i in range(9)]
    assert keys.verify_many(checks) == expected
    runner = RecordingRunner(parts=3)
    assert keys.verify_many(checks, runner) == expected
    assert runner.calls == [3]
    few = RecordingRunner(parts=3)
    assert keys.verify_many(checks[:3], few) == expected[:3] and few.calls == []  # too few to split


def test_a_small_order_identity_key_cannot_sign_everything():
    """Under the identity point as public key A, the signature (R = identity, S = 0) satisfies
    the check [S]B = R + [k]A for every payload: a universal forgery that OpenSSL's Ed25519
    accepts. A participant enrolled with such a key could be impersonated by anyone (a
    coordinator forging its complaints or its consistency signature); verify refuses it."""
    identity = (1).to_bytes(32, "little")  # the Ed25519 encoding of the identity point (y = 1)
    forgery = identity + bytes(32)
    for payload in (b"a complaint about participant 3", b"another survivor list"):
        with pytest.raises(CryptoError):
            keys.verify(identity, forgery, payload)
    assert keys.verify_many([(identity, forgery, b"x")]) == [False]
    with pytest.raises(CryptoError, match="prime-order subgroup"):
        keys.check_identity_key(identity)
    honest = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes(*RAW)
    keys.check_identity_key(honest)  # raises nothing


@pytest.mark.parametrize(
    "point",
    [
        bytes(32),  # the identity
        (1).to_bytes(32, "little"),  # order 4
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
    ],
)
def test_low_order_points_are_refused(point):
    pair = keys.AgreementKeyPair.generate(SeededRandom.from_int(1))
    with pytest.raises(CryptoError, match="low-order"):
        keys.pairwise_mask_seed(pair.private_bytes, point, b"session")


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_malformed_public_keys_are_refused(bad):
    with pytest.raises(CryptoError):
        keys.check_public_key(bad)


def test_pairwise_seed_is_symmetric_and_session_bound():
    rng = SeededRandom.from_int(2)
    u, v = keys.AgreementKeyPair.generate(rng), keys.AgreementKeyPair.generate(rng)
    s_uv = keys.pairwise_mask_seed(u.private_bytes, v.public_bytes, b"session-1")
    assert s_uv == keys.pairwise_mask_seed(v.private_bytes, u.public_bytes, b"session-1")
    assert s_uv != keys.pairwise_mask_seed(u.private_bytes, v.public_bytes, b"session-2")
    assert keys.self_mask_seed(b"b" * 32, b"session-1") != keys.self_mask_seed(b"b" * 32, b"session-2")


def _share_key(rng):
    """The key of one envelope: an ephemeral key of the sender and the holder's encryption key."""
    ephemeral, holder = keys.AgreementKeyPair.generate(rng), keys.AgreementKeyPair.generate(rng)
    shared = keys.exchange(ephemeral.private_bytes, holder.public_bytes)
    assert shared == keys.exchange(holder.private_bytes, ephemeral.public_bytes)
    e = ephemeral.public_bytes
    k = keys.envelope_key(shared, session_id=b"s", sender=1, receiver=2, ephemeral_key=e)
    # each direction, each session and each envelope gets its own key
    assert k != keys.envelope_key(shared, session_id=b"s", sender=2, receiver=1, ephemeral_key=e)
    assert k != keys.envelope_key(shared, session_id=b"t", sender=1, receiver=2, ephemeral_key=e)
    assert k != keys.envelope_key(shared, session_id=b"s", sender=1, receiver=2, ephemeral_key=bytes(32))
    return k


def test_commitments_bind_session_owner_holder_and_secret():
    share = bytes(range(33))
    base = keys.share_commitment(share, session_id=b"s", owner=1, holder=2, secret="b")
    assert len(base) == keys.COMMITMENT_BYTES
    for other in (
        keys.share_commitment(share, session_id=b"t", owner=1, holder=2, secret="b"),
        keys.share_commitment(share, session_id=b"s", owner=2, holder=1, secret="b"),
        keys.share_commitment(share, session_id=b"s", owner=1, holder=2, secret="s"),
        keys.share_commitment(bytes(33), session_id=b"s", owner=1, holder=2, secret="b"),
    ):
        assert other != base
    b_u = bytes(32)
    assert keys.self_mask_commitment(b_u, session_id=b"s", owner=1) != keys.self_mask_commitment(
        b_u, session_id=b"s", owner=2
    )
    with pytest.raises(ValueError):
        keys.share_commitment(share, session_id=b"s", owner=1, holder=2, secret="x")


def test_share_encryption_binds_session_sender_and_receiver():
    rng = SeededRandom.from_int(3)
    key = _share_key(rng)
    box = keys.encrypt_share(key, b"share", session_id=b"s", sender=1, receiver=2, rng=rng)
    assert keys.decrypt_share(key, box, session_id=b"s", sender=1, receiver=2) == b"share"
    for session, sender, receiver in [(b"t", 1, 2), (b"s", 3, 2), (b"s", 1, 3)]:
        with pytest.raises(CryptoError, match="failed authentication"):
            keys.decrypt_share(key, box, session_id=session, sender=sender, receiver=receiver)
    tampered = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(CryptoError):
        keys.decrypt_share(key, tampered, session_id=b"s", sender=1, receiver=2)
    with pytest.raises(CryptoError, match="too short"):
        keys.decrypt_share(key, box[:20], session_id=b"s", sender=1, receiver=2)


def test_key_pair_repr_hides_the_private_key():
    pair = keys.AgreementKeyPair.generate(SeededRandom.from_int(4))
    assert pair.private_bytes.hex() not in repr(pair)

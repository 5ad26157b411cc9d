"""Known-answer tests for fedmask's own derivations, driven by the frozen files in vectors/v<N>/.

Two releases that announce the same protocol_version must derive the same bytes, or unmasking
between them breaks. Each vector is recomputed with the current code and compared bit for bit;
the files are never regenerated (see vectors/README.md): a change of bytes needs a new protocol
version and a new vector set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedmask.ddp import rotation
from fedmask.proto.wire import PROTOCOL_VERSION
from fedmask.secagg import client, graph, keys, prg, rand, shamir
from fedmask.secagg.messages import AdvertiseKeys, ComplaintKind
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.secagg.session import Session, compute_session_id

VECTORS_DIR = Path(__file__).parent / "vectors"
CURRENT_SET = VECTORS_DIR / f"v{PROTOCOL_VERSION}"
# Every derivation the current protocol version pins: a missing file would otherwise skip silently.
# Version 2 replaced share_encryption_key (a static key from X25519(c_u, c_v)) by per-envelope keys:
# envelope_key, share_envelope, the commitments and the envelope and complaint payloads.
DERIVATIONS = (
    "advertisement_payload",
    "complaint_payload",
    "consistency_payload",
    "cycle_order",
    "encrypt_share",
    "envelope_key",
    "envelope_payload",
    "harary_graph",
    "pairwise_mask_seed",
    "params_digest",
    "prg_add_masks",
    "prg_expand",
    "random_below",
    "rotation",
    "rotation_seed",
    "seeded_random",
    "self_mask_commitment",
    "self_mask_seed",
    "session_id",
    "shamir_encode_share",
    "shamir_split",
    "share_commitment",
    "share_envelope",
    "share_plaintext",
    "uniform_unit_floats",
)


def load(derivation: str) -> dict:
    path = CURRENT_SET / f"{derivation}.json"
    return json.loads(path.read_text()) if path.exists() else {"cases": []}


def vectors(derivation: str) -> list:
    return [pytest.param(case, id=case["name"]) for case in load(derivation)["cases"]]


def unhex(text: str) -> bytes:
    return bytes.fromhex(text)


def private_key(scalar_hex: str) -> bytes:
    return unhex(scalar_hex)


def public_bytes(scalar: bytes) -> bytes:
    return keys.AgreementKeyPair.from_private_bytes(scalar).public_bytes


def word_hex(values: np.ndarray) -> list[str]:
    return [format(int(v), f"0{values.dtype.itemsize * 2}x") for v in values]


def little_endian_sha256(values: np.ndarray) -> str:
    return hashlib.sha256(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def float_hex(values) -> list[str]:
    return [float(v).hex() for v in values]


def params_from(fields: dict) -> ProtocolParams:
    return ProtocolParams(
        fields["dimension"],
        fields["modulus_bits"],
        fields["threshold"],
        SecurityMode(fields["mode"]),
        fields["neighbours"],
    )


# --- the vector set itself -----------------------------------------------------------------------


def test_the_current_protocol_version_has_a_complete_vector_set():
    assert CURRENT_SET.is_dir(), f"no vector set for protocol version {PROTOCOL_VERSION}: run vectors/generate.py"
    assert sorted(p.stem for p in CURRENT_SET.glob("*.json")) == sorted(DERIVATIONS)


def test_every_vector_set_is_labelled_with_its_version_and_none_is_newer_than_the_protocol():
    versions = sorted(int(path.name[1:]) for path in VECTORS_DIR.glob("v[0-9]*") if path.is_dir())
    assert versions and versions[-1] == PROTOCOL_VERSION
    for version in versions:
        for path in (VECTORS_DIR / f"v{version}").glob("*.json"):
            assert json.loads(path.read_text())["protocol_version"] == version, path.name


@pytest.mark.parametrize("derivation", DERIVATIONS)
def test_vector_file_belongs_to_the_current_protocol_version(derivation):
    document = load(derivation)
    assert document.get("protocol_version") == PROTOCOL_VERSION
    assert document.get("derivation") and document.get("description")
    names = [case["name"] for case in document["cases"]]
    assert names and len(set(names)) == len(names)


# --- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("pairwise_mask_seed"))
def test_pairwise_mask_seed(case):
    mine, peer = private_key(case["private_key"]), private_key(case["peer_private_key"])
    assert public_bytes(mine) == unhex(case["public_key"])
    assert public_bytes(peer) == unhex(case["peer_public_key"])
    session_id = unhex(case["session_id"])
    assert keys.pairwise_mask_seed(mine, unhex(case["peer_public_key"]), session_id) == unhex(case["seed"])
    assert keys.pairwise_mask_seed(peer, unhex(case["public_key"]), session_id) == unhex(case["seed"])


@pytest.mark.parametrize("case", vectors("self_mask_seed"))
def test_self_mask_seed(case):
    assert keys.self_mask_seed(unhex(case["self_mask_secret"]), unhex(case["session_id"])) == unhex(case["seed"])


@pytest.mark.parametrize("case", vectors("envelope_key"))
def test_envelope_key(case):
    ephemeral, holder = private_key(case["ephemeral_private_key"]), private_key(case["holder_private_key"])
    assert public_bytes(ephemeral) == unhex(case["ephemeral_public_key"])
    assert public_bytes(holder) == unhex(case["holder_public_key"])
    # Sender and holder reach the same secret: X25519(e, c_holder) = X25519(c_holder, e).
    assert keys.exchange(ephemeral, unhex(case["holder_public_key"])) == unhex(case["shared_secret"])
    assert keys.exchange(holder, unhex(case["ephemeral_public_key"])) == unhex(case["shared_secret"])
    key = keys.envelope_key(
        unhex(case["shared_secret"]),
        session_id=unhex(case["session_id"]),
        sender=case["sender"],
        receiver=case["receiver"],
        ephemeral_key=unhex(case["ephemeral_public_key"]),
    )
    assert key == unhex(case["key"])


@pytest.mark.parametrize("case", vectors("encrypt_share"))
def test_encrypt_share_and_decrypt_share(case):
    route = {"session_id": unhex(case["session_id"]), "sender": case["sender"], "receiver": case["receiver"]}
    ciphertext = keys.encrypt_share(
        unhex(case["key"]), unhex(case["plaintext"]), rng=rand.SeededRandom(unhex(case["rng_seed"])), **route
    )
    assert ciphertext == unhex(case["ciphertext"])
    assert keys.decrypt_share(unhex(case["key"]), unhex(case["ciphertext"]), **route) == unhex(case["plaintext"])


@pytest.mark.parametrize("case", vectors("share_envelope"))
def test_share_envelope_end_to_end(case):
    session_id, sender, holder = unhex(case["session_id"]), case["sender"], case["holder"]
    route = {"session_id": session_id, "sender": sender, "receiver": holder}
    # The sender seals, as the client does.
    ephemeral = keys.AgreementKeyPair.from_private_bytes(unhex(case["ephemeral_private_key"]))
    assert ephemeral.public_bytes == unhex(case["ephemeral_public_key"])
    holder_keys = keys.AgreementKeyPair.from_private_bytes(unhex(case["holder_private_key"]))
    assert holder_keys.public_bytes == unhex(case["holder_encryption_key"])
    secret = keys.exchange(ephemeral.private_bytes, holder_keys.public_bytes)
    assert secret == unhex(case["shared_secret"])
    key = keys.envelope_key(secret, ephemeral_key=ephemeral.public_bytes, **route)
    assert key == unhex(case["envelope_key"])
    b_bytes, s_bytes = shamir.encode_share(int(case["b_share"], 16)), shamir.encode_share(int(case["s_share"], 16))
    plaintext = keys.SHARE_PLAINTEXT.pack(sender, holder, b_bytes, s_bytes)
    assert plaintext == unhex(case["plaintext"])
    ciphertext = keys.encrypt_share(key, plaintext, rng=rand.SeededRandom(unhex(case["rng_seed"])), **route)
    assert ciphertext == unhex(case["ciphertext"])
    owner_and_holder = {"session_id": session_id, "owner": sender, "holder": holder}
    b_commitment = keys.share_commitment(b_bytes, secret="b", **owner_and_holder)
    s_commitment = keys.share_commitment(s_bytes, secret="s", **owner_and_holder)
    assert b_commitment == unhex(case["self_mask_share_commitment"])
    assert s_commitment == unhex(case["key_share_commitment"])
    self_commitment = keys.self_mask_commitment(unhex(case["self_mask_secret"]), session_id=session_id, owner=sender)
    assert self_commitment == unhex(case["self_mask_commitment"])
    payload = keys.envelope_payload(
        session_id,
        sender,
        holder,
        ephemeral_key=ephemeral.public_bytes,
        ciphertext=ciphertext,
        self_mask_share_commitment=b_commitment,
        key_share_commitment=s_commitment,
        self_mask_commitment=self_commitment,
    )
    assert payload == unhex(case["payload"])
    # The holder opens the frozen envelope with its own private key.
    holder_secret = keys.exchange(holder_keys.private_bytes, unhex(case["ephemeral_public_key"]))
    holder_key = keys.envelope_key(holder_secret, ephemeral_key=unhex(case["ephemeral_public_key"]), **route)
    assert holder_key == unhex(case["envelope_key"])
    opened = keys.decrypt_share(holder_key, unhex(case["ciphertext"]), **route)
    assert keys.SHARE_PLAINTEXT.unpack(opened) == (sender, holder, b_bytes, s_bytes)


@pytest.mark.parametrize("case", vectors("self_mask_commitment"))
def test_self_mask_commitment(case):
    commitment = keys.self_mask_commitment(
        unhex(case["self_mask_secret"]), session_id=unhex(case["session_id"]), owner=case["owner"]
    )
    assert commitment == unhex(case["commitment"])


@pytest.mark.parametrize("case", vectors("share_commitment"))
def test_share_commitment(case):
    commitment = keys.share_commitment(
        unhex(case["share"]),
        session_id=unhex(case["session_id"]),
        owner=case["owner"],
        holder=case["holder"],
        secret=case["secret"],
    )
    assert commitment == unhex(case["commitment"])


@pytest.mark.parametrize("case", vectors("envelope_payload"))
def test_envelope_payload(case):
    payload = keys.envelope_payload(
        unhex(case["session_id"]),
        case["sender"],
        case["recipient"],
        ephemeral_key=unhex(case["ephemeral_key"]),
        ciphertext=unhex(case["ciphertext"]),
        self_mask_share_commitment=unhex(case["self_mask_share_commitment"]),
        key_share_commitment=unhex(case["key_share_commitment"]),
        self_mask_commitment=unhex(case["self_mask_commitment"]),
    )
    assert payload == unhex(case["payload"])


@pytest.mark.parametrize("case", vectors("complaint_payload"))
def test_complaint_payload(case):
    kind = ComplaintKind(case["kind"]).value
    payload = keys.complaint_payload(unhex(case["session_id"]), case["complainer"], case["accused"], kind)
    assert payload == unhex(case["payload"])


@pytest.mark.parametrize("case", vectors("advertisement_payload"))
def test_advertisement_payload(case):
    payload = keys.advertisement_payload(
        unhex(case["round_id"]), case["sender"], unhex(case["encryption_key"]), unhex(case["masking_key"])
    )
    assert payload == unhex(case["payload"])


@pytest.mark.parametrize("case", vectors("consistency_payload"))
def test_consistency_payload(case):
    assert keys.consistency_payload(unhex(case["session_id"]), tuple(case["survivors"])) == unhex(case["payload"])


# --- session and graph -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("params_digest"))
def test_params_digest(case):
    assert params_from(case).digest() == unhex(case["digest"])


@pytest.mark.parametrize("case", vectors("session_id"))
def test_session_id(case):
    round_id, params = unhex(case["round_id"]), params_from(case["params"])
    roster = tuple(
        AdvertiseKeys(ad["sender"], round_id, unhex(ad["encryption_key"]), unhex(ad["masking_key"]))
        for ad in case["roster"]
    )
    assert compute_session_id(round_id, params, roster) == unhex(case["session_id"])
    session = Session.from_roster(round_id, params, roster)
    assert session.session_id == unhex(case["session_id"])
    if "neighbours" in case:
        built = {str(u): sorted(session.neighbours(u)) for u in session.participants}
        assert built == case["neighbours"]


@pytest.mark.parametrize("case", vectors("cycle_order"))
def test_cycle_order(case):
    assert list(graph.cycle_order(case["ids"], unhex(case["seed"]))) == case["order"]


@pytest.mark.parametrize("case", vectors("harary_graph"))
def test_harary_graph_neighbours(case):
    built = graph.harary_graph(case["ids"], case["degree"], unhex(case["seed"]))
    assert {str(u): sorted(built.neighbours(u)) for u in built.ids} == case["neighbours"]


# --- PRG -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("prg_expand"))
def test_prg_expand(case):
    values = prg.expand(unhex(case["seed"]), case["dimension"], case["modulus_bits"])
    assert word_hex(values[: len(case["first_values"])]) == case["first_values"]
    assert little_endian_sha256(values) == case["sha256"]


def initial_accumulator(width: int, dimension: int, multiplier: int) -> np.ndarray:
    """initial[i] = i * multiplier mod 2^width, as the vector header documents."""
    modulus = 1 << width
    return np.array([i * multiplier % modulus for i in range(dimension)], dtype="<u4" if width == 32 else "<u8")


@pytest.mark.parametrize("case", vectors("prg_add_masks"))
def test_prg_add_masks(case):
    accumulator = initial_accumulator(case["width"], case["dimension"], int(case["initial_multiplier"], 16))
    prg.add_masks(accumulator, [unhex(s) for s in case["add_seeds"]], [unhex(s) for s in case["subtract_seeds"]])
    assert word_hex(accumulator[: len(case["first_values"])]) == case["first_values"]
    assert little_endian_sha256(accumulator) == case["sha256"]


# --- Shamir and the share plaintext ----------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("share_plaintext"))
def test_share_plaintext_layout(case):
    b_share, s_share = int(case["b_share"], 16), int(case["s_share"], 16)
    assert client._SHARE_PLAINTEXT is keys.SHARE_PLAINTEXT
    plaintext = keys.SHARE_PLAINTEXT.pack(
        case["sender"], case["recipient"], shamir.encode_share(b_share), shamir.encode_share(s_share)
    )
    assert plaintext == unhex(case["plaintext"])
    sender, recipient, b_bytes, s_bytes = keys.SHARE_PLAINTEXT.unpack(unhex(case["plaintext"]))
    assert (sender, recipient) == (case["sender"], case["recipient"])
    assert (shamir.decode_share(b_bytes), shamir.decode_share(s_bytes)) == (b_share, s_share)


@pytest.mark.parametrize("case", vectors("shamir_encode_share"))
def test_shamir_encode_share(case):
    value = int(case["value"], 16)
    assert shamir.encode_share(value) == unhex(case["encoded"])
    assert shamir.decode_share(unhex(case["encoded"])) == value


@pytest.mark.parametrize("case", vectors("shamir_split"))
def test_shamir_split_and_reconstruct(case):
    secrets = [unhex(s) for s in case["secrets"]]
    shares = shamir.split(
        secrets, threshold=case["threshold"], holders=case["holders"], rng=rand.SeededRandom(unhex(case["rng_seed"]))
    )
    assert {str(x): [shamir.encode_share(y).hex() for y in ys] for x, ys in shares.items()} == case["shares"]
    frozen = {int(x): [shamir.decode_share(unhex(y)) for y in ys] for x, ys in case["shares"].items()}
    for reconstruction in case["reconstructions"]:
        for index, expected in enumerate(reconstruction["secrets"]):
            subset = {x: frozen[x][index] for x in reconstruction["holders"]}
            assert shamir.reconstruct(subset, threshold=case["threshold"]) == unhex(expected)


# --- randomness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("seeded_random"))
def test_seeded_random_stream(case):
    if case["seed"] is None:
        rng = rand.SeededRandom.from_int(case["seed_int"])
    else:
        rng = rand.SeededRandom(unhex(case["seed"]))
    assert [rng.random_bytes(count).hex() for count in case["reads"]] == case["outputs"]
    if "child_output" in case:
        child = rng.spawn()
        assert child.random_bytes(32) == unhex(case["child_output"])
        assert rng.random_bytes(len(unhex(case["parent_after_spawn"]))) == unhex(case["parent_after_spawn"])


@pytest.mark.parametrize("case", vectors("random_below"))
def test_random_below(case):
    rng = rand.SeededRandom(unhex(case["seed"]))
    values = [format(rand.random_below(rng, int(bound, 16)), "x") for bound in case["bounds"]]
    assert values == case["values"]
    assert rng.random_bytes(len(unhex(case["next_bytes"]))) == unhex(case["next_bytes"])


@pytest.mark.parametrize("case", vectors("uniform_unit_floats"))
def test_uniform_unit_floats(case):
    values = rand.uniform_unit_floats(rand.SeededRandom(unhex(case["seed"])), case["count"])
    assert float_hex(values) == case["values"]


# --- distributed-DP rotation -----------------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("rotation_seed"))
def test_rotation_seed(case):
    assert rotation.rotation_seed(unhex(case["round_id"])) == unhex(case["seed"])


@pytest.mark.parametrize("case", vectors("rotation"))
def test_rotation_signs_rotate_and_unrotate(case):
    seed = unhex(case["seed"])
    vector = np.array([float.fromhex(v) for v in case["vector"]])
    assert rotation.padded_dimension(vector.size) == case["padded_dimension"]
    signs = rotation.random_signs(seed, case["padded_dimension"])
    assert float_hex(signs) == float_hex(case["signs"])
    assert float_hex(rotation.rotate(vector, seed)) == case["rotated"]
    rotated = np.array([float.fromhex(v) for v in case["rotated"]])
    assert float_hex(rotation.unrotate(rotated, seed, vector.size)) == case["unrotated"]

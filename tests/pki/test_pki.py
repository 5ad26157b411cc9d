"""Federation PKI: chains, real TLS handshakes (ssl and gRPC), identities, roster, tokens, CLI."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from fedmask import pki
from fedmask.cli.pki import pki as pki_command

# --------------------------------------------------------------------------------------------
# Fixtures: one federation with a coordinator and two participants, and a foreign federation.


@dataclass(frozen=True)
class Federation:
    paths: pki.FederationPaths
    ca_cert: x509.Certificate

    def material(self, role: pki.Role, name: str) -> pki.TlsMaterial:
        return pki.load_tls_material(self.paths, role, name)

    def roster(self) -> pki.Roster:
        return pki.load_roster(self.paths.roster, self.ca_cert)


def _enrol_and_issue(
    directory: Path | pki.FederationPaths, name: str, *, organisation: str | None = None, force: bool = False
) -> pki.IssuedCertificate:
    """The default path, all in one directory: ``name`` makes its keys, the CA issues from its request."""
    request = pki.enrol(directory, name, organisation=organisation or name, force=force)
    return pki.issue(directory, "participant", name, request=request, valid_days=10, force=force)


def _make_federation(directory: Path, federation_name: str) -> Federation:
    paths = pki.init_federation(directory, federation_name=federation_name, valid_days=30)
    pki.issue(directory, "coordinator", "main", valid_days=10)
    _enrol_and_issue(directory, "hospital-a", organisation="st-marys")
    _enrol_and_issue(directory, "bank", organisation="acme-bank")
    return Federation(paths, pki.load_ca_certificate(paths))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return _make_federation(tmp_path_factory.mktemp("fed") / "federation", "consortium")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A second federation whose CA nobody in ``federation`` trusts."""
    return _make_federation(tmp_path_factory.mktemp("foreign") / "federation", "consortium")


@pytest.fixture()
def fresh(tmp_path: Path) -> Federation:
    """A federation a test may modify."""
    return _make_federation(tmp_path / "federation", "scratch")


def _ca_key(federation: Federation) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(federation.paths.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _forge_leaf(federation: Federation, *, common_name: str, uri: str) -> bytes:
    """A clientAuth certificate signed by the federation CA with arbitrary names (PEM)."""
    return _forge_leaf_with_key(federation, common_name=common_name, uri=uri)[0]


def _forge_leaf_with_key(federation: Federation, *, common_name: str, uri: str) -> tuple[bytes, bytes]:
    """Like ``_forge_leaf``, also returning the leaf's private key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = federation.ca_cert
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(_ca_key(federation), hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --------------------------------------------------------------------------------------------
# Certificates


def test_ca_is_a_self_signed_p256_certificate_authority(federation: Federation) -> None:
    ca = federation.ca_cert
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_leaf_chains_verify_under_the_webpki_profile(federation: Federation) -> None:
    store = Store([federation.ca_cert])
    coordinator = x509.load_pem_x509_certificate(federation.material("coordinator", "main").cert_chain)
    for host in (
        x509.verification.DNSName("localhost"),
        x509.verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        PolicyBuilder().store(store).build_server_verifier(host).verify(coordinator, [])
    participant = x509.load_pem_x509_certificate(federation.material("participant", "hospital-a").cert_chain)
    verified = PolicyBuilder().store(store).build_client_verifier().verify(participant, [])
    assert x509.UniformResourceIdentifier("urn:fedmask:participant:hospital-a") in verified.subjects
    assert participant.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"


def test_coordinator_hosts_become_dns_and_ip_sans(fresh: Federation) -> None:
    pki.issue(fresh.paths, "coordinator", "edge", hosts=["Coord.Example.org", "10.1.2.3", "::1"], valid_days=10)
    cert = x509.load_pem_x509_certificate(fresh.material("coordinator", "edge").cert_chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "::1"]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    with pytest.raises(pki.PkiError, match="invalid coordinator host"):
        pki.issue(fresh.paths, "coordinator", "bad", hosts=["*.example.org"], valid_days=10)
    with pytest.raises(pki.PkiError, match="outlive the CA"):
        pki.issue(fresh.paths, "coordinator", "edge2", valid_days=31)


# --------------------------------------------------------------------------------------------
# Real TLS 1.3 handshakes over loopback with Python's ssl module


def _server_context(federation: Federation) -> ssl.SSLContext:
    material = federation.material("coordinator", "main")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.ca_cert.decode())
    context.load_cert_chain(
        federation.paths.tls_cert("coordinator", "main"), federation.paths.tls_key("coordinator", "main")
    )
    return context


def _client_context(trusted: Federation, client: Federation | None, name: str = "hospital-a") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=trusted.ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    if client is not None:
        context.load_cert_chain(client.paths.tls_cert("participant", name), client.paths.tls_key("participant", name))
    return context


@dataclass
class HandshakeResult:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    peer_der: bytes | None = None
    reply: bytes = b""
    version: str | None = None


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> HandshakeResult:
    result = HandshakeResult()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(5)
            with server_context.wrap_socket(raw, server_side=True) as conn:
                result.peer_der = conn.getpeercert(binary_form=True)
                conn.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            result.server_error = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            result.version = conn.version()
            result.reply = conn.recv(2)
    except (OSError, ssl.SSLError) as exc:
        result.client_error = exc
    finally:
        thread.join(10)
        listener.close()
    return result


def test_mutual_tls13_handshake_succeeds_and_yields_the_participant_name(federation: Federation) -> None:
    result = _handshake(_server_context(federation), _client_context(federation, federation))
    assert result.server_error is None and result.client_error is None
    assert result.version == "TLSv1.3"
    assert result.reply == b"ok"
    assert result.peer_der is not None
    assert pki.identity_from_peer_cert(result.peer_der, federation.ca_cert, roster=federation.roster()) == "hospital-a"


def test_handshake_fails_with_a_client_cert_from_another_ca(federation: Federation, foreign: Federation) -> None:
    result = _handshake(_server_context(federation), _client_context(federation, foreign))
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.peer_der is None and result.reply == b""


def test_handshake_fails_without_a_client_cert(federation: Federation) -> None:
    result = _handshake(_server_context(federation), _client_context(federation, None))
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.reply == b""


def test_participant_rejects_a_coordinator_from_another_ca(federation: Federation, foreign: Federation) -> None:
    result = _handshake(_server_context(foreign), _client_context(federation, federation))
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


# --------------------------------------------------------------------------------------------
# identity_from_peer_cert


def test_identity_from_pem_der_and_text(federation: Federation) -> None:
    pem = federation.material("participant", "bank").cert_chain
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    for form in (pem, der, pem.decode()):
        assert pki.identity_from_peer_cert(form, federation.ca_cert) == "bank"


def test_identity_rejects_a_coordinator_cert_used_as_client(federation: Federation) -> None:
    with pytest.raises(pki.PeerIdentityError, match="EKU"):
        pki.identity_from_peer_cert(federation.material("coordinator", "main").cert_chain, federation.ca_cert)


def test_identity_rejects_a_cert_from_another_ca(federation: Federation, foreign: Federation) -> None:
    # Same federation name, same participant name: only the CA differs.
    with pytest.raises(pki.PeerIdentityError, match="not a valid client certificate"):
        pki.identity_from_peer_cert(foreign.material("participant", "hospital-a").cert_chain, federation.ca_cert)


@pytest.mark.parametrize(
    ("common_name", "uri", "message"),
    [
        ("Bad_Name", "urn:fedmask:participant:Bad_Name", "malformed"),
        ("a" * 64, "urn:fedmask:participant:" + "a" * 64, "malformed"),
        ("hospital-a", "urn:fedmask:participant:bank", "CN does not match"),  # claiming another's id
        ("bank", "urn:fedmask:coordinator:bank", "not a participant"),
        ("bank", "https://example.org/bank", "exactly one"),
    ],
)
def test_identity_rejects_malformed_or_inconsistent_names(
    federation: Federation, common_name: str, uri: str, message: str
) -> None:
    forged = _forge_leaf(federation, common_name=common_name, uri=uri)
    with pytest.raises(pki.PeerIdentityError, match=message):
        pki.identity_from_peer_cert(forged, federation.ca_cert)


def test_identity_rejects_expired_and_garbage_certs(federation: Federation) -> None:
    pem = federation.material("participant", "bank").cert_chain
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(pki.PeerIdentityError):
        pki.identity_from_peer_cert(pem, federation.ca_cert, now=later)
    with pytest.raises(pki.PeerIdentityError, match=r"not a valid X\.509"):
        pki.identity_from_peer_cert(b"not a certificate", federation.ca_cert)


def test_identity_with_roster_rejects_superseded_and_unenrolled_certs(fresh: Federation) -> None:
    old = fresh.material("participant", "bank").cert_chain
    request = pki.enrol(fresh.paths, "bank", organisation="acme-bank", force=True)
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.issue(fresh.paths, "participant", "bank", request=request, valid_days=10)
    pki.issue(fresh.paths, "participant", "bank", request=request, force=True, valid_days=10)
    roster = fresh.roster()
    assert pki.identity_from_peer_cert(old, fresh.ca_cert) == "bank"  # still chains...
    with pytest.raises(pki.PeerIdentityError, match="not the one in the roster"):
        pki.identity_from_peer_cert(old, fresh.ca_cert, roster=roster)  # ...but the roster moved on
    new = fresh.material("participant", "bank").cert_chain
    assert pki.identity_from_peer_cert(new, fresh.ca_cert, roster=roster) == "bank"
    outsider = _forge_leaf(fresh, common_name="stranger", uri="urn:fedmask:participant:stranger")
    with pytest.raises(pki.PeerIdentityError, match="not in the roster"):
        pki.identity_from_peer_cert(outsider, fresh.ca_cert, roster=roster)


def test_removed_participant_loses_its_identity_and_token(fresh: Federation) -> None:
    token = pki.issue_token(fresh.paths, "bank")
    cert = fresh.material("participant", "bank").cert_chain
    version = fresh.roster().version
    roster = pki.remove_participant(fresh.paths, "bank")
    assert roster == fresh.roster() and roster.version == version + 1 and "bank" not in roster
    with pytest.raises(pki.PeerIdentityError, match="not in the roster"):
        pki.identity_from_peer_cert(cert, fresh.ca_cert, roster=roster)
    assert not pki.verify_token(fresh.paths, "bank", token)
    with pytest.raises(pki.PkiError, match="not in the roster"):
        pki.remove_participant(fresh.paths, "bank")


# --------------------------------------------------------------------------------------------
# Roster


def test_roster_lists_enrolled_identity_keys_bound_to_their_certs(federation: Federation) -> None:
    roster = federation.roster()
    assert roster.federation == "consortium"
    assert roster.names == ("bank", "hospital-a")
    assert roster.version == 3  # init + two participants
    for name in roster.names:
        cert = x509.load_pem_x509_certificate(federation.material("participant", name).cert_chain)
        assert roster.fingerprints[name] == pki.certificate_fingerprint(cert)
        # The enrolled key is the public half of the participant's identity key.
        signature = pki.load_identity_key(federation.paths, name).sign(b"session")
        roster.identity_key(name).verify(signature, b"session")
    with pytest.raises(TypeError):
        roster.entries["mallory"] = roster.entries["bank"]  # type: ignore[index]
    with pytest.raises(pki.RosterError):
        roster.identity_key("mallory")


def _tamper(federation: Federation, edit) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(federation.paths.roster.read_bytes())
    edit(document)
    federation.paths.roster.write_bytes(json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n")


def _raw_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return base64.urlsafe_b64encode(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def _swap_keys(document: dict) -> None:  # type: ignore[type-arg]
    people = document["participants"]
    a, b = people["bank"], people["hospital-a"]
    a["identity_key_ed25519"], b["identity_key_ed25519"] = (
        b["identity_key_ed25519"],
        a["identity_key_ed25519"],
    )


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d["participants"]["bank"].update(identity_key_ed25519=_raw_key()), id="changed-key"),
        pytest.param(
            lambda d: d["participants"].update(
                mallory={**d["participants"]["bank"], "identity_key_ed25519": _raw_key()}
            ),
            id="added-entry",
        ),
        pytest.param(lambda d: d["participants"].pop("bank"), id="removed-entry"),
        pytest.param(_swap_keys, id="same-bytes-reordered"),
        pytest.param(lambda d: d.update(version=1), id="rolled-back-version"),
    ],
)
def test_tampered_roster_is_rejected(fresh: Federation, edit) -> None:  # type: ignore[no-untyped-def]
    original = fresh.paths.roster.read_bytes()
    _tamper(fresh, edit)
    assert fresh.paths.roster.read_bytes() != original
    with pytest.raises(pki.RosterError, match="not signed by the federation CA"):
        fresh.roster()


def test_roster_signature_and_encoding_are_strict(fresh: Federation, foreign: Federation) -> None:
    original = fresh.paths.roster.read_bytes()
    # Same content, different bytes: the signature covers the exact bytes.
    fresh.paths.roster.write_bytes(json.dumps(json.loads(original), indent=2).encode())
    with pytest.raises(pki.RosterError):
        fresh.roster()
    fresh.paths.roster.write_bytes(original)
    assert fresh.roster().names == ("bank", "hospital-a")
    # A roster signed by another CA does not verify under ours.
    with pytest.raises(pki.RosterError):
        pki.load_roster(foreign.paths.roster, fresh.ca_cert)
    fresh.paths.roster_signature.write_bytes(b"!!not base64!!")
    with pytest.raises(pki.RosterError, match="base64"):
        fresh.roster()
    fresh.paths.roster_signature.unlink()
    with pytest.raises(pki.RosterError, match="missing"):
        fresh.roster()


def test_participant_may_bring_its_own_identity_key(fresh: Federation) -> None:
    own = ed25519.Ed25519PrivateKey.generate()
    public_pem = own.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(pki.PkiError, match="needs an enrolment request"):
        pki.issue(fresh.paths, "participant", "clinic", identity_public_key=public_pem, valid_days=10)
    issued = pki.issue(
        fresh.paths,
        "participant",
        "clinic",
        identity_public_key=public_pem,
        operator_generates_keys=True,
        valid_days=10,
    )
    assert issued.identity_key_path is None and not fresh.paths.identity_key("clinic").exists()
    assert issued.key_path == fresh.paths.tls_key("participant", "clinic")  # the TLS key was made here
    fresh.roster().identity_key("clinic").verify(own.sign(b"m"), b"m")
    with pytest.raises(pki.PkiError, match="Ed25519"):
        pki.issue(
            fresh.paths,
            "participant",
            "clinic2",
            identity_public_key=ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            operator_generates_keys=True,
            valid_days=10,
        )


# --------------------------------------------------------------------------------------------
# Enrolment: the participant makes its keys, the operator issues from its request


@dataclass(frozen=True)
class Enrolled:
    """An operator's directory (CA, coordinator) and a participant's own, separate directory."""

    operator: pki.FederationPaths
    participant: pki.FederationPaths
    request_path: Path


def _enrolled(tmp_path: Path, name: str = "hospital-a", organisation: str = "st-marys") -> Enrolled:
    operator = pki.init_federation(tmp_path / "operator", federation_name="clinics", valid_days=30)
    pki.issue(operator, "coordinator", "main", valid_days=10)
    participant = pki.FederationPaths(tmp_path / name)
    request_path = pki.enrol(participant, name, organisation=organisation)
    return Enrolled(operator, participant, request_path)


def _identity_private_key(paths: pki.FederationPaths, name: str) -> ed25519.Ed25519PrivateKey:
    return pki.load_identity_key(paths, name)


def _signed_request(request: pki.EnrolmentRequest, identity: ed25519.Ed25519PrivateKey, **changes: Any) -> bytes:
    """``request`` with ``changes``, its identity proof made again with ``identity``: what a
    sender holding ``identity`` could write, so that only the check under test can refuse it."""
    changed = dataclasses.replace(request, **changes)
    return dataclasses.replace(changed, identity_proof=identity.sign(changed._signed_bytes())).to_json()


def _public_der(key: object) -> bytes:
    """SubjectPublicKeyInfo DER of an EC public key, or of an EC private key's public half."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_enrol_writes_private_keys_0600_and_a_request_without_secrets(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        enrolled = _enrolled(tmp_path)
    finally:
        os.umask(previous)
    paths = enrolled.participant
    assert enrolled.request_path == paths.enrolment_request("hospital-a")
    for key_path in (paths.tls_key("participant", "hospital-a"), paths.identity_key("hospital-a")):
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600, key_path
    assert stat.S_IMODE(enrolled.request_path.stat().st_mode) == 0o644
    assert (paths.root / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not [p for p in paths.root.rglob("*.tmp")]

    text = enrolled.request_path.read_text()
    document = json.loads(text)
    assert set(document) == {"format", "name", "organisation", "csr", "identity_key_ed25519", "identity_proof_ed25519"}
    assert document["format"] == pki.ENROLMENT_REQUEST_FORMAT == "fedmask-enrolment-request/1"
    assert (document["name"], document["organisation"]) == ("hospital-a", "st-marys")
    assert "PRIVATE" not in text
    for key_path in (paths.tls_key("participant", "hospital-a"), paths.identity_key("hospital-a")):
        body = "".join(key_path.read_text().splitlines()[1:-1])
        assert body[-24:] not in text
    request = pki.load_enrolment_request(enrolled.request_path)
    # The CSR follows the certificate's naming scheme and holds the participant's own key.
    csr = x509.load_pem_x509_csr(request.csr_pem)
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:fedmask:participant:hospital-a")]
    tls_key = serialization.load_pem_private_key(paths.tls_key("participant", "hospital-a").read_bytes(), None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey) and tls_key.curve.name == "secp256r1"
    assert _public_der(csr.public_key()) == _public_der(tls_key)
    identity = _identity_private_key(paths, "hospital-a")
    assert request.identity_public_key == identity.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_a_request_that_cannot_be_written_leaves_no_keys_behind(tmp_path: Path) -> None:
    """Otherwise the retry, with a good --out, is refused: NAME "already has keys"."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    directory = tmp_path / "mine"
    with pytest.raises(
        pki.PkiError, match=r"cannot write the enrolment request .*a-file/request.json: Not a directory"
    ):
        pki.enrol(directory, "hospital-a", organisation="st-marys", out=a_file / "request.json")
    paths = pki.FederationPaths(directory)
    assert not paths.tls_key("participant", "hospital-a").exists() and not paths.identity_key("hospital-a").exists()
    assert pki.enrol(directory, "hospital-a", organisation="st-marys").is_file()  # the retry needs no --force


def test_enrol_refuses_existing_keys_unless_forced(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    key_path = enrolled.participant.tls_key("participant", "hospital-a")
    old_key = key_path.read_bytes()
    with pytest.raises(pki.PkiError, match="already has keys.*--force"):
        pki.enrol(enrolled.participant, "hospital-a", organisation="st-marys")
    assert key_path.read_bytes() == old_key
    out = tmp_path / "outbox" / "request.json"
    assert pki.enrol(enrolled.participant, "hospital-a", organisation="st-marys", out=out, force=True) == out
    assert key_path.read_bytes() != old_key and out.is_file()
    for organisation in ("St Marys", "", "a" * 64, "x\n"):
        with pytest.raises(pki.PkiError, match="invalid organisation"):
            pki.enrol(tmp_path / "other", "clinic", organisation=organisation)
    with pytest.raises(pki.PkiError, match="invalid name"):
        pki.enrol(tmp_path / "other", "Clinic", organisation="clinic")


def test_issue_from_request_and_hand_back_public_files(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    operator, participant = enrolled.operator, enrolled.participant
    issued = pki.issue(operator, "participant", "hospital-a", request=enrolled.request_path, valid_days=10)
    assert issued.key_path is None and issued.identity_key_path is None
    assert issued.organisation == "st-marys"
    assert issued.request_fingerprint == pki.load_enrolment_request(enrolled.request_path).fingerprint()
    # The certificate is for the enrolling participant's own key...
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    participant_key = serialization.load_pem_private_key(
        participant.tls_key("participant", "hospital-a").read_bytes(), None
    )
    assert _public_der(cert.public_key()) == _public_der(participant_key)
    # ...and no private key of the participant was ever in the operator's directory.
    assert sorted(p.relative_to(operator.root).as_posix() for p in operator.root.rglob("*.key")) == [
        "ca/ca.key",
        "coordinator/main.key",
    ]
    roster = pki.load_roster(operator.roster, pki.load_ca_certificate(operator))
    assert roster.organisations() == {"hospital-a": "st-marys"}
    assert issued.roster == roster and roster.document_format == "fedmask-roster/2"

    files = pki.export_participant(operator, "hospital-a", participant.root)
    assert sorted(p.relative_to(participant.root).as_posix() for p in files) == [
        "ca/ca.pem",
        "participants/hospital-a/tls.pem",
        "roster.json",
        "roster.sig",
    ]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files)
    # The participant's directory now holds everything it needs; its keys are untouched.
    enrolled_roster = pki.load_roster(participant.roster, pki.load_ca_certificate(participant))
    assert enrolled_roster.fingerprint() == roster.fingerprint()
    signature = _identity_private_key(participant, "hospital-a").sign(b"round")
    enrolled_roster.identity_key("hospital-a").verify(signature, b"round")
    ca_cert = pki.load_ca_certificate(operator)
    as_participant = Federation(participant, ca_cert)
    result = _handshake(_server_context(Federation(operator, ca_cert)), _client_context(as_participant, as_participant))
    assert result.server_error is None and result.client_error is None and result.peer_der is not None
    assert pki.identity_from_peer_cert(result.peer_der, ca_cert, roster=roster) == "hospital-a"
    material = pki.load_tls_material(participant, "participant", "hospital-a")
    assert material.cert_chain == issued.cert_path.read_bytes()

    with pytest.raises(pki.PkiError, match="federation directory itself"):
        pki.export_participant(operator, "hospital-a", operator.root)
    with pytest.raises(pki.PkiError, match="not in the roster"):
        pki.export_participant(operator, "bank", tmp_path / "bank")


def test_a_participant_waiting_for_its_certificate_is_told_what_is_missing(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    with pytest.raises(pki.PkiError, match="operator sends back"):
        pki.load_tls_material(enrolled.participant, "participant", "hospital-a")


def test_request_given_as_bytes_or_parts(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    request = pki.load_enrolment_request(enrolled.request_path)
    pki.issue(enrolled.operator, "participant", "hospital-a", request=enrolled.request_path.read_bytes(), valid_days=10)
    # A CSR from another tool, with the identity key and organisation given separately.
    identity_pem = request.identity_public_key
    issued = pki.issue(
        enrolled.operator,
        "participant",
        "hospital-a",
        csr=request.csr_pem,
        identity_public_key=identity_pem,
        organisation="st-marys",
        force=True,
        valid_days=10,
    )
    assert issued.key_path is None and issued.organisation == "st-marys"
    with pytest.raises(pki.PkiError, match="identity public key and its organisation"):
        pki.issue(enrolled.operator, "participant", "hospital-a", csr=request.csr_pem, force=True)
    with pytest.raises(pki.PkiError, match="not both"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            request=enrolled.request_path,
            csr=request.csr_pem,
            force=True,
        )
    with pytest.raises(pki.PkiError, match="participants only"):
        pki.issue(enrolled.operator, "coordinator", "edge", request=enrolled.request_path)
    with pytest.raises(pki.PkiError, match="made its keys itself"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            request=enrolled.request_path,
            operator_generates_keys=True,
            force=True,
        )


def test_a_request_or_csr_for_another_name_is_refused(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path, "mallory", "mallory-inc")
    mallory = pki.load_enrolment_request(enrolled.request_path)
    identity = _identity_private_key(enrolled.participant, "mallory")
    operator = enrolled.operator
    with pytest.raises(pki.PkiError, match="request is for 'mallory', not 'bank'"):
        pki.issue(operator, "participant", "bank", request=enrolled.request_path)
    # Renamed in the request, re-signed by its sender: the CSR still names mallory.
    with pytest.raises(pki.PkiError, match="names 'mallory', not 'bank'"):
        pki.issue(operator, "participant", "bank", request=_signed_request(mallory, identity, name="bank"))
    with pytest.raises(pki.PkiError, match="names 'mallory', not 'bank'"):
        pki.issue(
            operator,
            "participant",
            "bank",
            csr=mallory.csr_pem,
            identity_public_key=mallory.identity_public_key,
            organisation="acme-bank",
        )
    # A CSR that names mallory but also asks for bank's identity URI.
    tls_key = serialization.load_pem_private_key(
        enrolled.participant.tls_key("participant", "mallory").read_bytes(), None
    )
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("urn:fedmask:participant:mallory"),
                    x509.UniformResourceIdentifier("urn:fedmask:participant:bank"),
                ]
            ),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(pki.PkiError, match="asks for other names"):
        pki.issue(operator, "participant", "mallory", request=_signed_request(mallory, identity, csr_pem=greedy))
    roster = pki.load_roster(operator.roster, pki.load_ca_certificate(operator))
    assert roster.names == () and roster.version == 1
    assert not operator.tls_cert("participant", "bank").exists()


@pytest.mark.parametrize("key_kind", ["p384", "ed25519"])
def test_a_csr_whose_key_is_not_p256_is_refused(tmp_path: Path, key_kind: str) -> None:
    enrolled = _enrolled(tmp_path)
    request = pki.load_enrolment_request(enrolled.request_path)
    # Well formed and self-signed, but gRPC's TLS and the CA expect P-256.
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
        ec.generate_private_key(ec.SECP384R1()) if key_kind == "p384" else ed25519.Ed25519PrivateKey.generate()
    )
    csr_pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital-a")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:fedmask:participant:hospital-a")]),
            critical=False,
        )
        .sign(key, hashes.SHA256() if key_kind == "p384" else None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(pki.PkiError, match="must be ECDSA P-256"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            csr=csr_pem,
            identity_public_key=request.identity_public_key,
            organisation=request.organisation,
        )
    assert not enrolled.operator.tls_cert("participant", "hospital-a").exists()


def test_a_tampered_csr_is_refused(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    request = pki.load_enrolment_request(enrolled.request_path)
    identity = _identity_private_key(enrolled.participant, "hospital-a")
    der = x509.load_pem_x509_csr(request.csr_pem).public_bytes(serialization.Encoding.DER)
    # The name changed after the participant signed the CSR: its signature no longer verifies.
    renamed = der.replace(b"hospital-a", b"hospital-b")
    assert renamed != der
    with pytest.raises(pki.PkiError, match="signature does not verify"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-b",
            csr=renamed,
            identity_public_key=request.identity_public_key,
            organisation="st-marys",
        )
    # Another public key put into the CSR (the operator's or an attacker's): same refusal.
    original_point = _public_der(x509.load_der_x509_csr(der).public_key())[-65:]
    other_point = _public_der(ec.generate_private_key(ec.SECP256R1()))[-65:]
    swapped = der.replace(original_point, other_point)
    assert swapped != der
    with pytest.raises(pki.PkiError, match="signature does not verify"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            request=_signed_request(request, identity, csr_pem=_pem_csr(swapped)),
        )
    # A CSR edited inside the request without re-signing the proof: refused as well.
    tampered = json.loads(enrolled.request_path.read_text())
    tampered["csr"] = _pem_csr(renamed).decode()
    with pytest.raises(pki.PkiError, match="does not verify"):
        pki.issue(enrolled.operator, "participant", "hospital-a", request=json.dumps(tampered).encode())
    with pytest.raises(pki.PkiError, match="not a valid certificate signing request"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            request=_signed_request(
                request,
                identity,
                csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ),
        )
    assert not enrolled.operator.tls_cert("participant", "hospital-a").exists()


def _pem_csr(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE REQUEST-----\n"


def _with_field(path: Path, **fields: object) -> bytes:
    document = json.loads(path.read_text())
    document.update(fields)
    return json.dumps(document).encode()


SMALL_ORDER_KEY = (1).to_bytes(32, "little")  # the Ed25519 encoding of the identity point


def test_a_request_with_a_bad_identity_key_is_refused(tmp_path: Path) -> None:
    enrolled = _enrolled(tmp_path)
    request = pki.load_enrolment_request(enrolled.request_path)
    identity = _identity_private_key(enrolled.participant, "hospital-a")
    someone_else = ed25519.Ed25519PrivateKey.generate()
    their_raw = someone_else.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    bad_requests = {
        # Someone else's key put in after the participant made its proof.
        "swapped key": _with_field(
            enrolled.request_path, identity_key_ed25519=base64.urlsafe_b64encode(their_raw).decode()
        ),
        # Claiming a key the sender does not hold: its proof can only be made with its own key.
        "key the sender does not hold": _signed_request(request, identity, identity_public_key=their_raw),
        "short key": _signed_request(request, identity, identity_public_key=their_raw[:31]),
        "not base64": _with_field(enrolled.request_path, identity_key_ed25519="%%%"),
        "not a string": _with_field(enrolled.request_path, identity_key_ed25519=7),
        "no proof": _with_field(enrolled.request_path, identity_proof_ed25519=""),
        # The identity point as key, and the one proof OpenSSL's check takes under it for any
        # request: R = identity, S = 0 (tests/secagg/test_keys.py).
        "small-order key": _with_field(
            enrolled.request_path,
            identity_key_ed25519=base64.urlsafe_b64encode(SMALL_ORDER_KEY).decode(),
            identity_proof_ed25519=base64.urlsafe_b64encode(SMALL_ORDER_KEY + bytes(32)).decode(),
        ),
    }
    for label, data in bad_requests.items():
        with pytest.raises(pki.PkiError, match="identity|base64") as info:
            pki.issue(enrolled.operator, "participant", "hospital-a", request=data)
        assert "\n" not in str(info.value), label
    with pytest.raises(pki.PkiError, match="must be Ed25519"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            csr=request.csr_pem,
            identity_public_key=_public_der(ec.generate_private_key(ec.SECP256R1())),
            organisation="st-marys",
        )
    with pytest.raises(pki.PkiError, match="prime-order subgroup"):
        pki.issue(
            enrolled.operator,
            "participant",
            "hospital-a",
            csr=request.csr_pem,
            identity_public_key=SMALL_ORDER_KEY,
            organisation="st-marys",
        )
    assert not enrolled.operator.tls_cert("participant", "hospital-a").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="fedmask-enrolment-request/9"), "not an enrolment request"),
        (lambda d: d.update(extra="x"), "unexpected or missing fields"),
        (lambda d: d.pop("organisation"), "unexpected or missing fields"),
        (lambda d: d.update(organisation="St Marys"), "invalid organisation"),
        (lambda d: d.update(name=["hospital-a"]), "must be strings"),
        (lambda d: d.update(csr="x" * 70_000), "too large"),
    ],
)
def test_malformed_requests_are_refused(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    enrolled = _enrolled(tmp_path)
    document = json.loads(enrolled.request_path.read_text())
    change(document)
    with pytest.raises(pki.PkiError, match=message):
        pki.issue(enrolled.operator, "participant", "hospital-a", request=json.dumps(document).encode())
    with pytest.raises(pki.PkiError, match="not valid JSON"):
        pki.load_enrolment_request(b"\xff{")
    with pytest.raises(pki.PkiError, match="cannot read"):
        pki.load_enrolment_request(tmp_path / "missing.json")


def test_issuing_a_participant_without_a_request_or_the_flag_is_refused(fresh: Federation) -> None:
    before = fresh.paths.roster.read_bytes()
    with pytest.raises(pki.PkiError) as info:
        pki.issue(fresh.paths, "participant", "clinic", valid_days=10)
    message = str(info.value)
    assert "\n" not in message
    assert "needs an enrolment request" in message and "fedmask participant enrol" in message
    assert "--operator-generates-keys" in message and "demos and tests only" in message
    assert fresh.paths.roster.read_bytes() == before
    assert not fresh.paths.tls_cert("participant", "clinic").parent.exists()
    issued = pki.issue(fresh.paths, "participant", "clinic", valid_days=10, operator_generates_keys=True)
    assert issued.key_path is not None and issued.identity_key_path is not None and issued.organisation == "clinic"
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600


def test_a_request_replaces_keys_the_operator_made_and_keeps_matching_ones(fresh: Federation, tmp_path: Path) -> None:
    pki.issue(fresh.paths, "participant", "clinic", valid_days=10, operator_generates_keys=True)
    request = pki.enrol(tmp_path / "clinic", "clinic", organisation="clinic")
    pki.issue(fresh.paths, "participant", "clinic", request=request, force=True, valid_days=10)
    # The operator's copies of the old keys no longer match the roster: gone.
    assert not fresh.paths.tls_key("participant", "clinic").exists()
    assert not fresh.paths.identity_key("clinic").exists()
    # Enrolled in the operator's own directory (one machine): the keys match and stay.
    _enrol_and_issue(fresh.paths, "bank", organisation="acme-bank", force=True)
    assert fresh.paths.tls_key("participant", "bank").exists() and fresh.paths.identity_key("bank").exists()
    assert (
        pki.identity_from_peer_cert(
            fresh.material("participant", "bank").cert_chain, fresh.ca_cert, roster=fresh.roster()
        )
        == "bank"
    )


def test_one_identity_key_cannot_be_enrolled_under_two_names(fresh: Federation, tmp_path: Path) -> None:
    bank = pki.load_enrolment_request(fresh.paths.enrolment_request("bank"))
    request = pki.load_enrolment_request(pki.enrol(tmp_path / "bank-2", "bank-2", organisation="acme-bank"))
    with pytest.raises(pki.PkiError, match="already enrolled as 'bank'"):
        pki.issue(
            fresh.paths,
            "participant",
            "bank-2",
            csr=request.csr_pem,
            identity_public_key=bank.identity_public_key,
            organisation="acme-bank",
        )


# --------------------------------------------------------------------------------------------
# Organisations and the roster's fingerprint


def test_roster_records_organisations_and_a_stable_fingerprint(fresh: Federation) -> None:
    roster = fresh.roster()
    assert roster.document_format == "fedmask-roster/2"
    assert dict(roster.organisations()) == {"bank": "acme-bank", "hospital-a": "st-marys"}
    assert roster.entries["bank"].organisation == "acme-bank"
    data = fresh.paths.roster.read_bytes()
    assert json.loads(data)["participants"]["bank"]["organisation"] == "acme-bank"
    assert roster.fingerprint() == hashlib.sha256(data).hexdigest() == fresh.roster().fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", roster.fingerprint())
    with pytest.raises(TypeError):
        roster.organisations()["bank"] = "other"  # type: ignore[index]
    # Every change moves the fingerprint and the version: a new member, a re-issue, a removal.
    history = [roster]
    _enrol_and_issue(fresh.paths, "clinic", organisation="st-marys")
    history.append(fresh.roster())
    _enrol_and_issue(fresh.paths, "clinic", organisation="st-marys", force=True)
    history.append(fresh.roster())
    pki.remove_participant(fresh.paths, "clinic")
    history.append(fresh.roster())
    assert [r.version for r in history] == [roster.version + i for i in range(4)]
    assert len({r.fingerprint() for r in history}) == 4


def test_minting_a_sybil_changes_the_roster_fingerprint_and_version(fresh: Federation, tmp_path: Path) -> None:
    """The review's attack: whoever holds the CA key adds `sybil-1`, with keys it holds. It can
    sign any roster it likes, but not one with the same fingerprint: a participant that pinned
    the fingerprint (and version) it was handed sees the change."""
    handed_out = pki.export_participant(fresh.paths, "bank", tmp_path / "bank")
    pinned = pki.load_roster(tmp_path / "bank", fresh.ca_cert)
    issued = pki.issue(
        fresh.paths, "participant", "sybil-1", operator_generates_keys=True, organisation="st-marys", valid_days=10
    )
    minted = fresh.roster()
    assert issued.roster == minted and "sybil-1" in minted
    assert minted.version == pinned.version + 1
    assert minted.fingerprint() != pinned.fingerprint()
    # The sybil claims an existing organisation: the roster says so, and names who vouches (the CA).
    assert minted.organisations()["sybil-1"] == "st-marys"
    # The participant's own copy is unchanged until the operator sends the new roster.
    assert pki.load_roster(tmp_path / "bank", fresh.ca_cert).fingerprint() == pinned.fingerprint()
    assert len(handed_out) == 4


def test_a_version_1_roster_still_loads_and_is_upgraded_by_the_next_change(fresh: Federation) -> None:
    current = fresh.roster()
    document = json.loads(fresh.paths.roster.read_bytes())
    document["format"] = "fedmask-roster/1"
    for fields in document["participants"].values():
        del fields["organisation"]
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    signature = _ca_key(fresh).sign(b"fedmask roster signature v1\x00" + data, ec.ECDSA(hashes.SHA256()))
    fresh.paths.roster.write_bytes(data)
    fresh.paths.roster_signature.write_bytes(base64.b64encode(signature) + b"\n")

    old = fresh.roster()
    assert old.document_format == "fedmask-roster/1" and old.version == current.version
    assert dict(old.organisations()) == {"bank": "bank", "hospital-a": "hospital-a"}
    assert old.identity_keys == current.identity_keys and old.fingerprints == current.fingerprints
    assert old.fingerprint() == hashlib.sha256(data).hexdigest() != current.fingerprint()
    # A version 1 document with an organisation field is not version 1.
    document["participants"]["bank"]["organisation"] = "acme-bank"
    fresh.paths.roster.write_bytes(json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(pki.RosterError):
        fresh.roster()
    fresh.paths.roster.write_bytes(data)

    _enrol_and_issue(fresh.paths, "clinic", organisation="st-marys")
    upgraded = fresh.roster()
    assert upgraded.document_format == "fedmask-roster/2" and upgraded.version == old.version + 1
    assert dict(upgraded.organisations()) == {"bank": "bank", "clinic": "st-marys", "hospital-a": "hospital-a"}


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _with_version(data: bytes, version: int) -> bytes:
    document = json.loads(data)
    document["version"] = version
    return _canonical(document)


def _with_entry_field(data: bytes, field: str, value: object) -> bytes:
    document = json.loads(data)
    document["participants"]["bank"][field] = value
    return _canonical(document)


def _with_top_field(data: bytes, field: str, value: object) -> bytes:
    document = json.loads(data)
    document[field] = value
    return _canonical(document)


# Each document is signed by the federation's own CA: what is refused is what it says, so a CA
# tool's bug or a hand-made roster cannot give two readers two meanings or a malformed member.
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: _with_entry_field(data, "organisation", "Acme Bank"), "invalid organisation"),
        # The same key twice: JSON readers disagree on which one counts.
        (lambda data: data.replace(b'"version":', b'"version":99,"version":', 1), "duplicate keys"),
        (lambda data: _with_version(data, 0), "positive integer"),
        (lambda data: _with_version(data, True), "positive integer"),
        (lambda data: json.dumps(json.loads(data), sort_keys=True, indent=1).encode() + b"\n", "canonical form"),
        (lambda data: _with_entry_field(data, "tls_cert_sha256", "AB" * 32), "invalid certificate fingerprint"),
        (lambda data: _with_entry_field(data, "tls_cert_sha256", "ab" * 31), "invalid certificate fingerprint"),
        (lambda data: _with_top_field(data, "comment", "x"), "unexpected or missing fields"),
    ],
)
def test_a_malformed_roster_is_refused_even_when_signed_by_the_ca(fresh: Federation, change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = change(fresh.paths.roster.read_bytes())
    signature = _ca_key(fresh).sign(b"fedmask roster signature v1\x00" + data, ec.ECDSA(hashes.SHA256()))
    fresh.paths.roster.write_bytes(data)
    fresh.paths.roster_signature.write_bytes(base64.b64encode(signature) + b"\n")
    with pytest.raises(pki.RosterError, match=message) as info:
        fresh.roster()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Files, names, re-initialisation


def test_private_files_are_0600_and_writes_leave_no_temporaries(tmp_path: Path) -> None:
    previous = os.umask(0)  # permissions must not depend on the caller's umask
    try:
        fed = _make_federation(tmp_path / "federation", "perm")
        pki.issue_token(fed.paths, "bank")
    finally:
        os.umask(previous)
    private = [
        fed.paths.ca_key,
        fed.paths.tls_key("coordinator", "main"),
        fed.paths.tls_key("participant", "bank"),
        fed.paths.identity_key("bank"),
        fed.paths.tokens,
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (fed.paths.ca_cert, fed.paths.roster, fed.paths.tls_cert("participant", "bank")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(fed.paths.ca_key.parent.stat().st_mode) == 0o700
    assert not [p for p in fed.paths.root.rglob("*.tmp")]
    assert (fed.paths.root / ".gitignore").read_text().splitlines()[-1] == "*"


@pytest.mark.parametrize("name", ["", "-a", "Hospital", "a_b", "a.b", "a" * 64, "a\n", "../x", "é"])
def test_invalid_names_are_refused(fresh: Federation, name: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid name"):
        pki.issue(fresh.paths, "participant", name)


def test_init_refuses_to_replace_a_ca_unless_forced(fresh: Federation) -> None:
    old_ca = fresh.paths.ca_cert.read_bytes()
    with pytest.raises(pki.PkiError, match="already has a CA"):
        pki.init_federation(fresh.paths.root, federation_name="scratch")
    pki.init_federation(fresh.paths.root, federation_name="scratch", force=True)
    assert fresh.paths.ca_cert.read_bytes() != old_ca
    new_ca = pki.load_ca_certificate(fresh.paths)
    assert pki.load_roster(fresh.paths.roster, new_ca).names == ()
    with pytest.raises(pki.PeerIdentityError):
        pki.identity_from_peer_cert(fresh.paths.tls_cert("participant", "bank").read_bytes(), new_ca)
    with pytest.raises(pki.PkiError, match="not issued by the federation CA it holds"):
        fresh.material("participant", "bank")  # refused where it is held, before any connection


def test_issue_needs_an_initialised_directory(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="does not exist"):
        pki.issue(tmp_path / "nowhere", "participant", "bank")
    with pytest.raises(pki.PkiError, match="no federation CA"):
        pki.issue(tmp_path, "participant", "bank")


# --------------------------------------------------------------------------------------------
# Enrolment tokens


def test_tokens_verify_only_for_their_name_and_are_stored_hashed(fresh: Federation) -> None:
    token = pki.issue_token(fresh.paths, "bank")
    assert len(token) == 43 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert pki.verify_token(fresh.paths, "bank", token)
    assert not pki.verify_token(fresh.paths, "hospital-a", token)
    assert not pki.verify_token(fresh.paths, "bank", token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not pki.verify_token(fresh.paths, "bank", "")
    assert not pki.verify_token(fresh.paths, "nobody", token)
    assert token not in fresh.paths.tokens.read_text()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert not pki.verify_token(fresh.paths, "bank", token, now=later)
    replacement = pki.issue_token(fresh.paths, "bank")
    assert replacement != token
    assert pki.verify_token(fresh.paths, "bank", replacement) and not pki.verify_token(fresh.paths, "bank", token)
    with pytest.raises(pki.PkiError, match="not enrolled"):
        pki.issue_token(fresh.paths, "nobody")


def test_no_secret_reaches_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=pki.__name__)  # the join command quietens this logger
    fed = _make_federation(tmp_path / "federation", "quiet")
    token = pki.issue_token(fed.paths, "bank")
    assert caplog.records, "expected informational log lines"
    text = caplog.text
    assert token not in text and "PRIVATE KEY" not in text
    for key_path in (
        fed.paths.ca_key,
        fed.paths.tls_key("participant", "bank"),
        fed.paths.identity_key("bank"),
    ):
        body = "".join(key_path.read_text().splitlines()[1:-1])
        assert body[:24] not in text


def test_insecure_warning_is_loud(capsys: pytest.CaptureFixture[str]) -> None:
    pki.warn_insecure("participant")
    err = capsys.readouterr().err
    assert err.startswith("WARNING: --insecure") and "plaintext" in err


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_init_issue_token_show(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = str(tmp_path / "fed")
    result = runner.invoke(pki_command, ["init", "--dir", directory, "--name", "clinics", "--days", "60"])
    assert result.exit_code == 0, result.output
    assert "initialised" in result.output and "ca.pem" in result.output

    result = runner.invoke(
        pki_command,
        [
            "issue",
            "coordinator",
            "main",
            "--dir",
            directory,
            "--host",
            "coord.internal",
            "--host",
            "10.0.0.7",
            "--days",
            "30",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        pki_command,
        ["issue", "participant", "hospital-a", "--dir", directory, "--days", "30", "--operator-generates-keys"],
    )
    assert result.exit_code == 0, result.output
    assert "identity.key" in result.output and "can act as hospital-a" in result.output

    result = runner.invoke(pki_command, ["token", "hospital-a", "--dir", directory])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert pki.verify_token(directory, "hospital-a", token)

    result = runner.invoke(pki_command, ["show", "--dir", directory])
    assert result.exit_code == 0, result.output
    assert "signature OK" in result.output
    assert "hospital-a" in result.output and "coord.internal, 10.0.0.7" in result.output
    roster = pki.load_roster(directory, pki.load_ca_certificate(directory))
    assert f"roster sha256 {roster.fingerprint()}" in result.output
    assert "organisation hospital-a" in result.output  # the flag's default: the name
    assert token not in result.output

    result = runner.invoke(pki_command, ["revoke", "hospital-a", "--dir", directory])
    assert result.exit_code == 0, result.output
    assert "participants: 0" in runner.invoke(pki_command, ["show", "--dir", directory]).output


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = str(tmp_path / "fed")
    result = runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory])
    assert result.exit_code == 1 and "does not exist" in result.output and "pki init" in result.output
    (tmp_path / "fed").mkdir()
    result = runner.invoke(pki_command, ["show", "--dir", directory])
    assert result.exit_code == 1 and "no federation CA" in result.output

    assert runner.invoke(pki_command, ["init", "--dir", directory]).exit_code == 0
    result = runner.invoke(pki_command, ["init", "--dir", directory])
    assert result.exit_code == 1 and "--force" in result.output
    assert runner.invoke(pki_command, ["init", "--dir", directory, "--force"]).exit_code == 0

    result = runner.invoke(pki_command, ["issue", "participant", "Bank!", "--dir", directory])
    assert result.exit_code == 1 and "invalid name" in result.output
    result = runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory, "--host", "x"])
    assert result.exit_code == 2 and "coordinator certificates only" in result.output
    result = runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory])
    assert (
        result.exit_code == 1 and "participant enrol" in result.output and "--operator-generates-keys" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1
    request = str(pki.enrol(tmp_path / "bank", "bank", organisation="acme-bank"))
    issue_bank = ["issue", "participant", "bank", "--dir", directory, "--request", request]
    assert runner.invoke(pki_command, issue_bank).exit_code == 0
    result = runner.invoke(pki_command, issue_bank)
    assert result.exit_code == 1 and "--force" in result.output
    assert runner.invoke(pki_command, [*issue_bank, "--force"]).exit_code == 0
    result = runner.invoke(pki_command, [*issue_bank, "--force", "--organisation", "other-bank"])
    assert result.exit_code == 1 and "gives organisation 'acme-bank'" in result.output
    result = runner.invoke(pki_command, [*issue_bank, "--operator-generates-keys"])
    assert result.exit_code == 2 and "--request excludes" in result.output
    result = runner.invoke(pki_command, ["issue", "coordinator", "main", "--dir", directory, "--request", request])
    assert result.exit_code == 2 and "participants only" in result.output
    assert "Traceback" not in result.output


def test_cli_default_directory_is_federation_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDMASK_PKI_DIR", raising=False)
    result = CliRunner().invoke(pki_command, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "federation" / "ca" / "ca.pem").is_file()
    assert str((tmp_path / "federation").resolve()) in result.output


# --------------------------------------------------------------------------------------------
# gRPC accepts the certificates (the proof that the formats suit BoringSSL)

_WHOAMI = "/fedmask.test.Identity/WhoAmI"


@pytest.fixture()
def grpc_server(federation: Federation):  # type: ignore[no-untyped-def]
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

    roster = federation.roster()

    def whoami(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        pem = context.auth_context()["x509_pem_cert"][0]
        try:
            return pki.identity_from_peer_cert(pem, federation.ca_cert, roster=roster).encode()
        except pki.PeerIdentityError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "fedmask.test.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    material = federation.material("coordinator", "main")
    credentials = grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)],
        root_certificates=material.ca_cert,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _grpc_call(target: str, credentials, method: str):  # type: ignore[no-untyped-def]
    import grpc
    from grpc_health.v1 import health_pb2

    with grpc.secure_channel(target, credentials) as channel:
        if method == "health":
            stub = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            return (
                stub(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        return channel.unary_unary(_WHOAMI)(b"", timeout=5).decode()


def test_grpc_mutual_tls_with_issued_certificates(grpc_server: str, federation: Federation) -> None:
    import grpc

    mine = federation.material("participant", "hospital-a")
    credentials = grpc.ssl_channel_credentials(mine.ca_cert, mine.private_key, mine.cert_chain)
    assert _grpc_call(grpc_server, credentials, "health") is True
    assert _grpc_call(grpc_server, credentials, "whoami") == "hospital-a"


def test_grpc_refuses_clients_without_a_federation_certificate(
    grpc_server: str, federation: Federation, foreign: Federation
) -> None:
    import grpc

    ca = federation.ca_cert.public_bytes(serialization.Encoding.PEM)
    alien = foreign.material("participant", "hospital-a")
    coordinator = federation.material("coordinator", "main")
    for credentials in (
        grpc.ssl_channel_credentials(ca),  # no client certificate
        grpc.ssl_channel_credentials(ca, alien.private_key, alien.cert_chain),  # another CA
        grpc.ssl_channel_credentials(ca, coordinator.private_key, coordinator.cert_chain),  # wrong role
    ):
        with pytest.raises(grpc.RpcError) as info:
            _grpc_call(grpc_server, credentials, "whoami")
        # Refused in the TLS handshake itself (the coordinator cert lacks the clientAuth EKU).
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_identity_comes_from_the_certificate_not_the_claim(grpc_server: str, federation: Federation) -> None:
    """A CA-signed cert whose CN claims 'hospital-a' but whose URI says 'bank' passes TLS, yet
    yields no identity: the server answers PERMISSION_DENIED instead of trusting either name."""
    import grpc

    cert_pem, key_pem = _forge_leaf_with_key(federation, common_name="hospital-a", uri="urn:fedmask:participant:bank")
    ca = federation.ca_cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(grpc.RpcError) as info:
        _grpc_call(grpc_server, grpc.ssl_channel_credentials(ca, key_pem, cert_pem), "whoami")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "CN does not match" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("data", "form"),
    [
        (b"\x93NUMPY\x01\x00 not a CSR", "read as DER: no PEM header"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "read as PEM"),
    ],
)
def test_a_csr_that_does_not_parse_is_refused_in_plain_words(data: bytes, form: str) -> None:
    """The operator is told how the file was read, not shown the parser's internal dump."""
    with pytest.raises(pki.PkiError) as refused:
        pki.verify_csr(data, "hospital-a")
    message = str(refused.value)
    assert message.startswith("not a valid certificate signing request: ") and message.endswith(f"({form})")
    assert "ParseError" not in message and "{" not in message

"""Federation PKI: chains, real TLS handshakes (ssl and gRPC), identities, roster, tokens, CLI."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

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


def _make_federation(directory: Path, federation_name: str) -> Federation:
    paths = pki.init_federation(directory, federation_name=federation_name, valid_days=30)
    pki.issue(directory, "coordinator", "main", valid_days=10)
    pki.issue(directory, "participant", "hospital-a", valid_days=10)
    pki.issue(directory, "participant", "bank", valid_days=10)
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
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.issue(fresh.paths, "participant", "bank", valid_days=10)
    pki.issue(fresh.paths, "participant", "bank", force=True, valid_days=10)
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
    issued = pki.issue(fresh.paths, "participant", "clinic", identity_public_key=public_pem, valid_days=10)
    assert issued.identity_key_path is None and not fresh.paths.identity_key("clinic").exists()
    fresh.roster().identity_key("clinic").verify(own.sign(b"m"), b"m")
    with pytest.raises(pki.PkiError, match="Ed25519"):
        pki.issue(
            fresh.paths,
            "participant",
            "clinic2",
            identity_public_key=ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            valid_days=10,
        )


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
        pki.identity_from_peer_cert(fresh.material("participant", "bank").cert_chain, new_ca)


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
    result = runner.invoke(pki_command, ["issue", "participant", "hospital-a", "--dir", directory, "--days", "30"])
    assert result.exit_code == 0, result.output
    assert "identity.key" in result.output

    result = runner.invoke(pki_command, ["token", "hospital-a", "--dir", directory])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert pki.verify_token(directory, "hospital-a", token)

    result = runner.invoke(pki_command, ["show", "--dir", directory])
    assert result.exit_code == 0, result.output
    assert "signature OK" in result.output
    assert "hospital-a" in result.output and "coord.internal, 10.0.0.7" in result.output
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
    assert runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory]).exit_code == 0
    result = runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory])
    assert result.exit_code == 1 and "--force" in result.output
    assert runner.invoke(pki_command, ["issue", "participant", "bank", "--dir", directory, "--force"]).exit_code == 0
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

"""Federation PKI: the CA, TLS certificates, the signed roster of identity keys, enrolment tokens.

Everything here is generated at run time into a *federation directory* (default ``./federation``)
and must never be committed. Layout::

    federation/
      ca/ca.key                       0600  CA private key (ECDSA P-256). Keep it with the
                                            federation operator, off the coordinator host: in
                                            malicious-coordinator mode whoever holds it can
                                            rewrite the roster.
      ca/ca.pem                             CA certificate: the trust anchor everyone gets.
      coordinator/NAME.key            0600  coordinator TLS key (ECDSA P-256)
      coordinator/NAME.pem                  coordinator TLS certificate (serverAuth, DNS/IP SANs)
      participants/NAME/tls.key       0600  participant TLS key (ECDSA P-256)
      participants/NAME/tls.pem             participant TLS certificate (clientAuth)
      participants/NAME/identity.key  0600  Ed25519 identity key (absent when the participant
                                            supplied its own public key)
      roster.json                           canonical JSON: name -> Ed25519 public key, TLS cert
                                            fingerprint, expiry; plus federation name and version
      roster.sig                            base64 CA signature over roster.json
      tokens.json                     0600  enrolment-token hashes (never the tokens)
      .lock                                 serialises concurrent ``issue``/``token`` runs
      .gitignore                            ``*``: git ignores the whole directory

Identity scheme: a certificate names its holder three ways that must agree -- subject CN = NAME,
and exactly one URI SAN ``urn:fedmask:<role>:<NAME>`` where role is ``participant`` or
``coordinator``. Participant certificates carry only the clientAuth EKU, coordinator certificates
only serverAuth, so neither can stand in for the other. A participant's id in the protocol is the
NAME taken from its verified certificate (``identity_from_peer_cert``), never a claimed field.

Names match ``[a-z0-9][a-z0-9-]{0,62}`` (a DNS label, lower case).

Private key files are written 0600 through a temporary file and ``os.replace``, so a reader never
sees a partial key and a key never exists with wider permissions. No function here logs a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple, TextIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "DEFAULT_COORDINATOR_HOSTS",
    "NAME_PATTERN",
    "FederationPaths",
    "IssuedCertificate",
    "PeerIdentityError",
    "PkiError",
    "Role",
    "Roster",
    "RosterEntry",
    "RosterError",
    "TlsMaterial",
    "certificate_fingerprint",
    "identity_from_peer_cert",
    "identity_uri",
    "init_federation",
    "insecure_warning",
    "issue",
    "issue_token",
    "load_ca_certificate",
    "load_identity_key",
    "load_roster",
    "load_tls_material",
    "remove_participant",
    "verify_token",
    "warn_insecure",
]

log = logging.getLogger(__name__)

Role = Literal["coordinator", "participant"]
ROLES: tuple[Role, ...] = ("coordinator", "participant")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_COORDINATOR_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_CA_DAYS = 1825
DEFAULT_LEAF_DAYS = 365
DEFAULT_TOKEN_DAYS = 7

_URI_PREFIX = "urn:fedmask:"
_ROSTER_FORMAT = "fedmask-roster/1"
# Prepended to the roster bytes before signing, so a roster signature can never be mistaken for
# a signature over anything else the CA key signs (certificates).
_ROSTER_SIGNATURE_CONTEXT = b"fedmask roster signature v1\x00"
# Tolerate small clock differences between the issuing host and the peers.
_BACKDATE = dt.timedelta(minutes=5)
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class PkiError(Exception):
    """A PKI operation could not be done; the message says why and what to do."""


class RosterError(PkiError):
    """The roster is missing, malformed, or its CA signature does not verify."""


class PeerIdentityError(PkiError):
    """A peer certificate does not establish a valid participant identity."""


# --------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class FederationPaths:
    """Where each file of a federation directory lives (see the module docstring)."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def roster(self) -> Path:
        return self.root / "roster.json"

    @property
    def roster_signature(self) -> Path:
        return self.root / "roster.sig"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def tls_key(self, role: Role, name: str) -> Path:
        if role == "coordinator":
            return self.root / "coordinator" / f"{name}.key"
        return self.root / "participants" / name / "tls.key"

    def tls_cert(self, role: Role, name: str) -> Path:
        if role == "coordinator":
            return self.root / "coordinator" / f"{name}.pem"
        return self.root / "participants" / name / "tls.pem"

    def identity_key(self, name: str) -> Path:
        return self.root / "participants" / name / "identity.key"


def _paths(directory: str | os.PathLike[str] | FederationPaths) -> FederationPaths:
    if isinstance(directory, FederationPaths):
        return directory
    return FederationPaths(Path(directory))


def _require_ca(paths: FederationPaths) -> None:
    if not paths.root.is_dir():
        raise PkiError(
            f"federation directory {paths.root} does not exist: run `fedmask pki init --dir {paths.root}` first"
        )
    if not paths.ca_cert.is_file():
        raise PkiError(f"no federation CA in {paths.root}: run `fedmask pki init --dir {paths.root}` first")


# --------------------------------------------------------------------------------------------
# Files


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename; 0600 if ``private`` else 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so a private key is never readable by others, even briefly.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600 if private else 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@contextlib.contextmanager
def _locked(paths: FederationPaths) -> Iterator[None]:
    """Serialise read-modify-write of the roster and token store between processes."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _private_key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    # Unencrypted PKCS#8: gRPC's credential constructors accept no passphrase.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read_private_key(path: Path) -> bytes:
    if not path.is_file():
        raise PkiError(f"private key {path} not found")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("private key %s has mode %o; it should be 0600 (chmod 600 %s)", path, mode, path)
    return path.read_bytes()


# --------------------------------------------------------------------------------------------
# Names and certificates


def _check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise PkiError(
            f"invalid {what} {name!r}: use 1-63 characters from a-z, 0-9 and '-', starting with a letter or digit"
        )
    return name


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise PkiError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def identity_uri(role: Role, name: str) -> str:
    """The URI SAN that names ``name`` in ``role``: ``urn:fedmask:<role>:<name>``."""
    return f"{_URI_PREFIX}{_check_role(role)}:{_check_name(name)}"


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_certificate(cert: x509.Certificate | bytes | str) -> x509.Certificate:
    """Accept a parsed certificate, PEM (bytes or str; first block is used) or DER bytes."""
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        data = cert.encode("ascii") if isinstance(cert, str) else bytes(cert)
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"not a valid X.509 certificate: {exc}") from exc


def load_ca_certificate(directory: str | os.PathLike[str] | FederationPaths) -> x509.Certificate:
    """The federation's CA certificate from ``ca/ca.pem``."""
    paths = _paths(directory)
    _require_ca(paths)
    return x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())


def _load_ca_key(paths: FederationPaths) -> ec.EllipticCurvePrivateKey:
    if not paths.ca_key.is_file():
        raise PkiError(
            f"CA private key {paths.ca_key} not found: issuing needs the CA key (run on the operator's machine)"
        )
    key = serialization.load_pem_private_key(_read_private_key(paths.ca_key), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{paths.ca_key} is not an ECDSA key")
    return key


def _subject(federation: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedmask federation {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _federation_of(ca_cert: x509.Certificate) -> str:
    organisation = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    prefix = "fedmask federation "
    if organisation and str(organisation[0].value).startswith(prefix):
        return str(organisation[0].value)[len(prefix) :]
    raise PkiError("the CA certificate was not made by `fedmask pki init`")


def _parse_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        dns = host.strip().lower()
        if _DNS_NAME.fullmatch(dns) is None:
            raise PkiError(f"invalid coordinator host {host!r}: expected a DNS name or an IP address")
        names.append(x509.DNSName(dns))
    if not names:
        raise PkiError("a coordinator certificate needs at least one host (DNS name or IP address)")
    return names


# --------------------------------------------------------------------------------------------
# Roster


@dataclass(frozen=True)
class RosterEntry:
    """One enrolled participant: its Ed25519 identity public key and current TLS certificate."""

    name: str
    identity_public_key: bytes  # raw 32-byte Ed25519 public key
    tls_cert_sha256: str  # hex SHA-256 of the DER certificate
    tls_not_after: str  # ISO 8601, UTC

    def identity_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.identity_public_key)


@dataclass(frozen=True)
class Roster:
    """The CA-signed list of enrolled participants. Immutable; obtain it from ``load_roster``."""

    federation: str
    version: int
    entries: Mapping[str, RosterEntry] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.entries))

    @property
    def identity_keys(self) -> Mapping[str, bytes]:
        return MappingProxyType({n: e.identity_public_key for n, e in self.entries.items()})

    @property
    def fingerprints(self) -> Mapping[str, str]:
        return MappingProxyType({n: e.tls_cert_sha256 for n, e in self.entries.items()})

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def identity_key(self, name: str) -> ed25519.Ed25519PublicKey:
        """The enrolled Ed25519 public key of ``name``; RosterError if not enrolled."""
        entry = self.entries.get(name)
        if entry is None:
            raise RosterError(f"participant {name!r} is not in the roster")
        return entry.identity_key()


def _roster_document(roster: Roster) -> dict[str, object]:
    return {
        "format": _ROSTER_FORMAT,
        "federation": roster.federation,
        "version": roster.version,
        "participants": {
            entry.name: {
                "identity_key_ed25519": base64.urlsafe_b64encode(entry.identity_public_key).decode("ascii"),
                "tls_cert_sha256": entry.tls_cert_sha256,
                "tls_not_after": entry.tls_not_after,
            }
            for entry in roster.entries.values()
        },
    }


def _canonical_json(document: object) -> bytes:
    # One encoding per document: sorted keys, no whitespace, ASCII only, trailing newline.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise RosterError("roster has duplicate keys")
    return dict(pairs)


def _parse_roster(data: bytes) -> Roster:
    try:
        document = json.loads(data.decode("ascii"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RosterError(f"roster is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _ROSTER_FORMAT:
        raise RosterError(f"roster format is not {_ROSTER_FORMAT}")
    if set(document) != {"format", "federation", "version", "participants"}:
        raise RosterError("roster has unexpected or missing fields")
    version = document["version"]
    federation = document["federation"]
    participants = document["participants"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RosterError("roster version must be a positive integer")
    if not isinstance(federation, str) or not isinstance(participants, dict):
        raise RosterError("roster federation or participants field has the wrong type")
    entries: dict[str, RosterEntry] = {}
    for name, fields in participants.items():
        if NAME_PATTERN.fullmatch(name) is None:
            raise RosterError(f"roster entry has an invalid name {name!r}")
        if not isinstance(fields, dict) or set(fields) != {
            "identity_key_ed25519",
            "tls_cert_sha256",
            "tls_not_after",
        }:
            raise RosterError(f"roster entry {name!r} has unexpected or missing fields")
        try:
            public_key = base64.urlsafe_b64decode(fields["identity_key_ed25519"])
            ed25519.Ed25519PublicKey.from_public_bytes(public_key)
        except (TypeError, ValueError, binascii.Error) as exc:
            raise RosterError(f"roster entry {name!r} has an invalid Ed25519 key") from exc
        fingerprint = fields["tls_cert_sha256"]
        if not isinstance(fingerprint, str) or re.fullmatch(r"[0-9a-f]{64}", fingerprint) is None:
            raise RosterError(f"roster entry {name!r} has an invalid certificate fingerprint")
        if not isinstance(fields["tls_not_after"], str):
            raise RosterError(f"roster entry {name!r} has an invalid expiry")
        entries[name] = RosterEntry(name, public_key, fingerprint, fields["tls_not_after"])
    roster = Roster(federation, version, MappingProxyType(entries))
    if _canonical_json(_roster_document(roster)) != data:
        raise RosterError("roster is not in canonical form")
    return roster


def _write_roster(paths: FederationPaths, roster: Roster, ca_key: ec.EllipticCurvePrivateKey) -> None:
    data = _canonical_json(_roster_document(roster))
    signature = ca_key.sign(_ROSTER_SIGNATURE_CONTEXT + data, ec.ECDSA(hashes.SHA256()))
    # Signature first: a crash in between leaves a roster that fails verification loudly rather
    # than an old signature that happens to match.
    _write_atomic(paths.roster_signature, base64.b64encode(signature) + b"\n", private=False)
    _write_atomic(paths.roster, data, private=False)


def load_roster(
    path: str | os.PathLike[str],
    ca_cert: x509.Certificate | bytes | str,
    *,
    signature_path: str | os.PathLike[str] | None = None,
) -> Roster:
    """Read ``roster.json`` (or a federation directory), verify its CA signature, return it.

    The signature is read from ``roster.sig`` next to the roster unless ``signature_path`` is
    given. Raises RosterError if anything is missing, malformed or not signed by ``ca_cert``.
    """
    roster_path = Path(path)
    if roster_path.is_dir():
        roster_path = roster_path / "roster.json"
    sig_path = Path(signature_path) if signature_path is not None else roster_path.with_name("roster.sig")
    try:
        data = roster_path.read_bytes()
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except FileNotFoundError as exc:
        raise RosterError(f"roster file missing: {exc.filename}") from exc
    except binascii.Error as exc:
        raise RosterError(f"roster signature {sig_path} is not base64") from exc
    ca_public_key = _as_certificate(ca_cert).public_key()
    if not isinstance(ca_public_key, ec.EllipticCurvePublicKey):
        raise RosterError("the CA certificate does not hold an ECDSA key")
    try:
        ca_public_key.verify(signature, _ROSTER_SIGNATURE_CONTEXT + data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise RosterError(f"roster {roster_path} is not signed by the federation CA (tampered or stale)") from exc
    # Only bytes that verified are parsed.
    return _parse_roster(data)


# --------------------------------------------------------------------------------------------
# Federation setup and issuance


def init_federation(
    directory: str | os.PathLike[str],
    *,
    federation_name: str = "fedmask",
    valid_days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> FederationPaths:
    """Create the federation CA (ECDSA P-256, self-signed) and an empty signed roster.

    Refuses to replace an existing CA unless ``force``; a forced re-init also empties the roster
    and the token store, since nothing issued under the old CA is trusted any more.
    """
    _check_name(federation_name, "federation name")
    if valid_days < 1:
        raise PkiError("--days must be at least 1")
    paths = _paths(directory)
    with _locked(paths):
        if (paths.ca_key.exists() or paths.ca_cert.exists()) and not force:
            raise PkiError(f"{paths.root} already has a CA; pass --force to replace it (invalidates every certificate)")
        _make_private_dir(paths.ca_key.parent)
        # Keys must never be committed, wherever the directory is created.
        _write_atomic(paths.root / ".gitignore", b"# generated by fedmask pki: never commit keys\n*\n", private=False)
        start = (now or _utcnow()) - _BACKDATE
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _subject(federation_name, f"{federation_name} federation CA")
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,  # the CA key also signs the roster
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_atomic(paths.ca_key, _private_key_pem(key), private=True)
        _write_atomic(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        with contextlib.suppress(FileNotFoundError):
            paths.tokens.unlink()
        _write_roster(paths, Roster(federation_name, 1), key)
    log.info("created federation CA %r in %s", federation_name, paths.root)
    return paths


@dataclass(frozen=True)
class IssuedCertificate:
    """What ``issue`` wrote: file locations and the certificate fingerprint."""

    role: Role
    name: str
    cert_path: Path
    key_path: Path
    identity_key_path: Path | None
    fingerprint: str
    not_after: dt.datetime


def _load_ed25519_public_key(data: bytes) -> bytes:
    """Raw 32 bytes from a PEM/DER SubjectPublicKeyInfo or raw 32-byte Ed25519 public key."""
    if len(data) == 32:
        ed25519.Ed25519PublicKey.from_public_bytes(data)
        return data
    try:
        key = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else serialization.load_der_public_key(data)
        )
    except ValueError as exc:
        raise PkiError(f"not a valid Ed25519 public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PkiError("the identity public key must be Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def issue(
    directory: str | os.PathLike[str],
    role: Role,
    name: str,
    *,
    hosts: Iterable[str] = DEFAULT_COORDINATOR_HOSTS,
    valid_days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
    identity_public_key: bytes | None = None,
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    """Issue a TLS key and certificate for a coordinator or participant.

    Participants also get an Ed25519 identity key (unless ``identity_public_key`` -- PEM, DER or
    raw 32 bytes -- is given, so the private half never leaves the participant), and are entered
    in the roster, which is re-signed with the CA key. Existing names are refused unless
    ``force``; re-issuing replaces the roster entry, so the old certificate stops matching it.
    ``hosts`` (DNS names or IP addresses) only apply to coordinators.
    """
    role = _check_role(role)
    _check_name(name)
    if valid_days < 1:
        raise PkiError("--days must be at least 1")
    paths = _paths(directory)
    _require_ca(paths)
    with _locked(paths):
        ca_cert = load_ca_certificate(paths)
        ca_key = _load_ca_key(paths)
        roster = load_roster(paths.roster, ca_cert) if role == "participant" else None
        already = name in roster if roster is not None else paths.tls_cert(role, name).exists()
        if already and not force:
            raise PkiError(f"{role} {name!r} already exists in {paths.root}; pass --force to re-issue")

        start = (now or _utcnow()) - _BACKDATE
        not_after = start + dt.timedelta(days=valid_days)
        if not_after > ca_cert.not_valid_after_utc:
            raise PkiError(
                "the certificate would outlive the CA "
                f"(expires {ca_cert.not_valid_after_utc:%Y-%m-%d}): use fewer --days"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role, name))]
        if role == "coordinator":
            san = _parse_hosts(hosts) + san
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_subject(_federation_of(ca_cert), name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key_path, cert_path = paths.tls_key(role, name), paths.tls_cert(role, name)
        _make_private_dir(key_path.parent)
        identity_path: Path | None = None
        if role == "participant":
            assert roster is not None
            if identity_public_key is not None:
                public_raw = _load_ed25519_public_key(identity_public_key)
                # A stale private key would no longer match the roster: remove it.
                with contextlib.suppress(FileNotFoundError):
                    paths.identity_key(name).unlink()
            else:
                identity = ed25519.Ed25519PrivateKey.generate()
                public_raw = identity.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                identity_path = paths.identity_key(name)
                _write_atomic(identity_path, _private_key_pem(identity), private=True)
        _write_atomic(key_path, _private_key_pem(key), private=True)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)

        fingerprint = certificate_fingerprint(cert)
        if role == "participant":
            assert roster is not None
            entries = dict(roster.entries)
            entries[name] = RosterEntry(
                name, public_raw, fingerprint, cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            )
            updated = Roster(roster.federation, roster.version + 1, MappingProxyType(entries))
            _write_roster(paths, updated, ca_key)
    log.info("issued %s certificate for %r (sha256 %s)", role, name, fingerprint)
    return IssuedCertificate(role, name, cert_path, key_path, identity_path, fingerprint, cert.not_valid_after_utc)


def remove_participant(directory: str | os.PathLike[str], name: str) -> Roster:
    """Drop ``name`` from the roster and the token store; returns the re-signed roster.

    Its certificate still chains to the CA, so servers must check peers against the roster
    (``identity_from_peer_cert(..., roster=...)``) for the removal to take effect.
    """
    _check_name(name)
    paths = _paths(directory)
    _require_ca(paths)
    with _locked(paths):
        ca_key = _load_ca_key(paths)
        roster = load_roster(paths.roster, load_ca_certificate(paths))
        if name not in roster:
            raise PkiError(f"participant {name!r} is not in the roster")
        entries = {n: e for n, e in roster.entries.items() if n != name}
        updated = Roster(roster.federation, roster.version + 1, MappingProxyType(entries))
        _write_roster(paths, updated, ca_key)
        tokens = _load_tokens(paths)
        if tokens.pop(name, None) is not None:
            _write_atomic(paths.tokens, _canonical_json(tokens), private=True)
    log.info("removed participant %r from the roster (version %d)", name, updated.version)
    return updated


# --------------------------------------------------------------------------------------------
# Peer identity (server side of mTLS)


def _identity_from_sans(cert: x509.Certificate) -> tuple[str, str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PeerIdentityError("certificate has no subjectAltName") from exc
    uris = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith(_URI_PREFIX)]
    if len(uris) != 1:
        raise PeerIdentityError(f"certificate must carry exactly one {_URI_PREFIX}<role>:<name> URI, found {len(uris)}")
    role, _, name = uris[0][len(_URI_PREFIX) :].partition(":")
    return role, name


def identity_from_peer_cert(
    peer_cert: x509.Certificate | bytes | str,
    ca_cert: x509.Certificate | bytes | str,
    *,
    roster: Roster | None = None,
    now: dt.datetime | None = None,
) -> str:
    """The participant name proven by a client certificate, or PeerIdentityError.

    ``peer_cert`` is PEM (as in gRPC's ``auth_context()["x509_pem_cert"][0]``) or DER. Checks:
    the certificate chains to ``ca_cert`` and is valid now, is a client (clientAuth) leaf, names
    role participant, and its CN and URI name agree and are well-formed. With ``roster``, the
    name must be enrolled and the certificate must be the one the roster lists, which rejects
    certificates superseded by a re-issue.
    """
    try:
        leaf = _as_certificate(peer_cert)
        anchor = _as_certificate(ca_cert)
    except PkiError as exc:
        raise PeerIdentityError(str(exc)) from exc
    verifier = PolicyBuilder().store(Store([anchor])).time(now or _utcnow()).build_client_verifier()
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise PeerIdentityError(f"certificate is not a valid client certificate of this federation: {exc}") from exc

    role, name = _identity_from_sans(leaf)
    if role != "participant":
        raise PeerIdentityError(f"certificate belongs to a {role!r}, not a participant")
    if NAME_PATTERN.fullmatch(name) is None:
        raise PeerIdentityError(f"certificate names a malformed participant {name!r}")
    common_names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        raise PeerIdentityError("certificate CN does not match its participant URI")
    if roster is not None:
        entry = roster.entries.get(name)
        if entry is None:
            raise PeerIdentityError(f"participant {name!r} is not in the roster")
        if not hmac.compare_digest(entry.tls_cert_sha256, certificate_fingerprint(leaf)):
            raise PeerIdentityError(f"certificate of {name!r} is not the one in the roster (superseded?)")
    return name


# --------------------------------------------------------------------------------------------
# Enrolment tokens (one-way TLS option)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _load_tokens(paths: FederationPaths) -> dict[str, dict[str, str]]:
    try:
        store = json.loads(paths.tokens.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise PkiError(f"token store {paths.tokens} is corrupt") from exc
    if not isinstance(store, dict):
        raise PkiError(f"token store {paths.tokens} is corrupt")
    return store


def issue_token(
    directory: str | os.PathLike[str],
    name: str,
    *,
    valid_days: int = DEFAULT_TOKEN_DAYS,
    now: dt.datetime | None = None,
) -> str:
    """A fresh enrolment token for an enrolled participant; only its SHA-256 is stored.

    The token (32 random bytes, base64url) is returned once and replaces any earlier token of
    ``name``. It is high-entropy, so a plain SHA-256 suffices; a stolen store reveals no token.
    """
    _check_name(name)
    if valid_days < 1:
        raise PkiError("--days must be at least 1")
    paths = _paths(directory)
    _require_ca(paths)
    with _locked(paths):
        roster = load_roster(paths.roster, load_ca_certificate(paths))
        if name not in roster:
            raise PkiError(f"participant {name!r} is not enrolled: run `fedmask pki issue participant {name}` first")
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
        expires = (now or _utcnow()) + dt.timedelta(days=valid_days)
        store = _load_tokens(paths)
        store[name] = {"sha256": _token_digest(token), "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        _write_atomic(paths.tokens, _canonical_json(store), private=True)
    log.info("issued enrolment token for %r (expires %s)", name, store[name]["expires_at"])
    return token


def verify_token(
    directory: str | os.PathLike[str] | FederationPaths,
    name: str,
    token: str,
    *,
    now: dt.datetime | None = None,
) -> bool:
    """True iff ``token`` is the current, unexpired enrolment token of ``name``.

    The digest comparison is constant-time; unknown names still do one comparison.
    """
    record = _load_tokens(_paths(directory)).get(name) if isinstance(name, str) else None
    expected = record["sha256"] if record else "0" * 64
    candidate = _token_digest(token) if isinstance(token, str) else ""
    matches = hmac.compare_digest(expected, candidate)
    if not (record and matches):
        return False
    expires = dt.datetime.strptime(record["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return (now or _utcnow()) < expires


# --------------------------------------------------------------------------------------------
# Loaders for the gRPC layer


class TlsMaterial(NamedTuple):
    """PEM bytes in the shape gRPC's ``ssl_*_credentials`` take."""

    ca_cert: bytes  # root_certificates
    cert_chain: bytes  # certificate_chain
    private_key: bytes  # private_key


def load_tls_material(directory: str | os.PathLike[str] | FederationPaths, role: Role, name: str) -> TlsMaterial:
    """(CA cert, certificate chain, private key) PEM bytes of ``name`` in ``role``.

    Server: ``grpc.ssl_server_credentials([(m.private_key, m.cert_chain)], m.ca_cert, True)``.
    Client: ``grpc.ssl_channel_credentials(m.ca_cert, m.private_key, m.cert_chain)``.
    Never reads the CA private key.
    """
    role = _check_role(role)
    _check_name(name)
    paths = _paths(directory)
    _require_ca(paths)
    cert_path = paths.tls_cert(role, name)
    if not cert_path.is_file():
        raise PkiError(f"no {role} certificate for {name!r} in {paths.root}: run `fedmask pki issue {role} {name}`")
    # Leaves are issued directly by the root, so the chain is the leaf alone.
    return TlsMaterial(paths.ca_cert.read_bytes(), cert_path.read_bytes(), _read_private_key(paths.tls_key(role, name)))


def load_identity_key(directory: str | os.PathLike[str] | FederationPaths, name: str) -> ed25519.Ed25519PrivateKey:
    """The participant's Ed25519 identity key (for signing in malicious-coordinator mode)."""
    path = _paths(directory).identity_key(_check_name(name))
    key = serialization.load_pem_private_key(_read_private_key(path), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"{path} is not an Ed25519 key")
    return key


# --------------------------------------------------------------------------------------------
# Plaintext mode


def insecure_warning(role: str) -> str:
    """The warning every ``--insecure`` command must print before it opens a connection."""
    return (
        f"WARNING: --insecure: the {role} runs over plaintext gRPC with no TLS and no "
        "authentication. Anyone on the network can read the traffic and impersonate any "
        "participant. Use only on loopback for local experiments."
    )


def warn_insecure(role: str, stream: TextIO | None = None) -> None:
    """Print ``insecure_warning(role)`` to stderr (or ``stream``) and log it."""
    message = insecure_warning(role)
    print(message, file=stream or sys.stderr, flush=True)
    log.warning(message)

"""The federation directory: its layout, file writes, names and certificate helpers."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedmask.durable import PRIVATE, PUBLIC, write_atomic

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


def _write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` atomically and durably; 0600 if ``private`` else 0644."""
    write_atomic(path, data, mode=PRIVATE if private else PUBLIC)


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
    return role


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

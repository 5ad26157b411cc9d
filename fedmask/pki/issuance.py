"""Creating a federation, issuing certificates (from enrolment requests), removing participants."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedmask.pki.enrolment import EnrolmentRequest, load_enrolment_request, verify_csr
from fedmask.pki.layout import (
    _BACKDATE,
    DEFAULT_CA_DAYS,
    DEFAULT_COORDINATOR_HOSTS,
    DEFAULT_LEAF_DAYS,
    FederationPaths,
    PkiError,
    Role,
    _check_name,
    _check_organisation,
    _check_role,
    _check_valid_days,
    _federation_of,
    _ignore_in_git,
    _load_ca_key,
    _locked,
    _make_private_dir,
    _parse_hosts,
    _paths,
    _private_key_pem,
    _require_ca,
    _subject,
    _utcnow,
    _write_atomic,
    certificate_fingerprint,
    identity_uri,
    load_ca_certificate,
)
from fedmask.pki.roster import Roster, RosterEntry, _canonical_json, _write_roster, load_roster
from fedmask.pki.tokens import _load_tokens
from fedmask.secagg import keys
from fedmask.secagg.errors import CryptoError

log = logging.getLogger(__name__)


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
    _check_valid_days(valid_days)  # before anything is written: a bad value leaves no half-made directory
    paths = _paths(directory)
    with _locked(paths):
        if (paths.ca_key.exists() or paths.ca_cert.exists()) and not force:
            raise PkiError(f"{paths.root} already has a CA; pass --force to replace it (invalidates every certificate)")
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
        # Directories and files only once the certificate is made: a failure above writes nothing.
        _make_private_dir(paths.ca_key.parent)
        _ignore_in_git(paths.root)
        _write_atomic(paths.ca_key, _private_key_pem(key), private=True)
        _write_atomic(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        with contextlib.suppress(FileNotFoundError):
            paths.tokens.unlink()
        _write_roster(paths, Roster(federation_name, 1), key)
    log.info("created federation CA %r in %s", federation_name, paths.root)
    return paths


@dataclass(frozen=True)
class IssuedCertificate:
    """What ``issue`` wrote: file locations and the certificate fingerprint.

    ``key_path`` and ``identity_key_path`` are None where no private key was made here (a
    participant issued from its enrolment request holds its keys itself). ``roster`` is the
    re-signed roster after a participant was entered.
    """

    role: Role
    name: str
    cert_path: Path
    key_path: Path | None
    identity_key_path: Path | None
    fingerprint: str
    not_after: dt.datetime
    organisation: str | None = None
    roster: Roster | None = None
    request_fingerprint: str | None = None


def _load_ed25519_public_key(data: bytes) -> bytes:
    """Raw 32 bytes from a PEM/DER SubjectPublicKeyInfo or raw 32-byte Ed25519 public key, a
    point of the prime-order subgroup (``keys.check_identity_key``)."""
    if len(data) == 32:
        return _usable_identity_key(data)
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
    return _usable_identity_key(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _usable_identity_key(raw: bytes) -> bytes:
    try:
        keys.check_identity_key(raw)
    except CryptoError as exc:
        raise PkiError(f"the identity public key is {exc}") from exc
    return raw


_NEEDS_REQUEST = (
    "participant {name!r} needs an enrolment request: have it run `fedmask participant enrol --name {name} "
    "--organisation ORG` on its own machine and pass the request (--request FILE); "
    "--operator-generates-keys makes its keys here instead (demos and tests only)"
)


@dataclass(frozen=True)
class _ParticipantKeys:
    """Where a participant's public keys come from: its request, or keys made here."""

    organisation: str
    tls_public_key: ec.EllipticCurvePublicKey
    identity_public_key: bytes  # raw Ed25519
    tls_private_key: ec.EllipticCurvePrivateKey | None = None  # made here (operator path)
    identity_private_key: ed25519.Ed25519PrivateKey | None = None  # made here (operator path)
    request_fingerprint: str | None = None


def _participant_keys(
    name: str,
    *,
    request: EnrolmentRequest | bytes | str | os.PathLike[str] | None,
    csr: x509.CertificateSigningRequest | bytes | str | None,
    identity_public_key: bytes | None,
    organisation: str | None,
    operator_generates_keys: bool,
) -> _ParticipantKeys:
    if organisation is not None:
        _check_organisation(organisation)
    if operator_generates_keys and (request is not None or csr is not None):
        raise PkiError("a participant that sent a request or CSR made its keys itself: drop operator_generates_keys")
    if request is not None:
        if csr is not None or identity_public_key is not None:
            raise PkiError("give an enrolment request, or a CSR and an identity public key, not both")
        enrolment = load_enrolment_request(request)
        if enrolment.name != name:
            raise PkiError(f"the enrolment request is for {enrolment.name!r}, not {name!r}")
        if organisation is not None and organisation != enrolment.organisation:
            raise PkiError(f"the enrolment request gives organisation {enrolment.organisation!r}, not {organisation!r}")
        return _ParticipantKeys(
            enrolment.organisation,
            enrolment.tls_public_key(),
            enrolment.identity_public_key,
            request_fingerprint=enrolment.fingerprint(),
        )
    if csr is not None:
        if identity_public_key is None or organisation is None:
            raise PkiError("a CSR needs the participant's identity public key and its organisation as well")
        return _ParticipantKeys(organisation, verify_csr(csr, name), _load_ed25519_public_key(identity_public_key))
    if not operator_generates_keys:
        raise PkiError(_NEEDS_REQUEST.format(name=name))
    tls_key = ec.generate_private_key(ec.SECP256R1())
    if identity_public_key is not None:
        return _ParticipantKeys(
            organisation or name, tls_key.public_key(), _load_ed25519_public_key(identity_public_key), tls_key
        )
    identity = ed25519.Ed25519PrivateKey.generate()
    raw = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _ParticipantKeys(organisation or name, tls_key.public_key(), raw, tls_key, identity)


def _remove_unless_matching(path: Path, public: bytes, raw_public: Callable[[bytes], bytes]) -> None:
    """Delete a private key left here that is not the half of ``public`` (stale after a
    re-issue); keep one that matches (a participant enrolled in this very directory)."""
    try:
        existing = raw_public(path.read_bytes())
    except FileNotFoundError:
        return
    except (ValueError, TypeError, UnsupportedAlgorithm):
        existing = b""
    if existing != public:
        path.unlink()


def _ec_public_der(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ed25519_public_raw(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _leaf_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    role: Role,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    host_names: list[x509.GeneralName],
    start: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A leaf for ``name`` in ``role``: subject, SANs and extensions are the CA's choice only.

    ``host_names`` (from ``_parse_hosts``) go into a coordinator's SAN; participants have none."""
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role, name))]
    if role == "coordinator":
        san = host_names + san
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(_federation_of(ca_cert), name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def issue(
    directory: str | os.PathLike[str],
    role: Role,
    name: str,
    *,
    hosts: Iterable[str] = DEFAULT_COORDINATOR_HOSTS,
    valid_days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
    request: EnrolmentRequest | bytes | str | os.PathLike[str] | None = None,
    csr: x509.CertificateSigningRequest | bytes | str | None = None,
    identity_public_key: bytes | None = None,
    organisation: str | None = None,
    operator_generates_keys: bool = False,
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    """Issue a TLS certificate for a coordinator or participant.

    Coordinators: a TLS key is made here (the operator runs the coordinator). ``hosts`` (DNS
    names or IP addresses) go into its certificate.

    Participants: from their enrolment request (``request``: its bytes, a path, or an
    ``EnrolmentRequest``; or ``csr`` with ``identity_public_key`` -- PEM, DER or raw 32 bytes --
    and ``organisation``): the CSR is verified and the certificate issued for its public key;
    no private key is made or read. Only with ``operator_generates_keys`` are the TLS key and,
    unless ``identity_public_key`` is given, the Ed25519 identity key made here (demos and
    tests: the operator then holds them; ``organisation`` defaults to the name). The
    participant is entered in the roster with its identity key and organisation, and the
    roster is re-signed. Existing names are refused unless ``force``; re-issuing replaces the
    roster entry, so the old certificate stops matching it. An identity key already enrolled
    under another name is refused.
    """
    role = _check_role(role)
    _check_name(name)
    _check_valid_days(valid_days)
    paths = _paths(directory)
    _require_ca(paths)
    # Checked before the lock is taken or a key made, like every other input.
    host_names = _parse_hosts(hosts) if role == "coordinator" else []
    keys: _ParticipantKeys | None = None
    if role == "participant":
        keys = _participant_keys(
            name,
            request=request,
            csr=csr,
            identity_public_key=identity_public_key,
            organisation=organisation,
            operator_generates_keys=operator_generates_keys,
        )
    elif request is not None or csr is not None or identity_public_key is not None or organisation is not None:
        raise PkiError("enrolment requests, CSRs, identity keys and organisations apply to participants only")
    with _locked(paths):
        ca_cert = load_ca_certificate(paths)
        ca_key = _load_ca_key(paths)
        roster = load_roster(paths.roster, ca_cert) if role == "participant" else None
        already = name in roster if roster is not None else paths.tls_cert(role, name).exists()
        if already and not force:
            raise PkiError(f"{role} {name!r} already exists in {paths.root}; pass --force to re-issue")
        if roster is not None and keys is not None:
            for other in roster.entries.values():
                if other.name != name and other.identity_public_key == keys.identity_public_key:
                    raise PkiError(f"this identity key is already enrolled as {other.name!r}")

        start = (now or _utcnow()) - _BACKDATE
        not_after = start + dt.timedelta(days=valid_days)
        if not_after > ca_cert.not_valid_after_utc:
            raise PkiError(
                "the certificate would outlive the CA "
                f"(expires {ca_cert.not_valid_after_utc:%Y-%m-%d}): use fewer --days"
            )
        if keys is None:
            coordinator_key = ec.generate_private_key(ec.SECP256R1())
            tls_private_key: ec.EllipticCurvePrivateKey | None = coordinator_key
            public_key = coordinator_key.public_key()
        else:
            tls_private_key, public_key = keys.tls_private_key, keys.tls_public_key
        cert = _leaf_certificate(ca_cert, ca_key, role, name, public_key, host_names, start, not_after)

        key_path, cert_path = paths.tls_key(role, name), paths.tls_cert(role, name)
        _make_private_dir(key_path.parent)
        written_key: Path | None = None
        identity_path: Path | None = None
        if tls_private_key is not None:
            _write_atomic(key_path, _private_key_pem(tls_private_key), private=True)
            written_key = key_path
        elif keys is not None:
            public_der = public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            _remove_unless_matching(key_path, public_der, _ec_public_der)
        if keys is not None:
            if keys.identity_private_key is not None:
                identity_path = paths.identity_key(name)
                _write_atomic(identity_path, _private_key_pem(keys.identity_private_key), private=True)
            else:
                _remove_unless_matching(paths.identity_key(name), keys.identity_public_key, _ed25519_public_raw)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)

        fingerprint = certificate_fingerprint(cert)
        updated: Roster | None = None
        if roster is not None and keys is not None:
            entries = dict(roster.entries)
            entries[name] = RosterEntry(
                name,
                keys.identity_public_key,
                fingerprint,
                cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                keys.organisation,
            )
            updated = Roster(roster.federation, roster.version + 1, MappingProxyType(entries))
            _write_roster(paths, updated, ca_key)
    log.info("issued %s certificate for %r (sha256 %s)", role, name, fingerprint)
    return IssuedCertificate(
        role,
        name,
        cert_path,
        written_key,
        identity_path,
        fingerprint,
        cert.not_valid_after_utc,
        keys.organisation if keys is not None else None,
        updated,
        keys.request_fingerprint if keys is not None else None,
    )


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

"""Enrolment on the participant's own machine: its keys, and a request for the operator.

``enrol`` makes the participant's TLS key and Ed25519 identity key where only the participant
holds them, and writes an *enrolment request* (no secret in it) for the federation operator::

    {"csr": "<PEM of a CSR for CN=NAME, SAN urn:fedmask:participant:NAME>",
     "format": "fedmask-enrolment-request/1",
     "identity_key_ed25519": "<base64url of the raw 32-byte public key>",
     "identity_proof_ed25519": "<base64url Ed25519 signature>",
     "name": "NAME", "organisation": "ORG"}

encoded as canonical JSON (sorted keys, no whitespace, ASCII, one trailing newline). The CSR is
signed with the TLS key and the proof with the identity key (over the request without the proof,
after a context prefix), so a request shows that its sender holds both private keys. Neither
signature says *who* sent it: the operator compares the request's SHA-256 (``fingerprint``),
which ``enrol`` prints, with the participant over a second channel before issuing.

``export_participant`` is the operator's side of the hand-back: the participant's certificate,
the CA certificate and the signed roster, copied out as a federation directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedmask.durable import probe_writable_directory
from fedmask.pki.layout import (
    FederationPaths,
    PkiError,
    _certificate_from_pem,
    _check_name,
    _check_organisation,
    _ignore_in_git,
    _locked,
    _make_private_dir,
    _paths,
    _private_key_pem,
    _require_ca,
    _write_atomic,
    certificate_fingerprint,
    identity_uri,
    load_ca_certificate,
)
from fedmask.pki.roster import _canonical_json, load_roster
from fedmask.secagg import keys
from fedmask.secagg.errors import CryptoError

log = logging.getLogger(__name__)

ENROLMENT_REQUEST_FORMAT = "fedmask-enrolment-request/1"
# Prepended to what the identity key signs, so that the proof can never be replayed as a
# signature the identity key makes in the protocol.
_REQUEST_SIGNATURE_CONTEXT = b"fedmask enrolment request v1\x00"
# A request is a few hundred bytes; anything much larger is not one.
_MAX_REQUEST_BYTES = 64 * 1024
_REQUEST_FIELDS = frozenset({"format", "name", "organisation", "csr", "identity_key_ed25519", "identity_proof_ed25519"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise PkiError(f"enrolment request: {what} is not a base64 string")
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (ValueError, binascii.Error) as exc:
        raise PkiError(f"enrolment request: {what} is not valid base64") from exc


def _raw_public_key(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_csr(csr: x509.CertificateSigningRequest | bytes | str) -> x509.CertificateSigningRequest:
    if isinstance(csr, x509.CertificateSigningRequest):
        return csr
    data = csr.encode("ascii", "replace") if isinstance(csr, str) else bytes(csr)
    pem = b"-----BEGIN" in data
    try:
        return x509.load_pem_x509_csr(data) if pem else x509.load_der_x509_csr(data)
    except ValueError as exc:
        # The parser's own text is a Rust debug dump (ParseError { kind: UnexpectedTag ... }).
        detail = str(exc).split(":", 1)[0] if "ParseError {" in str(exc) else str(exc)
        form = "PEM" if pem else "DER: no PEM header"
        raise PkiError(f"not a valid certificate signing request: {detail} (read as {form})") from exc


def verify_csr(csr: x509.CertificateSigningRequest | bytes | str, name: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a CSR that names participant ``name``, or PkiError.

    Checks the CSR's own signature (made with the key it carries), that its subject CN is
    exactly ``name``, and that it asks for no name but ``urn:fedmask:participant:NAME``. The
    certificate's subject and extensions are the CA's own; only the public key is taken.
    """
    _check_name(name)
    request = _load_csr(csr)
    if not request.is_signature_valid:
        raise PkiError("the certificate signing request's signature does not verify (altered after it was signed?)")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise PkiError("the certificate signing request's key must be ECDSA P-256 (gRPC and the CA expect it)")
    common_names = [str(attribute.value) for attribute in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        shown = ", ".join(repr(cn) for cn in common_names) or "no common name"
        raise PkiError(f"the certificate signing request names {shown}, not {name!r}")
    try:
        requested = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return public_key
    if list(requested) != [x509.UniformResourceIdentifier(identity_uri("participant", name))]:
        raise PkiError(f"the certificate signing request asks for other names than {identity_uri('participant', name)}")
    return public_key


@dataclass(frozen=True)
class EnrolmentRequest:
    """A participant's request to be enrolled; see the module docstring. Holds no secret."""

    name: str
    organisation: str
    csr_pem: bytes
    identity_public_key: bytes  # raw 32-byte Ed25519 public key
    identity_proof: bytes  # Ed25519 signature of the identity key over ``_signed_bytes()``

    def _unsigned_document(self) -> dict[str, str]:
        return {
            "format": ENROLMENT_REQUEST_FORMAT,
            "name": self.name,
            "organisation": self.organisation,
            "csr": self.csr_pem.decode("ascii"),
            "identity_key_ed25519": _b64(self.identity_public_key),
        }

    def _signed_bytes(self) -> bytes:
        return _REQUEST_SIGNATURE_CONTEXT + _canonical_json(self._unsigned_document())

    def to_json(self) -> bytes:
        """The request file's bytes (canonical JSON)."""
        return _canonical_json({**self._unsigned_document(), "identity_proof_ed25519": _b64(self.identity_proof)})

    def fingerprint(self) -> str:
        """Lower-case hex SHA-256 of the request file: what operator and participant compare."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def tls_public_key(self) -> ec.EllipticCurvePublicKey:
        """The public key the certificate will be issued for (the CSR verified for ``name``)."""
        return verify_csr(self.csr_pem, self.name)

    def verify(self) -> EnrolmentRequest:
        """Every check that needs no CA: names, the CSR, the identity key and its proof."""
        _check_name(self.name)
        _check_organisation(self.organisation)
        self.tls_public_key()
        try:
            keys.check_identity_key(self.identity_public_key)
        except CryptoError as exc:
            raise PkiError(f"enrolment request: the identity key is {exc}") from exc
        try:
            # The check the rounds use (libsodium): OpenSSL's would take a proof forged under a
            # small-order key, and a key that made it into the roster is trusted in every round.
            keys.verify(self.identity_public_key, self.identity_proof, self._signed_bytes())
        except CryptoError as exc:
            raise PkiError(
                "enrolment request: the identity key's signature does not verify (the key or request was altered)"
            ) from exc
        return self

    @classmethod
    def from_json(cls, data: bytes) -> EnrolmentRequest:
        """Parse and verify a request file's bytes; PkiError says what is wrong."""
        if len(data) > _MAX_REQUEST_BYTES:
            raise PkiError(f"enrolment request is {len(data)} bytes: too large to be one")
        try:
            document = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PkiError(f"enrolment request is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != ENROLMENT_REQUEST_FORMAT:
            raise PkiError(f"not an enrolment request (format is not {ENROLMENT_REQUEST_FORMAT})")
        if set(document) != _REQUEST_FIELDS:
            raise PkiError("enrolment request has unexpected or missing fields")
        name, organisation, csr = document["name"], document["organisation"], document["csr"]
        if not all(isinstance(value, str) for value in (name, organisation, csr)):
            raise PkiError("enrolment request: name, organisation and csr must be strings")
        request = cls(
            name=name,
            organisation=organisation,
            csr_pem=csr.encode("ascii"),
            identity_public_key=_unb64(document["identity_key_ed25519"], "identity key"),
            identity_proof=_unb64(document["identity_proof_ed25519"], "identity proof"),
        )
        return request.verify()


def load_enrolment_request(source: EnrolmentRequest | bytes | str | os.PathLike[str]) -> EnrolmentRequest:
    """A verified request from its bytes, or from the file at a path (str or PathLike)."""
    if isinstance(source, EnrolmentRequest):
        return source.verify()
    if isinstance(source, bytes):
        return EnrolmentRequest.from_json(source)
    path = Path(source)
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise PkiError(f"cannot read enrolment request {path}: {exc.strerror or exc}") from exc
    return EnrolmentRequest.from_json(data)


def _make_request(
    name: str, organisation: str, tls_key: ec.EllipticCurvePrivateKey, identity: ed25519.Ed25519PrivateKey
) -> EnrolmentRequest:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri("participant", name))]),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )
    unsigned = EnrolmentRequest(
        name, organisation, csr.public_bytes(serialization.Encoding.PEM), _raw_public_key(identity.public_key()), b""
    )
    return EnrolmentRequest(
        unsigned.name,
        unsigned.organisation,
        unsigned.csr_pem,
        unsigned.identity_public_key,
        identity.sign(unsigned._signed_bytes()),
    )


def enrol(
    directory: str | os.PathLike[str] | FederationPaths,
    name: str,
    *,
    organisation: str,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Make participant ``name``'s keys in its own federation directory; returns the request's path.

    Writes ``participants/NAME/tls.key`` (ECDSA P-256) and ``participants/NAME/identity.key``
    (Ed25519), 0600, and the enrolment request (public) to ``out`` or
    ``participants/NAME/request.json``. Refuses if NAME already has keys here unless ``force``;
    forcing also removes NAME's certificate here, which no longer matches the new key.
    """
    _check_name(name)
    _check_organisation(organisation)
    paths = _paths(directory)
    tls_key_path, identity_path = paths.tls_key("participant", name), paths.identity_key(name)
    request_path = Path(out) if out is not None else paths.enrolment_request(name)
    with _locked(paths):
        existing = [path for path in (tls_key_path, identity_path) if path.exists()]
        if existing and not force:
            raise PkiError(
                f"{name!r} already has keys in {paths.root} ({existing[0].name}); "
                "pass --force to make new ones (its current certificate then stops matching)"
            )
        try:  # before any key is made: a request that cannot be written must leave no keys behind
            probe_writable_directory(request_path.parent)
            request_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PkiError(f"cannot write the enrolment request {request_path}: {exc.strerror or exc}") from None
        _ignore_in_git(paths.root)
        _make_private_dir(tls_key_path.parent)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        identity = ed25519.Ed25519PrivateKey.generate()
        request = _make_request(name, organisation, tls_key, identity)
        _write_atomic(tls_key_path, _private_key_pem(tls_key), private=True)
        _write_atomic(identity_path, _private_key_pem(identity), private=True)
        with contextlib.suppress(FileNotFoundError):
            paths.tls_cert("participant", name).unlink()
        _write_atomic(request_path, request.to_json(), private=False)
    log.info("enrolled %r: request %s, sha256 %s", name, request_path, request.fingerprint())
    return request_path


def export_participant(
    directory: str | os.PathLike[str] | FederationPaths, name: str, out: str | os.PathLike[str]
) -> tuple[Path, ...]:
    """Copy what the operator sends back to participant ``name`` into ``out``; returns the files.

    Exactly the public files, laid out as a federation directory: ``ca/ca.pem``,
    ``participants/NAME/tls.pem``, ``roster.json`` and ``roster.sig``. ``out`` may be the
    participant's own directory: its keys there are left alone.
    """
    _check_name(name)
    paths = _paths(directory)
    _require_ca(paths)
    target = FederationPaths(Path(out))
    if target.root.resolve() == paths.root.resolve():
        raise PkiError(f"--out {target.root} is the federation directory itself: choose another directory")
    with _locked(paths):
        ca_cert = load_ca_certificate(paths)
        roster = load_roster(paths.roster, ca_cert)
        entry = roster.entries.get(name)
        if entry is None:
            raise PkiError(f"participant {name!r} is not in the roster: issue its certificate first")
        cert_path = paths.tls_cert("participant", name)
        try:
            cert_pem = cert_path.read_bytes()
        except FileNotFoundError as exc:
            raise PkiError(f"{cert_path} is missing") from exc
        # Never hand out a certificate that the roster does not list (a superseded one).
        if certificate_fingerprint(_certificate_from_pem(cert_pem, cert_path)) != entry.tls_cert_sha256:
            raise PkiError(f"{cert_path} is not the certificate the roster lists for {name!r}: re-issue it")
        files = {
            target.ca_cert: paths.ca_cert.read_bytes(),
            target.tls_cert("participant", name): cert_pem,
            target.roster_signature: paths.roster_signature.read_bytes(),
            target.roster: paths.roster.read_bytes(),
        }
    target.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    _make_private_dir(target.tls_cert("participant", name).parent)
    for path, data in files.items():  # the signature before the roster, as the CA writes them
        _write_atomic(path, data, private=False)
    log.info("exported the public files of %r to %s", name, target.root)
    return tuple(files)

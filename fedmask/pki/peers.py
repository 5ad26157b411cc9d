"""Who is on the other end of an mTLS connection, from its verified certificate."""

from __future__ import annotations

import datetime as dt
import hmac

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedmask.pki.layout import (
    _URI_PREFIX,
    NAME_PATTERN,
    PeerIdentityError,
    PkiError,
    _as_certificate,
    _utcnow,
    certificate_fingerprint,
)
from fedmask.pki.roster import Roster

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

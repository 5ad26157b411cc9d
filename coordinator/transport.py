"""The coordinator's side of the transport: server credentials and who is on the other end.

A participant's identity is established by the transport, never by a message field:

- ``MtlsAuthenticator`` (default): the name in the verified client certificate, checked against
  the CA and the CA-signed roster by ``coordinator.pki.identity_from_peer_cert``.
- ``TokenAuthenticator``: one-way TLS; the participant names itself in the call metadata and
  proves it with its enrolment token (``fedmask pki token NAME``). Tokens are never logged.
- ``InsecureAuthenticator`` (``--insecure``): plaintext, the name in the metadata is taken on
  trust. For loopback experiments only.

Each raises ``AuthError`` with the gRPC status to answer (UNAUTHENTICATED or PERMISSION_DENIED).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from fedmask import pki
from fedmask.proto.transport import METADATA_PARTICIPANT, METADATA_TOKEN
from fedmask.proto.wire import PARTICIPANT_NAME


class AuthError(Exception):
    """The peer could not be identified; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Authenticator(Protocol):
    """Names the participant at the other end of a call (an aio or sync servicer context)."""

    @property
    def description(self) -> str: ...

    def identify(self, context: grpc.ServicerContext) -> str: ...


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    values = [v for k, v in (context.invocation_metadata() or ()) if k == key]
    if len(values) > 1:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"metadata {key!r} given more than once")
    return values[0] if values else None


def _claimed_name(context: grpc.ServicerContext) -> str:
    name = _metadata(context, METADATA_PARTICIPANT)
    if name is None:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"no participant name (metadata {METADATA_PARTICIPANT!r})")
    if PARTICIPANT_NAME.fullmatch(name) is None:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "malformed participant name in the metadata")
    return name


@dataclass(frozen=True)
class MtlsAuthenticator:
    """The participant is the holder of the client certificate (checked against the roster)."""

    ca_cert: bytes
    roster: pki.Roster
    description: str = "mutual TLS"

    def identify(self, context: grpc.ServicerContext) -> str:
        auth = context.auth_context() or {}
        certificates = auth.get("x509_pem_cert") or []
        if not certificates:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "no client certificate: mutual TLS is required")
        try:
            return pki.identity_from_peer_cert(certificates[0], self.ca_cert, roster=self.roster)
        except pki.PeerIdentityError as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"client certificate refused: {exc}") from exc


@dataclass(frozen=True)
class TokenAuthenticator:
    """One-way TLS: the participant proves its name with its enrolment token."""

    federation_dir: Path
    description: str = "TLS + enrolment token"

    def identify(self, context: grpc.ServicerContext) -> str:
        name = _claimed_name(context)
        token = _metadata(context, METADATA_TOKEN)
        if token is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"no enrolment token (metadata {METADATA_TOKEN!r})")
        if not pki.verify_token(self.federation_dir, name, token):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"enrolment token of {name!r} is wrong or expired")
        return name


@dataclass(frozen=True)
class InsecureAuthenticator:
    """Plaintext: the name in the metadata is believed. Loopback experiments only."""

    description: str = "INSECURE (plaintext, unauthenticated)"

    def identify(self, context: grpc.ServicerContext) -> str:
        return _claimed_name(context)


@dataclass(frozen=True)
class ServerSecurity:
    """How the coordinator listens and identifies participants."""

    credentials: grpc.ServerCredentials | None  # None: plaintext
    authenticator: Authenticator
    roster: pki.Roster | None  # the CA-signed roster, when there is a federation directory


def mtls_security(federation_dir: str | os.PathLike[str], coordinator_name: str) -> ServerSecurity:
    """Mutual TLS with the coordinator certificate ``coordinator_name`` of the federation."""
    material = pki.load_tls_material(federation_dir, "coordinator", coordinator_name)
    roster = pki.load_roster(federation_dir, material.ca_cert)
    credentials = grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)],
        root_certificates=material.ca_cert,
        # Peers without a certificate of the CA never get past the handshake.
        require_client_auth=True,
    )
    return ServerSecurity(credentials, MtlsAuthenticator(material.ca_cert, roster), roster)


def token_security(federation_dir: str | os.PathLike[str], coordinator_name: str) -> ServerSecurity:
    """One-way TLS; participants authenticate with enrolment tokens."""
    material = pki.load_tls_material(federation_dir, "coordinator", coordinator_name)
    roster = pki.load_roster(federation_dir, material.ca_cert)
    credentials = grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)], root_certificates=None, require_client_auth=False
    )
    return ServerSecurity(credentials, TokenAuthenticator(Path(federation_dir)), roster)


def insecure_security(federation_dir: str | os.PathLike[str] | None = None) -> ServerSecurity:
    """Plaintext. The roster is still loaded when a federation directory is given (it carries the
    identity keys the malicious-server mode needs)."""
    roster = None
    if federation_dir is not None:
        roster = pki.load_roster(federation_dir, pki.load_ca_certificate(federation_dir))
    return ServerSecurity(None, InsecureAuthenticator(), roster)

"""What the gRPC layer loads: TLS material, identity keys; the plaintext-mode warning."""

from __future__ import annotations

import logging
import os
import sys
from typing import NamedTuple, TextIO

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmask.pki.layout import (
    FederationPaths,
    PkiError,
    Role,
    _certificate_from_pem,
    _check_name,
    _check_role,
    _load_private_key_file,
    _paths,
    _read_private_key,
    _require_ca,
)
from fedmask.pki.preflight import own_certificate_problem

log = logging.getLogger(__name__)


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
    Never reads the CA private key. Refuses (PkiError, one line) a certificate of this party
    that is expired, not yet valid, or not issued by the CA next to it: each side names its own
    certificate problem before it connects or listens.
    """
    role = _check_role(role)
    _check_name(name)
    paths = _paths(directory)
    cert_path = paths.tls_cert(role, name)
    if role == "participant" and paths.tls_key(role, name).is_file():
        # Enrolled here; what is missing is what the operator sends back.
        if not (paths.ca_cert.is_file() and cert_path.is_file()):
            raise PkiError(
                f"{name!r} is enrolled in {paths.root} but its certificate is not there yet: copy in the files the "
                f"operator sends back (ca/ca.pem, participants/{name}/tls.pem, roster.json, roster.sig)"
            )
    _require_ca(paths)
    if not cert_path.is_file():
        how = f"fedmask pki issue {role} {name}" if role == "coordinator" else "fedmask participant enrol"
        raise PkiError(f"no {role} certificate for {name!r} in {paths.root}: run `{how}` first")
    ca_pem = paths.ca_cert.read_bytes()
    ca_cert = _certificate_from_pem(ca_pem, paths.ca_cert)
    problem = own_certificate_problem(role, name, cert_path, ca_cert)
    if problem is not None:
        raise PkiError(problem)
    # Leaves are issued directly by the root, so the chain is the leaf alone.
    return TlsMaterial(ca_pem, cert_path.read_bytes(), _read_private_key(paths.tls_key(role, name)))


def load_identity_key(directory: str | os.PathLike[str] | FederationPaths, name: str) -> ed25519.Ed25519PrivateKey:
    """The participant's Ed25519 identity key (for signing in malicious-coordinator mode)."""
    path = _paths(directory).identity_key(_check_name(name))
    key = _load_private_key_file(path)
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

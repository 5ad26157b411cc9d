"""Checks a party runs on its own certificates before (and when) it connects: each side names its
own certificate problems, and tells a refusal of the peer's certificate from the peer refusing its.

- ``certificate_problem``: why a certificate cannot be used now (expired, not yet valid), or None.
- ``own_certificate_problem``: the same for a party's own certificate file, plus whether the CA
  it holds issued it; ``load_tls_material`` refuses on it, so an expired certificate is a
  one-line error before any connection is attempted.
- ``probe_tls``: one TLS handshake with Python's ``ssl`` module, the way gRPC would make it,
  classified as: nothing answers over TCP, this side refused the peer's certificate (its own
  verification failed: another CA, expired, name mismatch), the peer refused this side's
  certificate (it closed the connection or sent an alert after the handshake), or accepted.

All X.509 work is done by ``cryptography`` (and OpenSSL through ``ssl`` for the handshake).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedmask.pki.layout import _utcnow

ProbeOutcome = Literal["tcp-failed", "refused-peer", "peer-refused", "no-answer", "ok"]

# The HTTP/2 connection preface and an empty SETTINGS frame: what a gRPC client sends first.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _when(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def certificate_problem(cert: x509.Certificate, now: dt.datetime | None = None) -> str | None:
    """Why ``cert`` is not valid at ``now`` ("expired on ...", "not valid until ..."), or None."""
    now = now or _utcnow()
    if now > cert.not_valid_after_utc:
        return f"expired on {_when(cert.not_valid_after_utc)}"
    if now < cert.not_valid_before_utc:
        return (
            f"not valid until {_when(cert.not_valid_before_utc)} "
            f"(this machine's clock reads {_when(now)}: is it behind?)"
        )
    return None


def organisation_of(cert: x509.Certificate, issuer: bool = False) -> str:
    """The O= of the certificate's subject (or issuer), e.g. 'fedmask federation hospitals'."""
    name = cert.issuer if issuer else cert.subject
    values = name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True iff ``ca_cert``'s key signed ``cert`` and names match (leaves are issued by the root)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _two_cas(cert: x509.Certificate, ca_cert: x509.Certificate) -> str:
    """'issued by X, the CA held is Y', telling apart two CAs of the same name by their keys."""
    issuer, held = organisation_of(cert, issuer=True), organisation_of(ca_cert)
    if issuer != held:
        return f"issued by {issuer!r}, the CA held is {held!r}"
    return f"issued by another CA also named {issuer!r} (a CA made again, or another federation of that name)"


def key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    """True iff the PEM private key is the half of the certificate's public key."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki))


def own_certificate_problem(
    role: str,
    name: str,
    cert_path: Path,
    ca_cert: x509.Certificate | None,
    now: dt.datetime | None = None,
) -> str | None:
    """One line saying why this party's own certificate cannot be used, or None.

    Checked locally, before any connection: the certificate parses, is valid now, and was issued
    by the federation CA this party holds (``ca_cert``; None skips that check).
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        return f"this {role}'s certificate {cert_path} is not a PEM certificate ({exc})"
    problem = certificate_problem(cert, now)
    if problem is not None:
        fix = (
            f"ask the federation operator to re-issue it (`fedmask pki issue participant {name} --force "
            "--request REQUEST`) and copy in the files sent back"
            if role == "participant"
            else f"re-issue it (`fedmask pki issue coordinator {name} --force`) and restart"
        )
        return f"this {role}'s own certificate {cert_path} {problem}: {fix}"
    if ca_cert is not None and not issued_by(cert, ca_cert):
        return (
            f"this {role}'s certificate {cert_path} was not issued by the federation CA it holds "
            f"({_two_cas(cert, ca_cert)}): the CA certificate ca/ca.pem and the certificate must come from "
            "the same federation"
        )
    return None


@dataclass(frozen=True)
class TlsProbe:
    """How one TLS handshake with the peer went. ``peer_certificate``: the certificate the peer
    presented (read without verification when verification failed), when one was seen."""

    outcome: ProbeOutcome
    detail: str
    peer_certificate: x509.Certificate | None = None

    @property
    def summary(self) -> str:
        """One line for the user: which side refused which certificate, and why."""
        return {
            "tcp-failed": f"TCP connect failed: {self.detail}",
            "refused-peer": f"this side refused the coordinator's TLS certificate: {self.detail}",
            "peer-refused": f"the coordinator refused this participant's TLS certificate: {self.detail}",
            "no-answer": f"the TLS handshake completed but the coordinator did not answer: {self.detail}",
            "ok": f"TLS handshake accepted by both sides: {self.detail}",
        }[self.outcome]


def split_target(target: str) -> tuple[str, int]:
    """(host, port) of a gRPC target HOST:PORT ([v6]:PORT, dns:///HOST:PORT); ValueError if not."""
    rest = target.removeprefix("dns:").lstrip("/") if target.startswith("dns:") else target
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _peer_certificate(sock: ssl.SSLSocket) -> x509.Certificate | None:
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def _unverified_peer_certificate(host: str, port: int, server_name: str, timeout_s: float) -> x509.Certificate | None:
    """The certificate the peer presents, read without verifying it (to say what is wrong)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            return _peer_certificate(tls)
    except (OSError, ValueError):
        return None


def _describe_untrusted(
    verify_message: str, peer: x509.Certificate | None, ca_cert: x509.Certificate | None, now: dt.datetime
) -> str:
    if peer is None:
        return verify_message
    problem = certificate_problem(peer, now)
    if ca_cert is not None and not issued_by(peer, ca_cert):
        return (
            f"it is not signed by your federation CA ({_two_cas(peer, ca_cert)}): the coordinator or your "
            "ca/ca.pem belongs to another federation"
        )
    if problem is not None:
        return f"its certificate {problem} ({verify_message}): the operator must re-issue it"
    return verify_message


def probe_tls(
    target: str,
    ca_pem: bytes,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    server_name: str | None = None,
    timeout_s: float = 5.0,
    now: dt.datetime | None = None,
) -> TlsProbe:
    """One TLS handshake with ``target`` as a participant makes it (trusting only ``ca_pem``,
    showing ``cert_file``/``key_file`` when given), then the HTTP/2 preface, classified."""
    now = now or _utcnow()
    try:
        host, port = split_target(target)
    except ValueError as exc:
        return TlsProbe("tcp-failed", str(exc))
    name = server_name or host
    try:
        ca_cert: x509.Certificate | None = x509.load_pem_x509_certificate(ca_pem)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode("ascii"))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (ValueError, OSError, ssl.SSLError) as exc:
        return TlsProbe("refused-peer", f"this participant's TLS files cannot be loaded: {exc}")
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return TlsProbe("tcp-failed", f"{host}:{port}: {exc.strerror or exc}")
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            peer = _unverified_peer_certificate(host, port, name, timeout_s)
            message = str(exc.verify_message or exc.reason or exc)
            return TlsProbe("refused-peer", _describe_untrusted(message, peer, ca_cert, now), peer)
        except ssl.SSLError as exc:
            # An alert from the peer during the handshake (TLS 1.2 refuses client certificates here).
            return TlsProbe("peer-refused", f"it ended the handshake ({exc.reason or exc})")
        except (TimeoutError, OSError) as exc:
            return TlsProbe("no-answer", f"no TLS handshake within {timeout_s:g} s ({exc})")
        with tls:
            peer = _peer_certificate(tls)
            try:
                # TLS 1.3: the server checks the client's certificate after the client's side of
                # the handshake is done, so a refusal shows as an alert or a close on first read.
                tls.sendall(_H2_PREFACE)
                answer = tls.recv(64)
            except ssl.SSLError as exc:
                return TlsProbe("peer-refused", f"it sent a TLS alert after the handshake ({exc.reason or exc})", peer)
            except TimeoutError:
                return TlsProbe("no-answer", f"no answer within {timeout_s:g} s after the handshake", peer)
            except OSError as exc:
                return TlsProbe("peer-refused", f"it reset the connection after the handshake ({exc})", peer)
            if not answer:
                return TlsProbe("peer-refused", "it closed the connection right after the handshake", peer)
            return TlsProbe("ok", f"{tls.version()} to {host}:{port}", peer)

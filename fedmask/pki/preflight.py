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
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from fedmask.pki.layout import (
    PkiError,
    RosterError,
    _private_key_from_pem,
    _utcnow,
    certificate_fingerprint,
    load_certificate_file,
)
from fedmask.pki.roster import load_roster

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
        cert = load_certificate_file(cert_path)
    except PkiError as exc:
        return f"this {role}'s certificate: {exc}"
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


_NOT_OUR_CA = "it is not signed by your federation CA"


def _describe_untrusted(
    verify_message: str, peer: x509.Certificate | None, ca_cert: x509.Certificate | None, now: dt.datetime
) -> str:
    if peer is None:
        return verify_message
    problem = certificate_problem(peer, now)
    if ca_cert is not None and not issued_by(peer, ca_cert):
        return (
            f"{_NOT_OUR_CA}: {_two_cas(peer, ca_cert)}; the coordinator or your ca/ca.pem belongs to another federation"
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


# --------------------------------------------------------------------------------------------
# Checks (``fedmask doctor``): each is one line, ``ok|warn|FAIL  <check>: <what, what to do>``

Level = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One finding: ``level`` ok, warn or FAIL; ``check`` what was checked; ``message`` what
    was found and, unless ok, what to do."""

    level: Level
    check: str
    message: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.check}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"level": self.level, "check": self.check, "message": self.message}


def _days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 1 else f"{delta.total_seconds() / 3600:.1f} hours"


def validity_check(
    check: str, what: str, cert: x509.Certificate, warn_days: float, fix: str, now: dt.datetime
) -> Check:
    """FAIL when ``cert`` is not valid at ``now``, warn when it expires within ``warn_days``."""
    problem = certificate_problem(cert, now)
    if problem is not None:
        return Check("FAIL", check, f"{what} {problem}: {fix}")
    left = cert.not_valid_after_utc - now
    if left < dt.timedelta(days=warn_days):
        return Check("warn", check, f"{what} expires on {_when(cert.not_valid_after_utc)}, in {_days(left)}: {fix}")
    return Check("ok", check, f"{what} valid until {_when(cert.not_valid_after_utc)} ({_days(left)} left)")


def certificate_checks(
    role: str,
    name: str,
    cert_path: Path,
    key_path: Path,
    ca_path: Path,
    *,
    warn_days: float,
    now: dt.datetime | None = None,
) -> tuple[list[Check], x509.Certificate | None, x509.Certificate | None]:
    """This party's certificate (present, parses, valid now, not about to expire), its key (present,
    private, the certificate's half) and the CA (present, valid, issued the certificate).

    Returns the checks, the certificate and the CA certificate (None where they could not be read).
    """
    now = now or _utcnow()
    checks: list[Check] = []
    reissue = (
        f"ask the federation operator to re-issue it (`fedmask pki issue participant {name} --force --request ...`)"
        if role == "participant"
        else f"re-issue it (`fedmask pki issue coordinator {name} --force`) and restart the coordinator"
    )
    cert: x509.Certificate | None = None
    if not cert_path.is_file():
        how = (
            "`fedmask participant enrol`, then copy in the files the operator sends back"
            if role == "participant"
            else (f"`fedmask pki issue coordinator {name}`")
        )
        checks.append(Check("FAIL", "certificate", f"no {role} certificate at {cert_path}: {how}"))
    else:
        try:
            cert = load_certificate_file(cert_path)
        except PkiError as exc:
            checks.append(Check("FAIL", "certificate", f"{exc}: {reissue}"))
        else:
            checks.append(validity_check("certificate", str(cert_path), cert, warn_days, reissue, now))

    if not key_path.is_file():
        checks.append(Check("FAIL", "key", f"no private key at {key_path}: it is made with the certificate request"))
    elif cert is not None:
        try:
            matches = key_matches(cert, key_path.read_bytes())
        except (ValueError, TypeError) as exc:
            checks.append(Check("FAIL", "key", f"{key_path} is not a readable PEM private key ({exc})"))
        else:
            mode = key_path.stat().st_mode & 0o777
            if not matches:
                checks.append(
                    Check(
                        "FAIL",
                        "key",
                        f"{key_path} is not the key of {cert_path}: the two come from different "
                        "requests; restore the matching key or have the certificate re-issued for this one",
                    )
                )
            elif mode & 0o077:
                checks.append(
                    Check(
                        "warn", "key", f"{key_path} matches the certificate but has mode {mode:o}: chmod 600 {key_path}"
                    )
                )
            else:
                checks.append(Check("ok", "key", f"{key_path} matches the certificate (mode {mode:o})"))

    ca_cert: x509.Certificate | None = None
    if not ca_path.is_file():
        checks.append(Check("FAIL", "ca", f"no federation CA certificate at {ca_path}: the operator sends ca/ca.pem"))
    else:
        try:
            ca_cert = load_certificate_file(ca_path)
        except PkiError as exc:
            checks.append(Check("FAIL", "ca", str(exc)))
    if ca_cert is not None:
        ca_validity = validity_check(
            "ca", f"the federation CA {organisation_of(ca_cert)!r}", ca_cert, warn_days,
            "the operator must make a new CA (`fedmask pki init --force`) and re-issue every certificate", now,
        )  # fmt: skip
        if ca_validity.level == "FAIL" or cert is None:
            checks.append(ca_validity)
        elif not issued_by(cert, ca_cert):
            checks.append(
                Check(
                    "FAIL",
                    "ca",
                    f"{cert_path} was not issued by the CA in {ca_path} ({_two_cas(cert, ca_cert)}): "
                    "the certificate and ca/ca.pem must come from the same federation",
                )
            )
        else:
            issuer = f"{cert_path.name} was issued by the CA in {ca_path}"
            checks.append(Check(ca_validity.level, "ca", f"{issuer}; {ca_validity.message}"))
    return checks, cert, ca_cert


def roster_checks(
    federation_dir: Path,
    ca_cert: x509.Certificate | None,
    *,
    participant: str | None,
    cert: x509.Certificate | None,
    identity_key_path: Path | None,
    warn_days: float,
    now: dt.datetime | None = None,
) -> list[Check]:
    """The roster's CA signature; for a participant, that it is named in it with this certificate,
    and that its identity key is the one enrolled; for the coordinator, members whose
    certificates expired or are about to."""
    now = now or _utcnow()
    if ca_cert is None:
        return [Check("FAIL", "roster", "not checked: there is no readable CA certificate to verify it with")]
    try:
        roster = load_roster(federation_dir, ca_cert)
    except RosterError as exc:
        return [Check("FAIL", "roster", f"{exc}: copy in the roster.json and roster.sig the operator last sent")]
    signed = f"v{roster.version} of {roster.federation!r}, signed by the CA, {len(roster.entries)} participant(s)"
    if participant is None:
        checks = [Check("ok", "roster", signed)]
        soon = now + dt.timedelta(days=warn_days)
        late: list[str] = []
        for name, member in sorted(roster.entries.items()):
            not_after = dt.datetime.strptime(member.tls_not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            if not_after < soon:
                late.append(f"{name} ({'expired' if not_after < now else 'expires'} {not_after:%Y-%m-%d})")
        if late:
            checks.append(
                Check(
                    "warn",
                    "members",
                    f"certificates expired or expiring within {warn_days:g} days: "
                    f"{', '.join(late)}; re-issue them (`fedmask pki issue participant NAME --force --request ...`)",
                )
            )
        return checks
    entry = roster.entries.get(participant)
    if entry is None:
        return [
            Check(
                "FAIL",
                "roster",
                f"{signed}, but {participant!r} is not in it: enrolled under another name, "
                "revoked, or this roster is older than its enrolment; ask the operator for the current one",
            )
        ]
    checks = []
    if cert is not None and entry.tls_cert_sha256 != certificate_fingerprint(cert):
        checks.append(
            Check(
                "FAIL",
                "roster",
                f"{signed}; it lists another certificate for {participant!r} than this one: "
                "copy in the certificate and roster the operator last sent together",
            )
        )
    else:
        checks.append(
            Check("ok", "roster", f"{signed}; {participant!r} enrolled (organisation {entry.organisation!r})")
        )
    if identity_key_path is not None:
        checks.append(_identity_check(identity_key_path, entry.identity_public_key))
    return checks


def _identity_check(path: Path, enrolled: bytes) -> Check:
    if not path.is_file():
        return Check(
            "warn",
            "identity key",
            f"no identity key at {path}: rounds in malicious-coordinator mode "
            "(the default policy) will be refused; it is made by `fedmask participant enrol`",
        )
    try:
        key = _private_key_from_pem(path.read_bytes(), path)
    except PkiError as exc:
        return Check("FAIL", "identity key", str(exc))
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        return Check("FAIL", "identity key", f"{path} is not an Ed25519 key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if raw != enrolled:
        return Check(
            "FAIL",
            "identity key",
            f"{path} is not the identity key the roster enrols for this participant: "
            "restore the enrolled key, or enrol again and have the operator re-issue",
        )
    return Check("ok", "identity key", f"{path} is the Ed25519 key the roster enrols")


def reachability_check(probe: TlsProbe, target: str) -> Check:
    """The coordinator check from one handshake probe, in the words ``fedmask doctor`` uses."""
    if probe.outcome == "tcp-failed":
        return Check(
            "FAIL",
            "coordinator",
            f"TCP connect failed: {probe.detail}; is the coordinator running and "
            f"listening on {target}, and does the firewall let this machine through?",
        )
    if probe.outcome == "refused-peer":
        if probe.detail.startswith(_NOT_OUR_CA):
            return Check(
                "FAIL",
                "coordinator",
                "TLS: the coordinator's certificate is not signed by your federation CA "
                f"(you refused it): {probe.detail.removeprefix(_NOT_OUR_CA + ': ')}",
            )
        return Check("FAIL", "coordinator", f"TLS: you refused the coordinator's certificate: {probe.detail}")
    if probe.outcome == "peer-refused":
        return Check(
            "FAIL",
            "coordinator",
            f"TLS: the coordinator refused your certificate ({probe.detail}): check "
            "the FAIL lines above; if there are none, the coordinator serves another federation or its "
            "clock is off",
        )
    if probe.outcome == "no-answer":
        return Check("FAIL", "coordinator", f"TLS: {probe.detail}: is {target} a fedmask coordinator?")
    return Check("ok", "coordinator", f"TLS handshake accepted both ways ({probe.detail})")


def clock_check(peer: x509.Certificate | None, whose: str, now: dt.datetime | None = None) -> Check:
    """Clock skew, as far as a certificate tells: a clock before the moment ``peer`` was issued
    is behind. A clock ahead cannot be seen this way (fedmask's peers do not publish their time)."""
    now = now or _utcnow()
    if peer is None:
        return Check(
            "warn", "clock", f"not checked: {whose} certificate could not be read (this clock reads {_when(now)})"
        )
    issued = peer.not_valid_before_utc
    if now < issued:
        return Check(
            "FAIL",
            "clock",
            f"this clock reads {_when(now)}, before {whose} certificate was issued "
            f"({_when(issued)}): it is behind by at least {_days(issued - now)}; set it right (NTP)",
        )
    return Check(
        "ok",
        "clock",
        f"not behind ({_when(now)} is after {whose} certificate's issue at {_when(issued)}); "
        "a clock ahead is not checked: the peers do not publish their time",
    )

"""The CA-signed roster: each member's Ed25519 identity key, certificate fingerprint and organisation."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedmask.pki.layout import (
    _ROSTER_FORMAT,
    _ROSTER_FORMAT_V1,
    _ROSTER_SIGNATURE_CONTEXT,
    NAME_PATTERN,
    FederationPaths,
    RosterError,
    _as_certificate,
    _write_atomic,
)

# --------------------------------------------------------------------------------------------
# Roster


@dataclass(frozen=True)
class RosterEntry:
    """One enrolled participant: its Ed25519 identity public key, current TLS certificate and
    organisation (the participant's own name when none was recorded, as in version 1 rosters)."""

    name: str
    identity_public_key: bytes  # raw 32-byte Ed25519 public key
    tls_cert_sha256: str  # hex SHA-256 of the DER certificate
    tls_not_after: str  # ISO 8601, UTC
    organisation: str = ""

    def __post_init__(self) -> None:
        if not self.organisation:
            object.__setattr__(self, "organisation", self.name)

    def identity_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.identity_public_key)


@dataclass(frozen=True)
class Roster:
    """The CA-signed list of enrolled participants. Immutable; obtain it from ``load_roster``.

    ``document_format`` is the format it was read in; the CA always writes the current one.
    """

    federation: str
    version: int
    entries: Mapping[str, RosterEntry] = field(default_factory=lambda: MappingProxyType({}))
    document_format: str = _ROSTER_FORMAT

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.entries))

    @property
    def identity_keys(self) -> Mapping[str, bytes]:
        return MappingProxyType({n: e.identity_public_key for n, e in self.entries.items()})

    @property
    def fingerprints(self) -> Mapping[str, str]:
        """Each member's TLS certificate fingerprint (for the roster's own, see ``fingerprint``)."""
        return MappingProxyType({n: e.tls_cert_sha256 for n, e in self.entries.items()})

    def organisations(self) -> Mapping[str, str]:
        """Member name -> organisation."""
        return MappingProxyType({n: e.organisation for n, e in self.entries.items()})

    def canonical_bytes(self) -> bytes:
        """The exact bytes the CA signs (and ``load_roster`` read) for this roster."""
        return _canonical_json(_roster_document(self))

    def fingerprint(self) -> str:
        """Lower-case hex SHA-256 of the canonical roster bytes: any change to the roster,
        a member added by whoever holds the CA key included, changes it."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def identity_key(self, name: str) -> ed25519.Ed25519PublicKey:
        """The enrolled Ed25519 public key of ``name``; RosterError if not enrolled."""
        entry = self.entries.get(name)
        if entry is None:
            raise RosterError(f"participant {name!r} is not in the roster")
        return entry.identity_key()


def _roster_document(roster: Roster) -> dict[str, object]:
    if roster.document_format not in (_ROSTER_FORMAT, _ROSTER_FORMAT_V1):
        raise RosterError(f"unknown roster format {roster.document_format!r}")
    participants: dict[str, dict[str, str]] = {}
    for entry in roster.entries.values():
        fields = {
            "identity_key_ed25519": base64.urlsafe_b64encode(entry.identity_public_key).decode("ascii"),
            "tls_cert_sha256": entry.tls_cert_sha256,
            "tls_not_after": entry.tls_not_after,
        }
        if roster.document_format != _ROSTER_FORMAT_V1:
            fields["organisation"] = entry.organisation
        participants[entry.name] = fields
    return {
        "format": roster.document_format,
        "federation": roster.federation,
        "version": roster.version,
        "participants": participants,
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
    if not isinstance(document, dict) or document.get("format") not in (_ROSTER_FORMAT, _ROSTER_FORMAT_V1):
        raise RosterError(f"roster format is not {_ROSTER_FORMAT} (or {_ROSTER_FORMAT_V1})")
    document_format = document["format"]
    entry_fields = {"identity_key_ed25519", "tls_cert_sha256", "tls_not_after"}
    if document_format == _ROSTER_FORMAT:
        entry_fields.add("organisation")
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
        if not isinstance(fields, dict) or set(fields) != entry_fields:
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
        organisation = fields.get("organisation", name)
        if not isinstance(organisation, str) or NAME_PATTERN.fullmatch(organisation) is None:
            raise RosterError(f"roster entry {name!r} has an invalid organisation")
        entries[name] = RosterEntry(name, public_key, fingerprint, fields["tls_not_after"], organisation)
    roster = Roster(federation, version, MappingProxyType(entries), document_format)
    if roster.canonical_bytes() != data:
        raise RosterError("roster is not in canonical form")
    return roster


def _write_roster(paths: FederationPaths, roster: Roster, ca_key: ec.EllipticCurvePrivateKey) -> None:
    # The CA writes the current format only: a version 1 roster is upgraded by its next change.
    data = dataclasses.replace(roster, document_format=_ROSTER_FORMAT).canonical_bytes()
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

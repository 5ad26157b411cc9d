"""Enrolment tokens, the one-way TLS option: only their hashes are stored."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets

from fedmask.pki.layout import (
    DEFAULT_TOKEN_DAYS,
    FederationPaths,
    PkiError,
    _check_name,
    _check_valid_days,
    _locked,
    _paths,
    _require_ca,
    _utcnow,
    _write_atomic,
    load_ca_certificate,
)
from fedmask.pki.roster import _canonical_json, load_roster

log = logging.getLogger(__name__)


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
    _check_valid_days(valid_days)
    paths = _paths(directory)
    _require_ca(paths)
    with _locked(paths):
        roster = load_roster(paths.roster, load_ca_certificate(paths))
        if name not in roster:
            raise PkiError(
                f"participant {name!r} is not enrolled: issue its certificate first "
                f"(`fedmask pki issue participant {name} --request FILE`)"
            )
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

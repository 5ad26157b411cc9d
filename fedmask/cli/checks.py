"""The CLI's shared input checks, run before any work: ``--coordinator HOST:PORT`` before
anything dials it, and output directories before anything is computed for them.

gRPC takes a port above 65535 modulo 2^16 and a scheme such as ``http://`` as part of the host
name, so a typo would otherwise surface minutes later as "coordinator not reachable" somewhere
else.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from fedmask.durable import probe_writable_directory
from fedmask.pki.preflight import split_target

_EXAMPLE = "e.g. coordinator.example.org:7443"
TOKEN_ENV = "FEDMASK_ENROLMENT_TOKEN"


def check_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: ``value`` unchanged if it is HOST:PORT ([v6]:PORT, dns:///HOST:PORT)."""
    if "://" in value and not value.startswith("dns:"):
        raise click.BadParameter(f"{value!r}: give HOST:PORT without a scheme ({_EXAMPLE})")
    try:
        host, port = split_target(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT ({_EXAMPLE})") from None
    if not 1 <= port <= 65535:
        raise click.BadParameter(f"{value!r}: port {port} is outside 1-65535")
    if any(c.isspace() or c == "/" for c in host):
        raise click.BadParameter(f"{value!r}: {host!r} is not a host name or address")
    return value


def check_writable_directory(directory: Path, what: str) -> None:
    """A one-line error now (``cannot write WHAT: why``) if files cannot be written in
    ``directory`` (or, if it is still to be made, in its nearest existing parent), rather than
    after the work whose result they would hold. Nothing is left behind."""
    try:
        probe_writable_directory(directory)
    except OSError as exc:
        raise click.ClickException(f"cannot write {what}: {exc.strerror or exc}") from None


def read_token(token_file: Path | None) -> str | None:
    """The enrolment token of ``--token-file`` (its text, stripped), else of ``$FEDMASK_ENROLMENT_TOKEN``;
    a file that cannot be a token is refused in one line before anything dials the coordinator."""
    if token_file is None:
        return os.environ.get(TOKEN_ENV)
    try:
        token = token_file.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise click.BadParameter(
            f"{token_file} holds no token (tokens are ASCII text)", param_hint="--token-file"
        ) from None
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {token_file}: {exc.strerror or exc}", param_hint="--token-file"
        ) from None
    if not token:
        raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    return token

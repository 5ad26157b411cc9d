"""``--coordinator HOST:PORT``, checked before anything dials it.

gRPC takes a port above 65535 modulo 2^16 and a scheme such as ``http://`` as part of the host
name, so a typo would otherwise surface minutes later as "coordinator not reachable" somewhere
else.
"""

from __future__ import annotations

import click

from fedmask.pki.preflight import split_target

_EXAMPLE = "e.g. coordinator.example.org:7443"


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

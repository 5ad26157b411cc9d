"""``fedmask pki``: create the federation CA, issue certificates and tokens, show the roster.

Thin click wrappers over ``fedmask.pki``; every failure there becomes a one-line error.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509

from fedmask import pki as pkilib

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DIR = Path("federation")

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    envvar="FEDMASK_PKI_DIR",
    show_default=True,
    help="Federation directory (env FEDMASK_PKI_DIR).",
)


def _pki_errors(command: F) -> F:
    """Report PkiError as a clean click error (exit code 1) instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except pkilib.PkiError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _days_left(not_after: dt.datetime) -> str:
    days = (not_after - dt.datetime.now(dt.UTC)).days
    return "EXPIRED" if days < 0 else f"{days} days left"


@click.group("pki")
def pki() -> None:
    """Federation CA, certificates, identity roster and enrolment tokens.

    Keys are generated here at run time; never commit the federation directory.
    """


@pki.command("init")
@_dir_option
@click.option("--name", "federation_name", default="fedmask", show_default=True, help="Federation name.")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=pkilib.DEFAULT_CA_DAYS,
    show_default=True,
    help="CA validity.",
)
@click.option("--force", is_flag=True, help="Replace an existing CA (every issued certificate stops working).")
@_pki_errors
def init_command(directory: Path, federation_name: str, days: int, force: bool) -> None:
    """Create the federation CA and an empty signed roster."""
    paths = pkilib.init_federation(directory, federation_name=federation_name, valid_days=days, force=force)
    click.echo(f"federation {federation_name!r} initialised in {paths.root.resolve()}")
    click.echo(f"  CA certificate: {paths.ca_cert}  (give to every party)")
    click.echo(f"  CA private key: {paths.ca_key}  (keep offline, off the coordinator host)")
    click.echo(f"  roster:         {paths.roster} + {paths.roster_signature.name}")


@pki.command("issue")
@click.argument("role", type=click.Choice(pkilib.ROLES))
@click.argument("name")
@_dir_option
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="DNS name or IP the coordinator is reached at (repeatable; default localhost, 127.0.0.1).",
)
@click.option("--days", type=click.IntRange(min=1), default=pkilib.DEFAULT_LEAF_DAYS, show_default=True)
@click.option("--force", is_flag=True, help="Re-issue an existing name (replaces its roster entry).")
@click.option(
    "--identity-public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Participant's own Ed25519 public key (PEM); its private key then never leaves the participant.",
)
@_pki_errors
def issue_command(
    role: str,
    name: str,
    directory: Path,
    hosts: tuple[str, ...],
    days: int,
    force: bool,
    identity_public_key: Path | None,
) -> None:
    """Issue a TLS certificate for ROLE (coordinator|participant) NAME."""
    if hosts and role != "coordinator":
        raise click.UsageError("--host applies to coordinator certificates only")
    if identity_public_key is not None and role != "participant":
        raise click.UsageError("--identity-public-key applies to participants only")
    issued = pkilib.issue(
        directory,
        role,  # type: ignore[arg-type]
        name,
        hosts=hosts or pkilib.DEFAULT_COORDINATOR_HOSTS,
        valid_days=days,
        force=force,
        identity_public_key=identity_public_key.read_bytes() if identity_public_key else None,
    )
    click.echo(f"issued {role} certificate for {name!r} (expires {issued.not_after:%Y-%m-%d})")
    click.echo(f"  certificate:  {issued.cert_path}")
    click.echo(f"  private key:  {issued.key_path}")
    if issued.identity_key_path is not None:
        click.echo(f"  identity key: {issued.identity_key_path}")
    click.echo(f"  sha256:       {issued.fingerprint}")
    if role == "participant":
        click.echo(f"  roster updated: {pkilib.FederationPaths(directory).roster}")


@pki.command("token")
@click.argument("name")
@_dir_option
@click.option("--days", type=click.IntRange(min=1), default=pkilib.DEFAULT_TOKEN_DAYS, show_default=True)
@_pki_errors
def token_command(name: str, directory: Path, days: int) -> None:
    """Create an enrolment token for participant NAME (one-way TLS mode).

    The token goes to stdout, alone, so it can be piped; it is shown this once and only its hash
    is kept. A new token replaces the previous one.
    """
    token = pkilib.issue_token(directory, name, valid_days=days)
    click.echo(f"enrolment token for {name!r}, valid {days} days; deliver it over a trusted channel:", err=True)
    click.echo(token)


@pki.command("revoke")
@click.argument("name")
@_dir_option
@_pki_errors
def revoke_command(name: str, directory: Path) -> None:
    """Remove participant NAME from the roster (and its enrolment token).

    Servers that check peers against the roster refuse it from then on; its files are kept.
    """
    roster = pkilib.remove_participant(directory, name)
    click.echo(f"removed {name!r} from the roster (now v{roster.version}); redistribute roster.json and roster.sig")


@pki.command("show")
@_dir_option
@_pki_errors
def show_command(directory: Path) -> None:
    """Verify the roster and list the CA, coordinators and participants with expiry."""
    paths = pkilib.FederationPaths(directory)
    ca_cert = pkilib.load_ca_certificate(paths)
    roster = pkilib.load_roster(paths.roster, ca_cert)
    click.echo(f"federation {roster.federation!r} in {paths.root.resolve()} (roster v{roster.version}, signature OK)")
    click.echo(
        f"CA: sha256 {pkilib.certificate_fingerprint(ca_cert)}  "
        f"expires {ca_cert.not_valid_after_utc:%Y-%m-%d} ({_days_left(ca_cert.not_valid_after_utc)})"
    )
    coordinator_certs = sorted((paths.root / "coordinator").glob("*.pem"))
    click.echo(f"coordinators: {len(coordinator_certs)}")
    for cert_path in coordinator_certs:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
        click.echo(
            f"  {cert_path.stem:<20} expires {cert.not_valid_after_utc:%Y-%m-%d} "
            f"({_days_left(cert.not_valid_after_utc)})  hosts {', '.join(hosts)}"
        )
    click.echo(f"participants: {len(roster.entries)}")
    for name in roster.names:
        entry = roster.entries[name]
        not_after = dt.datetime.strptime(entry.tls_not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        click.echo(
            f"  {name:<20} expires {not_after:%Y-%m-%d} ({_days_left(not_after)})  "
            f"cert {entry.tls_cert_sha256[:16]}…  ed25519 {entry.identity_public_key.hex()[:16]}…"
        )

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

# Refused before anything runs; the library checks the same bound for its own callers.
_VALIDITY_DAYS = click.IntRange(min=1, max=pkilib.MAX_VALIDITY_DAYS)


def _pki_errors(command: F) -> F:
    """Report PkiError as a clean click error (exit code 1) instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except pkilib.PkiError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _days_left(not_after: dt.datetime, not_before: dt.datetime | None = None) -> str:
    now = dt.datetime.now(dt.UTC)
    if not_before is not None and now < not_before:
        return f"NOT YET VALID until {not_before:%Y-%m-%d %H:%M} UTC"
    return "EXPIRED" if now > not_after else f"{(not_after - now).days} days left"


def _not_valid(status: str) -> bool:
    return status.startswith(("EXPIRED", "NOT YET VALID"))


@click.group("pki")
def pki() -> None:
    """Federation CA, certificates, identity roster and enrolment tokens.

    Run by the federation operator. Participants make their own keys (`fedmask participant
    enrol`); never commit the federation directory.
    """


@pki.command("init")
@_dir_option
@click.option("--name", "federation_name", default="fedmask", show_default=True, help="Federation name.")
@click.option(
    "--days",
    type=_VALIDITY_DAYS,
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
@click.option("--days", type=_VALIDITY_DAYS, default=pkilib.DEFAULT_LEAF_DAYS, show_default=True)
@click.option("--force", is_flag=True, help="Re-issue an existing name (replaces its roster entry).")
@click.option(
    "--request",
    "request_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The participant's enrolment request (from `fedmask participant enrol`): its keys stay with it.",
)
@click.option(
    "--csr",
    "csr_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instead of --request: the participant's CSR (PEM), with --identity-public-key and --organisation.",
)
@click.option(
    "--identity-public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The participant's Ed25519 public key (PEM), with --csr (or --operator-generates-keys).",
)
@click.option(
    "--organisation",
    help="The participant's organisation (short name). With --request: must match the request's.",
)
@click.option(
    "--operator-generates-keys",
    is_flag=True,
    help="Make the participant's keys here, without a request. Demos and tests only: "
    "the operator then holds the participant's keys and can act as it.",
)
@_pki_errors
def issue_command(
    role: str,
    name: str,
    directory: Path,
    hosts: tuple[str, ...],
    days: int,
    force: bool,
    request_path: Path | None,
    csr_path: Path | None,
    identity_public_key: Path | None,
    organisation: str | None,
    operator_generates_keys: bool,
) -> None:
    """Issue a TLS certificate for ROLE (coordinator|participant) NAME.

    A participant is issued from its enrolment request (--request), so that only it holds its
    private keys; the operator then sends back the public files this command lists.
    """
    if hosts and role != "coordinator":
        raise click.UsageError("--host applies to coordinator certificates only")
    participant_only = {
        "--request": request_path,
        "--csr": csr_path,
        "--identity-public-key": identity_public_key,
        "--organisation": organisation,
        "--operator-generates-keys": operator_generates_keys or None,
    }
    given = [option for option, value in participant_only.items() if value is not None]
    if given and role != "participant":
        raise click.UsageError(f"{given[0]} applies to participants only")
    if request_path is not None and (csr_path or identity_public_key or operator_generates_keys):
        raise click.UsageError("--request excludes --csr, --identity-public-key and --operator-generates-keys")
    if csr_path is not None and operator_generates_keys:
        raise click.UsageError("--csr excludes --operator-generates-keys")
    issued = pkilib.issue(
        directory,
        role,  # type: ignore[arg-type]
        name,
        hosts=hosts or pkilib.DEFAULT_COORDINATOR_HOSTS,
        valid_days=days,
        force=force,
        request=request_path,
        csr=csr_path.read_bytes() if csr_path else None,
        identity_public_key=identity_public_key.read_bytes() if identity_public_key else None,
        organisation=organisation,
        operator_generates_keys=operator_generates_keys,
    )
    paths = pkilib.FederationPaths(directory)
    of = f" of organisation {issued.organisation!r}" if issued.organisation else ""
    click.echo(f"issued {role} certificate for {name!r}{of} (expires {issued.not_after:%Y-%m-%d})")
    if issued.request_fingerprint is not None:
        click.echo(f"  request sha256: {issued.request_fingerprint}  (must match the one {name}'s enrol printed)")
    click.echo(f"  certificate:    {issued.cert_path}")
    click.echo(f"  sha256:         {issued.fingerprint}")
    if issued.key_path is not None:
        click.echo(f"  private key:    {issued.key_path}")
    if issued.identity_key_path is not None:
        click.echo(f"  identity key:   {issued.identity_key_path}")
    if issued.roster is not None:
        click.echo(f"  roster:         v{issued.roster.version}, sha256 {issued.roster.fingerprint()}")
    if role != "participant":
        return
    public = (
        f"{paths.ca_cert.relative_to(paths.root)}, {issued.cert_path.relative_to(paths.root)}, "
        f"{paths.roster.name}, {paths.roster_signature.name}"
    )
    if issued.key_path is not None:
        click.echo(
            f"warning: --operator-generates-keys: this directory holds {name}'s private keys, so whoever reads "
            f"them can act as {name}; send {issued.key_path.parent.relative_to(paths.root)}/ (keys included) over "
            f"a confidential channel with {public}, then delete the keys here"
        )
        return
    click.echo(f"send to {name} (public files, nothing secret): {public}")
    click.echo(
        f"  `fedmask pki export {name} --dir {paths.root} --out DIR` copies exactly these; "
        "every member needs the new roster.json and roster.sig"
    )


@pki.command("export")
@click.argument("name")
@_dir_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to copy them (laid out as a federation directory; may be the participant's own).",
)
@_pki_errors
def export_command(name: str, directory: Path, out_dir: Path) -> None:
    """Copy the public files participant NAME needs: its certificate, the CA certificate, the roster.

    Nothing secret is copied; run it again after the roster changes to hand out the new one.
    """
    files = pkilib.export_participant(directory, name, out_dir)
    click.echo(f"public files for {name!r} in {out_dir}:")
    for path in files:
        click.echo(f"  {path}")


@pki.command("token")
@click.argument("name")
@_dir_option
@click.option("--days", type=_VALIDITY_DAYS, default=pkilib.DEFAULT_TOKEN_DAYS, show_default=True)
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
    """Verify the roster; list the CA, coordinators, participants with organisation and expiry.

    Exits 1 when a certificate shown is expired or not yet valid.
    """
    paths = pkilib.FederationPaths(directory)
    ca_cert = pkilib.load_ca_certificate(paths)
    roster = pkilib.load_roster(paths.roster, ca_cert)
    invalid: list[str] = []
    click.echo(f"federation {roster.federation!r} in {paths.root.resolve()} (roster v{roster.version}, signature OK)")
    click.echo(f"roster sha256 {roster.fingerprint()}")
    status = _days_left(ca_cert.not_valid_after_utc, ca_cert.not_valid_before_utc)
    invalid += ["the CA"] if _not_valid(status) else []
    click.echo(
        f"CA: sha256 {pkilib.certificate_fingerprint(ca_cert)}  "
        f"expires {ca_cert.not_valid_after_utc:%Y-%m-%d} ({status})"
    )
    coordinator_certs = sorted((paths.root / "coordinator").glob("*.pem"))
    click.echo(f"coordinators: {len(coordinator_certs)}")
    for cert_path in coordinator_certs:
        cert = pkilib.load_certificate_file(cert_path)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            hosts = ["none (no subjectAltName: not issued by `fedmask pki issue`)"]
        else:
            hosts = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
        status = _days_left(cert.not_valid_after_utc, cert.not_valid_before_utc)
        invalid += [f"coordinator {cert_path.stem}"] if _not_valid(status) else []
        click.echo(
            f"  {cert_path.stem:<20} expires {cert.not_valid_after_utc:%Y-%m-%d} ({status})  hosts {', '.join(hosts)}"
        )
    organisations = roster.organisations()
    click.echo(f"participants: {len(roster.entries)} from {len(set(organisations.values()))} organisation(s)")
    for name in roster.names:
        entry = roster.entries[name]
        not_after = dt.datetime.strptime(entry.tls_not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        status = _days_left(not_after)
        invalid += [f"participant {name}"] if _not_valid(status) else []
        click.echo(
            f"  {name:<20} organisation {entry.organisation:<16} expires {not_after:%Y-%m-%d} "
            f"({status})  "
            f"cert {entry.tls_cert_sha256[:16]}…  ed25519 {entry.identity_public_key.hex()[:16]}…"
        )
    if invalid:
        raise click.ClickException(
            f"not valid now: {', '.join(invalid)}; re-issue with `fedmask pki issue ROLE NAME --force`"
        )
